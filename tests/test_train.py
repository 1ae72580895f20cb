"""pure_prune.train: masked steps by hand, the exact-zero invariant, compile reuse, evaluate and fit."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._dynamo.testing import CompileCounterWithBackend

from pure_prune import losses, mask, models, optim, rng, select, stage, train, train_fit, tree
from pure_prune.losses import cross_entropy, kd_loss
from pure_prune.testing import close, invariants, strategies
from pure_prune.testing.plugin import scaled_examples

# ----------------------------------------------------------------------------- tiny functional models


def linear_apply(params, state, x, *, train):
    """(N, 2) -> (N, 2) logits, no bias."""
    return x @ params["w"].T, state


def mlp_init(key: int) -> tuple[dict, dict]:
    k1, k2 = rng.split(key, 2)
    params = {
        "fc1": {"b": torch.full((8,), 0.1), "w": rng.normal(k1, (8, 4)) * 0.5},
        "fc2": {"b": torch.zeros(3), "w": rng.normal(k2, (3, 8)) * 0.5},
    }
    return params, {}


def mlp_apply(params, state, x, *, train):
    """(N, 4) -> (N, 3) logits."""
    h = torch.relu(x @ params["fc1"]["w"].T + params["fc1"]["b"])
    return h @ params["fc2"]["w"].T + params["fc2"]["b"], state


def convbn_init(key: int) -> tuple[dict, dict]:
    k1, k2 = rng.split(key, 2)
    params = {
        "bn": {"scale": torch.ones(4), "shift": torch.zeros(4)},
        "conv": {"w": rng.normal(k1, (4, 2, 3, 3)) * 0.3},
        "fc": {"b": torch.zeros(3), "w": rng.normal(k2, (3, 4)) * 0.5},
    }
    return params, {"bn": {"mean": torch.zeros(4), "var": torch.ones(4)}}


def convbn_apply(params, state, x, *, train):
    """(N, 2, H, W) -> conv 3x3 -> BatchNorm -> ReLU -> global mean pool -> (N, 3) logits."""
    h = F.conv2d(x, params["conv"]["w"], padding=1)
    if train:
        mean = reduce(h, "n c h w -> c", "mean")
        var = reduce((h - rearrange(mean, "c -> c 1 1")) ** 2, "n c h w -> c", "mean")
        n = h.numel() // h.shape[1]
        new_state = {
            "bn": {
                "mean": 0.9 * state["bn"]["mean"] + 0.1 * mean,
                "var": 0.9 * state["bn"]["var"] + 0.1 * var * n / (n - 1),
            }
        }
    else:
        mean, var, new_state = state["bn"]["mean"], state["bn"]["var"], state
    h = (h - rearrange(mean, "c -> c 1 1")) / rearrange(torch.sqrt(var + 1e-5), "c -> c 1 1")
    h = torch.relu(
        h * rearrange(params["bn"]["scale"], "c -> c 1 1") + rearrange(params["bn"]["shift"], "c -> c 1 1")
    )
    return reduce(h, "n c h w -> n c", "mean") @ params["fc"]["w"].T + params["fc"]["b"], new_state


def random_masks(params: Any, key: int, density: float) -> Any:
    """Bool masks keeping about ``density`` of every weight matrix; ``None`` for 1-d leaves."""
    keys = iter(rng.split(key, len(tree.leaves(params))))
    return tree.map(lambda p: None if p.ndim == 1 else rng.uniform(next(keys), p.shape) < density, params)


def classification_batch(
    key: int, n: int = 16, shape: tuple[int, ...] = (4,)
) -> tuple[torch.Tensor, torch.Tensor]:
    x = rng.normal(key, (n, *shape))
    y = (reduce(x, "n ... -> n", "sum") > 0).long() + (x.flatten(1)[:, 0] > 1).long()
    return x, y


def run(step, params, state, opt_state, masks, batches):
    for batch in batches:
        params, state, opt_state, metrics = step(params, state, opt_state, masks, batch)
    return params, state, opt_state, metrics


# ----------------------------------------------------------------------------- eager steps by hand


def test_step_by_hand_remasks_a_nonzero_pruned_weight():
    params = {"w": torch.tensor([[0.0, 7.0], [0.0, 0.0]])}  # the pruned entry (0, 1) is not 0 on entry
    masks = {"w": torch.tensor([[True, False], [True, True]])}
    x, y = torch.tensor([[1.0, 2.0]]), torch.tensor([0])
    opt = optim.sgd(1.0)
    step = train.make_step(linear_apply, cross_entropy, opt, compile=False)
    new, state, opt_state, metrics = step(params, {}, opt.init(params), masks, (x, y))
    # masked logits [0, 0]: p = [0.5, 0.5]; dL/dlogits = p - onehot = [-0.5, 0.5]; dW = outer(dL/dlogits, x)
    assert torch.allclose(new["w"], torch.tensor([[0.5, 0.0], [-0.5, -1.0]]))
    assert new["w"][0, 1].item() == 0.0
    assert float(metrics["loss"]) == pytest.approx(math.log(2.0))
    assert float(metrics["accuracy"]) == 1.0  # tie -> class 0
    assert sorted(metrics) == ["accuracy", "loss"] and all(v.ndim == 0 for v in metrics.values())
    assert state == {} and int(opt_state["count"]) == 1
    assert params["w"][0, 1].item() == 7.0  # inputs untouched


def test_model_spec_and_dense_masks_agree():
    class Spec(NamedTuple):
        apply: Any

    params, state = mlp_init(0)
    batch = classification_batch(1)
    opt = optim.sgd(0.1, momentum=0.9)
    results = []
    for model, masks in [
        (mlp_apply, None),
        (Spec(mlp_apply), tree.map(lambda p: None, params)),
        (mlp_apply, tree.map(lambda p: torch.ones(p.shape, dtype=torch.bool), params)),
    ]:
        step = train.make_step(model, cross_entropy, opt, compile=False)
        results.append(step(params, state, opt.init(params), masks, batch))
    for other in results[1:]:
        assert_trees_equal(results[0][0], other[0])
        assert_trees_equal(results[0][2], other[2])


def test_batchnorm_state_and_eval_step():
    params, state = convbn_init(0)
    masks = random_masks(params, 1, 0.5)
    x, y = classification_batch(2, n=6, shape=(2, 5, 5))
    opt = optim.adam(0.01)
    step = train.make_step(convbn_apply, cross_entropy, opt, compile=False)
    _, new_state, _, _ = step(params, state, opt.init(params), masks, (x, y))
    h = F.conv2d(x, torch.where(masks["conv"]["w"], params["conv"]["w"], 0.0), padding=1)
    close.assert_close(new_state["bn"]["mean"], 0.1 * reduce(h, "n c h w -> c", "mean"), 1e-5)
    assert not torch.equal(new_state["bn"]["var"], state["bn"]["var"])

    eval_step = train.make_eval_step(convbn_apply, cross_entropy, compile=False)
    metrics = eval_step(params, new_state, masks, (x, y))
    logits, _ = convbn_apply(mask.apply(params, masks), new_state, x, train=False)
    assert sorted(metrics) == ["correct", "count", "loss_sum"]
    assert metrics["count"].item() == 6
    assert metrics["correct"].item() == int((logits.argmax(-1) == y).sum())
    close.assert_close(metrics["loss_sum"], F.cross_entropy(logits, y, reduction="sum"), 1e-5)


def test_eval_step_and_evaluate_by_hand():
    params = {"w": torch.tensor([[0.5, 9.0], [-0.5, -1.0]])}
    masks = {"w": torch.tensor([[True, False], [True, True]])}
    eval_step = train.make_eval_step(linear_apply, cross_entropy, compile=False)
    b1 = (torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))  # logits [0.5, -0.5], [0, -1]
    b2 = (torch.tensor([[0.0, 1.0]]), torch.tensor([1]))  # logits [0, -1]: wrong
    m1 = eval_step(params, {}, masks, b1)
    ce_right, ce_wrong = math.log(1 + math.exp(-1)), math.log(1 + math.exp(1))
    assert m1["correct"].item() == 2 and m1["count"].item() == 2
    assert float(m1["loss_sum"]) == pytest.approx(2 * ce_right, rel=1e-6)
    out = train.evaluate(eval_step, params, {}, masks, [b1, b2])
    assert out["count"] == 3 and isinstance(out["count"], int)
    assert out["accuracy"] == pytest.approx(2 / 3)
    assert out["loss"] == pytest.approx((2 * ce_right + ce_wrong) / 3, rel=1e-6)
    with pytest.raises(ValueError, match="batches is empty"):
        train.evaluate(eval_step, params, {}, masks, [])
    sums = train.sum_metrics(eval_step, params, {}, masks, [b1, b2])
    assert int(sums["correct"]) == 2 and int(sums["count"]) == 3
    assert float(sums["loss_sum"]) == pytest.approx(2 * ce_right + ce_wrong, rel=1e-6)
    with pytest.raises(ValueError, match="evaluate_seeds: batches is empty"):
        train.sum_metrics(eval_step, params, {}, masks, iter([]), where="evaluate_seeds")


def test_extra_batch_entries_reach_the_loss():
    params, state = mlp_init(3)
    x, y = classification_batch(4)
    teacher = rng.normal(5, (16, 3))
    opt = optim.sgd(0.1)
    step = train.make_step(
        mlp_apply, lambda s, yy, t: kd_loss(s, t, yy, alpha=0.7, T=2.0), opt, compile=False
    )
    _, _, _, metrics = step(params, state, opt.init(params), None, (x, y, teacher))
    expected = kd_loss(mlp_apply(params, state, x, train=True)[0], teacher, y, alpha=0.7, T=2.0)
    assert torch.allclose(metrics["loss"], expected)


# ----------------------------------------------------------------------------- the exact-zero invariant

OPTIMIZERS = {
    "sgd": optim.sgd(0.05, momentum=0.9, weight_decay=0.01),
    "nesterov": optim.sgd(optim.warmup(0.05, 10), momentum=0.9, nesterov=True, weight_decay=0.01),
    "adam": optim.adam(0.01, weight_decay=0.01),
    "adamw": optim.adamw(optim.cosine(0.01, 100), weight_decay=0.1),
}
EAGER_STEPS = {
    name: train.make_step(mlp_apply, cross_entropy, opt, compile=False) for name, opt in OPTIMIZERS.items()
}


MLP_PARAMS = mlp_init(0)[0]  # the shapes every mlp_init(key) shares


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@settings(max_examples=scaled_examples(3), deadline=None)
@given(key=strategies.keys(), masks=strategies.masks(MLP_PARAMS))
def test_pruned_weights_and_state_stay_exactly_zero(name, key, masks):
    params, state = mlp_init(key)
    batches = [classification_batch(rng.fold_in(key, i)) for i in range(4)]
    step, opt_state = EAGER_STEPS[name], OPTIMIZERS[name].init(params)
    new = params
    for i in range(100):
        new, state, opt_state, metrics = step(new, state, opt_state, masks, batches[i % 4])
        if i == 0:  # the initial params are not masked: the first step zeroes them
            invariants.pruned_are_zero(new, masks)
    invariants.pruned_are_zero(new, masks)
    moments = [opt_state[k] for k in ("momentum", "mu", "nu") if k in opt_state]
    assert moments
    invariants.optimizer_state_zero_at_pruned(moments, masks)
    assert math.isfinite(float(metrics["loss"]))
    assert any(bool((p != q).any()) for p, q in zip(tree.leaves(new), tree.leaves(params)))  # it trained


# ----------------------------------------------------------------------------- premasked forward

PREMASKED_STEPS = {
    name: train.make_step(mlp_apply, cross_entropy, opt, compile=False, premasked=True)
    for name, opt in OPTIMIZERS.items()
}


def assert_trees_equal(a: Any, b: Any) -> None:
    tree.assert_same_structure(a, b)
    for path, x, y in zip(tree.paths(a), tree.leaves(a), tree.leaves(b)):
        assert torch.equal(x, y), path


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@settings(max_examples=scaled_examples(3), deadline=None)
@given(key=strategies.keys(), masks=strategies.masks(MLP_PARAMS))
def test_premasked_step_equals_the_masked_step(name, key, masks):
    params, state = mlp_init(key)
    params = mask.apply(params, masks)  # the promise: pruned entries are 0.0 on entry
    batches = [classification_batch(rng.fold_in(key, i)) for i in range(3)]
    opt_state = OPTIMIZERS[name].init(params)
    plain = run(EAGER_STEPS[name], params, state, opt_state, masks, batches)
    fast = run(PREMASKED_STEPS[name], params, state, opt_state, masks, batches)
    for a, b in zip(fast, plain):
        assert_trees_equal(a, b)
    invariants.pruned_are_zero(fast[0], masks)
    moments = [fast[2][k] for k in ("momentum", "mu", "nu") if k in fast[2]]
    invariants.optimizer_state_zero_at_pruned(moments, masks)
    evals = [
        train.make_eval_step(mlp_apply, cross_entropy, compile=False, premasked=flag)(
            fast[0], fast[1], masks, batches[0]
        )
        for flag in (True, False)
    ]
    assert_trees_equal(evals[0], evals[1])


def test_premasked_step_with_a_broken_promise_remasks_and_needs_a_bool():
    params, state = mlp_init(3)
    masks = random_masks(params, 4, 0.5)
    batch = classification_batch(5)
    step = PREMASKED_STEPS["sgd"]
    opt_state = OPTIMIZERS["sgd"].init(params)
    new, _, _, metrics = step(params, state, opt_state, masks, batch)  # params not masked on entry
    invariants.pruned_are_zero(new, masks)  # the returned params are masked all the same
    dense_loss = cross_entropy(mlp_apply(params, state, batch[0], train=True)[0], batch[1])
    assert torch.equal(metrics["loss"], dense_loss)  # this step's forward saw the unmasked params
    with pytest.raises(TypeError, match="premasked must be a bool, got 1"):
        train.make_step(mlp_apply, cross_entropy, OPTIMIZERS["sgd"], premasked=1)
    with pytest.raises(TypeError, match="premasked must be a bool, got 'yes'"):
        train.make_eval_step(mlp_apply, cross_entropy, premasked="yes")


# ----------------------------------------------------------------------------- compiled steps (shared)


class Compiled(NamedTuple):
    counter: CompileCounterWithBackend
    step: Any
    eager: Any
    eval_counter: CompileCounterWithBackend
    eval_step: Any
    opt: optim.Optimizer


@pytest.fixture(scope="module")
def compiled() -> Compiled:
    opt = optim.sgd(optim.multistep(0.05, [2]), momentum=0.9, weight_decay=1e-3)
    counter, eval_counter = CompileCounterWithBackend("inductor"), CompileCounterWithBackend("inductor")
    return Compiled(
        counter,
        train.make_step(convbn_apply, cross_entropy, opt, backend=counter),
        train.make_step(convbn_apply, cross_entropy, opt, compile=False),
        eval_counter,
        train.make_eval_step(convbn_apply, cross_entropy, backend=eval_counter),
        opt,
    )


def test_compiled_step_equals_eager(compiled):
    params, state = convbn_init(7)
    masks = random_masks(params, 8, 0.6)
    batches = [classification_batch(k, n=8, shape=(2, 5, 5)) for k in range(3)]
    opt_state = compiled.opt.init(params)
    ours = run(compiled.step, params, state, opt_state, masks, batches)
    eager = run(compiled.eager, params, state, opt_state, masks, batches)
    for a, b in zip(ours, eager):
        close.assert_trees_close(a, b, 1e-4, per_leaf=False)
    invariants.pruned_are_zero(ours[0], masks)
    invariants.optimizer_state_zero_at_pruned(ours[2]["momentum"], masks)
    got = compiled.eval_step(ours[0], ours[1], masks, batches[0])
    want = train.make_eval_step(convbn_apply, cross_entropy, compile=False)(
        ours[0], ours[1], masks, batches[0]
    )
    close.assert_trees_close(got, want, 1e-4)


def test_compiled_premasked_step_equals_the_eager_masked_step():
    opt = OPTIMIZERS["nesterov"]
    counter = CompileCounterWithBackend("inductor")
    step = train.make_step(mlp_apply, cross_entropy, opt, backend=counter, premasked=True)
    params, state = mlp_init(21)
    batches = [classification_batch(22 + k) for k in range(3)]
    for i, density in enumerate([0.8, 0.3]):  # new mask values: no recompile
        masks = random_masks(params, 30 + i, density)
        start = mask.apply(params, masks)
        ours = run(step, start, state, opt.init(start), masks, batches)
        eager = run(EAGER_STEPS["nesterov"], start, state, opt.init(start), masks, batches)
        for a, b in zip(ours, eager):
            close.assert_trees_close(a, b, 1e-5, per_leaf=False)
        invariants.pruned_are_zero(ours[0], masks)
        invariants.optimizer_state_zero_at_pruned(ours[2]["momentum"], masks)
    assert counter.frame_count == 1


def test_a_given_compiler_compiles_the_body_and_gets_uint8_masks():
    """``compiler=`` replaces torch.compile (here: stage.Compiled, one static graph per shape): the
    eager checks run first, the body sees the masks' uint8 views, the results are the eager step's."""
    opt = OPTIMIZERS["nesterov"]
    seen, built = [], []

    def compiler(body):
        compiled_body = stage.Compiled(body, backend="eager")
        built.append(compiled_body)

        def spy(*args):  # outside the graph: a side effect inside it would become a guard
            seen.append({str(m.dtype) for m in tree.leaves(args[-2]) if m is not None})
            return compiled_body(*args)

        return spy

    step = train.make_step(mlp_apply, cross_entropy, opt, compiler=compiler)
    eval_step = train.make_eval_step(mlp_apply, cross_entropy, compiler=compiler)
    params, state = mlp_init(41)
    masks = random_masks(params, 42, 0.5)
    batches = [classification_batch(43 + k) for k in range(2)]
    ours = run(step, params, state, opt.init(params), masks, batches)
    eager = run(EAGER_STEPS["nesterov"], params, state, opt.init(params), masks, batches)
    for a, b in zip(ours, eager):
        close.assert_trees_close(a, b, 1e-5, per_leaf=False)
    got = eval_step(ours[0], ours[1], masks, batches[0])
    want = train.make_eval_step(mlp_apply, cross_entropy, compile=False)(ours[0], ours[1], masks, batches[0])
    close.assert_trees_close(got, want, 1e-5, per_leaf=False)
    assert len(built) == 2 and set().union(*seen) == {"torch.uint8"}
    assert [s["compiles"] for s in built[0].stats().values()] == [1]  # two steps, one graph
    bad = {**masks, "fc1": {**masks["fc1"], "w": masks["fc1"]["w"][:1]}}
    with pytest.raises(ValueError, match=r"fc1\.w"):  # the eager check still names the bad leaf
        step(params, state, opt.init(params), bad, batches[0])
    with pytest.raises(TypeError, match="compiler must be callable"):
        train.make_step(mlp_apply, cross_entropy, opt, compiler=3)


def test_no_recompile_across_masks_and_lr(compiled):
    params, state = convbn_init(9)
    opt_state = compiled.opt.init(params)
    batch = classification_batch(10, n=8, shape=(2, 5, 5))
    for i, density in enumerate([0.9, 0.5, 0.1]):
        masks = random_masks(params, 20 + i, density)
        params, state, opt_state, _ = compiled.step(params, state, opt_state, masks, batch)
        invariants.pruned_are_zero(params, masks)
        compiled.eval_step(params, state, masks, batch)
    frozen = optim.set_lr(opt_state, 0.0)  # lr 0 from the state: the compiled step must not move params
    still, _, _, _ = compiled.step(params, state, frozen, masks, batch)
    assert_trees_equal(still, params)
    assert compiled.counter.frame_count == 1
    assert compiled.eval_counter.frame_count == 1


# ----------------------------------------------------------------------------- fit and bad input


def test_fit_trains_and_reports(capsys):
    params, state = mlp_init(11)
    masks = random_masks(params, 12, 0.7)
    batches = [classification_batch(30 + k) for k in range(4)]
    opt = optim.sgd(0.1, momentum=0.9)
    step = train.make_step(mlp_apply, cross_entropy, opt, compile=False)
    seen = []

    def batches_fn(epoch):
        seen.append(epoch)
        return batches

    result = train.fit(step, params, state, opt.init(params), masks, batches_fn, 6, progress=True)
    assert seen == list(range(6)) and len(result.history) == 6
    assert sorted(result.history[0]) == ["accuracy", "loss"]
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert int(result.opt_state["count"]) == 24
    invariants.pruned_are_zero(result.params, masks)
    assert "fit" in capsys.readouterr().err
    # epoch 0's loss is the mean of the 4 first-step losses, weighted by batch size (equal here)
    p, s, o, losses_ = params, state, opt.init(params), []
    for b in batches:
        p, s, o, m = step(p, s, o, masks, b)
        losses_.append(float(m["loss"]))
    assert result.history[0]["loss"] == pytest.approx(sum(losses_) / 4, rel=1e-5)
    quiet = train.fit(step, params, state, opt.init(params), masks, batches_fn, 1, progress=False)
    assert capsys.readouterr().err == "" and len(quiet.history) == 1
    calls = []  # a callable progress(done, total, label) gets each epoch, and nothing is printed
    train.fit(
        step, params, state, opt.init(params), masks, batches_fn, 2, progress=lambda *a: calls.append(a)
    )
    assert [c[:2] for c in calls] == [(1, 2), (2, 2)] and calls[0][2].startswith("accuracy=")
    assert capsys.readouterr().err == ""
    with pytest.raises(TypeError, match="progress must be a bool or a callable"):
        train.fit(step, params, state, opt.init(params), masks, batches_fn, 1, progress="yes")
    with pytest.raises(ValueError, match="epochs must be an int >= 0, got -1"):
        train.fit(step, params, state, opt.init(params), masks, batches_fn, -1)
    with pytest.raises(ValueError, match=r"batches_fn\(0\) yielded no batches"):
        train.fit(step, params, state, opt.init(params), masks, lambda e: [], 1, progress=False)


def test_fit_history_weights_each_step_by_its_label_entries():
    """The epoch means weight each step's metrics by its batch's label entries, by hand on numbers
    chosen so that float32 running sums would round (float64 at the epoch's end does not), and a
    metric that only some steps report is divided by every step's entries."""
    metrics = [
        {"loss": torch.tensor(1.0), "extra": torch.tensor(3.0)},
        {"loss": torch.tensor(2.0 + 2.0**-20)},
        {"loss": torch.tensor(4.0), "extra": torch.tensor(5.0)},
    ]
    sizes = [1, 3, 4]
    batches = [(torch.zeros(n, 2), torch.zeros(n, dtype=torch.long)) for n in sizes]
    calls = iter(metrics)

    def step(params, state, opt_state, masks, batch):
        return params, state, opt_state, next(calls)

    (epoch,) = train.fit(step, {}, {}, {}, None, lambda e: batches, 1, progress=False).history
    assert list(epoch) == ["extra", "loss"]
    assert epoch["loss"] == (1.0 * 1 + (2.0 + 2.0**-20) * 3 + 4.0 * 4) / 8
    assert epoch["extra"] == (3.0 * 1 + 5.0 * 4) / 8
    # a long epoch is added up in parts (train_fit.FOLD steps at a time): the same mean
    many = 600
    sizes = [1 + i % 3 for i in range(many)]
    batches = [(torch.zeros(n, 2), torch.zeros(n, dtype=torch.long)) for n in sizes]
    calls = iter([{"loss": torch.tensor(float(i % 7))} for i in range(many)])
    (epoch,) = train.fit(step, {}, {}, {}, None, lambda e: batches, 1, progress=False).history
    assert epoch["loss"] == sum((i % 7) * n for i, n in enumerate(sizes)) / sum(sizes)


@settings(max_examples=scaled_examples(15), deadline=None)
@given(
    key=st.integers(0, 2**30),
    density=st.floats(0.2, 1.0),
    which=st.sampled_from(["sgd", "nesterov", "adam"]),
    conv=st.booleans(),
)
def test_in_place_body_writes_the_pure_steps_results_into_its_inputs(key, density, which, conv):
    """``train.in_place_body(step)`` leaves in the ``params`` and ``opt_state`` tensors it is given
    exactly the new params and optimizer state that ``step`` returns (momentum, Adam moments and the
    step count included), and returns that step's new ``state`` and metrics: the bug it names is an
    in-place step that updates the params but leaves an optimizer-state leaf behind."""
    init, apply, shape = (convbn_init, convbn_apply, (2, 5, 5)) if conv else (mlp_init, mlp_apply, (4,))
    opt = {
        "sgd": optim.sgd(0.1, momentum=0.9),
        "nesterov": optim.sgd(0.05, momentum=0.8, nesterov=True, weight_decay=1e-3),
        "adam": optim.adam(1e-2),
    }[which]
    params, state = init(key)
    masks = random_masks(params, key + 1, density)
    pure = train.make_step(apply, cross_entropy, opt, compile=False)
    in_place = train.in_place_body(pure)
    mine = [train.own_copies(params), state, train.own_copies(opt.init(params))]
    theirs = [params, state, opt.init(params)]
    for i in range(3):
        batch = classification_batch(key + 2 + i, shape=shape)
        p_ids = [id(x) for x in tree.leaves(mine[0])]
        new_state, metrics = in_place(mine[0], mine[1], mine[2], masks, batch)
        *theirs, want_metrics = pure(*theirs, masks, batch)
        mine[1] = new_state
        assert [id(x) for x in tree.leaves(mine[0])] == p_ids  # the same tensors, written in place
        for got, want in zip(tree.leaves(mine), tree.leaves(theirs), strict=True):
            assert torch.equal(got, want)
        assert all(torch.equal(metrics[k], want_metrics[k]) for k in want_metrics)


def test_fit_runs_a_compiled_step_in_place_with_the_same_results():
    """``fit`` runs a compiled ``make_step`` through its ``in_place`` variant on copies of its own:
    the params, optimizer state and history equal those of the same step returning new trees (its
    ``in_place`` hidden), bit for bit, and the caller's trees are left as they were."""
    opt = optim.sgd(0.1, momentum=0.9)
    step = train.make_step(mlp_apply, cross_entropy, opt, compile=True, backend="aot_eager")
    assert callable(step.in_place)
    assert train.in_place_step(step, MLP_PARAMS, opt.init(MLP_PARAMS)) is step.in_place
    tracked = tree.map(lambda p: p.clone().requires_grad_(), MLP_PARAMS)
    assert train.in_place_step(step, tracked, opt.init(MLP_PARAMS)) is None  # autograd: the pure step
    assert train.in_place_step(train.make_step(mlp_apply, cross_entropy, opt, compile=False), {}, {}) is None
    params, state = mlp_init(3)
    masks = random_masks(params, 4, 0.6)
    params = mask.apply(params, masks)
    opt_state = opt.init(params)
    before = tree.map(torch.clone, (params, opt_state))
    batches = [classification_batch(10 + i) for i in range(4)]

    def hidden(*args):  # the same step without in_place
        return step(*args)

    got = train.fit(step, params, state, opt_state, masks, lambda e: batches, 2, progress=False)
    want = train.fit(hidden, params, state, opt_state, masks, lambda e: batches, 2, progress=False)
    for a, b in zip(tree.leaves((got.params, got.opt_state)), tree.leaves((want.params, want.opt_state))):
        assert torch.equal(a, b)
    assert got.history == want.history
    for a, b in zip(tree.leaves((params, opt_state)), tree.leaves(before)):
        assert torch.equal(a, b)  # the caller's trees are untouched
    assert all(a is not b for a, b in zip(tree.leaves(got.params), tree.leaves(params)))


def test_own_copies_are_dense_and_share_no_memory():
    count = torch.zeros(()).expand(4)  # a stride-0 view, as a stacked seed counter can be
    trees = {"count": count, "w": torch.arange(6.0).reshape(2, 3).T, "none": None, "n": 3}
    copies = train.own_copies(trees)
    assert copies["count"].stride() == (1,) and copies["w"].is_contiguous()
    assert torch.equal(copies["w"], trees["w"]) and copies["none"] is None and copies["n"] == 3
    assert copies["w"].data_ptr() != trees["w"].data_ptr()


def test_metric_sums_of_stacked_seeds_by_hand():
    """``MetricSums`` over ``(S,)`` metrics (a stack of seeds): per seed, the entries-weighted mean,
    in float64; a sum over more than ``FOLD`` steps equals the one-go sum; no step: an error."""
    sums = train.MetricSums()
    sums.add({"loss": torch.tensor([1.0, 2.0]), "accuracy": torch.tensor([0.5, 1.0])}, 2)
    sums.add({"loss": torch.tensor([4.0, 8.0]), "accuracy": torch.tensor([0.0, 0.25])}, 6)
    means = sums.means()
    assert list(means) == ["accuracy", "loss"] and sums.count == 8
    assert means["loss"].dtype == torch.float64
    assert means["loss"].tolist() == [(1.0 * 2 + 4.0 * 6) / 8, (2.0 * 2 + 8.0 * 6) / 8]
    assert means["accuracy"].tolist() == [(0.5 * 2 + 0.0 * 6) / 8, (1.0 * 2 + 0.25 * 6) / 8]
    long = train.MetricSums()
    steps = 2 * train_fit.FOLD + 3
    for i in range(steps):
        long.add({"m": torch.tensor([float(i % 5), float(i % 3)])}, 1 + i % 2)
    weights = [1 + i % 2 for i in range(steps)]
    want = [sum((i % p) * w for i, w in enumerate(weights)) / sum(weights) for p in (5, 3)]
    assert long.means()["m"].tolist() == want
    with pytest.raises(ZeroDivisionError, match="no step"):
        train.MetricSums().means()


def test_bad_input_is_caught_before_the_model_runs():
    calls = []

    def recording_apply(params, state, x, *, train):
        calls.append(1)
        return mlp_apply(params, state, x, train=train)

    params, state = mlp_init(0)
    opt = optim.sgd(0.1)
    step = train.make_step(recording_apply, cross_entropy, opt, compile=False)
    eval_step = train.make_eval_step(recording_apply, cross_entropy, compile=False)
    batch = classification_batch(1)
    bad = random_masks(params, 2, 0.5)
    bad["fc2"]["w"] = torch.ones(8, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"'fc2\.w' has shape \(8, 3\)"):
        step(params, state, opt.init(params), bad, batch)
    with pytest.raises(ValueError, match=r"fc1\.w"):
        eval_step(params, state, {"fc1": {"b": None}, "fc2": bad["fc2"]}, batch)
    with pytest.raises(TypeError, match=r"batch must be a tuple \(x, y, \*extra\), got Tensor"):
        step(params, state, opt.init(params), None, batch[0])
    assert calls == []
    with pytest.raises(TypeError, match="model must be a ModelSpec"):
        train.make_step(42, cross_entropy, opt)
    with pytest.raises(TypeError, match="loss must be callable"):
        train.make_eval_step(mlp_apply, "ce")
    with pytest.raises(TypeError, match="optimizer must be an optim.Optimizer"):
        train.make_step(mlp_apply, cross_entropy, torch.optim.SGD)


def test_compiled_step_sees_masks_edited_in_place_and_replaced(one_thread):
    """The compiled step keeps the uint8 views of the last masks between calls: an in-place edit
    of those mask tensors shows through the views, and new mask tensors get new views; each call
    equals a fresh step given the same masks."""
    spec = models.get("mlp")
    params, state = spec.init(0, sizes=(12, 16, 4))
    x = rng.normal(1, (8, 12))
    y = torch.randint(0, 4, (8,), generator=rng.generator(2))
    opt = optim.sgd(0.05, momentum=0.9)
    masks = select.unstructured(tree.map(lambda p: p.abs() if p.ndim >= 2 else None, params), 0.5)

    def make():
        return train.make_step(spec, losses.cross_entropy, opt, compile=True, backend="eager")

    kept = make()
    args = (params, state, opt.init(params))
    kept(*args, masks, (x, y))
    for edit in ("in place", "replaced"):
        if edit == "in place":
            for m in tree.leaves(masks):
                if m is not None:
                    m[0].fill_(False)
        else:
            masks = select.unstructured(tree.map(lambda p: p.abs() if p.ndim >= 2 else None, params), 0.8)
        got, want = kept(*args, masks, (x, y)), make()(*args, masks, (x, y))
        for a, b in zip(tree.leaves(got[0]), tree.leaves(want[0])):
            assert torch.equal(a, b), edit
        for p, m in zip(tree.leaves(got[0]), tree.leaves(masks)):
            if m is not None:
                assert bool((p[~m] == 0).all()), edit  # pruned by the masks of this call
