"""The helpers the algorithms share: a first round's fresh start, carry_out, score_and_prune, setup_eager, fc_head."""

from __future__ import annotations

import torch

from pure_prune import mask, optim, rng
from pure_prune import models as model_registry
from pure_prune.algorithms import base, distill, imp, one_shot, rsst
from pure_prune.algorithms.ops import RoundOps
from pure_prune.app import runconfig
from pure_prune.app.runner import setup_eager
from pure_prune.importance import magnitude
from pure_prune.models import conv


def _tiny():
    params, state = model_registry.get("mlp").init(0, sizes=(6, 5, 3))
    return params, state, mask.ones_like(params)


def test_first_rounds_train_from_a_fresh_optimizer_state_over_the_epoch_range():
    """The fresh start ``ops.train(..., ops.fresh_opt_state(params), start=0, stop=...)`` that the
    first rounds share (it replaced ``base.train_fresh``)."""
    params, state, masks = _tiny()
    seen = []

    def train_fn(p, s, o, m, *, start, stop, key, **kw):
        seen.append(dict(params=p, start=start, stop=stop, key=key, opt=o, kw=kw))
        return base.Trained(p, s, o, [{"loss": 1.0}] * (stop - start))

    ops = RoundOps(optim.sgd(0.1, momentum=0.9), train_fn)
    outs = [
        one_shot.first_round(params, state, masks, epochs=3, ops=ops, key=7),
        distill.first_round(params, state, masks, distill.Settings(epochs=3), ops=ops, key=7),
        rsst.first_round(params, state, masks, rsst.Settings(epochs=3), ops=ops, key=7),
    ]
    for got, out in zip(seen, outs, strict=True):
        assert (got["start"], got["stop"], got["kw"]) == (0, 3, {})
        assert got["key"] == rng.fold_in(7, 0)
        assert torch.equal(got["opt"]["momentum"]["fc1"]["weight"], torch.zeros(5, 6))
        assert int(got["opt"]["count"]) == 0
        assert torch.equal(got["params"]["fc1"]["weight"], params["fc1"]["weight"])  # all kept
        assert len(out.history) == 3 and out.carry.params is got["params"]


def test_distill_fine_tuning_passes_its_step_and_batch_map_to_a_fresh_state():
    params, state, masks = _tiny()
    seen = {}

    def train_fn(p, s, o, m, *, start, stop, key, **kw):
        seen.update(start=start, stop=stop, opt=o, kw=kw)
        return base.Trained(p, s, o, [{"loss": 1.0}] * (stop - start))

    score = lambda p, s, m, k: magnitude.magnitude(p, m)  # noqa: E731
    ops = RoundOps(optim.sgd(0.1, momentum=0.9), train_fn, score)
    teacher = {"params": params, "state": state}
    carry = base.Carry(params, state, None, masks, None, {"teacher": teacher})
    s = distill.Settings(rate=0.5, rounds=1, finetune_epochs=2)
    apply = model_registry.get("mlp").apply
    out = distill.next_round(carry, 1, s, apply=apply, kd_step="s", ops=ops, key=7)
    assert (seen["start"], seen["stop"], seen["kw"]["step"]) == (0, 2, "s")
    assert torch.equal(seen["opt"]["momentum"]["fc1"]["weight"], torch.zeros(5, 6))
    assert int(seen["opt"]["count"]) == 0 and len(out.history) == 2
    x = torch.ones(4, 6)
    xb, yb, tb = seen["kw"]["batch_map"]((x, "y"))
    assert xb is x and yb == "y" and torch.equal(tb, apply(params, state, x, train=False)[0])


def test_carry_out_copies_history_and_keeps_trees():
    params, state, masks = _tiny()
    trained = base.Trained(params, state, {"o": 1}, [{"loss": 0.5}])
    out = base.carry_out(trained, masks, rewind={"params": params}, extra={"x": 1}, seconds=0.25)
    assert out.carry.params is params and out.carry.masks is masks and out.carry.extra == {"x": 1}
    assert out.history == trained.history and out.history is not trained.history
    assert out.prune_seconds == 0.25 and base.carry_out(trained, masks).prune_seconds is None


def test_score_and_prune_reaches_the_round_target_and_nests():
    params, state, masks = _tiny()
    carry = base.Carry(params, state, None, masks, None, {})
    settings = imp.Settings(rate=0.5, rounds=2)
    score = lambda p, s, m, k: magnitude.magnitude(p, m)  # noqa: E731
    ops = RoundOps(optim.sgd(0.1), base.no_training, score)
    new = imp.score_and_prune(carry, 1, settings, ops=ops, key=0)
    kept, total = mask.count(new)
    assert total - kept == round(0.5 * total) and mask.is_nested(new, masks)
    newer = imp.score_and_prune(carry._replace(masks=new), 2, settings, ops=ops, key=0)
    assert mask.is_nested(newer, new) and mask.count(newer)[0] == total - round(0.75 * total)


def test_setup_eager_builds_eager_steps_from_a_config():
    cfg = runconfig.from_mapping({"model": "mlp", "data": "digits", "batch_size": 32})
    exp, init = setup_eager(cfg)
    params, state = init(0)
    assert exp.batch_size == 32 and params["fc1"]["weight"].shape[1] == 64
    assert 0.0 <= exp.evaluate(params, state, None)["accuracy"] <= 1.0


def test_fc_head_flattens_and_reports_hidden_activations():
    params = {
        "fc1": {"weight": torch.ones(4, 8), "bias": torch.zeros(4)},
        "fc2": {"weight": torch.ones(2, 4), "bias": torch.zeros(2)},
    }
    h = torch.ones(3, 2, 2, 2)
    logits, acts = conv.fc_head(params, h, (3, 1, 4, 4))
    assert logits.shape == (3, 2) and torch.allclose(logits, torch.full((3, 2), 32.0))
    assert set(acts) == {"fc1"} and torch.equal(acts["fc1"], torch.full((3, 4), 8.0))
