"""Initialisation of the LLaMA model (:mod:`models.llama`): params and the rotary tables.

:func:`init` draws linear and embedding weights ``N(0, 0.02²)``, ``attn.o`` and ``mlp.down``
``N(0, 0.02²/(2L))`` (GPT-2's residual scaling) and norm weights 1; :func:`rope_tables` builds the
state ``{"cos", "sin"}`` of rotary position embeddings (Su et al. 2021).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from pure_prune import rng

from . import structure
from .llama_forward import HEAD_DIM, LINEARS

__all__ = ["init", "rope_tables"]


def init(
    key: int,
    *,
    vocab: int = 256,
    dim: int = 128,
    n_layers: int = 4,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    ffn: int = 384,
    context: int = 128,
    rope_theta: float = 10000.0,
    tie_weights: bool = True,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Params and state (the rotary tables) of the architecture in the module docstring.

    Every head has :data:`HEAD_DIM` dims (``n_heads * HEAD_DIM`` need not equal ``dim``);
    ``n_heads`` must be a multiple of ``n_kv_heads``. ``ValueError``/``TypeError`` naming the config
    key otherwise.
    """
    structure.check_all_sizes(
        vocab=vocab,
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        ffn=ffn,
        context=context,
    )
    if n_heads % n_kv_heads:
        raise ValueError(f"n_heads={n_heads} must be a multiple of n_kv_heads={n_kv_heads}")
    if isinstance(rope_theta, bool) or not isinstance(rope_theta, (int, float)) or rope_theta <= 1:
        raise ValueError(f"rope_theta must be a number > 1, got {rope_theta!r}")
    hd = HEAD_DIM
    k_emb, k_head, *k_blocks = rng.split(key, 2 + n_layers)
    std, std_out = 0.02, 0.02 / math.sqrt(2 * n_layers)
    flat: dict[str, Any] = {
        "embed.weight": rng.normal(k_emb, (vocab, dim)) * std,
        "norm.weight": torch.ones(dim),
    }
    if not tie_weights:
        flat["head.weight"] = rng.normal(k_head, (vocab, dim)) * std
    shapes = {
        "attn.q": ((n_heads * hd, dim), std),
        "attn.k": ((n_kv_heads * hd, dim), std),
        "attn.v": ((n_kv_heads * hd, dim), std),
        "attn.o": ((dim, n_heads * hd), std_out),
        "mlp.gate": ((ffn, dim), std),
        "mlp.up": ((ffn, dim), std),
        "mlp.down": ((dim, ffn), std_out),
    }
    for i, kb in enumerate(k_blocks):
        for lin, kl in zip(LINEARS, rng.split(kb, len(LINEARS))):
            shape, s = shapes[lin]
            flat[f"blocks.{i}.{lin}.weight"] = rng.normal(kl, shape) * s
        flat[f"blocks.{i}.attn_norm.weight"] = torch.ones(dim)
        flat[f"blocks.{i}.mlp_norm.weight"] = torch.ones(dim)
    return structure.nest(flat), {"rope": rope_tables(hd, context, rope_theta)}


def rope_tables(head_dim: int, context: int, theta: float = 10000.0) -> dict[str, Tensor]:
    """``{"cos", "sin"}``, each ``(context, head_dim // 2)`` float32: angle ``t * theta^(-2j/head_dim)``."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(context, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return {"cos": angles.cos().float(), "sin": angles.sin().float()}
