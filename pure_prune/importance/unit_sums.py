"""Sums of per-entry values over units: channel groups or the indices of one axis.

:func:`unit_sum` turns a tree of per-entry values (a Hessian diagonal, a saliency) into
``{group name: (size,)}`` for :class:`~pure_prune.groups.ChannelGroup` units, or
``{leaf path: (shape[axis],)}`` for an int axis.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import reduce

from pure_prune import tree
from pure_prune.groups import ChannelGroup, member_view

__all__ = ["Units", "unit_sum"]

Units = Sequence[ChannelGroup] | int


def unit_sum(values: tree.Tree, units: Units, where: str = "unit_sum") -> dict[str, torch.Tensor]:
    """Sum the entries each unit owns.

    ``units`` is a sequence of :class:`~pure_prune.groups.ChannelGroup` (returns ``{group name:
    (size,)}``, summing the members marked ``score`` whose leaf in ``values`` is not None) or an int
    axis (returns ``{leaf path: (shape[axis],)}`` for every non-None leaf).
    """
    paths, leaves, _ = tree.flatten_with_paths(values)
    by_path = dict(zip(paths, leaves))
    if isinstance(units, bool) or not isinstance(units, (int, Sequence)):
        raise TypeError(
            f"{where}: units must be an int axis or a sequence of ChannelGroup, got {units!r:.80}"
        )
    if isinstance(units, int):
        out = {}
        for p, v in by_path.items():
            if v is None:
                continue
            if not -v.ndim <= units < v.ndim:
                raise ValueError(
                    f"{where}: axis {units} is out of range for leaf {p!r} of shape {tuple(v.shape)}"
                )
            out[p] = reduce(torch.movedim(v, units, 0), "c ... -> c", "sum")
        return out
    out = {}
    for g in units:
        if not isinstance(g, ChannelGroup):
            raise TypeError(f"{where}: units must hold ChannelGroup, got {type(g).__name__}")
        total = None
        for m in g.members:
            if not m.score:
                continue
            if m.path not in by_path:
                raise ValueError(f"{where}: group {g.name!r} member {m.path!r} is not a leaf of the tree")
            v = by_path[m.path]
            if v is None:
                continue
            part = reduce(member_view(v, m, g.size), "c r -> c", "sum")
            total = part if total is None else total + part
        if total is None:
            raise ValueError(f"{where}: group {g.name!r} has no scored member with a score (all None)")
        out[g.name] = total
    return out
