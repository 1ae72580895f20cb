"""pure_prune.groups: member views and unit masks (hand examples with outer/inner, and properties)."""

from __future__ import annotations

import math

import pytest
import torch
from einops import reduce
from hypothesis import given
from hypothesis import strategies as st

from pure_prune import mask, select, tree
from pure_prune.groups import ChannelGroup, Member, member_view, unit_mask_to_member
from pure_prune.testing import pruned_are_zero, whole_channels
from pure_prune.testing import strategies as pst


def test_member_view_rows_and_columns():
    x = torch.arange(6.0).reshape(2, 3)
    assert member_view(x, Member("w", 0), 2).tolist() == [[0, 1, 2], [3, 4, 5]]
    assert member_view(x, Member("w", 1), 3).tolist() == [[0, 3], [1, 4], [2, 5]]
    assert member_view(x, Member("w", -1), 3).tolist() == [[0, 3], [1, 4], [2, 5]]
    conv = torch.arange(8.0).reshape(2, 2, 1, 2)  # (out, in, kh, kw): input channel c owns [:, c]
    assert member_view(conv, Member("conv", 1), 2).tolist() == [[0, 1, 4, 5], [2, 3, 6, 7]]


def test_member_view_outer_is_stacked_gates():
    """LSTM gate rows (4H, in) with H = 2: unit j owns rows j, H + j, 2H + j, 3H + j."""
    w = torch.arange(8.0)[:, None] * 10 + torch.arange(2.0)
    v = member_view(w, Member("w_ih", 0, outer=4), 2)
    assert v.tolist() == [[0, 1, 20, 21, 40, 41, 60, 61], [10, 11, 30, 31, 50, 51, 70, 71]]


def test_member_view_inner_is_flattened_feature_map():
    """fc (out=2, C·H·W = 3·2) fed by a flattened (C=3, H·W=2) map: channel c owns columns 2c, 2c+1."""
    w = torch.arange(12.0).reshape(2, 6)
    v = member_view(w, Member("fc", 1, inner=2), 3)
    assert v.tolist() == [[0, 6, 1, 7], [2, 8, 3, 9], [4, 10, 5, 11]]


def test_member_view_outer_and_inner_together():
    x = torch.arange(8.0)  # (outer=2, size=2, inner=2): unit c owns 2·(2o + c) + i
    assert member_view(x, Member("v", 0, outer=2, inner=2), 2).tolist() == [[0, 1, 4, 5], [2, 3, 6, 7]]


def test_member_view_error_names_member_and_lengths():
    with pytest.raises(
        ValueError, match=r"member 'w_ih': axis 0 has length 6, expected outer\*size\*inner = 4\*2\*1"
    ):
        member_view(torch.zeros(6, 3), Member("w_ih", 0, outer=4), 2)


def test_unit_mask_to_member_hand_examples():
    keep = torch.tensor([True, False])
    assert unit_mask_to_member(keep, Member("w", 0), torch.Size([2, 3])).tolist() == [[True] * 3, [False] * 3]
    assert unit_mask_to_member(keep, Member("w", 1), torch.Size([1, 2])).tolist() == [[True, False]]
    gates = unit_mask_to_member(keep, Member("w_ih", 0, outer=4), torch.Size([8, 1]))
    assert gates[:, 0].tolist() == [True, False] * 4
    fc = unit_mask_to_member(torch.tensor([True, False, True]), Member("fc", 1, inner=2), torch.Size([1, 6]))
    assert fc.tolist() == [[True, True, False, False, True, True]]
    conv_in = unit_mask_to_member(keep, Member("conv", 1), torch.Size([3, 2, 2, 2]))
    assert bool(conv_in[:, 0].all()) and not bool(conv_in[:, 1].any())


_MEMBER_CASES = st.tuples(
    st.integers(1, 3),  # outer
    st.integers(1, 4),  # size
    st.integers(1, 3),  # inner
    st.integers(0, 2),  # axis
    st.lists(st.integers(1, 3), min_size=2, max_size=2),  # the other axes
)


def _case(outer, size, inner, axis, others):
    shape = list(others)
    shape.insert(axis, outer * size * inner)
    return Member("leaf", axis, outer=outer, inner=inner), size, torch.Size(shape)


@given(_MEMBER_CASES)
def test_member_view_partitions_the_leaf(case):
    """Every entry belongs to exactly one unit, and each unit owns numel / size entries."""
    mem, size, shape = _case(*case)
    ids = torch.arange(math.prod(shape)).reshape(shape)
    v = member_view(ids, mem, size)
    assert v.shape == (size, math.prod(shape) // size)
    assert torch.equal(torch.sort(v.reshape(-1)).values, torch.arange(math.prod(shape)))
    # unit c owns the entries whose index i along the axis has (i // inner) % size == c
    along = (torch.arange(shape[mem.axis]) // mem.inner) % size
    view_shape = [1] * len(shape)
    view_shape[mem.axis] = shape[mem.axis]
    owner = along.reshape(view_shape).expand(shape)
    for c in range(size):
        assert torch.equal(torch.sort(v[c]).values, ids[owner == c])


@given(_MEMBER_CASES, st.data())
def test_unit_mask_to_member_inverts_member_view(case, data):
    """Broadcasting a unit mask and viewing it back gives each unit's flag on all of its entries."""
    mem, size, shape = _case(*case)
    keep = torch.tensor(data.draw(st.lists(st.booleans(), min_size=size, max_size=size), label="keep"))
    full = unit_mask_to_member(keep, mem, shape)
    assert full.shape == shape and full.dtype == torch.bool
    v = member_view(full, mem, size)
    assert torch.equal(reduce(v, "u r -> u", "all"), keep) and torch.equal(reduce(v, "u r -> u", "any"), keep)


@given(pst.channel_nets(), pst.sparsities())
def test_removed_channels_are_whole_and_zero(net, s):
    """On hand-built MLP-like trees (conv stem with inner > 1, gate rows with outer = 4) channel
    pruning removes every member slice of a unit, and applying the masks zeroes them."""
    params, groups = net
    scores = tree.map(torch.abs, params)
    masks = select.channels(scores, s, groups)
    by_path = dict(zip(tree.paths(masks), tree.leaves(masks)))
    for g in groups:  # every member carries a mask (whole_channels skips None leaves)
        assert all(by_path[m.path] is not None for m in g.members), g.name
    whole_channels(masks, groups, sparsity=s)
    pruned_are_zero(mask.apply(params, masks), masks)


def test_channel_group_defaults():
    g = ChannelGroup("fc1", 3, (Member("fc1.weight", 0),))
    assert g.prunable and g.members[0].outer == 1 and g.members[0].inner == 1 and g.members[0].score
