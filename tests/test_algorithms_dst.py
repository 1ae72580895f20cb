"""Dynamic sparse training (algorithms.dst): SET, RigL and STE by hand and over a few epochs."""

from __future__ import annotations

import math

import pytest
import torch

from pure_prune import allocate, losses, mask, models, optim, rng, tree
from pure_prune.algorithms import base, dst, masking
from pure_prune.algorithms.ops import RoundOps
from pure_prune.app.experiment import setup

SPEC = models.get("mlp")
SIZES = (64, 16, 16, 10)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def exp():
    return setup("mlp", "digits", batch_size=128, lr=0.05, compile=False, model_cfg={"sizes": SIZES})[0]


def counts(masks) -> dict[str, int]:
    return {p: int(m.sum()) for p, m in zip(tree.paths(masks), tree.leaves(masks)) if m is not None}


def test_drop_fraction_is_a_cosine_by_hand():
    assert dst.drop_fraction(0, 0.3, 100) == pytest.approx(0.3)
    assert dst.drop_fraction(50, 0.3, 100) == pytest.approx(0.15)
    assert dst.drop_fraction(25, 0.3, 100) == pytest.approx(0.15 * (1 + math.cos(math.pi / 4)))
    assert dst.drop_fraction(100, 0.3, 100) == 0.0 and dst.drop_fraction(150, 0.3, 100) == 0.0


def test_drop_and_grow_by_hand():
    w = {"a": torch.tensor([[0.1, -0.5, 0.0, 0.9, 0.0, 0.0]]), "b": torch.ones(2)}
    m = {"a": torch.tensor([[True, True, False, True, False, False]]), "b": None}
    g = {"a": torch.tensor([[1.0, 0.0, 3.0, 0.0, 2.0, -4.0]]), "b": None}
    # k = round(2/3 * 3) = 2: drop 0.1 and -0.5 (lowest |w| alive); grow the 2 highest scores among
    # the not-kept entries 0, 1, 2, 4, 5: index 2 (3.0) and index 4 (2.0)
    got = dst.drop_and_grow(w, m, 2 / 3, g)
    assert got["a"].tolist() == [[False, False, True, True, True, False]] and got["b"] is None
    assert dst.drop_and_grow(w, m, 0.0, g)["a"].tolist() == m["a"].tolist()
    with pytest.raises(ValueError, match="grow score at 'a'"):
        dst.drop_and_grow(w, m, 0.5, {"a": None, "b": None})


def test_rigl_grows_where_the_dense_gradient_is_largest_and_regrown_weights_start_at_zero(exp):
    params, state = exp.model.init(0, sizes=SIZES)
    masks = dst.initial_masks(masking.initial(params), 0.8, key=1)
    params = mask.apply(params, masks)
    batch = next(exp.train_batches(0)(0))
    grads = dst.dense_grad(exp.model.apply, losses.cross_entropy, params, state, masks, batch)
    assert float(grads["fc2"]["weight"][~masks["fc2"]["weight"]].abs().sum()) > 0  # signal where pruned
    s = dst.Settings(kind="rigl", sparsity=0.8, epochs=1, steps_per_epoch=10, update_every=5)
    new_params, new = dst.update_masks(s, 5, params, masks, key=0, grads_fn=lambda: grads)
    assert counts(new) == counts(masks)
    for path in ("fc1.weight", "fc2.weight", "fc3.weight"):
        old_m, new_m = (dict(zip(tree.paths(t), tree.leaves(t)))[path] for t in (masks, new))
        g = dict(zip(tree.paths(grads), tree.leaves(grads)))[path].abs()
        grown = new_m & ~old_m
        if grown.any():  # every grown entry beats every entry left out (among those not kept)
            assert float(g[grown].min()) >= float(g[~new_m].max())
        w = dict(zip(tree.paths(new_params), tree.leaves(new_params)))[path]
        assert bool((w[grown] == 0).all()) and bool((w[~new_m] == 0).all())


def test_set_and_rigl_keep_every_leafs_count_through_training(exp):
    params, state = exp.model.init(1, sizes=SIZES)
    for kind in ("set", "rigl"):
        s = dst.Settings(
            kind=kind, sparsity=0.7, epochs=2, steps_per_epoch=11, update_every=3, distribution="erk"
        )
        ops = RoundOps(exp.optimizer, base.no_training)
        carry = dst.start(params, state, masking.initial(params), s, ops=ops, key=2)
        want = counts(carry.masks)
        first = carry.masks
        for epoch in range(2):
            out = dst.train_epoch(
                carry,
                epoch,
                s,
                exp.train_batches(2)(epoch),
                step=exp.step,
                ops=ops,
                key=2,
                apply=exp.model.apply,
                loss=losses.cross_entropy,
            )
            carry = out.carry
            assert counts(carry.masks) == want
            assert out.history[0]["mask_updates"] > 0
        changed = sum(
            int((a != b).sum()) for a, b in zip(tree.leaves(first), tree.leaves(carry.masks)) if a is not None
        )
        assert changed > 0
        assert all(
            bool((p[~m] == 0).all())
            for p, m in zip(tree.leaves(carry.params), tree.leaves(carry.masks))
            if m is not None
        )


def test_ste_step_updates_pruned_weights_and_masks_follow_magnitude(exp):
    params, state = exp.model.init(2, sizes=SIZES)
    masks = dst.initial_masks(masking.initial(params), 0.75, key=3)
    opt = optim.sgd(0.1)
    step = dst.make_ste_step(exp.model, losses.cross_entropy, opt, compile=False)
    x, y = next(exp.train_batches(0)(0))
    new, _, _, metrics = step(params, state, opt.init(params), masks, (x, y))
    masked_loss = losses.cross_entropy(exp.model.apply(mask.apply(params, masks), state, x, train=True)[0], y)
    assert float(metrics["loss"]) == pytest.approx(float(masked_loss))  # the forward pass is masked
    pruned = ~masks["fc2"]["weight"]
    assert bool(
        (new["fc2"]["weight"][pruned] != params["fc2"]["weight"][pruned]).any()
    )  # gradient reaches them
    fresh = dst.ste_update(new, masks)
    assert counts(fresh) == counts(masks)
    w, m = new["fc2"]["weight"].abs(), fresh["fc2"]["weight"]
    assert float(w[m].min()) >= float(w[~m].max())


def test_run_trains_every_epoch_at_the_target_sparsity(exp):
    params, state = exp.model.init(4, sizes=SIZES)
    s = dst.Settings(kind="set", sparsity=0.5, epochs=2, steps_per_epoch=11, update_every=5)
    carry, history = dst.run(
        params,
        state,
        masking.initial(params),
        s,
        exp.train_batches(1),
        step=exp.step,
        ops=RoundOps(exp.optimizer, base.no_training),
        key=1,
    )
    assert [h["epoch"] for h in history] == [0.0, 1.0] and history[0]["mask_updates"] == 2.0  # t = 5, 10
    assert mask.sparsity(carry.masks) == pytest.approx(0.5, abs=1e-3)


def test_initial_masks_and_settings():
    params, _ = SPEC.init(0, sizes=(20, 30, 10))
    base_masks = masking.initial(params)
    uni = dst.initial_masks(base_masks, 0.6, key=1)
    assert counts(uni) == {"fc1.weight": 240, "fc2.weight": 120}
    erk = dst.initial_masks(base_masks, 0.6, key=1, distribution="erk")
    want = allocate.erk(base_masks, 0.6)
    assert counts(erk) == {p: n - round(want[p] * n) for p, n in (("fc1.weight", 600), ("fc2.weight", 300))}
    with pytest.raises(ValueError, match="unknown dst kind 'mest'"):
        dst.Settings(kind="mest").check()
    with pytest.raises(ValueError, match="sparsity must be below 1"):
        dst.Settings(sparsity=1.0).check()
    with pytest.raises(ValueError, match="update_every must be an int >= 1"):
        dst.Settings(update_every=0).check()
    with pytest.raises(ValueError, match="'rigl' needs apply and loss"):
        carry = base.Carry(params, {}, {}, base_masks)
        ops = RoundOps(optim.sgd(0.1), base.no_training)
        dst.train_epoch(carry, 0, dst.Settings(), [], step=None, ops=ops, key=rng.fold_in(0, 1))


def test_update_due_by_hand():
    s = dst.Settings(epochs=2, steps_per_epoch=10, update_every=4, end_fraction=0.75)  # t_end = 15
    assert [t for t in range(1, 21) if dst.update_due(s, t)] == [4, 8, 12]
    params, _ = SPEC.init(0, sizes=(20, 30, 10))
    masks = dst.initial_masks(masking.initial(params), 0.5, key=1)
    for t in (3, 16):  # not due: update_masks hands back the very same trees
        assert dst.update_masks(s, t, params, masks, key=2) == (params, masks)
