"""The shared pieces of the algorithms: mask forms (masking), one-shot, the training callbacks
(base.no_training, app.trainer.epoch_trainer) and the channel criteria of RSST/Refill (unit_criteria)."""

from __future__ import annotations

import pytest
import torch

from pure_prune import losses, mask, models, optim, tree
from pure_prune.algorithms import base, masking, one_shot, unit_criteria
from pure_prune.algorithms.ops import RoundOps
from pure_prune.app import trainer
from pure_prune.app.experiment import setup
from pure_prune.app.trainer import epoch_trainer
from pure_prune.importance import magnitude
from pure_prune.testing import invariants

SPEC = models.get("mlp")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def exp():
    exp, _ = setup(
        "mlp", "digits", batch_size=128, lr=0.05, compile=False, model_cfg={"sizes": (64, 16, 16, 10)}
    )
    return exp


# ----------------------------------------------------------------------------- masking


def test_initial_masks_per_struct():
    params, _ = SPEC.init(0, sizes=(4, 5, 6, 3))
    groups = SPEC.groups(params)
    plain = masking.initial(params)
    assert plain["fc1"]["bias"] is None and plain["fc1"]["weight"].all()
    chan = masking.initial(params, "channels", groups)
    assert chan["fc1"]["bias"].all() and chan["fc2"]["bias"].all() and chan["fc3"]["bias"] is None
    kept = masking.initial(params, "channels", groups, exclude=["fc1.*"])
    assert kept["fc1"]["weight"] is None and kept["fc1"]["bias"] is None and kept["fc2"]["bias"].all()
    assert [g.prunable for g in masking.active_groups(groups, ["fc1.*"])] == [False, True]
    with pytest.raises(ValueError, match="unknown struct 'blocks'; known: unstructured, rows, channels, nm"):
        masking.initial(params, "blocks")
    with pytest.raises(ValueError, match="at least one prunable channel group"):
        masking.initial(params, "channels", ())


def test_prune_to_each_struct():
    params, _ = SPEC.init(1, sizes=(8, 6, 6, 4))
    groups = SPEC.groups(params)
    m = masking.initial(params)
    scores = magnitude.magnitude(params, m)
    un = masking.prune_to(scores, 0.5, struct="unstructured", masks=m)
    invariants.exact_sparsity(un, 0.5)
    rows = masking.prune_to(scores, 0.5, struct="rows", masks=m)
    invariants.whole_rows(rows, 0.5)
    nm = masking.prune_to(scores, 0.0, struct="nm", masks=m, nm=(1, 2))
    invariants.exact_n_of_m(nm, 1, 2)
    mc = masking.initial(params, "channels", groups)
    ch = masking.prune_to(
        magnitude.magnitude(params, mc), 0.5, struct="channels", masks=mc, groups=groups, scope="layer"
    )
    invariants.whole_channels(ch, groups, sparsity=0.5, scope="layer")
    assert int(ch["fc1"]["bias"].sum()) == 3  # removed units lose their bias too
    units = {"fc1": torch.arange(6.0), "fc2": torch.arange(6.0)}
    by_units = masking.prune_to(
        units, 0.5, struct="channels", masks=mc, groups=groups, scope="layer", level="unit"
    )
    assert by_units["fc1"]["weight"][:3].sum() == 0 and by_units["fc1"]["weight"][3:].all()
    with pytest.raises(ValueError, match="struct must be 'channels'"):
        masking.prune_to(units, 0.5, struct="rows", masks=mc, level="unit")
    with pytest.raises(ValueError, match="level must be"):
        masking.prune_to(scores, 0.5, struct="rows", masks=m, level="leaf")


def test_score_goes_through_the_registry():
    params, state = SPEC.init(2, sizes=(4, 5, 3))
    m = masking.initial(params)
    scores, level = masking.score("magnitude", SPEC.apply, params, state, m)
    assert level == "element"
    assert (
        torch.equal(scores["fc1"]["weight"], params["fc1"]["weight"].abs()) and scores["fc1"]["bias"] is None
    )
    with pytest.raises(ValueError, match="known criteria: .*magnitude"):
        masking.score("nope", SPEC.apply, params, state, m)


# ----------------------------------------------------------------------------- one-shot


def test_one_shot_prune_forms_and_fine_tuning_keeps_the_mask(exp):
    params, state = exp.model.init(0, sizes=(64, 16, 16, 10))
    m = masking.initial(params)
    scores = magnitude.magnitude(params, m)
    p, m2 = one_shot.prune(params, m, scores, 0.75)
    invariants.exact_sparsity(m2, 0.75)
    invariants.pruned_are_zero(p, m2)
    p_rows, m_rows = one_shot.prune(params, m, scores, 0.5, struct="rows")
    invariants.whole_rows(m_rows, 0.5)
    # the rounds through RoundOps: no dense epochs, then the same pruning and one fine-tuning epoch
    score = lambda p, s, masks, key: magnitude.magnitude(p, masks)  # noqa: E731
    ops = RoundOps(exp.optimizer, epoch_trainer(exp), score)
    first = one_shot.first_round(params, state, m, epochs=0, ops=ops, key=3)
    assert first.history == [] and torch.equal(first.carry.params["fc1"]["weight"], params["fc1"]["weight"])
    out = one_shot.next_round(first.carry, 0.75, finetune_epochs=1, ops=ops, key=3)
    tuned = out.carry
    assert all(torch.equal(a, b) for a, b in zip(tree.leaves(tuned.masks), tree.leaves(m2)) if a is not None)
    invariants.pruned_are_zero(tuned.params, tuned.masks)
    assert not torch.equal(tuned.params["fc2"]["weight"], p["fc2"]["weight"])  # it trained
    assert len(out.history) == 1


def test_one_shot_rounds_train_dense_then_prune_and_fine_tune():
    params, state = SPEC.init(3, sizes=(6, 8, 3))
    m = masking.initial(params)
    calls = []

    def spy(p, s, o, masks, *, start, stop, key, step=None, batch_map=None):
        calls.append((start, stop, int(o["count"]), masks))
        return base.Trained(p, s, o, [{"epoch": float(start)}])

    score = lambda p, s, masks, key: magnitude.magnitude(p, masks)  # noqa: E731
    kw = dict(ops=RoundOps(optim.sgd(0.1), spy, score), key=5)
    first = one_shot.first_round(params, state, m, epochs=4, **kw)
    assert first.prune_seconds is None and first.carry.masks is m and calls[0][:3] == (0, 4, 0)
    second = one_shot.next_round(first.carry, 0.5, finetune_epochs=2, **kw)
    invariants.exact_sparsity(second.carry.masks, 0.5)
    assert calls[1][:3] == (0, 2, 0) and calls[1][3] is second.carry.masks and second.prune_seconds >= 0


# ----------------------------------------------------------------------------- training callbacks


def test_epoch_trainer_resumes_at_any_epoch_with_the_same_result(exp):
    params, state = exp.model.init(1, sizes=(64, 16, 16, 10))
    m = masking.initial(params)
    fn = epoch_trainer(exp, evaluate=True)
    opt0 = exp.optimizer.init(params)
    whole = fn(params, state, opt0, m, start=0, stop=3, key=7)
    a = fn(params, state, opt0, m, start=0, stop=1, key=7)
    b = fn(a.params, a.state, a.opt_state, m, start=1, stop=3, key=7)
    assert all(torch.equal(x, y) for x, y in zip(tree.leaves(whole.params), tree.leaves(b.params)))
    assert [h["epoch"] for h in whole.history] == [0.0, 1.0, 2.0]
    assert {"accuracy", "loss", "test_accuracy", "test_loss"} <= set(whole.history[0])
    with pytest.raises(ValueError, match="before start"):
        fn(params, state, opt0, m, start=2, stop=1, key=7)


def test_epoch_trainer_maps_batches_and_uses_the_given_step(exp):
    params, state = exp.model.init(1, sizes=(64, 16, 16, 10))
    m = masking.initial(params)
    seen = []

    def step(p, s, o, masks, batch):
        seen.append(len(batch))
        return p, s, o, {"accuracy": torch.tensor(0.5), "loss": torch.tensor(1.0)}

    out = epoch_trainer(exp)(
        params, state, {}, m, start=0, stop=1, key=0, step=step, batch_map=lambda b: (*b, b[1])
    )
    seconds = out.history[0].pop("seconds")
    assert set(seen) == {3} and out.history == [{"epoch": 0.0, "accuracy": 0.5, "loss": 1.0}] and seconds > 0


def test_no_training_and_fresh_opt_state():
    params, state = SPEC.init(0, sizes=(3, 2))
    out = base.no_training(params, state, {"x": 1}, None, start=0, stop=5, key=0)
    assert out.params is params and out.opt_state == {"x": 1} and out.history == []
    with pytest.raises(ValueError, match="stop epoch 1 is before start epoch 2"):
        base.no_training(params, state, {}, None, start=2, stop=1, key=0)
    assert base.check_epochs is trainer.check_epochs  # one check, the trainer's and the stub's
    st = base.fresh_opt_state(optim.sgd(0.1, momentum=0.9), params, 42)
    assert int(st["count"]) == 42 and st["count"].dtype == torch.int64
    with pytest.raises(ValueError, match="count must be an int >= 0"):
        base.fresh_opt_state(optim.sgd(0.1), params, -1)


# ----------------------------------------------------------------------------- unit criteria


def hand_net():
    """fc1: 3 units over 2 inputs; fc2 consumes them (not scored)."""
    params = {
        "fc1": {"bias": torch.zeros(3), "weight": torch.tensor([[1.0, -2.0], [0.5, 0.0], [-3.0, 4.0]])},
        "fc2": {"bias": torch.zeros(2), "weight": torch.tensor([[1.0, 1.0, 1.0], [1.0, -1.0, 2.0]])},
    }
    return params, SPEC.groups(params)


def test_unit_criteria_by_hand():
    params, groups = hand_net()
    m = mask.ones_like(params)
    m["fc1"]["weight"] = torch.tensor([[True, True], [True, False], [False, True]])
    got = {
        c: unit_criteria.unit_scores(c, params, m, groups)["fc1"] for c in ("remain", "magnitude", "l1", "l2")
    }
    assert torch.equal(got["remain"], torch.tensor([2.0, 1.0, 1.0]))  # kept entries per unit
    assert torch.equal(got["l1"], torch.tensor([3.0, 0.5, 4.0]))  # of the kept weights only
    assert torch.equal(got["magnitude"], torch.tensor([1.5, 0.25, 2.0]))  # mean over the unit's 2 entries
    assert torch.allclose(got["l2"], torch.tensor([5.0**0.5, 0.5, 4.0]))
    ref = mask.ones_like(params)
    assert torch.equal(
        unit_criteria.unit_scores("remain", params, m, groups, reference=ref)["fc1"], torch.full((3,), 2.0)
    )


def test_saliency_is_the_sum_of_abs_weight_times_gradient():
    params, groups = hand_net()
    m = mask.ones_like(params)
    x, y = torch.tensor([[1.0, 0.5], [-1.0, 2.0]]), torch.tensor([0, 1])

    def model_fn(p, xb):
        return SPEC.apply(p, {}, xb, train=False)[0]

    got = unit_criteria.unit_scores("saliency", params, m, groups, model_fn=model_fn, batches=[(x, y)])["fc1"]
    w = params["fc1"]["weight"].clone().requires_grad_(True)
    loss = losses.cross_entropy(model_fn({**params, "fc1": {**params["fc1"], "weight": w}}, x), y)
    (g,) = torch.autograd.grad(loss, w)
    assert torch.allclose(got, (w * g).abs().sum(dim=1).detach())
    with pytest.raises(ValueError, match="needs model_fn"):
        unit_criteria.unit_scores("saliency", params, m, groups)
    with pytest.raises(ValueError, match="known: remain, magnitude, l1, l2, saliency"):
        unit_criteria.unit_scores("taylor", params, m, groups)
