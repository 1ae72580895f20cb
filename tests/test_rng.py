"""Explicit keys: deterministic, independent, validated."""

import pytest
import torch
from hypothesis import given

from pure_prune import rng
from pure_prune.testing import strategies


@given(strategies.keys())
def test_split_is_deterministic_and_distinct(key):
    a, b = rng.split(key, 2)
    assert rng.split(key, 2) == [a, b]
    assert a != b and a != key
    assert 0 <= a < 2**63 and 0 <= b < 2**63


def test_fold_in_differs_by_data():
    assert len({rng.fold_in(7, i) for i in range(100)}) == 100


def test_draws_repeat_for_same_key_and_differ_across_keys():
    assert torch.equal(rng.normal(3, (4, 5)), rng.normal(3, (4, 5)))
    assert not torch.equal(rng.normal(3, (4, 5)), rng.normal(4, (4, 5)))
    u = rng.uniform(1, (1000,))
    assert 0 <= u.min() and u.max() < 1
    r = rng.rademacher(2, (1000,), dtype=torch.float64)
    assert set(r.unique().tolist()) == {-1.0, 1.0} and r.dtype == torch.float64


@pytest.mark.parametrize("bad", [-1, 1.5, "3", None, True])
def test_bad_keys_are_rejected(bad):
    with pytest.raises((TypeError, ValueError), match="key"):
        rng.split(bad)


def test_global_rng_is_untouched():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    rng.normal(5, (10,))
    assert torch.equal(torch.rand(3), expected)
