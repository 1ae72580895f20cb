"""Adaptive retention: how many units of each group to keep, and from unit scores to masks.

:func:`keep_counts` keeps, per group, the fewest most-important units that carry a share of the
group's importance chosen from its coefficient of variation (:func:`retention_share`,
:data:`RETENTION_RULES`); :func:`keep_masks` gives those units as ``{group: (size,) bool}``.
:func:`unit_scores_to_tree` and :func:`keep_to_sparsity` turn unit scores and counts into the
score tree and per-group sparsity that ``select.channels`` prunes exactly ``size - keep`` units with.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from einops import rearrange

from pure_prune import tree
from pure_prune.groups import ChannelGroup, member_view
from pure_prune.importance.unit_scores import UnitScores, check_units, coefficient_of_variation
from pure_prune.select import lowest_k

__all__ = [
    "RETENTION_RULES",
    "keep_counts",
    "keep_masks",
    "keep_to_sparsity",
    "retention_share",
    "unit_scores_to_tree",
]

#: ``(cv threshold, share of total importance kept)``, tried in order: cv > 2.5 keeps 70%, cv > 1.5 80%.
RETENTION_RULES = ((2.5, 0.7), (1.5, 0.8))


# ------------------------------------------------------------------------------------- retention
def _check_rules(rules: Sequence[tuple[float, float]], otherwise: float, floor: float) -> None:
    for r in rules:
        if len(r) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in r):
            raise ValueError(f"retention rules must be (cv threshold, share) pairs, got {r!r}")
        if not 0 < r[1] <= 1:
            raise ValueError(f"retention rule {r!r}: share must be in (0, 1]")
    if isinstance(otherwise, bool) or not isinstance(otherwise, (int, float)) or not 0 < otherwise <= 1:
        raise ValueError(f"retention: otherwise must be a share in (0, 1], got {otherwise!r}")
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 <= floor <= 1:
        raise ValueError(f"retention: floor must be a share in [0, 1], got {floor!r}")


def retention_share(
    cv: float, *, rules: Sequence[tuple[float, float]] = RETENTION_RULES, otherwise: float = 0.9
) -> float:
    """Share of total importance to keep for a group whose importances have coefficient of variation ``cv``.

    The first rule ``(threshold, share)`` with ``cv > threshold`` wins (defaults: cv > 2.5
    → 0.7, cv > 1.5 → 0.8); otherwise ``otherwise`` (0.9, the conservative rule).
    """
    _check_rules(rules, otherwise, 0.0)
    for threshold, share in rules:
        if cv > threshold:
            return float(share)
    return float(otherwise)


def keep_counts(
    importance: UnitScores,
    *,
    rules: Sequence[tuple[float, float]] = RETENTION_RULES,
    otherwise: float = 0.9,
    floor: float = 0.5,
) -> dict[str, int]:
    """Adaptive retention: how many units of each group to keep.

    For a group with non-negative importances ``x`` (``size`` units): ``cv =``
    :func:`coefficient_of_variation` ``(x)`` and ``p =`` :func:`retention_share` ``(cv)``. The group
    keeps the smallest number ``k`` of its most important units whose importances sum to at least
    ``p · sum(x)`` (in float64). A high ``cv`` means a few units carry most of the importance, so a
    smaller share is safe; under the conservative rule (no threshold passed: importances are alike,
    a poor basis for removal) the group also keeps at least ``ceil(floor · size)`` units (default
    half). Every group keeps at least one unit. Returns ``{group: k}``; deterministic.
    """
    where = "keep_counts"
    _check_rules(rules, otherwise, floor)
    checked = check_units(where, "importance", importance)
    out = {}
    for g, x in checked.items():
        if bool((x < 0).any()):
            i = int(torch.nonzero(x < 0)[0, 0])
            raise ValueError(
                f"{where}: importance[{g!r}] is negative at unit {i}: {x[i].item()} (use minmax or rank)"
            )
        cv = coefficient_of_variation(x)
        share = retention_share(cv, rules=rules, otherwise=otherwise)
        v = torch.sort(x.to(torch.float64), descending=True).values
        need = share * float(v.sum())
        k = min(int((torch.cumsum(v, 0) < need).sum()) + 1, x.shape[0]) if need > 0 else 0
        if not any(cv > t for t, _ in rules):
            k = max(k, math.ceil(floor * x.shape[0]))
        out[g] = max(k, 1)
    return out


def keep_masks(
    importance: UnitScores,
    *,
    rules: Sequence[tuple[float, float]] = RETENTION_RULES,
    otherwise: float = 0.9,
    floor: float = 0.5,
) -> dict[str, torch.Tensor]:
    """Unit keep masks ``{group: (size,) bool}`` with exactly :func:`keep_counts` units ``True``.

    The kept units are those with the highest importance; among equal importances the earlier unit
    is removed first, as in :func:`pure_prune.select.lowest_k` (so the same units as
    ``select.channels`` with :func:`unit_scores_to_tree` and :func:`keep_to_sparsity` remove).
    """
    counts = keep_counts(importance, rules=rules, otherwise=otherwise, floor=floor)
    checked = check_units("keep_masks", "importance", importance)
    return {g: ~lowest_k([x], x.shape[0] - counts[g])[0] for g, x in checked.items()}


def keep_to_sparsity(keep: Mapping[str, int], groups: Sequence[ChannelGroup]) -> dict[str, float]:
    """Per-group sparsity ``{group: (size - k) / size}`` for ``select.channels(scope="layer")``.

    ``select.channels`` prunes ``round(s · size)`` units, which is exactly ``size - k`` here.
    """
    sizes = {g.name: g.size for g in groups}
    out = {}
    for name, k in keep.items():
        if name not in sizes:
            raise ValueError(f"keep_to_sparsity: group {name!r} is not in groups {sorted(sizes)}")
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= sizes[name]:
            raise ValueError(
                f"keep_to_sparsity: keep[{name!r}] must be an int in [0, {sizes[name]}], got {k!r}"
            )
        out[name] = (sizes[name] - k) / sizes[name]
    return out


# -------------------------------------------------------------------------------- to a score tree
def unit_scores_to_tree(
    unit_scores: UnitScores, groups: Sequence[ChannelGroup], params: tree.Tree
) -> tree.Tree:
    """A score tree like ``params`` that makes ``select.channels`` rank units by ``unit_scores``.

    Every entry unit ``u`` owns in a member marked ``score=True`` holds ``unit_scores[group][u]``;
    other member leaves (biases, BatchNorm, consumers) hold zeros (``select.channels`` needs their
    shapes) and leaves of no group are ``None``. ``select.channels(tree, s, groups, ord=1,
    normalize=True)`` then scores unit ``u`` by the mean of its entries, i.e. by its unit score
    (up to float rounding of that mean, which preserves order but may merge values one ulp apart).

    ``unit_scores`` must be non-negative (``channels`` ranks ``|score|``) and name every prunable
    group; a leaf scored by two groups raises ``ValueError``.
    """
    where = "unit_scores_to_tree"
    checked = check_units(where, "unit_scores", unit_scores)
    paths, leaves, spec = tree.flatten_with_paths(params)
    index = {p: i for i, p in enumerate(paths)}
    sizes = {g.name: g.size for g in groups}
    for g, x in checked.items():
        if g not in sizes:
            raise ValueError(f"{where}: unit_scores names group {g!r}, not in groups {sorted(sizes)}")
        if x.shape[0] != sizes[g]:
            raise ValueError(f"{where}: unit_scores[{g!r}] has {x.shape[0]} units, group has {sizes[g]}")
        if bool((x < 0).any()):
            i = int(torch.nonzero(x < 0)[0, 0])
            raise ValueError(f"{where}: unit_scores[{g!r}] is negative at unit {i}: {x[i].item()}")
    missing = [g.name for g in groups if g.prunable and g.name not in checked]
    if missing:
        raise ValueError(f"{where}: unit_scores lacks prunable groups {missing}")
    dtype = torch.float32
    for x in checked.values():
        dtype = torch.promote_types(dtype, x.dtype)

    out: list[torch.Tensor | None] = [None] * len(leaves)
    owner: dict[str, str] = {}
    for g in groups:
        for m in g.members:
            if m.path.startswith("state."):
                continue
            if m.path not in index:
                raise ValueError(f"{where}: group {g.name!r} member {m.path!r} is not a leaf of params")
            i = index[m.path]
            shape = leaves[i].shape
            if m.score and g.name in checked:
                if m.path in owner:
                    raise ValueError(
                        f"{where}: leaf {m.path!r} is scored by groups {owner[m.path]!r} and {g.name!r}"
                    )
                owner[m.path] = g.name
                member_view(leaves[i], m, g.size)  # checks the axis length
                along = rearrange(
                    checked[g.name][None, :, None].expand(m.outer, g.size, m.inner), "o c i -> (o c i)"
                )
                view = [1] * len(shape)
                view[m.axis % len(shape)] = shape[m.axis % len(shape)]
                out[i] = along.to(dtype).reshape(view).expand(shape).clone()
            elif out[i] is None:
                out[i] = torch.zeros(shape, dtype=dtype, device=leaves[i].device)
    return tree.unflatten(spec, out)
