"""Unit scores: checking them, normalising them per group, and how unequally they spread.

A *unit score* is ``{group name: (size,) float tensor}`` (higher = more important); a *family* is
``{statistic: unit score}``. :func:`check_units` checks a unit score (finite, 1-D, float; returned
detached, promoted to at least float32), :func:`normalize` maps each group to ``[0, 1]``
(``"minmax"``, ``"rank"``) or to zero mean and unit std (``"zscore"``), and
:func:`coefficient_of_variation` is ``std / mean``. Used by :mod:`pure_prune.importance.fusion`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = [
    "Family",
    "UnitScores",
    "as_float",
    "check_norm",
    "check_units",
    "coefficient_of_variation",
    "normalize",
    "normalize_one",
    "same_groups",
]

UnitScores = Mapping[str, torch.Tensor]
Family = Mapping[str, UnitScores]

_NORMS = ("minmax", "zscore", "rank")


# ----------------------------------------------------------------------------------- validation
def as_float(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def check_units(where: str, what: str, scores: Any) -> dict[str, torch.Tensor]:
    """``{group: (size,)}`` of finite floats, or ``ValueError``/``TypeError`` naming ``what[group]``."""
    if not isinstance(scores, Mapping) or not scores:
        raise TypeError(
            f"{where}: {what} must be a non-empty mapping {{group: (size,) tensor}}, got {scores!r:.80}"
        )
    out = {}
    for g, x in scores.items():
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim != 1 or x.numel() == 0:
            got = (x.dtype, tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__
            raise TypeError(f"{where}: {what}[{g!r}] must be a non-empty 1-D float tensor, got {got}")
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            i = int(torch.nonzero(bad)[0, 0])
            raise ValueError(f"{where}: {what}[{g!r}] is not finite at unit {i}: {x[i].item()}")
        out[g] = as_float(x.detach())
    return out


def check_norm(where: str, norm: str) -> str:
    if norm not in _NORMS:
        raise ValueError(f"{where}: norm must be one of {_NORMS}, got {norm!r}")
    return norm


def same_groups(where: str, named: Mapping[str, Mapping[str, torch.Tensor]], kind: str) -> None:
    """Every entry of ``named`` has the same groups with the same sizes as the first."""
    items = list(named.items())
    ref_name, ref = items[0]
    sizes = {g: x.shape[0] for g, x in ref.items()}
    for name, scores in items[1:]:
        got = {g: x.shape[0] for g, x in scores.items()}
        if got != sizes:
            raise ValueError(
                f"{where}: {kind} {name!r} has groups {got}, but {kind} {ref_name!r} has {sizes}"
            )


# -------------------------------------------------------------------------------- normalisation
def normalize_one(x: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "minmax":
        lo, hi = x.min(), x.max()
        return torch.where(
            hi > lo, (x - lo) / torch.where(hi > lo, hi - lo, torch.ones_like(hi)), torch.zeros_like(x)
        )
    if norm == "zscore":
        mean = x.mean()
        std = (x - mean).square().mean().sqrt()
        return torch.where(
            std > 0, (x - mean) / torch.where(std > 0, std, torch.ones_like(std)), torch.zeros_like(x)
        )
    n = x.shape[0]
    if n == 1 or bool(x.min() == x.max()):
        return torch.zeros_like(x)
    v = torch.sort(x).values
    below = torch.searchsorted(v, x, right=False)
    upto = torch.searchsorted(v, x, right=True)
    return (below + upto - 1).to(x.dtype) / (2 * (n - 1))


def normalize(scores: UnitScores, norm: str = "minmax") -> dict[str, torch.Tensor]:
    """Normalise each group's unit scores separately (per layer).

    ``"minmax"``: ``(x - min) / (max - min)`` in ``[0, 1]``; ``"zscore"``: ``(x - mean) / std``
    (population std); ``"rank"``: the unit's average rank among the group's units (0-based, ties
    share the mean of their ranks) divided by ``size - 1``, in ``[0, 1]``. A constant group (and a
    group of one unit) maps to zeros: it discriminates nothing. Returns ``{group: (size,)}``.
    """
    where = "normalize"
    check_norm(where, norm)
    return {g: normalize_one(x, norm) for g, x in check_units(where, "scores", scores).items()}


def coefficient_of_variation(x: torch.Tensor) -> float:
    """``std / mean`` of a ``(size,)`` tensor (population std); 0 when the mean is 0.

    Meant for non-negative importances, where it measures how unequally importance is spread.
    """
    x = as_float(x.detach()).to(torch.float64)
    mean = float(x.mean())
    if mean == 0:
        return 0.0
    return float((x - mean).square().mean().sqrt()) / mean
