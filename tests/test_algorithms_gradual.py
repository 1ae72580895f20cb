"""Gradual pruning (algorithms.gradual): segments of a schedule, masks tightening during one training."""

from __future__ import annotations

import pytest
import torch

from pure_prune import mask, models, optim, tree
from pure_prune.algorithms import base, gradual, masking
from pure_prune.algorithms.ops import RoundOps
from pure_prune.importance import magnitude
from pure_prune.schedule import linear_steps, one_shot, polynomial

SPEC = models.get("mlp")


def by_magnitude(params, state, masks, key):
    return magnitude.magnitude(params, masks)


def test_segments_of_source_a_schedule():
    # equal steps (linear_steps): 5 steps, one every 15 epochs from epoch 30, 8% -> 40%
    segs = gradual.segments(linear_steps(0.4, steps=5, start=30, every=15), 100)
    assert [(a, b) for a, b, _ in segs] == [(0, 30), (30, 45), (45, 60), (60, 75), (75, 90), (90, 100)]
    assert [s for _, _, s in segs] == pytest.approx([0.0, 0.08, 0.16, 0.24, 0.32, 0.40])


def test_segments_merge_equal_targets_and_reject_bad_schedules():
    assert gradual.segments(one_shot(0.5, at=2), 4) == [(0, 2, 0.0), (2, 4, 0.5)]
    sched = polynomial(0.0, 0.5, start=0, every=2, updates=2)  # 0.5*(1-(1-k/2)^3): 0, 0.4375, 0.5
    assert gradual.segments(sched, 6) == [(0, 2, 0.0), (2, 4, 0.4375), (4, 6, 0.5)]
    with pytest.raises(ValueError, match="masks only tighten"):
        gradual.segments(lambda e: 0.5 - 0.1 * e, 3)
    with pytest.raises(ValueError, match=r"not a sparsity in \[0, 1\]"):
        gradual.segments(lambda e: 1.5, 3)
    with pytest.raises(ValueError, match="epochs must be an int >= 1"):
        gradual.segments(lambda e: 0.0, 0)


class Recorder:
    """A train_fn that records each call and nudges the weights (so scores change between segments)."""

    def __init__(self):
        self.calls = []

    def __call__(self, params, state, opt_state, masks, *, start, stop, key, step=None, batch_map=None):
        self.calls.append(
            dict(start=start, stop=stop, key=key, masks=masks, opt_state=opt_state, params=params)
        )
        opt_state = {**opt_state, "count": opt_state["count"] + (stop - start)}
        moved = tree.map(lambda p, m: p if m is None else torch.where(m, p * 1.5 + 0.01, 0.0), params, masks)
        return base.Trained(moved, state, opt_state, [{"epoch": float(e)} for e in range(start, stop)])


def test_masks_tighten_during_one_training_with_the_optimizer_state_carried():
    params, state = SPEC.init(0, sizes=(8, 12, 12, 3))
    masks = masking.initial(params)
    rec = Recorder()
    carry, all_masks, hist = gradual.run(
        params,
        state,
        masks,
        linear_steps(0.6, steps=3, start=2, every=2),
        8,
        ops=RoundOps(optim.sgd(0.1), rec, by_magnitude),
        key=5,
    )
    assert [(c["start"], c["stop"]) for c in rec.calls] == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert len({c["key"] for c in rec.calls}) == 1  # one continuous run: epoch e has one data order
    assert [int(c["opt_state"]["count"]) for c in rec.calls] == [0, 2, 4, 6]  # carried, not reset
    n = sum(m.numel() for m in tree.leaves(masks) if m is not None)
    for m, s in zip(all_masks, [0.0, 0.2, 0.4, 0.6]):
        assert mask.count(m)[0] == n - round(s * n)
    for new, old in zip(all_masks[1:], all_masks):
        assert mask.is_nested(new, old)
    for c in rec.calls:  # each segment trains masked weights
        assert all(
            bool((p[~m] == 0).all())
            for p, m in zip(tree.leaves(c["params"]), tree.leaves(c["masks"]))
            if m is not None
        )
    assert [h[0]["epoch"] for h in hist] == [0.0, 2.0, 4.0, 6.0]
    assert carry.masks is all_masks[-1]


def test_next_round_checks_the_segment_index():
    params, state = SPEC.init(0, sizes=(4, 3, 2))
    carry = base.Carry(params, state, optim.sgd(0.1).init(params), masking.initial(params))
    with pytest.raises(ValueError, match="segment index"):
        gradual.next_round(
            carry,
            0,
            [(0, 1, 0.0), (1, 2, 0.5)],
            ops=RoundOps(optim.sgd(0.1), base.no_training, by_magnitude),
            key=0,
        )
