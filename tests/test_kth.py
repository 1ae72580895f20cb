"""kth_smallest equals torch.kthvalue of the concatenation, on every path (bracket and radix)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pure_prune import kth


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.lists(st.floats(-1e6, 1e6, width=32), min_size=1, max_size=30), min_size=1, max_size=4),
    st.data(),
    st.sampled_from([torch.float32, torch.float64]),
)
def test_equals_kthvalue_of_concatenation(values, data, dtype):
    xs = [torch.tensor(v, dtype=dtype) for v in values]
    total = sum(len(v) for v in values)
    k = data.draw(st.integers(1, total))
    want = torch.kthvalue(torch.cat(xs), k).values
    assert kth.kth_smallest(xs, k) == want  # small input: torch.kthvalue of the concatenation
    assert kth.kth_smallest(xs, k, small=0) == want  # the radix select
    assert kth.kth_smallest(xs, k, small=0, sample_size=2) == want  # a sampled bracket first (total > 8)


@pytest.mark.parametrize("layout", ["random", "sorted", "ties", "signed_zero_and_inf"])
def test_bracket_and_radix_paths_agree_with_kthvalue(layout):
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(20_000 + i, generator=g) for i in range(3)]
    if layout == "sorted":
        xs = [x.sort().values for x in xs]
    if layout == "ties":
        xs = [x.round() for x in xs]
    if layout == "signed_zero_and_inf":
        xs[0][:100] = -0.0
        xs[1][:50] = float("-inf")
    ref = torch.cat(xs)
    for k in (1, 7, ref.numel() // 3, ref.numel() - 1, ref.numel()):
        expected = torch.kthvalue(ref, k).values
        assert kth.kth_smallest(xs, k, sample_size=500) == expected  # bracket (with radix fallback)
        assert kth._radix(xs, k, torch.float32, torch.int32, 32) == expected


def test_order_keys_preserve_float_order():
    x = torch.tensor([float("-inf"), -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.0, float("inf")])
    keys = kth.order_keys(x)
    assert (keys[1:] >= keys[:-1]).all()
    assert keys[3] == keys[4]  # -0.0 == +0.0
    with pytest.raises(TypeError, match="float32 and float64"):
        kth.order_keys(torch.ones(2, dtype=torch.float16))


def test_k_out_of_range():
    with pytest.raises(ValueError, match=r"k must be in \[1, 3\]"):
        kth.kth_smallest([torch.ones(3)], 4)
