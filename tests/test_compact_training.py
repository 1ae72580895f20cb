"""Tests for pure_prune.compact_training: training the compacted form equals training the masked
model, forms are made when the recompilation knobs say so, and a compact run compiles once per form."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pure_prune import compact_training, losses, mask, optim, rng, select, train, tree
from pure_prune import models as model_registry
from pure_prune.algorithms.base import Trained
from pure_prune.app import runner
from pure_prune.app.runconfig import RunConfig
from pure_prune.testing import close

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = {  # model -> (config, one input sample's shape, classes)
    "mlp": ({"sizes": (12, 9, 7, 5)}, (12,), 5),
    "conv2": ({"width": 4, "hidden": (6,), "image_size": 8}, (3, 8, 8), 10),
    "vgg11": ({"width": 4, "hidden": 8}, (3, 32, 32), 10),  # BatchNorm running statistics
}


def _unit_masks(spec, params, s: float, key: int, masks=None):
    groups = spec.groups(params)
    scores = {g.name: rng.uniform(rng.fold_in(key, i), (g.size,)) for i, g in enumerate(groups) if g.prunable}
    masks = mask.ones_like(params) if masks is None else masks
    return select.units(scores, s, groups, params, masks=masks), groups


def _loop_trainer(spec, batches, opt):
    """A TrainFn that takes one eager masked SGD step per batch (the epochs are ignored)."""
    step = train.make_step(spec, losses.cross_entropy, opt, compile=False)

    def fn(params, state, opt_state, masks, *, start, stop, key, step_=None, batch_map=None, **_):
        for b in batches:
            params, state, opt_state, _ = step(params, state, opt_state, masks, b)
        return Trained(params, state, opt_state, [])

    return fn


def _close(a, b, rtol):
    """Float leaves within ``rtol`` of the tree's largest magnitude."""
    floats = [
        (x, y)
        for x, y in zip(tree.leaves(a), tree.leaves(b), strict=True)
        if isinstance(x, torch.Tensor) and x.is_floating_point()
    ]
    close.assert_trees_close([x for x, _ in floats], [y for _, y in floats], rtol, per_leaf=False)


def _double(t):
    """``t`` with its floating-point tensor leaves in float64 (see the comment below)."""
    return tree.map(lambda x: x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x, t)


# Why float64 and rtol 1e-9. Compacting changes the GEMM shapes, so the compact and the masked run
# round differently; that is all that differs (float64 runs agree to ~1e-13). But a training
# run is not a smooth function of its params: a ReLU (or max-pool) switches where a pre-activation
# crosses 0, and the gradient jumps there. In float32, vgg11 (s=0.5, key=15840, Adam) reaches a
# kept unit (block4.0, channel 13) whose pre-activation after 2 steps is -1.7e-6 in the masked run
# and +4.1e-6 in the compact one (activations ~4; the two runs' params differ by 1.0e-6). The
# 3rd step's gradient then differs by 9.2e-2 of its largest entry (0.33) -- also in float64
# evaluated at the two runs' params, so it is the kink, not the arithmetic -- and Adam's
# mu = 0.9 mu + 0.1 g carries 0.1 * 0.031 = 3.1e-3 of it, 0.062 of mu's largest entry (0.049).
# No tolerance bounds such a jump (it is any share of a gradient), and the chance of one is the
# chance that one of the ~5e4 pre-activations of a step lies within the rounding (~1e-6) of 0:
# 3 of 306 float32 runs of random examples (all vgg11, all Adam) exceeded 1e-3. In float64 that
# rounding is ~1e-15, so a kink is never within reach: over 200 random examples of this test
# (both rounds) the worst difference was 4.5e-13 (vgg11, Adam; SGD 9.9e-14; mlp, conv2 < 1e-15).
# rtol 1e-9 is that with a 2000x margin, and far below what a compaction bug leaves: expand
# filling removed units with 1e-3, moments not carried into the form, the consumer reading its
# kept units in another order, or removed units losing their model state each fail by ~1e-3 or more.
# The compaction and the step have no dtype-specific code (float32 outputs of the compact form
# are held to the masked model's in test_compact.py).
# Adam's eps is raised to 1e-3: its update lr * mu / (sqrt(nu) + eps) moves by at most
# lr * dg / eps for a gradient rounding dg (float64: ~1e-15 for sums of thousands of terms), which
# at eps=1e-8 is 0.01 * 1e-15 / 1e-8 = 1e-9 per step, at the tolerance (5.8e-12 seen), and at
# eps=1e-3 1e-14.
RTOL = 1e-9


@settings(max_examples=9, deadline=None)
@example(name="vgg11", s=0.5, key=15840)  # a ReLU kink 6.2e-2 apart in float32 (see above)
@example(name="vgg11", s=0.25, key=384)  # 2.3e-3 apart in float32
@example(name="conv2", s=0.75, key=3485)  # round 2 prunes all of conv2 (see the note in the test)
@given(name=st.sampled_from(sorted(CASES)), s=st.sampled_from([0.25, 0.5, 0.75]), key=st.integers(0, 2**16))
def test_training_the_compacted_form_equals_training_the_masked_model(name, s, key):
    cfg, shape, classes = CASES[name]
    spec = model_registry.get(name)
    params, state = _double(spec.init(key, **cfg))
    masks, groups = _unit_masks(spec, params, s, key + 1)
    params = mask.apply(params, masks)
    batches = [
        (
            rng.normal(key + 2 + i, (6, *shape)).double(),
            torch.randint(0, classes, (6,), generator=rng.generator(key + i)),
        )
        for i in range(3)
    ]
    opt = optim.sgd(0.1, momentum=0.9) if key % 2 else optim.adam(0.01, eps=1e-3, weight_decay=1e-3)
    plain = _loop_trainer(spec, batches, opt)
    forms = []
    small = compact_training.compacting_trainer(
        plain,
        groups,
        recompile_every=100,
        threshold=1.0,
        on_form=lambda f, made, why: forms.append((f, made)),
    )
    o0 = opt.init(params)
    want = plain(params, state, o0, masks, start=0, stop=1, key=0)
    got = small(params, state, o0, masks, start=0, stop=1, key=0)
    assert sum(forms[0][0].sizes.values()) < sum(g.size for g in groups)  # it did train a smaller model
    _check_round(spec, got, want, state, masks, batches[0][0], o0)
    # a 2nd round, pruned further: the knobs keep the form, so the alive units are padded with removed
    # ones (trained under their all-False masks); it starts from the 1st round's non-zero moments
    masks = _unit_masks(spec, params, s + (1 - s) / 2, key + 1, masks=masks)[0]
    if any(m is not None and m.ndim > 1 and not m.any() for m in tree.leaves(masks)):
        # a whole layer pruned: the next layer's units then have no input, and one whose bias is 0
        # is removable (compact_units' rule) although its consumer weights are kept; they come back
        # as 0 where the masked run keeps their (unused) values (compact_training's docstring)
        return
    params = mask.apply(want.params, masks)
    before = want  # the 1st round's masked run: both runs of the 2nd round start from it
    want = plain(params, before.state, before.opt_state, masks, start=0, stop=1, key=0)
    got = small(params, before.state, before.opt_state, masks, start=0, stop=1, key=0)
    assert forms[1] == (forms[0][0]._replace(compressions=forms[1][0].compressions), False)
    _check_round(spec, got, want, before.state, masks, batches[0][0], o0)


def _check_round(spec, got, want, state, masks, x, o0):
    """``got`` (the compact run) equals ``want`` (the masked run) from the same inputs (``state``)."""
    _close(got.params, want.params, RTOL)
    _close(got.opt_state, want.opt_state, RTOL)
    # model state: as in the masked run, except removed units, whose state is left as it was
    for g, w, before in zip(tree.leaves(got.state), tree.leaves(want.state), tree.leaves(state), strict=True):
        same = (
            (g - w).abs() <= RTOL * torch.maximum(g.abs().max(), w.abs().max())
            if g.is_floating_point()
            else g == w
        )
        assert bool((same | (g == before)).all())
    out_got, _ = spec.apply(got.params, got.state, x, train=False)
    out_want, _ = spec.apply(want.params, want.state, x, train=False)
    close.assert_close(out_got, out_want, RTOL)
    for p, m in zip(tree.leaves(got.params), tree.leaves(masks), strict=True):  # pruned stay exactly 0.0
        if m is not None:
            assert bool((p[~m] == 0).all())
    assert tree.structure(got.params) == tree.structure(want.params)
    assert [tuple(x.shape) for x in tree.leaves(got.opt_state)] == [tuple(x.shape) for x in tree.leaves(o0)]


def test_forms_follow_source_a_knobs_and_reuse_pads_the_alive_units():
    cfg, _, _ = CASES["mlp"]
    spec = model_registry.get("mlp")
    params, state = spec.init(0, **cfg)
    groups = spec.groups(params)
    sizes_seen = []

    def record(params, state, opt_state, masks, **_):
        sizes_seen.append(tuple(x.shape for x in tree.leaves(params)))
        return Trained(params, state, opt_state, [])

    log = []
    fn = compact_training.compacting_trainer(
        record,
        groups,
        recompile_every=3,
        threshold=0.95,
        on_form=lambda f, made, why: log.append((f, made, why)),
    )
    opt_state = optim.sgd(0.1).init(params)
    m = mask.ones_like(params)
    chain = [m]
    for s in (0.2, 0.4, 0.6):  # nested unit masks, pruned further each time
        scores = {g.name: torch.arange(g.size, dtype=torch.float32) for g in groups if g.prunable}
        chain.append(select.units(scores, s, groups, params, masks=mask.ones_like(params)))
    made = []
    for m in chain:
        out = fn(mask.apply(params, m), state, opt_state, m, start=0, stop=1, key=0)
        made.append(log[-1][1])
        for p, k in zip(tree.leaves(out.params), tree.leaves(m), strict=True):
            if k is not None:
                assert bool((p[~k] == 0).all())
    # first call: made; the masks of 0.2 and 0.4 move sparsity by < 0.95 and are not the 3rd compression: reused;
    # 0.6 is the 3rd compression: made
    assert made == [True, False, False, True]
    assert sizes_seen[0] == sizes_seen[1] == sizes_seen[2] != sizes_seen[3]
    assert "multiple of recompile_every=3" in log[3][2]


def test_pad_kept_and_mask_sparsity_by_hand():
    alive = {"a": torch.tensor([2, 5]), "b": torch.tensor([0, 1, 2])}
    padded = compact_training.pad_kept(alive, {"a": 4, "b": 3})
    assert padded["a"].tolist() == [0, 1, 2, 5] and padded["b"].tolist() == [0, 1, 2]
    assert compact_training.pad_kept(alive, {"a": 1, "b": 3}) is None
    masks = {"w": torch.tensor([True, False, False, True]), "b": None}
    assert compact_training.mask_sparsity(masks) == 0.5
    assert compact_training.mask_sparsity({"b": None}) == 0.0


# ----------------------------------------------------------------------------- through the runner
def _cfg(tmp_path: Path, name: str, **knobs) -> RunConfig:
    base = dict(
        model_cfg={"sizes": (64, 16, 16, 10)},
        method="imp",
        struct="channels",
        rate=0.4,
        pruning_times=3,
        epochs=1,
        batch_size=128,
        compact=True,
        compile=True,
        backend="eager",
        progress=False,
        save_dir=str(tmp_path / name),
    )
    return dataclasses.replace(RunConfig(), **{**base, **knobs})


def test_compact_run_compiles_once_per_form(tmp_path):
    lines = []
    res = runner.run(_cfg(tmp_path, "every", recompile_every=1), log=lines.append)
    units = [r["form_units"] for r in res.rounds]
    assert units == sorted(units, reverse=True) and len(set(units)) == 4  # a smaller form every round
    assert all(r["form_made"] for r in res.rounds)
    # the train step of each round's form (the eval step runs eagerly: run_context.build_context)
    assert [r["compiled_graphs"] for r in res.rounds] == [1, 1, 1, 1]
    assert sum("compact: new form" in x for x in lines) == 4

    kept = runner.run(
        _cfg(tmp_path, "kept", recompile_every=100, sparsity_change_threshold=1.0), log=lines.append
    )
    assert [r["form_made"] for r in kept.rounds] == [True, False, False, False]
    assert [r["compiled_graphs"] for r in kept.rounds] == [1, 0, 0, 0]  # masks on one form: no recompile
    for a, b in zip(res.rounds, kept.rounds, strict=True):  # the same masks either way
        assert a["sparsity"] == b["sparsity"]


@pytest.mark.parametrize(
    "knobs, needle",
    [
        (dict(struct="unstructured"), "struct must be 'channels'"),
        (dict(seeds=2), "one seed at a time"),
        (dict(compact=False, recompile_every=3), "set compact = true"),
        (dict(recompile_every=0), "recompile_every must be >= 1"),
        (dict(method="rsst", rate=0.2), "has no effect with method 'rsst'"),
    ],
)
def test_compact_configs_refused_with_a_reason(tmp_path, knobs, needle):
    with pytest.raises(ValueError, match=needle):
        _cfg(tmp_path, "bad", **knobs).check()


def test_a_resumed_compact_run_makes_its_forms_where_the_whole_run_does(tmp_path):
    knobs = dict(compile=False, pruning_times=4, recompile_every=2, sparsity_change_threshold=1.0)
    whole = runner.run(_cfg(tmp_path, "whole", **knobs), log=lambda _: None)
    cut = _cfg(tmp_path, "cut", **knobs)
    runner.run(cut, log=lambda _: None)
    for r in (3, 4):  # as if killed after round 2
        (Path(cut.save_dir) / "checkpoints" / f"round_{r:04d}.safetensors").unlink()
    resumed = runner.run(cut, resume=True, log=lambda _: None)
    made = [r["form_made"] for r in whole.rounds]
    assert made == [True, False, True, False, True]  # every 2nd compression, as recompile_every says
    assert [r["form_made"] for r in resumed.rounds] == made
    assert [r["form_units"] for r in resumed.rounds] == [r["form_units"] for r in whole.rounds]
    for a, b in zip(tree.leaves(whole.carry.params), tree.leaves(resumed.carry.params), strict=True):
        assert torch.equal(a, b)


def test_a_round_that_trains_twice_reports_the_form_it_made(tmp_path):
    res = runner.run(
        _cfg(tmp_path, "rewind", compile=False, epochs=2, rewind_epoch=1, pruning_times=1), log=lambda _: None
    )
    assert res.rounds[0]["form_made"] and res.rounds[0]["form_reason"] == "no compiled form yet"
