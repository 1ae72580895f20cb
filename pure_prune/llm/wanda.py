"""Wanda: pruning by weights and activations (Sun, Liu, Bair & Kolter, ICLR 2024).

The score of weight ``W_ij`` (output ``i``, input ``j``) is its magnitude times the L2 norm of its
input feature over the calibration tokens (their Eq. 1)::

    S_ij = |W_ij| · ‖X_j‖₂ ,       ‖X_j‖₂ = (Σ_t x_tj²)^½  over all N·T calibration tokens,

and the scores are compared *per output* (each row ``i`` prunes its ``round(s · in)`` lowest),
which the paper finds better for LLMs than comparing over the whole layer. For N:M the lowest
``m - n`` of every ``m`` consecutive inputs of a row are pruned. The kept weights are unchanged
(no weight update). Under the sequential engine ``X`` is the input of the layer in the model whose
earlier blocks are already pruned.
"""

from __future__ import annotations

import torch

from pure_prune.llm.calibrate import Method
from pure_prune.llm.magnitude import keep_mask
from pure_prune.llm.pattern import Pattern
from pure_prune.llm.stats import LayerStats

__all__ = ["METHOD", "prune_layer", "scores"]


def scores(weight: torch.Tensor, sq_norms: torch.Tensor) -> torch.Tensor:
    """``S = |W| · ‖X_j‖₂``: ``weight`` ``(out, in)``, ``sq_norms`` ``(in,)`` = ``Σ_t x_tj²``; ``(out, in)``."""
    if sq_norms.shape != (weight.shape[1],):
        raise ValueError(f"sq_norms has shape {tuple(sq_norms.shape)}, expected ({weight.shape[1]},)")
    return weight.abs().to(sq_norms.dtype) * sq_norms.clamp_min(0).sqrt()[None, :]


def prune_layer(
    weight: torch.Tensor, stats: LayerStats | None, pattern: Pattern, path: str = "weight"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W ⊙ M, M)`` with ``M`` Wanda's keep mask (per row, or N:M) of ``weight`` ``(out, in)``."""
    if stats is None:
        raise ValueError(f"wanda needs the input norms of {path!r}; got no statistics")
    keep = keep_mask(scores(weight, stats.sq_norms.to(weight.device)), pattern, path, per_row=True)
    return weight * keep, keep


METHOD = Method("wanda", "norms", prune_layer)
