"""Every registered criterion: one signature, the right output form, and its formula by hand."""

import pytest
import torch
from _importance_nets import CE

from pure_prune import importance, mask, select, tree
from pure_prune import models as model_registry
from pure_prune.importance import gradient, hessian

SPEC = model_registry.get("mlp")


@pytest.fixture(scope="module")
def inp():
    params, state = SPEC.init(0, sizes=(12, 8, 6, 3))
    g = torch.Generator().manual_seed(0)
    batches = tuple(
        (torch.randn(16, 12, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(2)
    )
    masks = mask.ones_like(params)
    masks["fc1"]["weight"][0, :5] = False  # an already-pruned corner
    return importance.ScoreInput(SPEC.apply, params, state, masks, batches, key=3, groups=SPEC.groups(params))


@pytest.mark.parametrize("name", importance.names())
def test_every_criterion_scores_in_its_form_and_selects_exactly(name, inp):
    crit = importance.get(name)
    scores = crit(inp)
    if crit.level == "element":
        tree.assert_same_structure(scores, inp.masks)
        for s, m in zip(tree.leaves(scores), tree.leaves(inp.masks)):
            assert (s is None) == (m is None)
            if s is not None:
                assert s.shape == m.shape and torch.isfinite(s).all()
        new = select.unstructured(scores, 0.5, masks=inp.masks)
        kept, total = mask.count(new)
        assert total - kept == round(0.5 * total) and mask.is_nested(new, inp.masks)
    else:
        groups = [g for g in inp.groups if g.prunable]
        assert sorted(scores) == sorted(g.name for g in groups)
        assert all(scores[g.name].shape == (g.size,) and torch.isfinite(scores[g.name]).all() for g in groups)
        new = select.units(scores, 0.5, inp.groups, inp.params, masks=inp.masks)
        assert mask.is_nested(new, inp.masks)


def _theta(inp):
    return mask.apply(inp.params, inp.masks)


def test_fisher_obd_and_hessian_formulas(inp):
    fn = inp.model_fn(masked=False)
    theta = _theta(inp)
    f = gradient.empirical_fisher(CE(fn), inp.params, list(inp.batches), masks=inp.masks)
    got = importance.get("fisher")(inp)
    w = theta["fc2"]["weight"]
    assert torch.allclose(got["fc2"]["weight"], 0.5 * f["fc2"]["weight"] * w * w)
    h = hessian.hessian_diag(CE(fn), inp.params, list(inp.batches), masks=inp.masks, key=inp.key)
    assert torch.allclose(importance.get("obd")(inp)["fc2"]["weight"], 0.5 * h["fc2"]["weight"] * w * w)
    assert torch.allclose(importance.get("hessian")(inp)["fc2"]["weight"], h["fc2"]["weight"].abs() * w.abs())
    # pruned entries have theta = 0, so every weight-times-curvature score is 0 there
    assert (importance.get("obd")(inp)["fc1"]["weight"][0, :5] == 0).all()


def test_snip_taylor_and_magnitude_formulas(inp):
    fn = inp.model_fn(masked=False)
    want = gradient.taylor(CE(fn), inp.params, list(inp.batches), masks=inp.masks)["fc1"]["weight"]
    assert torch.equal(importance.get("taylor")(inp)["fc1"]["weight"], want)
    snip = gradient.snip(CE(fn), inp.params, list(inp.batches), masks=inp.masks)["fc1"]["weight"]
    assert torch.equal(importance.get("snip")(inp)["fc1"]["weight"], snip)
    assert torch.equal(importance.get("magnitude")(inp)["fc3"]["weight"], inp.params["fc3"]["weight"].abs())
    assert torch.equal(importance.get("l2")(inp)["fc3"]["weight"], inp.params["fc3"]["weight"] ** 2)


def test_l1_units_sums_the_units_rows(inp):
    got = importance.get("l1_units")(inp)["fc1"]
    w = inp.params["fc1"]["weight"].abs()
    assert torch.allclose(got, w.sum(1))


def test_enhanced_strategies_and_families(inp):
    for strategy in ("simple", "adaptive", "learned"):
        s = importance.get("enhanced")(inp, strategy=strategy)
        assert all(torch.isfinite(v).all() for v in s.values())
    only_w = importance.get("enhanced")(inp, families=("weights",), strategy="simple")
    assert set(only_w) == {"fc1", "fc2"}
    with pytest.raises(ValueError, match="unknown families"):
        importance.get("enhanced")(inp, families=("vibes",))


def test_registry_errors(inp):
    with pytest.raises(ValueError, match="known criteria: .*magnitude"):
        importance.get("nope")
    with pytest.raises(ValueError, match="needs data"):
        importance.get("snip")(inp._replace(batches=()))
    with pytest.raises(ValueError, match="channel groups"):
        importance.get("hap")(inp._replace(groups=()))


def test_random_depends_only_on_the_key(inp):
    a = importance.get("random")(inp)["fc2"]["weight"]
    assert torch.equal(a, importance.get("random")(inp)["fc2"]["weight"])
    assert not torch.equal(a, importance.get("random")(inp._replace(key=4))["fc2"]["weight"])
