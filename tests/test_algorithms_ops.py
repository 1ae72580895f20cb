"""RoundOps (algorithms.ops): one seed or a stack of seeds behind the one interface the rounds call.

Each test names the bug it is there to catch. The last runs a whole IMP on a stack of seeds and
holds every seed to the single-seed run on its own key, exactly.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pure_prune import models, optim, rng, seeds, tree
from pure_prune.algorithms import base, imp, masking
from pure_prune.algorithms.ops import RoundOps, stack_results
from pure_prune.importance import magnitude
from pure_prune.testing import close
from pure_prune.testing import strategies as pst

SPEC = models.get("mlp")
SIZES = (8, 8, 4, 3)  # every input width divides by 4 (the 1:4 test)


def init(key: int):
    return SPEC.init(key, sizes=SIZES)


def by_magnitude(params, state, masks, key):
    return magnitude.magnitude(params, masks)


def make_ops(n: int | None = None, **kw) -> RoundOps:
    return RoundOps(optim.sgd(0.1, momentum=0.9), base.no_training, by_magnitude, seeds=n, **kw)


def stack_of(keys, struct: str = "unstructured"):
    """Stacked params, state and all-kept masks of ``init(k)`` for every ``k`` in ``keys``."""
    params, state = seeds.init_seeds(init, list(keys))
    one = [init(k)[0] for k in keys]
    masks = tree.stack([masking.initial(p, struct, SPEC.groups(p)) for p in one])
    return params, state, masks


def assert_trees_equal(got, want) -> None:
    tree.assert_same_structure(got, want, ("got", "want"))
    for path, a, b in zip(tree.paths(want), tree.leaves(got), tree.leaves(want), strict=True):
        assert (a is None and b is None) or torch.equal(a, b), path


seed_keys = st.lists(pst.keys(), min_size=1, max_size=4)


@contextlib.contextmanager
def select_calls():
    """Records the seed count of every ``seeds.select_seeds`` call (the vmapped selection)."""
    calls: list[int] = []
    real = seeds.select_seeds

    def spy(scores, *a, **kw):
        calls.append(seeds.num_seeds(scores))
        return real(scores, *a, **kw)

    seeds.select_seeds = spy
    try:
        yield calls
    finally:
        seeds.select_seeds = real


# ------------------------------------------------------------------------------------- keys


@settings(max_examples=30, deadline=None)
@given(keys=seed_keys, offset=st.integers(0, 2**40))
def test_fold_is_fold_in_of_each_seeds_own_key(keys, offset):
    """Bug caught: a stack folding seed 0's key (or the seed index) for every seed, so the seeds
    draw the same data order and controls instead of the ones of their single-seed runs."""
    ops = make_ops(len(keys))
    assert ops.fold(tuple(keys), offset) == tuple(rng.fold_in(k, offset) for k in keys)
    assert make_ops().fold(keys[0], offset) == rng.fold_in(keys[0], offset)


def test_keys_refuse_a_tuple_of_the_wrong_length():
    """Bug caught: a stack of 3 seeds given 2 keys silently running (zip truncates) or reusing
    a key, instead of saying which length it needs."""
    ops = make_ops(3)
    assert ops.keys((1, 2, 3)) == (1, 2, 3) and make_ops().keys(5) == (5,)
    for bad in ((1, 2), (1, 2, 3, 4), 7, [1, 2, 3]):
        with pytest.raises(ValueError, match="a stack of 3 seeds needs a tuple of 3 keys"):
            ops.keys(bad)
    with pytest.raises(ValueError, match="needs a tuple of 3 keys"):
        ops.fold((1, 2), 0)
    with pytest.raises(ValueError, match="needs a tuple of 3 keys"):
        ops.each(lambda x, key: x, torch.zeros(3, 2), key=(1, 2))


def test_settings_are_checked_on_construction():
    """Bug caught: a typo in ``level`` or a bool seed count accepted and failing later, far away."""
    with pytest.raises(ValueError, match="level must be 'element' or 'unit', got 'leaf'"):
        make_ops(level="leaf")
    for bad in (0, True, 2.0):
        with pytest.raises(ValueError, match="seeds must be None"):
            make_ops(bad)
    assert not make_ops().stacked and make_ops(1).stacked


# ----------------------------------------------------------------------- each, stack_results, lift


@settings(max_examples=20, deadline=None)
@given(keys=seed_keys)
def test_each_on_a_stack_is_the_per_seed_calls_stacked(keys):
    """Bug caught: ``each`` handing ``key[0]`` (or the keys in another order) to every seed, giving
    a seed another seed's slice, or not stacking the results on a leading seed axis."""
    n = len(keys)
    params, _, masks = stack_of([k % 1000 for k in keys])
    calls = []

    def fn(p, m, *, key):
        calls.append((p, m, key))
        noise = rng.normal(key, p["fc1"]["weight"].shape)
        return {"w": torch.where(m["fc1"]["weight"], p["fc1"]["weight"] + noise, 0.0), "n": 3, "b": None}

    got = make_ops(n).each(fn, params, masks, key=tuple(keys))
    assert [c[2] for c in calls] == list(keys)
    for i, (p, m, _) in enumerate(calls):
        assert_trees_equal(p, seeds.seed_slice(params, i))
        assert_trees_equal(m, seeds.seed_slice(masks, i))
    want = [fn(seeds.seed_slice(params, i), seeds.seed_slice(masks, i), key=keys[i]) for i in range(n)]
    assert got["n"] == 3 and got["b"] is None and got["w"].shape[0] == n
    assert torch.equal(got["w"], torch.stack([w["w"] for w in want]))


def test_each_on_one_seed_calls_fn_once_with_the_trees_as_they_are():
    """Bug caught: one seed's trees sliced (the first axis of a weight taken for a seed axis), or a
    ``key=`` passed to a function that takes none."""
    params, _ = init(0)
    seen = []
    out = make_ops().each(lambda p: seen.append(p) or "done", params)
    assert out == "done" and len(seen) == 1 and seen[0] is params
    assert make_ops().each(lambda p, key: (p, key), params, key=9) == (params, 9)
    stack = torch.arange(6.0).reshape(3, 2)
    assert torch.equal(make_ops(3).each(lambda x: x * 2, stack), stack * 2)  # no key: fn gets none


def test_stack_results_refuses_non_tensor_leaves_that_differ_across_seeds():
    """Bug caught: a per-seed host value (a count, a flag) silently reduced to seed 0's value."""
    a, b = torch.ones(2), torch.zeros(2)
    got = stack_results([{"t": a, "n": 4, "f": True, "z": None}, {"t": b, "n": 4, "f": True, "z": None}])
    assert torch.equal(got["t"], torch.stack([a, b])) and got["n"] == 4 and got["f"] is True
    assert got["z"] is None
    with pytest.raises(ValueError, match="seed 1 returned 5 where seed 0 returned 4"):
        stack_results([{"t": a, "n": 4}, {"t": b, "n": 5}])
    with pytest.raises(ValueError, match="seed 2 returned False where seed 0 returned True"):
        stack_results([(a, True), (a, True), (b, False)])
    with pytest.raises(ValueError, match="not a tensor to stack"):  # the same through each
        make_ops(2).each(lambda x: int(x.sum()), torch.tensor([[1.0], [2.0]]))


def test_lift_maps_over_the_seeds_and_is_the_identity_for_one_seed():
    """Bug caught: ``lift`` sharing seed 0's tensors with every seed (in_dims=None) or returning a
    vmapped function for one seed (a weight's first axis taken for seeds)."""

    def f(p, x):
        return p["fc1"]["weight"] @ x

    assert make_ops().lift(f) is f
    params, _, _ = stack_of([1, 2, 3])
    x = rng.normal(4, (3, SIZES[0]))
    got = make_ops(3).lift(f)(params, x)
    want = torch.stack([f(seeds.seed_slice(params, i), x[i]) for i in range(3)])
    close.assert_close(got, want, 1e-6)
    assert make_ops(2).to_host(torch.tensor([0.5, 0.25])) == [0.5, 0.25] and make_ops().to_host(0.5) == 0.5


# ----------------------------------------------------------------------------------- prune


@settings(max_examples=20, deadline=None)
@given(
    keys=seed_keys,
    first=pst.sparsities(0.0, 0.6),
    target=pst.sparsities(0.0, 0.95),
    scope=st.sampled_from(["global", "layer"]),
)
def test_unstructured_prune_on_a_stack_equals_each_seeds_prune_to(keys, first, target, scope):
    """Bug caught: the vmapped selection ranking the whole stack as one (seeds sharing one
    threshold), dropping the current masks (pruned entries revived), or rounding ``s·N`` another
    way than ``masking.prune_to``."""
    n = len(keys)
    params, state, ones = stack_of([k % 1000 for k in keys])
    ops = make_ops(n)
    scores = by_magnitude(params, state, ones, 0)
    masks = ops.each(
        lambda s, m: masking.prune_to(s, first, struct="unstructured", masks=m, scope=scope), scores, ones
    )
    with select_calls() as calls:
        got = ops.prune(scores, target, masks, scope=scope)
    assert calls == [n]  # the vmapped path, once for the whole stack
    for i in range(n):
        s_i, m_i = seeds.seed_slice(scores, i), seeds.seed_slice(masks, i)
        want = masking.prune_to(s_i, target, struct="unstructured", masks=m_i, scope=scope)
        assert_trees_equal(seeds.seed_slice(got, i), want)


@pytest.mark.parametrize(
    ("struct", "level", "scope"),
    [
        ("rows", "element", "global"),
        ("channels", "element", "layer"),
        ("channels", "unit", "global"),
        ("nm", "element", "global"),
    ],
)
def test_structured_prune_on_a_stack_equals_each_seeds_prune_to(struct, level, scope):
    """Bug caught: a structured (or unit-level) stack sent down the unstructured vmapped path, the
    ops' ``level`` or the ``groups``/``nm`` not passed on to ``masking.prune_to``."""
    keys = (5, 6, 7)
    params, state, masks = stack_of(keys, "channels" if struct == "channels" else "unstructured")
    groups = SPEC.groups(seeds.seed_slice(params, 0))
    ops = make_ops(3, level=level)
    if level == "unit":
        scores = {g.name: rng.uniform(k, (3, g.size)) for k, g in enumerate(groups)}
    else:
        scores = by_magnitude(params, state, masks, 0)
    with select_calls() as calls:
        got = ops.prune(scores, 0.5, masks, struct=struct, scope=scope, groups=groups, nm=(1, 4))
    assert calls == []
    for i in range(3):
        want = masking.prune_to(
            seeds.seed_slice(scores, i),
            0.5,
            struct=struct,
            masks=seeds.seed_slice(masks, i),
            groups=groups,
            scope=scope,
            level=level,
            nm=(1, 4),
        )
        assert_trees_equal(seeds.seed_slice(got, i), want)
    one = make_ops(level=level).prune(
        seeds.seed_slice(scores, 1),
        0.5,
        seeds.seed_slice(masks, 1),
        struct=struct,
        scope=scope,
        groups=groups,
        nm=(1, 4),
    )
    assert_trees_equal(one, seeds.seed_slice(got, 1))  # one seed: the same masks


# --------------------------------------------------------------------- optimizer state, init


@pytest.mark.parametrize("count", [0, 14])
def test_fresh_opt_state_sets_the_count_for_one_seed_and_every_seed(count):
    """Bug caught: the stacked state dropping ``count`` (the learning-rate schedule restarting at
    0 after a rewind) or keeping momentum from the trained weights."""
    opt = optim.sgd(0.1, momentum=0.9)
    params, _, _ = stack_of([1, 2])
    got = make_ops(2).fresh_opt_state(params, count)
    assert got["count"].tolist() == [count, count] and got["count"].dtype == torch.int64
    for i in range(2):
        assert_trees_equal(
            seeds.seed_slice(got, i), base.fresh_opt_state(opt, seeds.seed_slice(params, i), count)
        )
    one = make_ops().fresh_opt_state(init(1)[0], count)
    assert int(one["count"]) == count and one["count"].ndim == 0
    assert all(float(m.abs().sum()) == 0.0 for m in tree.leaves(one["momentum"]))
    if count == 0:
        assert_trees_equal(make_ops().fresh_opt_state(init(1)[0]), one)  # the default count is 0


def test_initialise_without_init_raises_a_clear_value_error():
    """Bug caught: ``control='reinit'`` without ``init=`` failing as "'NoneType' object is not
    callable" deep in a round instead of naming what to pass."""
    for ops, key in ((make_ops(), 3), (make_ops(2), (3, 4))):
        with pytest.raises(ValueError, match=r"control 'reinit'\): build RoundOps with init="):
            ops.initialise(key)
    assert_trees_equal(make_ops(init=init).initialise(3), init(3))
    assert_trees_equal(make_ops(2, init=init).initialise((3, 4)), seeds.init_seeds(init, [3, 4]))


def test_scores_without_a_score_fn_raise_a_clear_value_error():
    """Bug caught: a scoring round run with ``score=None`` failing as a ``NoneType`` call."""
    ops = RoundOps(optim.sgd(0.1), base.no_training)
    params, state = init(0)
    with pytest.raises(ValueError, match="build RoundOps with score="):
        ops.scores(params, state, masking.initial(params), 0)


# --------------------------------------------------------------- a whole method on a stack


@pytest.mark.parametrize("control", imp.CONTROLS)
def test_imp_on_a_stack_of_seeds_equals_each_seeds_single_run(control):
    """Bug caught: any of the above inside a real method: seed ``i`` of a stacked IMP (2 rounds,
    no training, magnitude scores) making other choices than the single-seed IMP on ``key[i]``
    (its masks, random-mask control and fresh weights are compared exactly)."""
    keys = (3, 11, 29)
    s = imp.Settings(rate=0.4, rounds=2, control=control)
    params, state, masks = stack_of(keys)
    stacked = imp.run(params, state, masks, s, ops=make_ops(3, init=init), key=keys)
    assert len(stacked.masks) == 3
    for i, k in enumerate(keys):
        p, st_ = init(k)
        single = imp.run(p, st_, masking.initial(p), s, ops=make_ops(init=init), key=k)
        for got, want in zip(stacked.masks, single.masks, strict=True):
            assert_trees_equal(seeds.seed_slice(got, i), want)
        assert_trees_equal(seeds.seed_slice(stacked.carry.params, i), single.carry.params)
        assert_trees_equal(seeds.seed_slice(stacked.carry.opt_state, i), single.carry.opt_state)
        assert_trees_equal(seeds.seed_slice(stacked.carry.rewind, i), single.carry.rewind)
