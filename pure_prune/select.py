"""Scores + target -> masks. Pure, exact and ``torch.compile``-able.

Exactness: asking for sparsity ``s`` over ``N`` entries prunes exactly ``round(s · N)`` of them, with
Python's ``round`` (half to even, as ``torch.nn.utils.prune`` does). Ties in score are broken by
position: among equal scores the entry that comes first (leaf order of :mod:`pure_prune.tree`, then
row-major index) is pruned first.

Already-pruned entries (``masks`` given) stay pruned and count toward the target: they are ranked
below every live entry. If the target is below the current sparsity nothing is revived.

Bad input (checked eagerly, skipped while ``torch.compile`` traces): sparsity outside [0, 1] or
NaN, NaN/±inf scores (an error: a score that is not finite is a bug upstream, never silently
"least important"), trees or shapes that do not match, a non-bool mask, no prunable leaf.
Every error names the leaf path and the value.

Memory of global selection: no concatenation and no sort outside ``torch.compile`` — a radix
select over the leaves (``pure_prune.kth``) plus one bool mask per leaf; see ``bench/selection.py``
for time and peak memory at 10M and 100M parameters against sort- and topk-based selection.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence

import torch
from einops import rearrange, reduce

from pure_prune import tree
from pure_prune.groups import ChannelGroup, member_view, unit_mask_to_member
from pure_prune.kth import kth_smallest

__all__ = ["block", "channels", "lowest_k", "n_of_m", "rows", "unit_norms", "units", "unstructured"]

Sparsity = float | Mapping[str, float]


# ----------------------------------------------------------------------------------------- checks
def _eager() -> bool:
    return not torch.compiler.is_compiling()


def _batched(x: torch.Tensor) -> bool:
    """Whether ``x`` is a per-sample view inside ``torch.func.vmap`` (e.g. one seed of stacked scores).

    Its values cannot be read in Python there (no ``bool(...)``, no data-dependent shapes), so the
    value checks are left to the caller (``sweep.select_seeds`` checks the stacked scores) and
    :func:`lowest_k` takes the ``torch.kthvalue`` path.
    """
    return torch._C._functorch.is_batchedtensor(x)


def _check_sparsity(s: float, where: str = "") -> float:
    """``s`` as a float in [0, 1]: a real number (not a bool, a string or a tensor), not NaN."""
    if isinstance(s, bool) or not isinstance(s, numbers.Real):
        what = "a tensor" if isinstance(s, torch.Tensor) else f"{type(s).__name__} {s!r}"
        raise TypeError(f"sparsity{where} must be a real number in [0, 1], got {what}")
    v = float(s)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"sparsity{where} must be in [0, 1], got {s!r}")
    return v


def _check_scope(scope: object) -> str:
    if scope not in ("global", "layer") or not isinstance(scope, str):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    return scope


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    return int(value)


def _check_groups(groups: object) -> Sequence[ChannelGroup]:
    if isinstance(groups, (str, bytes, ChannelGroup)) or not isinstance(groups, Sequence):
        raise TypeError(f"groups must be a sequence of ChannelGroup, got {type(groups).__name__}")
    for i, g in enumerate(groups):
        if not isinstance(g, ChannelGroup):
            raise TypeError(f"groups[{i}] must be a ChannelGroup, got {type(g).__name__} {g!r:.60}")
    return groups


def _check_scores(names: Sequence[str], leaves: Sequence[torch.Tensor | None]) -> None:
    for p, x in zip(names, leaves):
        if x is None:
            continue
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"score {p!r} is {type(x).__name__}, expected a tensor or None")
        if not x.is_floating_point():
            raise TypeError(f"score {p!r} has dtype {x.dtype}, expected a floating-point tensor")
        if _batched(x):  # under vmap: values unreadable, checked on the stacked tensor by the caller
            continue
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            idx = tuple(int(i) for i in torch.nonzero(bad)[0])
            raise ValueError(f"score {p!r} is not finite at index {idx}: {x[idx].item()}")


def _check_masks(names, s_leaves, m_leaves) -> None:
    for p, s, m in zip(names, s_leaves, m_leaves):
        if m is None:
            continue
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
            what = m.dtype if isinstance(m, torch.Tensor) else type(m).__name__
            raise TypeError(f"mask {p!r} must be a bool tensor or None, got {what}")
        if s is not None and m.shape != s.shape:
            raise ValueError(f"mask {p!r} has shape {tuple(m.shape)}, score has {tuple(s.shape)}")


def _flatten_inputs(scores: tree.Tree, masks: tree.Tree | None):
    names, s_leaves, spec = tree.flatten_with_paths(scores)
    if masks is None:
        m_leaves: list[torch.Tensor | None] = [None] * len(s_leaves)
    else:
        if _eager():
            tree.assert_same_structure(scores, masks, ("scores", "masks"))
        m_leaves = tree.leaves(masks)
    if _eager():
        _check_scores(names, s_leaves)
        _check_masks(names, s_leaves, m_leaves)
        if all(s is None for s in s_leaves):
            raise ValueError("no prunable leaf: every score leaf is None")
    return names, s_leaves, m_leaves, spec


def _common_dtype(leaves: Sequence[torch.Tensor]) -> torch.dtype:
    dt = torch.float32
    for x in leaves:
        dt = torch.promote_types(dt, x.dtype)
    return dt


def _live_scores(s: torch.Tensor, m: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """Scores as ``dtype`` with already-pruned entries at -inf (ranked lowest)."""
    s = s.to(dtype)
    if m is None:
        return s
    return torch.where(m, s, torch.full_like(s, float("-inf")))


# ------------------------------------------------------------------------------------- the kernel
def lowest_k(flat: Sequence[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Mark exactly ``k`` lowest entries across the 1-D tensors ``flat`` (ties: earliest first).

    ``flat`` share one float dtype. Returns one bool tensor per input, shaped like it, ``True``
    where the entry is among the ``k`` lowest. Eagerly the threshold comes from a radix select
    (:func:`pure_prune.kth.kth_smallest`: no concatenation, no sort); under ``torch.compile`` and
    under ``torch.func.vmap`` (batched inputs: the radix select's histograms of a varying subset
    cannot be vmapped) from ``torch.kthvalue`` of the concatenation. Both give the same exact
    value, so the same masks. Raises ``TypeError``/``ValueError`` (eagerly) for ``k`` that is not an
    int, no tensors, tensors that are not 1-D or differ in dtype, or NaN (which has no rank; one
    NaN-propagating ``amax`` per tensor, ~3% of a 10M-entry selection, here or in ``kth_smallest``).
    """
    k = _check_int("lowest_k: k", k)
    if _eager():
        if isinstance(flat, torch.Tensor) or not isinstance(flat, Sequence) or not flat:
            raise TypeError(
                f"lowest_k: flat must be a non-empty sequence of 1-D tensors, got {type(flat).__name__}"
            )
        for i, x in enumerate(flat):
            if not isinstance(x, torch.Tensor) or x.ndim != 1 or x.dtype != flat[0].dtype:
                what = (
                    f"{x.dtype} of shape {tuple(x.shape)}"
                    if isinstance(x, torch.Tensor)
                    else type(x).__name__
                )
                raise TypeError(
                    f"lowest_k: flat[{i}] is {what}; expected 1-D tensors of one dtype ({getattr(flat[0], 'dtype', None)})"
                )
            radix = x.dtype in (torch.float32, torch.float64)  # kth_smallest checks those for NaN
            if (
                x.is_floating_point()
                and not radix
                and not _batched(x)
                and x.numel()
                and bool(torch.isnan(x.amax()))
            ):
                raise ValueError(f"lowest_k: flat[{i}] holds NaN, which has no rank")
    total = sum(x.numel() for x in flat)
    if k <= 0:
        return [torch.zeros_like(x, dtype=torch.bool) for x in flat]
    if k >= total:
        return [torch.ones_like(x, dtype=torch.bool) for x in flat]
    if _eager() and flat[0].dtype in (torch.float32, torch.float64) and not any(_batched(x) for x in flat):
        threshold = kth_smallest(flat, k)
    else:
        joined = flat[0] if len(flat) == 1 else torch.cat(list(flat))
        threshold = torch.kthvalue(joined, k).values
        del joined
    below = [x < threshold for x in flat]
    n_below = sum(b.sum() for b in below)
    need = k - n_below  # how many entries equal to the threshold are pruned, earliest first
    out = []
    offset = torch.zeros((), dtype=torch.int64, device=flat[0].device)
    for x, b in zip(flat, below):
        eq = x == threshold
        rank = torch.cumsum(eq, 0) + offset
        out.append(b | (eq & (rank <= need)))
        offset = offset + eq.sum()
    return out


def _count(s: float, n: int) -> int:
    return int(round(s * n))


# -------------------------------------------------------------------------------- unstructured
def unstructured(
    scores: tree.Tree,
    sparsity: Sparsity,
    *,
    scope: str = "global",
    masks: tree.Tree | None = None,
) -> tree.Tree:
    """Prune the lowest-scoring entries.

    ``scores``: tree of float tensors (``None`` = dense leaf). ``sparsity``: a float, or with
    ``scope="layer"`` a ``{path: sparsity}`` mapping (e.g. from :mod:`pure_prune.allocate`) that
    names every scored leaf. ``scope="global"`` prunes ``round(s·N)`` of all ``N`` scored entries
    by one ranking; ``"layer"`` prunes ``round(s_l·N_l)`` in each leaf. Returns bool masks with the
    structure of ``scores`` (``True`` = kept); where the score is ``None`` the leaf keeps its mask
    from ``masks`` (``None`` without ``masks``), as in the other selectors. Every argument is
    checked before any work (``sparsity`` a real number in [0, 1], not a bool or a string).
    """
    _check_scope(scope)
    if not isinstance(sparsity, Mapping):
        _check_sparsity(sparsity)
    names, s_leaves, m_leaves, spec = _flatten_inputs(scores, masks)
    live = [(i, s) for i, s in enumerate(s_leaves) if s is not None]
    dtype = _common_dtype([s for _, s in live])
    flat = [rearrange(_live_scores(s, m_leaves[i], dtype), "... -> (...)") for i, s in live]
    if scope == "global":
        if isinstance(sparsity, Mapping):
            raise TypeError("a per-leaf sparsity mapping needs scope='layer'")
        s = _check_sparsity(sparsity)
        pruned = lowest_k(flat, _count(s, sum(x.numel() for x in flat)))
    elif scope == "layer":
        if isinstance(sparsity, Mapping):
            missing = [names[i] for i, _ in live if names[i] not in sparsity]
            extra = sorted(set(sparsity) - {names[i] for i, _ in live})
            if missing or extra:
                raise ValueError(f"per-leaf sparsity: missing paths {missing}, unknown paths {extra}")
            per = [_check_sparsity(sparsity[names[i]], f" of {names[i]!r}") for i, _ in live]
        else:
            per = [_check_sparsity(sparsity)] * len(live)
        pruned = [lowest_k([x], _count(s, x.numel()))[0] for x, s in zip(flat, per)]
    else:
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    out: list[torch.Tensor | None] = list(m_leaves)  # unscored leaves keep their mask (or None)
    for (i, s), p in zip(live, pruned):
        keep = ~p.reshape(s.shape)
        out[i] = keep if m_leaves[i] is None else keep & m_leaves[i]
    return tree.unflatten(spec, out)


# ---------------------------------------------------------------------------------- structured
def _norm_rows(x: torch.Tensor, ord: float) -> torch.Tensor:
    """``(units, rest)`` -> per-unit ``sum |x|^ord`` (the ord-th power of the Ln norm)."""
    if ord == 1:
        return reduce(x.abs(), "u r -> u", "sum")
    if ord == 2:
        return reduce(x * x, "u r -> u", "sum")
    if ord == float("inf"):  # an empty slice (r == 0) has norm 0; amax refuses empty reductions
        return reduce(x.abs(), "u r -> u", "max") if x.shape[1] else x.new_zeros(x.shape[0])
    return reduce(x.abs() ** ord, "u r -> u", "sum")


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
    s = _check_sparsity(sparsity)
    p_ord = _check_ord(ord)
    axis = _check_int("rows: axis", axis)
    names, s_leaves, m_leaves, spec = _flatten_inputs(scores, masks)
    out: list[torch.Tensor | None] = []
    for path, x, m in zip(names, s_leaves, m_leaves):
        if x is None:
            out.append(m)
            continue
        if _eager() and (x.ndim == 0 or not -x.ndim <= axis < x.ndim):
            raise ValueError(f"rows: axis {axis} out of range for score {path!r} of shape {tuple(x.shape)}")
        ax = axis % x.ndim
        v = rearrange(torch.movedim(x.to(_common_dtype([x])), ax, 0), "u ... -> u (...)")
        norms = _norm_rows(v, p_ord)
        if m is not None:
            alive = reduce(rearrange(torch.movedim(m, ax, 0), "u ... -> u (...)"), "u r -> u", "any")
            norms = torch.where(alive, norms, torch.full_like(norms, float("-inf")))
        unit_pruned = lowest_k([norms], _count(s, x.shape[ax]))[0]
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
    _check_groups(groups)
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be a bool, got {normalize!r}")
    names, s_leaves, _ = tree.flatten_with_paths(scores)
    m_leaves = [None] * len(s_leaves) if masks is None else tree.leaves(masks)
    if _eager():
        if masks is not None:
            tree.assert_same_structure(scores, masks, ("scores", "masks"))
        _check_scores(names, s_leaves)
        _check_masks(names, s_leaves, m_leaves)
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
            v = _norm_rows(member_view(x.to(_common_dtype([x])), mem, g.size), p_ord)
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
    _check_groups(groups)
    _check_scope(scope)
    if not isinstance(sparsity, Mapping):
        _check_sparsity(sparsity)
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
    if _eager() and masks is not None:
        tree.assert_same_structure(like, masks, ("like", "masks"))
        _check_masks(names, l_leaves, m_leaves)
    index = {p: i for i, p in enumerate(names)}
    active = [g for g in groups if g.prunable]
    if _eager() and not active:
        raise ValueError("units: no prunable channel group")
    scored = []
    for g in active:
        if g.name not in unit_scores:
            raise ValueError(f"units: no unit scores for group {g.name!r}")
        u = unit_scores[g.name]
        if _eager():
            if tuple(u.shape) != (g.size,):
                raise ValueError(
                    f"units: scores of group {g.name!r} have shape {tuple(u.shape)}, expected ({g.size},)"
                )
            _check_scores([g.name], [u])
        u = u.to(_common_dtype([u]))
        alive = _alive_units(g, index, m_leaves)
        if alive is not None:
            u = torch.where(alive, u, torch.full_like(u, float("-inf")))
        scored.append(u)

    if scope == "global":
        if isinstance(sparsity, Mapping):
            raise TypeError("a per-group sparsity mapping needs scope='layer'")
        s = _check_sparsity(sparsity)
        pruned = lowest_k(scored, _count(s, sum(g.size for g in active)))
    elif scope == "layer":
        if isinstance(sparsity, Mapping):
            unknown = sorted(set(sparsity) - {g.name for g in active})
            if unknown:
                raise ValueError(f"per-group sparsity names unknown groups {unknown}")
            per = [_check_sparsity(sparsity.get(g.name, 0.0), f" of group {g.name!r}") for g in active]
        else:
            per = [_check_sparsity(sparsity)] * len(active)
        pruned = [lowest_k([u], _count(s, g.size))[0] for u, g, s in zip(scored, active, per)]
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


# ----------------------------------------------------------------------------- N:M and blocks
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
    axis = _check_int("n_of_m: axis", axis)
    names, s_leaves, m_leaves, spec = _flatten_inputs(scores, masks)
    out: list[torch.Tensor | None] = []
    for path, x, old in zip(names, s_leaves, m_leaves):
        if x is None:
            out.append(old)
            continue
        if x.ndim == 0 or not -x.ndim <= axis < x.ndim:
            raise ValueError(f"n_of_m: axis {axis} out of range for score {path!r} of shape {tuple(x.shape)}")
        ax = axis % x.ndim
        if x.shape[ax] % m:
            raise ValueError(
                f"n_of_m: m={m} does not divide axis {axis} of length {x.shape[ax]} in score {path!r}"
            )
        live = _live_scores(x, old, _common_dtype([x]))
        moved = torch.movedim(live, ax, -1)
        grouped = rearrange(moved, "... (g m) -> ... g m", m=m)
        order = torch.sort(grouped, dim=-1, descending=True, stable=True).indices
        rank = torch.argsort(order, dim=-1)
        keep = rearrange(rank < n, "... g m -> ... (g m)")
        keep = torch.movedim(keep, -1, ax)
        out.append(keep if old is None else keep & old)
    return tree.unflatten(spec, out)


def block(
    scores: tree.Tree,
    sparsity: float,
    block_shape: tuple[int, int],
    *,
    scope: str = "global",
    masks: tree.Tree | None = None,
) -> tree.Tree:
    """Prune whole ``(bh, bw)`` blocks of the last two axes by the sum of their scores' magnitudes.

    Exactly ``round(s · B)`` blocks are removed (``B`` = blocks over all scored leaves for
    ``scope="global"``, per leaf for ``"layer"``). Leading axes (e.g. conv kernel dims after the
    first two) are folded into the block score: a leaf ``(out, in, kh, kw)`` is blocked over
    ``(out, in)``. Raises ``ValueError`` when a block does not divide the leaf.
    """
    s = _check_sparsity(sparsity)
    _check_scope(scope)
    if (
        not isinstance(block_shape, (tuple, list))
        or len(block_shape) != 2
        or any(isinstance(b, bool) or not isinstance(b, numbers.Integral) for b in block_shape)
    ):
        raise TypeError(f"block_shape must be a pair of ints (bh, bw), got {block_shape!r}")
    bh, bw = (int(b) for b in block_shape)
    if bh < 1 or bw < 1:
        raise ValueError(f"block_shape must be positive, got {block_shape!r}")
    names, s_leaves, m_leaves, spec = _flatten_inputs(scores, masks)
    live_idx, block_scores = [], []
    for i, (path, x) in enumerate(zip(names, s_leaves)):
        if x is None:
            continue
        if x.ndim < 2 or x.shape[0] % bh or x.shape[1] % bw:
            raise ValueError(
                f"block: block {block_shape} does not tile the first two axes of score {path!r} "
                f"with shape {tuple(x.shape)}"
            )
        b = reduce(x.abs().to(_common_dtype([x])), "(r bh) (c bw) ... -> r c", "sum", bh=bh, bw=bw)
        if m_leaves[i] is not None:  # a block counts as pruned only when all its entries are (as rows)
            alive = reduce(m_leaves[i], "(r bh) (c bw) ... -> r c", "any", bh=bh, bw=bw)
            b = torch.where(alive, b, torch.full_like(b, float("-inf")))
        block_scores.append(b)
        live_idx.append(i)
    flat = [rearrange(b, "r c -> (r c)") for b in block_scores]
    if scope == "global":
        pruned = lowest_k(flat, _count(s, sum(f.numel() for f in flat)))
    elif scope == "layer":
        pruned = [lowest_k([f], _count(s, f.numel()))[0] for f in flat]
    else:
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    out: list[torch.Tensor | None] = list(m_leaves)
    for i, b, p in zip(live_idx, block_scores, pruned):
        x = s_leaves[i]
        keep_blocks = ~p.reshape(b.shape)
        keep = keep_blocks.repeat_interleave(bh, 0).repeat_interleave(bw, 1)
        keep = keep.reshape(*keep.shape, *([1] * (x.ndim - 2))).expand(x.shape)
        out[i] = keep.clone() if m_leaves[i] is None else keep & m_leaves[i]
    return tree.unflatten(spec, out)
