"""Invariants of masks: checks that raise ``AssertionError`` naming the leaf and the first bad index.

* masks against params: :func:`masks_fit_params` (structure, bool dtype, shapes),
  :func:`pruned_are_zero`, :func:`optimizer_state_zero_at_pruned` (momentum, Adam's moments),
  :func:`masks_nested` (``new ⊆ old``, nothing revived);
* exact counts: :func:`exact_sparsity` (``round(s · N)`` pruned, globally or per leaf),
  :func:`exact_n_of_m` (``n`` of every ``m`` kept);
* whole structures: :func:`whole_channels` (every unit of a channel group removed across all its
  members), :func:`whole_rows`, :func:`whole_blocks`, each optionally with an exact count.

Masks are trees of ``None`` or bool tensors of the param's shape (``True`` = kept). Needs only
torch; re-exported by :mod:`pure_prune.testing.invariants`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from einops import rearrange, reduce

from pure_prune import tree
from pure_prune.groups import ChannelGroup, Member, member_view, unit_mask_to_member
from pure_prune.testing.printing import first_index, format_tensor, format_value, leaf_label

__all__ = [
    "exact_n_of_m",
    "exact_sparsity",
    "masks_fit_params",
    "masks_nested",
    "optimizer_state_zero_at_pruned",
    "pruned_are_zero",
    "whole_blocks",
    "whole_channels",
    "whole_rows",
]


# ------------------------------------------------------------------------------- masks vs params
def masks_fit_params(params: tree.Tree, masks: tree.Tree) -> None:
    """``masks`` has the structure of ``params``; each mask is ``None`` or a bool tensor of the
    param's shape (and the param is a tensor there)."""
    try:
        tree.assert_same_structure(params, masks, ("params", "masks"))
    except ValueError as e:
        raise AssertionError(str(e)) from None
    names, p_leaves, _ = tree.flatten_with_paths(params)
    for path, p, m in zip(names, p_leaves, tree.leaves(masks)):
        if m is None:
            continue
        if not isinstance(m, torch.Tensor):
            raise AssertionError(
                f"{leaf_label(path)}: mask is {type(m).__name__}, expected a bool tensor or None"
            )
        if m.dtype != torch.bool:
            raise AssertionError(f"{leaf_label(path)}: mask has dtype {m.dtype}, expected torch.bool")
        if not isinstance(p, torch.Tensor):
            raise AssertionError(f"{leaf_label(path)}: mask is a tensor but the param is {format_tensor(p)}")
        if m.shape != p.shape:
            raise AssertionError(
                f"{leaf_label(path)}: mask has shape {tuple(m.shape)}, param has shape {tuple(p.shape)}"
            )


def pruned_are_zero(params: tree.Tree, masks: tree.Tree) -> None:
    """Every entry that ``masks`` prunes is exactly ``0.0`` in ``params`` (``-0.0`` counts as zero)."""
    masks_fit_params(params, masks)
    _zero_at_pruned(params, masks, "")


def _zero_at_pruned(values: tree.Tree, masks: tree.Tree, prefix: str) -> None:
    names, v_leaves, _ = tree.flatten_with_paths(values)
    for path, v, m in zip(names, v_leaves, tree.leaves(masks)):
        if m is None or v is None:
            continue
        bad = ~m & (v != 0)
        if bool(bad.any()):
            idx = first_index(bad)
            raise AssertionError(
                f"{prefix}{leaf_label(path)} index {idx}: pruned entry is {format_value(v[idx])}, expected "
                f"exactly 0.0 ({int(bad.sum())} of {int((~m).sum())} pruned entries are non-zero)"
            )


def optimizer_state_zero_at_pruned(opt_state: tree.Tree | Sequence[tree.Tree], masks: tree.Tree) -> None:
    """Optimizer buffers shaped like params (momentum, Adam's moments) are ``0.0`` at pruned entries.

    ``opt_state`` is one tree with the structure of ``masks`` or a list/tuple of such trees (e.g.
    ``[mu, nu]``). A ``None`` buffer leaf is skipped; a buffer of the wrong shape is a violation.
    """
    spec = tree.structure(masks)
    if tree.structure(opt_state) == spec:
        states = [opt_state]
    elif isinstance(opt_state, (list, tuple)) and all(tree.structure(s) == spec for s in opt_state):
        states = list(opt_state)
    else:
        raise AssertionError(
            "optimizer state is neither a tree shaped like masks nor a list of such trees; masks have "
            f"leaves {tree.paths(masks)[:6]}, the state has {tree.paths(opt_state)[:6]}"
        )
    names = tree.paths(masks)
    for k, s in enumerate(states):
        prefix = f"optimizer state[{k}] " if len(states) > 1 else "optimizer state "
        for path, v, m in zip(names, tree.leaves(s), tree.leaves(masks)):
            if m is not None and isinstance(v, torch.Tensor) and v.shape != m.shape:
                raise AssertionError(
                    f"{prefix}{leaf_label(path)}: buffer has shape {tuple(v.shape)}, mask has {tuple(m.shape)}"
                )
        _zero_at_pruned(s, masks, prefix)


def masks_nested(new: tree.Tree, old: tree.Tree) -> None:
    """``new ⊆ old``: every entry kept by ``new`` is kept by ``old`` (a ``None`` mask is all-kept)."""
    try:
        tree.assert_same_structure(new, old, ("new", "old"))
    except ValueError as e:
        raise AssertionError(str(e)) from None
    names, n_leaves, _ = tree.flatten_with_paths(new)
    for path, n, o in zip(names, n_leaves, tree.leaves(old)):
        if o is None:
            continue
        kept_new = torch.ones_like(o) if n is None else n
        if kept_new.shape != o.shape:
            raise AssertionError(
                f"{leaf_label(path)}: new mask has shape {tuple(n.shape)}, old has {tuple(o.shape)}"
            )
        bad = kept_new & ~o
        if bool(bad.any()):
            idx = first_index(bad)
            what = "new mask is None (all kept)" if n is None else "kept in the new mask"
            raise AssertionError(
                f"{leaf_label(path)} index {idx}: {what} but pruned in the old mask "
                f"({int(bad.sum())} entries revived)"
            )


# ---------------------------------------------------------------------------------- exact counts
def _round_count(s: float, n: int) -> int:
    return int(round(float(s) * n))


def _mask_leaves(masks: tree.Tree) -> list[tuple[str, torch.Tensor]]:
    names, leaves, _ = tree.flatten_with_paths(masks)
    out = [(p, m) for p, m in zip(names, leaves) if m is not None]
    for p, m in out:
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
            raise AssertionError(f"{leaf_label(p)}: mask is {format_tensor(m)}, expected a bool tensor")
    return out


def exact_sparsity(masks: tree.Tree, sparsity: float | Mapping[str, float], *, scope: str = "global") -> None:
    """Exactly ``round(s · N)`` entries are pruned (Python ``round``: half to even).

    ``scope="global"``: over all ``N`` entries of every mask leaf. ``scope="layer"``: in every mask
    leaf separately, with ``sparsity`` a float or a ``{path: s}`` mapping naming every mask leaf.
    """
    leaves = _mask_leaves(masks)
    if scope == "global":
        if isinstance(sparsity, Mapping):
            raise TypeError("exact_sparsity: a per-leaf mapping needs scope='layer'")
        total = sum(m.numel() for _, m in leaves)
        pruned = sum(int((~m).sum()) for _, m in leaves)
        want = _round_count(sparsity, total)
        if pruned != want:
            per = ", ".join(f"{p!r}: {int((~m).sum())}/{m.numel()}" for p, m in leaves[:8])
            raise AssertionError(
                f"global: {pruned} of {total} entries pruned, expected round({format_value(float(sparsity))}"
                f" · {total}) = {want}; pruned per leaf: {per}"
            )
        return
    if scope != "layer":
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    for path, m in leaves:
        if isinstance(sparsity, Mapping):
            if path not in sparsity:
                raise AssertionError(f"{leaf_label(path)}: no sparsity given for this mask leaf")
            s = sparsity[path]
        else:
            s = sparsity
        pruned, want = int((~m).sum()), _round_count(s, m.numel())
        if pruned != want:
            raise AssertionError(
                f"{leaf_label(path)}: {pruned} of {m.numel()} entries pruned, expected "
                f"round({format_value(float(s))} · {m.numel()}) = {want}"
            )


def exact_n_of_m(masks: tree.Tree, n: int, m: int, *, axis: int = -1, old: tree.Tree | None = None) -> None:
    """Every group of ``m`` consecutive entries along ``axis`` keeps exactly ``n``.

    With ``old`` masks (the masks before selection), a group keeps exactly ``min(n, live)`` where
    ``live`` is the number of entries ``old`` keeps in it.
    """
    leaves = _mask_leaves(masks)
    old_leaves = dict(_mask_leaves(old)) if old is not None else {}
    for path, mk in leaves:
        if mk.ndim == 0 or mk.shape[axis] % m:
            raise AssertionError(
                f"{leaf_label(path)}: shape {tuple(mk.shape)} has no groups of {m} along axis {axis}"
            )
        ax = axis % mk.ndim

        kept = _group_counts(mk, ax, m)
        want = torch.full_like(kept, n)
        if path in old_leaves:
            want = torch.clamp(_group_counts(old_leaves[path], ax, m), max=n)
        bad = kept != want
        if bool(bad.any()):
            gidx = list(first_index(bad))  # index into the moved, grouped view
            gidx[-1] = gidx[-1] * m
            moved_idx = gidx[:-1] + [gidx[-1]]
            idx = tuple(moved_idx[:ax] + [moved_idx[-1]] + moved_idx[ax:-1])
            raise AssertionError(
                f"{leaf_label(path)} index {idx}: the group of {m} along axis {axis} starting here keeps "
                f"{int(kept[first_index(bad)])}, expected exactly {int(want[first_index(bad)])}"
            )


def _group_counts(x: torch.Tensor, ax: int, m: int) -> torch.Tensor:
    """Kept entries per group of ``m`` along axis ``ax``: shape ``(*other axes, size // m)``."""
    return reduce(torch.movedim(x, ax, -1).long(), "... (g m) -> ... g", "sum", m=m)


# ------------------------------------------------------------------------------ whole structures
def _check_count(where: str, what: str, pruned: int, hidden: int, total: int, sparsity: float) -> None:
    """``round(s · total)`` removed, where ``hidden`` of the ``total`` hold no entries (a zero-length
    axis elsewhere) and so cannot show whether they were removed: ``pruned <= want <= pruned + hidden``."""
    want = _round_count(sparsity, total)
    if not pruned <= want <= pruned + hidden:
        extra = f" ({hidden} {what} hold no entries and may count either way)" if hidden else ""
        raise AssertionError(
            f"{where}: {pruned} of {total} {what} pruned, expected round({format_value(float(sparsity))} · "
            f"{total}) = {want}{extra}"
        )


def whole_channels(
    masks: tree.Tree,
    groups: Sequence[ChannelGroup],
    *,
    sparsity: float | Mapping[str, float] | None = None,
    scope: str = "layer",
) -> None:
    """Every unit of every prunable channel group is removed whole, across all of its members.

    A unit counts as kept when any entry it owns in any member is kept. Each member leaf's mask
    must then equal the product (logical AND) of the kept-unit masks of every group touching it.
    With ``sparsity``, also checks that exactly ``round(s · size)`` units of each group were removed
    (``scope="layer"``; a mapping gives ``{group name: s}``, missing groups 0.0) or ``round(s · U)``
    of all ``U`` units (``scope="global"``). Members under ``state.`` and leaves whose mask is
    ``None`` are skipped; units that own no entry (a zero-length axis elsewhere) may count either way.
    """
    index = dict(_mask_leaves(masks))
    active = [g for g in groups if g.prunable]
    kept_units: list[torch.Tensor] = []
    hidden: list[int] = []  # units of the group that own no masked entry
    for g in active:
        views = [
            member_view(index[mem.path], mem, g.size)
            for mem in g.members
            if mem.path in index and not mem.path.startswith("state.")
        ]
        views = [v for v in views if v.shape[1] > 0]
        alive = torch.ones(g.size, dtype=torch.bool)  # no masked entry: nothing is seen removed
        if views:
            alive = reduce(torch.cat(views, dim=1), "u r -> u", "any")
        kept_units.append(alive)
        hidden.append(0 if views else g.size)

    expected: dict[str, torch.Tensor] = {}
    owner: dict[str, list[tuple[ChannelGroup, Member]]] = {}
    for g, alive in zip(active, kept_units):
        for mem in g.members:
            mk = index.get(mem.path)
            if mem.path.startswith("state.") or mk is None:
                continue
            keep = unit_mask_to_member(alive, mem, mk.shape)
            expected[mem.path] = keep if mem.path not in expected else expected[mem.path] & keep
            owner.setdefault(mem.path, []).append((g, mem))
    for path, want in expected.items():
        mk = index[path]
        # A kept entry implies every unit owning it is alive, so a mismatch is always a pruned entry
        # whose units are all kept: the unit was removed only partly.
        bad = want & ~mk
        if bool(bad.any()):
            idx = first_index(bad)
            units = [f"unit {_unit_of(idx, mem, g.size, mk.shape)} of {g.name!r}" for g, mem in owner[path]]
            raise AssertionError(
                f"{leaf_label(path)} index {idx}: entry is pruned but every unit it belongs to "
                f"({', '.join(units)}) keeps other entries; the channel mask is not whole"
            )

    if sparsity is None:
        return
    if scope == "global":
        if isinstance(sparsity, Mapping):
            raise TypeError("whole_channels: a per-group mapping needs scope='layer'")
        pruned = sum(int((~k).sum()) for k, h in zip(kept_units, hidden) if not h)
        _check_count("global", "units", pruned, sum(hidden), sum(g.size for g in active), sparsity)
        return
    if scope != "layer":
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    for g, alive, h in zip(active, kept_units, hidden):
        s = sparsity.get(g.name, 0.0) if isinstance(sparsity, Mapping) else sparsity
        pruned = 0 if h else int((~alive).sum())
        _check_count(f"group {g.name!r} (pruned units {_first(~alive)})", "units", pruned, h, g.size, s)


def _first(b: torch.Tensor, k: int = 8) -> list[int]:
    return [int(i) for i in torch.nonzero(b).reshape(-1)[:k]]


def _unit_of(idx: tuple[int, ...], mem: Member, size: int, shape: torch.Size) -> int:
    pos = idx[mem.axis % len(shape)]
    return (pos // mem.inner) % size


def _row_groups(masks: tree.Tree, axis: int) -> list[ChannelGroup]:
    out = []
    for path, m in _mask_leaves(masks):
        if m.ndim == 0 or not -m.ndim <= axis < m.ndim:
            raise AssertionError(f"{leaf_label(path)}: shape {tuple(m.shape)} has no axis {axis}")
        out.append(ChannelGroup(path, m.shape[axis], (Member(path, axis),)))
    return out


def whole_rows(masks: tree.Tree, sparsity: float | None = None, *, axis: int = 0) -> None:
    """Every mask leaf prunes whole slices along ``axis`` (rows for 0, input columns for 1), and,
    with ``sparsity``, exactly ``round(s · size)`` of them in every leaf."""
    whole_channels(masks, _row_groups(masks, axis), sparsity=sparsity, scope="layer")


def whole_blocks(
    masks: tree.Tree, block_shape: tuple[int, int], sparsity: float | None = None, *, scope: str = "global"
) -> None:
    """Every mask leaf prunes whole ``(bh, bw)`` blocks of its first two axes (trailing axes belong
    to the block), and, with ``sparsity``, exactly ``round(s · B)`` blocks (``B`` blocks of all
    leaves for ``scope="global"``, of each leaf for ``"layer"``; blocks without entries, from a
    zero-length trailing axis, may count either way)."""
    bh, bw = block_shape
    counts = []
    for path, m in _mask_leaves(masks):
        if m.ndim < 2 or m.shape[0] % bh or m.shape[1] % bw:
            raise AssertionError(
                f"{leaf_label(path)}: shape {tuple(m.shape)} is not tiled by blocks {block_shape}"
            )
        blocks = rearrange(m, "(r bh) (c bw) ... -> r c (bh bw ...)", bh=bh, bw=bw)
        kept_any = reduce(blocks, "r c e -> r c", "any")
        mixed = kept_any & ~reduce(blocks, "r c e -> r c", "all")
        if bool(mixed.any()):
            r, c = first_index(mixed)
            first_pruned = first_index(~m[r * bh : (r + 1) * bh, c * bw : (c + 1) * bw])
            idx = (r * bh + first_pruned[0], c * bw + first_pruned[1], *first_pruned[2:])
            raise AssertionError(
                f"{leaf_label(path)} index {idx}: entry is pruned but block ({r}, {c}) of shape {block_shape} "
                "has kept entries; the block mask is not whole"
            )
        empty = blocks.shape[-1] == 0
        counts.append(
            (path, 0 if empty else int((~kept_any).sum()), kept_any.numel() if empty else 0, kept_any.numel())
        )
    if sparsity is None:
        return
    if scope == "global":
        pruned, hidden, total = (sum(c[i] for c in counts) for i in (1, 2, 3))
        _check_count("global", "blocks", pruned, hidden, total, sparsity)
        return
    if scope != "layer":
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    for path, pruned, hidden, total in counts:
        _check_count(leaf_label(path), "blocks", pruned, hidden, total, sparsity)
