"""Tests of the stateless models (models/, installed as pure_prune.models)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import pure_prune.models as M
from pure_prune import rng, tree
from pure_prune.groups import ChannelGroup, Member, member_view
from pure_prune.models import cnn1d, conv, layers, lenet5, lstm_lm, mlp, resnet, structure, vgg
from pure_prune.testing import close

# name -> (tiny cfg overrides, one sample's input shape, prefixes of the output layer's leaves)
TINY = {
    "mlp": ({"sizes": (6, 5, 4, 3)}, (6,), ("fc3.",)),
    "lenet300": ({"sizes": (7, 5, 4, 3)}, (7,), ("fc3.",)),
    "lenet5": ({"channels": (3, 4), "hidden": (6, 5), "image_size": 16}, (1, 16, 16), ("fc3.",)),
    "conv2": ({"width": 2, "hidden": (6, 5), "image_size": 8}, (3, 8, 8), ("fc3.",)),
    "conv4": ({"width": 2, "hidden": (6, 5), "image_size": 8}, (3, 8, 8), ("fc3.",)),
    "conv6": ({"width": 2, "hidden": (6, 5), "image_size": 8}, (3, 8, 8), ("fc3.",)),
    "resnet20": ({"width": 2}, (3, 8, 8), ("fc.",)),
    "resnet32": ({"width": 2}, (3, 8, 8), ("fc.",)),
    "resnet56": ({"width": 2}, (3, 8, 8), ("fc.",)),
    "vgg11": ({"width": 4, "hidden": 6}, (3, 32, 32), ("fc2.",)),
    "vgg16": ({"width": 4, "hidden": 6}, (3, 32, 32), ("fc2.",)),
    "lstm_lm": ({"vocab": 11, "embed": 5, "hidden": 4}, (6,), ("decoder.", "embedding.")),
    "cnn1d": ({"channels": (3, 4, 5), "hidden": (6,)}, (40,), ("fc2.",)),
    "llama": (
        {"vocab": 11, "dim": 8, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "ffn": 6, "context": 8},
        (6,),
        (
            "embed.",
            "norm.",
            *(f"blocks.{i}.{x}." for i in (0, 1) for x in ("attn_norm", "mlp_norm", "attn.o", "mlp.down")),
        ),
    ),
}
BN_MODELS = {"resnet20", "resnet32", "resnet56", "vgg11", "vgg16"}
N = 4


def tiny(name: str, key: int = 0):
    """(spec, params, state) of the tiny version of a registered model."""
    spec = M.get(name)
    params, state = spec.init(key, **TINY[name][0])
    return spec, params, state


def inputs(name: str, n: int = N, key: int = 1) -> torch.Tensor:
    shape = (n, *TINY[name][1])
    if name in ("lstm_lm", "llama"):
        return torch.randint(0, TINY[name][0]["vocab"], shape, generator=rng.generator(key))
    return rng.normal(key, shape)


def n_out(name: str) -> int:
    cfg = M.get(name).default_cfg | TINY[name][0]
    return cfg["sizes"][-1] if "sizes" in cfg else cfg.get("vocab", cfg.get("num_classes"))


def leaf(params, state, path: str) -> torch.Tensor:
    """A group member's leaf: ``state.<path>`` in state, anything else in params."""
    if path.startswith("state."):
        return structure.get_path(state, path[len("state.") :])
    return structure.get_path(params, path)


def perturbed(params, state, key: int = 7):
    """Params and state moved off their init (BN biases, zero biases) so that no member is trivially 0."""
    flat_p, spec_p = tree.flatten(params)
    flat_s, spec_s = tree.flatten(state)
    p = [x + 0.3 * rng.normal(rng.fold_in(key, i), x.shape) for i, x in enumerate(flat_p)]
    s = [x + 0.5 * rng.uniform(rng.fold_in(key + 1, i), x.shape) for i, x in enumerate(flat_s)]
    return tree.unflatten(spec_p, p), tree.unflatten(spec_s, s)


def assert_trees_equal(a, b):
    """Exactly equal trees (same structure, shapes and values): for results that must not depend on
    the kernels, such as copies, re-initialisation from the same key and untouched inputs."""
    tree.assert_same_structure(a, b)
    for path, x, y in zip(tree.paths(a), tree.leaves(a), tree.leaves(b)):
        assert torch.equal(x, y), (path, (x - y).abs().max())


def is_canonical(t) -> bool:
    if isinstance(t, dict):
        return list(t) == sorted(t) and all(is_canonical(v) for v in t.values())
    return True


def _split_view(x: torch.Tensor, m: Member, size: int):
    axis = m.axis % x.ndim
    moved = torch.movedim(x, axis, 0)
    return axis, moved.shape[1:], moved.reshape(m.outer, size, m.inner, *moved.shape[1:])


def slice_out(params, state, group: ChannelGroup, unit: int):
    """Physically remove ``unit`` from every member of ``group``: the reference for compaction."""
    keep = torch.tensor([c for c in range(group.size) if c != unit])
    new = {}
    for m in group.members:
        x = new[m.path] if m.path in new else leaf(params, state, m.path)  # a leaf may hold two members
        axis, rest, v = _split_view(x, m, group.size)
        new[m.path] = torch.movedim(v[:, keep].reshape(-1, *rest), 0, axis)
    p = tree.map_with_path(lambda path, x: new.get(path, x), params)
    s = tree.map_with_path(lambda path, x: new.get(f"state.{path}", x), state)
    return p, s


def zero_producers(params, group: ChannelGroup, unit: int):
    """Zero ``unit`` in the group's producing param members (axis 0; state untouched)."""
    new = {}
    for m in group.members:
        if m.axis == 0 and not m.path.startswith("state."):
            axis, rest, v = _split_view(structure.get_path(params, m.path), m, group.size)
            v = v.clone()
            v[:, unit] = 0.0
            new[m.path] = torch.movedim(v.reshape(-1, *rest), 0, axis)
    return tree.map_with_path(lambda path, x: new.get(path, x), params)


def torch_load(module: nn.Module, tensors: list[torch.Tensor]) -> nn.Module:
    """Copy ``tensors`` into ``module.parameters()`` in order."""
    ps = list(module.parameters())
    assert len(ps) == len(tensors)
    with torch.no_grad():
        for p, t in zip(ps, tensors):
            p.copy_(t)
    return module


# ------------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------------


def test_registry_names_and_get():
    assert set(M.names()) == set(TINY)
    spec = M.get("lenet300")
    assert isinstance(spec, M.ModelSpec)
    assert spec.default_cfg == {"sizes": (784, 300, 100, 10)}
    assert spec.input_shape == (784,) and spec.input_dtype == torch.float32
    assert spec.apply is mlp.apply and spec.groups is mlp.groups and spec.description
    assert_trees_equal(spec.init(3)[0], mlp.init(3, sizes=(784, 300, 100, 10))[0])
    assert M.get("resnet32").default_cfg == {"depth": 32, "width": 16, "num_classes": 10, "in_channels": 3}
    assert M.get("lstm_lm").input_dtype == torch.long
    spec.default_cfg["sizes"] = (1, 2)  # a fresh dict per call: the registry cannot be mutated
    assert M.get("lenet300").default_cfg["sizes"] == (784, 300, 100, 10)
    with pytest.raises(ValueError, match="unknown model 'resnet18'.*resnet20.*lstm_lm"):
        M.get("resnet18")


@pytest.mark.parametrize(
    "name, count",
    [
        ("lenet300", 266_610),
        ("lenet5", 61_706),
        ("conv2", 4_301_642),
        ("resnet20", 272_474),
        ("resnet56", 855_770),
    ],
)
def test_default_parameter_counts(name, count):
    # hand counts: LeNet-300-100 = 784*300+300 + 300*100+100 + 100*10+10; ResNet-20 with 1x1 conv shortcuts
    # = 432+32 (stem) + 14016 + 14528+37120 + 57728+147968 (stages) + 650 (fc)
    params, _ = M.get(name).init(0)
    assert sum(x.numel() for x in tree.leaves(params)) == count


# ------------------------------------------------------------------------------------------------
# Contract, for every registered model
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TINY))
def test_init_deterministic_canonical_float32(name):
    _, p0, s0 = tiny(name, 5)
    _, p1, s1 = tiny(name, 5)
    _, p2, _ = tiny(name, 6)
    assert_trees_equal(p0, p1)
    assert_trees_equal(s0, s1)
    assert any(not torch.equal(a, b) for a, b in zip(tree.leaves(p0), tree.leaves(p2)))
    for t in (p0, s0):
        assert is_canonical(t)
        assert all(x.dtype == torch.float32 for x in tree.leaves(t))
    assert (s0 == {}) == (name not in BN_MODELS | {"llama"})  # llama: its rotary tables


@pytest.mark.parametrize("name", sorted(TINY))
def test_apply_shapes_acts_and_purity(name):
    spec, params, state = tiny(name)
    x = inputs(name)
    copies = [tree.map(torch.clone, t) for t in (params, state)] + [x.clone()]
    out, new_state, acts = spec.apply(params, state, x, train=True, capture=True)
    lead = (N, TINY[name][1][0]) if name in ("lstm_lm", "llama") else (N,)
    assert out.shape == (*lead, n_out(name))
    tree.assert_same_structure(new_state, state)
    groups = spec.groups(params)
    assert set(acts) == {g.name for g in groups}
    for g in groups:
        assert acts[g.name].shape[:2] == (N, g.size), g.name
    for before, after in zip(copies, (params, state, x)):
        assert_trees_equal(before, after)  # inputs untouched
    out2, _ = spec.apply(params, state, x, train=True)
    assert torch.equal(out, out2)


@pytest.mark.parametrize("name", sorted(TINY))
def test_groups_consistent_with_shapes(name):
    spec, params, state = tiny(name)
    groups = spec.groups(params)
    assert len({g.name for g in groups}) == len(groups) > 0
    covered = set()
    for g in groups:
        assert g.size > 0 and any(m.score for m in g.members), g.name
        assert len(set((m.path, m.axis) for m in g.members)) == len(g.members), g.name
        for m in g.members:
            x = leaf(params, state, m.path)
            view = member_view(x, m, g.size)
            assert view.shape == (g.size, x.numel() // g.size)
            assert not (m.score and m.path.startswith("state.")), m.path
            covered.add((m.path, m.axis % x.ndim))
    # every leaf's axis 0 belongs to a group, except the output layer's (and the embedding's vocab axis)
    uncovered = {p for p in tree.paths(params) if (p, 0) not in covered}
    assert uncovered == {p for p in tree.paths(params) if p.startswith(TINY[name][2])}
    # llama's rotary tables are state without units
    stats = {f"state.{p}" for p in tree.paths(state) if not p.startswith("rope.")}
    assert stats <= {p for p, _ in covered}
    prunable = {g.name: g.prunable for g in groups}
    if name.startswith("resnet"):
        assert [k for k, v in prunable.items() if not v] == ["layer1", "layer2", "layer3"]
    else:
        assert all(prunable.values())


@pytest.mark.parametrize("name", sorted(TINY))
def test_train_updates_state_and_eval_uses_running_stats(name):
    spec, params, state = tiny(name)
    params, state = perturbed(params, state)
    x = inputs(name)
    out_train, new_state = spec.apply(params, state, x, train=True)
    out_eval, eval_state = spec.apply(params, state, x, train=False)
    assert_trees_equal(eval_state, state)
    one, _ = spec.apply(params, state, x[:1], train=False)
    close.assert_close(one, out_eval[:1], 1e-5)  # eval: each sample independent of the batch
    if name not in BN_MODELS:
        assert (new_state is state or new_state == {}) and close.is_close(out_train, out_eval)
        return
    assert all(not torch.equal(a, b) for a, b in zip(tree.leaves(new_state), tree.leaves(state)))
    assert not close.is_close(out_train, out_eval, 1e-3)
    shifted = tree.map_with_path(lambda p, v: v + 1.0 if p.endswith("running_mean") else v, state)
    assert not close.is_close(spec.apply(params, shifted, x, train=False)[0], out_eval, 1e-3)


@pytest.mark.parametrize("name", ["mlp", "lenet5", "conv4", "resnet20", "vgg11", "lstm_lm", "cnn1d"])
def test_fullgraph_trace_equals_eager(name):
    # dynamo + AOTAutograd (functionalisation) without codegen: no graph breaks, no mutation of inputs
    spec, params, state = tiny(name)
    x = inputs(name)
    # compile apply itself: each model module's apply is its own code object, so dynamo's cache stays small
    fn = torch.compile(spec.apply, fullgraph=True, backend="aot_eager")
    got, want = (
        fn(params, state, x, train=True, capture=True),
        spec.apply(params, state, x, train=True, capture=True),
    )
    close.assert_trees_close(list(got), list(want), 1e-5)


@pytest.fixture(scope="module")
def compiled_mlp_step():
    """An inductor-compiled SGD step of a small MLP, compiled once for the module."""

    def step(params, x, y):
        def loss(p):
            return F.cross_entropy(mlp.apply(p, {}, x, train=True)[0], y)

        grads = torch.func.grad(loss)(params)
        return tree.map(lambda p, g: p - 0.1 * g, params, grads)

    return step, torch.compile(step, fullgraph=True)


def test_compiled_equals_eager(compiled_mlp_step):
    step, compiled = compiled_mlp_step
    params, _ = mlp.init(0, sizes=(6, 8, 5, 3))
    x, y = rng.normal(1, (16, 6)), torch.arange(16) % 3
    for _ in range(2):
        want = step(params, x, y)
        got = compiled(params, x, y)
        close.assert_trees_close(got, want, 1e-5)
        params = want


# ------------------------------------------------------------------------------------------------
# Groups are right: zeroing a unit's producers == slicing it out of every member
# ------------------------------------------------------------------------------------------------

SLICE_CASES = ["mlp", "lenet5", "conv4", "vgg11", "cnn1d", "resnet20", "lstm_lm"]


@pytest.mark.parametrize("name", SLICE_CASES)
def test_zeroing_a_unit_equals_slicing_it_out(name):
    spec, params, state = tiny(name)
    params, state = perturbed(params, state)
    x = inputs(name)
    groups = [g for g in spec.groups(params) if g.prunable and g.name != "embedding"]
    assert groups
    _, _, acts = spec.apply(params, state, x, train=True, capture=True)
    for g in groups:
        unit = int(acts[g.name].abs().transpose(0, 1).reshape(g.size, -1).mean(1).argmax())  # a live unit
        zeroed = zero_producers(params, g, unit)
        small_p, small_s = slice_out(params, state, g, unit)
        for train in (True, False):
            out_z, state_z = spec.apply(zeroed, state, x, train=train)
            out_s, state_s = spec.apply(small_p, small_s, x, train=train)
            close.assert_close(out_z, out_s, 1e-5, what=f"{g.name} train={train}")
            close.assert_trees_close(slice_out(params, state_z, g, unit)[1], state_s, 1e-5)
        assert not close.is_close(spec.apply(params, state, x, train=True)[0], out_s, 1e-3), g.name


def test_slicing_check_catches_a_missing_member():
    _, params, state = tiny("resnet20")
    params, state = perturbed(params, state)
    x = inputs("resnet20")
    g = resnet.groups(params)[0]
    assert g.name == "layer1.0.conv1"
    lift = torch.tensor([1.0, 0.0])  # bn1.bias of unit 0 > 0, so ReLU passes it when it is not zeroed
    params = tree.map_with_path(lambda p, v: v.abs() + lift if p == "layer1.0.bn1.bias" else v, params)
    short = g._replace(members=tuple(m for m in g.members if m.path != "layer1.0.bn1.bias"))
    out_z = resnet.apply(zero_producers(params, short, 0), state, x, train=True)[0]
    out_s = resnet.apply(*slice_out(params, state, g, 0), x, train=True)[0]  # bn1.bias left unzeroed
    assert not close.is_close(out_z, out_s, 1e-3)
    no_consumer = g._replace(members=tuple(m for m in g.members if m.path != "layer1.0.conv2.weight"))
    with pytest.raises(RuntimeError):
        resnet.apply(*slice_out(params, state, no_consumer, 0), x, train=True)


# ------------------------------------------------------------------------------------------------
# vmap over seeds
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mlp", "lenet5", "conv4", "resnet20", "vgg11", "lstm_lm", "cnn1d"])
def test_vmap_forward_over_seeds_equals_loop(name):
    spec = M.get(name)
    trees = [spec.init(seed, **TINY[name][0]) for seed in (0, 1)]
    x = inputs(name)
    fn = torch.func.vmap(lambda p, s: spec.apply(p, s, x, train=True, capture=True))
    got = fn(tree.stack([p for p, _ in trees]), tree.stack([s for _, s in trees]))
    for i, (p, s) in enumerate(trees):
        close.assert_trees_close(
            tree.unstack(list(got), 2)[i], list(spec.apply(p, s, x, train=True, capture=True)), 1e-5
        )


def test_vmap_over_seeds_equals_loop_resnet20():
    params0, state0 = zip(*(resnet.init(seed, depth=20, width=4) for seed in (0, 1)))
    x, y = rng.normal(3, (8, 3, 8, 8)), torch.arange(8) % 10

    def step(params, state):
        def loss(p):
            out, new_state = resnet.apply(p, state, x, train=True)
            return F.cross_entropy(out, y), new_state

        grads, new_state = torch.func.grad(loss, has_aux=True)(params)
        return tree.map(lambda p, g: p - 0.1 * g, params, grads), new_state

    looped = list(zip(params0, state0))
    batched = (tree.stack(list(params0)), tree.stack(list(state0)))
    vstep = torch.func.vmap(step)
    for _ in range(3):
        looped = [step(p, s) for p, s in looped]
        batched = vstep(*batched)
    for i, (p, s) in enumerate(looped):
        close.assert_trees_close(tree.unstack(batched[0])[i], p, 1e-4)
        close.assert_trees_close(tree.unstack(batched[1])[i], s, 1e-4)
    assert not close.is_close(tree.leaves(looped[0][1])[0], tree.leaves(state0[0])[0], 1e-3)


# ------------------------------------------------------------------------------------------------
# Agreement with torch.nn
# ------------------------------------------------------------------------------------------------


def test_mlp_matches_nn():
    params, _ = mlp.init(2, sizes=(6, 5, 4, 3))
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    torch_load(net, [params[f"fc{i}"][k] for i in (1, 2, 3) for k in ("weight", "bias")])
    x = rng.normal(0, (4, 2, 3))  # any input shape is flattened
    close.assert_close(mlp.apply(params, {}, x, train=True)[0], net(x.reshape(4, 6)), 1e-5)


def test_lenet5_matches_nn():
    params, _ = lenet5.init(2)
    net = nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )  # fmt: skip
    torch_load(
        net, [params[n][k] for n in ("conv1", "conv2", "fc1", "fc2", "fc3") for k in ("weight", "bias")]
    )
    x = rng.normal(0, (3, 1, 28, 28))
    close.assert_close(lenet5.apply(params, {}, x, train=False)[0], net(x), 1e-5)


def test_conv4_matches_nn_and_uses_glorot_init():
    params, _ = conv.init(2, depth=4, width=3, hidden=(7, 6), image_size=8)
    net = nn.Sequential(
        nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(24, 7), nn.ReLU(), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 10),
    )  # fmt: skip
    names = [f"conv{i}" for i in range(1, 5)] + ["fc1", "fc2", "fc3"]
    torch_load(net, [params[n][k] for n in names for k in ("weight", "bias")])
    x = rng.normal(0, (3, 3, 8, 8))
    close.assert_close(conv.apply(params, {}, x, train=True)[0], net(x), 1e-5)
    assert all(params[n]["bias"].abs().sum() == 0 for n in names)
    big, _ = conv.init(0, depth=2, width=64)
    w = big["conv2"]["weight"]  # fan_in = fan_out = 64*9: std sqrt(2 / 1152)
    assert abs(w.std().item() / math.sqrt(2 / 1152) - 1) < 0.02


def test_cnn1d_matches_nn():
    params, _ = cnn1d.init(2, channels=(3, 4), hidden=(5,), length=40)
    net = nn.Sequential(
        nn.Conv1d(1, 3, 5, stride=2, padding=2), nn.ReLU(), nn.Conv1d(3, 4, 5, stride=2, padding=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(40, 5), nn.ReLU(), nn.Linear(5, 10),
    )  # fmt: skip
    torch_load(net, [params[n][k] for n in ("conv1", "conv2", "fc1", "fc2") for k in ("weight", "bias")])
    x = rng.normal(0, (3, 40))
    close.assert_close(cnn1d.apply(params, {}, x, train=True)[0], net(x[:, None]), 1e-5)
    assert torch.equal(
        cnn1d.apply(params, {}, x[:, None], train=True)[0], cnn1d.apply(params, {}, x, train=True)[0]
    )


def test_vgg11_matches_nn_in_train_and_eval():
    params, state = vgg.init(2, depth=11, width=4, hidden=6)
    params, state = perturbed(params, state)
    mods, tensors, buffers = [], [], []
    c_in = 3
    for b in structure.numbered(params, "block"):
        for i in structure.indexed(params[b]):
            c = params[b][i]["conv"]["weight"].shape[0]
            mods += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
            tensors += [
                params[b][i]["conv"]["weight"],
                params[b][i]["bn"]["weight"],
                params[b][i]["bn"]["bias"],
            ]
            buffers.append((mods[-2], state[b][i]["bn"]))
            c_in = c
        mods.append(nn.MaxPool2d(2))
    mods += [nn.Flatten(), nn.Linear(32, 6), nn.ReLU(), nn.Linear(6, 10)]
    tensors += [
        params["fc1"]["weight"],
        params["fc1"]["bias"],
        params["fc2"]["weight"],
        params["fc2"]["bias"],
    ]
    net = torch_load(nn.Sequential(*mods), tensors)
    for bn, s in buffers:
        bn.running_mean.copy_(s["running_mean"])
        bn.running_var.copy_(s["running_var"])
    x = rng.normal(0, (4, 3, 32, 32))
    out, new_state = vgg.apply(params, state, x, train=True)
    close.assert_close(out, net.train()(x), 1e-5)
    for (bn, _), path in zip(buffers, [p for p in tree.paths(new_state) if p.endswith("running_mean")]):
        close.assert_close(structure.get_path(new_state, path), bn.running_mean, 1e-5)
    with torch.no_grad():
        close.assert_close(vgg.apply(params, new_state, x, train=False)[0], net.eval()(x), 1e-5)


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5, 5)])
def test_batch_norm_matches_nn(shape):
    bn = nn.BatchNorm1d(3) if len(shape) == 2 else nn.BatchNorm2d(3)
    params = {"bias": rng.normal(1, (3,)), "weight": rng.normal(2, (3,))}
    torch_load(bn, [params["weight"], params["bias"]])
    _, state = layers.batch_norm_init(3)
    for step in range(3):
        x = rng.normal(10 + step, shape) * 2 + 1
        y, state = layers.batch_norm(x, params, state, train=True)
        close.assert_close(y, bn.train()(x), 1e-5)
        close.assert_close(state["running_mean"], bn.running_mean, 1e-5)
        close.assert_close(state["running_var"], bn.running_var, 1e-5)
    y, same = layers.batch_norm(x, params, state, train=False)
    close.assert_close(y, bn.eval()(x), 1e-5)
    assert same == state


def test_batch_norm_by_hand():
    x = torch.tensor([[1.0], [3.0]])  # N=2, C=1: mean 2, biased var 1, unbiased var 2
    p = {"weight": torch.tensor([2.0]), "bias": torch.tensor([0.5])}
    s = {"running_mean": torch.tensor([0.0]), "running_var": torch.tensor([1.0])}
    y, s2 = layers.batch_norm(x, p, s, train=True)
    d = 1 / math.sqrt(1 + 1e-5)
    assert torch.allclose(y, torch.tensor([[0.5 - 2 * d], [0.5 + 2 * d]]))
    assert torch.allclose(s2["running_mean"], torch.tensor([0.2]))  # 0.9*0 + 0.1*2
    assert torch.allclose(s2["running_var"], torch.tensor([1.1]))  # 0.9*1 + 0.1*2
    y_eval, _ = layers.batch_norm(x, p, s2, train=False)
    assert torch.allclose(y_eval, (x - 0.2) / math.sqrt(1.1 + 1e-5) * 2 + 0.5)
    assert s["running_mean"].item() == 0.0  # input state untouched
    with pytest.raises(ValueError, match="more than one value per channel"):
        layers.batch_norm(x[:1], p, s, train=True)


def test_lstm_lm_matches_nn():
    params, _ = lstm_lm.init(4, vocab=13, embed=5, hidden=(6, 4), num_layers=2)
    params, _ = perturbed(params, {})
    emb, lstm0, lstm1, dec = (
        nn.Embedding(13, 5),
        nn.LSTM(5, 6, batch_first=True),
        nn.LSTM(6, 4, batch_first=True),
        nn.Linear(4, 13),
    )
    torch_load(emb, [params["embedding"]["weight"]])
    for mod, p in ((lstm0, params["lstm"]["0"]), (lstm1, params["lstm"]["1"])):
        torch_load(mod, [p["w_ih"], p["w_hh"], p["b"], torch.zeros_like(p["b"])])
    torch_load(dec, [params["decoder"]["weight"], params["decoder"]["bias"]])
    x = torch.randint(0, 13, (3, 7), generator=rng.generator(0))
    want = dec(lstm1(lstm0(emb(x))[0])[0])
    out, state = lstm_lm.apply(params, {}, x, train=True)
    assert out.shape == (3, 7, 13) and state == {}
    close.assert_close(out, want, 1e-5)


def test_lstm_cell_by_hand():
    # H=1: gates_x + h*w_hh = [0, 0, 1, 0] (i, f, g, o): c' = 0.5*c + 0.5*tanh(1), h' = 0.5*tanh(c')
    gates_x = torch.tensor([[0.0, 0.0, 0.5, 0.0]])
    w_hh = torch.tensor([[0.0], [0.0], [1.0], [0.0]])
    h, c = torch.tensor([[0.5]]), torch.tensor([[2.0]])
    h2, c2 = layers.lstm_cell(gates_x, h, c, w_hh)
    c_want = 0.5 * 2.0 + 0.5 * math.tanh(1.0)
    assert math.isclose(c2.item(), c_want, rel_tol=1e-6)
    assert math.isclose(h2.item(), 0.5 * math.tanh(c_want), rel_tol=1e-6)
    seq = layers.lstm_layer(
        torch.zeros(1, 3, 2), {"w_ih": torch.zeros(4, 2), "w_hh": torch.zeros(4, 1), "b": torch.zeros(4)}
    )
    assert seq.shape == (1, 3, 1) and torch.equal(seq, torch.zeros(1, 3, 1))  # g = tanh(0) = 0 keeps c = 0


def test_lstm_tied_weights():
    params, _ = lstm_lm.init(0, vocab=9, embed=4, hidden=4, num_layers=1, tie_weights=True)
    assert "weight" not in params["decoder"]
    x = torch.randint(0, 9, (2, 3), generator=rng.generator(1))
    out, _, acts = lstm_lm.apply(params, {}, x, train=True, capture=True)
    h = acts["lstm.0"].transpose(1, 2)
    close.assert_close(out, h @ params["embedding"]["weight"].T + params["decoder"]["bias"], 1e-5)
    (g,) = lstm_lm.groups(params)
    assert {(m.path, m.axis) for m in g.members} >= {("embedding.weight", 1), ("lstm.0.w_ih", 1)}
    for m in g.members:
        member_view(structure.get_path(params, m.path), m, g.size)
    with pytest.raises(ValueError, match="tie_weights needs embed == hidden"):
        lstm_lm.init(0, vocab=9, embed=4, hidden=5, tie_weights=True)


# ------------------------------------------------------------------------------------------------
# Dropout noise (VGG, LSTM)
# ------------------------------------------------------------------------------------------------


def test_vgg_dropout_noise():
    _, params, state = tiny("vgg11")
    x = inputs("vgg11")
    assert vgg.noise_shapes(params, N) == {"fc1": (N, 6)}
    noise = vgg.draw_noise(3, params, N)
    assert torch.equal(noise["fc1"], vgg.draw_noise(3, params, N)["fc1"])
    out, _, acts = vgg.apply(params, state, x, train=True, capture=True, noise=noise, dropout=0.25)
    kept = acts["fc1"] * (noise["fc1"] >= 0.25) / 0.75
    close.assert_close(out, layers.linear(kept, params["fc2"]["weight"], params["fc2"]["bias"]), 1e-5)
    plain, _ = vgg.apply(params, state, x, train=True)
    assert not close.is_close(out, plain, 1e-3)
    assert torch.equal(
        vgg.apply(params, state, x, train=False, noise=noise)[0], vgg.apply(params, state, x, train=False)[0]
    )
    with pytest.raises(ValueError, match=r"noise\['fc1'\] must have shape \(4, 6\), got \(3, 6\)"):
        vgg.apply(params, state, x, train=True, noise={"fc1": torch.zeros(3, 6)})


def test_lstm_dropout_noise():
    _, params, _ = tiny("lstm_lm")
    x = inputs("lstm_lm")
    shapes = lstm_lm.noise_shapes(params, N, 6)
    assert shapes == {"embedding": (N, 6, 5), "lstm.0": (N, 6, 4), "lstm.1": (N, 6, 4)}
    noise = lstm_lm.draw_noise(0, params, N, 6)
    out, _ = lstm_lm.apply(params, {}, x, train=True, noise=noise, dropout=0.5)
    plain, _ = lstm_lm.apply(params, {}, x, train=True)
    assert not close.is_close(out, plain, 1e-3)
    close.assert_close(lstm_lm.apply(params, {}, x, train=True, noise=noise, dropout=0.0)[0], plain, 1e-6)
    ones = {k: torch.ones(v) for k, v in shapes.items()}  # nothing dropped: each site scaled by 1/(1-p)
    emb_scaled = tree.map_with_path(lambda p, v: v * 2 if p == "embedding.weight" else v, params)
    manual = lstm_lm.apply(emb_scaled, {}, x, train=True, capture=True)[2]["lstm.0"]
    got = lstm_lm.apply(params, {}, x, train=True, capture=True, noise=ones, dropout=0.5)[2]["lstm.0"]
    close.assert_close(got, manual, 1e-5)


def test_dropout_by_hand():
    x = torch.tensor([[2.0, 4.0, 6.0]])
    y = layers.dropout(x, torch.tensor([[0.3, 0.7, 0.5]]), 0.5)
    assert torch.equal(y, torch.tensor([[0.0, 8.0, 12.0]]))
    with pytest.raises(ValueError, match="p must lie in"):
        layers.dropout(x, x, 1.0)
    with pytest.raises(ValueError, match=r"noise has shape \(3,\)"):
        layers.dropout(x, torch.zeros(3), 0.5)
    noise = layers.draw_noise(5, {"a": (2, 3), "b": (4,)})
    assert noise["a"].shape == (2, 3) and noise["b"].shape == (4,)
    assert float(noise["a"].min()) >= 0 and float(noise["a"].max()) < 1
    layers.check_noise(noise, {"a": (2, 3), "b": (4,)})
    with pytest.raises(ValueError, match=r"noise\['b'\] must have shape \(5,\), got \(4,\)"):
        layers.check_noise(noise, {"a": (2, 3), "b": (5,)})
    with pytest.raises(ValueError, match=r"noise\['c'\] must have shape \(1,\), got None"):
        layers.check_noise(noise, {"c": (1,)})


# ------------------------------------------------------------------------------------------------
# Layers and initialisers by hand
# ------------------------------------------------------------------------------------------------


def test_fans_and_initialisers():
    assert layers.fans((4, 3, 5, 5)) == (75, 100) and layers.fans((7, 2)) == (2, 7)
    with pytest.raises(ValueError, match=r"at least 2 dimensions.*\(5,\)"):
        layers.fans((5,))
    w = layers.kaiming_uniform(0, (400, 100))  # bound 1/sqrt(100) = 0.1
    assert w.abs().max() <= 0.1 and w.abs().max() > 0.099
    assert abs(layers.kaiming_normal(1, (400, 100)).std().item() / math.sqrt(2 / 100) - 1) < 0.02
    assert abs(layers.glorot_normal(2, (300, 100)).std().item() / math.sqrt(2 / 400) - 1) < 0.02
    u = layers.uniform(3, (1000,), 0.25)
    assert u.abs().max() <= 0.25 and u.min() < -0.24 and u.max() > 0.24
    assert torch.equal(layers.init_weight(4, (3, 2)), layers.kaiming_uniform(4, (3, 2)))
    assert torch.equal(layers.init_weight(4, (3, 2), "glorot_normal"), layers.glorot_normal(4, (3, 2)))
    with pytest.raises(ValueError, match="unknown weight init scheme 'xavier'"):
        layers.init_weight(0, (3, 2), "xavier")
    d = layers.dense_init(0, (50, 4, 3, 3))  # fan_in = 36: bias bound 1/6
    assert set(d) == {"weight", "bias"} and d["bias"].abs().max() <= 1 / 6 and d["bias"].abs().max() > 0.15
    assert set(layers.dense_init(0, (5, 4), bias=None)) == {"weight"}
    assert torch.equal(layers.dense_init(0, (5, 4), bias="zeros")["bias"], torch.zeros(5))
    with pytest.raises(ValueError, match="unknown bias init 'one'"):
        layers.dense_init(0, (5, 4), bias="one")
    p, s = layers.batch_norm_init(3)
    assert torch.equal(p["weight"], torch.ones(3)) and torch.equal(s["running_var"], torch.ones(3))
    lstm = layers.lstm_init(0, 7, 16)  # bound 1/sqrt(16) = 0.25
    assert lstm["w_ih"].shape == (64, 7) and lstm["w_hh"].shape == (64, 16) and lstm["b"].shape == (64,)
    assert max(float(v.abs().max()) for v in lstm.values()) <= 0.25


def test_pooling_flatten_and_thin_wrappers():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert torch.equal(layers.max_pool(x), torch.tensor([[[[5.0, 7.0], [13.0, 15.0]]]]))
    assert torch.equal(layers.global_avg_pool(x), torch.tensor([[7.5]]))
    assert torch.equal(layers.flatten(torch.arange(8.0).reshape(2, 2, 2)), torch.arange(8.0).reshape(2, 4))
    w, b = torch.tensor([[1.0, 2.0]]), torch.tensor([0.5])
    assert torch.equal(layers.linear(torch.tensor([[3.0, 4.0]]), w, b), torch.tensor([[11.5]]))
    k = torch.ones(1, 1, 3)
    assert torch.equal(
        layers.conv1d(torch.ones(1, 1, 4), k, padding=1), torch.tensor([[[2.0, 3.0, 3.0, 2.0]]])
    )
    assert layers.conv2d(torch.ones(1, 1, 4, 4), torch.ones(2, 1, 3, 3), stride=2).shape == (1, 2, 1, 1)
    assert torch.equal(
        layers.embedding(torch.tensor([[2, 0]]), torch.eye(3)), torch.tensor([[[0.0, 0, 1], [1, 0, 0]]])
    )


# ------------------------------------------------------------------------------------------------
# structure helpers
# ------------------------------------------------------------------------------------------------


def test_numbered_and_indexed_sort_numerically():
    node = {"fc10": 0, "fc2": 0, "fc1": 0, "fcx": 0, "bn1": 0}
    assert structure.numbered(node, "fc") == ["fc1", "fc2", "fc10"]
    assert structure.indexed({"10": 0, "2": 0, "0": 0, "shortcut": 0}) == ["0", "2", "10"]


@settings(max_examples=25, deadline=None)
@given(
    st.dictionaries(
        st.from_regex(r"[a-c]{1,2}(\.[a-c0-9]{1,2}){0,2}", fullmatch=True),
        st.integers(-1000, 1000),
        max_size=6,
    )
)
def test_nest_inverts_flatten(flat):
    paths = sorted(flat)
    if any(q.startswith(p + ".") for p in paths for q in paths):
        with pytest.raises(ValueError, match="nest"):
            structure.nest(flat)
        return
    nested = structure.nest({k: torch.tensor(v) for k, v in flat.items()})
    assert is_canonical(nested)
    assert sorted(tree.paths(nested)) == paths
    for p in paths:
        assert structure.get_path(nested, p).item() == flat[p]


def test_get_path_missing():
    with pytest.raises(KeyError, match="'a.c'.*'c'"):
        structure.get_path({"a": {"b": 1}}, "a.c")


def test_out_in_members_and_chain_groups():
    params = {
        "bn": {"weight": 0, "bias": 0},
        "c": {"weight": torch.zeros(3, 2, 3, 3)},
        "fc": {"weight": torch.zeros(5, 12)},
    }
    outs = structure.out_members(params, "c", "bn")
    assert [(m.path, m.score) for m in outs] == [
        ("c.weight", True), ("bn.weight", False), ("bn.bias", False),
        ("state.bn.running_mean", False), ("state.bn.running_var", False),
    ]  # fmt: skip
    assert structure.in_member(params, "fc", 3) == Member("fc.weight", 1, inner=4, score=False)
    with pytest.raises(ValueError, match=r"fc.weight of shape \(5, 12\) cannot consume 5 units"):
        structure.in_member(params, "fc", 5)
    (g,) = structure.chain_groups(params, ["c", "fc"], ["bn", None])
    assert g == ChannelGroup("c", 3, (*outs, Member("fc.weight", 1, inner=4, score=False)))
    with pytest.raises(ValueError, match="2 layers but 1 batch norms"):
        structure.chain_groups(params, ["c", "fc"], ["bn"])


def test_check_sizes_and_features():
    assert structure.check_sizes("w", 3) == (3,) and structure.check_sizes("w", [1, 2]) == (1, 2)
    with pytest.raises(ValueError, match=r"sizes must hold at least 2 positive ints, got \(5,\)"):
        structure.check_sizes("sizes", (5,), min_len=2)
    with pytest.raises(ValueError, match="width"):
        structure.check_sizes("width", 0)
    with pytest.raises(TypeError, match="width must hold ints"):
        structure.check_sizes("width", (2.5,))
    w = torch.zeros(4, 6)
    structure.check_features(torch.zeros(2, 2, 3), 6, "fc1.weight", w)
    with pytest.raises(
        ValueError,
        match=r"input x of shape \(2, 5\) has 5 values per sample, but fc1.weight of shape \(4, 6\)",
    ):
        structure.check_features(torch.zeros(2, 5), 6, "fc1.weight", w)
    with pytest.raises(TypeError, match="floating"):
        structure.check_features(torch.zeros(2, 6, dtype=torch.long), 6, "fc1.weight", w)


# ------------------------------------------------------------------------------------------------
# Bad input and bad config
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, shape, match",
    [
        ("mlp", (2, 5), "fc1.weight"),
        ("lenet5", (2, 3, 16, 16), "conv1.weight"),
        ("lenet5", (2, 1, 20, 20), "fc1.weight"),
        ("conv2", (2, 3, 16, 16), "fc1.weight"),
        ("resnet20", (2, 1, 8, 8), "conv1.weight"),
        ("vgg11", (2, 3, 64, 64), "fc1.weight"),
        ("cnn1d", (2, 2, 40), "conv1.weight"),
    ],
)
def test_bad_input_names_the_leaf(name, shape, match):
    spec, params, state = tiny(name)
    with pytest.raises(ValueError, match=match):
        spec.apply(params, state, torch.zeros(shape), train=False)


def test_lstm_bad_input():
    _, params, _ = tiny("lstm_lm")
    with pytest.raises(TypeError, match="integer token ids"):
        lstm_lm.apply(params, {}, torch.zeros(2, 3), train=False)
    with pytest.raises(ValueError, match=r"\(N, T\)"):
        lstm_lm.apply(params, {}, torch.zeros(2, 3, 1, dtype=torch.long), train=False)


@pytest.mark.parametrize(
    "fn, cfg, match",
    [
        (mlp.init, {"sizes": (5,)}, "sizes"),
        (lenet5.init, {"image_size": 11}, "image_size=11"),
        (conv.init, {"depth": 3}, "depth must be 2, 4 or 6"),
        (conv.init, {"depth": 6, "image_size": 4}, "image_size=4"),
        (resnet.init, {"depth": 21}, "6n \\+ 2"),
        (vgg.init, {"depth": 13}, "depth must be one of"),
        (vgg.init, {"image_size": 48}, "multiple of 32"),
        (lstm_lm.init, {"hidden": (3, 4, 5), "num_layers": 2}, "num_layers=2"),
        (cnn1d.init, {"kernel": 0}, "kernel"),
    ],
)
def test_bad_config(fn, cfg, match):
    with pytest.raises(ValueError, match=match):
        fn(0, **cfg)
