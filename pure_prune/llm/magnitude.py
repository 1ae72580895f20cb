"""Magnitude pruning of a linear layer: the baseline of every one-shot LLM paper.

Han et al., "Learning both Weights and Connections for Efficient Neural Networks" (NeurIPS 2015):
score ``S_ij = |W_ij|``, the lowest scores of the *whole layer* pruned (``round(s · out · in)`` of
them; the layer-wise comparison group of the LLM papers' magnitude baseline, Sun et al. 2024,
Table 1), or for N:M the ``m - n`` lowest of every ``m`` consecutive inputs of a row. No
calibration data; the kept weights are unchanged.
"""

from __future__ import annotations

import torch

from pure_prune import select
from pure_prune.llm.calibrate import Method
from pure_prune.llm.pattern import Pattern
from pure_prune.llm.stats import LayerStats

__all__ = ["METHOD", "keep_mask", "prune_layer"]


def keep_mask(
    scores: torch.Tensor, pattern: Pattern, path: str = "weight", *, per_row: bool = False
) -> torch.Tensor:
    """The bool keep mask ``(out, in)`` of a score matrix ``(out, in)`` (higher = kept) under ``pattern``.

    Unstructured: exactly ``round(s · out · in)`` pruned over the layer, or with ``per_row=True``
    exactly ``round(s · in)`` in every row; N:M: ``n`` kept of every ``m`` consecutive inputs.
    Ties: among equal scores the earlier position is pruned first (layer) / kept (rows, N:M), as
    :mod:`pure_prune.select` does.
    """
    pattern.check_fits(path, tuple(scores.shape))
    if pattern.is_nm:
        return select.n_of_m({path: scores}, pattern.n, pattern.m, axis=-1)[path]
    if per_row:
        cols = scores.shape[1]
        kept = cols - int(round(pattern.sparsity * cols))
        return select.n_of_m({path: scores}, kept, cols, axis=-1)[path]
    return select.unstructured({path: scores}, pattern.sparsity, scope="layer")[path]


def prune_layer(
    weight: torch.Tensor, stats: LayerStats | None, pattern: Pattern, path: str = "weight"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W ⊙ M, M)`` with ``M`` the magnitude keep mask of ``weight`` ``(out, in)``; ``stats`` unused."""
    keep = keep_mask(weight.abs(), pattern, path)
    return weight * keep, keep


METHOD = Method("magnitude", "none", prune_layer)
