"""pure_prune.importance.magnitude: magnitude, random and channel-norm scores (hand examples + properties)."""

from __future__ import annotations

import pytest
import torch
from einops import reduce
from hypothesis import given
from hypothesis import strategies as st

from pure_prune import mask, rng, select, tree
from pure_prune.groups import ChannelGroup, Member, member_view
from pure_prune.importance.magnitude import channel_norms, magnitude, random
from pure_prune.testing import exact_sparsity, masks_fit_params
from pure_prune.testing import strategies as pst


def test_magnitude_hand_example():
    params = {"b": torch.tensor([1.0, -1.0]), "w": torch.tensor([[-3.0, 0.5], [0.0, 2.0]])}
    masks = {"b": None, "w": torch.ones(2, 2, dtype=torch.bool)}
    l1 = magnitude(params, masks)
    assert l1["b"] is None and l1["w"].tolist() == [[3.0, 0.5], [0.0, 2.0]]
    assert magnitude(params, masks, p=2)["w"].tolist() == [[9.0, 0.25], [0.0, 4.0]]
    assert magnitude(params, masks, p=0.5)["w"][0, 0].item() == pytest.approx(3**0.5)


@given(st.data())
def test_magnitude_shape_dtype_and_detached(data):
    params = data.draw(pst.params_trees(min_prunable=1), label="params")
    masks = data.draw(pst.masks(params), label="masks")
    p = data.draw(st.sampled_from([1, 2, 3]), label="p")
    params = tree.map(lambda x: None if x is None else x.requires_grad_(), params)
    scores = magnitude(params, masks, p=p)
    for w, m, s in zip(tree.leaves(params), tree.leaves(masks), tree.leaves(scores)):
        assert (s is None) == (m is None)
        if s is None:
            continue
        assert s.shape == w.shape and not s.requires_grad
        assert s.dtype == torch.promote_types(w.dtype, torch.float32)
        assert torch.equal(s, w.detach().to(s.dtype).abs() ** p)
    masks_fit_params(params, tree.map(lambda s: None if s is None else s >= 0, scores))


def test_magnitude_errors():
    params = {"w": torch.ones(2, 2)}
    masks = {"w": torch.ones(2, 2, dtype=torch.bool)}
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match=f"p must be > 0, got {bad}"):
            magnitude(params, masks, p=bad)
    with pytest.raises(ValueError, match="params and masks have different tree structures"):
        magnitude(params, {"v": None})


@given(st.data())
def test_random_scores_are_reproducible_uniform_and_shaped(data):
    params = data.draw(pst.params_trees(min_prunable=1), label="params")
    masks = mask.ones_like(params)
    key = data.draw(pst.keys(), label="key")
    a, b = random(masks, key), random(masks, key)
    for m, x, y in zip(tree.leaves(masks), tree.leaves(a), tree.leaves(b)):
        assert (x is None) == (m is None)
        if x is not None:
            assert x.shape == m.shape and x.dtype == torch.float32 and torch.equal(x, y)
            assert bool(((x >= 0) & (x < 1)).all())
    s = data.draw(pst.sparsities(), label="s")
    exact_sparsity(select.unstructured(a, s), s)


def test_random_hand_example_and_errors():
    masks = {"a": torch.ones(2, 3, dtype=torch.bool), "b": None, "c": torch.ones(4, 1, dtype=torch.bool)}
    out = random(masks, 7)
    assert torch.equal(out["a"], rng.uniform(rng.fold_in(7, 0), (2, 3)))  # leaf i draws from fold_in(key, i)
    assert torch.equal(out["c"], rng.uniform(rng.fold_in(7, 2), (4, 1)))
    assert out["b"] is None and not torch.equal(random(masks, 8)["a"], out["a"])
    with pytest.raises(ValueError, match="non-negative int, got -1"):
        random(masks, -1)
    with pytest.raises(TypeError, match="got 1.5"):
        random(masks, 1.5)


def test_channel_norms_hand_examples():
    # conv (2 out channels) flattened from (2, 1, 2) into fc (1, 4): inner = 2
    scores = {
        "conv": {"bias": torch.tensor([1.0, -2.0]), "weight": torch.tensor([[[[1.0]]], [[[-3.0]]]])},
        "fc": {"weight": torch.tensor([[1.0, 2.0, 3.0, 4.0]])},
    }
    group = ChannelGroup(
        "conv", 2, (Member("conv.weight", 0), Member("conv.bias", 0), Member("fc.weight", 1, inner=2))
    )
    l1 = channel_norms(scores, (group,))["conv"]  # unit 0: 1+1+(1+2); unit 1: 3+2+(3+4)
    assert l1.tolist() == [5.0, 12.0]
    l2 = channel_norms(scores, (group,), ord=2)["conv"]  # sqrt(1+1+1+4), sqrt(9+4+9+16)
    assert torch.allclose(l2, torch.tensor([7.0, 38.0]).sqrt())
    # an LSTM-like stacked gate matrix (4H, in) with H = 2: unit j owns rows j, 2+j, 4+j, 6+j
    gates = {"w": torch.arange(8.0)[:, None]}
    lstm = ChannelGroup("cell", 2, (Member("w", 0, outer=4),))
    assert channel_norms(gates, [lstm])["cell"].tolist() == [0 + 2 + 4 + 6, 1 + 3 + 5 + 7]
    # members marked score=False and members without a score tensor are left out
    quiet = ChannelGroup("conv", 2, (Member("conv.weight", 0), Member("conv.bias", 0, score=False)))
    assert channel_norms(scores, [quiet])["conv"].tolist() == [1.0, 3.0]
    partial = {**scores, "conv": {"bias": None, "weight": scores["conv"]["weight"]}}
    assert channel_norms(partial, [group])["conv"].tolist() == [4.0, 10.0]


def test_channel_norms_keeps_float64_and_errors():
    scores = {"w": torch.tensor([[1.0 + 1e-12], [1.0]], dtype=torch.float64)}
    norms = channel_norms(scores, [ChannelGroup("w", 2, (Member("w", 0),))])["w"]
    assert norms.dtype == torch.float64 and norms[0] > norms[1]
    with pytest.raises(ValueError, match="ord must be > 0, got 0"):
        channel_norms(scores, [], ord=0)
    with pytest.raises(ValueError, match="group 'g' has no scored member"):
        channel_norms({"w": None}, [ChannelGroup("g", 2, (Member("w", 0),))])
    with pytest.raises(
        ValueError, match=r"member 'w': axis 0 has length 2, expected outer\*size\*inner = 1\*3\*1"
    ):
        channel_norms(scores, [ChannelGroup("g", 3, (Member("w", 0),))])


@given(pst.channel_nets())
def test_channel_norms_rank_like_select_channels(net):
    """The unit that select.channels removes first (L1) has the smallest channel norm of its group."""
    params, groups = net
    scores = magnitude(params, tree.map(lambda x: torch.ones_like(x, dtype=torch.bool), params))
    norms = channel_norms(scores, groups)
    for g in groups:
        assert norms[g.name].shape == (g.size,)
        one = select.channels(scores, 1 / g.size, [g])  # round(1/size · size) = 1 unit
        first = g.members[0]
        leaf = dict(zip(tree.paths(one), tree.leaves(one)))[first.path]
        alive = reduce(member_view(leaf, first, g.size), "u r -> u", "any")
        assert int((~alive).sum()) == 1
        assert norms[g.name][~alive].item() == norms[g.name].min().item()
