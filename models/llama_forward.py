"""The LLaMA model's forward pass (:mod:`models.llama`), whole (:func:`apply`) and block by block.

Token ids ``(N, T)`` -> :func:`embed` ``(N, T, D)`` -> :func:`block` for every block (RMSNorm,
grouped-query attention with rotary embeddings, SwiGLU MLP) -> :func:`head` logits ``(N, T, V)``.
Every function is pure and reads the numbers of heads and channels from the param shapes. The
constants of the family: :data:`LINEARS` (a block's linear layers), :data:`HEAD_DIM`, :data:`EPS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from . import structure

__all__ = [
    "EPS",
    "HEAD_DIM",
    "LINEARS",
    "apply",
    "block",
    "block_names",
    "embed",
    "get_block",
    "head",
    "head_counts",
    "hidden_states",
    "rms_norm",
    "rope",
]

LINEARS = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down")
HEAD_DIM = 32
EPS = 1e-5


# ------------------------------------------------------------------------------- per-block pieces
def block_names(params: Mapping[str, Any]) -> list[str]:
    """Paths ``"blocks.<i>"`` of the blocks in order (``[]`` for a model with no blocks left)."""
    return [f"blocks.{i}" for i in structure.indexed(params.get("blocks", {}))]


def get_block(params: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The subtree of block ``name`` (``"blocks.<i>"``); ``KeyError`` naming it if absent."""
    return structure.get_path(params, name)


def rope(state: Mapping[str, Any], seq_len: int) -> tuple[Tensor, Tensor]:
    """``(cos, sin)``, each ``(seq_len, hd/2)``, the first ``seq_len`` rows of the state's tables.

    ``ValueError`` when ``seq_len`` exceeds the context ``C`` (the tables' length).
    """
    try:
        cos, sin = state["rope"]["cos"], state["rope"]["sin"]
    except (KeyError, TypeError) as err:
        raise ValueError("llama state must hold the rotary tables state['rope']['cos'/'sin']") from err
    if seq_len > cos.shape[0]:
        raise ValueError(
            f"sequence of {seq_len} tokens is longer than the model's context of {cos.shape[0]} "
            f"(state.rope.cos has shape {tuple(cos.shape)})"
        )
    return cos[:seq_len], sin[:seq_len]


def rms_norm(x: Tensor, weight: Tensor) -> Tensor:
    """``x / sqrt(mean(x², -1) + 1e-5) * weight``; ``x (..., D)``, ``weight (D,)``."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * weight


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding of ``x (N, heads, T, hd)``: pairs ``(i, i + hd/2)`` turned by the angle of ``t``."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def embed(params: Mapping[str, Any], tokens: Tensor) -> Tensor:
    """Embeddings ``(N, T, D)`` of token ids ``tokens (N, T)`` (integer dtype)."""
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise TypeError(f"tokens must hold integer token ids, got dtype {tokens.dtype}")
    if tokens.ndim != 2:
        raise ValueError(f"tokens of shape {tuple(tokens.shape)} must be (N, T) token ids")
    return F.embedding(tokens, params["embed"]["weight"])


def head(params: Mapping[str, Any], h: Tensor) -> Tensor:
    """Logits ``(N, T, V)`` of the last hidden state ``h (N, T, D)``: final RMSNorm, then the head
    (``head.weight``, or ``embed.weight`` when tied)."""
    w = params["head"]["weight"] if "head" in params else params["embed"]["weight"]
    return F.linear(rms_norm(h, params["norm"]["weight"]), w)


def head_counts(p: Mapping[str, Any], hd: int) -> tuple[int, int]:
    """``(H, KV)`` of a block from its q and k rows; ``ValueError`` when the shapes do not fit."""
    q, k = p["attn"]["q"]["weight"], p["attn"]["k"]["weight"]
    if q.shape[0] % hd or k.shape[0] % hd or k.shape[0] == 0 or (q.shape[0] // hd) % (k.shape[0] // hd):
        raise ValueError(
            f"attn.q.weight {tuple(q.shape)} and attn.k.weight {tuple(k.shape)} do not split into "
            f"head_dim={hd} heads with a whole number of query heads per KV head"
        )
    return q.shape[0] // hd, k.shape[0] // hd


def block(
    params_block: Mapping[str, Any],
    h: Tensor,
    cos_sin: tuple[Tensor, Tensor],
    *,
    capture: bool = False,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """One residual block: ``h (N, T, D)`` -> ``(N, T, D)``; ``cos_sin = rope(state, T)``.

    ``capture=True`` also returns ``{lin: input of lin}`` for every name in :data:`LINEARS`, each
    ``(N, T, in_features of lin)``, plus ``"attn.heads"``: the attention output per KV unit
    ``(N, KV, T, (H/KV)*hd)`` and ``"mlp.hidden"`` = ``inputs["mlp.down"]`` (the units of the
    block's two channel groups).
    """
    cos, sin = cos_sin
    hd = HEAD_DIM
    if cos.shape[-1] * 2 != hd:
        raise ValueError(f"rotary tables of shape {tuple(cos.shape)} do not fit head_dim={hd}")
    n_heads, n_kv = head_counts(params_block, hd)
    attn, mlp = params_block["attn"], params_block["mlp"]
    x = rms_norm(h, params_block["attn_norm"]["weight"])
    q = rearrange(F.linear(x, attn["q"]["weight"]), "n t (h d) -> n h t d", d=hd)
    k = rearrange(F.linear(x, attn["k"]["weight"]), "n t (h d) -> n h t d", d=hd)
    v = rearrange(F.linear(x, attn["v"]["weight"]), "n t (h d) -> n h t d", d=hd)
    a = F.scaled_dot_product_attention(
        _rotate(q, cos, sin), _rotate(k, cos, sin), v, is_causal=True, enable_gqa=n_heads != n_kv
    )
    a_flat = rearrange(a, "n h t d -> n t (h d)")
    h = h + F.linear(a_flat, attn["o"]["weight"])
    y = rms_norm(h, params_block["mlp_norm"]["weight"])
    hidden = F.silu(F.linear(y, mlp["gate"]["weight"])) * F.linear(y, mlp["up"]["weight"])
    out = h + F.linear(hidden, mlp["down"]["weight"])
    if not capture:
        return out
    inputs = {"attn.q": x, "attn.k": x, "attn.v": x, "attn.o": a_flat, "mlp.gate": y, "mlp.up": y}
    inputs["mlp.down"] = hidden
    inputs["attn.heads"] = rearrange(a, "n (kv g) t d -> n kv t (g d)", kv=n_kv)
    inputs["mlp.hidden"] = hidden
    return out, inputs


def hidden_states(params: Mapping[str, Any], state: Mapping[str, Any], tokens: Tensor) -> list[Tensor]:
    """The residual stream ``[embed(tokens), after block 0, ..., after block L-1]``: ``L + 1`` tensors
    ``(N, T, D)`` (what ShortGPT's block influence compares)."""
    cos_sin = rope(state, tokens.shape[1])
    hs = [embed(params, tokens)]
    for name in block_names(params):
        hs.append(block(get_block(params, name), hs[-1], cos_sin))
    return hs


# ------------------------------------------------------------------------------------------ apply
def apply(
    params: dict[str, Any],
    state: dict[str, Any],
    x: Tensor,
    *,
    train: bool,
    capture: bool = False,
) -> tuple[Tensor, dict[str, Any]] | tuple[Tensor, dict[str, Any], dict[str, Tensor]]:
    """Logits ``(N, T, V)`` of token ids ``x (N, T)``; ``state`` is returned unchanged (no dropout,
    so ``train`` changes nothing).

    ``capture=True`` also returns each group's units on axis 1: ``"blocks.<i>.attn"``
    ``(N, KV, T, (H/KV)*hd)`` (the attention output of each KV unit's query heads) and
    ``"blocks.<i>.mlp"`` ``(N, F, T)`` (the SwiGLU hidden). ``ValueError`` for ``T`` > context.
    """
    cos_sin = rope(state, x.shape[1] if x.ndim == 2 else 0)
    h = embed(params, x)
    acts: dict[str, Tensor] = {}
    for name in block_names(params):
        if capture:
            h, inputs = block(get_block(params, name), h, cos_sin, capture=True)
            acts[f"{name}.attn"] = inputs["attn.heads"]
            acts[f"{name}.mlp"] = rearrange(inputs["mlp.hidden"], "n t f -> n f t")
        else:
            h = block(get_block(params, name), h, cos_sin)
    out = head(params, h)
    return (out, state, acts) if capture else (out, state)
