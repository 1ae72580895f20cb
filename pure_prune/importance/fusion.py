"""Fusing per-unit statistics into one importance per unit, and adaptive retention.

Shapes: a *unit score* is ``{group name: (size,) float tensor}`` (higher = more important); a
*family* is ``{statistic: unit score}`` (e.g. :func:`pure_prune.importance.weights.weight_stats`,
:func:`pure_prune.importance.activation.activation_finalize`, :func:`gradient_family`).

Everything is re-exported here from :mod:`~pure_prune.importance.unit_scores` (checks,
:func:`normalize`), :mod:`~pure_prune.importance.families`, :mod:`~pure_prune.importance.fusion_strategies`
(:func:`fuse`) and :mod:`~pure_prune.importance.retention`.

Pipeline (the ``enhanced`` unit importance, ``docs/methods.md``):

1. :func:`normalize` each statistic per group (``"minmax"`` to ``[0, 1]``, ``"zscore"``, ``"rank"``);
2. :func:`family_score`: a family's weighted sum of normalised statistics with the scheme's default
   weights (:data:`WEIGHT_FAMILY`, :data:`ACTIVATION_FAMILY`, :data:`GRADIENT_FAMILY`,
   :data:`COOPERATION_FAMILY`, each summing to 1);
3. :func:`fuse` the family scores (and any other unit score, e.g. the Hessian-aware baseline
   ``hessian.hap``) with the ``simple``, ``adaptive`` or ``learned`` strategy;
4. :func:`keep_counts` / :func:`keep_masks`: adaptive retention from the coefficient of variation;
5. to masks: :func:`unit_scores_to_tree` + ``select.channels(..., ord=1, normalize=True)`` with
   ``sparsity=keep_to_sparsity(counts, groups)`` removes exactly ``size - keep`` units per group.
"""

from __future__ import annotations

from pure_prune.importance.families import (
    ACTIVATION_FAMILY,
    COOPERATION_FAMILY,
    FAMILY_WEIGHTS,
    GRADIENT_FAMILY,
    WEIGHT_FAMILY,
    family_score,
    gradient_family,
    per_unit,
)
from pure_prune.importance.fusion_strategies import Fused, LearnedState, fuse, learned_init
from pure_prune.importance.retention import (
    RETENTION_RULES,
    keep_counts,
    keep_masks,
    keep_to_sparsity,
    retention_share,
    unit_scores_to_tree,
)
from pure_prune.importance.unit_scores import coefficient_of_variation, normalize

__all__ = [
    "ACTIVATION_FAMILY",
    "COOPERATION_FAMILY",
    "FAMILY_WEIGHTS",
    "GRADIENT_FAMILY",
    "RETENTION_RULES",
    "WEIGHT_FAMILY",
    "Fused",
    "LearnedState",
    "coefficient_of_variation",
    "family_score",
    "fuse",
    "gradient_family",
    "keep_counts",
    "keep_masks",
    "keep_to_sparsity",
    "learned_init",
    "normalize",
    "per_unit",
    "retention_share",
    "unit_scores_to_tree",
]
