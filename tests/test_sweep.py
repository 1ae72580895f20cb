"""pure_prune.seeds: stacked seeds under vmap equal the loop over single seeds.

The central property (issue "vmap'd multi-seed sweeps"): for 4 seeds over 50 steps of a conv +
BatchNorm model with a pruning step in between, the vmapped run equals the loop of single-seed
runs. Also: exact per-seed selection under vmap, init/opt-state/batches equal their single-seed
versions, chunking and the out-of-memory fallback, scoring by vmap or loop. (Whole pipelines over
stacked seeds are the run loop's: tests/test_runner_seeds.py, tests/test_grid.py.)
"""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pure_prune import batching, losses, mask, optim, rng, seeds, seeds_steps, seeds_vmap, select, train, tree
from pure_prune.app import data
from pure_prune.importance import magnitude, registry
from pure_prune.models import layers, mlp
from pure_prune.testing import close, exact_sparsity, vmapped_equals_loop
from pure_prune.testing import strategies as pst
from pure_prune.testing.plugin import scaled_examples


# ------------------------------------------------------------------------------------ helpers
def tiny_init(key: int, channels: int = 4) -> tuple[dict, dict]:
    """A conv (1 -> channels, 3x3) + BatchNorm + ReLU + global pool + linear (channels -> 10) net."""
    k_conv, k_fc = rng.split(key, 2)
    bn_params, bn_state = layers.batch_norm_init(channels)
    params = {
        "bn": bn_params,
        "conv": layers.dense_init(k_conv, (channels, 1, 3, 3)),
        "fc": layers.dense_init(k_fc, (10, channels)),
    }
    return tree.canonical(params), {"bn": bn_state}


def tiny_apply(params: dict, state: dict, x: torch.Tensor, *, train: bool) -> tuple[torch.Tensor, dict]:
    """Logits ``(N, 10)`` of ``x (N, 1, H, W)`` and the new BatchNorm state."""
    h = layers.conv2d(x, params["conv"]["weight"], params["conv"]["bias"], padding=1)
    h, bn_state = layers.batch_norm(h, params["bn"], state["bn"], train=train)
    h = layers.global_avg_pool(torch.relu(h))
    return layers.linear(h, params["fc"]["weight"], params["fc"]["bias"]), {"bn": bn_state}


TINY = SimpleNamespace(apply=tiny_apply, groups=lambda params: ())
MLP_SIZES = (8, 6, 3)


def mlp_init(key: int) -> tuple[dict, dict]:
    return mlp.init(key, sizes=MLP_SIZES)


def mlp_data(key: int, n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    k_x, k_y = rng.split(key, 2)
    x = rng.normal(k_x, (n, MLP_SIZES[0]))
    y = torch.randint(0, MLP_SIZES[-1], (n,), generator=rng.generator(k_y))
    return x, y


def assert_tree_close(a, b, rtol: float = 1e-5, per_leaf: bool = True) -> None:
    """Trees within ``rtol`` of each leaf's magnitude, or of the whole tree's (``per_leaf=False``,
    for trained trees); integer and bool leaves equal; ``rtol=0`` means equal."""
    close.assert_trees_close(a, b, rtol, per_leaf=per_leaf)


def assert_seed_equals(stacked, singles, **tol) -> None:
    """Seed ``i`` of ``stacked`` is close to ``singles[i]`` for every ``i``."""
    if any(x is not None for x in tree.leaves(stacked)):
        assert seeds.num_seeds(stacked) == len(singles)
    for i, single in enumerate(singles):
        assert_tree_close(seeds.seed_slice(stacked, i), single, **tol)


# -------------------------------------------------------------------- the central property
@settings(max_examples=scaled_examples(1), deadline=None)
@given(keys=st.lists(pst.keys(), min_size=4, max_size=4, unique=True), sparsity=st.floats(0.2, 0.9))
def test_vmapped_run_equals_loop_with_batchnorm_and_pruning(keys, sparsity):
    """4 seeds, 25 steps, magnitude pruning (per-seed global), fresh momentum, 25 more steps."""
    x = rng.normal(1, (128, 1, 6, 6))
    y = torch.randint(0, 10, (128,), generator=rng.generator(2))
    opt = optim.sgd(0.1, momentum=0.9)

    def epochs(batches_of_epoch):
        return (b for e in range(7) for b in batches_of_epoch(e))

    step = seeds.make_seed_step(TINY, losses.cross_entropy, opt, per_seed_batches=True, compile=False)
    params, state = seeds.init_seeds(tiny_init, keys)
    masks = seeds.masks_like_seeds(params)
    opt_state = seeds.init_opt_seeds(opt, params)
    it = epochs(lambda e: seeds.seed_batches((x, y), 16, keys, e))
    for _ in range(25):
        params, state, opt_state, _ = step(params, state, opt_state, masks, next(it))
    scores = seeds.score_seeds("magnitude", TINY, params, state, masks, keys=keys)
    masks = seeds.select_seeds(scores, sparsity, masks=masks)
    params = mask.apply(params, masks)
    opt_state = seeds.init_opt_seeds(opt, params)
    for _ in range(25):
        params, state, opt_state, metrics = step(params, state, opt_state, masks, next(it))

    single = train.make_step(tiny_apply, losses.cross_entropy, opt, compile=False)
    loop = []
    for k in keys:
        p, s = tiny_init(k)
        m = mask.ones_like(p)
        o = opt.init(p)
        it1 = epochs(lambda e, k=k: batching.batches(x, y, 16, key=batching.epoch_key(k, e)))
        for _ in range(25):
            p, s, o, _ = single(p, s, o, m, next(it1))
        m = select.unstructured(magnitude.magnitude(p, m), sparsity, masks=m)
        p = mask.apply(p, m)
        o = opt.init(p)
        for _ in range(25):
            p, s, o, _ = single(p, s, o, m, next(it1))
        loop.append((p, s, o, m))
    assert_seed_equals(masks, [m for *_, m in loop])  # exact: bool leaves compare with equal
    assert_seed_equals(params, [p for p, *_ in loop], rtol=1e-4, per_leaf=False)
    assert_seed_equals(state, [s for _, s, *_ in loop], rtol=1e-4, per_leaf=False)
    assert_seed_equals(opt_state, [o for *_, o, _ in loop], rtol=1e-4, per_leaf=False)
    assert metrics["loss"].shape == (4,)
    for i in range(4):
        exact_sparsity(seeds.seed_slice(masks, i), sparsity)


# ------------------------------------------------------------------------- stacked trees
def test_init_seeds_equals_single_inits_exactly():
    keys = [3, 1, 4]
    params, state = seeds.init_seeds(tiny_init, keys)
    assert params["conv"]["weight"].shape == (3, 4, 1, 3, 3)
    assert state["bn"]["running_var"].shape == (3, 4)
    for i, k in enumerate(keys):
        p, s = tiny_init(k)
        for a, b in zip(tree.leaves(seeds.seed_slice(params, i)), tree.leaves(p)):
            assert torch.equal(a, b)
        for a, b in zip(tree.leaves(seeds.seed_slice(state, i)), tree.leaves(s)):
            assert torch.equal(a, b)
    p_mlp, s_mlp = seeds.init_seeds(mlp_init, [7, 8])
    assert s_mlp == {} and seeds.num_seeds(p_mlp) == 2
    assert not torch.equal(p_mlp["fc1"]["weight"][0], p_mlp["fc1"]["weight"][1])  # keys differ, values differ


def test_init_seeds_rejects_bad_input():
    with pytest.raises(ValueError, match="non-empty sequence"):
        seeds.init_seeds(tiny_init, [])
    with pytest.raises(ValueError, match=r"keys\[1\]"):
        seeds.init_seeds(tiny_init, [1, -2])
    with pytest.raises(TypeError, match=r"keys\[0\]"):
        seeds.init_seeds(tiny_init, [1.5])
    with pytest.raises(TypeError, match="must return"):
        seeds.init_seeds(lambda k: {"w": torch.zeros(2)}, [1])


def test_stack_and_unstack_are_the_tree_helpers():
    assert seeds.stack is tree.stack and seeds.unstack is tree.unstack
    a, b = {"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, 4.0])}
    stacked = seeds.stack([a, b])
    assert torch.equal(stacked["w"], torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert torch.equal(seeds.unstack(stacked)[1]["w"], b["w"])


def test_num_seeds_and_seed_slice_name_the_bad_leaf():
    t = {"a": torch.zeros(3, 2), "b": None, "c": torch.zeros(3)}
    assert seeds.num_seeds(t) == 3
    assert torch.equal(seeds.seed_slice(t, -1)["a"], torch.zeros(2)) and seeds.seed_slice(t, 0)["b"] is None
    with pytest.raises(ValueError, match="'c' has 2 seeds on axis 0, but 'a' has 3"):
        seeds.num_seeds({"a": torch.zeros(3, 2), "c": torch.zeros(2)})
    with pytest.raises(ValueError, match="'s' is 0-d"):
        seeds.num_seeds({"s": torch.zeros(())})
    with pytest.raises(ValueError, match="no tensor leaf"):
        seeds.num_seeds({"a": None})
    with pytest.raises(ValueError, match="seed index"):
        seeds.seed_slice(t, 3)


def test_masks_like_seeds_decides_prunability_per_seed():
    params, _ = seeds.init_seeds(mlp_init, [1, 2])
    masks = seeds.masks_like_seeds(params)
    single = mask.ones_like(mlp_init(1)[0])
    for leaf, one in zip(tree.leaves(masks), tree.leaves(single)):
        assert (leaf is None) == (one is None)  # biases (2, out) are still dense leaves
        if leaf is not None:
            assert leaf.shape == (2, *one.shape) and leaf.dtype == torch.bool and bool(leaf.all())
    excluded = seeds.masks_like_seeds(params, exclude_paths=("fc2.*",))
    assert excluded["fc2"]["weight"] is None and excluded["fc1"]["weight"] is not None


def test_init_opt_seeds_equals_single_inits():
    params, _ = seeds.init_seeds(mlp_init, [1, 2])
    for opt in (optim.sgd(0.1, momentum=0.9), optim.adam(1e-3)):
        stacked = seeds.init_opt_seeds(opt, params)
        assert stacked["count"].shape == (2,)
        assert_seed_equals(stacked, [opt.init(p) for p in tree.unstack(params)], rtol=0)
    with pytest.raises(TypeError, match="optim.Optimizer"):
        seeds.init_opt_seeds(object(), params)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(2, 30),
    batch_size=st.integers(1, 6),
    seeds_=st.integers(1, 4),
    gather_batches=st.integers(1, 5),
    epoch=st.integers(0, 5),
)
def test_seed_batches_gathered_in_chunks_equal_indexing_each_seed(
    n, batch_size, seeds_, gather_batches, epoch
):
    """Seed ``i`` of stacked batch ``j`` is ``x[order_i[j*B:(j+1)*B]]`` (``order_i`` its epoch's
    permutation), whatever the number of batches one gather copies, and each stacked batch is
    contiguous: the bug it names is a chunk laid out (seed, batch) where it should be (batch, seed),
    which hands one seed another's rows."""
    batch_size = min(batch_size, n)
    x, y = torch.randn(n, 3), torch.arange(n)
    keys = list(range(7, 7 + seeds_))
    budget = gather_batches * batch_size * seeds_ * (3 * 4 + 8)
    with mock.patch.object(batching, "GATHER_BYTES", budget):
        got = list(seeds.seed_batches((x, y), batch_size, keys, epoch))
    assert len(got) == n // batch_size
    for i, k in enumerate(keys):
        order = torch.randperm(n, generator=rng.generator(batching.epoch_key(k, epoch)))
        for j, (xs, ys) in enumerate(got):
            idx = order[j * batch_size : (j + 1) * batch_size]
            assert torch.equal(xs[i], x[idx]) and torch.equal(ys[i], y[idx])
            assert xs.is_contiguous() and ys.is_contiguous()


def test_seed_batches_equal_single_seed_batches():
    x, y = mlp_data(5, n=26)
    keys = [4, 9, 2]
    for epoch in (0, 3):
        got = list(seeds.seed_batches((x, y), 8, keys, epoch))
        assert len(got) == 3  # 26 // 8 full batches
        for i, k in enumerate(keys):
            want = list(batching.batches(x, y, 8, key=batching.epoch_key(k, epoch)))
            for (xs, ys), (xw, yw) in zip(got, want):
                assert xs.shape == (3, 8, MLP_SIZES[0]) and ys.shape == (3, 8)
                assert torch.equal(xs[i], xw) and torch.equal(ys[i], yw)
    ds = data.load("digits")
    xb, yb = next(seeds.seed_batches((ds.x_train, ds.y_train), 4, [1], 0))
    assert xb.shape == (1, 4, 64)
    with pytest.raises(ValueError, match="batch_size"):
        seeds.seed_batches((x, y), 0, keys, 0)
    with pytest.raises(ValueError, match="epoch"):
        seeds.seed_batches((x, y), 8, keys, -1)
    with pytest.raises(TypeError, match=r"a pair \(x, y\) of tensors"):
        seeds.seed_batches([x, y], 8, keys, 0)
    with pytest.raises(TypeError, match=r"a pair \(x, y\) of tensors, got Dataset"):
        seeds.seed_batches(ds, 8, keys, 0)


# ------------------------------------------------------------------------- steps and chunks
def _mlp_setup(n_seeds: int = 5):
    keys = list(range(10, 10 + n_seeds))
    params, state = seeds.init_seeds(mlp_init, keys)
    masks = seeds.masks_like_seeds(params)
    scores = magnitude.magnitude(params, masks)
    masks = seeds.select_seeds(scores, 0.5, masks=masks)
    params = mask.apply(params, masks)
    return keys, params, state, masks


def test_step_shared_and_per_seed_batches_equal_single_steps():
    opt = optim.sgd(0.05, momentum=0.9, weight_decay=1e-3)
    keys, params, state, masks = _mlp_setup(3)
    opt_state = seeds.init_opt_seeds(opt, params)
    x, y = mlp_data(1)
    single = train.make_step(mlp.apply, losses.cross_entropy, opt, compile=False)
    shared = seeds.make_seed_step(mlp, losses.cross_entropy, opt, per_seed_batches=False, compile=False)
    per_seed = seeds.make_seed_step(mlp, losses.cross_entropy, opt, per_seed_batches=True, compile=False)
    assert not shared.per_seed_batches and per_seed.per_seed_batches
    xs, ys = torch.stack([x, x.flip(0), 2 * x]), torch.stack([y, y.flip(0), y])
    for step, batch, batch_of in (
        (shared, (x, y), lambda i: (x, y)),
        (per_seed, (xs, ys), lambda i: (xs[i], ys[i])),
    ):
        out = step(params, state, opt_state, masks, batch)
        want = [
            single(
                seeds.seed_slice(params, i),
                {},
                seeds.seed_slice(opt_state, i),
                seeds.seed_slice(masks, i),
                batch_of(i),
            )
            for i in range(3)
        ]
        for j in range(4):
            assert_seed_equals(out[j], [w[j] for w in want])
    dense = shared(params, state, opt_state, None, (x, y))  # masks=None: dense training
    assert dense[3]["accuracy"].shape == (3,)


def test_seed_step_of_maps_any_single_step_over_the_seeds():
    """A straight-through step (dense update, masked forward) and RSST's penalized step, vmapped."""
    from pure_prune.algorithms import dst, rsst

    _, params, state, masks = _mlp_setup(3)
    x, y = mlp_data(2)
    xs, ys = torch.stack([x, x.flip(0), 2 * x]), torch.stack([y, y.flip(0), y])
    pen = rsst.penalized(optim.sgd(0.05, momentum=0.9))
    chosen = [tree.map(lambda m: None if m is None else ~m, seeds.seed_slice(masks, i)) for i in range(3)]
    pen_states = [
        rsst.set_penalty(pen.init(seeds.seed_slice(params, i)), chosen[i], lambda t, i=i: 0.1 * (t + i), 4)
        for i in range(3)
    ]
    ste_opt = optim.sgd(0.05, momentum=0.9)
    cases = (
        (dst.make_ste_step(mlp, losses.cross_entropy, ste_opt, compile=False), [ste_opt.init(p) for p in tree.unstack(params, 3)]),
        (train.make_step(mlp, losses.cross_entropy, pen, compile=False), pen_states),
    )  # fmt: skip
    for single, states in cases:
        step = seeds.seed_step_of(single, per_seed_batches=True, compile=False)
        opt_state = tree.stack(states)
        out = step(params, state, opt_state, masks, (xs, ys))
        for _ in range(2):  # a second step reads the stepped states (penalty table, momentum)
            out = step(out[0], out[1], out[2], masks, (xs, ys))
        for i in range(3):
            p, s, o, m = seeds.seed_slice(params, i), {}, states[i], seeds.seed_slice(masks, i)
            for _ in range(3):
                p, s, o, _ = single(p, s, o, m, (xs[i], ys[i]))
            assert_tree_close(seeds.seed_slice(out[0], i), p)
            assert_tree_close(seeds.seed_slice(out[2], i), o)
    with pytest.raises(TypeError, match="step must be a train step function"):
        seeds.seed_step_of(None, per_seed_batches=True)
    with pytest.raises(TypeError, match="per_seed_batches must be True or False"):
        seeds.seed_step_of(cases[0][0], per_seed_batches=1)


def test_step_rejects_inconsistent_input():
    opt = optim.sgd(0.05)
    _, params, state, masks = _mlp_setup(3)
    opt_state = seeds.init_opt_seeds(opt, params)
    x, y = mlp_data(1)
    per_seed = seeds.make_seed_step(mlp, losses.cross_entropy, opt, per_seed_batches=True, compile=False)
    with pytest.raises(ValueError, match=r"per-seed batch\[0\] must have the 3 seeds"):
        per_seed(params, state, opt_state, masks, (x, y))
    other = seeds.init_opt_seeds(opt, tree.map(lambda p: p[:2], params))
    with pytest.raises(ValueError, match="opt_state has 2 seeds but params has 3"):
        per_seed(params, state, other, masks, (x[None].expand(3, -1, -1), y[None].expand(3, -1)))
    with pytest.raises(TypeError, match="per_seed_batches must be True or False"):
        seeds.make_seed_step(mlp, losses.cross_entropy, opt, per_seed_batches=None, compile=False)
    with pytest.raises(ValueError, match="chunk_size"):
        seeds.make_seed_step(mlp, losses.cross_entropy, opt, per_seed_batches=True, chunk_size=0)


def test_step_checks_again_when_the_layout_or_the_mask_tensors_change():
    """The stacked trees are checked once per layout: a good call after good calls skips the
    check, but a call whose masks no longer fit (new mask tensors, or another seed count in a
    tree) is refused as on a first call; in-place edits of the masks reach the compiled step."""
    opt = optim.sgd(0.05)
    _, params, state, masks = _mlp_setup(3)
    opt_state = seeds.init_opt_seeds(opt, params)
    x, y = mlp_data(1)
    batch = (x[None].expand(3, -1, -1), y[None].expand(3, -1))
    step = seeds.make_seed_step(mlp, losses.cross_entropy, opt, per_seed_batches=True, compile=False)
    for _ in range(2):
        step(params, state, opt_state, masks, batch)
    bad = tree.map(lambda m: None if m is None else m[:, :1], masks)  # masks of the wrong shape
    with pytest.raises(ValueError, match=r"mask 'fc1.weight' has shape \(3, 1, 8\), param has"):
        step(params, state, opt_state, bad, batch)
    other = seeds.init_opt_seeds(opt, tree.map(lambda p: p[:2], params))
    with pytest.raises(ValueError, match="opt_state has 2 seeds but params has 3"):
        step(params, state, other, masks, batch)
    step(params, state, opt_state, masks, batch)  # good again
    compiled = seeds.make_seed_step(
        mlp, losses.cross_entropy, opt, per_seed_batches=True, compile=True, backend="eager"
    )
    compiled(params, state, opt_state, masks, batch)
    for m in tree.leaves(masks):
        if m is not None:
            m.fill_(False)  # in place: the uint8 views the step keeps see it
    new_params = compiled(params, state, opt_state, masks, batch)[0]
    assert all(
        bool((p == 0).all()) for p, m in zip(tree.leaves(new_params), tree.leaves(masks)) if m is not None
    )


def test_chunked_step_equals_unchunked():
    opt = optim.adam(1e-2)
    _, params, state, masks = _mlp_setup(5)
    opt_state = seeds.init_opt_seeds(opt, params)
    x, y = mlp_data(3)
    batch = (x[None].expand(5, -1, -1), y[None].expand(5, -1))
    whole = seeds.make_seed_step(mlp, losses.cross_entropy, opt, per_seed_batches=True, compile=False)
    chunked = seeds.make_seed_step(
        mlp, losses.cross_entropy, opt, per_seed_batches=True, compile=False, chunk_size=2
    )
    a, b = whole(params, state, opt_state, masks, batch), chunked(params, state, opt_state, masks, batch)
    assert_tree_close(a, b, rtol=1e-6)
    assert chunked.chunk_size == 2 and whole.chunk_size is None


def test_fit_seeds_in_place_equals_the_pure_step_and_retries_its_first_step_on_fresh_copies():
    """``fit_seeds`` with a compiled seed step runs it in place on copies of its own: params,
    optimizer state and history equal those of the step returning new trees (bit for bit), and the
    caller's trees are not written. When the first in-place step runs out of memory after writing
    into its arguments, the chunk is halved and the step run again on fresh copies; a later
    out-of-memory error propagates."""
    opt = optim.sgd(0.05, momentum=0.9)
    _, params, state, masks = _mlp_setup(5)
    opt_state = seeds.init_opt_seeds(opt, params)
    x, y = mlp_data(3)
    batches = [(x[None, i : i + 4].expand(5, -1, -1), y[None, i : i + 4].expand(5, -1)) for i in (0, 4)]
    before = tree.map(torch.clone, (params, opt_state))
    kw = dict(per_seed_batches=True, compile=True, backend="aot_eager")
    step = seeds.make_seed_step(mlp, losses.cross_entropy, opt, **kw)
    pure = seeds.make_seed_step(mlp, losses.cross_entropy, opt, per_seed_batches=True, compile=False)
    assert callable(step.in_place) and pure.in_place is None
    got = seeds.fit_seeds(step, params, state, opt_state, masks, lambda e: batches, 2)
    want = seeds.fit_seeds(pure, params, state, opt_state, masks, lambda e: batches, 2)
    for a, b in zip(tree.leaves((got.params, got.opt_state)), tree.leaves((want.params, want.opt_state))):
        assert torch.equal(a, b)
    assert got.history == want.history
    assert all(torch.equal(a, b) for a, b in zip(tree.leaves((params, opt_state)), tree.leaves(before)))

    calls: list[int] = []
    fail_call = [0]  # also fail the call with this number (1-based)

    def flaky(p, s, o, m, b):  # writes garbage into its arguments, then runs out of memory
        n = seeds.num_seeds(p)
        calls.append(n)
        if n > 2 or len(calls) == fail_call[0]:
            for leaf in tree.leaves(p):
                leaf.fill_(7.0)
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB")
        return train.in_place_body(vmapped)(p, s, o, m, b)

    def vmapped(p, s, o, m, b):
        return pure(p, s, o, m, b)

    seeded = (True, True, True, True, True)
    odd = seeds_steps.SeedStep(vmapped, seeded, None, opt_state=True, in_place_fn=flaky)
    with pytest.warns(
        RuntimeWarning, match="out of memory with a chunk of 5 seeds; retrying with chunks of 2"
    ):
        again = seeds.fit_seeds(odd, params, state, opt_state, masks, lambda e: batches[:1], 1)
    assert calls[:2] == [5, 2] and odd.chunk_size == 2
    one_step = seeds.fit_seeds(pure, params, state, opt_state, masks, lambda e: batches[:1], 1)
    assert all(torch.equal(a, b) for a, b in zip(tree.leaves(again.params), tree.leaves(one_step.params)))
    calls.clear()
    fail_call[0] = 4  # chunks of 2, 2, 1: the first call of the second step
    with pytest.raises(RuntimeError, match="can't allocate"):
        seeds.fit_seeds(odd, params, state, opt_state, masks, lambda e: batches, 2)
    assert calls == [2, 2, 1, 2] and odd.chunk_size == 2


def test_is_oom_by_hand():
    assert seeds_vmap.is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert seeds_vmap.is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 9 GB"))
    assert seeds_vmap.is_oom(RuntimeError("CUDA error: out of memory"))
    assert not seeds_vmap.is_oom(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not seeds_vmap.is_oom(ValueError("out of memory"))  # only runtime errors


def _fake_allocating_fn(
    limit: int, calls: list[int], message: str = "DefaultCPUAllocator: can't allocate memory"
):
    def fn(x: torch.Tensor, shared: torch.Tensor) -> dict:
        calls.append(x.shape[0])
        if x.shape[0] > limit:
            raise RuntimeError(f"{message}: you tried to allocate {x.shape[0]} GB")
        return {"y": x * shared, "none": None}

    return fn


def test_run_chunked_halves_on_out_of_memory_and_keeps_the_smaller_chunk():
    x, shared = torch.arange(10.0).reshape(5, 2), torch.tensor([2.0, 3.0])
    calls: list[int] = []
    with pytest.warns(RuntimeWarning, match="out of memory with a chunk of 5 seeds.*chunks of 2"):
        out, size = seeds.run_chunked(_fake_allocating_fn(2, calls), (x, shared), (True, False), None)
    assert torch.equal(out["y"], x * shared) and out["none"] is None
    assert size == 2 and calls == [5, 2, 2, 1]
    fn = seeds.SeedFn(_fake_allocating_fn(3, []), (True, False), chunk_size=4)
    with pytest.warns(RuntimeWarning, match="chunk of 4 seeds"):
        assert torch.equal(fn(x, shared)["y"], x * shared)
    assert fn.chunk_size == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the kept chunk fits: no second warning
        fn(x, shared)


def test_run_chunked_reraises_other_errors_and_oom_at_one_seed():
    x, shared = torch.ones(4, 2), torch.ones(2)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        seeds.run_chunked(_fake_allocating_fn(0, [], "shape mismatch"), (x, shared), (True, False), None)
    with pytest.raises(RuntimeError, match="can't allocate"), pytest.warns(RuntimeWarning):
        seeds.run_chunked(_fake_allocating_fn(0, []), (x, shared), (True, False), None)
    with pytest.raises(ValueError, match="seeded has 1 entries for 2 args"):
        seeds.run_chunked(_fake_allocating_fn(9, []), (x, shared), (True,), None)
    with pytest.raises(ValueError, match="args\\[1\\] has 3 seeds but args\\[0\\] has 4"):
        seeds.run_chunked(_fake_allocating_fn(9, []), (x, torch.ones(3, 2)), (True, True), None)


def test_over_seeds_passes_none_leaves_and_shared_arguments():
    def fn(p: dict, scale: torch.Tensor) -> dict:
        return {"a": p["w"].sum() * scale, "b": None, "c": p["w"] + 1}

    stacked = {"w": torch.arange(6.0).reshape(3, 2)}
    out = seeds.over_seeds(fn, (True, False), chunk_size=2)(stacked, torch.tensor(2.0))
    assert torch.equal(out["a"], torch.tensor([2.0, 10.0, 18.0])) and out["b"] is None
    assert torch.equal(out["c"], stacked["w"] + 1)
    with pytest.raises(TypeError, match="expected 2 arguments"):
        seeds.over_seeds(fn, (True, False))(stacked)


def test_evaluate_and_fit_equal_single_seed_versions():
    opt = optim.sgd(0.05, momentum=0.9)
    keys, params, state, masks = _mlp_setup(2)
    x, y = mlp_data(4)
    step = seeds.make_seed_step(mlp, losses.cross_entropy, opt, per_seed_batches=True, compile=False)
    res = seeds.fit_seeds(
        step, params, state, seeds.init_opt_seeds(opt, params), masks,
        lambda e: seeds.seed_batches((x, y), 8, keys, e), 2,
    )  # fmt: skip
    single = train.make_step(mlp.apply, losses.cross_entropy, opt, compile=False)
    eval_single = train.make_eval_step(mlp.apply, losses.cross_entropy, compile=False)
    eval_seeds = seeds.make_seed_eval_step(mlp, losses.cross_entropy, per_seed_batches=False, compile=False)
    got = seeds.evaluate_seeds(eval_seeds, res.params, res.state, masks, [(x[:10], y[:10]), (x[10:], y[10:])])
    assert got["count"] == 24
    for i, k in enumerate(keys):
        p, m = seeds.seed_slice(params, i), seeds.seed_slice(masks, i)
        fit = train.fit(
            single, p, {}, opt.init(p), m, lambda e, k=k: batching.batches(x, y, 8, key=batching.epoch_key(k, e)), 2,
            progress=False,
        )  # fmt: skip
        assert_tree_close(seeds.seed_slice(res.params, i), fit.params)
        for e in range(2):
            for name in ("accuracy", "loss"):
                assert math.isclose(res.history[e][name][i], fit.history[e][name], rel_tol=1e-5, abs_tol=1e-6)
        want = train.evaluate(eval_single, fit.params, {}, m, [(x[:10], y[:10]), (x[10:], y[10:])])
        assert math.isclose(got["accuracy"][i], want["accuracy"], abs_tol=1e-9)
        assert math.isclose(got["loss"][i], want["loss"], rel_tol=1e-5)
    with pytest.raises(ValueError, match="empty"):
        seeds.evaluate_seeds(eval_seeds, res.params, res.state, masks, [])
    with pytest.raises(TypeError, match="make_seed_step"):
        seeds.fit_seeds(eval_seeds, params, state, {}, masks, lambda e: [], 1)


@pytest.fixture(scope="module")
def compiled_step():
    """A compiled seed step whose backend (inductor) counts the graphs it is given."""
    from torch._inductor.compile_fx import compile_fx

    graphs: list[int] = []

    def counting_inductor(gm, example_inputs):
        graphs.append(len(gm.graph.nodes))
        return compile_fx(gm, example_inputs)

    opt = optim.sgd(0.05, momentum=0.9)
    step = seeds.make_seed_step(
        mlp, losses.cross_entropy, opt, per_seed_batches=False, compile=True, backend=counting_inductor
    )
    return opt, step, graphs


def test_compiled_step_equals_eager_loop_and_does_not_recompile_for_new_masks(compiled_step):
    opt, step, graphs = compiled_step
    keys, params, state, masks = _mlp_setup(3)
    opt_state = seeds.init_opt_seeds(opt, params)
    x, y = mlp_data(6)
    single = train.make_step(mlp.apply, losses.cross_entropy, opt, compile=False)
    for sparsity in (0.5, 0.7):  # new mask values: same compiled graph
        masks = seeds.select_seeds(magnitude.magnitude(params, masks), sparsity, masks=masks)
        out = step(params, state, opt_state, masks, (x, y))
        want = [
            single(
                seeds.seed_slice(params, i),
                {},
                seeds.seed_slice(opt_state, i),
                seeds.seed_slice(masks, i),
                (x, y),
            )
            for i in range(3)
        ]
        for j in range(4):
            assert_seed_equals(out[j], [w[j] for w in want])
    assert len(graphs) == 1  # one graph for both mask values


# --------------------------------------------------------------------- scoring and selection
@settings(max_examples=25, deadline=None)
@given(
    data_=st.data(),
    n_seeds=st.integers(1, 4),
    sparsity=pst.sparsities(),
    scope=st.sampled_from(["global", "layer"]),
)
def test_select_seeds_equals_per_seed_select_exactly(data_, n_seeds, sparsity, scope):
    params = data_.draw(
        pst.params_trees(min_prunable=1, max_leaves=4, dtype=st.just(torch.float32)), label="params"
    )
    ones = mask.ones_like(params)
    old = tree.stack(
        [data_.draw(pst.masks(params, kind="unstructured"), label="old") for _ in range(n_seeds)]
    )
    scores = tree.stack(
        [
            data_.draw(pst.scores(ones, ties=data_.draw(st.booleans()), dtype=torch.float32))
            for _ in range(n_seeds)
        ]
    )
    new = seeds.select_seeds(scores, sparsity, scope=scope, masks=old)
    for i in range(n_seeds):
        want = select.unstructured(
            seeds.seed_slice(scores, i), sparsity, scope=scope, masks=seeds.seed_slice(old, i)
        )
        assert_tree_close(seeds.seed_slice(new, i), want)
        kept, total = mask.count(seeds.seed_slice(old, i))
        if scope == "global" and total and sparsity >= 1 - kept / total:
            exact_sparsity(seeds.seed_slice(new, i), sparsity)  # nothing revived, exactly round(s·N)


def test_lowest_k_under_vmap_takes_the_kthvalue_path_and_equals_eager():
    values = torch.tensor([[3.0, 1.0, 2.0, 1.0, 5.0], [0.0, 0.0, 0.0, 4.0, -1.0]])
    got = torch.func.vmap(lambda v: select.lowest_k([v[:2], v[2:]], 3))(values)
    for i in range(2):
        want = select.lowest_k([values[i, :2], values[i, 2:]], 3)
        assert torch.equal(got[0][i], want[0]) and torch.equal(got[1][i], want[1])
    # by hand: row 0 prunes 1 (idx 1), 1 (idx 3), 2 (idx 2); row 1 prunes -1 (idx 4) and the first
    # two of the three 0s (idx 0, 1). got[j] is leaf j (v[:2], v[2:]) of both rows.
    assert got[0].tolist() == [[False, True], [True, True]]
    assert got[1].tolist() == [[True, True, False], [False, False, True]]
    vmapped_equals_loop(lambda v: select.lowest_k([v], 2)[0], (values,), 2)


def test_select_seeds_rejects_non_finite_scores_naming_seed_and_path():
    scores = {"w": torch.zeros(3, 2, 2)}
    scores["w"][2, 1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"score 'w' of seed 2 is not finite at index \(1, 0\)"):
        seeds.select_seeds(scores, 0.5)
    with pytest.raises(TypeError, match="floating-point"):
        seeds.select_seeds({"w": torch.zeros(3, 2, 2, dtype=torch.int64)}, 0.5)
    with pytest.raises(ValueError, match="masks have 2 seeds but scores have 3"):
        seeds.select_seeds(
            {"w": torch.zeros(3, 2, 2)}, 0.5, masks={"w": torch.ones(2, 2, 2, dtype=torch.bool)}
        )


def test_score_seeds_vmap_equals_loop_and_random_runs_per_seed_keys():
    _, params, state, masks = _mlp_setup(3)
    keys = [5, 6, 7]
    for name in ("magnitude", "l2"):
        a = seeds.score_seeds(name, mlp, params, state, masks, keys=keys)
        b = seeds.score_seeds(name, mlp, params, state, masks, keys=keys, vmap=False)
        assert_tree_close(a, b, rtol=0)
        assert a["fc1"]["bias"] is None
    rand = seeds.score_seeds("random", mlp, params, state, masks, keys=keys)  # reads the key: loops
    for i, k in enumerate(keys):
        assert_tree_close(seeds.seed_slice(rand, i), magnitude.random(seeds.seed_slice(masks, i), k), rtol=0)
    assert not torch.equal(rand["fc1"]["weight"][0], rand["fc1"]["weight"][1])
    with pytest.raises(ValueError, match="reads the random key"):
        seeds.score_seeds("random", mlp, params, state, masks, keys=keys, vmap=True)
    with pytest.raises(ValueError, match="got 2 keys for 3 seeds"):
        seeds.score_seeds("magnitude", mlp, params, state, masks, keys=[1, 2])
    with pytest.raises(ValueError, match="unknown criterion"):
        seeds.score_seeds("nope", mlp, params, state, masks, keys=keys)


def test_score_seeds_falls_back_to_a_loop_when_vmap_cannot_trace():
    _, params, state, masks = _mlp_setup(2)
    x, y = mlp_data(2, n=4)

    def data_dependent(inp: registry.ScoreInput) -> dict:
        grads = {"w": inp.params["fc1"]["weight"]}
        if bool(grads["w"].sum() > 1e9):  # Python control flow on a value: vmap cannot trace it
            raise AssertionError("unreachable")
        out = inp.restrict(magnitude.magnitude(inp.params, inp.masks))
        return tree.map(lambda s: None if s is None else s * float(inp.batches[0][0].shape[0]), out)

    crit = registry.Criterion("data_dependent", data_dependent, "element", True, "test")
    batch = (torch.stack([x, x]), torch.stack([y, y]))
    with pytest.warns(RuntimeWarning, match="cannot run under vmap"):
        got = seeds.score_seeds(
            crit, mlp, params, state, masks, keys=[1, 2], batches=[batch], per_seed_batches=True
        )
    want = seeds.score_seeds("magnitude", mlp, params, state, masks, keys=[1, 2])
    assert_tree_close(got, tree.map(lambda s: None if s is None else 4 * s, want))

    def units(inp: registry.ScoreInput) -> dict:
        return {"fc1": inp.params["fc1"]["weight"].abs().sum(1)}

    unit_crit = registry.Criterion("unit_norm", units, "unit", False, "test")
    scored = seeds.score_seeds(unit_crit, mlp, params, state, masks, keys=[1, 2])
    assert scored["fc1"].shape == (2, MLP_SIZES[1])
    assert torch.equal(scored["fc1"], params["fc1"]["weight"].abs().sum(2))


# -------------------------------------------------------------------------------- summaries
def test_summarize_by_hand():
    s = seeds.summarize([1.0, 2.0, 4.0])
    assert s["n"] == 3 and math.isclose(s["mean"], 7 / 3)
    assert math.isclose(s["std"], math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert seeds.summarize(torch.tensor([0.5])) == {"mean": 0.5, "std": 0.0, "n": 1}
    with pytest.raises(ValueError, match="no values"):
        seeds.summarize([])
    with pytest.raises(ValueError, match=r"values\[1\] = nan"):
        seeds.summarize([1.0, float("nan")])
    with pytest.raises(ValueError, match="1-D"):
        seeds.summarize(torch.zeros(2, 2))
