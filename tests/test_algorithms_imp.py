"""Lottery tickets (algorithms.imp): the rounding rule, nesting, rewinding, controls, compile once."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._dynamo.testing import CompileCounterWithBackend

from pure_prune import losses, mask, models, optim, rng, train, tree
from pure_prune.algorithms import base, gradual, imp, masking
from pure_prune.algorithms.ops import RoundOps
from pure_prune.importance import magnitude
from pure_prune.schedule import linear_steps

SPEC = models.get("mlp")


def tiny(key: int, sizes=(6, 5, 4, 3)):
    params, state = SPEC.init(key, sizes=sizes)
    return params, state, masking.initial(params)


def by_magnitude(params, state, masks, key):
    return magnitude.magnitude(params, masks)


def kept_rule(n: int, r: float, k: int) -> int:
    return n - round((1 - (1 - r) ** k) * n)


@settings(max_examples=25, deadline=None)
@given(
    r=st.floats(0.0, 0.95),
    k=st.integers(0, 8),
    scope=st.sampled_from(["global", "layer"]),
    key=st.integers(0, 2**32),
)
def test_rounds_are_nested_and_keep_exactly_the_rounding_rule(r, k, scope, key):
    params, state, masks = tiny(key)
    s = imp.Settings(rate=r, rounds=k, scope=scope)
    res = imp.run(
        params,
        state,
        masks,
        s,
        ops=RoundOps(optim.sgd(0.1), base.no_training, by_magnitude),
        key=key,
    )
    assert len(res.masks) == k + 1
    for j in range(1, k + 1):
        assert mask.is_nested(res.masks[j], res.masks[j - 1])
        leaves = [m for m in tree.leaves(res.masks[j]) if m is not None]
        if scope == "global":
            n = sum(m.numel() for m in leaves)
            assert sum(int(m.sum()) for m in leaves) == kept_rule(n, r, j)
        else:
            for m in leaves:
                assert int(m.sum()) == kept_rule(m.numel(), r, j)


def test_target_by_hand():
    assert imp.target(0, 0.2) == 0.0
    assert imp.target(2, 0.2) == pytest.approx(0.36)
    assert 1 - imp.target(20, 0.2) == pytest.approx(0.0115, abs=5e-5)  # seeds: 20 x 0.2 leaves 1.15%
    # progressive (decaying rate): rate x 1.0 for rounds 0-4, x 0.8 for 5-9
    assert 1 - imp.target(6, 0.2, "progressive") == pytest.approx(0.8**5 * 0.84)
    with pytest.raises(ValueError, match="known: geometric, progressive"):
        imp.target(1, 0.2, "cubic")


def test_prune_round_by_hand():
    masks = {"w": torch.tensor([True, True, True, False, True])}
    scores = {"w": torch.tensor([0.5, 0.1, 0.9, 0.0, 0.3])}
    # round 2 at rate 0.5: target 0.75 of 5 entries -> round(3.75) = 4 pruned, the live 0.1, 0.3, 0.5
    got = imp.prune_round(masks, scores, 2, 0.5)
    assert got["w"].tolist() == [False, False, True, False, False]


class Spy:
    """A train_fn that records what each call received and trains nothing."""

    def __init__(self):
        self.calls = []

    def __call__(self, params, state, opt_state, masks, *, start, stop, key, step=None, batch_map=None):
        self.calls.append(
            dict(params=params, opt_state=opt_state, masks=masks, start=start, stop=stop, key=key)
        )
        bumped = tree.map(lambda p: p + 1.0, params)  # "training" moves every weight
        return base.Trained(bumped, state, opt_state, [])


def test_rewind_keeps_masks_resets_optimizer_and_positions_the_lr_schedule():
    params, state, masks = tiny(3)
    spy = Spy()
    s = imp.Settings(rate=0.5, rounds=2, epochs=5, rewind_epoch=2, steps_per_epoch=7)
    opt = optim.sgd(0.1, momentum=0.9)
    res = imp.run(params, state, masks, s, ops=RoundOps(opt, spy, by_magnitude), key=1)
    # round 0 trains [0, 2) then [2, 5) with the same data key; the rewind point is after epoch 2
    assert [(c["start"], c["stop"]) for c in spy.calls] == [(0, 2), (2, 5), (2, 5), (2, 5)]
    assert spy.calls[0]["key"] == spy.calls[1]["key"] != spy.calls[2]["key"]
    rewind = res.carry.rewind["params"]
    assert torch.equal(rewind["fc1"]["weight"], params["fc1"]["weight"] + 1.0)
    for call, m in zip(spy.calls[2:], res.masks[1:]):
        assert call["masks"] is m
        want = mask.apply(rewind, m)
        assert all(torch.equal(a, b) for a, b in zip(tree.leaves(call["params"]), tree.leaves(want)))
        assert int(call["opt_state"]["count"]) == 2 * 7  # fresh state, schedule at the rewind epoch
        assert all(float(b.abs().sum()) == 0.0 for b in tree.leaves(call["opt_state"]["momentum"]))


def test_control_reinit_uses_fresh_weights_with_the_same_masks():
    params, state, masks = tiny(4)
    spy_a, spy_b = Spy(), Spy()
    opt = optim.sgd(0.1)
    imp.run(
        params, state, masks, imp.Settings(rate=0.5, rounds=1), ops=RoundOps(opt, spy_a, by_magnitude), key=9
    )
    init = lambda k: SPEC.init(k, sizes=(6, 5, 4, 3))  # noqa: E731
    imp.run(
        params,
        state,
        masks,
        imp.Settings(rate=0.5, rounds=1, control="reinit"),
        ops=RoundOps(opt, spy_b, by_magnitude, init=init),
        key=9,
    )
    a, b = spy_a.calls[-1], spy_b.calls[-1]
    assert all(
        torch.equal(x, y) for x, y in zip(tree.leaves(a["masks"]), tree.leaves(b["masks"])) if x is not None
    )
    wa, wb = a["params"]["fc1"]["weight"], b["params"]["fc1"]["weight"]
    m = a["masks"]["fc1"]["weight"]
    assert torch.equal(wb == 0, ~m | (wb == 0)) and not torch.equal(wa, wb)  # masked, but other values
    with pytest.raises(ValueError, match="RoundOps with init="):
        imp.run(
            params,
            state,
            masks,
            imp.Settings(rate=0.5, rounds=1, control="reinit"),
            ops=RoundOps(opt, Spy(), by_magnitude),
            key=9,
        )


def test_control_random_masks_keeps_per_layer_counts_and_nesting():
    params, state, masks = tiny(5, sizes=(10, 9, 8, 3))
    kw = dict(ops=RoundOps(optim.sgd(0.1), base.no_training, by_magnitude), key=2)
    plain = imp.run(params, state, masks, imp.Settings(rate=0.4, rounds=3), **kw)
    rand = imp.run(params, state, masks, imp.Settings(rate=0.4, rounds=3, control="random_masks"), **kw)
    # round 1 sees the same weights: the same per-layer sparsity as magnitude pruning, other positions
    assert mask.layer_sparsity(rand.masks[1]) == mask.layer_sparsity(plain.masks[1])
    total = sum(m.numel() for m in tree.leaves(masks) if m is not None)
    for j in range(1, 4):
        assert mask.is_nested(rand.masks[j], rand.masks[j - 1])
        assert mask.count(rand.masks[j])[0] == kept_rule(total, 0.4, j)
    assert not torch.equal(rand.masks[3]["fc2"]["weight"], plain.masks[3]["fc2"]["weight"])


def test_random_masks_like_by_hand():
    prev = {"a": torch.tensor([True, True, False, True]), "b": None}
    want = {"a": torch.tensor([True, False, False, False]), "b": None}
    got = imp.random_masks_like(want, prev, key=11)
    assert int(got["a"].sum()) == 1 and not bool((got["a"] & ~prev["a"]).any()) and got["b"] is None


def test_settings_reject_bad_knobs():
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\)"):
        imp.Settings(rate=1.0).check()
    with pytest.raises(ValueError, match="past the end"):
        imp.Settings(epochs=3, rewind_epoch=4).check()
    with pytest.raises(ValueError, match="unknown control 'shuffle'"):
        imp.Settings(control="shuffle").check()
    with pytest.raises(ValueError, match="fixed sparsity"):
        imp.Settings(struct="nm").check()
    with pytest.raises(ValueError, match="first_round"):
        params, state, masks = tiny(0)
        carry = base.Carry(params, state, {}, masks)
        imp.next_round(carry, 1, imp.Settings(), ops=RoundOps(optim.sgd(0.1), Spy(), by_magnitude), key=0)


def test_structured_rounds_prune_whole_rows_by_the_same_rule():
    params, state, masks = tiny(6, sizes=(6, 10, 10, 3))
    res = imp.run(
        params,
        state,
        masks,
        imp.Settings(rate=0.3, rounds=2, struct="rows"),
        ops=RoundOps(optim.sgd(0.1), base.no_training, by_magnitude),
        key=0,
    )
    w = res.masks[2]["fc2"]["weight"]
    rows_kept = int(w.any(dim=1).sum())
    assert rows_kept == kept_rule(10, 0.3, 2) and bool((w.all(dim=1) | ~w.any(dim=1)).all())


# ------------------------------------------------------------------------ one compiled step, many rounds


@pytest.fixture(scope="module")
def compiled():
    counter = CompileCounterWithBackend("eager")
    opt = optim.sgd(0.05, momentum=0.9)
    step = train.make_step(SPEC, losses.cross_entropy, opt, compile=True, backend=counter)
    return counter, opt, step


def batch_trainer(step, batches):
    """A train_fn over fixed batches (one pass per epoch)."""

    def train_fn(params, state, opt_state, masks, *, start, stop, key, step_=None, batch_map=None, **_):
        for _e in range(start, stop):
            for b in batches:
                params, state, opt_state, _m = step(params, state, opt_state, masks, b)
        return base.Trained(params, state, opt_state, [])

    return train_fn


def test_compiled_step_compiles_once_across_imp_rounds_and_gradual_segments(compiled):
    counter, opt, step = compiled
    params, state, masks = tiny(7, sizes=(8, 16, 16, 4))
    batches = [(rng.normal(rng.fold_in(1, i), (32, 8)), torch.arange(32) % 4) for i in range(3)]
    ops = RoundOps(opt, batch_trainer(step, batches), by_magnitude)
    res = imp.run(
        params,
        state,
        masks,
        imp.Settings(rate=0.5, rounds=3, epochs=2, rewind_epoch=1),
        ops=ops,
        key=3,
    )
    assert mask.sparsity(res.masks[-1]) == pytest.approx(0.875, abs=0.01)
    carry, seg_masks, _ = gradual.run(
        params,
        state,
        masks,
        linear_steps(0.6, steps=3, start=1, every=1),
        4,
        ops=ops,
        key=4,
    )
    assert [round(mask.sparsity(m), 2) for m in seg_masks] == [0.0, 0.2, 0.4, 0.6]
    assert counter.frame_count == 1  # masks and optimizer state are inputs: no recompile
