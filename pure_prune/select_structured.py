"""Structured selection: whole slices, units/channels of channel groups, and N:M patterns.

* :func:`rows`: per-leaf Ln-structured pruning of slices along an axis (``torch.nn.utils.prune.ln_structured``).
* :func:`unit_norms` and :func:`units` (and both in one, :func:`channels`): remove the lowest-scoring
  units of the model's channel groups (:mod:`pure_prune.groups`), every param member of a unit at once.
* :func:`n_of_m`: keep exactly ``n`` of every ``m`` consecutive entries (e.g. 2:4, Mishra et al. 2021).

Every function returns bool masks (``True`` = kept) and counts exactly ``round(s · size)``.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence

import torch
from einops import rearrange, reduce

from pure_prune import tree
from pure_prune.groups import ChannelGroup, member_view, unit_mask_to_member
from pure_prune.select_inputs import (
    Sparsity,
    check_groups,
    check_int,
    check_masks,
    check_scope,
    check_scores,
    check_sparsity,
    common_dtype,
    eager,
    flatten_inputs,
    live_scores,
    prune_count,
)
from pure_prune.select_lowest_k import lowest_k

__all__ = ["channels", "n_of_m", "rows", "unit_norms", "units"]


def _norm_rows(x: torch.Tensor, ord: float) -> torch.Tensor:
    """``(units, rest)`` -> per-unit ``sum |x|^ord`` (the ord-th power of the Ln norm)."""
    if ord == 1:
        return reduce(x.abs(), "u r -> u", "sum")
    if ord == 2:
        return reduce(x * x, "u r -> u", "sum")
    if ord == float("inf"):  # an empty slice (r == 0) has norm 0; amax refuses empty reductions
        return reduce(x.abs(), "u r -> u", "max") if x.shape[1] else x.new_zeros(x.shape[0])
    return reduce(x.abs() ** ord, "u r -> u", "sum")


def _check_axis(where: str, axis: int, path: str, x: torch.Tensor) -> None:
    """``ValueError`` naming ``where``, the score's ``path`` and shape when ``axis`` is not an axis of ``x``."""
    if x.ndim == 0 or not -x.ndim <= axis < x.ndim:
        raise ValueError(f"{where}: axis {axis} out of range for score {path!r} of shape {tuple(x.shape)}")


def _check_ord(ord: float) -> float:
    if isinstance(ord, bool) or not isinstance(ord, numbers.Real):
        raise TypeError(f"ord must be a real number > 0 (1, 2, inf, ...), got {type(ord).__name__} {ord!r}")
    if not (ord > 0):
        raise ValueError(f"ord must be > 0 (1, 2, inf, ...), got {ord!r}")
    return float(ord)


def rows(
    scores: tree.Tree,
    sparsity: float,
    *,
    axis: int = 0,
    ord: float = 2,
    masks: tree.Tree | None = None,
) -> tree.Tree:
    """Per-leaf structured pruning (``torch.nn.utils.prune.ln_structured``): in every scored leaf
    remove ``round(s · size)`` slices along ``axis`` with the smallest Ln norm (over all other axes).

    ``axis=0`` removes output rows/filters, ``axis=1`` input columns/channels. Returns masks with
    whole slices ``False``; a slice already fully pruned in ``masks`` counts toward the target.
    """
    s = check_sparsity(sparsity)
    p_ord = _check_ord(ord)
    axis = check_int("rows: axis", axis)
    names, s_leaves, m_leaves, spec = flatten_inputs(scores, masks)
    out: list[torch.Tensor | None] = []
    for path, x, m in zip(names, s_leaves, m_leaves):
        if x is None:
            out.append(m)
            continue
        if eager():
            _check_axis("rows", axis, path, x)
        ax = axis % x.ndim
        v = rearrange(torch.movedim(x.to(common_dtype([x])), ax, 0), "u ... -> u (...)")
        norms = _norm_rows(v, p_ord)
        if m is not None:
            alive = reduce(rearrange(torch.movedim(m, ax, 0), "u ... -> u (...)"), "u r -> u", "any")
            norms = torch.where(alive, norms, torch.full_like(norms, float("-inf")))
        unit_pruned = lowest_k([norms], prune_count(s, x.shape[ax]))[0]
        shape = [1] * x.ndim
        shape[ax] = x.shape[ax]
        keep = (~unit_pruned).reshape(shape).expand(x.shape)
        out.append(keep.clone() if m is None else keep & m)
    return tree.unflatten(spec, out)


def unit_norms(
    scores: tree.Tree,
    groups: Sequence[ChannelGroup],
    *,
    ord: float = 1,
    normalize: bool = False,
    masks: tree.Tree | None = None,
) -> dict[str, torch.Tensor]:
    """Per-unit structured scores of every prunable group: ``{group name: (size,) tensor}``.

    Unit ``c`` scores ``(Σ_members Σ_entries |score|^ord)^(1/ord)`` — computed as the sum of
    ``|score|^ord`` (the ``1/ord`` power does not change the ranking) — over the group's members
    marked ``score`` whose score leaf is not ``None``; ``normalize=True`` divides by the number of
    those entries. ``masks`` are only checked against ``scores`` here; the norms stay finite
    (:func:`units` refuses non-finite unit scores) and :func:`units` itself ranks the units that
    ``masks`` prune entirely below all others.
    """
    p_ord = _check_ord(ord)
    check_groups(groups)
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be a bool, got {normalize!r}")
    names, s_leaves, _ = tree.flatten_with_paths(scores)
    m_leaves = [None] * len(s_leaves) if masks is None else tree.leaves(masks)
    if eager():
        if masks is not None:
            tree.assert_same_structure(scores, masks, ("scores", "masks"))
        check_scores(names, s_leaves)
        check_masks(names, s_leaves, m_leaves)
    index = {p: i for i, p in enumerate(names)}
    out: dict[str, torch.Tensor] = {}
    for g in groups:
        if not g.prunable:
            continue
        total, count = None, 0
        for mem in g.members:
            if mem.path.startswith("state."):
                continue
            if mem.path not in index:
                raise ValueError(f"channel group {g.name!r}: member {mem.path!r} is not a leaf of scores")
            x = s_leaves[index[mem.path]]
            if x is None or not mem.score:
                continue
            v = _norm_rows(member_view(x.to(common_dtype([x])), mem, g.size), p_ord)
            total = v if total is None else total + v
            count += x.numel() // g.size
        if total is None:
            raise ValueError(f"channel group {g.name!r}: no scored member has a score tensor")
        out[g.name] = total / count if normalize else total
    return out


def _alive_units(g: ChannelGroup, index: dict[str, int], m_leaves: Sequence[torch.Tensor | None]):
    alive = None
    for mem in g.members:
        if mem.path.startswith("state.") or mem.path not in index:
            continue
        m = m_leaves[index[mem.path]]
        if m is not None:
            mv = reduce(member_view(m, mem, g.size), "u r -> u", "any")
            alive = mv if alive is None else alive | mv
    return alive


def units(
    unit_scores: Mapping[str, torch.Tensor],
    sparsity: Sparsity,
    groups: Sequence[ChannelGroup],
    like: tree.Tree,
    *,
    scope: str = "layer",
    masks: tree.Tree | None = None,
) -> tree.Tree:
    """Remove the lowest-scoring units of the model's channel groups.

    ``unit_scores``: ``{group name: (size,) float tensor}`` for every prunable group (higher =
    more important; e.g. :func:`unit_norms`, a HAP or fused score). ``like``: a tree with the
    params' structure whose leaves give the member shapes (the params themselves, or scores with
    ``None`` where ``masks`` holds a tensor). ``scope="layer"`` removes ``round(s·size)`` units of
    every prunable group (``sparsity`` may be ``{group name: s}``, missing groups 0);
    ``"global"`` removes ``round(s·U)`` of all ``U`` prunable units. Units already fully pruned in
    ``masks`` count as removed. Returns masks with the structure of ``like``: every param member
    of a removed unit (weights, biases, BatchNorm, the consumer's input slice) is ``False``;
    leaves no group touches keep their mask from ``masks`` (or ``None``). Every argument is checked
    before any work: ``unit_scores`` a mapping of float ``(size,)`` tensors, ``groups`` a sequence
    of ``ChannelGroup``, ``sparsity`` a real number in [0, 1] (or such a mapping), ``scope``.
    """
    check_groups(groups)
    check_scope(scope)
    if not isinstance(sparsity, Mapping):
        check_sparsity(sparsity)
    if not isinstance(unit_scores, Mapping):
        raise TypeError(
            f"unit_scores must be a mapping {{group name: (size,) tensor}}, got {type(unit_scores).__name__}"
        )
    for name, u in unit_scores.items():
        if not isinstance(u, torch.Tensor) or not u.is_floating_point():
            what = f"a {u.dtype} tensor" if isinstance(u, torch.Tensor) else f"{type(u).__name__} {u!r:.60}"
            raise TypeError(f"units: scores of group {name!r} must be a float tensor, got {what}")
    names, l_leaves, spec = tree.flatten_with_paths(like)
    m_leaves = [None] * len(l_leaves) if masks is None else tree.leaves(masks)
    if eager() and masks is not None:
        tree.assert_same_structure(like, masks, ("like", "masks"))
        check_masks(names, l_leaves, m_leaves)
    index = {p: i for i, p in enumerate(names)}
    active = [g for g in groups if g.prunable]
    if eager() and not active:
        raise ValueError("units: no prunable channel group")
    scored = []
    for g in active:
        if g.name not in unit_scores:
            raise ValueError(f"units: no unit scores for group {g.name!r}")
        u = unit_scores[g.name]
        if eager():
            if tuple(u.shape) != (g.size,):
                raise ValueError(
                    f"units: scores of group {g.name!r} have shape {tuple(u.shape)}, expected ({g.size},)"
                )
            check_scores([g.name], [u])
        u = u.to(common_dtype([u]))
        alive = _alive_units(g, index, m_leaves)
        if alive is not None:
            u = torch.where(alive, u, torch.full_like(u, float("-inf")))
        scored.append(u)

    if scope == "global":
        if isinstance(sparsity, Mapping):
            raise TypeError("a per-group sparsity mapping needs scope='layer'")
        s = check_sparsity(sparsity)
        pruned = lowest_k(scored, prune_count(s, sum(g.size for g in active)))
    elif scope == "layer":
        if isinstance(sparsity, Mapping):
            unknown = sorted(set(sparsity) - {g.name for g in active})
            if unknown:
                raise ValueError(f"per-group sparsity names unknown groups {unknown}")
            per = [check_sparsity(sparsity.get(g.name, 0.0), f" of group {g.name!r}") for g in active]
        else:
            per = [check_sparsity(sparsity)] * len(active)
        pruned = [lowest_k([u], prune_count(s, g.size))[0] for u, g, s in zip(scored, active, per)]
    else:
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")

    out = list(m_leaves)
    for g, unit_pruned in zip(active, pruned):
        keep_units = ~unit_pruned
        for mem in g.members:
            if mem.path.startswith("state."):
                continue
            if mem.path not in index:
                raise ValueError(f"channel group {g.name!r}: member {mem.path!r} is not a leaf of the tree")
            i = index[mem.path]
            ref = l_leaves[i] if l_leaves[i] is not None else m_leaves[i]
            if ref is None and (mem.score or mem.axis not in (0, -1)):
                raise ValueError(
                    f"channel group {g.name!r}: member {mem.path!r} has neither a tensor nor a mask; "
                    "pass a tree with a tensor there (e.g. the params) so its shape is known"
                )
            # an unscored axis-0 member with neither (a bias, a BatchNorm weight: None in magnitude
            # scores of default masks) is a per-unit vector of outer * size * inner entries
            shape = ref.shape if ref is not None else torch.Size([mem.outer * g.size * mem.inner])
            keep = unit_mask_to_member(keep_units, mem, shape)
            out[i] = keep.clone() if out[i] is None else out[i] & keep
    return tree.unflatten(spec, out)


def channels(
    scores: tree.Tree,
    sparsity: Sparsity,
    groups: Sequence[ChannelGroup],
    *,
    scope: str = "layer",
    ord: float = 1,
    normalize: bool = False,
    masks: tree.Tree | None = None,
) -> tree.Tree:
    """Prune whole units/channels of the model's channel groups (filter pruning by Ln norm).

    :func:`unit_norms` of ``scores`` (``ord``, ``normalize``) then :func:`units`. ``scores`` has the
    structure of params with tensors at every scored member (biases and norms may be ``None``;
    their shapes come from ``masks`` or they must be tensors). ``scope="layer"`` removes
    ``round(s·size)`` units of every prunable group; ``"global"`` ``round(s·U)`` over all of them.
    An unscored axis-0 member whose score is ``None`` and that has no mask (a bias or BatchNorm
    weight under ``magnitude(params, mask.ones_like(params))``) is taken as a vector of
    ``outer * size * inner`` entries and gets a mask. Returns masks with the structure of ``scores``.
    """
    norms = unit_norms(scores, groups, ord=ord, normalize=normalize, masks=masks)
    return units(norms, sparsity, groups, scores, scope=scope, masks=masks)


def n_of_m(scores: tree.Tree, n: int, m: int, *, axis: int = -1, masks: tree.Tree | None = None) -> tree.Tree:
    """Keep exactly ``n`` of every ``m`` consecutive entries along ``axis`` (e.g. 2:4 sparsity).

    The ``n`` highest scores of each group survive (ties: earlier position kept). Already-pruned
    entries rank lowest; a group that had fewer than ``n`` live entries keeps only those.
    Raises ``ValueError`` when ``n > m``, ``m < 1`` or ``m`` does not divide the axis length.
    """
    if (
        isinstance(n, bool)
        or isinstance(m, bool)
        or not (isinstance(n, int) and isinstance(m, int))
        or m < 1
        or not 0 <= n <= m
    ):
        raise ValueError(f"n_of_m needs integers 0 <= n <= m and m >= 1, got n={n!r}, m={m!r}")
    axis = check_int("n_of_m: axis", axis)
    names, s_leaves, m_leaves, spec = flatten_inputs(scores, masks)
    out: list[torch.Tensor | None] = []
    for path, x, old in zip(names, s_leaves, m_leaves):
        if x is None:
            out.append(old)
            continue
        _check_axis("n_of_m", axis, path, x)
        ax = axis % x.ndim
        if x.shape[ax] % m:
            raise ValueError(
                f"n_of_m: m={m} does not divide axis {axis} of length {x.shape[ax]} in score {path!r}"
            )
        live = live_scores(x, old, common_dtype([x]))
        moved = torch.movedim(live, ax, -1)
        grouped = rearrange(moved, "... (g m) -> ... g m", m=m)
        order = torch.sort(grouped, dim=-1, descending=True, stable=True).indices
        rank = torch.argsort(order, dim=-1)
        keep = rearrange(rank < n, "... g m -> ... (g m)")
        keep = torch.movedim(keep, -1, ax)
        out.append(keep if old is None else keep & old)
    return tree.unflatten(spec, out)
