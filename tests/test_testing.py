"""pure_prune.testing: every invariant check catches a broken input and names the leaf and index;
every strategy draws valid objects; the pytest plugin loads profiles and prints tensors compactly."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pure_prune.models as models
from pure_prune import mask, rng, select, tree
from pure_prune.groups import ChannelGroup, Member, member_view
from pure_prune.testing import (
    compacted_equals_masked,
    describe_tree,
    exact_n_of_m,
    exact_sparsity,
    format_tensor,
    format_value,
    masks_fit_params,
    masks_nested,
    optimizer_state_zero_at_pruned,
    plugin,
    pruned_are_zero,
    vmapped_equals_loop,
    whole_blocks,
    whole_channels,
    whole_rows,
)
from pure_prune.testing import strategies as pst


def _fails(match: str):
    return pytest.raises(AssertionError, match=re.escape(match))


def _bools(rows):
    return torch.tensor(rows, dtype=torch.bool)


# ------------------------------------------------------------------------------------ printing
def test_format_value_and_tensor():
    assert format_value(0.25) == "0.25" and format_value(torch.tensor([1.5])) == "1.5"
    assert format_value(True) == "True" and format_value(3) == "3" and format_value(1 / 3) == "0.333333"
    assert format_tensor(None) == "None" and format_tensor(3) == "3"
    assert format_tensor(torch.zeros(0, 2)) == "float32[0, 2] (empty)"
    assert format_tensor(_bools([[True, False], [True, True]])) == "bool[2, 2] 3/4 True [T, F, T, T]"
    x = torch.tensor([1.0, -2.0, float("nan"), 0.5])
    assert format_tensor(x, max_items=2) == "float32[4] min=-2 max=1 non-finite=1 [1, -2, …]"
    assert format_tensor(torch.arange(3)) == "int64[3] [0, 1, 2]"
    assert format_tensor(torch.tensor(2.0, dtype=torch.bfloat16)) == "bfloat16[] min=2 max=2 [2]"


def test_describe_tree_one_line_per_leaf():
    t = {"fc1": {"bias": None, "weight": torch.ones(2, 3)}}
    assert describe_tree(t) == "'fc1.bias': None\n'fc1.weight': float32[2, 3] min=1 max=1 [1, 1, 1, 1, 1, 1]"
    assert describe_tree({}) == "(empty tree)"


# ------------------------------------------------------------------------------- mask checks
_P = {"fc1": {"bias": torch.ones(4), "weight": torch.ones(4, 3)}, "fc2": {"weight": None}}


def _m(weight):
    return {"fc1": {"bias": None, "weight": weight}, "fc2": {"weight": None}}


def test_masks_fit_params_names_the_leaf():
    masks_fit_params(_P, _m(torch.ones(4, 3, dtype=torch.bool)))
    with _fails("leaf 'fc1.weight': mask has shape (3, 4), param has shape (4, 3)"):
        masks_fit_params(_P, _m(torch.ones(3, 4, dtype=torch.bool)))
    with _fails("leaf 'fc1.weight': mask has dtype torch.float32, expected torch.bool"):
        masks_fit_params(_P, _m(torch.ones(4, 3)))
    with _fails("leaf 'fc1.weight': mask is str"):
        masks_fit_params(_P, _m("all"))
    with _fails("leaf 'fc2.weight': mask is a tensor but the param is None"):
        masks_fit_params(_P, {**_m(None), "fc2": {"weight": torch.ones(1, dtype=torch.bool)}})
    with _fails("leaves only in masks: ['fc1.extra']"):
        masks_fit_params(_P, {"fc1": {"bias": None, "extra": None, "weight": None}, "fc2": {"weight": None}})


def test_pruned_are_zero_names_leaf_index_and_value():
    masks = _m(torch.ones(4, 3, dtype=torch.bool))
    masks["fc1"]["weight"][3, 2] = False
    masks["fc1"]["weight"][0, 0] = False
    params = mask.apply(_P, masks)
    pruned_are_zero(params, masks)
    params["fc1"]["weight"][3, 2] = 0.25
    with _fails("leaf 'fc1.weight' index (3, 2): pruned entry is 0.25, expected exactly 0.0 (1 of 2 pruned"):
        pruned_are_zero(params, masks)
    params["fc1"]["weight"][3, 2] = -0.0
    pruned_are_zero(params, masks)
    params["fc1"]["weight"][0, 0] = float("nan")
    with _fails("index (0, 0): pruned entry is nan"):
        pruned_are_zero(params, masks)


def test_exact_sparsity_global_layer_and_mapping():
    m = {"a": _bools([[False, True, True, True]]), "b": None, "c": _bools([[False, False], [True, True]])}
    exact_sparsity(m, 3 / 8)
    exact_sparsity(m, 0.375)  # round(3.0) = 3
    exact_sparsity(m, {"a": 0.25, "c": 0.5}, scope="layer")
    with _fails(
        "global: 3 of 8 entries pruned, expected round(0.5 · 8) = 4; pruned per leaf: 'a': 1/4, 'c': 2/4"
    ):
        exact_sparsity(m, 0.5)
    with _fails("leaf 'a': 1 of 4 entries pruned, expected round(0.5 · 4) = 2"):
        exact_sparsity(m, 0.5, scope="layer")
    with _fails("leaf 'c': no sparsity given"):
        exact_sparsity(m, {"a": 0.25}, scope="layer")
    # Python rounds half to even: round(0.25 · 10) = round(2.5) = 2
    exact_sparsity({"w": _bools([[False, False] + [True] * 8])}, 0.25)
    with _fails("expected round(0.25 · 10) = 2"):
        exact_sparsity({"w": _bools([[False, False, False] + [True] * 7])}, 0.25)


def test_exact_n_of_m_names_the_group_start():
    good = _bools([[True, False, True, False], [False, True, True, False]])
    exact_n_of_m({"w": good}, 2, 4)
    bad = _bools([[True, False, True, False], [True, True, True, False]])
    with _fails(
        "leaf 'w' index (1, 0): the group of 4 along axis -1 starting here keeps 3, expected exactly 2"
    ):
        exact_n_of_m({"w": bad}, 2, 4)
    cols = _bools([[True, True], [False, True], [True, False], [False, False]])  # groups of 2 along axis 0
    with _fails(
        "leaf 'w' index (0, 1): the group of 2 along axis 0 starting here keeps 2, expected exactly 1"
    ):
        exact_n_of_m({"w": cols}, 1, 2, axis=0)
    old = {"w": _bools([[True, False, False, False], [True, True, True, True]])}
    exact_n_of_m({"w": _bools([[True, False, False, False], [True, True, False, False]])}, 2, 4, old=old)
    with _fails("has no groups of 3"):
        exact_n_of_m({"w": good}, 1, 3)


def _mlp_groups():
    g1 = ChannelGroup("fc1", 4, (Member("fc1.weight", 0), Member("fc1.bias", 0), Member("fc2.weight", 1)))
    return (g1,)


def test_whole_channels_partial_unit_and_counts():
    keep = torch.tensor([True, False, True, True])
    masks = {
        "fc1": {"bias": keep.clone(), "weight": keep[:, None].expand(4, 3).clone()},
        "fc2": {"weight": keep[None, :].expand(2, 4).clone()},
    }
    whole_channels(masks, _mlp_groups(), sparsity=0.25)
    whole_channels(masks, _mlp_groups(), sparsity={"fc1": 0.25})
    whole_channels(masks, _mlp_groups(), sparsity=0.25, scope="global")
    with _fails("group 'fc1' (pruned units [1]): 1 of 4 units pruned, expected round(0.5 · 4) = 2"):
        whole_channels(masks, _mlp_groups(), sparsity=0.5)
    with _fails("global: 1 of 4 units pruned, expected round(0.5 · 4) = 2"):
        whole_channels(masks, _mlp_groups(), sparsity=0.5, scope="global")
    masks["fc2"]["weight"][1, 2] = False  # unit 2 is kept elsewhere: a partly removed unit
    with _fails(
        "leaf 'fc2.weight' index (1, 2): entry is pruned but every unit it belongs to (unit 2 of 'fc1')"
    ):
        whole_channels(masks, _mlp_groups())


def test_whole_channels_outer_and_inner_members():
    keep = torch.tensor([True, False])
    gates = Member("cell.w_ih", 0, outer=4)
    head = Member("head.weight", 1, inner=3)
    group = ChannelGroup("cell", 2, (gates, head))
    masks = {
        "cell": {"w_ih": keep.repeat(4)[:, None].expand(8, 2).clone()},
        "head": {"weight": keep.repeat_interleave(3)[None].expand(2, 6).clone()},
    }
    whole_channels(masks, [group], sparsity=0.5)
    masks["cell"]["w_ih"][6, 1] = False  # row 6 = gate 3 of unit 0
    with _fails(
        "leaf 'cell.w_ih' index (6, 1): entry is pruned but every unit it belongs to (unit 0 of 'cell')"
    ):
        whole_channels(masks, [group])


def test_whole_rows_and_blocks():
    rows = {"w": _bools([[True, True], [False, False], [True, True]])}
    whole_rows(rows, 1 / 3)
    with _fails("group 'w' (pruned units [1]): 1 of 3 units pruned, expected round(0.6 · 3) = 2"):
        whole_rows(rows, 0.6)
    rows["w"][0, 1] = False
    with _fails("leaf 'w' index (0, 1): entry is pruned but every unit it belongs to (unit 0 of 'w')"):
        whole_rows(rows)
    cols = {"w": _bools([[True, False], [True, False]])}
    whole_rows(cols, 0.5, axis=1)
    blocks = {"w": _bools([[True, True, False, False], [True, True, False, False]])}
    whole_blocks(blocks, (2, 2), 0.5)
    whole_blocks(blocks, (1, 2), 0.5, scope="layer")
    with _fails("global: 1 of 2 blocks pruned, expected round(1 · 2) = 2"):
        whole_blocks(blocks, (2, 2), 1.0)
    blocks["w"][1, 1] = False
    with _fails("leaf 'w' index (1, 1): entry is pruned but block (0, 0) of shape (2, 2) has kept entries"):
        whole_blocks(blocks, (2, 2))
    with _fails("is not tiled by blocks (3, 2)"):
        whole_blocks(blocks, (3, 2))


def test_empty_units_count_either_way():
    empty = {"w": torch.ones(3, 0, dtype=torch.bool)}
    for s in (0.0, 0.5, 1.0):
        whole_rows(empty, s)
        whole_blocks({"w": torch.ones(2, 2, 0, dtype=torch.bool)}, (1, 1), s)
    with _fails("(4 blocks hold no entries and may count either way)"):
        whole_blocks({"a": _bools([[True]]), "e": torch.ones(2, 2, 0, dtype=torch.bool)}, (1, 1), 1.0)


def test_masks_nested_names_revived_entry():
    old = {"a": _bools([[True, False], [True, True]]), "b": None}
    masks_nested({"a": _bools([[True, False], [False, True]]), "b": None}, old)
    masks_nested({"a": _bools([[True, False], [False, True]]), "b": _bools([False])}, old)
    with _fails("leaf 'a' index (0, 1): kept in the new mask but pruned in the old mask (1 entries revived)"):
        masks_nested({"a": _bools([[True, True], [True, True]]), "b": None}, old)
    with _fails("leaf 'a' index (0, 1): new mask is None (all kept) but pruned in the old mask"):
        masks_nested({"a": None, "b": None}, old)


def test_optimizer_state_zero_at_pruned_single_and_list():
    masks = {"b": None, "w": _bools([[True, False], [True, True]])}
    mu = {"b": torch.ones(2), "w": torch.tensor([[1.0, 0.0], [2.0, 3.0]])}
    nu = {"b": torch.ones(2), "w": torch.tensor([[1.0, 0.5], [2.0, 3.0]])}
    optimizer_state_zero_at_pruned(mu, masks)
    optimizer_state_zero_at_pruned([mu, {"b": None, "w": None}], masks)
    with _fails("optimizer state leaf 'w' index (0, 1): pruned entry is 0.5"):
        optimizer_state_zero_at_pruned(nu, masks)
    with _fails("optimizer state[1] leaf 'w' index (0, 1): pruned entry is 0.5"):
        optimizer_state_zero_at_pruned((mu, nu), masks)
    with _fails("optimizer state leaf 'w': buffer has shape (4,), mask has (2, 2)"):
        optimizer_state_zero_at_pruned({"b": None, "w": torch.zeros(4)}, masks)
    with _fails("neither a tree shaped like masks nor a list of such trees"):
        optimizer_state_zero_at_pruned({"w": torch.zeros(2, 2)}, masks)


# --------------------------------------------------------------------------- transformations
def _linear(params, x):
    return {"y": x @ params["w"] + params["b"], "norm": (params["w"] ** 2).sum()}


def test_vmapped_equals_loop_passes_for_pure_fn_with_none_leaves():
    stacked = {"b": torch.randn(3, 2), "skip": None, "w": torch.randn(3, 4, 2)}
    x = torch.randn(3, 5, 4)
    vmapped_equals_loop(_linear, (stacked, x), 3)
    with pytest.raises(ValueError, match=r"input 1 leaf '' has shape \(2, 5, 4\), expected leading size 3"):
        vmapped_equals_loop(_linear, (stacked, x[:2]), 3)


def test_vmapped_equals_loop_catches_hidden_state():
    """An impure function (it counts its calls) gives a different answer per loop call than under vmap."""
    calls: list[int] = []

    def counting(x):
        calls.append(1)
        return x * len(calls)

    with _fails("seed 0: leaf '<output>' index (0,): vmap gives 1, loop gives 2"):
        vmapped_equals_loop(counting, (torch.ones(2, 3),), 2)


def test_compacted_equals_masked_on_an_mlp():
    spec = models.get("mlp")
    params, state = spec.init(0, sizes=(3, 4, 2))
    masks = select.channels(tree.map(torch.abs, params), 0.5, spec.groups(params))
    kept = torch.nonzero(masks["fc1"]["bias"]).reshape(-1)
    masked = mask.apply(params, masks)
    compact = {
        "fc1": {"bias": params["fc1"]["bias"][kept], "weight": params["fc1"]["weight"][kept]},
        "fc2": {"bias": params["fc2"]["bias"], "weight": params["fc2"]["weight"][:, kept]},
    }
    x = rng.normal(1, (5, 3))
    compacted_equals_masked(spec.apply, masked, compact, state, x, atol=1e-6)
    wrong = {**compact, "fc2": {"bias": compact["fc2"]["bias"], "weight": compact["fc2"]["weight"].flip(1)}}
    with pytest.raises(
        AssertionError, match=r"leaf '<output>' index \(\d, \d\): compacted gives .*, masked gives"
    ):
        compacted_equals_masked(spec.apply, masked, wrong, state, x, atol=1e-6)


# -------------------------------------------------------------------------------- strategies
def _is_canonical(t) -> bool:
    if isinstance(t, dict):
        return list(t) == sorted(t) and all(_is_canonical(v) for v in t.values())
    return True


@given(pst.params_trees(min_prunable=2, max_leaves=5, max_depth=2))
def test_params_trees_are_canonical_and_bounded(params):
    assert isinstance(params, dict) and _is_canonical(params)
    leaves = tree.leaves(params)
    assert 2 <= len(leaves) <= 5
    assert sum(1 for x in leaves if x is not None and x.ndim >= 2) >= 2
    for path, x in zip(tree.paths(params), leaves):
        assert path.count(".") <= 1
        if x is not None:
            assert x.dtype in pst.FLOAT_DTYPES and x.ndim <= 4 and all(d <= 4 for d in x.shape)


def test_params_trees_reach_every_kind_of_leaf():
    """Over 100 draws (derandomized) the default trees hold None, every float dtype, every ndim 0–4,
    empty and size-1 leaves, and nesting depths 1 to 3."""
    seen: set = set()

    @settings(max_examples=100, derandomize=True, database=None)
    @given(pst.params_trees())
    def collect(params):
        for path, x in zip(tree.paths(params), tree.leaves(params)):
            seen.add(f"depth{path.count('.') + 1}")
            if x is None:
                seen.add("none")
                continue
            seen.update({x.dtype, f"ndim{x.ndim}"})
            seen.update({"empty"} if x.numel() == 0 else {"one"} if x.numel() == 1 else set())

    collect()
    wanted = {"none", "empty", "one", *pst.FLOAT_DTYPES, *(f"ndim{i}" for i in range(5))}
    assert wanted | {"depth1", "depth2", "depth3"} <= seen


@given(pst.shapes(min_ndim=2, max_ndim=3, max_side=8, multiple_of=(2, 4), allow_empty=False))
def test_shapes_respect_bounds_and_multiples(shape):
    assert 2 <= len(shape) <= 3 and shape[0] % 2 == 0 and shape[1] % 4 == 0
    assert all(1 <= d <= 8 for d in shape)


@given(
    pst.tensors(pst.shapes(max_ndim=2, max_side=8), torch.float32, values="distinct"),
    pst.tensors((64,), pst.dtypes(), values="ties"),
)
def test_tensors_distinct_and_tied(distinct, tied):
    assert distinct.dtype == torch.float32 and distinct.unique().numel() == distinct.numel()
    assert tied.shape == (64,) and set(tied.float().tolist()) <= {0.0, 1.0, 2.0}


@pytest.mark.parametrize("kind", pst.MASK_KINDS)
@given(data=st.data())
def test_masks_of_each_kind_are_exact(kind, data):
    params = data.draw(
        pst.params_trees(
            min_prunable=data.draw(st.integers(1, 4), label="prunable leaves"),
            leaf_shapes=pst.shapes(max_ndim=1),
            prunable_shapes=pst.shapes(  # odd sizes where the kind allows them: counts then round
                min_ndim=2,
                max_ndim=3,
                max_side=8 if kind in ("rows", "n_of_m", "block") else 5,
                multiple_of=(1, 1) if kind in ("unstructured", "layer") else (2, 4),
            ),
        ),
        label="params",
    )
    s = data.draw(pst.sparsities(), label="s")
    masks = data.draw(pst.masks(params, s, kind=kind, axis=1, block_shape=(2, 2)), label="masks")
    masks_fit_params(params, masks)
    check = {
        "unstructured": lambda: exact_sparsity(masks, s),
        "layer": lambda: exact_sparsity(masks, s, scope="layer"),
        "rows": lambda: whole_rows(masks, s, axis=1),
        "n_of_m": lambda: exact_n_of_m(masks, 2, 4, axis=1),
        "block": lambda: whole_blocks(masks, (2, 2), s),
    }
    check[kind]()


def _holds(check) -> bool:
    try:
        check()
    except AssertionError:
        return False
    return True


@given(st.data())
def test_masks_without_kind_draw_an_allowed_kind(data):
    """Without ``kind`` the masks are still exactly one of the kinds at the given sparsity."""
    params = data.draw(pst.params_trees(min_prunable=1), label="params")
    s = data.draw(pst.sparsities(), label="s")
    masks = data.draw(pst.masks(params, s), label="masks")
    masks_fit_params(params, masks)
    kinds = {
        "unstructured": lambda: exact_sparsity(masks, s),
        "layer": lambda: exact_sparsity(masks, s, scope="layer"),
        "rows": lambda: whole_rows(masks, s, axis=0),
        "n_of_m": lambda: exact_n_of_m(masks, 2, 4, axis=-1),
        "block": lambda: whole_blocks(masks, (2, 2), s),
    }
    assert any(_holds(check) for check in kinds.values())  # a check that does not fit raises too


@given(st.data())
def test_scores_tie_free_or_tied(data):
    params = data.draw(pst.params_trees(min_prunable=1), label="params")
    like = mask.ones_like(params)
    distinct = data.draw(pst.scores(like), label="distinct")
    flat = [x for x in tree.leaves(distinct) if x is not None]
    values = torch.cat([x.double().reshape(-1) for x in flat])
    assert values.unique().numel() == values.numel()
    assert [x is None for x in tree.leaves(distinct)] == [m is None for m in tree.leaves(like)]
    assert all(x.shape == m.shape for x, m in zip(flat, (m for m in tree.leaves(like) if m is not None)))
    tied = data.draw(pst.scores(like, ties=True), label="tied")
    values = torch.cat([x.double().reshape(-1) for x in tree.leaves(tied) if x is not None])
    assert set(values.tolist()) <= {0.0, 1.0, 2.0}


@given(pst.sparsities(0.2, 0.8), pst.schedules(2, 5), pst.schedules(3, 3, strict=True))
def test_sparsities_and_schedules(s, schedule, strict):
    assert 0.2 <= s <= 0.8
    assert 2 <= len(schedule) <= 5 and schedule == sorted(schedule) and all(0 <= v <= 1 for v in schedule)
    assert all(a < b for a, b in zip(strict, strict[1:]))


@given(pst.channel_nets())
def test_channel_nets_groups_fit_their_params(net):
    params, groups = net
    leaves = dict(zip(tree.paths(params), tree.leaves(params)))
    for g in groups:
        for mem in g.members:
            assert member_view(leaves[mem.path], mem, g.size).shape[0] == g.size
    ones = tree.map(lambda x: torch.ones_like(x, dtype=torch.bool), params)
    whole_channels(ones, groups, sparsity=0.0)
    assert [g.name for g in groups][-1] in ("cell", *(n for n in params if n.startswith("fc")))


@pytest.mark.parametrize("name", models.names())
def test_batches_fit_every_model(name):
    spec = models.get(name)
    params, state = spec.init(0)

    @settings(max_examples=2)
    @given(pst.batches(spec, max_size=2))
    def check(batch):
        x, y = batch
        assert 1 <= x.shape[0] <= 2 and tuple(x.shape[1:]) == tuple(spec.input_shape)
        out = spec.apply(params, state, x, train=False)[0]
        assert out.shape[: y.ndim] == y.shape and int(y.min()) >= 0 and int(y.max()) < out.shape[-1]

    check()


def test_bad_strategy_arguments():
    from hypothesis.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="min_value"):
        pst.sparsities(0.5, 0.2)

    @given(pst.masks({"w": torch.ones(2, 2)}, 0.5, kind="diagonal"))
    def draw(masks):
        raise AssertionError("unreachable: the strategy rejects the kind")

    with pytest.raises(InvalidArgument, match="kind must be one of"):
        draw()
    spec = models.get("lstm_lm")._replace(default_cfg={})
    with pytest.raises(InvalidArgument, match="names no vocabulary"):
        pst.batches(spec)


# ----------------------------------------------------------------------------------- plugin
def test_profiles_registered():
    ci, thorough = settings.get_profile("ci"), settings.get_profile("thorough")
    assert ci.max_examples == plugin.CI_EXAMPLES == 30 and thorough.max_examples == 500
    for prof in (ci, thorough):
        assert prof.deadline is None and prof.print_blob and not prof.derandomize
        assert HealthCheck.too_slow in prof.suppress_health_check
    assert plugin.scaled_examples(8) == max(1, round(8 * settings().max_examples / 30))


def test_assertrepr_compare_explains_tensors_and_trees():
    lines = plugin.pytest_assertrepr_compare(None, "==", torch.tensor([1.0, 2.0]), torch.tensor([1.0, 3.0]))
    assert lines[0] == "float32[2] min=1 max=2 [1, 2] == float32[2] min=1 max=3 [1, 3]"
    assert lines[1] == "first difference at index (1,): 2 != 3 (1 of 2 entries differ)"
    tree_lines = plugin.pytest_assertrepr_compare(None, "==", {"w": torch.ones(1)}, {"v": torch.ones(1)})
    assert tree_lines[1:] == [
        "left:",
        "  'w': float32[1] min=1 max=1 [1]",
        "right:",
        "  'v': float32[1] min=1 max=1 [1]",
    ]
    assert plugin.pytest_assertrepr_compare(None, "==", [1], [2]) is None


def test_key_fixture_is_stable_per_test(key, request):
    assert key == zlib.crc32(request.node.nodeid.encode())


_PLUGIN_PROBE = textwrap.dedent(
    """
    import torch
    from hypothesis import given, settings, strategies as st

    def test_profile():
        assert settings().max_examples == 500

    def test_tensor_compare():
        assert torch.tensor(0.5) == torch.tensor(0.25)

    @settings(max_examples=1, database=None)
    @given(st.just(torch.arange(100.0)))
    def test_falsifying_example_is_compact(x):
        assert x.sum() < 0
    """
)


def test_plugin_end_to_end(tmp_path):
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["pure_prune.testing.plugin"]\n')
    (tmp_path / "test_probe.py").write_text(_PLUGIN_PROBE)
    cmd = [sys.executable, "-m", "pytest", str(tmp_path), "-q", "-p", "no:cacheprovider", "-o", "addopts="]
    env = {**os.environ, plugin.PROFILE_ENV: "thorough"}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    out = run.stdout + run.stderr
    assert "2 failed, 1 passed" in out, out
    assert "float32[] min=0.5 max=0.5 [0.5] == float32[] min=0.25 max=0.25 [0.25]" in out
    assert "x=tensor([ 0.,  1.,  ..., 98., 99.])" in out  # the falsifying example, compact
    assert "x = tensor([ 0.,  1.,  ..., 98., 99.])" in out  # pytest's traceback too
    assert "50., 51." not in out
    env[plugin.PROFILE_ENV] = "sometimes"
    bad = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert bad.returncode == 4 and "expected one of ['ci', 'thorough']" in bad.stdout + bad.stderr


def test_importing_pure_prune_does_not_import_hypothesis_or_pytest():
    code = (
        "import sys, pure_prune, pure_prune.testing, pure_prune.select, pure_prune.mask\n"
        "bad = [m for m in ('hypothesis', 'pytest') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
