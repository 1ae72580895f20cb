"""Fusing the unit scores of several families into one importance per unit.

:func:`fuse` weights the normalised family scores per group with the ``simple`` (equal),
``adaptive`` (coefficient of variation) or ``learned`` (agreement with an exponential moving
average of earlier fused importances, :class:`LearnedState` from :func:`learned_init`) strategy
and returns :class:`Fused` ``(scores, weights, state)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch

from pure_prune.importance.unit_scores import (
    UnitScores,
    check_norm,
    check_units,
    coefficient_of_variation,
    normalize_one,
    same_groups,
)

__all__ = ["Fused", "LearnedState", "fuse", "learned_init"]


class LearnedState(NamedTuple):
    """State of the ``learned`` strategy: ``ema {group: (size,)}`` of min-max normalised fused
    importances (float64) and ``steps ()`` (int64), the number of updates folded in."""

    ema: dict[str, torch.Tensor]
    steps: torch.Tensor


class Fused(NamedTuple):
    """Result of :func:`fuse`: ``scores {group: (size,)}``, the family weights used
    ``weights {group: {family: float}}`` (summing to 1 per group) and, for ``learned``, the new
    :class:`LearnedState` (``None`` otherwise)."""

    scores: dict[str, torch.Tensor]
    weights: dict[str, dict[str, float]]
    state: LearnedState | None


def learned_init(sizes: Mapping[str, int], *, device: torch.device | str | None = None) -> LearnedState:
    """Empty ``learned`` state for groups ``{name: size}``: zero float64 EMAs on ``device``, ``steps = 0``.

    Put it on the device of the unit scores it will fuse.
    """
    if not isinstance(sizes, Mapping) or not sizes:
        raise ValueError(
            f"learned_init: sizes must be a non-empty mapping {{group: size}}, got {sizes!r:.80}"
        )
    for g, n in sizes.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"learned_init: size of group {g!r} must be an int >= 1, got {n!r}")
    ema = {g: torch.zeros(n, dtype=torch.float64, device=device) for g, n in sizes.items()}
    return LearnedState(ema, torch.tensor(0, device=device))


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.to(torch.float64) - a.to(torch.float64).mean()
    b = b.to(device=a.device, dtype=torch.float64)
    b = b - b.mean()
    den = float(torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b))
    return float((a * b).sum()) / den if den > 0 else 0.0


def _share(raw: Mapping[str, float]) -> dict[str, float]:
    total = sum(raw.values())
    if total <= 0:
        return {f: 1.0 / len(raw) for f in raw}
    return {f: v / total for f, v in raw.items()}


def fuse(
    families: Mapping[str, UnitScores],
    *,
    strategy: str = "simple",
    norm: str = "minmax",
    state: LearnedState | None = None,
    decay: float = 0.9,
) -> Fused:
    """Fuse unit scores of several families into one importance per unit: ``sum_f a_{f,g} z_{f,g}``.

    ``families``: ``{family: {group: (size,)}}`` with the same groups and sizes (family scores from
    :func:`family_score`, or any unit score such as the Hessian-aware baseline ``hessian.hap``);
    ``z_{f,g} = normalize(families[f], norm)[g]``. The weights ``a_{f,g}`` (per group, summing to 1):

    * ``"simple"``: ``1 / F``, the average of the normalised family scores;
    * ``"adaptive"``: ``a_{f,g} ∝ cv(minmax(families[f][g]))``, the coefficient of variation of the
      family's min-max normalised scores. Min-max makes it independent of each family's units and
      offset; a family whose importances are spread unequally (one that discriminates units) gets
      more weight than one that rates all units alike. All ``cv = 0`` gives equal weights;
    * ``"learned"``: weights from the importance accumulated over earlier calls. ``state`` (from
      :func:`learned_init`, then the previous call's ``Fused.state``) keeps ``ema``, an exponential
      moving average (``decay``) of the min-max normalised fused importances, bias-corrected as
      ``ema / (1 - decay**steps)``. ``a_{f,g} ∝ max(0, pearson(minmax(families[f][g]), ema_g))``:
      a family counts as much as it agrees with the long-run importance, so families whose ranking
      is noisy between calls fade; at ``steps = 0`` (or when no family agrees) the weights are equal.
      The call then folds ``minmax(fused)`` into the EMA and returns the new state.

    Returns :class:`Fused` ``(scores, weights, state)``; inputs are not modified.
    """
    where = "fuse"
    check_norm(where, norm)
    if strategy not in ("simple", "adaptive", "learned"):
        raise ValueError(f"{where}: strategy must be 'simple', 'adaptive' or 'learned', got {strategy!r}")
    if not isinstance(families, Mapping) or not families:
        raise TypeError(f"{where}: families must be a non-empty mapping {{family: {{group: tensor}}}}")
    checked = {f: check_units(where, f"families[{f!r}]", s) for f, s in families.items()}
    same_groups(where, checked, "family")
    names = list(checked)
    groups = list(checked[names[0]])
    target: dict[str, torch.Tensor] | None = None
    if strategy == "learned":
        if not isinstance(state, LearnedState):
            raise TypeError(
                f"{where}: strategy 'learned' needs state=learned_init(sizes), got {type(state).__name__}"
            )
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay < 1:
            raise ValueError(f"{where}: decay must be a float in [0, 1), got {decay!r}")
        sizes = {g: checked[names[0]][g].shape[0] for g in groups}
        got = {g: x.shape[0] for g, x in state.ema.items()}
        if got != sizes:
            raise ValueError(f"{where}: learned state has groups {got}, families have {sizes}")
        steps = int(state.steps)
        if steps > 0:
            target = {g: state.ema[g] / (1 - decay**steps) for g in groups}

    scores, weights, new_ema = {}, {}, {}
    for g in groups:
        if strategy == "simple":
            a = {f: 1.0 / len(names) for f in names}
        elif strategy == "adaptive":
            a = _share({f: coefficient_of_variation(normalize_one(checked[f][g], "minmax")) for f in names})
        elif target is None:
            a = {f: 1.0 / len(names) for f in names}
        else:
            a = _share(
                {f: max(0.0, _pearson(normalize_one(checked[f][g], "minmax"), target[g])) for f in names}
            )
        fused = sum(a[f] * normalize_one(checked[f][g], norm) for f in names)
        scores[g], weights[g] = fused, a
        if strategy == "learned":
            new_ema[g] = decay * state.ema[g] + (1 - decay) * normalize_one(fused, "minmax").to(torch.float64)
    new_state = LearnedState(new_ema, state.steps + 1) if strategy == "learned" else None
    return Fused(scores, weights, new_state)
