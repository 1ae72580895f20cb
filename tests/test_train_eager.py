"""train.make_step(compile=False)'s eager path over leaf lists against the ``torch.func`` body.

In plain eager code the step flattens the params once, masks with ``W * M`` factors, takes the
gradient with ``torch.autograd.grad`` and runs the optimizer's ``update_leaves``; under
``torch.func`` transforms (the seeds' vmapped steps), while dynamo traces, or for params that
autograd tracks, it runs the ``torch.func.grad_and_value`` body. The arithmetic is the same, so
params, state, optimizer state and metrics must be *equal* after several steps (``torch.equal``:
bit-identical values, ``-0.0`` equal to ``0.0``).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from pure_prune import losses, mask, models, optim, rng, select, train, tree
from pure_prune.testing.close import assert_trees_close

pytestmark = pytest.mark.usefixtures("one_thread")

OPTS = {
    "momentum": lambda: optim.sgd(0.05, momentum=0.9),
    "nesterov_wd": lambda: optim.sgd(0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adamw": lambda: optim.adamw(0.01, weight_decay=0.1),
}


def _case(name: str):
    spec = models.get(name)
    if name == "mlp":
        params, state = spec.init(0, sizes=(12, 16, 16, 4))
        x = rng.normal(1, (8, 12))
    else:  # conv2 has no BatchNorm; resnet20 has running statistics in its state
        params, state = spec.init(0, width=4) if name == "resnet20" else spec.init(0)
        shape = (4, 3, 8, 8) if name == "resnet20" else (4, 3, 32, 32)
        x = rng.normal(1, shape)
    y = torch.randint(0, 10 if name != "mlp" else 4, (x.shape[0],), generator=rng.generator(2))
    scores = tree.map(lambda p: p.abs() if p.ndim >= 2 else None, params)
    masks = select.unstructured(scores, 0.7)
    return spec, params, state, masks, (x, y)


def _tracked(params):
    """The same params with ``requires_grad``: the step takes its ``torch.func`` body."""
    return tree.map(lambda p: p.detach().clone().requires_grad_(True), params)


def _untracked(t):
    return tree.map(lambda x: x.detach() if isinstance(x, torch.Tensor) else x, t)


def assert_equal_trees(got, want, what):
    assert tree.paths(got) == tree.paths(want), what
    for path, a, b in zip(tree.paths(got), tree.leaves(got), tree.leaves(want)):
        if a is None or b is None:
            assert a is b, (what, path)
            continue
        assert not a.requires_grad, (what, path)
        assert a.dtype == b.dtype and a.shape == b.shape, (what, path)
        assert torch.equal(a, b.detach()), (what, path, (a - b.detach()).abs().max())


@pytest.mark.parametrize(
    ("model", "opt", "premasked", "dense", "as_bytes"),
    [
        ("mlp", "momentum", False, False, False),
        ("mlp", "nesterov_wd", True, False, True),
        ("mlp", "adamw", False, True, False),
        ("conv2", "momentum", False, False, True),
        ("resnet20", "adamw", True, False, False),
    ],
)
def test_leaf_step_equals_the_torch_func_body(model, opt, premasked, dense, as_bytes):
    spec, params, state, masks, batch = _case(model)
    optimizer = OPTS[opt]()
    step = train.make_step(spec, losses.cross_entropy, optimizer, compile=False, premasked=premasked)
    given = None if dense else (mask.as_bytes(masks) if as_bytes else masks)
    start = params if dense else mask.apply(params, masks)
    fast = (start, state, optimizer.init(start))
    slow = fast
    for i in range(3):
        *fast, fm = step(*fast, given, batch)
        *slow, sm = step(_tracked(slow[0]), *slow[1:], given, batch)
        slow = [_untracked(t) for t in slow]
        for k, (a, b) in enumerate(zip(fast, slow)):
            assert_equal_trees(a, b, f"step {i}, output {k}")
        assert fm.keys() == sm.keys()
        for key in fm:
            assert torch.equal(fm[key], sm[key].detach()), (i, key)
    if not dense:
        for m, p in zip(tree.leaves(masks), tree.leaves(fast[0])):
            if m is not None:
                assert bool((p[~m] == 0).all())


def test_leaf_step_masks_unmasked_params_and_zeroes_stale_state():
    """Params non-zero at pruned entries on entry and a dense momentum: after one step both are
    0 there (as with the ``torch.func`` body)."""
    spec, params, state, masks, batch = _case("mlp")
    optimizer = OPTS["momentum"]()
    step = train.make_step(spec, losses.cross_entropy, optimizer, compile=False)
    p, s, o, _ = step(params, state, optimizer.init(params), None, batch)  # dense momentum
    p, s, o, _ = step(p, s, o, masks, batch)
    for m, w, b in zip(tree.leaves(masks), tree.leaves(p), tree.leaves(o["momentum"])):
        if m is not None:
            assert bool((w[~m] == 0).all()) and bool((b[~m] == 0).all())
            assert bool((w[m] != 0).all())


def test_leaf_step_matches_prune_hooks_and_torch_optim():
    """Five masked SGD-momentum steps against ``nn.Linear`` + ``prune.custom_from_mask`` +
    ``torch.optim.SGD``: the losses and weights agree to float32 rounding (torch's optimizer adds
    in place with ``alpha``, a different rounding order)."""
    spec, params, state, masks, (x, y) = _case("mlp")
    optimizer = optim.sgd(0.05, momentum=0.9)
    step = train.make_step(spec, losses.cross_entropy, optimizer, compile=False)
    names = ["fc1", "fc2", "fc3"]
    layers = []
    for k in names:
        lin = nn.Linear(*params[k]["weight"].shape[::-1])
        with torch.no_grad():
            lin.weight.copy_(params[k]["weight"])
            lin.bias.copy_(params[k]["bias"])
        prune.custom_from_mask(lin, "weight", masks[k]["weight"])
        layers.append(lin)
    net = nn.Sequential(layers[0], nn.ReLU(), layers[1], nn.ReLU(), layers[2])
    torch_opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    trees = (mask.apply(params, masks), state, optimizer.init(params))
    for _ in range(5):
        *trees, metrics = step(*trees, masks, (x, y))
        torch_opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        torch_opt.step()
        assert_trees_close(metrics["loss"], loss.detach(), rtol=1e-6)
    theirs = {  # the hook's `weight` is refreshed at the next forward: take orig * mask
        k: {"bias": lay.bias.detach(), "weight": (lay.weight_orig * lay.weight_mask).detach()}
        for k, lay in zip(names, layers)
    }
    assert_trees_close(trees[0], theirs, rtol=1e-5)


def test_optimizer_without_update_leaves_takes_the_tree_update():
    """An optimizer with ``update`` only (as ``rsst.penalized``'s) in the leaf step: the same
    values as the ``torch.func`` body."""
    spec, params, state, masks, batch = _case("mlp")
    inner = OPTS["nesterov_wd"]()
    tree_only = optim.Optimizer(inner.init, inner.update, inner.current_lr)
    step = train.make_step(spec, losses.cross_entropy, tree_only, compile=False)
    start = (mask.apply(params, masks), state, tree_only.init(params))
    fast = step(*start, masks, batch)
    slow = step(_tracked(start[0]), *start[1:], masks, batch)
    for k, (a, b) in enumerate(zip(fast[:3], slow[:3])):
        assert_equal_trees(a, _untracked(b), f"output {k}")
