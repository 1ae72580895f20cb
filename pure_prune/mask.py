"""Mask algebra and accounting.

A mask tree has the structure of its params tree: a ``torch.bool`` tensor of the leaf's shape where
the leaf is prunable (``True`` = kept), ``None`` where the leaf stays dense. ``W' = W ⊙ M``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable

import torch

from pure_prune import tree

__all__ = [
    "Prunable",
    "apply",
    "count",
    "default_prunable",
    "difference",
    "exclude",
    "from_nonzero",
    "intersect",
    "is_nested",
    "layer_sparsity",
    "ones_like",
    "prunable_paths",
    "sparsity",
    "union",
    "validate",
]

Prunable = Callable[[str, torch.Tensor], bool]


def default_prunable(path: str, leaf: torch.Tensor) -> bool:
    """Weights with ``ndim >= 2`` (linear, conv, embedding, recurrent matrices); not biases or norms."""
    return isinstance(leaf, torch.Tensor) and leaf.ndim >= 2


def exclude(*patterns: str, base: Prunable = default_prunable) -> Prunable:
    """A predicate like ``base`` that also rejects leaves whose path matches any glob in ``patterns``.

    ``exclude("conv1.*", "fc.*")`` keeps the first conv and the classifier dense (the seeds'
    ``--conv1`` switch and the usual classifier exception).
    """

    def predicate(path: str, leaf: torch.Tensor) -> bool:
        return base(path, leaf) and not any(fnmatch.fnmatchcase(path, p) for p in patterns)

    return predicate


def _check_float_leaf(path: str, leaf: object) -> None:
    if not isinstance(leaf, torch.Tensor):
        raise TypeError(f"param {path!r} is {type(leaf).__name__}, expected a tensor")
    if not (leaf.is_floating_point() or leaf.is_complex()):
        raise TypeError(f"param {path!r} has dtype {leaf.dtype}; only floating-point params can be pruned")


def ones_like(
    params: tree.Tree,
    prunable: Prunable = default_prunable,
    *,
    exclude_paths: Iterable[str] = (),
) -> tree.Tree:
    """All-kept masks: ``True`` tensors for prunable leaves, ``None`` elsewhere.

    ``prunable(path, leaf) -> bool`` picks the leaves; ``exclude_paths`` globs remove more.
    Raises ``ValueError`` when nothing is prunable, ``TypeError`` for an integer leaf that the
    predicate selects.
    """
    patterns = tuple(exclude_paths)

    def make(path: str, leaf: torch.Tensor | None) -> torch.Tensor | None:
        if leaf is None or not prunable(path, leaf):
            return None
        if any(fnmatch.fnmatchcase(path, p) for p in patterns):
            return None
        _check_float_leaf(path, leaf)
        return torch.ones_like(leaf, dtype=torch.bool)

    masks = tree.map_with_path(make, params)
    if all(m is None for m in tree.leaves(masks)):
        raise ValueError(
            "no prunable leaf: the predicate selected none of " + ", ".join(tree.paths(params)[:8])
        )
    return masks


def validate(params: tree.Tree, masks: tree.Tree) -> None:
    """Check that ``masks`` fits ``params``: same structure, bool tensors of the leaf's shape or None.

    Raises ``ValueError``/``TypeError`` naming the first offending path. Returns ``None``.
    """
    tree.assert_same_structure(params, masks, ("params", "masks"))
    names, p_leaves, _ = tree.flatten_with_paths(params)
    for path, p, m in zip(names, p_leaves, tree.leaves(masks)):
        if m is None:
            continue
        if not isinstance(m, torch.Tensor):
            raise TypeError(f"mask {path!r} is {type(m).__name__}, expected a bool tensor or None")
        if m.dtype != torch.bool:
            raise TypeError(f"mask {path!r} has dtype {m.dtype}, expected torch.bool")
        if p is None:
            raise ValueError(f"mask {path!r} is a tensor but the param is None")
        _check_float_leaf(path, p)
        if m.shape != p.shape:
            raise ValueError(f"mask {path!r} has shape {tuple(m.shape)}, param has {tuple(p.shape)}")


def apply(params: tree.Tree, masks: tree.Tree) -> tree.Tree:
    """``W ⊙ M`` leaf by leaf; leaves whose mask is ``None`` are returned unchanged.

    Implemented as ``where(M, W, 0)``: a pruned entry is exactly ``+0.0`` even when ``W`` held a
    negative value, ``inf`` or ``NaN`` there; the gradient with respect to ``W`` is ``M ⊙ g``.
    """
    return tree.map(
        lambda p, m: p if m is None else torch.where(m, p, torch.zeros((), dtype=p.dtype)), params, masks
    )


def from_nonzero(params: tree.Tree, like: tree.Tree) -> tree.Tree:
    """Masks that keep the non-zero entries of ``params``, on the leaves where ``like`` has a mask."""
    return tree.map(lambda p, m: None if m is None else p != 0, params, like)


def count(masks: tree.Tree, params: tree.Tree | None = None) -> tuple[int, int]:
    """``(kept, total)`` entries.

    Without ``params``: over prunable leaves only. With ``params``: over every parameter, dense
    leaves counting as kept.
    """
    m_leaves = tree.leaves(masks)
    kept = sum(int(m.sum()) for m in m_leaves if m is not None)
    total = sum(m.numel() for m in m_leaves if m is not None)
    if params is not None:
        tree.assert_same_structure(params, masks, ("params", "masks"))
        dense = sum(p.numel() for p, m in zip(tree.leaves(params), m_leaves) if m is None and p is not None)
        kept, total = kept + dense, total + dense
    return kept, total


def sparsity(masks: tree.Tree, params: tree.Tree | None = None) -> float:
    """Fraction of entries pruned: over prunable leaves, or over all params when ``params`` is given."""
    kept, total = count(masks, params)
    if total == 0:
        raise ValueError("sparsity of an empty mask tree is undefined (no prunable entries)")
    return 1.0 - kept / total


def layer_sparsity(masks: tree.Tree) -> dict[str, float]:
    """``{path: fraction pruned}`` for every prunable leaf (empty leaves report 0.0)."""
    names, m_leaves, _ = tree.flatten_with_paths(masks)
    return {
        p: (1.0 - float(m.sum()) / m.numel()) if m.numel() else 0.0
        for p, m in zip(names, m_leaves)
        if m is not None
    }


def prunable_paths(masks: tree.Tree) -> list[str]:
    """Paths of the leaves that carry a mask."""
    names, m_leaves, _ = tree.flatten_with_paths(masks)
    return [p for p, m in zip(names, m_leaves) if m is not None]


def _binary(op: Callable, a: tree.Tree, b: tree.Tree, name: str) -> tree.Tree:
    tree.assert_same_structure(a, b, ("a", "b"))

    def f(path: str, x: torch.Tensor | None, y: torch.Tensor | None):
        if x is None and y is None:
            return None
        x = torch.ones_like(y) if x is None else x  # a None leaf is all-kept
        y = torch.ones_like(x) if y is None else y
        if x.shape != y.shape:
            raise ValueError(f"{name}: masks at {path!r} have shapes {tuple(x.shape)} and {tuple(y.shape)}")
        return op(x, y)

    return tree.map_with_path(f, a, b)


def intersect(a: tree.Tree, b: tree.Tree) -> tree.Tree:
    """Kept where both keep (a ``None`` leaf is all-kept, so the result equals the other mask)."""
    return _binary(torch.logical_and, a, b, "intersect")


def union(a: tree.Tree, b: tree.Tree) -> tree.Tree:
    """Kept where either keeps (a ``None`` leaf is all-kept, so the result there is all ``True``)."""
    return _binary(torch.logical_or, a, b, "union")


def difference(a: tree.Tree, b: tree.Tree) -> tree.Tree:
    """Kept in ``a`` but pruned in ``b`` (e.g. the entries a new round removed: ``difference(old, new)``).

    A ``None`` leaf is all-kept: ``difference(None, b)`` is ``~b``, ``difference(a, None)`` all ``False``.
    """
    return _binary(lambda x, y: x & ~y, a, b, "difference")


def is_nested(new: tree.Tree, old: tree.Tree) -> bool:
    """True when every entry kept by ``new`` is also kept by ``old`` (``new ⊆ old``)."""
    tree.assert_same_structure(new, old, ("new", "old"))
    for n, o in zip(tree.leaves(new), tree.leaves(old)):
        if o is None:
            continue
        kept = torch.ones_like(o) if n is None else n  # a None leaf is all-kept
        if bool((kept & ~o).any()):
            return False
    return True
