"""Properties of pure_prune.select (and allocate): exact counts, nesting, tie-break, oracles, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.utils.prune as tprune
from einops import rearrange, reduce
from hypothesis import given, settings
from hypothesis import strategies as st

from pure_prune import allocate, mask, rng, select, tree
from pure_prune.groups import ChannelGroup, Member, member_view
from pure_prune.importance.magnitude import magnitude
from pure_prune.testing import (
    exact_n_of_m,
    exact_sparsity,
    masks_fit_params,
    masks_nested,
    pruned_are_zero,
    whole_blocks,
    whole_channels,
    whole_rows,
)
from pure_prune.testing import strategies as pst
from pure_prune.testing.plugin import scaled_examples


# ------------------------------------------------------------------------------------- helpers
def _draw_setup(data, *, ties=None, min_prunable=1, **tree_kwargs):
    """params (with ``min_prunable`` prunable leaves), all-kept masks and scores over the masked leaves."""
    params = data.draw(pst.params_trees(min_prunable=min_prunable, **tree_kwargs), label="params")
    ones = mask.ones_like(params)
    use_ties = data.draw(st.booleans(), label="ties") if ties is None else ties
    scores = data.draw(pst.scores(ones, ties=use_ties), label="scores")
    return params, ones, scores


def _flat(t):
    return [x for x in tree.leaves(t) if x is not None]


def _ref_lowest(values: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Reference: prune the k lowest of the concatenated 1-D values, earliest first among ties."""
    joined = torch.cat([v.double() for v in values]) if values else torch.zeros(0)
    order = torch.sort(joined, stable=True).indices
    pruned = torch.zeros(joined.numel(), dtype=torch.bool)
    pruned[order[:k]] = True
    return list(torch.split(pruned, [v.numel() for v in values]))


def _live(scores, masks_):
    """Flattened scores with already-pruned entries at -inf, per masked leaf."""
    out = []
    for s, m in zip(tree.leaves(scores), tree.leaves(masks_)):
        if s is None:
            continue
        v = s.double().reshape(-1)
        out.append(
            v if m is None else torch.where(m.reshape(-1), v, torch.tensor(-math.inf, dtype=torch.float64))
        )
    return out


def _unchanged(before, after) -> bool:
    return all(
        (a is None and b is None) or (a.dtype == b.dtype and torch.equal(a, b))
        for a, b in zip(tree.leaves(before), tree.leaves(after))
    )


def _clone(t):
    return tree.map(lambda x: None if x is None else x.clone(), t)


# ---------------------------------------------------------------------------- unstructured
@given(st.data())
def test_unstructured_global_exact_and_fits(data):
    params, ones, scores = _draw_setup(data)
    s = data.draw(pst.sparsities(), label="s")
    out = select.unstructured(scores, s)
    masks_fit_params(params, out)
    exact_sparsity(out, s)
    pruned_are_zero(mask.apply(params, out), out)


@given(st.data())
def test_unstructured_layer_exact_float_and_mapping(data):
    params, ones, scores = _draw_setup(data)
    s = data.draw(pst.sparsities(), label="s")
    exact_sparsity(select.unstructured(scores, s, scope="layer"), s, scope="layer")
    per = {p: data.draw(pst.sparsities(), label=p) for p in mask.prunable_paths(ones)}
    out = select.unstructured(scores, per, scope="layer")
    masks_fit_params(params, out)
    exact_sparsity(out, per, scope="layer")


@given(st.data())
def test_unstructured_matches_stable_sort_reference(data):
    """Ties (in any dtype) are broken by position: leaf order, then row-major; earliest pruned first."""
    _, ones, scores = _draw_setup(data, ties=True)
    old = data.draw(pst.masks(scores, kind="unstructured"), label="old")
    s = data.draw(pst.sparsities(), label="s")
    for scope in ("global", "layer"):
        out = select.unstructured(scores, s, scope=scope, masks=old)
        live = _live(scores, old)
        if scope == "global":
            ref = _ref_lowest(live, round(s * sum(v.numel() for v in live)))
        else:
            ref = [_ref_lowest([v], round(s * v.numel()))[0] for v in live]
        for got, r, o in zip(_flat(out), ref, _flat(old)):
            assert torch.equal(got.reshape(-1), ~r & o.reshape(-1))


def test_unstructured_tie_break_hand_example():
    scores = {"a": torch.tensor([[1.0, 0.0], [0.0, 1.0]]), "b": torch.tensor([[0.0, 0.0]])}
    out = select.unstructured(scores, 0.5)  # prune 3 of 6: the three zeros that come first
    assert out["a"].tolist() == [[True, False], [False, True]]
    assert out["b"].tolist() == [[False, True]]
    out = select.unstructured(scores, 0.5, scope="layer")
    assert out["a"].tolist() == [[True, False], [False, True]]
    assert out["b"].tolist() == [[False, True]]


def test_unstructured_rounds_half_to_even():
    scores = {"w": torch.arange(6.0).reshape(2, 3)}
    assert mask.count(select.unstructured(scores, 0.25)) == (4, 6)  # 1.5 -> 2 pruned
    assert mask.count(select.unstructured({"w": torch.arange(10.0)[None]}, 0.25)) == (8, 10)  # 2.5 -> 2


@settings(max_examples=scaled_examples(15))
@given(st.data())
def test_already_pruned_stays_pruned_and_counts(data):
    """Old masks at s1 <= s2: the new masks are nested in them and prune exactly round(s2 · N)."""
    params, ones, scores = _draw_setup(data)
    s1, s2 = data.draw(pst.schedules(2, 2), label="s1, s2")
    for scope, kind in (("global", "unstructured"), ("layer", "layer")):
        old = data.draw(pst.masks(params, s1, kind=kind), label=f"old {scope}")
        out = select.unstructured(scores, s2, scope=scope, masks=old)
        masks_nested(out, old)
        exact_sparsity(out, s2, scope=scope)
        # asking for less than is already pruned revives nothing
        assert _unchanged(old, select.unstructured(scores, s1 / 2, scope=scope, masks=old))


@given(st.data())
def test_unscored_leaf_keeps_its_old_mask(data):
    params, ones, scores = _draw_setup(data, min_prunable=2, max_leaves=4)
    old = data.draw(pst.masks(params), label="old")
    drop = data.draw(st.sampled_from(mask.prunable_paths(ones)), label="unscored")
    partial = tree.map_with_path(lambda p, x: None if p == drop else x, scores)
    for fn in (
        lambda sc: select.unstructured(sc, 0.5, masks=old),
        lambda sc: select.rows(sc, 0.5, masks=old),
    ):
        out = fn(partial)
        got = dict(zip(tree.paths(out), tree.leaves(out)))[drop]
        assert torch.equal(got, dict(zip(tree.paths(old), tree.leaves(old)))[drop])


@settings(max_examples=scaled_examples(12))
@given(st.data())
def test_nested_as_sparsity_rises(data):
    params, ones, scores = _draw_setup(data)
    schedule = data.draw(pst.schedules(2, 3, strict=True), label="schedule")
    for fn in (
        lambda s: select.unstructured(scores, s),
        lambda s: select.unstructured(scores, s, scope="layer"),
        lambda s: select.rows(scores, s, axis=0),
        lambda s: select.rows(scores, s, axis=1, ord=1),
    ):
        masks_ = [fn(s) for s in schedule]
        for new, old in zip(masks_[1:], masks_[:-1]):
            masks_nested(new, old)


@settings(max_examples=scaled_examples(15))
@given(st.data())
def test_unstructured_permutation_equivariant(data):
    """Permuting tie-free scores within a leaf permutes that leaf's mask the same way."""
    _, ones, scores = _draw_setup(data, ties=False)
    s = data.draw(pst.sparsities(), label="s")
    key = data.draw(pst.keys(), label="key")
    perms = tree.map_with_path(
        lambda p, x: None if x is None else torch.randperm(x.numel(), generator=rng.generator(key + len(p))),
        scores,
    )
    permuted = tree.map(lambda x, q: None if x is None else x.reshape(-1)[q].reshape(x.shape), scores, perms)
    for scope in ("global", "layer"):
        a, b = select.unstructured(scores, s, scope=scope), select.unstructured(permuted, s, scope=scope)
        for ma, mb, q in zip(_flat(a), _flat(b), _flat(perms)):
            assert torch.equal(ma.reshape(-1)[q], mb.reshape(-1))


@given(st.data())
def test_select_does_not_modify_inputs(data):
    _, ones, scores = _draw_setup(data)
    old = data.draw(pst.masks(scores), label="old")
    s_copy, m_copy = _clone(scores), _clone(old)
    select.unstructured(scores, 0.5, masks=old)
    select.rows(scores, 0.5, masks=old)
    assert _unchanged(s_copy, scores) and _unchanged(m_copy, old)


def test_lowest_k_hand_example():
    a, b = torch.tensor([3.0, 1.0, 2.0]), torch.tensor([1.0, 0.0])
    assert [x.tolist() for x in select.lowest_k([a, b], 3)] == [[False, True, False], [True, True]]
    assert [x.tolist() for x in select.lowest_k([a, b], 0)] == [[False] * 3, [False] * 2]
    assert [x.tolist() for x in select.lowest_k([a, b], 9)] == [[True] * 3, [True] * 2]
    ties = torch.zeros(4)
    assert select.lowest_k([ties], 2)[0].tolist() == [True, True, False, False]


# ------------------------------------------------------------------------------------- rows
@given(st.data())
def test_rows_whole_exact_and_reference(data):
    """Ties in small integer scores (exact in every dtype) check the tie-break against a reference."""
    params, ones, scores = _draw_setup(data, ties=True)
    s = data.draw(pst.sparsities(), label="s")
    axis = data.draw(st.sampled_from([0, 1, -1]), label="axis")
    ord_ = data.draw(st.sampled_from([1, 2, math.inf, 3]), label="ord")
    out = select.rows(scores, s, axis=axis, ord=ord_)
    masks_fit_params(params, out)
    whole_rows(out, s, axis=axis)
    for x, m in zip(_flat(scores), _flat(out)):  # the lowest-norm slices go, earliest first among ties
        v = rearrange(torch.movedim(x.double(), axis, 0), "u ... -> u (...)").abs()
        if ord_ == math.inf:
            norms = v.amax(1) if v.shape[1] else v.new_zeros(v.shape[0])
        else:
            norms = (v**ord_).sum(1)
        ref = ~_ref_lowest([norms], round(s * x.shape[axis]))[0]
        got = rearrange(torch.movedim(m, axis, 0), "u ... -> u (...)")
        assert torch.equal(got, ref[:, None].expand_as(got))


@given(st.data())
def test_rows_with_old_masks(data):
    params, ones, scores = _draw_setup(data)
    s1, s2 = data.draw(pst.schedules(2, 2), label="s1, s2")
    old = data.draw(pst.masks(params, s1, kind="rows"), label="old")
    out = select.rows(scores, s2, masks=old)
    masks_nested(out, old)
    whole_rows(out, s2)


def test_rows_hand_example():
    w = torch.tensor([[3.0, 4.0], [1.0, 1.0], [0.0, 2.0]])  # L2² 25, 2, 4; L1 7, 2, 2
    assert select.rows({"w": w}, 1 / 3)["w"].tolist() == [[True, True], [False, False], [True, True]]
    assert select.rows({"w": w}, 0.5, ord=1)["w"][:, 0].tolist() == [True, False, False]  # 1.5 -> 2; tie
    cols = select.rows({"w": w}, 0.5, axis=1)["w"]  # column norms² 10, 21: column 0 goes
    assert cols.tolist() == [[False, True]] * 3


# ------------------------------------------------------------------------------------ N:M
_NM_LEAF = pst.shapes(min_ndim=2, max_ndim=3, max_side=8, multiple_of=(1, 4))


@given(st.data())
def test_n_of_m_exact_and_tie_break(data):
    params = data.draw(
        pst.params_trees(min_prunable=1, leaf_shapes=pst.shapes(max_ndim=1), prunable_shapes=_NM_LEAF),
        label="params",
    )
    ones = mask.ones_like(params)
    scores = data.draw(pst.scores(ones, ties=data.draw(st.booleans(), label="ties")), label="scores")
    m = data.draw(st.sampled_from([1, 2, 4]), label="m")
    n = data.draw(st.integers(0, m), label="n")
    out = select.n_of_m(scores, n, m, axis=1)
    masks_fit_params(params, out)
    exact_n_of_m(out, n, m, axis=1)
    for x, got in zip(_flat(scores), _flat(out)):  # the n highest of each group; ties: earlier kept
        g = torch.movedim(x.double(), 1, -1).reshape(-1, m)
        order = torch.sort(-g, dim=-1, stable=True).indices
        ref = torch.zeros_like(g, dtype=torch.bool).scatter(-1, order[:, :n], True)
        assert torch.equal(torch.movedim(got, 1, -1).reshape(-1, m), ref)


@given(st.data())
def test_n_of_m_with_old_masks(data):
    params = data.draw(
        pst.params_trees(min_prunable=1, leaf_shapes=pst.shapes(max_ndim=1), prunable_shapes=_NM_LEAF)
    )
    ones = mask.ones_like(params)
    scores = data.draw(pst.scores(ones), label="scores")
    old = data.draw(pst.masks(params, kind="unstructured"), label="old")
    out = select.n_of_m(scores, 2, 4, axis=1, masks=old)
    masks_nested(out, old)
    exact_n_of_m(out, 2, 4, axis=1, old=old)


def test_n_of_m_hand_example():
    x = torch.tensor([[4.0, 1.0, 3.0, 2.0, 1.0, 1.0, 1.0, 1.0]])
    assert select.n_of_m({"w": x}, 2, 4)["w"].tolist() == [
        [True, False, True, False, True, True, False, False]
    ]


# ---------------------------------------------------------------------------------- blocks
_BLOCK_LEAF = pst.shapes(min_ndim=2, max_ndim=3, max_side=6, multiple_of=(2, 3))


@settings(max_examples=scaled_examples(15))
@given(st.data())
def test_block_exact_whole_and_nested(data):
    """Two prunable leaves or more, so scope='layer' and 'global' differ; old masks from a
    selection by the same scores and random ones (whose pruned blocks the scores would not pick)."""
    params = data.draw(
        pst.params_trees(
            min_prunable=data.draw(st.integers(2, 3), label="leaves"),
            leaf_shapes=pst.shapes(max_ndim=1),
            prunable_shapes=_BLOCK_LEAF,
        ),
        label="params",
    )
    ones = mask.ones_like(params)
    scores = data.draw(pst.scores(ones, ties=data.draw(st.booleans())), label="scores")
    s1, s2 = data.draw(pst.schedules(2, 2), label="s1, s2")
    for scope in ("global", "layer"):
        first = select.block(scores, s1, (2, 3), scope=scope)
        masks_fit_params(params, first)
        whole_blocks(first, (2, 3), s1, scope=scope)
        second = select.block(scores, s2, (2, 3), scope=scope, masks=first)
        masks_nested(second, first)
        whole_blocks(second, (2, 3), s2, scope=scope)
        masks_nested(select.block(scores, s2, (2, 3), scope=scope), first)
    old = data.draw(pst.masks(params, s1, kind="block", block_shape=(2, 3)), label="random old")
    third = select.block(scores, s2, (2, 3), masks=old)  # global: already-pruned blocks count
    masks_nested(third, old)
    whole_blocks(third, (2, 3), s2)


def test_block_partly_pruned_block_is_live():
    """A block with one pruned entry is still ranked by its score (only fully pruned blocks rank lowest)."""
    scores = {"w": torch.tensor([[9.0, 9.0, 1.0, 1.0], [9.0, 9.0, 1.0, 1.0]])}
    old = {"w": torch.tensor([[False, True, True, True], [True, True, True, True]])}
    out = select.block(scores, 0.5, (2, 2), masks=old)["w"]
    assert out.tolist() == [[False, True, False, False], [True, True, False, False]]


# -------------------------------------------------------------------------------- channels
@settings(max_examples=scaled_examples(10))
@given(st.data())
def test_channels_whole_exact_nested(data):
    params, groups = data.draw(pst.channel_nets(), label="net")
    scores = data.draw(pst.scores(params), label="scores")
    s1, s2 = data.draw(pst.schedules(2, 2), label="s1, s2")
    ord_ = data.draw(st.sampled_from([1, 2]), label="ord")
    for scope in ("layer", "global"):
        first = select.channels(scores, s1, groups, scope=scope, ord=ord_)
        masks_fit_params(params, first)
        by_path = dict(zip(tree.paths(first), tree.leaves(first)))
        assert all(by_path[m.path] is not None for g in groups for m in g.members)  # consumers too
        whole_channels(first, groups, sparsity=s1, scope=scope)
        pruned_are_zero(mask.apply(params, first), first)
        masks_nested(select.channels(scores, s2, groups, scope=scope, ord=ord_), first)
        second = select.channels(scores, s2, groups, scope=scope, ord=ord_, masks=first)
        masks_nested(second, first)
        whole_channels(second, groups, sparsity=s2, scope=scope)


def test_channels_hand_mlp():
    """fc1 has 3 units; unit 1 has the smallest L1 norm over fc1 rows, fc1 bias and fc2 columns."""
    params, group = _hand_mlp()
    out = select.channels(params, 1 / 3, [group])
    assert out["fc1"]["weight"].tolist() == [[True, True], [False, False], [True, True]]
    assert out["fc1"]["bias"].tolist() == [True, False, True]
    assert out["fc2"]["weight"].tolist() == [[True, False, True]]
    tie = {"fc1": {"bias": torch.zeros(3), "weight": torch.zeros(3, 2)}, "fc2": {"weight": torch.zeros(1, 3)}}
    assert select.channels(tie, 1 / 3, [group])["fc1"]["bias"].tolist() == [False, True, True]


def _hand_mlp():
    params = {
        "fc1": {
            "bias": torch.tensor([1.0, 0.0, 1.0]),
            "weight": torch.tensor([[1.0, 2.0], [0.5, 0.0], [1.0, 1.0]]),
        },
        "fc2": {"weight": torch.tensor([[1.0, 0.1, 1.0]])},
    }
    group = ChannelGroup("fc1", 3, (Member("fc1.weight", 0), Member("fc1.bias", 0), Member("fc2.weight", 1)))
    return params, group


def test_unit_norms_hand_example():
    params, group = _hand_mlp()
    hidden = ChannelGroup("in", 2, (Member("fc1.weight", 1),), prunable=False)
    l1 = select.unit_norms(params, [group, hidden])
    assert list(l1) == ["fc1"] and torch.allclose(l1["fc1"], torch.tensor([5.0, 0.6, 4.0]))
    l2 = select.unit_norms(params, [group], ord=2)["fc1"]  # sums of squares: the ranking of L2 norms
    assert torch.allclose(l2, torch.tensor([7.0, 0.26, 4.0]))
    per_entry = select.unit_norms(params, [group], normalize=True)["fc1"]  # 4 entries per unit
    assert torch.allclose(per_entry, torch.tensor([5.0, 0.6, 4.0]) / 4)
    dead = tree.map(lambda x: torch.ones_like(x, dtype=torch.bool), params)
    dead["fc1"]["weight"][2] = False
    dead["fc1"]["bias"][2] = False
    dead["fc2"]["weight"][0, 2] = False
    masked = select.unit_norms(params, [group], masks=dead)["fc1"]  # finite: units() ranks dead units
    assert torch.allclose(masked, l1["fc1"])
    assert select.units({"fc1": masked}, 1 / 3, [group], params, masks=dead)["fc1"]["bias"].tolist() == [
        True,
        True,
        False,
    ]
    with pytest.raises(ValueError, match="member 'fc3.weight' is not a leaf of scores"):
        select.unit_norms(params, [ChannelGroup("x", 1, (Member("fc3.weight", 0),))])


def test_units_from_external_unit_scores():
    params, group = _hand_mlp()
    out = select.units({"fc1": torch.tensor([3.0, 1.0, 2.0])}, 1 / 3, [group], params)
    assert out["fc1"]["bias"].tolist() == [True, False, True]
    assert out["fc2"]["weight"].tolist() == [[True, False, True]]
    again = select.units({"fc1": torch.tensor([3.0, 9.0, 2.0])}, 1 / 3, [group], params, masks=out)
    assert again["fc1"]["bias"].tolist() == [True, False, True]  # the dead unit counts toward the target
    with pytest.raises(ValueError, match="no unit scores for group 'fc1'"):
        select.units({}, 0.5, [group], params)
    with pytest.raises(ValueError, match=r"scores of group 'fc1' have shape \(2,\), expected \(3,\)"):
        select.units({"fc1": torch.ones(2)}, 0.5, [group], params)
    with pytest.raises(ValueError, match=r"score 'fc1' is not finite at index \(1,\): nan"):
        select.units({"fc1": torch.tensor([1.0, math.nan, 2.0])}, 0.5, [group], params)
    with pytest.raises(ValueError, match="member 'fc1.bias' has neither a tensor nor a mask"):
        select.units({"fc1": torch.ones(3)}, 0.5, [group], {**params, "fc1": {**params["fc1"], "bias": None}})
    with pytest.raises(ValueError, match="units: no prunable channel group"):
        select.units({}, 0.5, [group._replace(prunable=False)], params)


@settings(max_examples=scaled_examples(15))
@given(st.data())
def test_units_exact_and_whole_for_any_unit_scores(data):
    params, groups = data.draw(pst.channel_nets(), label="net")
    key = data.draw(pst.keys(), label="key")
    scores = {
        g.name: torch.randperm(g.size, generator=rng.generator(rng.fold_in(key, i))).float()
        for i, g in enumerate(groups)
    }
    s = data.draw(pst.sparsities(), label="s")
    scope = data.draw(st.sampled_from(["layer", "global"]), label="scope")
    out = select.units(scores, s, groups, params, scope=scope)
    masks_fit_params(params, out)
    whole_channels(out, groups, sparsity=s, scope=scope)
    if scope == "layer":  # the lowest-scoring units of each group are the removed ones
        for g in groups:
            lowest = torch.argsort(scores[g.name])[: round(s * g.size)]
            leaves = dict(zip(tree.paths(out), tree.leaves(out)))
            views = [member_view(leaves[m.path], m, g.size) for m in g.members]
            alive = reduce(torch.cat(views, dim=1), "u r -> u", "any")  # kept anywhere = not removed
            assert set(torch.nonzero(~alive).reshape(-1).tolist()) == set(lowest.tolist())


# ------------------------------------------------------------------------------- compiled


@pytest.fixture(scope="module")
def compiled():
    """Two compiled selectors shared by the module: unstructured (with old masks) and structured."""

    def unstructured(scores, old):
        return select.unstructured(scores, 0.5, masks=old), select.unstructured(scores, 0.25, scope="layer")

    def structured(scores):
        return select.rows(scores, 0.5), select.n_of_m(scores, 2, 4), select.block(scores, 0.5, (2, 2))

    return torch.compile(unstructured, fullgraph=True), torch.compile(structured, fullgraph=True)


def _fixed_params():
    """The one tree structure the compiled selectors see (so they compile once)."""
    return {"a": {"weight": torch.zeros(6, 4)}, "b": {"bias": None, "weight": torch.zeros(2, 4, 1, 4)}}


@settings(max_examples=scaled_examples(4))
@given(st.data())
def test_unchanged_under_torch_compile(compiled, data):
    ones = mask.ones_like(_fixed_params())
    scores = data.draw(pst.scores(ones, ties=data.draw(st.booleans()), dtype=torch.float32), label="scores")
    old = data.draw(pst.masks(_fixed_params(), 0.25, kind="unstructured"), label="old")
    c_unstructured, c_structured = compiled
    eager = (
        select.unstructured(scores, 0.5, masks=old),
        select.unstructured(scores, 0.25, scope="layer"),
        select.rows(scores, 0.5),
        select.n_of_m(scores, 2, 4),
        select.block(scores, 0.5, (2, 2)),
    )
    got = (*c_unstructured(scores, old), *c_structured(scores))
    for e, g in zip(eager, got):
        assert tree.structure(e) == tree.structure(g)
        assert all(torch.equal(a, b) for a, b in zip(_flat(e), _flat(g)))


# --------------------------------------------------------------------- torch.nn.utils.prune
def _tie_free_modules(key: int, specs) -> list[torch.nn.Module]:
    """Linear/Conv2d modules whose weights have distinct magnitudes across all modules."""
    mods = [
        torch.nn.Linear(s[1], s[0], bias=False)
        if len(s) == 2
        else torch.nn.Conv2d(s[1], s[0], s[2], bias=False)
        for s in specs
    ]
    sizes = [math.prod(s) for s in specs]
    mags = torch.randperm(sum(sizes), generator=rng.generator(key)).float() + 1
    signs = rng.rademacher(rng.fold_in(key, 1), (sum(sizes),))
    for mod, part, spec in zip(mods, torch.split(mags * signs, sizes), specs):
        with torch.no_grad():
            mod.weight.copy_(part.reshape(spec))
    return mods


def _params_of(mods) -> dict:
    return tree.canonical({f"m{i}": {"weight": m.weight.detach().clone()} for i, m in enumerate(mods)})


_LAYER_SPECS = st.lists(
    st.one_of(
        st.tuples(st.integers(1, 6), st.integers(1, 6)),
        st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 3)).map(
            lambda t: (t[0], t[1], t[2], t[2])
        ),
    ),
    min_size=1,
    max_size=4,
)


@given(_LAYER_SPECS, pst.sparsities(), pst.keys())
def test_matches_torch_l1_unstructured_and_global(specs, s, key):
    mods = _tie_free_modules(key, specs)
    params = _params_of(mods)
    scores = magnitude(params, mask.ones_like(params))
    per_leaf = select.unstructured(scores, s, scope="layer")
    globally = select.unstructured(scores, s, scope="global")
    for i, mod in enumerate(mods):
        tprune.l1_unstructured(mod, "weight", amount=s)
        assert torch.equal(mod.weight_mask.bool(), per_leaf[f"m{i}"]["weight"])
    mods = _tie_free_modules(key, specs)
    tprune.global_unstructured([(m, "weight") for m in mods], pruning_method=tprune.L1Unstructured, amount=s)
    for i, mod in enumerate(mods):
        assert torch.equal(mod.weight_mask.bool(), globally[f"m{i}"]["weight"])


def _tie_free_slices(key: int, shape: tuple[int, ...], dim: int) -> torch.Tensor:
    """A weight whose slices along ``dim`` have distinct L2 norms *and* rank differently by L1.

    Slices come in pairs at scales ``10^j`` (random order): a spread slice (all entries ``a``) and a
    concentrated one (one entry ``1.1·a·√K``, the others ``0.1·a``; ``K`` entries per slice). For
    ``K >= 2`` the concentrated slice has the larger L2 norm and the smaller L1 norm, so a selector
    ranking by L1 instead of L2 swaps the pair. Random signs and peak positions.
    """
    units, k = shape[dim], math.prod(shape) // shape[dim]
    scale = 10.0 ** torch.randperm((units + 1) // 2, generator=rng.generator(key)).double()
    vals = torch.empty(units, k, dtype=torch.float64)
    for u in range(units):
        a = float(scale[u // 2])
        if u % 2 == 0:
            vals[u] = a
        else:
            vals[u] = 0.1 * a
            peak = int(torch.randint(0, k, (1,), generator=rng.generator(rng.fold_in(key, u + 1))))
            vals[u, peak] = 1.1 * a * math.sqrt(k)
    order = torch.randperm(units, generator=rng.generator(rng.fold_in(key, units + 1)))
    vals = vals[order] * rng.rademacher(rng.fold_in(key, 0), (units, k), dtype=torch.float64)
    moved = [shape[dim]] + [d for i, d in enumerate(shape) if i != dim]
    return torch.movedim(vals.reshape(moved), 0, dim).float()


@given(_LAYER_SPECS, pst.sparsities(), pst.keys(), st.sampled_from([0, 1]))
def test_matches_torch_ln_structured(specs, s, key, dim):
    mods = _tie_free_modules(key, specs)
    for i, mod in enumerate(mods):
        with torch.no_grad():
            mod.weight.copy_(_tie_free_slices(rng.fold_in(key, i), tuple(mod.weight.shape), dim))
    params = _params_of(mods)
    out = select.rows(params, s, axis=dim, ord=2)
    for i, mod in enumerate(mods):
        tprune.ln_structured(mod, "weight", amount=s, n=2, dim=dim)
        assert torch.equal(mod.weight_mask.bool(), out[f"m{i}"]["weight"])


# ------------------------------------------------------------------------------ allocation
def _alloc_masks(shapes):
    return {f"l{i}": {"weight": torch.ones(s, dtype=torch.bool)} for i, s in enumerate(shapes)}


_ALLOC_SHAPES = st.lists(
    st.lists(st.integers(1, 12), min_size=2, max_size=4).map(tuple), min_size=1, max_size=5
)


@given(_ALLOC_SHAPES, pst.sparsities())
def test_erk_proportional_clipped_and_on_target(shapes, s):
    masks_ = tree.canonical(_alloc_masks(shapes))
    alloc = allocate.erk(masks_, s)
    sizes = {p: m.numel() for p, m in zip(tree.paths(masks_), tree.leaves(masks_))}
    shape_of = {p: m.shape for p, m in zip(tree.paths(masks_), tree.leaves(masks_))}
    assert set(alloc) == set(sizes) and all(0.0 <= v <= 1.0 for v in alloc.values())
    total = sum(sizes.values())
    assert math.isclose(sum(alloc[p] * sizes[p] for p in sizes), s * total, rel_tol=1e-9, abs_tol=1e-6)
    pruned = sum(round(alloc[p] * sizes[p]) for p in sizes)
    assert abs(pruned - s * total) <= len(sizes) / 2 + 1e-6  # per-leaf rounding only
    free = {p: (1 - alloc[p]) / (sum(shape_of[p]) / sizes[p]) for p in sizes if 0 < alloc[p]}
    if free:  # densities of unclipped leaves ∝ Σdims/Πdims; clipped leaves would exceed that rate
        eps = next(iter(free.values()))
        assert all(math.isclose(v, eps, rel_tol=1e-6) for v in free.values())
        assert all(eps * sum(shape_of[p]) / sizes[p] >= 1 - 1e-9 for p in sizes if alloc[p] == 0)
    out = select.unstructured(tree.map(lambda m: m.float(), masks_), alloc, scope="layer")
    exact_sparsity(out, alloc, scope="layer")


def test_erk_hand_example():
    masks_ = _alloc_masks([(4, 4), (100, 100)])  # weights 8/16 and 200/10000
    alloc = allocate.erk(masks_, 0.5)  # eps·0.5 > 1: l0 dense; then eps = 4992/200, d1 = 0.4992
    assert alloc["l0.weight"] == 0.0
    assert math.isclose(alloc["l1.weight"], 1 - 0.4992)
    assert allocate.erk(masks_, 0.0) == {"l0.weight": 0.0, "l1.weight": 0.0}
    assert allocate.erk(masks_, 1.0) == {"l0.weight": 1.0, "l1.weight": 1.0}


@given(_ALLOC_SHAPES, pst.sparsities())
def test_layer_multipliers_on_target(shapes, s):
    masks_ = _alloc_masks(shapes)
    alloc = allocate.layer_multipliers(masks_, s)
    sizes = {p: m.numel() for p, m in zip(tree.paths(masks_), tree.leaves(masks_))}
    assert all(0.0 <= v <= 1.0 for v in alloc.values())
    assert math.isclose(
        sum(alloc[p] * sizes[p] for p in sizes), s * sum(sizes.values()), rel_tol=1e-9, abs_tol=1e-6
    )


def test_layer_multipliers_hand_example():
    masks_ = _alloc_masks([(4, 4)] * 3)
    alloc = allocate.layer_multipliers(masks_, 0.5)
    assert [round(alloc[f"l{i}.weight"], 12) for i in range(3)] == [0.25, 0.5, 0.75]
    alloc = allocate.layer_multipliers(masks_, 0.9)  # l2 clips at 1, then l1: (0.7, 1, 1)
    assert [round(alloc[f"l{i}.weight"], 12) for i in range(3)] == [0.7, 1.0, 1.0]
    rev = allocate.layer_multipliers(masks_, 0.5, order=["l2.weight", "l1.weight", "l0.weight"])
    assert [round(rev[f"l{i}.weight"], 12) for i in range(3)] == [0.75, 0.5, 0.25]
    with pytest.raises(ValueError, match="l9.weight"):
        allocate.layer_multipliers(masks_, 0.5, order=["l0.weight", "l1.weight", "l9.weight"])
    with pytest.raises(ValueError, match="-1"):
        allocate.layer_multipliers(masks_, 0.5, multipliers=(1.0, -1.0))


def test_uniform_allocation_and_bad_targets():
    masks_ = {"a": torch.ones(2, 2, dtype=torch.bool), "b": None}
    assert allocate.uniform(masks_, 0.3) == {"a": 0.3}
    for fn in (allocate.uniform, allocate.erk, allocate.layer_multipliers):
        for bad in (-0.1, 1.5, float("nan")):
            with pytest.raises(ValueError, match="sparsity"):
                fn(masks_, bad)
        with pytest.raises(ValueError, match="no prunable leaf"):
            fn({"a": None}, 0.5)


# ------------------------------------------------------------------------------ bad inputs
_SC = {"fc": {"bias": None, "weight": torch.tensor([[0.5, 1.0], [2.0, 3.0]])}}


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), float("inf")])
def test_sparsity_out_of_range(bad):
    group = ChannelGroup("fc", 2, (Member("fc.weight", 0),))
    for call in (
        lambda: select.unstructured(_SC, bad),
        lambda: select.unstructured(_SC, bad, scope="layer"),
        lambda: select.rows(_SC, bad),
        lambda: select.block(_SC, bad, (1, 1)),
        lambda: select.channels(_SC, bad, [group]),
    ):
        with pytest.raises(ValueError, match=r"\[0, 1\], got"):
            call()
    with pytest.raises(ValueError, match=r"'fc.weight'.*got"):
        select.unstructured(_SC, {"fc.weight": bad}, scope="layer")


def test_bad_mapping_and_scope():
    with pytest.raises(ValueError, match=r"missing paths \['fc.weight'\].*unknown paths \['fc.bias'\]"):
        select.unstructured(_SC, {"fc.bias": 0.5}, scope="layer")
    with pytest.raises(TypeError, match="scope='layer'"):
        select.unstructured(_SC, {"fc.weight": 0.5})
    with pytest.raises(ValueError, match="'sideways'"):
        select.unstructured(_SC, 0.5, scope="sideways")
    with pytest.raises(ValueError, match="ord must be > 0"):
        select.rows(_SC, 0.5, ord=0)
    with pytest.raises(ValueError, match=r"axis 2 out of range.*'fc.weight'"):
        select.rows(_SC, 0.5, axis=2)


@pytest.mark.parametrize(("n", "m"), [(3, 2), (-1, 2), (1, 0)])
def test_n_of_m_bad_n_m(n, m):
    with pytest.raises(ValueError, match=f"n={n}, m={m}"):
        select.n_of_m(_SC, n, m)


def test_n_of_m_m_not_dividing_axis():
    with pytest.raises(ValueError, match=r"m=4 does not divide axis -1 of length 2 in score 'fc.weight'"):
        select.n_of_m(_SC, 2, 4)
    with pytest.raises(ValueError, match=r"block \(3, 1\) does not tile.*'fc.weight'.*\(2, 2\)"):
        select.block(_SC, 0.5, (3, 1))


def test_mismatched_trees_and_shapes():
    with pytest.raises(ValueError, match="scores and masks have different tree structures.*fc.other"):
        select.unstructured(_SC, 0.5, masks={"fc": {"bias": None, "other": None, "weight": None}})
    wrong = {"fc": {"bias": None, "weight": torch.ones(2, 3, dtype=torch.bool)}}
    for call in (select.unstructured, select.rows):
        with pytest.raises(ValueError, match=r"mask 'fc.weight' has shape \(2, 3\), score has \(2, 2\)"):
            call(_SC, 0.5, masks=wrong)


def test_non_bool_mask():
    bad = {"fc": {"bias": None, "weight": torch.ones(2, 2)}}
    with pytest.raises(TypeError, match="mask 'fc.weight' must be a bool tensor or None, got torch.float32"):
        select.unstructured(_SC, 0.5, masks=bad)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_scores_name_path_and_index(value):
    w = _SC["fc"]["weight"].clone()
    w[1, 0] = value
    scores = {"fc": {"bias": None, "weight": w}}
    group = ChannelGroup("fc", 2, (Member("fc.weight", 0),))
    for call in (
        lambda: select.unstructured(scores, 0.5),
        lambda: select.rows(scores, 0.5),
        lambda: select.n_of_m(scores, 1, 2),
        lambda: select.block(scores, 0.5, (1, 1)),
        lambda: select.channels(scores, 0.5, [group]),
    ):
        with pytest.raises(ValueError, match=rf"score 'fc.weight' is not finite at index \(1, 0\): {value}"):
            call()


def test_empty_prunable_set_and_non_float_scores():
    for call in (
        lambda: select.unstructured({"a": None}, 0.5),
        lambda: select.rows({"a": None}, 0.5),
        lambda: select.n_of_m({"a": None}, 2, 4),
    ):
        with pytest.raises(ValueError, match="no prunable leaf"):
            call()
    with pytest.raises(ValueError, match="no prunable channel group"):
        select.channels(_SC, 0.5, [ChannelGroup("fc", 2, (Member("fc.weight", 0),), prunable=False)])
    with pytest.raises(TypeError, match="score 'a' has dtype torch.int64"):
        select.unstructured({"a": torch.ones(2, 2, dtype=torch.long)}, 0.5)
