"""Batching: fixed-shape batches in an order drawn from an explicit key, and their checks.

Part of the library (no application import): :mod:`pure_prune.seeds` batches every seed with it,
and :mod:`pure_prune.app.data` re-exports its names (``data.batches``, ``data.epoch_key``, ...).

* :func:`batches`: ``(x[idx], y[idx])`` slices of ``batch_size`` of a keyed permutation
  (:func:`epoch_key` gives each epoch's key), :func:`num_batches` counts them, and
  :func:`batches_per_gather` says how many of them one indexing call gathers;
* :func:`lm_batches`: ``(batch_size, seq_len)`` windows of a token-id stream and the same window
  one token later, :func:`num_lm_batches` counts them;
* :func:`check_batch`: a batch fits a model's input shape, dtype and number of classes;
* :func:`check_positive_int` and :func:`check_labels`: the argument checks they share with the
  data sets of :mod:`pure_prune.app.data_checks` (which re-exports them).

A :data:`Batch` is ``(x, y)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from einops import rearrange

from pure_prune import rng

__all__ = [
    "GATHER_BYTES", "Batch", "batches", "batches_per_gather", "check_batch", "check_labels", "check_positive_int",
    "epoch_key", "lm_batches", "num_batches", "num_lm_batches",
]  # fmt: skip

Batch = tuple[torch.Tensor, torch.Tensor]


# -------------------------------------------------------------------------------------------- checks


def check_positive_int(value: object, name: str) -> int:
    """``value`` when it is an int ``>= 1`` (not a bool); else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_labels(y: torch.Tensor, num_classes: int, name: str) -> None:
    """Raise ``TypeError``/``ValueError`` naming ``name``, the first bad index and its value."""
    if y.dtype != torch.int64:
        raise TypeError(f"{name} must be int64 labels, got dtype {y.dtype}")
    bad = (y < 0) | (y >= num_classes)
    if bool(bad.any()):
        idx = tuple(int(i) for i in torch.nonzero(bad)[0])
        raise ValueError(f"{name}{list(idx)} = {int(y[idx])} is outside [0, {num_classes})")


# -------------------------------------------------------------------------------------------- batches


def num_batches(n: int, batch_size: int, *, drop_last: bool = True) -> int:
    """Batches per epoch for ``n`` samples: ``n // batch_size`` (``ceil`` when ``drop_last=False``)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    check_positive_int(batch_size, "batch_size")
    if not isinstance(drop_last, bool):
        raise TypeError(f"drop_last must be a bool, got {drop_last!r}")
    return n // batch_size if drop_last else -(-n // batch_size)


def epoch_key(key: int, epoch: int) -> int:
    """The shuffle key of ``epoch``: ``rng.fold_in(key, epoch)``."""
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
    return rng.fold_in(key, epoch)


def batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, *, key: int | None, drop_last: bool = True
) -> Iterator[Batch]:
    """Yield ``(x[idx], y[idx])`` with ``idx`` consecutive slices of ``batch_size`` of an order that
    is ``torch.randperm(N, generator=rng.generator(key))`` (``key=None``: ``0..N-1``). Every batch
    has ``batch_size`` rows unless ``drop_last=False``, which adds the partial remainder. Arguments
    are checked on the call, before iteration. The rows of :func:`batches_per_gather` batches are
    gathered at once, and each batch is a contiguous view of them (the same values as ``x[idx]``)."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"x and y must be tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
        raise ValueError(f"x has shape {tuple(x.shape)} but y has shape {tuple(y.shape)}; lengths differ")
    if key is not None:
        rng.check_key(key)
    n = len(x)
    count = num_batches(n, batch_size, drop_last=drop_last)
    if count == 0:
        raise ValueError(f"x has {n} samples, fewer than batch_size={batch_size}: no full batch")
    order = torch.arange(n) if key is None else torch.randperm(n, generator=rng.generator(key))
    per_chunk = batches_per_gather(batch_size, x, y)

    def gen():
        # one gather per chunk of batches, each batch a contiguous row slice of it: the same rows as
        # x[idx] per batch, at one indexing call per chunk instead of two per batch (~30 µs a step)
        for first in range(0, count, per_chunk):
            rows = order[first * batch_size : min(first + per_chunk, count) * batch_size]
            xs, ys = x[rows], y[rows]
            for i in range(0, len(rows), batch_size):
                yield xs[i : i + batch_size], ys[i : i + batch_size]

    return gen()


GATHER_BYTES = 1 << 22
"""What one gather of :func:`batches` and ``seeds.seed_batches`` copies at most (4 MiB), unless a
single batch is larger."""


def batches_per_gather(batch_size: int, *tensors: torch.Tensor) -> int:
    """How many batches of ``batch_size`` rows of ``tensors`` (sharing their first axis) one gather
    copies: as many as fit in :data:`GATHER_BYTES`, at least 1."""
    row = sum(t[0].numel() * t.element_size() for t in tensors if len(t))
    return max(1, GATHER_BYTES // max(1, row * batch_size))


def check_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    dtype: torch.dtype = torch.float32,
) -> None:
    """Check a batch for a model: ``x`` ``(*batch, *input_shape)`` of ``dtype`` (int64 for token
    ids), ``y`` int64 of shape ``batch`` (``(B,)`` for classification; ``(B, L)`` for language
    modelling with ``input_shape=()``) with values in ``[0, num_classes)``. Raises ``TypeError``
    (not a tensor, wrong dtype) or ``ValueError`` (shape, label value and index) naming the culprit."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"x and y must be tensors, got {type(x).__name__} and {type(y).__name__}")
    check_positive_int(num_classes, "num_classes")
    if x.dtype != dtype:
        raise TypeError(f"x has dtype {x.dtype}, expected {dtype}")
    input_shape = tuple(input_shape)
    n_batch = x.ndim - len(input_shape)
    if n_batch < 1 or tuple(x.shape[n_batch:]) != input_shape:
        raise ValueError(f"x has shape {tuple(x.shape)}; expected (batch, *{input_shape})")
    if tuple(y.shape) != tuple(x.shape[:n_batch]):
        raise ValueError(f"y has shape {tuple(y.shape)}; expected {tuple(x.shape[:n_batch])} to match x")
    check_labels(y, num_classes, "y")


def num_lm_batches(n_tokens: int, batch_size: int, seq_len: int) -> int:
    """Number of ``(batch_size, seq_len)`` windows ``lm_batches`` yields from ``n_tokens`` ids."""
    check_positive_int(batch_size, "batch_size")
    check_positive_int(seq_len, "seq_len")
    return max(n_tokens - 1, 0) // batch_size // seq_len


def lm_batches(ids: torch.Tensor, batch_size: int, seq_len: int) -> Iterator[Batch]:
    """Language-model batches from a stream ``ids`` ``(T,)``: the first ``batch_size * n`` ids
    (``n = (T-1) // batch_size``) are laid out as ``batch_size`` contiguous rows, and consecutive
    windows of ``seq_len`` columns are yielded as ``x`` ``(batch_size, seq_len)`` with
    ``y = `` the same window one token later. The partial last window is dropped (fixed shapes)."""
    if not isinstance(ids, torch.Tensor) or ids.ndim != 1 or ids.dtype != torch.int64:
        raise ValueError(f"ids must be a 1-D int64 tensor, got {getattr(ids, 'shape', type(ids))}")
    count = num_lm_batches(len(ids), batch_size, seq_len)
    if count == 0:
        raise ValueError(f"ids has {len(ids)} tokens; need > batch_size*seq_len = {batch_size * seq_len}")
    n = (len(ids) - 1) // batch_size
    xs = rearrange(ids[: batch_size * n], "(b t) -> b t", b=batch_size)
    ys = rearrange(ids[1 : batch_size * n + 1], "(b t) -> b t", b=batch_size)

    def gen():
        for i in range(count):
            window = slice(i * seq_len, (i + 1) * seq_len)
            yield xs[:, window].contiguous(), ys[:, window].contiguous()

    return gen()
