"""pure_prune.optim: torch.optim trajectories, masked updates, schedules, lr overrides, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from pure_prune import mask, optim, rng, tree
from pure_prune.losses import cross_entropy

X = rng.normal(1, (32, 5))
Y = torch.randint(0, 3, (32,), generator=rng.generator(2))
P0 = {"fc": {"b": rng.normal(3, (3,)), "w": rng.normal(4, (3, 5))}}


def objective(params):
    return cross_entropy(X @ params["fc"]["w"].T + params["fc"]["b"], Y)


def our_trajectory(opt, steps=20, masks=None):
    params, state, out = P0, opt.init(P0), []
    for _ in range(steps):
        updates, state = opt.update(torch.func.grad(objective)(params), state, params, masks)
        params = optim.apply_updates(params, updates)
        out.append(params)
    return out, state


def torch_trajectory(make_opt, make_sched=None, steps=20):
    live = {k: torch.nn.Parameter(v.clone()) for k, v in P0["fc"].items()}
    opt = make_opt([live["b"], live["w"]])
    sched = make_sched(opt) if make_sched else None
    out = []
    for _ in range(steps):
        opt.zero_grad()
        objective({"fc": live}).backward()
        opt.step()
        if sched:
            sched.step()
        out.append({"fc": {k: v.detach().clone() for k, v in live.items()}})
    return out


def assert_trajectories_close(ours, theirs):
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        for path, x, y in zip(tree.paths(a), tree.leaves(a), tree.leaves(b)):
            assert torch.allclose(x, y, rtol=1e-5, atol=1e-6), (i, path, (x - y).abs().max())


CASES = {
    "sgd": (optim.sgd(0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    "sgd_momentum": (optim.sgd(0.1, momentum=0.9), lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
    "sgd_nesterov_wd": (
        optim.sgd(0.1, momentum=0.9, nesterov=True, weight_decay=0.05),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05),
    ),
    "sgd_wd": (optim.sgd(0.2, weight_decay=0.1), lambda p: torch.optim.SGD(p, lr=0.2, weight_decay=0.1)),
    "adam": (optim.adam(0.05), lambda p: torch.optim.Adam(p, lr=0.05)),
    "adam_wd": (
        optim.adam(0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
        lambda p: torch.optim.Adam(p, lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
    ),
    "adamw": (
        optim.adamw(0.05, weight_decay=0.2),
        lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.2),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_trajectory_equals_torch_optim(name):
    ours, make_theirs = CASES[name]
    assert_trajectories_close(our_trajectory(ours)[0], torch_trajectory(make_theirs))


def test_schedules_follow_torch_lr_schedulers():
    multi, _ = our_trajectory(optim.sgd(optim.multistep(0.2, [5, 12], gamma=0.5), momentum=0.9))
    assert_trajectories_close(
        multi,
        torch_trajectory(
            lambda p: torch.optim.SGD(p, lr=0.2, momentum=0.9),
            lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [5, 12], gamma=0.5),
        ),
    )
    cos, _ = our_trajectory(optim.adam(optim.cosine(0.05, 20, final=0.01)))
    assert_trajectories_close(
        cos,
        torch_trajectory(
            lambda p: torch.optim.Adam(p, lr=0.05),
            lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=20, eta_min=0.01),
        ),
    )


def values(schedule, steps):
    return [float(schedule(torch.tensor(s))) for s in steps]


def test_schedules_by_hand():
    assert values(optim.constant(0.1), [0, 7, 1000]) == pytest.approx([0.1] * 3)
    assert values(optim.multistep(1.0, [2, 5], 0.1), [0, 1, 2, 4, 5, 100]) == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01]
    )
    half = 0.2 + 0.8 * (1 + math.cos(math.pi / 4)) / 2
    assert values(optim.cosine(1.0, 4, final=0.2), [0, 1, 2, 4, 9]) == pytest.approx([1, half, 0.6, 0.2, 0.2])
    assert values(optim.warmup(optim.constant(1.0), 4), [0, 1, 3, 10]) == pytest.approx([0.25, 0.5, 1, 1])
    assert values(optim.warmup(0.5, 2), [0, 1, 5]) == pytest.approx([0.25, 0.5, 0.5])
    assert values(optim.warmup(optim.cosine(1.0, 4), 2), [0, 2]) == pytest.approx([0.5, 0.5])
    assert values(optim.warmup(0.3, 0), [0, 9]) == pytest.approx([0.3, 0.3])
    out = optim.multistep(1.0, [2])(torch.tensor([[0, 3]]))
    assert out.shape == (1, 2) and out.dtype == torch.float32


@pytest.mark.parametrize(
    "schedule",
    [
        optim.constant(0.1),
        optim.multistep(0.1, [3, 6]),
        optim.cosine(0.1, 10, final=0.01),
        optim.warmup(optim.cosine(0.1, 10), 4),
    ],
    ids=["constant", "multistep", "cosine", "warmup"],
)
def test_schedules_compile_once_and_vmap(schedule):
    counter = CompileCounter()
    compiled = torch.compile(schedule, fullgraph=True, backend=counter)
    steps = torch.arange(12)
    expected = torch.stack([schedule(s) for s in steps])
    assert torch.equal(torch.stack([compiled(s) for s in steps]), expected)
    assert counter.frame_count == 1
    assert torch.allclose(torch.vmap(schedule)(steps), expected)


def test_init_state_and_count():
    state = optim.sgd(0.1, momentum=0.9).init(P0)
    assert list(state) == ["count", "lr_override", "lr_override_on", "momentum"]
    assert state["count"].dtype == torch.int64 and int(state["count"]) == 0
    assert all(
        torch.equal(b, torch.zeros_like(p)) for b, p in zip(tree.leaves(state["momentum"]), tree.leaves(P0))
    )
    assert list(optim.sgd(0.1).init(P0)) == ["count", "lr_override", "lr_override_on"]
    assert list(optim.adam().init(P0)) == ["count", "lr_override", "lr_override_on", "mu", "nu"]
    _, after = our_trajectory(optim.adamw(), steps=3)
    assert int(after["count"]) == 3


def test_apply_updates_by_hand():
    params = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[3.0]])}
    updates = {"a": torch.tensor([0.5, -2.0]), "b": torch.tensor([[-1.0]])}
    out = optim.apply_updates(params, updates)
    assert torch.equal(out["a"], torch.tensor([1.5, 0.0])) and torch.equal(out["b"], torch.tensor([[2.0]]))
    assert torch.equal(params["a"], torch.tensor([1.0, 2.0]))  # not modified
    with pytest.raises(ValueError, match="'b'"):
        optim.apply_updates(params, {"a": updates["a"], "b": torch.zeros(2)})


MASK = {"fc": {"b": None, "w": torch.tensor([[True, False, True, True, False]] * 3)}}


def test_masked_sgd_step_by_hand():
    params = {"fc": {"b": torch.tensor([1.0]), "w": torch.tensor([[1.0, 2.0], [3.0, 4.0]])}}
    masks = {"fc": {"b": None, "w": torch.tensor([[True, False], [True, True]])}}
    grads = {"fc": {"b": torch.tensor([2.0]), "w": torch.ones(2, 2)}}
    opt = optim.sgd(0.5, momentum=0.5, weight_decay=0.1)
    updates, state = opt.update(grads, opt.init(params), params, masks)
    # g + 0.1 p = [[1.1, 1.2], [1.3, 1.4]], masked; buffer = g on the first step; update = -0.5 * buffer
    buf = torch.tensor([[1.1, 0.0], [1.3, 1.4]])
    assert torch.allclose(state["momentum"]["fc"]["w"], buf)
    assert torch.allclose(updates["fc"]["w"], -0.5 * buf)
    assert torch.allclose(updates["fc"]["b"], torch.tensor([-0.5 * 2.1]))
    assert updates["fc"]["w"][0, 1].item() == 0.0 and state["momentum"]["fc"]["w"][0, 1].item() == 0.0
    # second step: buffer = 0.5 * buffer + g
    updates, state = opt.update(grads, state, params, masks)
    assert torch.allclose(state["momentum"]["fc"]["w"], 1.5 * buf)
    assert torch.allclose(updates["fc"]["w"], -0.75 * buf)


@pytest.mark.parametrize(
    "opt, expected",
    [
        (optim.adam(0.1, eps=0.0), [-0.1, 0.1, 0.0]),
        (optim.adamw(0.1, eps=0.0, weight_decay=0.5), [-0.1 - 0.05, 0.1 + 0.1, 0.0]),
    ],
    ids=["adam", "adamw"],
)
def test_masked_adam_first_step_by_hand(opt, expected):
    params = {"w": torch.tensor([1.0, -2.0, 3.0])}
    grads = {"w": torch.tensor([0.5, -4.0, 2.0])}
    masks = {"w": torch.tensor([True, True, False])}
    updates, state = opt.update(grads, opt.init(params), params, masks)
    # t = 1: mu = 0.1 g, nu = 0.001 g^2, so the Adam part is -lr * g / |g| (eps = 0); adamw adds -lr * wd * p.
    # The pruned entry has mu = nu = 0 and eps = 0: its update is exactly 0, not 0 / 0.
    assert torch.allclose(updates["w"], torch.tensor(expected))
    assert updates["w"][2].item() == 0.0
    assert torch.allclose(state["mu"]["w"], torch.tensor([0.05, -0.4, 0.0]))
    assert torch.allclose(state["nu"]["w"], torch.tensor([0.00025, 0.016, 0.0]))
    assert state["mu"]["w"][2].item() == 0.0 and state["nu"]["w"][2].item() == 0.0


@pytest.mark.parametrize(
    "opt",
    [optim.sgd(0.1, momentum=0.9, weight_decay=0.1), optim.adam(0.1, weight_decay=0.1), optim.adamw(0.1)],
    ids=["sgd", "adam", "adamw"],
)
def test_sparser_masks_zero_stale_state(opt):
    _, state = our_trajectory(opt, steps=3)  # dense: every state entry non-zero
    params = P0
    updates, state = opt.update(torch.func.grad(objective)(params), state, params, MASK)
    pruned = ~MASK["fc"]["w"]
    assert (updates["fc"]["w"][pruned] == 0).all()
    for key in ("momentum", "mu", "nu"):
        if key in state:
            assert (state[key]["fc"]["w"][pruned] == 0).all(), key
            assert (state[key]["fc"]["w"][~pruned] != 0).all(), key
    assert (updates["fc"]["b"] != 0).all()  # None: dense leaf


@pytest.mark.parametrize(
    "opt",
    [
        optim.sgd(0.1, momentum=0.9, nesterov=True, weight_decay=0.1),
        optim.adam(0.1, weight_decay=0.1),
        optim.adamw(0.1),
    ],
    ids=["sgd", "adam", "adamw"],
)
def test_bytes_masks_update_exactly_as_bool_masks(opt):
    _, state = our_trajectory(opt, steps=3)  # dense state, then pruned
    grads = torch.func.grad(objective)(P0)
    want = opt.update(grads, state, P0, MASK)
    got = opt.update(grads, state, P0, mask.as_bytes(MASK))
    for a, b in zip(tree.leaves(got), tree.leaves(want)):
        assert torch.equal(a, b)
    assert (got[0]["fc"]["w"][~MASK["fc"]["w"]] == 0).all()


def test_set_lr_clear_lr_and_current_lr():
    opt = optim.sgd(optim.multistep(1.0, [2], 0.1))
    params, grads = {"w": torch.tensor([1.0])}, {"w": torch.tensor([2.0])}
    state = opt.init(params)
    assert float(opt.current_lr(state)) == pytest.approx(1.0)
    fixed = optim.set_lr(state, 0.05)
    assert float(opt.current_lr(fixed)) == pytest.approx(0.05)
    updates, fixed = opt.update(grads, fixed, params)
    assert torch.allclose(updates["w"], torch.tensor([-0.1]))
    for _ in range(3):
        _, fixed = opt.update(grads, fixed, params)
    assert int(fixed["count"]) == 4 and float(opt.current_lr(fixed)) == pytest.approx(0.05)
    assert float(opt.current_lr(optim.clear_lr(fixed))) == pytest.approx(0.1)  # the schedule at step 4
    assert float(opt.current_lr(state)) == pytest.approx(1.0)  # set_lr returned a new state
    stacked = tree.stack([state, state])
    per_seed = optim.set_lr(stacked, torch.tensor([0.1, 0.2]))
    assert torch.allclose(per_seed["lr_override"], torch.tensor([0.1, 0.2]))
    assert per_seed["lr_override_on"].tolist() == [True, True]
    assert torch.allclose(optim.set_lr(stacked, 0.3)["lr_override"], torch.tensor([0.3, 0.3]))


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: optim.sgd(-0.1), ValueError, "lr must be >= 0, got -0.1"),
        (lambda: optim.sgd(float("nan")), ValueError, "lr must be finite"),
        (lambda: optim.sgd("0.1"), TypeError, "lr must be a real number"),
        (lambda: optim.sgd(True), TypeError, "lr must be a real number"),
        (lambda: optim.sgd(0.1, momentum=-0.5), ValueError, r"momentum must be in \[0, 1\), got -0.5"),
        (lambda: optim.sgd(0.1, nesterov=True), ValueError, "nesterov=True needs momentum > 0"),
        (lambda: optim.sgd(0.1, weight_decay=-1.0), ValueError, "weight_decay must be >= 0"),
        (lambda: optim.adam(-1e-3), ValueError, "lr must be >= 0"),
        (lambda: optim.adam(betas=(1.0, 0.999)), ValueError, r"betas\[0\] must be in \[0, 1\), got 1.0"),
        (lambda: optim.adamw(betas=(0.9, -0.1)), ValueError, r"betas\[1\] must be in \[0, 1\), got -0.1"),
        (lambda: optim.adam(betas=(0.9,)), TypeError, "betas must be a pair"),
        (lambda: optim.adam(eps=-1.0), ValueError, "eps must be >= 0"),
        (lambda: optim.adamw(weight_decay=-0.1), ValueError, "weight_decay must be >= 0"),
        (lambda: optim.constant(-1.0), ValueError, "lr must be >= 0"),
        (lambda: optim.multistep(0.1, [5, 5]), ValueError, "strictly increasing"),
        (lambda: optim.multistep(0.1, [-1]), ValueError, r"milestones\[0\] must be >= 0"),
        (lambda: optim.multistep(0.1, [2], gamma=0.0), ValueError, "gamma must be > 0"),
        (lambda: optim.cosine(0.1, 0), ValueError, "total_steps must be >= 1"),
        (lambda: optim.cosine(0.1, 10, final=-1.0), ValueError, "final must be >= 0"),
        (lambda: optim.warmup(0.1, -2), ValueError, "warmup_steps must be >= 0"),
        (lambda: optim.warmup(0.1, 2.5), TypeError, "warmup_steps must be an int"),
    ],
)
def test_bad_hyperparameters(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_bad_trees_name_the_path():
    opt = optim.sgd(0.1, momentum=0.9)
    state = opt.init(P0)
    grads = torch.func.grad(objective)(P0)
    with pytest.raises(ValueError, match=r"fc\.w"):
        opt.update(grads, state, P0, {"fc": {"b": None}})
    with pytest.raises(ValueError, match=r"'fc\.w' has shape \(5, 3\)"):
        opt.update(grads, state, P0, {"fc": {"b": None, "w": torch.ones(5, 3, dtype=torch.bool)}})
    with pytest.raises(TypeError, match=r"'fc\.w' has dtype torch.float32"):
        opt.update(grads, state, P0, {"fc": {"b": None, "w": torch.ones(3, 5)}})
    with pytest.raises(ValueError, match=r"grads at 'fc\.b' has shape \(4,\)"):
        opt.update({"fc": {"b": torch.zeros(4), "w": grads["fc"]["w"]}}, state, P0)
    with pytest.raises(ValueError, match=r"lacks \['mu', 'nu'\]"):
        optim.adam().update(grads, state, P0)
    with pytest.raises(TypeError, match=r"params at 'fc\.b' must be a floating-point tensor"):
        opt.init({"fc": {"b": torch.zeros(3, dtype=torch.int64), "w": P0["fc"]["w"]}})
    with pytest.raises(ValueError, match="lr must be >= 0"):
        optim.set_lr(state, -0.1)
    with pytest.raises(ValueError, match="set_lr: value must be finite"):
        optim.set_lr(state, torch.tensor(float("nan")))
    with pytest.raises(ValueError, match="lacks"):
        optim.clear_lr({"count": state["count"]})
