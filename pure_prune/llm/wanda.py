"""Wanda: pruning by weights and activations (Sun, Liu, Bair & Kolter, ICLR 2024).

The score of weight ``W_ij`` (output ``i``, input ``j``) is its magnitude times the L2 norm of its
input feature over the calibration tokens (their Eq. 1)::

    S_ij = |W_ij| · ‖X_j‖₂ ,       ‖X_j‖₂ = (Σ_t x_tj²)^½  over all N·T calibration tokens,

and the scores are compared *per output* (each row ``i`` prunes its ``round(s · in)`` lowest),
which the paper finds better for LLMs than comparing over the whole layer. For N:M the lowest
``m - n`` of every ``m`` consecutive inputs of a row are pruned. The kept weights are unchanged
(no weight update). :func:`method` with ``comparison="layer"`` compares the same scores over the
whole layer instead (the paper's ablation of the comparison group, their Table 5). Under the
sequential engine ``X`` is the input of the layer in the model whose
earlier blocks are already pruned.
"""

from __future__ import annotations

import torch

from pure_prune.llm.calibrate import Method
from pure_prune.llm.magnitude import keep_mask
from pure_prune.llm.pattern import Pattern
from pure_prune.llm.stats import LayerStats

__all__ = ["METHOD", "method", "prune_layer", "scores"]


def scores(weight: torch.Tensor, sq_norms: torch.Tensor) -> torch.Tensor:
    """``S = |W| · ‖X_j‖₂``: ``weight`` ``(out, in)``, ``sq_norms`` ``(in,)`` = ``Σ_t x_tj²``; ``(out, in)``."""
    if sq_norms.shape != (weight.shape[1],):
        raise ValueError(f"sq_norms has shape {tuple(sq_norms.shape)}, expected ({weight.shape[1]},)")
    return weight.abs().to(sq_norms.dtype) * sq_norms.clamp_min(0).sqrt()[None, :]


def prune_layer(
    weight: torch.Tensor,
    stats: LayerStats | None,
    pattern: Pattern,
    path: str = "weight",
    *,
    comparison: str = "row",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W ⊙ M, M)`` with ``M`` Wanda's keep mask of ``weight`` ``(out, in)``: the scores compared per
    row (``comparison="row"``, the paper's choice) or over the layer (``"layer"``); N:M is per group."""
    if comparison not in ("row", "layer"):
        raise ValueError(f"comparison must be 'row' or 'layer', got {comparison!r}")
    if stats is None:
        raise ValueError(f"wanda needs the input norms of {path!r}; got no statistics")
    s = scores(weight, stats.sq_norms.to(weight.device))
    keep = keep_mask(s, pattern, path, per_row=comparison == "row")
    return weight * keep, keep


def method(comparison: str = "row") -> Method:
    """Wanda as an engine :class:`~pure_prune.llm.calibrate.Method` (``"wanda"``, or ``"wanda-layer"``
    comparing over the whole layer)."""
    if comparison not in ("row", "layer"):
        raise ValueError(f"comparison must be 'row' or 'layer', got {comparison!r}")

    def fn(weight, stats, pattern, path):
        return prune_layer(weight, stats, pattern, path, comparison=comparison)

    name = "wanda" if comparison == "row" else "wanda-layer"
    return Method(name, "norms", fn, settings={"comparison": comparison})


METHOD = method()
