"""Float comparisons whose tolerance scales with the magnitude of the values compared.

Two float computations of the same quantity differ by rounding, and how much depends on the CPU's
kernels (blocking of a matrix product, vector width, thread count): logits of size 3000 computed by
two kernels differ by about ``3000 · 2⁻²³ · √k``, not by a fixed ``1e-5``. An absolute tolerance
fails on one machine and passes on another; an elementwise relative one (``torch.allclose``'s
``rtol · |b|``) fails for entries near zero that are the difference of large terms. The rule used
throughout this project (see ``docs/conventions.md``)::

    max |actual - expected| <= rtol · scale,   scale = max(max |actual|, max |expected|)

per tensor (per leaf for trees, or over the whole tree with ``per_leaf=False``): the error is
measured against the largest value that took part in the comparison. ``rtol`` is the relative error
the computation is expected to keep (``1e-5`` for a float32 forward pass, larger for training runs
or second derivatives). Exact comparisons (masks, counts, bit-identical resumes) use
``torch.equal``, never these.
"""

from __future__ import annotations

from typing import Any

import torch

from pure_prune import tree

__all__ = ["assert_close", "assert_trees_close", "is_close", "max_relative_error"]


def _as_tensor(x: Any) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):  # Python numbers and lists: read in double, not float32
        x = torch.as_tensor(x, dtype=torch.complex128 if isinstance(x, complex) else torch.float64)
    t = x.detach()
    return t if t.is_complex() else t.double()


def max_relative_error(actual: Any, expected: Any, scale: float | None = None) -> float:
    """``max |actual - expected| / scale`` as a float, ``scale`` defaulting to
    ``max(max |actual|, max |expected|)``; 0.0 when the two are equal (NaN where both are NaN),
    ``inf`` when they differ at scale 0 or in where they are not finite. Shapes must be equal: no
    broadcasting (a ``ValueError`` names both shapes)."""
    a, b = _as_tensor(actual), _as_tensor(expected)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: actual {tuple(a.shape)} vs expected {tuple(b.shape)}")
    if a.numel() == 0:
        return 0.0
    finite_a, finite_b = torch.isfinite(a), torch.isfinite(b)
    if not (finite_a.all() and finite_b.all()):
        same_nonfinite = torch.equal(finite_a, finite_b) and torch.equal(
            a[~finite_a].nan_to_num(0.0), b[~finite_b].nan_to_num(0.0)
        )
        if not same_nonfinite:
            return float("inf")
        a, b = a[finite_a], b[finite_b]
        if a.numel() == 0:
            return 0.0
    diff = float((a - b).abs().max())
    if diff == 0.0:
        return 0.0
    if scale is None:
        scale = float(torch.maximum(a.abs().max(), b.abs().max()))
    return diff / scale if scale > 0.0 else float("inf")


def is_close(actual: Any, expected: Any, rtol: float = 1e-5, *, scale: float | None = None) -> bool:
    """Whether ``max |actual - expected| <= rtol · scale`` (``scale`` as in :func:`max_relative_error`)."""
    return max_relative_error(actual, expected, scale) <= rtol


def assert_close(
    actual: Any, expected: Any, rtol: float = 1e-5, *, scale: float | None = None, what: str = "value"
) -> None:
    """Raise ``AssertionError`` unless :func:`is_close`; the message names ``what``, the relative
    error, the scale, and the index of the largest difference with both values there."""
    err = max_relative_error(actual, expected, scale)
    if err <= rtol:
        return
    a, b = _as_tensor(actual), _as_tensor(expected)
    diff = torch.nan_to_num((a - b).abs(), nan=float("inf"))
    index = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
    if scale is None:
        scale = float(torch.maximum(a.abs().max(), b.abs().max()))
    raise AssertionError(
        f"{what}: max relative error {err:.3g} > rtol {rtol:g} (at index {index}: actual "
        f"{float(a[index]):.6g}, expected {float(b[index]):.6g}; scale {scale:.6g})"
    )


def _tensor_pairs(actual: Any, expected: Any) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    tree.assert_same_structure(actual, expected)
    pairs = []
    for path, a, b in zip(tree.paths(actual), tree.leaves(actual), tree.leaves(expected)):
        if a is None or b is None:
            if not (a is None and b is None):
                raise AssertionError(f"leaf {path!r}: one side is None")
            continue
        pairs.append((path or "<root>", torch.as_tensor(a).detach(), torch.as_tensor(b).detach()))
    return pairs


def assert_trees_close(actual: Any, expected: Any, rtol: float = 1e-5, *, per_leaf: bool = True) -> None:
    """:func:`assert_close` leaf by leaf (same structure required; ``None`` leaves must match); the
    message names the leaf path. Integer and bool leaves must be equal.

    ``per_leaf=True`` measures each leaf against its own magnitude. ``per_leaf=False`` measures
    every leaf against the largest magnitude in the whole tree: for trees produced by one
    computation (a training run's params or optimizer moments), where a leaf of tiny values (the
    gradient of a BatchNorm shift, say) carries the rounding of the large terms that cancelled in it.
    """
    pairs = _tensor_pairs(actual, expected)
    scale = None
    if not per_leaf:
        mags = [
            float(t.abs().max()) for _, a, b in pairs for t in (a, b) if t.is_floating_point() and t.numel()
        ]
        scale = max([m for m in mags if m == m and m != float("inf")], default=0.0)
    for path, a, b in pairs:
        if not (a.is_floating_point() or b.is_floating_point()):
            if not torch.equal(a, b):
                raise AssertionError(f"leaf {path!r}: integer or bool values differ")
            continue
        assert_close(a, b, rtol, scale=scale, what=f"leaf {path!r}")
