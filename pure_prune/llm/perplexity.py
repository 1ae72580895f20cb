"""Held-out perplexity of a language model over a token stream.

The stream ``ids`` (``L`` token ids) is cut into ``n = (L - 1) // T`` non-overlapping windows of
``T`` tokens; window ``i`` reads ``ids[iT : (i+1)T]`` and predicts ``ids[iT+1 : (i+1)T+1]`` (every
position of every window is scored; the first token of a window sees no earlier context). The
mean next-token cross-entropy over the ``n·T`` predictions is the negative log-likelihood per
token ``nll`` (nats), the perplexity is ``exp(nll)`` and ``nll / ln 2`` the bits per token (per
byte for a byte-level model). The convention of ``bench/train_llama.py``, so figures compare.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["perplexity", "windows"]


def windows(
    ids: torch.Tensor, seq_len: int, max_tokens: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)``, each ``(n, seq_len)`` int64: the non-overlapping windows of ``ids`` ``(L,)`` and
    their next tokens (see the module docstring). ``max_tokens`` keeps only the first windows,
    ``n · seq_len <= max_tokens`` (at least one). ``ValueError`` when no window fits."""
    if not isinstance(ids, torch.Tensor) or ids.ndim != 1 or ids.dtype != torch.int64:
        what = f"{ids.dtype} {tuple(ids.shape)}" if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise TypeError(f"ids must be a 1-D int64 tensor of token ids, got {what}")
    for name, v in (("seq_len", seq_len), ("max_tokens", max_tokens)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    n = (ids.numel() - 1) // seq_len
    if max_tokens is not None:
        n = min(n, max(1, max_tokens // seq_len))
    if n < 1:
        raise ValueError(
            f"the stream of {ids.numel()} tokens holds no window of {seq_len} tokens plus a target"
        )
    x = ids[: n * seq_len].reshape(n, seq_len)
    y = ids[1 : n * seq_len + 1].reshape(n, seq_len)
    return x, y


def perplexity(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    ids: torch.Tensor,
    seq_len: int,
    *,
    batch_size: int = 16,
    max_tokens: int | None = None,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Perplexity of ``logits_fn`` on the token stream ``ids`` ``(L,)`` in windows of ``seq_len``.

    ``logits_fn(tokens (N, T) int64) -> logits (N, T, V)`` (e.g. ``lambda x: BlockModel.forward(params,
    x)``) runs on ``batch_size`` windows at a time, moved to ``device`` (default: left where ``ids``
    is), without gradients. Returns plain floats: ``{"nll", "perplexity", "bits_per_token",
    "tokens"}`` (``tokens`` = predictions scored). ``ValueError`` for logits of the wrong shape or
    non-finite loss.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    x, y = windows(ids, seq_len, max_tokens)
    total = 0.0
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            xb, yb = x[i : i + batch_size], y[i : i + batch_size]
            if device is not None:
                xb, yb = xb.to(device), yb.to(device)
            logits = logits_fn(xb)
            if not isinstance(logits, torch.Tensor) or logits.ndim != 3 or logits.shape[:2] != xb.shape:
                what = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                raise ValueError(
                    f"logits_fn must return logits (N, T, V) for tokens {tuple(xb.shape)}, got {what}"
                )
            total += float(F.cross_entropy(logits.flatten(0, 1).float(), yb.flatten(), reduction="sum"))
    count = x.numel()
    nll = total / count
    if not math.isfinite(nll):
        raise ValueError(f"the mean cross-entropy is {nll}: the model's logits are not finite")
    return {"nll": nll, "perplexity": math.exp(nll), "bits_per_token": nll / math.log(2), "tokens": count}
