"""RSST (algorithms.rsst): the penalty by hand, its growth per step, and its effect on chosen units."""

from __future__ import annotations

import pytest
import torch

from pure_prune import losses, mask, optim, train, tree
from pure_prune import schedule as schedules
from pure_prune.algorithms import base, masking, rsst, unit_criteria
from pure_prune.algorithms.ops import RoundOps
from pure_prune.app.experiment import setup
from pure_prune.app.trainer import epoch_trainer
from pure_prune.testing import invariants

SIZES = (64, 16, 16, 10)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def exp():
    return setup("mlp", "digits", batch_size=128, lr=0.05, compile=False, model_cfg={"sizes": SIZES})[0]


def test_penalty_value_and_gradient_by_hand():
    params = {"a": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.tensor([5.0])}
    chosen = {"a": torch.tensor([[True, False], [False, True]]), "b": None}
    assert float(rsst.penalty(params, chosen, 0.5)) == 0.5 * (1 + 16)
    g = torch.func.grad(lambda p: rsst.penalty(p, chosen, 0.5))(params)
    assert torch.equal(g["a"], torch.tensor([[1.0, 0.0], [0.0, 4.0]])) and torch.equal(g["b"], torch.zeros(1))


def test_coefficient_grows_by_its_schedule_step_by_step():
    params = {"w": torch.ones(2, 3)}
    opt = rsst.penalized(optim.sgd(0.0))
    growth = schedules.penalty_growth("x^2", 2.0, 10)
    st = rsst.set_penalty(opt.init(params), {"w": torch.ones(2, 3, dtype=torch.bool)}, growth, 10)
    seen = []
    for _ in range(13):
        seen.append(float(rsst.coefficient(st)))
        _, st = opt.update({"w": torch.zeros(2, 3)}, st, params)
    assert seen == pytest.approx([2.0 * (min(t, 10) / 10) ** 2 for t in range(13)])
    for kind, a in (("x", 2), ("exp", 2), ("exp_custom", 4), ("exp_custom", 6)):
        g = schedules.penalty_growth(kind, 1.0, 10, exponent=a)
        table = rsst.set_penalty(opt.init(params), {"w": torch.ones(2, 3, dtype=torch.bool)}, g, 10)[
            "rsst_table"
        ]
        assert table.tolist() == pytest.approx([g(t) for t in range(11)])
        assert bool((table[1:] >= table[:-1]).all()) and table[0] == 0 and table[-1] == pytest.approx(1.0)


def test_coefficient_compiles_in_a_full_graph_and_under_vmap():
    """A compiled (fullgraph) RSST step reads λ_t without a data-dependent index (it once failed)."""
    params = {"w": torch.ones(2, 3)}
    opt = rsst.penalized(optim.sgd(0.0))
    growth = schedules.penalty_growth("x^2", 2.0, 4)
    st = rsst.set_penalty(opt.init(params), {"w": torch.ones(2, 3, dtype=torch.bool)}, growth, 4)
    compiled = torch.compile(rsst.coefficient, fullgraph=True, backend="eager")
    states = []
    for _ in range(6):
        assert float(compiled(st)) == float(rsst.coefficient(st))
        states.append(st)
        _, st = opt.update({"w": torch.zeros(2, 3)}, st, params)
    stacked = tree.stack(states)
    want = [float(rsst.coefficient(x)) for x in states]
    assert torch.func.vmap(rsst.coefficient)(stacked).tolist() == pytest.approx(want)


def test_penalized_update_is_the_update_of_loss_plus_penalty():
    params = {"w": torch.tensor([[0.5, -1.0], [2.0, 0.25]])}
    chosen = {"w": torch.tensor([[True, False], [True, True]])}
    x, y = torch.tensor([[1.0, 2.0], [0.5, -1.0]]), torch.tensor([0, 1])

    def loss(p):
        return losses.cross_entropy(x @ p["w"].T, y)

    inner = optim.sgd(0.1, momentum=0.9)
    pen = rsst.penalized(inner)
    st = rsst.set_penalty(pen.init(params), chosen, lambda t: 0.3, 5)
    updates, new_st = pen.update(torch.func.grad(loss)(params), st, params)
    want, _ = inner.update(
        torch.func.grad(lambda p: loss(p) + rsst.penalty(p, chosen, 0.3))(params), inner.init(params), params
    )
    assert torch.allclose(updates["w"], want["w"]) and int(new_st["count"]) == 1
    assert float(pen.current_lr(new_st)) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="rsst.penalized"):
        rsst.set_penalty(inner.init(params), chosen, lambda t: 0.3, 5)


def unit_norms(params, groups):
    return unit_criteria.unit_scores("l2", params, mask.ones_like(params), groups)


def test_penalty_drives_chosen_units_to_zero_and_spares_the_others(exp):
    params, state = exp.model.init(0, sizes=SIZES)
    groups = exp.model.groups(params)
    masks = masking.initial(params, "channels", groups)
    target = rsst.choose(unit_criteria.unit_scores("l1", params, masks, groups), 0.5, groups, masks)
    chosen = rsst.chosen_entries(masks, target)
    pen = rsst.penalized(exp.optimizer)
    step = train.make_step(exp.model, losses.cross_entropy, pen, compile=False)
    spe, epochs = 11, 4
    growth = schedules.penalty_growth("x", 4.0, spe * epochs)
    st = rsst.set_penalty(pen.init(params), chosen, growth, spe * epochs)
    out = epoch_trainer(exp)(params, state, st, masks, start=0, stop=epochs, key=1, step=step)
    assert float(rsst.coefficient(out.opt_state)) == pytest.approx(4.0)  # grew to the granularity
    before, after = unit_norms(params, groups), unit_norms(out.params, groups)
    for g in groups:
        gone = ~target[g.name]["weight"].any(dim=1)  # the chosen units of this group
        assert int(gone.sum()) == 8
        assert bool((after[g.name][gone] < 0.1 * before[g.name][gone]).all())  # ~6% of their norm left
        assert bool((after[g.name][~gone] > 0.5 * before[g.name][~gone]).all())


def test_rsst_rounds_remove_whole_channels(exp):
    params, state = exp.model.init(1, sizes=SIZES)
    groups = exp.model.groups(params)
    masks = masking.initial(params, "channels", groups)
    s = rsst.Settings(rate=0.5, rounds=2, epochs=1, finetune_epochs=1, criterion="remain", granularity=2.0)
    carry, history = rsst.run(
        params,
        state,
        masks,
        s,
        penalty_step_fn=lambda o: train.make_step(exp.model, losses.cross_entropy, o, compile=False),
        ops=RoundOps(exp.optimizer, epoch_trainer(exp)),
        groups=groups,
        key=3,
        steps_per_epoch=11,
    )
    # rounds 0..3: dense, penalise (no cut yet), cut 50% of units + penalise, cut 75% + fine-tune
    assert len(history) == 4
    assert mask.sparsity(history[1]) == 0.0
    invariants.whole_channels(history[2], groups, sparsity=0.5)
    invariants.whole_channels(history[3], groups, sparsity=0.75)
    invariants.pruned_are_zero(carry.params, carry.masks)
    assert carry.extra == {"target": None}


def test_settings_and_round_checks():
    with pytest.raises(ValueError, match="unknown criteria 'taylor'"):
        rsst.Settings(criterion="taylor").check()
    with pytest.raises(ValueError, match=r"unknown penalty growth 'x\^3'; known: x, x\^2, exp, exp_custom"):
        rsst.Settings(growth="x^3").check()
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\)"):
        rsst.Settings(rate=1.5).check()
    params = {"w": torch.ones(2, 2)}
    carry = base.Carry(params, {}, {}, {"w": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"round must be an int in \[1, 2\]"):
        rsst.next_round(
            carry,
            3,
            rsst.Settings(rounds=1),
            penalized_optimizer=optim.sgd(0.1),
            penalty_step=None,
            ops=RoundOps(optim.sgd(0.1), base.no_training),
            groups=(),
            key=0,
        )
    assert tree.leaves(rsst.chosen_entries({"a": None}, {"a": None})) == [None]


def test_plan_round_chooses_units_and_sets_the_penalty_before_training(exp):
    params, _ = exp.model.init(3, sizes=SIZES)
    groups = exp.model.groups(params)
    masks = masking.initial(params, "channels", groups)
    s = rsst.Settings(rate=0.5, rounds=1, epochs=2, finetune_epochs=3, criterion="l1", granularity=2.0)
    pen = rsst.penalized(exp.optimizer)
    carry = base.Carry(params, {}, exp.optimizer.init(params), masks, None, {"target": None})
    plan = rsst.plan_round(carry, 1, s, optimizer=exp.optimizer, penalized_optimizer=pen, groups=groups)
    assert plan.penalized and plan.epochs == 2 and plan.seconds >= 0
    invariants.masks_nested(plan.target, plan.masks)
    assert mask.sparsity(plan.target) > 0.3 and mask.sparsity(plan.masks) == 0.0
    chosen = rsst.chosen_entries(plan.masks, plan.target)
    for got, want in zip(tree.leaves(plan.opt_state["rsst_chosen"]), tree.leaves(chosen), strict=True):
        assert want is None or torch.equal(got, want)
    assert float(plan.opt_state["rsst_table"][-1]) == pytest.approx(2.0)  # grows to the granularity
    # the final round cuts the pending units and fine-tunes from a plain, fresh optimizer state
    last = rsst.plan_round(
        carry._replace(extra={"target": plan.target}),
        2,
        s,
        optimizer=exp.optimizer,
        penalized_optimizer=pen,
        groups=groups,
    )
    assert not last.penalized and last.epochs == 3 and last.target is None
    assert "rsst_table" not in last.opt_state and int(last.opt_state["count"]) == 0
    for m, t in zip(tree.leaves(last.masks), tree.leaves(plan.target), strict=True):
        assert (m is None and t is None) or torch.equal(m, t)
    invariants.pruned_are_zero(last.params, last.masks)
    with pytest.raises(ValueError, match=r"round must be an int in \[1, 2\]"):
        rsst.plan_round(carry, 0, s, optimizer=exp.optimizer, penalized_optimizer=pen, groups=groups)
