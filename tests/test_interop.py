"""Tests for pure_prune.interop: nn.Module in and out, torch.nn.utils.prune export and import."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn.utils import prune

from pure_prune import interop, mask, rng, tree
from pure_prune.testing import close


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))


def _cnn() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )


class _LM(nn.Module):
    """Embedding -> 2-layer LSTM -> linear: (N, T) int64 tokens -> (N, T, vocab) logits."""

    def __init__(self, vocab: int = 11, dim: int = 4, hidden: int = 6) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, hidden, num_layers=2, batch_first=True)
        self.fc = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.emb(x))
        return self.fc(h)


class _Tied(nn.Module):
    """A language model whose output projection shares the embedding matrix."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 3)
        self.out = nn.Linear(3, 7, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.emb(x)))


def _lm() -> nn.Module:
    torch.manual_seed(2)
    return _LM()


def _tied() -> nn.Module:
    torch.manual_seed(3)
    return _Tied()


def _images(key: int = 0, n: int = 4) -> torch.Tensor:
    return rng.normal(key, (n, 3, 6, 6))


def _tokens(key: int = 0) -> torch.Tensor:
    return torch.randint(0, 11, (2, 5), generator=rng.generator(key))


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_module_unchanged(module: nn.Module, snap: dict[str, torch.Tensor], training: bool) -> None:
    now = module.state_dict()
    assert list(now) == list(snap)
    for k in snap:
        assert torch.equal(now[k], snap[k]), k
    assert all(m.training == training for m in module.modules())


def _assert_trees_equal(a, b) -> None:
    tree.assert_same_structure(a, b)
    assert tree.paths(a) == tree.paths(b)
    for p, x, y in zip(tree.paths(a), tree.leaves(a), tree.leaves(b)):
        if x is None or y is None:
            assert x is None and y is None, p
        else:
            assert x.dtype == y.dtype and torch.equal(x, y), p


def _random_masks(params, key: int):
    """Random bool masks (about half kept) on ndim >= 2 leaves, None elsewhere."""
    ones = mask.ones_like(params)
    names = tree.paths(ones)
    keys = dict(zip(names, rng.split(key, len(names))))
    return tree.map_with_path(
        lambda p, m: None if m is None else rng.uniform(keys[p], tuple(m.shape)) < 0.5, ones
    )


# --------------------------------------------------------------------------- functional_call itself


def test_functional_call_writes_buffer_updates_in_place():
    """Why apply clones state: torch 2.13's functional_call mutates the buffers it is handed."""
    m = nn.BatchNorm1d(2).train()
    x = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    buffers = {k: v.clone() for k, v in m.named_buffers()}
    functional_call(m, {**dict(m.named_parameters()), **buffers}, (x,))
    assert torch.allclose(buffers["running_mean"], torch.tensor([0.2, 0.2]))
    assert int(buffers["num_batches_tracked"]) == 1
    assert torch.equal(m.running_mean, torch.zeros(2))  # the module's own buffer is not the one written

    params = {k: v.detach() for k, v in m.named_parameters()}
    buffers = {k: v.clone() for k, v in m.named_buffers()}
    grad(lambda p, b: functional_call(m, {**p, **b}, (x,)).sum())(params, buffers)
    assert int(buffers["num_batches_tracked"]) == 1  # also under torch.func.grad
    with pytest.raises(RuntimeError, match="mutate a captured Tensor"):  # and captured buffers fail
        grad(lambda p: functional_call(m, {**p, **buffers}, (x,)).sum())(params)

    apply, params, state = interop.from_module(m)  # apply writes into clones made inside the call
    g, new_state = grad(lambda p: (lambda o, s: (o.sum(), s))(*apply(p, state, x, train=True)), has_aux=True)(
        params
    )
    assert int(new_state["num_batches_tracked"]) == 1 and int(state["num_batches_tracked"]) == 0


# --------------------------------------------------------------------------- from_module


def test_from_module_tree_form_and_no_aliasing():
    m = _cnn()
    snap = _snapshot(m)
    _, params, state = interop.from_module(m)
    assert list(params) == ["0", "1", "3", "4", "8"]  # sorted string keys: canonical
    assert list(params["1"]) == ["bias", "weight"]
    assert tree.paths(params) == sorted(n for n, _ in m.named_parameters())
    assert tree.paths(state) == sorted(n for n, _ in m.named_buffers())
    assert state["1"]["num_batches_tracked"].dtype == torch.int64
    assert torch.equal(params["0"]["weight"], m[0].weight)
    assert params["0"]["weight"].data_ptr() != m[0].weight.data_ptr()
    assert not params["0"]["weight"].requires_grad
    assert state["4"]["running_var"].data_ptr() != m[4].running_var.data_ptr()
    params["0"]["weight"].add_(1.0)  # the clones are the caller's own
    _assert_module_unchanged(m, snap, training=True)


def test_from_module_mlp_matches_module():
    m = _mlp().eval()
    apply, params, state = interop.from_module(m)
    assert state == {}
    x = rng.normal(0, (4, 5))
    out, new_state = apply(params, state, x)
    assert torch.equal(out, m(x))
    assert new_state == {}


def test_from_module_cnn_eval_matches_and_keeps_state():
    m = _cnn()
    m.train()
    m(_images(9))  # non-trivial running statistics
    m.eval()
    apply, params, state = interop.from_module(m)
    x = _images()
    out, new_state = apply(params, state, x, train=False)
    assert torch.equal(out, m(x))
    _assert_trees_equal(new_state, state)
    assert new_state["1"]["running_mean"] is not state["1"]["running_mean"]


def test_from_module_cnn_train_is_pure_and_matches_module():
    m = _cnn().eval()
    snap = _snapshot(m)
    apply, params, state = interop.from_module(m)
    state_before = tree.map(torch.clone, state)
    reference = copy.deepcopy(m).train()
    x1, x2 = _images(1), _images(2)

    out, new_state = apply(params, state, x1, train=True)
    assert torch.equal(out, reference(x1))
    _, _, reference_state = interop.from_module(reference)
    _assert_trees_equal(new_state, reference_state)
    assert int(new_state["1"]["num_batches_tracked"]) == 1
    assert not torch.equal(new_state["1"]["running_mean"], state["1"]["running_mean"])

    out2, newer_state = apply(params, new_state, x2, train=True)  # threading state = module's history
    assert torch.equal(out2, reference(x2))
    _assert_trees_equal(newer_state, interop.from_module(reference)[2])

    _assert_trees_equal(state, state_before)  # inputs untouched
    _assert_module_unchanged(m, snap, training=False)  # module untouched, still in eval mode


def test_batchnorm_train_running_stats_by_hand():
    """momentum 0.1: mean' = 0.9*0 + 0.1*mean(x), var' = 0.9*1 + 0.1*unbiased var(x)."""
    apply, params, state = interop.from_module(nn.BatchNorm1d(1))
    x = torch.tensor([[1.0], [3.0]])  # mean 2, unbiased variance 2, biased variance 1
    out, new_state = apply(params, state, x, train=True)
    close.assert_close(out, torch.tensor([[-1.0], [1.0]]), 1e-4)  # (x - 2) / sqrt(1 + eps)
    assert torch.allclose(new_state["running_mean"], torch.tensor([0.2]))
    assert torch.allclose(new_state["running_var"], torch.tensor([1.1]))
    assert int(new_state["num_batches_tracked"]) == 1
    assert torch.equal(state["running_mean"], torch.zeros(1))


def test_from_module_lstm_matches_module():
    m = _lm().eval()
    apply, params, state = interop.from_module(m)
    assert tree.paths(params["lstm"]) == sorted(n for n, _ in m.lstm.named_parameters())
    x = _tokens()
    out, _ = apply(params, state, x)
    assert out.shape == (2, 5, 11)
    close.assert_close(out, m(x), 1e-6)
    out_train, _ = apply(params, state, x, train=True)  # no dropout, no buffers: same as eval
    close.assert_close(out_train, out, 1e-6)


def test_grad_through_apply_matches_autograd():
    m = _cnn().train()
    apply, params, state = interop.from_module(m)
    x, y = _images(3), torch.tensor([0, 1, 1, 0])

    def loss(p, s):
        out, new_s = apply(p, s, x, train=True)
        return nn.functional.cross_entropy(out, y), new_s

    grads, new_state = grad(loss, has_aux=True)(params, state)
    reference = copy.deepcopy(m)
    nn.functional.cross_entropy(reference(x), y).backward()
    expected = interop.from_module(reference)
    for name, p in reference.named_parameters():
        leaf = grads
        for key in name.split("."):
            leaf = leaf[key]
        close.assert_close(leaf, p.grad, 1e-5)
    _assert_trees_equal(new_state, expected[2])
    assert int(state["1"]["num_batches_tracked"]) == 0


def test_grad_through_lstm_apply_matches_autograd():
    m = _lm()
    apply, params, state = interop.from_module(m)
    x = _tokens(4)
    grads = grad(lambda p: apply(p, state, x)[0].square().mean())(params)
    m(x).square().mean().backward()
    close.assert_close(grads["lstm"]["weight_hh_l1"], m.lstm.weight_hh_l1.grad, 1e-5)
    close.assert_close(grads["emb"]["weight"], m.emb.weight.grad, 1e-5)


def test_vmap_over_seeds_in_train_mode_equals_loop():
    apply, p0, s0 = interop.from_module(_cnn())
    p1 = tree.map(lambda t: t * 0.5 + 0.1, p0)
    s1 = apply(p0, s0, _images(7), train=True)[1]  # non-trivial statistics, num_batches_tracked 1
    members = [(p0, s0), (p1, s1)]
    params = tree.stack([p for p, _ in members])
    state = tree.stack([s for _, s in members])
    state_before = tree.map(torch.clone, state)
    x = _images(5)
    out, new_state = vmap(lambda p, s: apply(p, s, x, train=True))(params, state)
    for i, (p, s) in enumerate(members):
        out_i, state_i = apply(p, s, x, train=True)
        close.assert_close(out[i], out_i, 1e-5)
        for a, b in zip(tree.leaves(tree.unstack(new_state)[i]), tree.leaves(state_i)):
            close.assert_close(a, b, 1e-5)
    assert new_state["1"]["num_batches_tracked"].tolist() == [1, 2]
    _assert_trees_equal(state, state_before)


def test_vmap_per_sample_in_eval_mode():
    m = _cnn().eval()
    apply, params, state = interop.from_module(m)
    x = _images(6)
    per_sample, _ = vmap(lambda xi: apply(params, state, xi[None], train=False))(x)
    close.assert_close(per_sample[:, 0], m(x), 1e-5)


def test_apply_rejects_bad_trees():
    apply, params, state = interop.from_module(_cnn())
    x = _images()
    missing = {k: v for k, v in params.items() if k != "8"}
    with pytest.raises(ValueError, match=r"missing leaves \['8.bias', '8.weight'\]"):
        apply(missing, state, x)
    with pytest.raises(ValueError, match=r"unexpected leaves \['0.extra'\]"):
        apply({**params, "0": {**params["0"], "extra": torch.zeros(1)}}, state, x)
    with pytest.raises(ValueError, match=r"state does not match.*missing leaves \['1.num_batches_tracked'"):
        apply(params, {**state, "1": {k: v for k, v in state["1"].items() if k != "num_batches_tracked"}}, x)
    with pytest.raises(TypeError, match=r"params leaf '0.bias' must be a tensor, got None"):
        apply({**params, "0": {**params["0"], "bias": None}}, state, x)
    with pytest.raises(TypeError, match="state must be a nested dict"):
        apply(params, None, x)
    with pytest.raises(TypeError, match="train must be a bool, got 1"):
        apply(params, state, x, train=1)


def test_from_module_rejects_bad_modules():
    with pytest.raises(TypeError, match="expected an nn.Module"):
        interop.from_module({"weight": torch.zeros(2)})
    with pytest.raises(ValueError, match="'weight' is an uninitialised lazy tensor"):
        interop.from_module(nn.LazyLinear(3))
    pruned = _mlp()
    prune.l1_unstructured(pruned[0], "weight", amount=0.5)
    with pytest.raises(ValueError, match=r"reparametrisations at \['0.weight'\].*from_torch_prune"):
        interop.from_module(pruned)


# --------------------------------------------------------------------------- tied parameters


def test_tied_parameters_are_one_leaf():
    m = _tied()
    apply, params, state = interop.from_module(m)
    assert tree.paths(params) == ["emb.weight"]  # the alias out.weight is not a second leaf
    x = torch.tensor([[0, 3, 6]])
    out, _ = apply(params, state, x)
    assert torch.equal(out, m(x))
    g = grad(lambda p: apply(p, state, x)[0].sum())(params)
    m(x).sum().backward()
    torch.testing.assert_close(g["emb"]["weight"], m.emb.weight.grad)  # summed over both uses

    doubled = tree.map(lambda t: 2 * t, params)
    new = interop.to_module(m, doubled)
    assert new.out.weight is new.emb.weight
    assert torch.equal(new.out.weight, 2 * m.emb.weight)


def test_tied_parameters_torch_prune_round_trip():
    m = _tied()
    _, params, state = interop.from_module(m)
    masks = _random_masks(params, 7)
    pruned = interop.to_torch_prune(m, params, masks)
    assert pruned.emb.weight_orig is pruned.out.weight_orig
    assert torch.equal(pruned.out.weight_mask, masks["emb"]["weight"].float())
    x = torch.tensor([[1, 2, 5]])
    apply, _, _ = interop.from_module(m)
    assert torch.equal(pruned(x), apply(mask.apply(params, masks), state, x)[0])
    back_params, back_masks = interop.from_torch_prune(pruned)
    _assert_trees_equal(back_params, params)
    _assert_trees_equal(back_masks, masks)
    plain = interop.strip_torch_prune(pruned)
    assert plain.out.weight is plain.emb.weight
    assert torch.equal(plain.emb.weight, params["emb"]["weight"])


def test_from_torch_prune_rejects_tied_parameter_with_two_masks():
    m = _tied()
    prune.custom_from_mask(m.emb, "weight", torch.ones(7, 3, dtype=torch.bool))
    prune.custom_from_mask(m.out, "weight", torch.zeros(7, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="tied parameter 'emb.weight' is also 'out.weight'"):
        interop.from_torch_prune(m)


# --------------------------------------------------------------------------- to_module


def test_to_module_round_trip_and_masks():
    m = _cnn().eval()
    snap = _snapshot(m)
    _, params, state = interop.from_module(m)
    params2 = tree.map(lambda t: t * 2 + 1, params)
    state2 = tree.map(lambda t: t + 3, state)
    new = interop.to_module(m, params2, state2)
    _, params_back, state_back = interop.from_module(new)
    _assert_trees_equal(params_back, params2)
    _assert_trees_equal(state_back, state2)
    _assert_module_unchanged(m, snap, training=False)

    kept_buffers = interop.to_module(m, params2)  # state=None keeps the module's buffers
    _assert_trees_equal(interop.from_module(kept_buffers)[2], state)

    masks = _random_masks(params, 3)
    masked = interop.from_module(interop.to_module(m, params2, masks=masks))[1]
    _assert_trees_equal(masked, mask.apply(params2, masks))
    assert bool((masked["0"]["weight"][~masks["0"]["weight"]] == 0).all())
    assert torch.equal(masked["0"]["bias"], params2["0"]["bias"])  # None mask: dense


def test_to_module_mask_by_hand():
    lin = nn.Linear(2, 2)
    params = {"bias": torch.tensor([5.0, 6.0]), "weight": torch.tensor([[1.0, 2.0], [3.0, 4.0]])}
    masks = {"bias": None, "weight": torch.tensor([[True, False], [False, True]])}
    new = interop.to_module(lin, params, masks=masks)
    assert torch.equal(new.weight, torch.tensor([[1.0, 0.0], [0.0, 4.0]]))
    assert torch.equal(new.bias, torch.tensor([5.0, 6.0]))
    assert isinstance(new.weight, nn.Parameter) and new.weight.requires_grad


def test_to_module_rejects_bad_input():
    m = _cnn()
    _, params, state = interop.from_module(m)
    bad_shape = {**params, "3": {**params["3"], "weight": torch.zeros(4, 4, 2, 2)}}
    with pytest.raises(
        ValueError, match=r"params leaf '3.weight' has shape \(4, 4, 2, 2\), the module's has \(4, 4, 3, 3\)"
    ):
        interop.to_module(m, bad_shape)
    bad_dtype = {**params, "8": {**params["8"], "bias": params["8"]["bias"].double()}}
    with pytest.raises(TypeError, match="params leaf '8.bias' has dtype torch.float64"):
        interop.to_module(m, bad_dtype)
    bad_state = {**state, "1": {**state["1"], "running_mean": torch.zeros(5)}}
    with pytest.raises(ValueError, match=r"state leaf '1.running_mean' has shape \(5,\)"):
        interop.to_module(m, params, bad_state)
    with pytest.raises(ValueError, match=r"missing leaves \['0.bias'\]"):
        interop.to_module(m, {**params, "0": {"weight": params["0"]["weight"]}})
    masks = _random_masks(params, 1)
    with pytest.raises(TypeError, match="mask '0.weight' has dtype torch.float32"):
        interop.to_module(
            m, params, masks={**masks, "0": {**masks["0"], "weight": masks["0"]["weight"].float()}}
        )
    with pytest.raises(TypeError, match="expected an nn.Module"):
        interop.to_module(params, params)


# --------------------------------------------------------------------------- torch.nn.utils.prune


@pytest.mark.parametrize("make, inputs", [(_cnn, _images), (_lm, _tokens)], ids=["cnn", "lstm"])
def test_to_torch_prune_matches_masked_apply_and_round_trips(make, inputs):
    m = make().eval()
    snap = _snapshot(m)
    apply, params, state = interop.from_module(m)
    masks = _random_masks(params, 11)
    pruned = interop.to_torch_prune(m, params, masks)
    names, leaves, _ = tree.flatten_with_paths(masks)
    for name, k in zip(names, leaves):
        mod_path, _, pname = name.rpartition(".")
        sub = pruned.get_submodule(mod_path)
        own_params = dict(sub.named_parameters(recurse=False))
        if k is None:
            assert pname in own_params and f"{pname}_orig" not in own_params
        else:
            assert torch.equal(own_params[f"{pname}_orig"], tree.leaves(params)[names.index(name)])
            assert torch.equal(sub.get_buffer(f"{pname}_mask"), k.float())
            assert torch.equal(getattr(sub, pname), own_params[f"{pname}_orig"] * k)
    x = inputs(5)
    close.assert_close(pruned(x), apply(mask.apply(params, masks), state, x)[0], 1e-6)
    back_params, back_masks = interop.from_torch_prune(pruned)
    _assert_trees_equal(back_params, params)
    _assert_trees_equal(back_masks, masks)
    _assert_module_unchanged(m, snap, training=False)


def test_to_torch_prune_by_hand():
    params = {"bias": torch.tensor([5.0, 6.0]), "weight": torch.tensor([[1.0, 2.0], [3.0, 4.0]])}
    masks = {"bias": None, "weight": torch.tensor([[True, False], [False, True]])}
    pruned = interop.to_torch_prune(nn.Linear(2, 2), params, masks)
    assert torch.equal(pruned.weight_orig, params["weight"])
    assert torch.equal(pruned.weight_mask, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    out = pruned(torch.tensor([[1.0, 1.0]]))
    assert torch.equal(out, torch.tensor([[1.0 + 5.0, 4.0 + 6.0]]))


def test_from_torch_prune_reads_torch_pruning_and_removed_pruning():
    m = _mlp()
    prune.l1_unstructured(m[0], "weight", amount=0.5)
    params, masks = interop.from_torch_prune(m)
    assert tree.paths(params) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert torch.equal(params["0"]["weight"], m[0].weight_orig)
    assert masks["0"]["weight"].dtype == torch.bool
    assert torch.equal(masks["0"]["weight"], m[0].weight_mask != 0)
    assert int(masks["0"]["weight"].sum()) == 20  # l1_unstructured(0.5) of 40 entries keeps 20
    assert masks["0"]["bias"] is None and masks["2"]["weight"] is None

    prune.remove(m[0], "weight")
    params, masks = interop.from_torch_prune(m)
    assert all(k is None for k in tree.leaves(masks))  # not inferable after remove
    assert torch.equal(params["0"]["weight"], m[0].weight)

    bad = _mlp()
    prune.custom_from_mask(bad[2], "weight", torch.ones(3, 8, dtype=torch.bool))
    with torch.no_grad():
        bad[2].weight_mask[0, 0] = 0.5
    with pytest.raises(ValueError, match=r"mask of '2.weight' holds 0.5"):
        interop.from_torch_prune(bad)


def test_strip_torch_prune_gives_the_plain_module():
    m = _cnn().eval()
    apply, params, state = interop.from_module(m)
    masks = _random_masks(params, 4)
    pruned = interop.to_torch_prune(m, params, masks)
    pruned_snap = _snapshot(pruned)
    plain = interop.strip_torch_prune(pruned)
    assert not any(n.endswith("_orig") for n, _ in plain.named_parameters())
    assert not any(n.endswith("_mask") for n, _ in plain.named_buffers())
    plain_apply, plain_params, plain_state = interop.from_module(plain)
    _assert_trees_equal(plain_params, params)  # unmasked originals
    _assert_trees_equal(plain_state, state)
    x = _images(8)
    back_params, back_masks = interop.from_torch_prune(pruned)
    out, _ = plain_apply(mask.apply(back_params, back_masks), plain_state, x)
    assert torch.equal(out, pruned(x))
    _assert_module_unchanged(pruned, pruned_snap, training=False)


def test_to_torch_prune_rejects_bad_input():
    m = _mlp()
    _, params, _ = interop.from_module(m)
    with pytest.raises(TypeError, match="needs a masks tree"):
        interop.to_torch_prune(m, params, None)
    masks = _random_masks(params, 0)
    wrong = {**masks, "2": {**masks["2"], "weight": torch.ones(8, 3, dtype=torch.bool)}}
    with pytest.raises(ValueError, match=r"mask '2.weight' has shape \(8, 3\), param has \(3, 8\)"):
        interop.to_torch_prune(m, params, wrong)
    pruned = interop.to_torch_prune(m, params, masks)
    with pytest.raises(ValueError, match="reparametrisations"):
        interop.to_torch_prune(pruned, params, masks)
