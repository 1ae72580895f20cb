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
    "as_bytes",
    "bytes_views",
    "count",
    "default_prunable",
    "difference",
    "exclude",
    "from_nonzero",
    "intersect",
    "is_nested",
    "keep",
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

    ``exclude("conv1.*", "fc.*")`` keeps the first conv and the classifier dense (the lottery-ticket
    code's ``--conv1`` switch and the usual classifier exception). Raises ``TypeError`` for a pattern
    that is not a ``str`` or a ``base`` that is not callable.
    """
    _check_patterns(patterns, "exclude")
    if not callable(base):
        raise TypeError(f"exclude: base must be a predicate (path, leaf) -> bool, got {base!r}")

    def predicate(path: str, leaf: torch.Tensor) -> bool:
        return base(path, leaf) and not any(fnmatch.fnmatchcase(path, p) for p in patterns)

    return predicate


def _check_patterns(patterns: object, name: str) -> tuple[str, ...]:
    """``patterns`` as a tuple of glob strings; a lone ``str`` (whose characters would be taken as
    one pattern each) or a non-``str`` pattern raises ``TypeError`` naming it."""
    if isinstance(patterns, (str, bytes)):
        raise TypeError(f"{name}: patterns must be an iterable of globs, got the single string {patterns!r}")
    out = tuple(patterns)
    for i, p in enumerate(out):
        if not isinstance(p, str):
            raise TypeError(f"{name}: pattern [{i}] must be a str glob, got {p!r}")
    return out


def _describe(m: object) -> str:
    return f"a {m.dtype} tensor" if isinstance(m, torch.Tensor) else f"{type(m).__name__} {m!r}"[:80]


def _check_masks(masks: tree.Tree, name: str = "mask", bytes_ok: bool = False) -> tuple[list, list]:
    """``(paths, leaves)`` of ``masks`` after checking that every leaf is a bool tensor (or its
    uint8 bytes when ``bytes_ok``) or ``None``; raises ``TypeError`` naming the first bad leaf."""
    names, leaves, _ = tree.flatten_with_paths(masks)
    dtypes = (torch.bool, torch.uint8) if bytes_ok else (torch.bool,)
    for path, m in zip(names, leaves):
        if m is None or (isinstance(m, torch.Tensor) and m.dtype in dtypes):
            continue
        want = "a bool tensor (or its uint8 bytes) or None" if bytes_ok else "a bool tensor or None"
        raise TypeError(f"{name} {path!r} is {_describe(m)}, expected {want}")
    return names, leaves


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
    predicate selects, a predicate that is not callable or returns a non-bool, or
    ``exclude_paths`` given as a single string.
    """
    if not callable(prunable):
        raise TypeError(f"ones_like: prunable must be a predicate (path, leaf) -> bool, got {prunable!r}")
    patterns = _check_patterns(exclude_paths, "ones_like: exclude_paths")

    def selected(path: str, leaf: torch.Tensor) -> bool:
        pick = prunable(path, leaf)
        if not isinstance(pick, bool):
            raise TypeError(f"ones_like: prunable({path!r}, leaf) returned {pick!r}, expected a bool")
        return pick

    def make(path: str, leaf: torch.Tensor | None) -> torch.Tensor | None:
        if leaf is None or not selected(path, leaf):
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


def _fits(params: tree.Tree, masks: tree.Tree, dtypes: tuple[torch.dtype, ...]) -> bool:
    """Whether :func:`validate` would pass, without building leaf paths (the per-step fast path)."""
    p_leaves, p_spec = tree.flatten(params)
    m_leaves, m_spec = tree.flatten(masks)
    if p_spec != m_spec:
        return False
    for p, m in zip(p_leaves, m_leaves):
        if m is None:
            continue
        if not (isinstance(m, torch.Tensor) and isinstance(p, torch.Tensor) and m.dtype in dtypes):
            return False
        if m.shape != p.shape or not (p.is_floating_point() or p.is_complex()):
            return False
    return True


def validate(params: tree.Tree, masks: tree.Tree, *, bytes_ok: bool = False) -> None:
    """Check that ``masks`` fits ``params``: same structure, bool tensors of the leaf's shape or None.

    ``bytes_ok=True`` also accepts ``torch.uint8`` leaves, the :func:`as_bytes` form that the
    masked train step and optimizer updates read as ``m != 0`` (their values are not checked).
    Raises ``ValueError``/``TypeError`` naming the first offending path. Returns ``None``.
    """
    dtypes = (torch.bool, torch.uint8) if bytes_ok else (torch.bool,)
    if _fits(params, masks, dtypes):
        return
    tree.assert_same_structure(params, masks, ("params", "masks"))
    names, p_leaves, _ = tree.flatten_with_paths(params)
    for path, p, m in zip(names, p_leaves, tree.leaves(masks)):
        if m is None:
            continue
        if not isinstance(m, torch.Tensor):
            raise TypeError(f"mask {path!r} is {type(m).__name__}, expected a bool tensor or None")
        if m.dtype not in dtypes:
            want = "torch.bool (or its torch.uint8 bytes)" if bytes_ok else "torch.bool"
            raise TypeError(f"mask {path!r} has dtype {m.dtype}, expected {want}")
        if p is None:
            raise ValueError(f"mask {path!r} is a tensor but the param is None")
        _check_float_leaf(path, p)
        if m.shape != p.shape:
            raise ValueError(f"mask {path!r} has shape {tuple(m.shape)}, param has {tuple(p.shape)}")


def keep(x: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
    """``x`` where ``m`` keeps, exactly ``+0.0`` where it prunes; ``x`` itself when ``m`` is ``None``.

    ``m`` has ``x``'s shape: a bool mask, or the same mask as ``torch.uint8`` bytes (:func:`as_bytes`,
    read as ``m != 0``). Returns a tensor of ``x``'s shape and dtype. Implemented as
    ``where(M, x, 0)``, so a pruned entry is ``+0.0`` even where ``x`` held ``-1``, ``inf`` or
    ``NaN``, and the gradient with respect to ``x`` is ``M ⊙ g``. Outside ``torch.compile`` a mask
    that is not bool/uint8 or whose shape differs from ``x``'s (no broadcasting) raises
    ``TypeError``/``ValueError``.
    """
    if m is None:
        return x
    if not torch.compiler.is_compiling():
        _check_keep(x, m)
    if m.dtype == torch.uint8:  # `!= 0` on int32, not uint8: inductor vectorises that compare
        m = m.to(torch.int32) != 0
    return torch.where(m, x, torch.zeros((), dtype=x.dtype))


def _check_keep(x: object, m: object) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"keep: x must be a tensor, got {_describe(x)}")
    if not isinstance(m, torch.Tensor) or m.dtype not in (torch.bool, torch.uint8):
        raise TypeError(f"keep: the mask must be a bool tensor (or its uint8 bytes), got {_describe(m)}")
    if m.shape != x.shape:
        raise ValueError(f"keep: mask of shape {tuple(m.shape)} does not match x of shape {tuple(x.shape)}")


def as_bytes(masks: tree.Tree) -> tree.Tree:
    """The masks as ``torch.uint8`` views of the same memory (no copy): ``1`` kept, ``0`` pruned.

    Every function that reads masks inside compiled code (:func:`keep`, :func:`apply`, the
    ``pure_prune.optim`` updates, ``train.make_step``'s body) gives the same result for a mask and
    its bytes. Passing bytes *into* a ``torch.compile``'d function is faster on CPU: inductor (torch
    2.13) loads a bool tensor into a vector mask one element at a time, with a data-dependent branch
    per entry, and uint8 with one vector load. A compiled ``where(M, a * 0.9 + b, 0)`` over a
    random 300x784 mask takes ~440 µs with the bool mask and ~60 µs with its bytes (one thread;
    ~55 µs without the mask). Converting inside the compiled function does not help (the view is
    folded back into a bool load), so convert outside, as ``train.make_step`` does. ``validate``
    accepts bytes only with ``bytes_ok=True``. ``None`` leaves stay ``None``; any other leaf than a
    bool tensor raises ``TypeError`` (a float mask's bytes would be four per entry).
    """
    _check_masks(masks)
    return tree.map(lambda m: None if m is None else m.view(torch.uint8), masks)


def bytes_views() -> Callable[[tree.Tree], tree.Tree]:
    """A memo of :func:`as_bytes`: ``views(masks)`` returns the uint8 views of ``masks`` and hands
    the same views out again while the same mask tensors come in (the tree and every leaf, by
    identity). Views share their masks' memory, so in-place edits of the masks show through; new
    mask tensors get new views. For steps called many times with one stage's masks: the
    conversion (~16 µs for the digits MLP) is made once per stage, not once per call."""
    memo: list[object] = []  # [masks tree, its leaves, their views]

    def views(masks: tree.Tree) -> tree.Tree:
        leaves = tree.leaves(masks)
        if memo and memo[0] is masks and len(memo[1]) == len(leaves):
            if all(a is b for a, b in zip(memo[1], leaves)):
                return memo[2]
        memo[:] = [masks, leaves, as_bytes(masks)]
        return memo[2]

    return views


def apply(params: tree.Tree, masks: tree.Tree) -> tree.Tree:
    """``W ⊙ M`` leaf by leaf (:func:`keep`); leaves whose mask is ``None`` are returned unchanged.

    Implemented as ``where(M, W, 0)``: a pruned entry is exactly ``+0.0`` even when ``W`` held a
    negative value, ``inf`` or ``NaN`` there; the gradient with respect to ``W`` is ``M ⊙ g``.
    ``masks`` may also be :func:`as_bytes` views (same result). Outside ``torch.compile`` the trees
    are checked first (:func:`validate` with ``bytes_ok=True``: same structure, bool or uint8 masks
    of exactly the param's shape, no broadcasting), raising ``TypeError``/``ValueError`` naming the
    leaf path.
    """
    if not torch.compiler.is_compiling():
        validate(params, masks, bytes_ok=True)
    return tree.map(keep, params, masks)


def from_nonzero(params: tree.Tree, like: tree.Tree) -> tree.Tree:
    """Masks that keep the non-zero entries of ``params``, on the leaves where ``like`` has a mask.

    ``like`` is a mask tree of ``params``' structure (:func:`validate`); returns bool masks.
    """
    validate(params, like)
    return tree.map(lambda p, m: None if m is None else p != 0, params, like)


def count(masks: tree.Tree, params: tree.Tree | None = None) -> tuple[int, int]:
    """``(kept, total)`` entries.

    Without ``params``: over prunable leaves only. With ``params``: over every parameter, dense
    leaves counting as kept (the masks must fit them, :func:`validate`). Every mask leaf must be a
    bool tensor or ``None`` (``TypeError`` naming the leaf otherwise: an integer mask holding 2
    would count an entry twice).
    """
    _, m_leaves = _check_masks(masks)
    if params is not None:
        validate(params, masks)
    kept = sum(int(m.sum()) for m in m_leaves if m is not None)
    total = sum(m.numel() for m in m_leaves if m is not None)
    if params is not None:
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
    """``{path: fraction pruned}`` for every prunable leaf (empty leaves report 0.0); mask leaves
    must be bool tensors or ``None``."""
    names, m_leaves = _check_masks(masks)
    return {
        p: (1.0 - float(m.sum()) / m.numel()) if m.numel() else 0.0
        for p, m in zip(names, m_leaves)
        if m is not None
    }


def prunable_paths(masks: tree.Tree) -> list[str]:
    """Paths of the leaves that carry a mask (bool tensors; any other non-``None`` leaf raises)."""
    names, m_leaves = _check_masks(masks)
    return [p for p, m in zip(names, m_leaves) if m is not None]


def _binary(op: Callable, a: tree.Tree, b: tree.Tree, name: str) -> tree.Tree:
    _check_masks(a, f"{name}: mask a")
    _check_masks(b, f"{name}: mask b")
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
    """True when every entry kept by ``new`` is also kept by ``old`` (``new ⊆ old``).

    Both are bool mask trees of one structure with equal shapes leaf by leaf (``None`` = all kept);
    raises ``TypeError``/``ValueError`` naming the leaf otherwise.
    """
    _check_masks(new, "is_nested: mask new")
    _check_masks(old, "is_nested: mask old")
    tree.assert_same_structure(new, old, ("new", "old"))
    for path, n, o in zip(tree.paths(new), tree.leaves(new), tree.leaves(old)):
        if n is not None and o is not None and n.shape != o.shape:
            raise ValueError(
                f"is_nested: masks at {path!r} have shapes {tuple(n.shape)} (new) and {tuple(o.shape)} (old)"
            )
    for n, o in zip(tree.leaves(new), tree.leaves(old)):
        if o is None:
            continue
        kept = torch.ones_like(o) if n is None else n  # a None leaf is all-kept
        if bool((kept & ~o).any()):
            return False
    return True
