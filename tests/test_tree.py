"""pure_prune.tree agrees with torch.func's own pytree flattening and round-trips."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils import _pytree as torch_pytree

from pure_prune import tree
from pure_prune.testing import strategies


def trees():
    """Parameter trees from pure_prune.testing, plus list nodes (trees may hold sequences too)."""
    return st.one_of(
        strategies.params_trees(max_leaves=8),
        st.lists(strategies.params_trees(max_leaves=3), min_size=1, max_size=3),
    )


def _same_leaves(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x is None and y is None) or x is y


@given(trees())
def test_canonical_trees_flatten_like_torch(t):
    t = tree.canonical(t)
    ours, spec = tree.flatten(t)
    theirs, tspec = torch_pytree.tree_flatten(t)
    _same_leaves(ours, theirs)
    rebuilt_by_torch = torch_pytree.tree_unflatten(ours, tspec)
    assert tree.structure(rebuilt_by_torch) == spec


@given(trees())
def test_flatten_unflatten_roundtrip(t):
    leaves, spec = tree.flatten(t)
    again = tree.unflatten(spec, leaves)
    assert tree.structure(again) == spec
    _same_leaves(tree.leaves(again), leaves)


def test_paths_are_dotted_and_in_leaf_order():
    t = tree.canonical(
        {"layer1": {"0": {"conv1": {"weight": torch.ones(1), "bias": None}}}, "fc": [torch.ones(2)]}
    )
    assert tree.paths(t) == ["fc.0", "layer1.0.conv1.bias", "layer1.0.conv1.weight"]
    assert tree.leaves(t)[1] is None


def test_map_with_path_and_none_leaves():
    t = {"a": torch.ones(2), "b": None}
    out = tree.map_with_path(lambda p, x: None if x is None else (p, x.sum().item()), t)
    assert out == {"a": ("a", 2.0), "b": None}
    assert tree.map(lambda x, y: None if x is None else x + y, t, t)["a"].tolist() == [2.0, 2.0]


def test_none_trees_under_torch_func():
    params = {"w": torch.randn(3, 2), "b": torch.randn(3)}
    masks = {"w": torch.rand(3, 2) > 0.5, "b": None}

    def loss(p, m):
        masked = tree.map(lambda x, k: x if k is None else x * k, p, m)
        return (masked["w"].sum(1) + masked["b"]).pow(2).sum()

    g = torch.func.grad(loss)(params, masks)
    assert torch.equal(g["w"] == 0, ~masks["w"])
    stacked = tree.stack([params, params])
    stacked_masks = tree.stack([masks, masks])
    in_dims = tree.map(lambda x: None if x is None else 0, stacked_masks)
    out = torch.func.vmap(loss, in_dims=(0, in_dims))(stacked, stacked_masks)
    assert torch.allclose(out, torch.stack([loss(params, masks)] * 2))
    compiled = torch.compile(
        lambda p, m: tree.map(lambda x, k: x if k is None else x * k, p, m), fullgraph=True
    )
    res = compiled(params, masks)
    assert torch.equal(res["w"], params["w"] * masks["w"]) and torch.equal(res["b"], params["b"])


def test_stack_unstack_roundtrip():
    ts = [{"a": torch.full((2,), float(i)), "n": None} for i in range(3)]
    s = tree.stack(ts)
    assert s["a"].shape == (3, 2) and s["n"] is None
    back = tree.unstack(s)
    assert len(back) == 3 and all(torch.equal(b["a"], t["a"]) for b, t in zip(back, ts))
    assert back[2]["n"] is None


def test_stack_errors_name_the_path():
    with pytest.raises(ValueError, match="different tree structures"):
        tree.stack([{"a": torch.ones(1)}, {"b": torch.ones(1)}])
    with pytest.raises(ValueError, match="'a'"):
        tree.stack([{"a": torch.ones(1)}, {"a": None}])
    with pytest.raises(ValueError, match="leading size"):
        tree.unstack({"a": torch.ones(2), "b": torch.ones(3)})
    with pytest.raises(ValueError, match="at least one"):
        tree.stack([])


def test_assert_same_structure_names_leaves():
    with pytest.raises(ValueError, match=r"only in masks: \['c'\]"):
        tree.assert_same_structure({"a": None}, {"a": None, "c": None}, ("params", "masks"))


class Pair:
    def __init__(self, left, right):
        self.left, self.right = left, right


tree.register_node(Pair, lambda p: ([p.left, p.right], None), lambda ctx, ch: Pair(*ch))


def test_registered_node_is_seen_by_optree_and_torch_func():
    p = Pair(torch.ones(2), torch.full((2,), 3.0))
    assert len(tree.leaves(p)) == 2
    doubled = tree.map(lambda x: x * 2, p)
    assert isinstance(doubled, Pair) and doubled.right.tolist() == [6.0, 6.0]
    g = torch.func.grad(lambda q: (q.left * q.right).sum())(p)
    assert isinstance(g, Pair) and g.left.tolist() == [3.0, 3.0]


def test_canonical_sorts_keys_recursively():
    t = tree.canonical({"b": {"y": 1, "x": 2}, "a": (3, [4])})
    assert list(t) == ["a", "b"] and list(t["b"]) == ["x", "y"] and t["a"] == (3, [4])


def test_all_none_subtrees_flatten_under_compile():
    t = tree.canonical({"bn": {"scale": None, "shift": None}, "w": torch.ones(2), "v": [torch.ones(1), None]})

    def f(t):
        names, leaves, spec = tree.flatten_with_paths(t)
        doubled = tree.unflatten(spec, [None if x is None else x * 2 for x in leaves])
        shifted = tree.map_with_path(lambda p, x: None if x is None else x + len(p), t)
        return doubled, shifted, names

    eager = f(t)
    compiled = torch.compile(f, fullgraph=True)(t)
    assert compiled[2] == eager[2] == ["bn.scale", "bn.shift", "v.0", "v.1", "w"]
    for a, b in zip(tree.leaves(compiled[:2]), tree.leaves(eager[:2])):
        assert (a is None and b is None) or torch.equal(a, b)


def test_nest_inverts_flatten_with_paths_and_names_conflicting_paths():
    t = {"b": {"y": torch.ones(1), "x": torch.zeros(2)}, "a": torch.ones(3)}
    names, leaves, _ = tree.flatten_with_paths(t)
    nested = tree.nest(dict(zip(names, leaves)))
    assert list(nested) == ["a", "b"] and list(nested["b"]) == ["x", "y"]
    assert all(x is y for x, y in zip(tree.leaves(nested), tree.leaves(tree.canonical(t))))
    with pytest.raises(ValueError, match="'a.b' runs through the leaf 'a'"):
        tree.nest({"a": 1, "a.b": 2})
    with pytest.raises(ValueError, match="'a' is both a leaf and the prefix"):
        tree.nest({"a.b": 2, "a": 1})
    with pytest.raises(ValueError, match="non-empty dotted"):
        tree.nest({"a..b": 1})
