"""compact.compact stores convolution weights channels_last: same values, same outputs."""

from __future__ import annotations

import torch

from pure_prune import compact, mask, rng, select, tree
from pure_prune import models as model_registry
from pure_prune.testing.close import assert_close


def _conv4_case(sparsity: float):
    spec = model_registry.get("conv4")
    params, state = spec.init(0, width=8)
    groups = spec.groups(params)
    masks = select.channels(tree.map(torch.abs, params), sparsity, groups)
    return spec, params, state, masks, groups


def test_compacted_convs_are_channels_last_with_the_values_of_the_nchw_ones():
    spec, params, state, masks, groups = _conv4_case(0.5)
    small = compact.compact(params, state, masks, groups)
    nchw = compact.compact(params, state, masks, groups, channels_last=False)
    for p, a, b in zip(tree.paths(small[0]), tree.leaves(small[0]), tree.leaves(nchw[0])):
        assert torch.equal(a, b), p  # values (and shapes) are the same; only strides differ
        if a.ndim == 4:
            assert a.is_contiguous(memory_format=torch.channels_last), p
            assert b.is_contiguous(), p
        else:
            assert a.is_contiguous(), p
    assert all(torch.equal(small[3][k], nchw[3][k]) for k in nchw[3])
    x = rng.normal(1, (4, 3, 32, 32))
    with torch.no_grad():
        got = spec.apply(small[0], small[1], x, train=False)[0]
        want = spec.apply(nchw[0], nchw[1], x, train=False)[0]
        masked = spec.apply(mask.apply(params, masks), state, x, train=False)[0]
    # a convolution in another layout sums in another order: float32 rounding, relative to |logits|
    assert_close(got, want, rtol=1e-5)
    assert_close(got, masked, rtol=1e-5)


def test_to_channels_last_leaves_other_leaves_alone():
    params = {"a": torch.randn(2, 3, 3, 3), "b": torch.randn(4), "c": torch.randn(5, 6), "d": None}
    out = compact.to_channels_last(params)
    assert out["a"].is_contiguous(memory_format=torch.channels_last) and torch.equal(out["a"], params["a"])
    assert out["b"] is params["b"] and out["c"] is params["c"] and out["d"] is None
    again = compact.to_channels_last(out)
    assert again["a"] is out["a"]  # already channels_last: not copied
