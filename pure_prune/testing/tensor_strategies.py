"""Hypothesis strategies for scalars, tensors and parameter trees.

* :func:`keys` (:mod:`pure_prune.rng` keys), :func:`dtypes`, :func:`sparsities` (biased to the
  edges and to simple fractions), :func:`schedules` (monotone lists of sparsities);
* :func:`shapes` (``0..4`` axes, size-1 and zero-length axes included), :func:`tensors`
  (normal, tied or distinct values from a drawn key);
* :func:`params_trees`: canonical nested-dict parameter trees of random structure, with a chosen
  number of prunable (``ndim >= 2``) leaves.

Needs ``hypothesis``; re-exported by :mod:`pure_prune.testing.strategies`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from pure_prune import rng, tree

__all__ = ["FLOAT_DTYPES", "dtypes", "keys", "params_trees", "schedules", "shapes", "sparsities", "tensors"]

FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16)
_KEY_NAMES = ("0", "1", "2", "10", "bias", "bn", "conv", "fc", "layer1", "running_mean", "w", "weight")


# ------------------------------------------------------------------------------------- scalars
def keys() -> st.SearchStrategy[int]:
    """Random keys for :mod:`pure_prune.rng` (non-negative ints below ``2**32``)."""
    return st.integers(0, 2**32 - 1)


def dtypes(choices: Sequence[torch.dtype] = FLOAT_DTYPES) -> st.SearchStrategy[torch.dtype]:
    """One of ``choices`` (default float32, float64, bfloat16; shrinks towards the first)."""
    return st.sampled_from(tuple(choices))


def sparsities(min_value: float = 0.0, max_value: float = 1.0) -> st.SearchStrategy[float]:
    """Sparsities in ``[min_value, max_value]``: any float, biased to the edges and to simple
    fractions (0, 1/2, 1/4, 1/8, ... where ``round(s·N)`` falls on a half and rounds to even)."""
    if not 0.0 <= min_value <= max_value <= 1.0:
        raise InvalidArgument(f"need 0 <= min_value <= max_value <= 1, got {min_value}, {max_value}")
    specials = [
        v for v in (0.0, 1.0, 0.5, 0.25, 0.75, 0.125, 0.375, 0.9, 0.99) if min_value <= v <= max_value
    ]
    floats = st.floats(min_value, max_value, allow_nan=False, allow_infinity=False)
    return st.one_of(st.sampled_from(specials), floats) if specials else floats


def schedules(
    min_size: int = 1,
    max_size: int = 6,
    *,
    min_value: float = 0.0,
    max_value: float = 1.0,
    strict: bool = False,
) -> st.SearchStrategy[list[float]]:
    """Monotone sparsity schedules: non-decreasing lists (strictly increasing with ``strict``)."""
    values = sparsities(min_value, max_value)
    if strict:
        return st.lists(values, min_size=min_size, max_size=max_size, unique=True).map(sorted)
    return st.lists(values, min_size=min_size, max_size=max_size).map(sorted)


# ------------------------------------------------------------------------------------- tensors
@st.composite
def shapes(
    draw: st.DrawFn,
    *,
    min_ndim: int = 0,
    max_ndim: int = 4,
    max_side: int = 4,
    multiple_of: int | Sequence[int] = 1,
    allow_empty: bool = True,
) -> tuple[int, ...]:
    """Tensor shapes with ``min_ndim..max_ndim`` axes of length ``1..max_side`` (size-1 included).

    ``multiple_of`` makes axis ``i`` a multiple of ``multiple_of[i]`` (an int applies to every axis;
    a shorter sequence to the leading axes), e.g. ``(4, 4)`` for 4×4 blocks. With ``allow_empty``
    about one shape in eight has a zero-length axis.
    """
    ndim = draw(st.integers(min_ndim, max_ndim))
    mult = [multiple_of] * ndim if isinstance(multiple_of, int) else list(multiple_of)
    mult = (mult + [1] * ndim)[:ndim]
    shape = [draw(st.integers(1, max(1, max_side // k))) * k for k in mult]
    if allow_empty and ndim and draw(st.integers(0, 7)) == 0:
        shape[draw(st.integers(0, ndim - 1))] = 0
    return tuple(shape)


def _values(key: int, shape: tuple[int, ...], dtype: torch.dtype, kind: str) -> torch.Tensor:
    if kind == "normal":
        return rng.normal(key, shape).to(dtype)
    if kind == "ties":  # a few distinct levels: many exact ties in every dtype
        return torch.randint(0, 3, shape, generator=rng.generator(key)).to(dtype)
    if kind == "distinct":  # a permutation of 0..n-1: no ties
        n = math.prod(shape)
        if dtype == torch.bfloat16 and n > 256:
            raise InvalidArgument(f"bfloat16 cannot hold {n} distinct integers exactly; use float32")
        return torch.randperm(n, generator=rng.generator(key)).to(dtype).reshape(shape)
    raise InvalidArgument(f"values must be 'normal', 'ties' or 'distinct', got {kind!r}")


@st.composite
def tensors(
    draw: st.DrawFn,
    shape: tuple[int, ...] | st.SearchStrategy[tuple[int, ...]] | None = None,
    dtype: torch.dtype | st.SearchStrategy[torch.dtype] | None = None,
    *,
    values: str = "normal",
) -> torch.Tensor:
    """A tensor of ``shape`` and ``dtype`` (drawn from :func:`shapes` / :func:`dtypes` when omitted).

    ``values``: ``"normal"`` (standard normal), ``"ties"`` (integers 0..2, many ties) or
    ``"distinct"`` (a random permutation of ``0..n-1``: tie-free).
    """
    shp = (
        draw(shapes()) if shape is None else (draw(shape) if isinstance(shape, st.SearchStrategy) else shape)
    )
    dt = draw(dtypes()) if dtype is None else (draw(dtype) if isinstance(dtype, st.SearchStrategy) else dtype)
    return _values(draw(keys()), tuple(shp), dt, values)


# ---------------------------------------------------------------------------------------- trees
def _nest(draw: st.DrawFn, leaves: list[Any], depth: int, max_depth: int) -> dict[str, Any]:
    """Distribute ``leaves`` over a dict of depth ``<= max_depth`` with distinct keys per level."""
    if depth >= max_depth:
        n_children = len(leaves)
    else:
        n_children = draw(st.integers(1, len(leaves)))
    names = draw(st.lists(st.sampled_from(_KEY_NAMES), min_size=n_children, max_size=n_children, unique=True))
    cuts = sorted(draw(st.permutations(range(1, len(leaves))))[: n_children - 1])
    bounds = [0, *cuts, len(leaves)]
    out: dict[str, Any] = {}
    for name, lo, hi in zip(names, bounds[:-1], bounds[1:]):
        part = leaves[lo:hi]
        if len(part) == 1 and (depth >= max_depth or draw(st.booleans())):
            out[name] = part[0]
        else:
            out[name] = _nest(draw, part, depth + 1, max_depth)
    return out


@st.composite
def params_trees(
    draw: st.DrawFn,
    *,
    min_leaves: int = 1,
    max_leaves: int = 6,
    max_depth: int = 3,
    min_prunable: int = 0,
    leaf_shapes: st.SearchStrategy[tuple[int, ...]] | None = None,
    prunable_shapes: st.SearchStrategy[tuple[int, ...]] | None = None,
    dtype: st.SearchStrategy[torch.dtype] | None = None,
    none_leaves: bool = True,
) -> dict[str, Any]:
    """Canonical nested-dict parameter trees of random structure.

    Leaves are float tensors drawn from ``leaf_shapes`` (default :func:`shapes`: ndim 0–4, empty
    and size-1 axes included) and ``dtype`` (default :func:`dtypes`), or ``None`` when
    ``none_leaves``. At least ``min_prunable`` leaves are prunable by
    :func:`pure_prune.mask.default_prunable` (ndim >= 2), with shapes from ``prunable_shapes``
    (default ``shapes(min_ndim=2)``). Depth is at most ``max_depth`` dict levels; keys mimic real
    models (``"0"``, ``"10"``, ``"bias"``, ``"weight"``, ...), inserted in sorted order.
    """
    if not 1 <= min_leaves <= max_leaves or min_prunable > max_leaves:
        raise InvalidArgument(
            f"bad leaf counts: min_leaves={min_leaves}, max_leaves={max_leaves}, min_prunable={min_prunable}"
        )
    any_shape = shapes() if leaf_shapes is None else leaf_shapes
    big_shape = shapes(min_ndim=2) if prunable_shapes is None else prunable_shapes
    dt = dtypes() if dtype is None else dtype
    n = draw(st.integers(max(min_leaves, min_prunable), max_leaves))
    leaves: list[Any] = []
    for i in range(n):
        if i < min_prunable:
            shape = draw(big_shape)
            if len(shape) < 2:
                raise InvalidArgument(f"prunable_shapes drew {shape}; prunable leaves need ndim >= 2")
        elif none_leaves and draw(st.integers(0, 4)) == 0:
            leaves.append(None)
            continue
        else:
            shape = draw(any_shape)
        leaves.append(_values(draw(keys()), shape, draw(dt), "normal"))
    order = draw(st.permutations(range(n)))
    return tree.canonical(_nest(draw, [leaves[i] for i in order], 1, max_depth))
