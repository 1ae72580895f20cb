"""Properties and hand examples of pure_prune.mask: creation, application, accounting, algebra, checks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pure_prune import mask, tree
from pure_prune.testing import masks_fit_params, masks_nested, pruned_are_zero
from pure_prune.testing import strategies as pst


def _pairs(a, b):
    return list(zip(tree.paths(a), tree.leaves(a), tree.leaves(b)))


def _two_masks(data):
    params = data.draw(pst.params_trees(min_prunable=1), label="params")
    a = data.draw(pst.masks(params), label="a")
    b = data.draw(pst.masks(params), label="b")
    return params, a, b


# --------------------------------------------------------------------------------- creation
@given(pst.params_trees(min_prunable=1))
def test_ones_like_fits_params_and_marks_ndim2_leaves(params):
    masks = mask.ones_like(params)
    masks_fit_params(params, masks)
    for _, p, m in _pairs(params, masks):
        assert (m is not None) == (p is not None and p.ndim >= 2)
        assert m is None or bool(m.all())


def test_ones_like_predicate_exclude_and_errors():
    params = tree.canonical(
        {
            "conv1": {"weight": torch.ones(2, 1, 3, 3)},
            "fc": {"bias": torch.ones(2), "weight": torch.ones(2, 8)},
            "layer1": {"0": {"weight": torch.ones(2, 2)}},
        }
    )
    assert mask.prunable_paths(mask.ones_like(params)) == ["conv1.weight", "fc.weight", "layer1.0.weight"]
    assert mask.prunable_paths(mask.ones_like(params, exclude_paths=["conv1.*"])) == [
        "fc.weight",
        "layer1.0.weight",
    ]
    skip = mask.exclude("conv1.*", "fc.*")
    assert mask.prunable_paths(mask.ones_like(params, skip)) == ["layer1.0.weight"]
    assert skip("fc.weight", params["fc"]["weight"]) is False
    assert skip("layer1.0.weight", params["layer1"]["0"]["weight"]) is True
    biases = mask.ones_like(params, lambda path, leaf: path.endswith("bias"))
    assert mask.prunable_paths(biases) == ["fc.bias"]
    assert mask.default_prunable("x", torch.ones(3)) is False and mask.default_prunable("x", torch.ones(1, 1))
    with pytest.raises(ValueError, match="no prunable leaf.*conv1.weight, fc.bias"):
        mask.ones_like(params, lambda path, leaf: False)
    with pytest.raises(TypeError, match="param 'emb.ids' has dtype torch.int64"):
        mask.ones_like({"emb": {"ids": torch.ones(2, 2, dtype=torch.long)}})


# ------------------------------------------------------------------------------ application
@given(st.data())
def test_apply_zeroes_pruned_and_keeps_the_rest(data):
    params = data.draw(pst.params_trees(min_prunable=1), label="params")
    masks = data.draw(pst.masks(params), label="masks")
    out = mask.apply(params, masks)
    pruned_are_zero(out, masks)
    for (path, p, m), o in zip(_pairs(params, masks), tree.leaves(out)):
        if m is None:
            assert o is p
        else:
            assert o.dtype == p.dtype and o.shape == p.shape
            assert torch.equal(o[m], p[m]), path


def test_apply_hand_example_with_non_finite_pruned_entries():
    w = torch.tensor([[1.0, float("nan")], [float("inf"), -2.0]])
    m = torch.tensor([[True, False], [False, True]])
    out = mask.apply({"b": None, "w": w}, {"b": None, "w": m})
    assert out["b"] is None
    assert out["w"].tolist() == [[1.0, 0.0], [0.0, -2.0]]


@given(st.data())
def test_from_nonzero_recovers_masks_of_applied_params(data):
    """Kept entries that happen to be zero (a second mask zeroes them) read as pruned."""
    params = data.draw(pst.params_trees(min_prunable=1), label="params")
    zeros = data.draw(pst.masks(params), label="zeros")
    params = mask.apply(params, zeros)
    masks = data.draw(pst.masks(params), label="masks")
    got = mask.from_nonzero(mask.apply(params, masks), masks)
    for (_, p, m), g, z in zip(_pairs(params, masks), tree.leaves(got), tree.leaves(zeros)):
        assert (g is None) == (m is None)
        if m is not None:
            assert torch.equal(g, m & (p != 0)) and torch.equal(g, m & z)


# ------------------------------------------------------------------------------- accounting
@given(st.data())
def test_count_sparsity_and_layer_sparsity(data):
    params = data.draw(pst.params_trees(min_prunable=1), label="params")
    masks = data.draw(pst.masks(params), label="masks")
    triples = _pairs(params, masks)
    kept = sum(int(m.sum()) for _, _, m in triples if m is not None)
    total = sum(m.numel() for _, _, m in triples if m is not None)
    dense = sum(p.numel() for _, p, m in triples if m is None and p is not None)
    assert mask.count(masks) == (kept, total)
    assert mask.count(masks, params) == (kept + dense, total + dense)
    if total:
        assert mask.sparsity(masks) == pytest.approx(1 - kept / total)
    if total + dense:
        assert mask.sparsity(masks, params) == pytest.approx(1 - (kept + dense) / (total + dense))
    per = mask.layer_sparsity(masks)
    assert list(per) == mask.prunable_paths(masks) == [p for p, _, m in triples if m is not None]
    for path, _, m in triples:
        if m is not None:
            assert per[path] == pytest.approx(1 - int(m.sum()) / m.numel() if m.numel() else 0.0)


def test_accounting_hand_example():
    params = {"b": torch.ones(3), "e": torch.ones(0, 2), "w": torch.ones(2, 2)}
    masks = {
        "b": None,
        "e": torch.ones(0, 2, dtype=torch.bool),
        "w": torch.tensor([[True, False], [False, False]]),
    }
    assert mask.count(masks) == (1, 4)
    assert mask.count(masks, params) == (4, 7)
    assert mask.sparsity(masks) == 0.75
    assert mask.sparsity(masks, params) == pytest.approx(3 / 7)
    assert mask.layer_sparsity(masks) == {"e": 0.0, "w": 0.75}
    assert mask.prunable_paths(masks) == ["e", "w"]
    with pytest.raises(ValueError, match="empty mask tree"):
        mask.sparsity({"b": None, "e": torch.ones(0, 2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="different tree structures"):
        mask.count(masks, {"w": torch.ones(2, 2)})


# ---------------------------------------------------------------------------------- algebra
@given(st.data())
def test_set_algebra_is_elementwise_logic(data):
    _, a, b = _two_masks(data)
    both, either, only_a = mask.intersect(a, b), mask.union(a, b), mask.difference(a, b)
    for x, y, i, u, d in zip(*(tree.leaves(t) for t in (a, b, both, either, only_a))):
        if x is None:
            assert i is None and u is None and d is None
            continue
        assert torch.equal(i, x & y) and torch.equal(u, x | y) and torch.equal(d, x & ~y)
    assert mask.is_nested(both, a) and mask.is_nested(both, b) and mask.is_nested(a, either)
    masks_nested(both, a)
    assert mask.is_nested(a, b) == all(not bool((x & ~y).any()) for x, y in zip(*map(_flat, (a, b))))
    assert mask.is_nested(a, a) and not bool(any(bool(x.any()) for x in _flat(mask.difference(a, a))))


def _flat(t):
    return [x for x in tree.leaves(t) if x is not None]


def test_algebra_none_is_all_kept():
    m = torch.tensor([True, False])
    a, b = {"w": None}, {"w": m}
    assert torch.equal(mask.intersect(a, b)["w"], m) and torch.equal(mask.intersect(b, a)["w"], m)
    assert mask.union(a, b)["w"].tolist() == [True, True] == mask.union(b, a)["w"].tolist()
    assert mask.difference(a, b)["w"].tolist() == [False, True]  # all-kept minus m
    assert mask.difference(b, a)["w"].tolist() == [False, False]  # nothing is pruned in an all-kept mask
    assert mask.intersect(a, a)["w"] is None and mask.union(a, a)["w"] is None
    assert mask.is_nested(b, a) and not mask.is_nested(a, b)
    assert mask.is_nested(a, {"w": torch.tensor([True, True])})
    with pytest.raises(ValueError, match=r"union: masks at 'w' have shapes \(2,\) and \(3,\)"):
        mask.union(b, {"w": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="different tree structures"):
        mask.intersect(b, {"v": m})


# --------------------------------------------------------------------------------- validate
def test_validate_accepts_fitting_masks_and_names_bad_leaves():
    params = {
        "fc": {"bias": torch.ones(2), "weight": torch.ones(2, 3)},
        "ids": torch.ones(2, 2, dtype=torch.long),
    }
    good = {"fc": {"bias": None, "weight": torch.ones(2, 3, dtype=torch.bool)}, "ids": None}
    assert mask.validate(params, good) is None

    def with_weight(m):
        return {"fc": {"bias": None, "weight": m}, "ids": None}

    with pytest.raises(ValueError, match=r"mask 'fc.weight' has shape \(3, 2\), param has \(2, 3\)"):
        mask.validate(params, with_weight(torch.ones(3, 2, dtype=torch.bool)))
    with pytest.raises(TypeError, match="mask 'fc.weight' has dtype torch.float32, expected torch.bool"):
        mask.validate(params, with_weight(torch.ones(2, 3)))
    with pytest.raises(TypeError, match="mask 'fc.weight' is float"):
        mask.validate(params, with_weight(1.0))
    with pytest.raises(ValueError, match="leaves only in masks: \\['fc.other'\\]"):
        mask.validate(params, {"fc": {"bias": None, "other": None, "weight": None}, "ids": None})
    with pytest.raises(TypeError, match="param 'ids' has dtype torch.int64"):
        mask.validate(params, {**good, "ids": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="mask 'p' is a tensor but the param is None"):
        mask.validate({"p": None}, {"p": torch.ones(1, dtype=torch.bool)})


@given(st.data())
def test_validate_agrees_with_masks_fit_params(data):
    """Both accept drawn masks, and both reject them with one leaf broken (shape or dtype)."""
    params = data.draw(pst.params_trees(min_prunable=1), label="params")
    masks = data.draw(pst.masks(params), label="masks")
    mask.validate(params, masks)
    masks_fit_params(params, masks)
    bad_path = data.draw(st.sampled_from(mask.prunable_paths(masks)), label="broken leaf")
    breaks = {
        "shape": lambda m: torch.ones(m.shape[0] + 1, *m.shape[1:], dtype=torch.bool),
        "dtype": lambda m: m.float(),
    }
    how = data.draw(st.sampled_from(sorted(breaks)), label="broken by")
    broken = tree.map_with_path(lambda p, m: breaks[how](m) if p == bad_path else m, masks)
    with pytest.raises((ValueError, TypeError), match=bad_path):
        mask.validate(params, broken)
    with pytest.raises(AssertionError, match=bad_path):
        masks_fit_params(params, broken)


# ------------------------------------------------------------------------ bytes form of masks
@given(st.data())
def test_bytes_views_share_memory_and_apply_alike(data):
    params = data.draw(pst.params_trees(min_prunable=1), label="params")
    masks = data.draw(pst.masks(params), label="masks")
    views = mask.as_bytes(masks)
    for (path, m, b), p in zip(_pairs(masks, views), tree.leaves(params)):
        assert (b is None) == (m is None), path
        if m is not None:
            assert b.dtype == torch.uint8 and b.shape == m.shape, path
            assert b.data_ptr() == m.data_ptr(), path  # a view, no copy
            assert torch.equal(b, m.to(torch.uint8)), path
            assert torch.equal(mask.keep(p, b), mask.keep(p, m)), path
    for a, b in zip(tree.leaves(mask.apply(params, views)), tree.leaves(mask.apply(params, masks))):
        assert (a is None and b is None) or torch.equal(a, b)
    mask.validate(params, views, bytes_ok=True)


@given(st.data())
def test_bytes_views_memo_reuses_views_only_for_the_same_mask_tensors(data):
    """``mask.bytes_views()``: the same views while the same tree and leaves come in (in-place
    edits show through them); a new tree, or one leaf swapped in the same tree, gets new views
    equal to ``as_bytes`` of what came in."""
    params = data.draw(pst.params_trees(min_prunable=1), label="params")
    masks = data.draw(pst.masks(params), label="masks")
    views = mask.bytes_views()
    first = views(masks)
    assert views(masks) is first
    path, leaf = next((pa, m) for pa, m in zip(tree.paths(masks), tree.leaves(masks)) if m is not None)
    leaf.logical_not_()  # in place: the kept views see it
    for m, b in zip(tree.leaves(masks), tree.leaves(views(masks))):
        assert (m is None and b is None) or torch.equal(b, m.to(torch.uint8)), path
    copy = tree.map(lambda m: None if m is None else m.clone(), masks)
    again = views(copy)
    assert again is not first
    swapped = tree.map_with_path(lambda pa, m: m.clone() if pa == path else m, masks)
    for got in (again, views(swapped)):
        assert got is not first
    for m, b in zip(tree.leaves(swapped), tree.leaves(views(swapped))):
        assert (m is None and b is None) or (
            b.data_ptr() == m.data_ptr() and torch.equal(b, m.to(torch.uint8))
        )


def test_keep_hand_example_bool_and_bytes_and_gradient():
    x = torch.tensor([[-1.0, float("nan")], [float("inf"), 2.0]], requires_grad=True)
    m = torch.tensor([[False, False], [False, True]])
    for mm in (m, m.view(torch.uint8), torch.tensor([[0, 0], [0, 7]], dtype=torch.uint8)):
        out = mask.keep(x, mm)
        assert out.tolist() == [[0.0, 0.0], [0.0, 2.0]]
        assert not torch.signbit(out).any()  # +0.0, also where x was -1
        (g,) = torch.autograd.grad(out.sum(), x)
        assert g.tolist() == [[0.0, 0.0], [0.0, 1.0]]
    assert mask.keep(x, None) is x


def test_validate_takes_bytes_only_when_asked():
    params = {"w": torch.ones(2, 3)}
    views = {"w": torch.ones(2, 3, dtype=torch.bool).view(torch.uint8)}
    with pytest.raises(TypeError, match=r"mask 'w' has dtype torch.uint8, expected torch.bool$"):
        mask.validate(params, views)
    assert mask.validate(params, views, bytes_ok=True) is None
    with pytest.raises(
        TypeError, match=r"dtype torch.float32, expected torch.bool \(or its torch.uint8 bytes\)"
    ):
        mask.validate(params, {"w": torch.ones(2, 3)}, bytes_ok=True)
    with pytest.raises(ValueError, match=r"mask 'w' has shape \(3, 2\)"):
        mask.validate(params, {"w": torch.ones(3, 2, dtype=torch.uint8)}, bytes_ok=True)
