"""Channel groups: which leaf axes rise and fall together when a unit or channel is removed.

A :class:`ChannelGroup` of ``size`` units lists :class:`Member` slices. Unit ``c`` of the group
owns, in every member, the entries ``view[..., o, c, i, ...]`` for all ``o, i`` where the member's
``axis`` (length ``outer * size * inner``) is viewed as ``(outer, size, inner)``:

* a conv's output channels: ``Member("conv1.weight", 0)``; its bias and BatchNorm: axis 0;
* the next conv's input channels: ``Member("conv2.weight", 1)``;
* a linear layer fed by a flattened ``(C, H, W)`` map: ``Member("fc.weight", 1, inner=H * W)``;
* an LSTM's hidden unit ``j`` in the stacked gate rows ``(4H, ·)``: ``Member("w_ih", 0, outer=4)``.

Structured selection (``select.channels``) scores units through the members marked ``score``;
compaction (``compact``) slices every member.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from einops import rearrange

__all__ = ["ChannelGroup", "Member", "member_view", "unit_mask_to_member"]


class Member(NamedTuple):
    """One slice of a channel group: ``axis`` of the leaf at ``path`` viewed as ``(outer, size, inner)``."""

    path: str
    axis: int
    outer: int = 1
    inner: int = 1
    score: bool = True  # whether this member's entries count in the unit's structured score


class ChannelGroup(NamedTuple):
    """``size`` units that are removed together across ``members``.

    ``name`` names the group (the layer whose units these are, e.g. ``"fc1"``); ``prunable`` is
    False for groups that must stay whole by default (e.g. a residual stream shared by blocks).
    """

    name: str
    size: int
    members: tuple[Member, ...]
    prunable: bool = True


def member_view(x: torch.Tensor, member: Member, size: int) -> torch.Tensor:
    """View ``x`` as ``(size, rest)``: row ``c`` holds every entry that unit ``c`` owns in ``x``.

    ``x`` has the member's leaf shape; returns a tensor of shape ``(size, numel(x) // size)``.
    """
    axis = member.axis % x.ndim
    if x.shape[axis] != member.outer * size * member.inner:
        raise ValueError(
            f"group member {member.path!r}: axis {member.axis} has length {x.shape[axis]}, expected "
            f"outer*size*inner = {member.outer}*{size}*{member.inner}"
        )
    moved = torch.movedim(x, axis, 0)
    v = rearrange(moved, "(o c i) ... -> c (o i ...)", o=member.outer, c=size, i=member.inner)
    return v


def unit_mask_to_member(unit_mask: torch.Tensor, member: Member, shape: torch.Size) -> torch.Tensor:
    """Broadcast a ``(size,)`` bool unit mask to a bool mask of the member leaf's ``shape``."""
    size = unit_mask.shape[0]
    axis = member.axis % len(shape)
    along = rearrange(unit_mask[None, :, None].expand(member.outer, size, member.inner), "o c i -> (o c i)")
    view_shape = [1] * len(shape)
    view_shape[axis] = shape[axis]
    return along.reshape(view_shape).expand(shape)
