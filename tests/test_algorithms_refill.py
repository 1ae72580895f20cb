"""Refill (algorithms.refill): whole channels refilled and paid for; fillback 0 is plain IMP."""

from __future__ import annotations

import pytest
import torch

from pure_prune import mask, models, tree
from pure_prune.algorithms import imp, masking, refill
from pure_prune.algorithms.ops import RoundOps
from pure_prune.app.experiment import setup
from pure_prune.app.trainer import epoch_trainer
from pure_prune.importance import magnitude

SPEC = models.get("mlp")
SIZES = (64, 16, 16, 10)


pytestmark = pytest.mark.usefixtures("one_thread")


def by_magnitude(params, state, masks, key):
    return magnitude.magnitude(params, masks)


def hand_case():
    """fc1 has 4 units over 4 inputs; the IMP mask keeps 3, 1, 2, 0 of their weights (6 of 16)."""
    params, _ = SPEC.init(0, sizes=(4, 4, 2))
    masks = mask.ones_like(params)
    masks["fc1"]["weight"] = torch.tensor(
        [[1, 1, 1, 0], [0, 1, 0, 0], [1, 0, 0, 1], [0, 0, 0, 0]], dtype=torch.bool
    )
    return params, masks, SPEC.groups(params)


def test_refill_by_hand():
    params, masks, groups = hand_case()
    refilled, removed = refill.refilled_units(masks, params, groups, 0.25)["fc1"]
    # top unit by kept count (unit 0: 3) refilled to 4: one entry over the budget of 6, paid by
    # removing from the bottom: unit 3 (saves 0) then unit 1 (saves 1)
    assert refilled.tolist() == [True, False, False, False] and removed.tolist() == [False, True, False, True]
    out = refill.refill(masks, params, groups, 0.25)
    assert out["fc1"]["weight"].tolist() == [[True] * 4, [False] * 4, [True, False, False, True], [False] * 4]
    assert out["fc2"]["weight"][:, [1, 3]].sum() == 0 and out["fc2"]["weight"][:, [0, 2]].all()  # consumers
    assert int(out["fc1"]["weight"].sum()) <= int(masks["fc1"]["weight"].sum())
    # two refilled units (8 entries) exceed the budget alone: every other unit goes (Refill+ regime)
    refilled, removed = refill.refilled_units(masks, params, groups, 0.5)["fc1"]
    assert refilled.tolist() == [True, False, True, False] and removed.tolist() == [False, True, False, True]


def test_fillback_zero_leaves_the_masks_exactly():
    params, masks, groups = hand_case()
    out = refill.refill(masks, params, groups, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(tree.leaves(out), tree.leaves(masks)) if a is not None)


def test_l1_criterion_ranks_by_kept_weights():
    params, masks, groups = hand_case()
    params["fc1"]["weight"] = torch.tensor(
        [[0.1, 0.1, 0.1, 9.0], [0, 5.0, 0, 0], [1.0, 0, 0, 1.0], [0, 0, 0, 0]]
    )
    refilled, _ = refill.refilled_units(masks, params, groups, 0.25, criterion="l1")["fc1"]
    assert refilled.tolist() == [False, True, False, False]  # |5.0| beats 0.3 and 2.0 (9.0 is pruned)
    with pytest.raises(ValueError, match="known: remain, l1"):
        refill.refill(masks, params, groups, 0.1, criterion="l2")
    with pytest.raises(ValueError, match=r"fillback_rate must be in \[0, 1\]"):
        refill.mask_fn(groups, 1.5)


@pytest.fixture(scope="module")
def exp():
    return setup("mlp", "digits", batch_size=128, lr=0.05, compile=False, model_cfg={"sizes": SIZES})[0]


def run_imp(exp, mask_fn):
    params, state = exp.model.init(2, sizes=SIZES)
    return imp.run(
        params,
        state,
        masking.initial(params),
        imp.Settings(rate=0.5, rounds=2, epochs=1),
        ops=RoundOps(exp.optimizer, epoch_trainer(exp), by_magnitude),
        key=4,
        mask_fn=mask_fn,
    )


def test_fillback_zero_equals_plain_imp_exactly(exp):
    plain = run_imp(exp, None)
    params, _ = exp.model.init(2, sizes=SIZES)
    zero = run_imp(exp, refill.mask_fn(exp.model.groups(params), 0.0))
    for a, b in zip(tree.leaves(plain.carry.params), tree.leaves(zero.carry.params)):
        assert torch.equal(a, b)
    for ma, mb in zip(plain.masks, zero.masks):
        assert all(torch.equal(a, b) for a, b in zip(tree.leaves(ma), tree.leaves(mb)) if a is not None)


@pytest.mark.parametrize("rate", [0.1, 0.25, 0.5])
def test_refill_restores_exactly_the_requested_share_of_channels(rate):
    params, _ = SPEC.init(5, sizes=(12, 20, 20, 4))
    groups = SPEC.groups(params)
    m = masking.initial(params)
    imp_masks = masking.prune_to(magnitude.magnitude(params, m), 0.7, struct="unstructured", masks=m)
    plan = refill.refilled_units(imp_masks, params, groups, rate)
    out = refill.refill(imp_masks, params, groups, rate)
    inputs_alive = torch.ones(12, dtype=torch.bool)  # the columns no upstream removal took away
    for g in groups:
        refilled, removed = plan[g.name]
        rows = out[g.name]["weight"]
        assert int(refilled.sum()) == round(rate * g.size)
        assert bool(rows[refilled][:, inputs_alive].all()) and not bool((refilled & removed).any())
        kept_before = imp_masks[g.name]["weight"].sum(dim=1)
        top = torch.sort(kept_before, descending=True, stable=True).indices[: round(rate * g.size)]
        assert sorted(top.tolist()) == torch.nonzero(refilled).flatten().tolist()  # the top of the ranking
        budget = int(kept_before.sum())
        assert int(rows.sum()) <= max(budget, int(refilled.sum()) * rows.shape[1])
        assert bool((~rows[removed]).all())
        inputs_alive = ~removed
