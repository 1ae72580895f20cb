"""Tests for pure_prune.compact: structured compaction (every registered model), expand, CSR kernels,
2:4 semi-structured validation, nn.Module export."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from pure_prune import compact, mask, rng, select, tree
from pure_prune import models as model_registry
from pure_prune.groups import ChannelGroup, Member, unit_mask_to_member


def _cfg(name: str, w: int) -> tuple[dict, tuple[int, ...]]:
    """A small config of model ``name`` with widths around ``w``, and one input sample's shape."""
    if name in ("mlp", "lenet300"):
        return {"sizes": (12, w, w + 1, 5)}, (12,)
    if name == "lenet5":
        return {"channels": (w, w + 1), "hidden": (w, w)}, (1, 28, 28)
    if name.startswith("conv"):
        return {"width": w, "hidden": (w,), "image_size": 8}, (3, 8, 8)
    if name.startswith("resnet"):
        return {"width": w}, (3, 8, 8)
    if name.startswith("vgg"):
        return {"width": w, "hidden": w}, (3, 32, 32)
    if name == "lstm_lm":
        return {"vocab": 11, "embed": w, "hidden": w + 1}, (3,)
    if name == "cnn1d":
        return {"channels": (w, w, w + 1), "length": 12}, (12,)
    if name == "llama":
        cfg = {"vocab": 11, "dim": 8, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "context": 5}
        return {**cfg, "ffn": w}, (5,)
    raise AssertionError(f"no small config for {name}")


def _inputs(name: str, shape: tuple[int, ...], key: int) -> torch.Tensor:
    if name in ("lstm_lm", "llama"):
        return torch.randint(0, 11, (2, *shape), generator=rng.generator(key))
    return rng.normal(key, (3, *shape))


def _perturbed(key: int, t):
    """Non-zero biases and BatchNorm params/stats, so that a wrongly removed unit shows."""
    return tree.map(lambda x: x + 0.2 * rng.uniform(rng.fold_in(key, x.numel()), tuple(x.shape)), t)


def _model(name: str, w: int, key: int):
    spec = model_registry.get(name)
    cfg, shape = _cfg(name, w)
    params, state = spec.init(key, **cfg)
    params, state = _perturbed(key + 1, params), _perturbed(key + 2, state)
    if name.startswith("resnet"):  # small residual branches (as zero-init residual BN) keep eval mode finite
        params = tree.map_with_path(lambda p, x: 0.2 * x if p.endswith("bn2.weight") else x, params)
    return spec, params, state, shape


def _channel_masks(params, groups, s: float, key: int, unstructured: float):
    """Random units removed in every prunable group, plus random unstructured pruning on top."""
    scores = {g.name: rng.uniform(rng.fold_in(key, i), (g.size,)) for i, g in enumerate(groups) if g.prunable}
    base = mask.ones_like(params)
    if unstructured:
        noise = tree.map(
            lambda p, m: None if m is None else rng.uniform(key + 7, tuple(p.shape)), params, base
        )
        base = select.unstructured(noise, unstructured, masks=base)
    return select.units(scores, s, groups, params, masks=base)


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    scale = max(1.0, float(b.detach().abs().max()))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * scale)


# ------------------------------------------------------------------------------------- compact
@settings(max_examples=26, deadline=None)
@given(
    name=st.sampled_from(model_registry.names()),
    w=st.integers(4, 8),
    s=st.sampled_from([0.25, 0.5, 0.75, 1.0]),
    unstructured=st.sampled_from([0.0, 0.3]),
    key=st.integers(0, 2**16),
)
def test_compacted_outputs_equal_masked_outputs(name, w, s, unstructured, key):
    spec, params, state, shape = _model(name, w, key)
    groups = spec.groups(params)
    masks = _channel_masks(params, groups, s, key, unstructured)
    small_p, small_s, small_m, kept = compact.compact(params, state, masks, groups)
    units = compact.kept_units(params, state, masks, groups)  # the same choice, nothing built
    assert units.keys() == kept.keys() and all(torch.equal(units[k], kept[k]) for k in kept)
    x = _inputs(name, shape, key + 3)
    masked = mask.apply(params, masks)
    for train in (False, True):  # eval and train mode (BatchNorm batch statistics and new state)
        out, new_state = spec.apply(masked, state, x, train=train)
        out_c, new_state_c = spec.apply(small_p, small_s, x, train=train)
        _close(out_c, out)
        want_state = compact.compact(params, new_state, masks, groups)[1]  # the kept units' new stats
        for a, b in zip(tree.leaves(new_state_c), tree.leaves(want_state)):
            _close(a, b)
    n_small = sum(p.numel() for p in tree.leaves(small_p))
    if s > 0 and any(g.prunable and g.size > 1 for g in groups):
        assert n_small < sum(p.numel() for p in tree.leaves(params))
    mask.validate(small_p, small_m)


@settings(max_examples=12, deadline=None)
@given(name=st.sampled_from(model_registry.names()), w=st.integers(4, 6), key=st.integers(0, 2**16))
def test_expand_compact_round_trip(name, w, key):
    spec, params, state, _ = _model(name, w, key)
    groups = spec.groups(params)
    masks = _channel_masks(params, groups, 0.5, key, 0.2)
    small = compact.compact(params, state, masks, groups)
    kept = small[3]
    full_p, full_s, full_m = compact.expand(*small[:3], kept, groups)
    assert tree.structure(full_p) == tree.structure(params)
    assert tree.structure(full_m) == tree.structure(masks)
    # select.units prunes every param member of a removed unit, so the params come back as masked
    for a, b in zip(tree.leaves(full_p), tree.leaves(mask.apply(params, masks))):
        assert torch.equal(a, b)
    for a, b in zip(tree.leaves(full_m), tree.leaves(masks)):
        assert (a is None and b is None) or torch.equal(a, b)
    # state: equal at kept units, zero at removed ones
    for path, a, b in zip(tree.paths(state), tree.leaves(full_s), tree.leaves(state)):
        keep = torch.ones_like(b, dtype=torch.bool)
        for g in groups:
            for mem in g.members:
                if mem.path == "state." + path:
                    units = torch.zeros(g.size, dtype=torch.bool)
                    units[kept[g.name]] = True
                    keep &= unit_mask_to_member(units, mem, b.shape)
        assert torch.equal(a, torch.where(keep, b, torch.zeros(())))
    # compacting again removes nothing more
    again = compact.compact(*small[:3], spec.groups(small[0]))
    assert all(k.numel() == g.size for g, k in zip(spec.groups(small[0]), again[3].values()))


def test_member_index_by_hand():
    # a leaf of length outer*size*inner = 2*3*2 = 12 along axis 1; unit 1 of 3 removed
    x = torch.arange(24.0).reshape(2, 12)
    params = {"a": {"weight": x}}
    masks = {"a": {"weight": torch.ones(2, 12, dtype=torch.bool)}}
    masks["a"]["weight"][:, [2, 3, 8, 9]] = False  # unit 1: o=0 -> 2,3; o=1 -> 8,9
    g = ChannelGroup("g", 3, (Member("a.weight", 1, outer=2, inner=2),))
    small_p, _, small_m, kept = compact.compact(params, {}, masks, [g])
    assert kept["g"].tolist() == [0, 2]
    assert small_p["a"]["weight"][0].tolist() == [0, 1, 4, 5, 6, 7, 10, 11]
    assert small_m["a"]["weight"].all()
    full_p, _, full_m = compact.expand(small_p, {}, small_m, kept, [g])
    assert full_p["a"]["weight"][0].tolist() == [0, 1, 0, 0, 4, 5, 6, 7, 0, 0, 10, 11]
    assert torch.equal(full_m["a"]["weight"], masks["a"]["weight"])


def _mlp(sizes=(5, 4, 3)):
    spec = model_registry.get("mlp")
    params, state = spec.init(0, sizes=sizes)
    return spec, params, state


def test_unit_with_kept_bias_stays_and_all_pruned_group_keeps_one_unit():
    spec, params, state = _mlp()
    groups = spec.groups(params)
    masks = mask.ones_like(params)  # biases dense (None)
    masks["fc1"]["weight"][1] = False  # unit 1: weights pruned, bias kept and non-zero -> stays
    _, _, _, kept = compact.compact(params, state, masks, groups)
    assert kept["fc1"].tolist() == [0, 1, 2, 3]
    params["fc1"]["bias"] = params["fc1"]["bias"].clone()
    params["fc1"]["bias"][1] = 0.0  # now it outputs relu(0) = 0: removable
    small_p, _, _, kept = compact.compact(params, state, masks, groups)
    assert kept["fc1"].tolist() == [0, 2, 3]
    x = torch.randn(6, 5)
    _close(
        spec.apply(small_p, state, x, train=False)[0],
        spec.apply(mask.apply(params, masks), state, x, train=False)[0],
    )
    masks["fc1"]["weight"][:] = False
    params["fc1"]["bias"] = torch.zeros(4)
    small_p, _, _, kept = compact.compact(params, state, masks, groups)
    assert kept["fc1"].tolist() == [0] and small_p["fc1"]["weight"].shape == (1, 5)
    _close(
        spec.apply(small_p, state, x, train=False)[0],
        spec.apply(mask.apply(params, masks), state, x, train=False)[0],
    )


def test_dense_scored_member_keeps_every_unit_and_untouched_leaves_are_not_copied():
    spec, params, state = _mlp()
    masks = tree.map(lambda p: None, params)
    small_p, _, small_m, kept = compact.compact(params, state, masks, spec.groups(params))
    assert kept["fc1"].tolist() == [0, 1, 2, 3]
    assert small_p["fc1"]["weight"] is params["fc1"]["weight"] and small_m["fc1"]["weight"] is None


def test_compact_at_given_units_reuses_the_shapes_with_new_masks_inside():
    spec, params, state = _mlp((6, 8, 4))
    groups = spec.groups(params)
    scores = tree.map(torch.abs, params)
    m1 = select.channels(scores, 0.25, groups)
    _, _, _, kept = compact.compact(params, state, m1, groups)
    m2 = select.channels(scores, 0.5, groups, masks=m1)  # two more units of fc1 and fc2 removed
    small_p, _, small_m, same = compact.compact(params, state, m2, groups, kept=kept)
    assert all(torch.equal(same[k], kept[k]) for k in kept)
    assert small_p["fc1"]["weight"].shape == (6, 6) and not bool(small_m["fc1"]["weight"].all())
    x = torch.randn(5, 6)
    _close(
        spec.apply(small_p, state, x, train=False)[0],
        spec.apply(mask.apply(params, m2), state, x, train=False)[0],
    )
    alive = m2["fc1"]["weight"].any(1)
    drop = next(int(u) for u in kept["fc1"] if alive[u])  # a unit that still has kept weights
    fewer = {**kept, "fc1": kept["fc1"][kept["fc1"] != drop]}
    with pytest.raises(ValueError, match=rf"kept\['fc1'\] drops units \[{drop}\]"):
        compact.compact(params, state, m2, groups, kept=fewer)
    with pytest.raises(TypeError, match="mapping"):
        compact.compact(params, state, m2, groups, kept=[0, 1])


def test_compact_and_expand_reject_bad_input():
    spec, params, state = _mlp()
    groups = spec.groups(params)
    masks = mask.ones_like(params)
    with pytest.raises(ValueError, match="'nope.weight' is not a leaf"):
        compact.compact(params, state, masks, [ChannelGroup("x", 4, (Member("nope.weight", 0),))])
    with pytest.raises(
        ValueError, match=r"'fc1\.weight' axis 0 has length 4, expected outer\*size\*inner = 1\*3\*1"
    ):
        compact.compact(params, state, masks, [ChannelGroup("x", 3, (Member("fc1.weight", 0),))])
    twice = [groups[0], groups[0]._replace(name="copy")]
    with pytest.raises(ValueError, match="claimed twice"):
        compact.compact(params, state, masks, twice)
    with pytest.raises(ValueError, match="unique"):
        compact.compact(params, state, masks, [groups[0], groups[0]])
    with pytest.raises(TypeError, match="ChannelGroup"):
        compact.compact(params, state, masks, groups[0])
    bad = {**masks, "fc1": {**masks["fc1"], "weight": masks["fc1"]["weight"].float()}}
    with pytest.raises(TypeError, match="'fc1.weight'"):
        compact.compact(params, state, bad, groups)
    small = compact.compact(params, state, masks, groups)
    with pytest.raises(ValueError, match="missing"):
        compact.expand(*small[:3], {}, groups)
    with pytest.raises(ValueError, match="strictly increasing"):
        compact.expand(*small[:3], {"fc1": torch.tensor([3, 2, 1, 0])}, groups)
    with pytest.raises(ValueError, match=r"kept\['fc1'\]"):
        compact.expand(*small[:3], {"fc1": torch.tensor([0, 9])}, groups)
    with pytest.raises(ValueError, match="axis 0 has length 4"):
        compact.expand(*small[:3], {"fc1": torch.tensor([0, 1])}, groups)


def test_compacted_model_trains_and_reexpands():
    from pure_prune import losses, optim, train

    spec, params, state = _mlp((6, 8, 4))
    groups = spec.groups(params)
    masks = select.channels(tree.map(torch.abs, params), 0.5, groups)
    small_p, small_s, small_m, kept = compact.compact(params, state, masks, groups)
    opt = optim.sgd(0.1, momentum=0.9)
    step = train.make_step(spec, losses.cross_entropy, opt, compile=False)
    batch = (torch.randn(16, 6), torch.randint(0, 4, (16,)))
    full_p = mask.apply(params, masks)
    full_o = opt.init(full_p)
    small_o = opt.init(small_p)
    for _ in range(3):
        small_p, small_s, small_o, m1 = step(small_p, small_s, small_o, small_m, batch)
        full_p, state, full_o, m2 = step(full_p, state, full_o, masks, batch)
        _close(m1["loss"], m2["loss"])
    back = compact.expand(small_p, small_s, small_m, kept, groups)[0]
    for a, b in zip(tree.leaves(back), tree.leaves(full_p)):
        _close(a, b)


# ----------------------------------------------------------------------------------------- CSR
def test_csr_forward_equals_dense_masked_forward():
    spec = model_registry.get("mlp")
    params, state = spec.init(3, sizes=(32, 24, 16, 5))
    scores = tree.map(lambda p: p.abs() if p.ndim == 2 else None, params)
    masks = select.unstructured(scores, 0.9, scope="layer")
    sparse = compact.to_csr(params, masks, min_sparsity=0.85)
    assert all(sparse[k]["weight"].layout == torch.sparse_csr for k in ("fc1", "fc2", "fc3"))
    assert sparse["fc1"]["bias"] is params["fc1"]["bias"]
    x = torch.randn(7, 32)
    want = spec.apply(mask.apply(params, masks), state, x, train=False)[0]
    _close(compact.csr_apply(spec.apply)(sparse, state, x, train=False)[0], want)
    # above the leaves' sparsity nothing is converted (masked dense instead)
    dense = compact.to_csr(params, masks, min_sparsity=0.95)
    assert all(dense[k]["weight"].layout == torch.strided for k in ("fc1", "fc2", "fc3"))
    _close(spec.apply(dense, state, x, train=False)[0], want)


def test_csr_linear_by_hand_and_other_ops_get_a_dense_weight():
    w = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]])
    x = torch.tensor([[[1.0, 1.0, 1.0], [3.0, 4.0, 5.0]]])  # (1, 2, 3): extra leading axes
    run = compact.csr_apply(lambda w, x, b=None: F.linear(x, w, b))
    assert run(w.to_sparse_csr(), x).tolist() == [[[2.0, 1.0], [8.0, 3.0]]]
    assert run(w.to_sparse_csr(), x, torch.tensor([1.0, -1.0])).tolist() == [[[3.0, 0.0], [9.0, 2.0]]]
    emb = compact.csr_apply(lambda w, ids: F.embedding(ids, w))(w.to_sparse_csr(), torch.tensor([1]))
    assert emb.tolist() == [[1.0, 0.0, 0.0]]


def test_csr_lstm_forward_equals_dense():
    spec = model_registry.get("lstm_lm")
    params, state = spec.init(0, vocab=11, embed=8, hidden=8)
    scores = tree.map(lambda p: p.abs() if p.ndim == 2 else None, params)
    masks = select.unstructured(scores, 0.9)
    x = torch.randint(0, 11, (2, 3))
    want = spec.apply(mask.apply(params, masks), state, x, train=False)[0]
    got = compact.csr_apply(spec.apply)(
        compact.to_csr(params, masks, min_sparsity=0.5), state, x, train=False
    )[0]
    _close(got, want)


def test_to_csr_and_measure_crossover_reject_bad_input():
    spec, params, _ = _mlp()
    masks = mask.ones_like(params)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="min_sparsity"):
            compact.to_csr(params, masks, min_sparsity=bad)
    with pytest.raises(TypeError, match="min_sparsity"):
        compact.to_csr(params, masks, min_sparsity="0.9")
    with pytest.raises(ValueError, match="shape"):
        compact.measure_crossover((0, 4), 2)
    with pytest.raises(ValueError, match="batch"):
        compact.measure_crossover((4, 4), 0)
    with pytest.raises(ValueError, match="min_sparsity"):
        compact.measure_crossover((4, 4), 2, sparsities=(1.2,))


def test_measure_crossover_returns_a_tested_level_or_none():
    levels = (0.5, 0.99)
    got = compact.measure_crossover((128, 128), 8, levels, reps=3)
    assert got is None or got in levels


# ----------------------------------------------------------------------------------------- 2:4
def _two_four(shape, key=0):
    scores = rng.uniform(key, shape)
    return select.n_of_m({"w": scores}, 2, 4)["w"]


def test_semi_structured_validates_the_pattern_on_cpu():
    w = torch.randn(8, 16, dtype=torch.float16)
    m = _two_four((8, 16))
    assert bool((m.reshape(8, 4, 4).sum(-1) == 2).all())
    bad = m.clone()
    bad[3, 5] = ~bad[3, 5]
    with pytest.raises(ValueError, match=r"mask 'w' keeps [13] of the 4 inputs 4\.\.7 of row 3"):
        compact.to_semi_structured({"w": w}, {"w": bad})
    with pytest.raises(ValueError, match="not a multiple of 4"):
        compact.to_semi_structured({"w": torch.randn(2, 6)}, {"w": torch.ones(2, 6, dtype=torch.bool)})
    with pytest.raises(TypeError, match=r"'w' has dtype torch\.float32"):
        compact.to_semi_structured({"w": w.float()}, {"w": m})
    with pytest.raises(ValueError, match="no 2-D masked leaf"):
        compact.to_semi_structured({"w": w}, {"w": None})


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU error is only raised without a GPU")
def test_semi_structured_on_cpu_says_why():
    w = torch.randn(8, 16, dtype=torch.float16)
    with pytest.raises(ValueError, match="'w' is on cpu; semi-structured sparse kernels run only on CUDA"):
        compact.to_semi_structured({"w": w}, {"w": _two_four((8, 16))})


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0),
    reason="skipped: 2:4 kernels need a CUDA GPU of compute capability >= 8.0, and none is present here",
)
def test_semi_structured_linear_on_gpu_equals_masked_dense():
    w = torch.randn(128, 128, dtype=torch.float16, device="cuda")
    m = _two_four((128, 128)).cuda()
    params = {"w": w, "b": torch.randn(128, dtype=torch.float16, device="cuda")}
    out = compact.to_semi_structured(params, {"w": m, "b": None})
    x = torch.randn(64, 128, dtype=torch.float16, device="cuda")
    want = F.linear(x, torch.where(m, w, torch.zeros((), dtype=w.dtype, device="cuda")), params["b"])
    torch.testing.assert_close(F.linear(x, out["w"], out["b"]), want, rtol=1e-2, atol=1e-2)


# ----------------------------------------------------------------------------------- to_module
def test_to_module_state_dict_round_trip_forward_and_training():
    spec = model_registry.get("resnet20")
    params, state = spec.init(0, width=4)
    module = compact.to_module(spec.apply, params, state)
    assert set(module.state_dict()) == {*tree.paths(params), *tree.paths(state)}
    assert {n for n, _ in module.named_parameters()} == set(tree.paths(params))
    x = torch.randn(2, 3, 8, 8)
    module.eval()
    _close(module(x), spec.apply(params, state, x, train=False)[0])
    module.train()
    out = module(x)
    want, new_state = spec.apply(params, state, x, train=True)
    _close(out, want)
    for a, b in zip(tree.leaves(module.state()), tree.leaves(new_state)):
        _close(a, b)  # the buffers hold the new running statistics
    other = compact.to_module(spec.apply, *spec.init(1, width=4))
    other.load_state_dict(module.state_dict())
    other.eval(), module.eval()
    _close(other(x), module(x))
    # torch.optim works on the exported parameters
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    before = module.params()["fc"]["weight"].detach().clone()
    module.train()
    module(x).sum().backward()
    opt.step()
    assert not torch.equal(module.params()["fc"]["weight"], before)
    assert module.double().params()["fc"]["weight"].dtype == torch.float64


def test_to_module_of_a_compacted_model_and_bad_names():
    spec, params, state = _mlp((6, 8, 4))
    groups = spec.groups(params)
    masks = select.channels(tree.map(torch.abs, params), 0.5, groups)
    small_p, small_s, _, _ = compact.compact(params, state, masks, groups)
    module = compact.to_module(spec.apply, small_p, small_s)
    assert module.state_dict()["fc1.weight"].shape == (4, 6)
    x = torch.randn(3, 6)
    _close(module(x), spec.apply(mask.apply(params, masks), state, x, train=False)[0])
    for key in ("training", "params", "forward"):
        with pytest.raises(ValueError, match=f"'{key}'"):
            compact.to_module(spec.apply, {key: torch.ones(1)}, {})
    with pytest.raises(ValueError, match="'a.b' is both"):
        compact.to_module(spec.apply, {"a": {"b": torch.ones(1)}}, {"a": {"b": torch.ones(1)}})
    with pytest.raises(ValueError, match="'a' is a leaf and also a node"):
        compact.to_module(spec.apply, {"a": torch.ones(1)}, {"a": {"b": torch.ones(1)}})
    with pytest.raises(TypeError, match="'a'"):
        compact.to_module(spec.apply, {"a": 1.0}, {})
