"""Structured compaction: remove the units whose mask entries are all pruned, and put them back.

:func:`compact` slices every member of a channel group (weights, biases, BatchNorm params and
``"state."`` running statistics, the consumer's input slice) to the kept units; the smaller params
run through the same ``apply`` and give the masked model's outputs. :func:`expand` is its inverse
(zeros at the removed units), :func:`kept_units` says which units :func:`compact` keeps, and
:func:`to_channels_last` is the convolution-weight layout the compacted params are stored in.

Which unit is removable: unit ``c`` of a group is removed when every mask entry of ``c`` in the
group's scored members (``Member.score``: the producer's weights) is pruned *and* its per-unit
params (the non-scored 1-D members: bias, BatchNorm weight and bias, an LSTM's gate biases) are
pruned or zero. The second condition keeps compaction exact: a unit whose weights are pruned but
whose bias is kept outputs a constant (``relu(b)``) that the next layer still reads, so it stays.
``select.channels``/``select.units`` masks prune every param member of a unit, so their units go.
A group never shrinks below one unit (all pruned: unit 0 stays, its output is zero), so every
shape stays valid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from einops import reduce
from torch import Tensor

from pure_prune import mask as mask_lib
from pure_prune import tree
from pure_prune.groups import ChannelGroup, Member, member_view

__all__ = ["compact", "expand", "kept_units", "to_channels_last"]

Params = Any
_STATE = "state."


# =========================================================================== structured compaction
def _leaf_table(params: Params, state: Params, masks: Params) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``{path: tensor}`` over params and ``"state."``-prefixed state leaves, and ``{path: mask}``."""
    names, p_leaves, _ = tree.flatten_with_paths(params)
    leaves = dict(zip(names, p_leaves))
    masks_by_path = dict(zip(names, tree.leaves(masks)))
    s_names, s_leaves, _ = tree.flatten_with_paths(state)
    for name, leaf in zip(s_names, s_leaves):
        if not isinstance(leaf, Tensor):
            raise TypeError(f"state leaf {name!r} is {type(leaf).__name__}, expected a tensor")
        leaves[_STATE + name] = leaf
    return leaves, masks_by_path


def _check_groups(groups: Sequence[ChannelGroup], leaves: Mapping[str, Tensor]) -> None:
    """Every member names a leaf whose axis has length ``outer * size * inner``; no (leaf, axis) twice."""
    if isinstance(groups, ChannelGroup) or not all(isinstance(g, ChannelGroup) for g in groups):
        raise TypeError(f"groups must be a sequence of ChannelGroup, got {groups!r}")
    names = [g.name for g in groups]
    if len(set(names)) != len(names):
        raise ValueError(f"channel group names must be unique, got {names}")
    claimed: dict[tuple[str, int], str] = {}
    for g in groups:
        for mem in g.members:
            if mem.path not in leaves:
                raise ValueError(
                    f"channel group {g.name!r}: member {mem.path!r} is not a leaf of params or state"
                )
            x = leaves[mem.path]
            if not -x.ndim <= mem.axis < x.ndim:
                raise ValueError(
                    f"channel group {g.name!r}: axis {mem.axis} out of range for {mem.path!r} of shape "
                    f"{tuple(x.shape)}"
                )
            axis = mem.axis % x.ndim
            if x.shape[axis] != mem.outer * g.size * mem.inner:
                raise ValueError(
                    f"channel group {g.name!r}: {mem.path!r} axis {mem.axis} has length {x.shape[axis]}, "
                    f"expected outer*size*inner = {mem.outer}*{g.size}*{mem.inner}"
                )
            if (mem.path, axis) in claimed:
                raise ValueError(
                    f"axis {axis} of {mem.path!r} is claimed twice (groups {claimed[mem.path, axis]!r} and {g.name!r})"
                )
            claimed[mem.path, axis] = g.name


def _alive_units(g: ChannelGroup, leaves: Mapping[str, Tensor], masks: Mapping[str, Tensor | None]) -> Tensor:
    """``(size,)`` bool: units with a kept scored entry, or a non-zero per-unit param (bias, norm)."""
    alive = None
    for mem in g.members:
        if mem.path.startswith(_STATE):
            continue
        m = masks[mem.path]
        if mem.score:
            if m is None:
                return torch.ones(g.size, dtype=torch.bool)
            unit = reduce(member_view(m, mem, g.size), "u r -> u", "any")
        elif leaves[mem.path].ndim == 1:  # a per-unit param: bias, norm weight or bias
            x = leaves[mem.path]
            live = x != 0 if m is None else m & (x != 0)
            unit = reduce(member_view(live, mem, g.size), "u r -> u", "any")
        else:
            continue
        alive = unit if alive is None else alive | unit
    if alive is None:  # no scored member carries a mask: nothing can be removed
        return torch.ones(g.size, dtype=torch.bool)
    return alive.cpu()


def _member_index(mem: Member, size: int, units: Tensor) -> Tensor:
    """Positions along the member's axis of ``units`` in the ``(outer, size, inner)`` view: int64 ``(outer*k*inner,)``."""
    o = torch.arange(mem.outer)[:, None, None] * (size * mem.inner)
    c = units[None, :, None] * mem.inner
    i = torch.arange(mem.inner)[None, None, :]
    return (o + c + i).reshape(-1)


def _check_kept(kept: Mapping[str, Tensor], groups: Sequence[ChannelGroup]) -> None:
    """``kept`` names every group once with 1..size strictly increasing int64 unit indices."""
    if not isinstance(kept, Mapping):
        raise TypeError(f"kept must be a mapping {{group name: unit indices}}, got {kept!r}")
    names = {g.name for g in groups}
    if set(kept) != names:
        raise ValueError(
            f"kept must name every group exactly: missing {sorted(names - set(kept))}, "
            f"unknown {sorted(set(kept) - names)}"
        )
    for g in groups:
        k = kept[g.name]
        if not isinstance(k, Tensor) or k.ndim != 1 or k.dtype != torch.int64:
            raise TypeError(f"kept[{g.name!r}] must be an int64 (k,) tensor, got {k!r}")
        if k.numel() == 0 or k.numel() > g.size or int(k.min()) < 0 or int(k.max()) >= g.size:
            raise ValueError(
                f"kept[{g.name!r}] = {k.tolist()} must hold 1..{g.size} unit indices in [0, {g.size})"
            )
        if k.numel() > 1 and not bool((k[1:] > k[:-1]).all()):
            raise ValueError(f"kept[{g.name!r}] = {k.tolist()} must be strictly increasing")


def _plan(groups: Sequence[ChannelGroup], leaves: Mapping[str, Tensor], kept: Mapping[str, Tensor]):
    """``{path: [(axis, group, member)]}`` for every member whose group loses units."""
    plan: dict[str, list[tuple[int, ChannelGroup, Member]]] = {}
    for g in groups:
        if kept[g.name].numel() == g.size:
            continue
        for mem in g.members:
            plan.setdefault(mem.path, []).append((mem.axis % leaves[mem.path].ndim, g, mem))
    return plan


def _kept_of(alive: Tensor) -> Tensor:
    """Ascending int64 indices of the alive units; unit 0 when none is (a group keeps one unit)."""
    if not bool(alive.any()):
        return torch.zeros(1, dtype=torch.int64)
    return torch.nonzero(alive).reshape(-1)


def kept_units(
    params: Params, state: Params, masks: Params, groups: Sequence[ChannelGroup]
) -> dict[str, Tensor]:
    """The units :func:`compact` keeps when it is not given ``kept``, without building anything:
    ``{group name: ascending int64 (k,) unit indices}`` (the module docstring's rule). Raises as
    :func:`compact` does on bad input."""
    mask_lib.validate(params, masks)
    leaves, masks_by_path = _leaf_table(params, state, masks)
    _check_groups(groups, leaves)
    return {g.name: _kept_of(_alive_units(g, leaves, masks_by_path)) for g in groups}


def compact(
    params: Params,
    state: Params,
    masks: Params,
    groups: Sequence[ChannelGroup],
    *,
    kept: Mapping[str, Tensor] | None = None,
    channels_last: bool = True,
) -> tuple[Params, Params, Params, dict[str, Tensor]]:
    """Remove the units whose mask entries are all pruned (see the module docstring for the rule).

    Args:
        params, state: a model's trees (``state`` may be ``{}``).
        masks: the structure of ``params`` (bool tensors, ``None`` for dense leaves).
        groups: the model's channel groups (``spec.groups(params)``); every group is compacted,
            ``prunable=False`` ones included (their units are normally all kept).
        kept: slice to these units instead of the removable ones (``{group name: ascending
            int64 indices}``, e.g. an earlier call's ``kept``): the shapes of that call with the
            new masks inside, so a compiled step of that form is reused. Every unit that is not
            removable must be in it (else ``ValueError``: the outputs would change).
        channels_last: store every 4-D params leaf (convolution weights) of the result in
            ``torch.channels_last`` (see :func:`to_channels_last`): same values, a faster layout
            for the narrower convolutions. ``False`` keeps the layout of ``params``.

    Returns:
        ``(params, state, masks, kept)``: trees of the same structure whose group axes are sliced
        to the kept units, params masked (``mask.apply``: zeros at the pruned entries that remain;
        dense leaves no group shrinks are returned as they are, not copied), and
        ``kept = {group name: int64 (k,) ascending unit indices}`` for every group, which
        :func:`expand` needs. ``apply(params, state, x)`` of the result equals the masked model's
        ``apply(mask.apply(params, masks), state, x)`` up to float rounding, in train and eval mode.

    Raises ``ValueError``/``TypeError`` naming the leaf or group on bad input, before anything is built.
    """
    mask_lib.validate(params, masks)
    leaves, masks_by_path = _leaf_table(params, state, masks)
    _check_groups(groups, leaves)
    if kept is not None:
        _check_kept(kept, groups)
    chosen: dict[str, Tensor] = {}
    for g in groups:
        alive = _alive_units(g, leaves, masks_by_path)
        if kept is not None:
            given = torch.zeros(g.size, dtype=torch.bool)
            given[kept[g.name].cpu()] = True
            lost = torch.nonzero(alive & ~given).reshape(-1)
            if lost.numel():
                raise ValueError(
                    f"kept[{g.name!r}] drops units {lost.tolist()[:8]} that are not removable (kept mask "
                    "entries or non-zero biases): slicing them away would change the outputs"
                )
            chosen[g.name] = kept[g.name].cpu()
            continue
        chosen[g.name] = _kept_of(alive)
    kept = chosen
    plan = _plan(groups, leaves, kept)

    def shrink(path: str, x: Tensor | None) -> Tensor | None:
        if x is None or path not in plan:
            return x
        for axis, g, mem in plan[path]:
            x = x.index_select(axis, _member_index(mem, g.size, kept[g.name]).to(x.device))
        return x

    new_masks = tree.map_with_path(shrink, masks)
    new_params = mask_lib.apply(tree.map_with_path(shrink, params), new_masks)
    if channels_last:
        new_params = to_channels_last(new_params)
    new_state = tree.map_with_path(lambda p, x: shrink(_STATE + p, x), state)
    return new_params, new_state, new_masks, kept


def to_channels_last(params: Params) -> Params:
    """``params`` with every 4-D tensor leaf (``(C_out, C_in, kH, kW)`` convolution weights) stored
    in ``torch.channels_last``; other leaves (and 4-D leaves already in that layout) as they are.

    Values, shapes and dtypes are unchanged; only the strides differ. Why: on CPU, torch's oneDNN
    convolution of a contiguous (NCHW) input reorders input, weight and output to its blocked
    layout on every call, and NCHW max-pooling is slow for few channels; a channels_last weight
    makes the convolution run NHWC end to end (its output, and the pooling after it, stay
    channels_last). Those fixed costs weigh most on narrow convolutions. ``bench/inference.py``,
    Conv-4 (width 64, batch 64) with 50% / 75% of its channels removed, speed-up over the dense
    model as a share of the FLOP ratio, on a shared 2-core machine: both NCHW 0.75 / 0.60 (2
    threads) and 0.95 / 0.60 (1 thread); both channels_last 0.87 / 0.78 and 1.07 / 0.85; compacted
    channels_last against the dense model as initialised (NCHW) 1.11 / 0.97 and 1.31 / 1.01.
    ``compact`` applies it by default. Returns a new tree.
    """

    def convert(x: Any) -> Any:
        if isinstance(x, Tensor) and x.ndim == 4 and x.layout == torch.strided:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    return tree.map(convert, params)


def expand(
    params: Params, state: Params, masks: Params, kept: Mapping[str, Tensor], groups: Sequence[ChannelGroup]
) -> tuple[Params, Params, Params]:
    """Inverse of :func:`compact`: full-size trees with zeros (params, state) and ``False`` (masks)
    at the removed units.

    Args:
        params, state, masks: compacted trees (e.g. after training the compacted model).
        kept: :func:`compact`'s ``{group name: (k,) unit indices}``, one entry per group.
        groups: the *full-size* model's channel groups (those passed to :func:`compact`).

    Returns ``(params, state, masks)`` of the full shapes. A removed unit comes back with zero
    weights, biases and running statistics; its mask entries are ``False`` where the leaf has a
    mask (dense leaves stay ``None``). ``expand(*compact(p, s, m, g)[:3], kept, g)`` equals
    ``(mask.apply(p, m), s, m)`` at every kept unit and is zero at every removed one.
    """
    mask_lib.validate(params, masks)
    _check_kept(kept, groups)
    leaves, _ = _leaf_table(params, state, masks)
    sizes = {g.name: kept[g.name].numel() for g in groups}
    _check_groups([g._replace(size=sizes[g.name]) for g in groups], leaves)
    plan = _plan(groups, leaves, kept)

    def grow(path: str, x: Tensor | None) -> Tensor | None:
        if x is None or path not in plan:
            return x
        for axis, g, mem in plan[path]:
            shape = list(x.shape)
            shape[axis] = mem.outer * g.size * mem.inner
            index = _member_index(mem, g.size, kept[g.name]).to(x.device)
            x = torch.zeros(shape, dtype=x.dtype, device=x.device).index_copy(axis, index, x)
        return x

    new_params = tree.map_with_path(grow, params)
    new_masks = tree.map_with_path(grow, masks)
    new_state = tree.map_with_path(lambda p, x: grow(_STATE + p, x), state)
    return new_params, new_state, new_masks
