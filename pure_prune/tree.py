"""Pytree helpers: the one place where pure_prune flattens, maps and rebuilds trees.

Conventions (tested in ``tests/test_tree.py``):

* A tree is nested ``dict``/``list``/``tuple`` (or a node registered with
  :func:`register_node`) whose leaves are tensors or ``None``.
* ``None`` is a **leaf** (``none_is_leaf=True``). This is what ``torch.utils._pytree`` and therefore
  ``torch.func`` do, so a mask tree with ``None`` for dense leaves has exactly the structure of
  its parameter tree, under optree and under torch.func alike.
* Dict keys are visited in **insertion order**, as torch's pytree does. optree sorts dict keys, so
  every tree pure_prune builds is *canonical*: its dict keys are inserted in sorted order
  (:func:`canonical`). On canonical trees optree and torch.func give the same leaves, in the same
  order, with the same structure.
* A leaf's path is a dotted string of its keys: ``"layer1.0.conv1.weight"``.

All functions are pure and can be traced by ``torch.compile(fullgraph=True)``: while dynamo traces,
flattening goes through ``torch.utils._pytree`` (which dynamo understands fully, including dicts
whose values are all ``None``); on canonical trees it yields the same leaves in the same order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import optree
import torch
from torch.utils import _pytree as torch_pytree

__all__ = [
    "NAMESPACE",
    "Tree",
    "canonical",
    "nest",
    "flatten",
    "flatten_with_paths",
    "leaves",
    "map",
    "map_with_path",
    "paths",
    "register_node",
    "stack",
    "structure",
    "unflatten",
    "unstack",
    "assert_same_structure",
    "path_str",
]

NAMESPACE = "pure_prune"
Tree = Any
_OPTS = {"none_is_leaf": True, "namespace": NAMESPACE}


def path_str(path: Sequence[Any]) -> str:
    """A key path (tuple of dict keys / sequence indices) as a dotted string."""
    return ".".join(str(k) for k in path)


def nest(flat: Mapping[str, Any]) -> Tree:
    """A canonical nested dict from dotted paths: ``{"a.b": v, "a.c": w}`` -> ``{"a": {"b": v,
    "c": w}}`` (the inverse of :func:`flatten_with_paths` on dict trees; leaves are not copied).

    A path that is also the prefix of another (``"a"`` and ``"a.b"``) raises ``ValueError``
    naming both."""
    root: dict[str, Any] = {}
    for name, value in flat.items():
        if not isinstance(name, str) or not name or "" in name.split("."):
            raise ValueError(f"nest: path {name!r} must be a non-empty dotted string")
        *parents, leaf = name.split(".")
        node = root
        for depth, key in enumerate(parents):
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(
                    f"nest: path {name!r} runs through the leaf {'.'.join(parents[: depth + 1])!r}"
                )
        if leaf in node:
            raise ValueError(f"nest: path {name!r} is both a leaf and the prefix of other paths")
        node[leaf] = value
    return canonical(root)


def canonical(tree: Tree) -> Tree:
    """Rebuild every dict of ``tree`` with its keys inserted in sorted order.

    Returns a new tree with the same leaves (not copied). On a canonical tree optree's flattening
    and ``torch.utils._pytree``'s agree leaf for leaf.
    """
    if isinstance(tree, dict):
        return {k: canonical(tree[k]) for k in sorted(tree)}
    if isinstance(tree, list):
        return [canonical(v) for v in tree]
    if isinstance(tree, tuple) and not hasattr(tree, "_fields"):
        return tuple(canonical(v) for v in tree)
    return tree


def _tracing() -> bool:
    return torch.compiler.is_compiling()


def _key_str(entry: Any) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def flatten(tree: Tree) -> tuple[list[Any], Any]:
    """Leaves (tensors or ``None``) in canonical order, and the structure to rebuild them."""
    if _tracing():
        return torch_pytree.tree_flatten(tree)
    return optree.tree_flatten(tree, **_OPTS)


def flatten_with_paths(tree: Tree) -> tuple[list[str], list[Any], Any]:
    """Dotted leaf paths, leaves and structure of ``tree``."""
    if _tracing():
        pairs, spec = torch_pytree.tree_flatten_with_path(tree)
        return [".".join(_key_str(k) for k in kp) for kp, _ in pairs], [x for _, x in pairs], spec
    keypaths, leaves_, spec = optree.tree_flatten_with_path(tree, **_OPTS)
    return [path_str(p) for p in keypaths], leaves_, spec


def unflatten(spec: Any, leaves_: Iterable[Any]) -> Tree:
    """Inverse of :func:`flatten`."""
    if isinstance(spec, torch_pytree.TreeSpec):
        return torch_pytree.tree_unflatten(list(leaves_), spec)
    return optree.tree_unflatten(spec, list(leaves_))


def leaves(tree: Tree) -> list[Any]:
    """The leaves of ``tree`` (``None`` included) in canonical order."""
    if _tracing():
        return torch_pytree.tree_leaves(tree)
    return optree.tree_leaves(tree, **_OPTS)


def paths(tree: Tree) -> list[str]:
    """Dotted paths of the leaves of ``tree``, in the order of :func:`leaves`."""
    return flatten_with_paths(tree)[0]


def structure(tree: Tree) -> Any:
    """The structure (treespec) of ``tree``."""
    if _tracing():
        return torch_pytree.tree_structure(tree)
    return optree.tree_structure(tree, **_OPTS)


def assert_same_structure(a: Tree, b: Tree, names: tuple[str, str] = ("a", "b")) -> None:
    """Raise ``ValueError`` naming the first differing path when ``a`` and ``b`` differ in structure."""
    sa, sb = structure(a), structure(b)
    if sa == sb:
        return
    pa, pb = set(paths(a)), set(paths(b))
    only_a = sorted(pa - pb)
    only_b = sorted(pb - pa)
    detail = []
    if only_a:
        detail.append(f"leaves only in {names[0]}: {only_a[:5]}")
    if only_b:
        detail.append(f"leaves only in {names[1]}: {only_b[:5]}")
    if not detail:
        detail.append(f"{names[0]} is {sa}, {names[1]} is {sb}")
    raise ValueError(f"{names[0]} and {names[1]} have different tree structures; " + "; ".join(detail))


def map(fn: Callable[..., Any], tree: Tree, *rest: Tree) -> Tree:  # noqa: A001 - mirrors tree_map
    """``fn`` applied leaf-wise over trees of identical structure (``None`` leaves are passed)."""
    if _tracing():
        return torch_pytree.tree_map(fn, tree, *rest)
    return optree.tree_map(fn, tree, *rest, **_OPTS)


def map_with_path(fn: Callable[..., Any], tree: Tree, *rest: Tree) -> Tree:
    """``fn(path, leaf, *other_leaves)`` over trees of identical structure; ``path`` is dotted."""
    if _tracing():
        names, first, spec = flatten_with_paths(tree)
        others = [leaves(t) for t in rest]
        return unflatten(
            spec, [fn(p, x, *(o[i] for o in others)) for i, (p, x) in enumerate(zip(names, first))]
        )
    return optree.tree_map_with_path(lambda p, *xs: fn(path_str(p), *xs), tree, *rest, **_OPTS)


def stack(trees: Sequence[Tree]) -> Tree:
    """Stack trees of identical structure along a new leading axis.

    Each tensor leaf of shape ``S`` becomes ``(len(trees), *S)``; a leaf that is ``None`` in every
    tree stays ``None``. ``trees`` is a list or tuple. Raises ``ValueError`` on mismatched
    structures, a mix of ``None`` and tensors at one path, or leaves of one path that differ in
    shape, and ``TypeError`` on a leaf that is not a tensor or leaves that differ in dtype or
    device (nothing is promoted or broadcast); each error names the path and both values.
    """
    if not isinstance(trees, (list, tuple)):
        raise TypeError(f"stack needs a list or tuple of trees, got {type(trees).__name__}")
    if len(trees) == 0:
        raise ValueError("stack needs at least one tree")
    for i, t in enumerate(trees[1:], start=1):
        assert_same_structure(trees[0], t, ("trees[0]", f"trees[{i}]"))

    def _stack(path: str, *xs: Any) -> Any:
        if all(x is None for x in xs):
            return None
        if any(x is None for x in xs):
            raise ValueError(f"stack: leaf {path!r} is None in some trees and a tensor in others")
        for i, x in enumerate(xs):
            if not isinstance(x, torch.Tensor):
                raise TypeError(
                    f"stack: leaf {path!r} of trees[{i}] is {type(x).__name__} {x!r:.60}, expected a tensor"
                )
        first = xs[0]
        for i, x in enumerate(xs[1:], start=1):
            if x.shape != first.shape:
                raise ValueError(
                    f"stack: leaf {path!r} has shape {tuple(first.shape)} in trees[0] but {tuple(x.shape)} in trees[{i}]"
                )
            if x.dtype != first.dtype or x.device != first.device:
                raise TypeError(
                    f"stack: leaf {path!r} is {first.dtype} on {first.device} in trees[0] but "
                    f"{x.dtype} on {x.device} in trees[{i}]"
                )
        return torch.stack(xs)

    return map_with_path(_stack, *trees)


def unstack(tree: Tree, n: int | None = None) -> list[Tree]:
    """Split every tensor leaf along its leading axis: the inverse of :func:`stack`.

    ``n`` is the leading size; when omitted it is read from the first tensor leaf. Returns a list of
    ``n`` trees; ``None`` leaves are repeated. Raises ``TypeError`` for a leaf that is neither a
    tensor nor ``None`` or an ``n`` that is not an int, ``ValueError`` for a leaf whose leading
    size is not ``n``.
    """
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise TypeError(f"unstack: n must be a non-negative int or None, got {n!r}")
    flat, spec = flatten(tree)
    for p, x in zip(paths(tree), flat):
        if x is not None and not isinstance(x, torch.Tensor):
            raise TypeError(f"unstack: leaf {p!r} is {type(x).__name__} {x!r:.60}, expected a tensor or None")
    tensors = [x for x in flat if x is not None]
    if n is None:
        if not tensors:
            raise ValueError("unstack: tree has no tensor leaves; pass n")
        n = tensors[0].shape[0]
    paths_ = paths(tree)
    for p, x in zip(paths_, flat):
        if x is not None and (x.ndim == 0 or x.shape[0] != n):
            raise ValueError(f"unstack: leaf {p!r} has shape {tuple(x.shape)}, expected leading size {n}")
    return [unflatten(spec, [None if x is None else x[i] for x in flat]) for i in range(n)]


def register_node(
    cls: type,
    flatten_fn: Callable[[Any], tuple[list[Any], Any]],
    unflatten_fn: Callable[[Any, list[Any]], Any],
    *,
    serialized_type_name: str | None = None,
) -> None:
    """Register a container type with optree (in pure_prune's namespace) *and* torch's pytree.

    ``flatten_fn(node) -> (children, context)`` and ``unflatten_fn(context, children) -> node``.
    After registration ``torch.func`` transforms and every helper here see through ``cls``.
    """
    optree.register_pytree_node(
        cls,
        lambda node: (*flatten_fn(node), None),
        lambda ctx, children: unflatten_fn(ctx, list(children)),
        namespace=NAMESPACE,
    )
    torch_pytree.register_pytree_node(
        cls,
        flatten_fn,
        lambda children, ctx: unflatten_fn(ctx, list(children)),
        serialized_type_name=serialized_type_name or f"{cls.__module__}.{cls.__qualname__}",
    )
