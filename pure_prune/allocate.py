"""Per-leaf sparsity allocation: how a global target is spread over prunable leaves.

Each function returns ``{path: sparsity}`` for the leaves that carry a mask; pass the mapping to
``select.unstructured(scores, mapping, scope="layer")``. Pruned counts are
``round(s_l · N_l)`` per leaf, so the global fraction equals the target up to rounding.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

from pure_prune import tree

__all__ = ["erk", "layer_multipliers", "uniform", "SEEDS_MULTIPLIERS"]

# layer-specific rates of a lottery-ticket recipe (docs/methods.md): early x0.5, middle x1, late x1.5
SEEDS_MULTIPLIERS = (0.5, 1.0, 1.5)


def _real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r:.60}")
    return float(value)


def _check_target(sparsity: float) -> float:
    s = _real("sparsity", sparsity)
    if not 0.0 <= s <= 1.0:  # also rejects NaN
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity!r}")
    return s


def _shapes(masks: tree.Tree) -> dict[str, torch.Size]:
    names, leaves, _ = tree.flatten_with_paths(masks)
    for p, m in zip(names, leaves):
        if m is not None and not (isinstance(m, torch.Tensor) and m.dtype == torch.bool):
            what = f"a {m.dtype} tensor" if isinstance(m, torch.Tensor) else f"{type(m).__name__} {m!r:.60}"
            raise TypeError(f"mask {p!r} is {what}, expected a bool tensor or None")
    out = {p: m.shape for p, m in zip(names, leaves) if m is not None}
    if not out:
        raise ValueError("the mask tree has no prunable leaf")
    return out


def uniform(masks: tree.Tree, sparsity: float) -> dict[str, float]:
    """Every prunable leaf gets the same ``sparsity``."""
    s = _check_target(sparsity)
    return {p: s for p in _shapes(masks)}


def _fill_to_target(weights: dict[str, float], sizes: dict[str, int], sparsity: float) -> dict[str, float]:
    """Densities ``d_l = min(1, eps · w_l)`` with ``eps`` chosen so that ``Σ d_l N_l = (1 - s) Σ N_l``.

    Leaves whose density would exceed 1 are made dense and ``eps`` is solved again over the rest
    (the procedure of Evci et al. 2020, RigL). Returns sparsities ``1 - d_l``.
    """
    total = sum(sizes.values())
    keep = (1.0 - sparsity) * total
    dense: set[str] = set()
    while True:
        free = [p for p in weights if p not in dense]
        budget = keep - sum(sizes[p] for p in dense)
        denom = sum(weights[p] * sizes[p] for p in free)
        if not free or denom <= 0:
            return {p: (0.0 if p in dense else 1.0) for p in weights}
        eps = budget / denom
        over = [p for p in free if eps * weights[p] > 1.0]
        if not over:
            out = {p: 1.0 - min(1.0, max(0.0, eps * weights[p])) for p in free}
            out.update({p: 0.0 for p in dense})
            return {p: out[p] for p in weights}
        dense.update(over)


def erk(masks: tree.Tree, sparsity: float, *, power_scale: float = 1.0) -> dict[str, float]:
    """Erdős–Rényi-Kernel allocation (Evci et al. 2020): density ∝ (Σ dims / Π dims) ** power_scale.

    For a conv weight ``(out, in, kh, kw)`` that is ``(out + in + kh + kw) / (out·in·kh·kw)``; for a
    linear weight the Erdős–Rényi ratio ``(out + in) / (out·in)``. Small layers end up denser.
    """
    s = _check_target(sparsity)
    scale = _real("power_scale", power_scale)
    if not math.isfinite(scale):
        raise ValueError(f"power_scale must be finite, got {power_scale!r}")
    shapes = _shapes(masks)
    weights = {p: (sum(sh) / max(1, torch.Size(sh).numel())) ** scale for p, sh in shapes.items()}
    sizes = {p: torch.Size(sh).numel() for p, sh in shapes.items()}
    return _fill_to_target(weights, sizes, s)


def layer_multipliers(
    masks: tree.Tree,
    sparsity: float,
    multipliers: Sequence[float] = SEEDS_MULTIPLIERS,
    *,
    order: Sequence[str] | None = None,
) -> dict[str, float]:
    """Layer-specific rates (docs/methods.md): split the prunable leaves, in network ``order``, into
    ``len(multipliers)`` consecutive parts and scale each part's sparsity by its multiplier.

    The scaled sparsities are then rescaled (and clipped to [0, 1], redistributing the excess) so
    the pruned count over all leaves equals the global target. ``order`` defaults to tree order;
    pass it when sorted keys do not follow depth (e.g. ``["conv1.weight", "layer1...", "fc.weight"]``).
    """
    s = _check_target(sparsity)
    shapes = _shapes(masks)
    names = list(order) if order is not None else list(shapes)
    if order is not None and (isinstance(order, (str, bytes)) or not all(isinstance(p, str) for p in names)):
        raise TypeError(f"order must be a sequence of leaf paths, got {order!r:.80}")
    if sorted(names) != sorted(shapes):
        raise ValueError(f"order must list exactly the prunable paths {sorted(shapes)}, got {names}")
    if isinstance(multipliers, (str, bytes)) or not isinstance(multipliers, Sequence):
        raise TypeError(f"multipliers must be a sequence of real numbers, got {multipliers!r:.60}")
    values = [_real(f"multipliers[{i}]", m) for i, m in enumerate(multipliers)]
    if not values or any(not (0.0 <= m < math.inf) for m in values):
        raise ValueError(f"multipliers must be finite, non-negative and non-empty, got {tuple(multipliers)}")
    parts = len(values)
    mult = {p: values[min(parts - 1, i * parts // len(names))] for i, p in enumerate(names)}
    sizes = {p: torch.Size(shapes[p]).numel() for p in names}
    total = sum(sizes.values())
    prune_budget = s * total
    fixed: dict[str, float] = {}
    while True:
        free = [p for p in names if p not in fixed]
        budget = prune_budget - sum(fixed[p] * sizes[p] for p in fixed)
        denom = sum(mult[p] * sizes[p] for p in free)
        if not free or denom <= 0:
            out = {p: fixed.get(p, 0.0) for p in names}
            return {p: out[p] for p in shapes}
        c = budget / denom
        over = [p for p in free if c * mult[p] > 1.0]
        if not over:
            out = {**fixed, **{p: max(0.0, c * mult[p]) for p in free}}
            return {p: out[p] for p in shapes}
        fixed.update({p: 1.0 for p in over})
