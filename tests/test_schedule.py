"""Schedules: each formula checked by hand at specific points, plus monotonicity properties."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pure_prune import schedule
from pure_prune.testing import strategies


def test_one_shot():
    s = schedule.one_shot(0.8, at=3)
    assert [s(t) for t in range(5)] == [0.0, 0.0, 0.0, 0.8, 0.8]


def test_zhu_gupta_cubic_by_hand():
    s = schedule.polynomial(0.0, 0.9, start=10, every=5, updates=4)
    assert s(0) == 0.0 and s(9) == 0.0
    assert s(10) == pytest.approx(0.0)
    # k = 1: 0.9 + (0 - 0.9) * (1 - 1/4)^3 = 0.9 * (1 - 0.421875)
    assert s(15) == pytest.approx(0.9 * (1 - 0.75**3))
    assert s(17) == s(15)  # changes only on the update grid
    assert s(30) == pytest.approx(0.9) and s(1000) == pytest.approx(0.9)


def test_linear():
    s = schedule.linear(0.2, 0.6, start=0, every=1, updates=4)
    assert [round(s(t), 6) for t in range(6)] == [0.2, 0.3, 0.4, 0.5, 0.6, 0.6]


def test_source_a_linear_steps():
    s = schedule.linear_steps(0.4)
    assert s(29) == 0.0
    assert [round(s(e), 6) for e in (30, 45, 60, 75, 90, 200)] == [0.08, 0.16, 0.24, 0.32, 0.4, 0.4]
    assert s(44) == pytest.approx(0.08)


def test_geometric_matches_source_c_figures():
    s = schedule.geometric(0.2)
    assert s(0) == 0.0
    assert 1 - s(20) == pytest.approx(0.8**20) and round(100 * (1 - s(20)), 2) == 1.15
    assert round(100 * (1 - schedule.geometric(0.15)(15)), 2) == 8.74
    assert round(100 * (1 - schedule.geometric(0.15)(10)), 2) == 19.69


def test_progressive_rates_source_c():
    rates = schedule.progressive_rates(0.2, 17)
    assert rates[:5] == [0.2] * 5
    assert rates[5:10] == pytest.approx([0.16] * 5)
    assert rates[10:15] == pytest.approx([0.12] * 5)
    assert rates[15:] == pytest.approx([0.08] * 2)
    s = schedule.progressive(0.2)
    assert 1 - s(6) == pytest.approx(0.8**5 * 0.84)


def test_penalty_growth_shapes():
    x = schedule.penalty_growth("x", 2.0, 10)
    assert x(0) == 0.0 and x(5) == pytest.approx(1.0) and x(10) == 2.0 and x(50) == 2.0
    assert schedule.penalty_growth("x^2", 1.0, 10)(5) == pytest.approx(0.25)
    assert schedule.penalty_growth("exp", 1.0, 10)(5) == pytest.approx(math.expm1(0.5) / math.expm1(1))
    e6 = schedule.penalty_growth("exp_custom", 1.0, 10, exponent=6)
    assert e6(5) == pytest.approx(math.expm1(3) / math.expm1(6))
    assert e6(5) < schedule.penalty_growth("exp_custom", 1.0, 10, exponent=2)(5)


@given(
    st.sampled_from(["x", "x^2", "exp", "exp_custom"]),
    st.floats(0, 4),
    st.integers(1, 50),
    st.sampled_from([2.0, 4.0, 6.0]),
)
def test_penalty_growth_is_monotone_from_zero_to_granularity(kind, gran, total, a):
    f = schedule.penalty_growth(kind, gran, total, exponent=a)
    vals = [f(t) for t in range(total + 3)]
    assert vals[0] == 0.0 and vals[total] == pytest.approx(gran)
    assert vals[total + 1] == vals[total + 2] == vals[total]  # it stays there
    assert all(b >= a_ - 1e-12 for a_, b in zip(vals, vals[1:]))


@given(
    strategies.sparsities(), strategies.sparsities(), st.integers(0, 5), st.integers(1, 5), st.integers(1, 8)
)
def test_polynomial_is_monotone_and_bounded(si, sf, start, every, updates):
    s = schedule.polynomial(si, sf, start=start, every=every, updates=updates)
    vals = [s(t) for t in range(start + every * updates + 3)]
    lo, hi = min(si, sf), max(si, sf)
    assert all(lo - 1e-12 <= v <= hi + 1e-12 for v in vals)
    diffs = [b - a for a, b in zip(vals, vals[1:])]
    assert all(d >= -1e-12 for d in diffs) or all(d <= 1e-12 for d in diffs)
    assert vals[-1] == pytest.approx(sf)


@pytest.mark.parametrize(
    "make",
    [
        lambda: schedule.one_shot(1.5),
        lambda: schedule.one_shot(float("nan")),
        lambda: schedule.polynomial(0, 0.5, start=0, every=0, updates=3),
        lambda: schedule.polynomial(0, 0.5, start=0, every=1, updates=0),
        lambda: schedule.linear_steps(0.4, steps=0),
        lambda: schedule.geometric(1.0),
        lambda: schedule.geometric(-0.1),
        lambda: schedule.progressive_rates(0.2, 3, factors=((1, 1.0),)),
        lambda: schedule.penalty_growth("cubic", 1.0, 10),
        lambda: schedule.penalty_growth("x", -1.0, 10),
        lambda: schedule.penalty_growth("x", 1.0, 0),
    ],
)
def test_bad_arguments_are_rejected(make):
    with pytest.raises(ValueError):
        make()
