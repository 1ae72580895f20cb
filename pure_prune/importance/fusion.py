"""Fusing per-unit statistics into one importance per unit, and adaptive retention.

Shapes: a *unit score* is ``{group name: (size,) float tensor}`` (higher = more important); a
*family* is ``{statistic: unit score}`` (e.g. :func:`pure_prune.importance.weights.weight_stats`,
:func:`pure_prune.importance.activation.activation_finalize`, :func:`gradient_family`).

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

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

import torch
from einops import rearrange, reduce

from pure_prune import tree
from pure_prune.groups import ChannelGroup, member_view
from pure_prune.select import lowest_k

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

UnitScores = Mapping[str, torch.Tensor]
Family = Mapping[str, UnitScores]

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
#: ``(cv threshold, share of total importance kept)``, tried in order: cv > 2.5 keeps 70%, cv > 1.5 80%.
RETENTION_RULES = ((2.5, 0.7), (1.5, 0.8))

_NORMS = ("minmax", "zscore", "rank")


# ----------------------------------------------------------------------------------- validation
def _float(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _check_units(where: str, what: str, scores: Any) -> dict[str, torch.Tensor]:
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
        out[g] = _float(x.detach())
    return out


def _check_norm(where: str, norm: str) -> str:
    if norm not in _NORMS:
        raise ValueError(f"{where}: norm must be one of {_NORMS}, got {norm!r}")
    return norm


def _same_groups(where: str, named: Mapping[str, Mapping[str, torch.Tensor]], kind: str) -> None:
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
def _normalize_one(x: torch.Tensor, norm: str) -> torch.Tensor:
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
    _check_norm(where, norm)
    return {g: _normalize_one(x, norm) for g, x in _check_units(where, "scores", scores).items()}


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
            v = member_view(_float(x.detach()), m, g.size)
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
    _check_norm(where, norm)
    if not isinstance(stats, Mapping):
        raise TypeError(
            f"{where}: stats must be a mapping {{statistic: {{group: tensor}}}}, got {type(stats).__name__}"
        )
    missing = [k for k in w if k not in stats]
    if missing:
        raise ValueError(f"{where}: stats lacks statistics {missing}; it has {sorted(stats)}")
    checked = {k: _check_units(where, f"stats[{k!r}]", stats[k]) for k in w}
    _same_groups(where, checked, "statistic")
    out: dict[str, torch.Tensor] = {}
    for k, wk in w.items():
        for g, x in checked[k].items():
            term = wk * _normalize_one(x, norm)
            out[g] = term if g not in out else out[g] + term
    return out


# ----------------------------------------------------------------------------------------- fusion
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


def coefficient_of_variation(x: torch.Tensor) -> float:
    """``std / mean`` of a ``(size,)`` tensor (population std); 0 when the mean is 0.

    Meant for non-negative importances, where it measures how unequally importance is spread.
    """
    x = _float(x.detach()).to(torch.float64)
    mean = float(x.mean())
    if mean == 0:
        return 0.0
    return float((x - mean).square().mean().sqrt()) / mean


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
    _check_norm(where, norm)
    if strategy not in ("simple", "adaptive", "learned"):
        raise ValueError(f"{where}: strategy must be 'simple', 'adaptive' or 'learned', got {strategy!r}")
    if not isinstance(families, Mapping) or not families:
        raise TypeError(f"{where}: families must be a non-empty mapping {{family: {{group: tensor}}}}")
    checked = {f: _check_units(where, f"families[{f!r}]", s) for f, s in families.items()}
    _same_groups(where, checked, "family")
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
            a = _share({f: coefficient_of_variation(_normalize_one(checked[f][g], "minmax")) for f in names})
        elif target is None:
            a = {f: 1.0 / len(names) for f in names}
        else:
            a = _share(
                {f: max(0.0, _pearson(_normalize_one(checked[f][g], "minmax"), target[g])) for f in names}
            )
        fused = sum(a[f] * _normalize_one(checked[f][g], norm) for f in names)
        scores[g], weights[g] = fused, a
        if strategy == "learned":
            new_ema[g] = decay * state.ema[g] + (1 - decay) * _normalize_one(fused, "minmax").to(
                torch.float64
            )
    new_state = LearnedState(new_ema, state.steps + 1) if strategy == "learned" else None
    return Fused(scores, weights, new_state)


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
    checked = _check_units(where, "importance", importance)
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
    checked = _check_units("keep_masks", "importance", importance)
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
    checked = _check_units(where, "unit_scores", unit_scores)
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
