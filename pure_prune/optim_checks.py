"""Argument checks of the optimizers and learning-rate schedules (:mod:`pure_prune.optim`), and the
types of their trees.

Each check returns the value it accepted (as a Python float or int) or raises ``TypeError``/
``ValueError`` naming the argument, or for trees the first bad leaf path.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from pure_prune import tree

__all__ = [
    "OptState",
    "Params",
    "check_count",
    "check_non_negative",
    "check_number",
    "check_params",
    "check_state",
    "check_tree",
    "check_unit_interval",
]

Params = Any
OptState = dict[str, Any]
"""An optimizer's state: a canonical dict of tensors (see :mod:`pure_prune.optim`)."""


def check_number(name: str, value: object) -> float:
    """``value`` as a float: a finite real number (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_non_negative(name: str, value: object) -> float:
    """``value`` as a float: finite and ``>= 0``."""
    v = check_number(name, value)
    if v < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return v


def check_unit_interval(name: str, value: object) -> float:
    """``value`` as a float in ``[0, 1)`` (a momentum, a beta)."""
    v = check_number(name, value)
    if not 0.0 <= v < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return v


def check_count(name: str, value: object, low: int) -> int:
    """``value`` as an int (not a bool) ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    return int(value)


def check_tree(params: Params, other: Params, name: str) -> None:
    """Raise naming the first bad leaf path unless ``other`` has the structure, leaf shapes and
    dtypes of ``params`` (a float64 gradient would silently promote a float32 param)."""
    p_leaves, p_spec = tree.flatten(params)
    o_leaves, o_spec = tree.flatten(other)
    if p_spec != o_spec:
        tree.assert_same_structure(params, other, ("params", name))
    for i, (p, o) in enumerate(zip(p_leaves, o_leaves)):
        if not isinstance(o, Tensor):
            raise TypeError(f"{name} at {tree.paths(params)[i]!r} must be a tensor, got {o!r}")
        if o.shape != getattr(p, "shape", None):
            want = tuple(p.shape) if isinstance(p, Tensor) else repr(p)
            raise ValueError(
                f"{name} at {tree.paths(params)[i]!r} has shape {tuple(o.shape)}, but the param is {want}"
            )
        if o.dtype != p.dtype:
            raise TypeError(
                f"{name} at {tree.paths(params)[i]!r} has dtype {o.dtype}, but the param is {p.dtype}"
            )


def check_params(params: Params) -> list[Tensor]:
    """The leaves of ``params``: at least one, every one a floating-point tensor."""
    p_leaves = tree.leaves(params)
    for i, p in enumerate(p_leaves):
        if not isinstance(p, Tensor) or not p.is_floating_point():
            path = tree.paths(params)[i]
            what = f"a {p.dtype} tensor" if isinstance(p, Tensor) else repr(p)
            raise TypeError(f"params at {path!r} must be a floating-point tensor, got {what}")
    if not p_leaves:
        raise ValueError("params has no tensor leaves")
    return p_leaves


def check_state(opt_state: OptState, keys: Sequence[str]) -> None:
    """``opt_state`` is a dict made by ``init`` holding ``keys`` (the step and override ones tensors)."""
    if not isinstance(opt_state, dict):
        raise TypeError(f"opt_state must be the dict made by init, got {type(opt_state).__name__}")
    missing = [k for k in keys if k not in opt_state]
    if missing:
        raise ValueError(f"opt_state lacks {missing} (has {sorted(opt_state)}): made by another optimizer?")
    for k in ("count", "lr_override", "lr_override_on"):
        if k in keys and not isinstance(opt_state[k], Tensor):
            raise TypeError(f"opt_state[{k!r}] must be a tensor, got {opt_state[k]!r:.60}")
