"""Statistic families: per-unit means of element scores, and a family's weighted score per unit.

:func:`per_unit` reduces a per-element score tree to ``{group: (size,)}`` (the mean over each
unit's entries); :func:`gradient_family` does it for the four gradient statistics;
:func:`family_score` is ``sum_s weights[s] * normalize(stats[s])``, with the scheme's default
weights :data:`WEIGHT_FAMILY`, :data:`ACTIVATION_FAMILY`, :data:`GRADIENT_FAMILY` and
:data:`COOPERATION_FAMILY` (each summing to 1; all four in :data:`FAMILY_WEIGHTS`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import torch
from einops import reduce

from pure_prune import tree
from pure_prune.groups import ChannelGroup, member_view
from pure_prune.importance.unit_scores import (
    Family,
    as_float,
    check_norm,
    check_units,
    normalize_one,
    same_groups,
)

__all__ = [
    "ACTIVATION_FAMILY",
    "COOPERATION_FAMILY",
    "FAMILY_WEIGHTS",
    "GRADIENT_FAMILY",
    "WEIGHT_FAMILY",
    "family_score",
    "gradient_family",
    "per_unit",
]

WEIGHT_FAMILY = MappingProxyType(
    {"l2": 0.3, "variance": 0.2, "nonzero_ratio": 0.2, "entropy": 0.2, "effective_rank": 0.1}
)
ACTIVATION_FAMILY = MappingProxyType(
    {"frequency": 0.2, "magnitude": 0.3, "variance": 0.2, "entropy": 0.2, "range": 0.1}
)
GRADIENT_FAMILY = MappingProxyType({"magnitude": 0.4, "stability": 0.2, "snr": 0.2, "sign_consistency": 0.2})
COOPERATION_FAMILY = MappingProxyType(
    {"connection_strength": 0.3, "uniqueness": 0.3, "degree_centrality": 0.2, "cooperation_ability": 0.2}
)
FAMILY_WEIGHTS = MappingProxyType(
    {
        "weights": WEIGHT_FAMILY,
        "activations": ACTIVATION_FAMILY,
        "gradients": GRADIENT_FAMILY,
        "cooperation": COOPERATION_FAMILY,
    }
)


# ----------------------------------------------------------------------------- per-unit / families
def per_unit(element_scores: tree.Tree, groups: Sequence[ChannelGroup]) -> dict[str, torch.Tensor]:
    """Mean of a per-element score tree over the entries each unit owns.

    ``element_scores`` is a tree like params (``None`` where unscored, e.g. a ``GradStats`` field of
    :mod:`pure_prune.importance.gradient`). Unit ``u`` of a group gets the mean of its entries in the
    group's members marked ``score=True`` whose leaf is a tensor. Returns ``{group: (size,)}``.
    """
    paths, leaves, _ = tree.flatten_with_paths(element_scores)
    index = dict(zip(paths, leaves))
    out = {}
    for g in groups:
        if not isinstance(g, ChannelGroup):
            raise TypeError(f"per_unit: groups must hold ChannelGroup, got {type(g).__name__}")
        total, count = None, 0
        for m in g.members:
            if not m.score or m.path.startswith("state."):
                continue
            if m.path not in index:
                raise ValueError(
                    f"per_unit: group {g.name!r} member {m.path!r} is not a leaf of element_scores"
                )
            x = index[m.path]
            if x is None:
                continue
            if not isinstance(x, torch.Tensor) or not x.is_floating_point():
                raise TypeError(f"per_unit: element score {m.path!r} must be a float tensor, got {x!r:.60}")
            v = member_view(as_float(x.detach()), m, g.size)
            part = reduce(v, "u r -> u", "sum")
            total = part if total is None else total + part
            count += v.shape[1]
        if total is None:
            raise ValueError(
                f"per_unit: group {g.name!r} has no scored member with a tensor in element_scores"
            )
        out[g.name] = total / count
    return out


def gradient_family(stats: Any, groups: Sequence[ChannelGroup]) -> dict[str, dict[str, torch.Tensor]]:
    """The gradients family ``{"magnitude", "stability", "snr", "sign_consistency"} -> {group: (size,)}``.

    ``stats`` holds per-element trees under those four names, as attributes (a ``GradStats`` from
    :func:`pure_prune.importance.gradient.gradient_stats`) or as mapping keys; each is reduced with
    :func:`per_unit` (the mean over the unit's entries).
    """
    out = {}
    for name in GRADIENT_FAMILY:
        t = stats.get(name) if isinstance(stats, Mapping) else getattr(stats, name, None)
        if t is None:
            raise ValueError(f"gradient_family: stats has no {name!r} (expected {list(GRADIENT_FAMILY)})")
        out[name] = per_unit(t, groups)
    return out


def _check_weights(where: str, weights: Mapping[str, float]) -> dict[str, float]:
    if not isinstance(weights, Mapping) or not weights:
        raise TypeError(
            f"{where}: weights must be a non-empty mapping {{statistic: weight}}, got {weights!r:.80}"
        )
    out = {}
    for k, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < math.inf:
            raise ValueError(f"{where}: weight of {k!r} must be a finite float >= 0, got {w!r}")
        out[k] = float(w)
    if sum(out.values()) <= 0:
        raise ValueError(f"{where}: weights sum to 0: {out}")
    return out


def family_score(
    stats: Family, weights: Mapping[str, float], *, norm: str = "minmax"
) -> dict[str, torch.Tensor]:
    """A family's importance per unit: ``sum_s weights[s] * normalize(stats[s])[group]``.

    ``stats``: ``{statistic: {group: (size,)}}`` holding every statistic named in ``weights``
    (others are ignored); ``weights``: ``{statistic: w >= 0}``, used as given (the scheme's defaults,
    e.g. :data:`WEIGHT_FAMILY`, sum to 1, so with ``"minmax"`` or ``"rank"`` the score is in
    ``[0, 1]``). Returns ``{group: (size,)}``.
    """
    where = "family_score"
    w = _check_weights(where, weights)
    check_norm(where, norm)
    if not isinstance(stats, Mapping):
        raise TypeError(
            f"{where}: stats must be a mapping {{statistic: {{group: tensor}}}}, got {type(stats).__name__}"
        )
    missing = [k for k in w if k not in stats]
    if missing:
        raise ValueError(f"{where}: stats lacks statistics {missing}; it has {sorted(stats)}")
    checked = {k: check_units(where, f"stats[{k!r}]", stats[k]) for k in w}
    same_groups(where, checked, "statistic")
    out: dict[str, torch.Tensor] = {}
    for k, wk in w.items():
        for g, x in checked[k].items():
            term = wk * normalize_one(x, norm)
            out[g] = term if g not in out else out[g] + term
    return out
