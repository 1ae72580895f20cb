"""Sparsity and regularisation schedules: plain functions of a step/epoch/round index.

Each constructor validates its arguments and returns a pure ``Callable[[int], float]``. They are
host-side (Python floats): a schedule decides the *target* of the next selection; the selection
itself (``select.*``) turns a target into exact counts (``round(s · N)`` pruned, Python rounding).

=====================  =========================================================================
``one_shot``            0 before ``at``, ``final`` from ``at`` on
``polynomial``          Zhu & Gupta (2017): s_t = s_f + (s_i − s_f)(1 − (t − t₀)/(nΔt))³,
                        updated every Δt steps from t₀ over n updates (cubic by default)
``linear``              s_i → s_f linearly over the same grid (Zhu & Gupta with power 1)
``linear_steps``        staged recompilation recipe: ``steps`` equal increments every ``every`` epochs
                        from ``start`` (5 steps, every 15 from epoch 30: 8% → 40%)
``geometric``           IMP: after round k, ``(1 − r)^k`` of the weights remain
``progressive``         a decaying IMP rate: the per-round rate is r × 1.0 / 0.8 / 0.6 / 0.4 for
                        rounds 0–4 / 5–9 / 10–14 / 15+, compounded over rounds
``penalty_growth``      RSST's regularisation coefficient: ``granularity × g(t / T)`` with
                        g ∈ {x, x^2, exp, exp_custom(a)} (see its docstring)
=====================  =========================================================================
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

__all__ = [
    "PROGRESSIVE_FACTORS",
    "Schedule",
    "geometric",
    "linear",
    "linear_steps",
    "one_shot",
    "penalty_growth",
    "polynomial",
    "progressive",
    "progressive_rates",
]

Schedule = Callable[[int], float]

# the decaying IMP rate (docs/methods.md, "progressive"): (first round of the range, rate multiplier)
PROGRESSIVE_FACTORS: tuple[tuple[int, float], ...] = ((0, 1.0), (5, 0.8), (10, 0.6), (15, 0.4))


def _real(name: str, value: object) -> float:
    """``value`` as a float: a real number, not a bool, a string or a tensor (``TypeError``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r:.60}")
    return float(value)


def _unit(name: str, value: float) -> float:
    v = _real(name, value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return v


def _nonneg_int(name: str, value: int, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r:.60}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _rate(rate: float) -> float:
    r = _real("rate", rate)
    if not 0.0 <= r < 1.0:
        raise ValueError(f"rate must be in [0, 1) (a share of the remaining weights), got {rate!r}")
    return r


def one_shot(final: float, at: int = 0) -> Schedule:
    """Sparsity 0 before step ``at`` and ``final`` from ``at`` on."""
    s = _unit("final", final)
    at = _nonneg_int("at", at)
    return lambda t: s if _nonneg_int("step", t) >= at else 0.0


def polynomial(
    initial: float, final: float, *, start: int, every: int, updates: int, power: float = 3.0
) -> Schedule:
    """Zhu & Gupta's gradual schedule: ``s_f + (s_i − s_f)(1 − (t − t₀)/(nΔt))^power``.

    ``t`` is floored to the update grid ``t₀ + kΔt`` (k = 0..n): the sparsity changes only at
    updates, ``initial`` before ``start`` and ``final`` from ``start + updates·every`` on.
    """
    si, sf = _unit("initial", initial), _unit("final", final)
    start = _nonneg_int("start", start)
    every = _nonneg_int("every", every, 1)
    updates = _nonneg_int("updates", updates, 1)
    if not _real("power", power) > 0:
        raise ValueError(f"power must be > 0, got {power!r}")

    def schedule(t: int) -> float:
        if _nonneg_int("step", t) < start:
            return si
        k = min(updates, (t - start) // every)
        return sf + (si - sf) * (1.0 - k / updates) ** power

    return schedule


def linear(initial: float, final: float, *, start: int, every: int, updates: int) -> Schedule:
    """Sparsity rising linearly from ``initial`` to ``final`` over ``updates`` updates (power 1)."""
    return polynomial(initial, final, start=start, every=every, updates=updates, power=1.0)


def linear_steps(final: float, *, steps: int = 5, start: int = 30, every: int = 15) -> Schedule:
    """Sparsity in equal steps: ``final · k / steps`` from epoch ``start + (k−1)·every``.

    With the defaults and ``final=0.4``: 8% at epoch 30, 16% at 45, 24% at 60, 32% at 75, 40% at 90.
    """
    sf = _unit("final", final)
    steps = _nonneg_int("steps", steps, 1)
    start = _nonneg_int("start", start)
    every = _nonneg_int("every", every, 1)

    def schedule(t: int) -> float:
        if _nonneg_int("epoch", t) < start:
            return 0.0
        k = min(steps, (t - start) // every + 1)
        return sf * k / steps

    return schedule


def geometric(rate: float) -> Schedule:
    """IMP's target after round ``k`` (k = 0 is dense): ``1 − (1 − rate)^k``.

    Rounding rule: a scope of ``N`` entries keeps ``N − round((1 − (1 − r)^k)·N)`` entries
    (Python ``round``) — 20 rounds at 0.2 keep 0.8²⁰ ≈ 1.15% of the weights.
    """
    r = _rate(rate)
    return lambda k: 1.0 - (1.0 - r) ** _nonneg_int("round", k)


def progressive_rates(
    rate: float, rounds: int, factors: Sequence[tuple[int, float]] = PROGRESSIVE_FACTORS
) -> list[float]:
    """Per-round rates ``rate × factor(round)`` for rounds ``0..rounds−1`` (the decaying IMP rate)."""
    r = _rate(rate)
    rounds = _nonneg_int("rounds", rounds)
    table = _check_factors(factors)
    out = []
    for k in range(rounds):
        f = [m for first, m in table if first <= k][-1]
        out.append(r * f)
    return out


def _check_factors(factors: object) -> list[tuple[int, float]]:
    """``factors`` sorted: ``(first round, multiplier)`` pairs, the first at round 0, multipliers
    ``>= 0`` and small enough that ``rate × multiplier`` stays a rate (checked by the caller)."""
    if isinstance(factors, (str, bytes)) or not isinstance(factors, Sequence):
        raise TypeError(f"factors must be a sequence of (first round, multiplier) pairs, got {factors!r:.60}")
    table = []
    for i, pair in enumerate(factors):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"factors[{i}] must be a (first round, multiplier) pair, got {pair!r:.60}")
        first, mult = _nonneg_int(f"factors[{i}][0]", pair[0]), _real(f"factors[{i}][1]", pair[1])
        if not 0.0 <= mult:
            raise ValueError(f"factors[{i}][1] (a rate multiplier) must be >= 0, got {pair[1]!r}")
        table.append((first, mult))
    table.sort()
    if not table or table[0][0] != 0:
        raise ValueError(f"factors must start at round 0, got {tuple(factors)}")
    return table


def progressive(rate: float, factors: Sequence[tuple[int, float]] = PROGRESSIVE_FACTORS) -> Schedule:
    """Target after round ``k`` under the decaying IMP rate: ``1 − Π_{j<k} (1 − rate_j)``."""
    _rate(rate)
    _check_factors(factors)

    def schedule(k: int) -> float:
        remaining = math.prod(1.0 - x for x in progressive_rates(rate, _nonneg_int("round", k), factors))
        return 1.0 - remaining

    return schedule


_GROWTH: dict[str, Callable[[float, float], float]] = {
    "x": lambda x, a: x,
    "x^2": lambda x, a: x * x,
    "exp": lambda x, a: math.expm1(x) / math.expm1(1.0),
    "exp_custom": lambda x, a: math.expm1(a * x) / math.expm1(a),
}


def penalty_growth(kind: str, granularity: float, total: int, *, exponent: float = 2.0) -> Schedule:
    """RSST's penalty coefficient at step ``t``: ``granularity × g(min(t, total) / total)``.

    ``g`` rises from 0 to 1: ``"x"`` linear, ``"x^2"`` quadratic, ``"exp"`` = (eˣ − 1)/(e − 1),
    ``"exp_custom"`` = (e^{a·x} − 1)/(e^a − 1) with ``exponent`` a (RSST runs use 2, 4, 6; larger
    a keeps the penalty small for longer and then raises it sharply). ``granularity`` is the
    growing-regularisation knob ``reg_granularity_prune`` (0.5 / 1.0 / 2.0): the coefficient
    reached at ``total``.
    """
    if kind not in _GROWTH:
        raise ValueError(f"unknown penalty growth {kind!r}; known: {sorted(_GROWTH)}")
    if not (_real("granularity", granularity) >= 0 and math.isfinite(granularity)):
        raise ValueError(f"granularity must be finite and >= 0, got {granularity!r}")
    total = _nonneg_int("total", total, 1)
    if kind == "exp_custom" and not (_real("exponent", exponent) > 0 and math.isfinite(exponent)):
        raise ValueError(f"exponent must be finite and > 0, got {exponent!r}")
    g = _GROWTH[kind]
    return lambda t: granularity * g(min(_nonneg_int("step", t), total) / total, exponent)
