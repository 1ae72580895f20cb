"""Distillation (algorithms.distill): teacher logits per batch, the KD step, and a student pulled
towards its teacher."""

from __future__ import annotations

import pytest
import torch

from pure_prune import losses, mask, optim, train, tree
from pure_prune.algorithms import base, distill, masking
from pure_prune.algorithms.ops import RoundOps
from pure_prune.app.experiment import setup
from pure_prune.app.trainer import epoch_trainer
from pure_prune.importance import magnitude
from pure_prune.testing import close

SIZES = (64, 16, 16, 10)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def exp():
    return setup("mlp", "digits", batch_size=128, lr=0.05, compile=False, model_cfg={"sizes": SIZES})[0]


def by_magnitude(params, state, masks, key):
    return magnitude.magnitude(params, masks)


def test_teacher_logits_are_eval_mode_and_carry_no_graph(exp):
    params, state = exp.model.init(0, sizes=SIZES)
    grad_params = tree.map(lambda p: p.clone().requires_grad_(True), params)
    x, y = next(exp.train_batches(0)(0))
    t = distill.teacher_fn(exp.model.apply, grad_params, state)(x)
    assert not t.requires_grad and t.grad_fn is None
    assert torch.equal(t, exp.model.apply(params, state, x, train=False)[0])
    xb, yb, tb = distill.with_teacher(lambda v: v.sum(dim=1, keepdim=True))((x, y, "old extra"))
    assert xb is x and yb is y and torch.equal(tb, x.sum(dim=1, keepdim=True))


def test_kd_step_reads_the_teacher_entry(exp):
    params, state = exp.model.init(1, sizes=SIZES)
    masks = masking.initial(params)
    opt = optim.sgd(0.1)
    x, y = next(exp.train_batches(0)(0))
    same = exp.model.apply(params, state, x, train=True)[0].detach()
    # alpha = 1 and a teacher equal to the student: KL is 0 at its minimum, nothing moves
    p1, *_ = distill.make_step(exp.model, opt, alpha=1.0, T=3.0, compile=False)(
        params, state, opt.init(params), masks, (x, y, same)
    )
    close.assert_trees_close(p1, params, 1e-6)
    # alpha = 0: the plain cross-entropy step
    p0, *_ = distill.make_step(exp.model, opt, alpha=0.0, compile=False)(
        params, state, opt.init(params), masks, (x, y, same * 0)
    )
    pc, *_ = train.make_step(exp.model, losses.cross_entropy, opt, compile=False)(
        params, state, opt.init(params), masks, (x, y)
    )
    close.assert_trees_close(p0, pc, 1e-6)


def kl_to_teacher(exp, student, teacher) -> float:
    x, t_state = exp.dataset.x_test, teacher["state"]
    t = exp.model.apply(teacher["params"], t_state, x, train=False)[0]
    s = exp.model.apply(mask.apply(student.params, student.masks), student.state, x, train=False)[0]
    return float(
        (torch.softmax(t, -1) * (torch.log_softmax(t, -1) - torch.log_softmax(s, -1))).sum(-1).mean()
    )


def test_distillation_pulls_the_pruned_student_towards_its_teacher(exp):
    params, state = exp.model.init(2, sizes=SIZES)
    masks = masking.initial(params)
    s = distill.Settings(rate=0.8, rounds=1, epochs=4, finetune_epochs=3, alpha=1.0, T=3.0)
    fn = epoch_trainer(exp)
    first = distill.first_round(params, state, masks, s, ops=RoundOps(exp.optimizer, fn), key=3)
    teacher = first.carry.extra["teacher"]
    assert all(
        torch.equal(a, b) for a, b in zip(tree.leaves(teacher["params"]), tree.leaves(first.carry.params))
    )
    step = distill.make_step(exp.model, exp.optimizer, alpha=1.0, T=3.0, compile=False)
    kw = dict(apply=exp.model.apply, kd_step=step, key=3)
    pruned = distill.next_round(
        first.carry, 1, s, ops=RoundOps(exp.optimizer, base.no_training, by_magnitude), **kw
    ).carry
    tuned = distill.next_round(first.carry, 1, s, ops=RoundOps(exp.optimizer, fn, by_magnitude), **kw).carry
    assert mask.sparsity(tuned.masks) == pytest.approx(0.8, abs=1e-4)
    assert kl_to_teacher(exp, tuned, teacher) < 0.5 * kl_to_teacher(exp, pruned, teacher)
    assert tuned.extra["teacher"] is teacher


def test_run_prunes_each_round_to_the_imp_target(exp):
    params, state = exp.model.init(3, sizes=SIZES)
    carry, histories = distill.run(
        params,
        state,
        masking.initial(params),
        distill.Settings(rate=0.5, rounds=2),
        apply=exp.model.apply,
        kd_step=None,
        ops=RoundOps(exp.optimizer, base.no_training, by_magnitude),
        key=0,
    )
    assert mask.sparsity(carry.masks) == pytest.approx(0.75, abs=1e-4) and len(histories) == 3
    assert all(
        torch.equal(a, b) for a, b in zip(tree.leaves(carry.extra["teacher"]["params"]), tree.leaves(params))
    )


def test_settings_reject_bad_loss_knobs():
    with pytest.raises(ValueError, match="alpha"):
        distill.Settings(alpha=1.5).check()
    with pytest.raises(ValueError, match="temperature"):
        distill.kd(0.5, 0.0)
    carry = base.Carry({}, {}, {}, {}, None, {})
    with pytest.raises(ValueError, match="no teacher"):
        distill.next_round(
            carry,
            1,
            distill.Settings(),
            apply=None,
            kd_step=None,
            ops=RoundOps(optim.sgd(0.1), base.no_training, by_magnitude),
            key=0,
        )
