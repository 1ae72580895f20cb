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


def _check_member(member: object, size: object, ndim: int) -> int:
    """The member's axis in ``[0, ndim)``; ``TypeError``/``ValueError`` naming the member's path and
    the bad field otherwise."""
    if not isinstance(member, Member):
        raise TypeError(f"member must be a groups.Member, got {type(member).__name__} {member!r:.60}")
    for field in ("axis", "outer", "inner"):
        v = getattr(member, field)
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"group member {member.path!r}: {field} must be an int, got {v!r}")
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"group member {member.path!r}: size must be an int, got {size!r}")
    if size < 0 or member.outer < 1 or member.inner < 1:
        raise ValueError(
            f"group member {member.path!r}: size must be >= 0 and outer, inner >= 1, got "
            f"size={size}, outer={member.outer}, inner={member.inner}"
        )
    if not -ndim <= member.axis < ndim:
        raise ValueError(
            f"group member {member.path!r}: axis {member.axis} is out of range for a {ndim}-D leaf"
        )
    return member.axis % ndim


def member_view(x: torch.Tensor, member: Member, size: int) -> torch.Tensor:
    """View ``x`` as ``(size, rest)``: row ``c`` holds every entry that unit ``c`` owns in ``x``.

    ``x`` has the member's leaf shape; returns a tensor of shape ``(size, numel(x) // size)``.
    Raises ``TypeError``/``ValueError`` naming the member's path when ``x`` is not a tensor, the
    axis is out of range, or the axis length is not ``outer * size * inner``.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"group member {getattr(member, 'path', member)!r}: x must be a tensor, got {x!r:.60}"
        )
    axis = _check_member(member, size, x.ndim)
    if x.shape[axis] != member.outer * size * member.inner:
        raise ValueError(
            f"group member {member.path!r}: axis {member.axis} has length {x.shape[axis]}, expected "
            f"outer*size*inner = {member.outer}*{size}*{member.inner}"
        )
    moved = torch.movedim(x, axis, 0)
    v = rearrange(moved, "(o c i) ... -> c (o i ...)", o=member.outer, c=size, i=member.inner)
    return v


def unit_mask_to_member(unit_mask: torch.Tensor, member: Member, shape: torch.Size) -> torch.Tensor:
    """Broadcast a ``(size,)`` bool unit mask to a bool mask of the member leaf's ``shape``.

    Raises ``TypeError``/``ValueError`` naming the member's path when ``unit_mask`` is not a 1-D
    bool tensor or ``shape``'s axis is not ``outer * size * inner`` long.
    """
    if not isinstance(unit_mask, torch.Tensor) or unit_mask.dtype != torch.bool or unit_mask.ndim != 1:
        what = (
            f"{unit_mask.dtype} of shape {tuple(unit_mask.shape)}"
            if isinstance(unit_mask, torch.Tensor)
            else repr(unit_mask)[:60]
        )
        raise TypeError(
            f"group member {getattr(member, 'path', member)!r}: unit_mask must be a 1-D bool tensor, got {what}"
        )
    size = unit_mask.shape[0]
    shape = torch.Size(shape)
    axis = _check_member(member, size, len(shape))
    if shape[axis] != member.outer * size * member.inner:
        raise ValueError(
            f"group member {member.path!r}: axis {member.axis} of shape {tuple(shape)} has length "
            f"{shape[axis]}, expected outer*size*inner = {member.outer}*{size}*{member.inner}"
        )
    along = rearrange(unit_mask[None, :, None].expand(member.outer, size, member.inner), "o c i -> (o c i)")
    view_shape = [1] * len(shape)
    view_shape[axis] = shape[axis]
    return along.reshape(view_shape).expand(shape)
