"""Second-order scores: HVPs, Hessian diagonals (exact, GGN, Hutchinson, MC Fisher), OBD, HAP, GraSP."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _importance_nets import CE, D, cnn
from _importance_nets import batch as _batch
from _importance_nets import cnn_params as _cnn_params
from _importance_nets import dense as _dense

from pure_prune import rng, tree
from pure_prune.groups import ChannelGroup, Member
from pure_prune.importance import hessian as H


def relu_mlp(p: dict, x: torch.Tensor) -> torch.Tensor:
    h = torch.relu(F.linear(x, p["fc1"]["weight"], p["fc1"]["bias"]))
    h = torch.relu(h @ p["fc2"]["weight"].T + p["fc2"]["bias"])
    return F.linear(h, p["fc3"]["weight"], p["fc3"]["bias"])


def tanh_mlp(p: dict, x: torch.Tensor) -> torch.Tensor:
    h = torch.tanh(F.linear(x, p["fc1"]["weight"], p["fc1"]["bias"]))
    h = torch.tanh(F.linear(h, p["fc2"]["weight"], p["fc2"]["bias"]))
    return F.linear(h, p["fc3"]["weight"], p["fc3"]["bias"])


SIZES = (5, 4, 4, 3)


@pytest.fixture(scope="module")
def mlp_case():
    return _dense(0, SIZES), _batch(1, 9, (5,), 3)


def _flat(t) -> torch.Tensor:
    return torch.cat([x.reshape(-1) for x in tree.leaves(t) if x is not None])


def _full_hessian(model_fn, params, batch) -> torch.Tensor:
    """Dense Hessian of the mean cross-entropy over every leaf, by torch.autograd.functional."""
    paths, leaves, spec = tree.flatten_with_paths(params)
    sizes = [x.numel() for x in leaves]

    def loss(flat: torch.Tensor) -> torch.Tensor:
        parts = [c.reshape(x.shape) for c, x in zip(torch.split(flat, sizes), leaves)]
        return F.cross_entropy(model_fn(tree.unflatten(spec, parts), batch[0]), batch[1])

    return torch.autograd.functional.hessian(loss, _flat(params))


def _close(a, b, rtol=1e-9, atol=1e-12) -> None:
    tree.assert_same_structure(a, b)
    for p, x, y in zip(tree.paths(a), tree.leaves(a), tree.leaves(b)):
        assert (x is None) == (y is None), p
        if x is not None:
            torch.testing.assert_close(x, y, rtol=rtol, atol=atol, msg=lambda m, p=p: f"{p}: {m}")


# ------------------------------------------------------------------------------------------ HVP


def test_hvp_equals_double_backward(mlp_case):
    params, batch = mlp_case
    vs = tree.map(lambda w: rng.normal(7, (3, *w.shape), dtype=D), params)
    ours = H.hvp(CE(tanh_mlp), params, batch, vs, chunk_size=2)
    leaves = [w.clone().requires_grad_() for w in tree.leaves(params)]
    loss = F.cross_entropy(tanh_mlp(tree.unflatten(tree.structure(params), leaves), batch[0]), batch[1])
    grads = torch.autograd.grad(loss, leaves, create_graph=True)
    for k in range(3):
        ref = torch.autograd.grad(grads, leaves, [v[k] for v in tree.leaves(vs)], retain_graph=True)
        for r, o in zip(ref, tree.leaves(ours)):
            torch.testing.assert_close(o[k], r, rtol=1e-10, atol=1e-12)


def test_hvp_rejects_bad_vectors(mlp_case):
    params, batch = mlp_case
    vs = tree.map(lambda w: torch.zeros(2, *w.shape, dtype=D), params)
    vs["fc2"]["weight"] = torch.zeros(3, 4, 4, dtype=D)
    with pytest.raises(ValueError, match="fc2.weight"):
        H.hvp(CE(relu_mlp), params, batch, vs)
    masks = tree.map(lambda w: torch.ones_like(w, dtype=torch.bool), params)
    masks["fc1"]["bias"] = None
    vs = tree.map(lambda w: torch.zeros(2, *w.shape, dtype=D), params)
    with pytest.raises(ValueError, match="fc1.bias.*must be None"):
        H.hvp(CE(relu_mlp), params, batch, vs, masks=masks)


# -------------------------------------------------------------------------------- the diagonal


def test_exact_diag_equals_autograd_hessian(mlp_case):
    params, batch = mlp_case
    ours = H.hessian_diag(CE(tanh_mlp), params, batch, method="exact", chunk_size=7)
    torch.testing.assert_close(_flat(ours), torch.diagonal(_full_hessian(tanh_mlp, params, batch)))


@pytest.mark.parametrize("fast", [True, False])
def test_ggn_equals_exact_hessian_diag_for_relu(mlp_case, fast):
    params, batch = mlp_case
    exact = H.hessian_diag(CE(relu_mlp), params, batch, method="exact")
    _close(H.ggn_diag(CE(relu_mlp), params, batch, fast=fast, chunk_size=4), exact)
    assert all(H.ggn_is_exact(CE(relu_mlp), params, batch).values())


def test_ggn_equals_exact_for_cnn_with_max_pool():
    params, batch = _cnn_params(3), _batch(4, 6, (2, 6, 6), 3)
    exact = H.hessian_diag(CE(cnn), params, batch, method="exact")
    _close(H.ggn_diag(CE(cnn), params, batch), exact)  # fc on the fast route, conv on the generic one
    _close(H.ggn_diag(CE(cnn), params, batch, fast=False), exact)
    assert all(H.ggn_is_exact(CE(cnn), params, batch).values())


def test_ggn_differs_from_hessian_for_tanh_and_the_check_says_where(mlp_case):
    params, batch = mlp_case
    exact = H.hessian_diag(CE(tanh_mlp), params, batch, method="exact")
    ggn = H.ggn_diag(CE(tanh_mlp), params, batch)
    verdict = H.ggn_is_exact(CE(tanh_mlp), params, batch)
    assert verdict == {p: p.startswith("fc3") for p in tree.paths(params)}
    for p, e, g in zip(tree.paths(params), tree.leaves(exact), tree.leaves(ggn)):
        if p.startswith("fc3"):  # logits are linear in the last layer: GGN exact there
            torch.testing.assert_close(g, e)
        else:
            assert (g - e).abs().max() > 1e-4, p


def test_ggn_by_hand_for_softmax_regression():
    """logits = W x: GGN_ij = (1/N) sum_n (p_ni - p_ni²) x_nj² (the Hessian diagonal, hand-derived)."""
    w = torch.tensor([[0.5, -1.0], [0.25, 2.0], [-0.5, 0.0]], dtype=D)
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.5]], dtype=D)
    y = torch.tensor([0, 2])
    p = torch.softmax(x @ w.T, -1)
    hand = ((p - p * p)[:, :, None] * (x * x)[:, None, :]).mean(0)
    for method in ("ggn", "exact"):
        got = H.hessian_diag(CE(lambda q, xx: xx @ q["w"].T), {"w": w}, (x, y), method=method)
        torch.testing.assert_close(got["w"], hand)


def test_hutchinson_error_falls_like_one_over_sqrt_k(mlp_case):
    """E||h_K - h||² = (1/K) sum_{i != j} H_ij² for Rademacher probes: check K * mean squared error
    against that constant at two K (8 keys each), and a tight bound at large K."""
    params, batch = mlp_case
    full = _full_hessian(tanh_mlp, params, batch)
    truth = torch.diagonal(full)
    c = ((full**2).sum() - (truth**2).sum()) / (truth**2).sum()  # relative, per probe
    for k in (16, 256):
        errs = [
            (
                (
                    _flat(H.hessian_diag(CE(tanh_mlp), params, batch, method="hutchinson", probes=k, key=s))
                    - truth
                ).norm()
                / truth.norm()
            )
            ** 2
            for s in range(8)
        ]
        assert 0.5 < k * float(torch.stack(errs).mean()) / float(c) < 2.0, k
    big = H.hessian_diag(
        CE(tanh_mlp), params, batch, method="hutchinson", probes=8192, key=99, chunk_size=4096
    )
    rel = float((_flat(big) - truth).norm() / truth.norm())
    assert rel < 3 * math.sqrt(float(c) / 8192) and rel < 0.1


def test_hutchinson_is_deterministic_and_chunk_independent(mlp_case):
    params, batch = mlp_case
    a = H.hessian_diag(CE(tanh_mlp), params, batch, method="hutchinson", probes=10, key=5)
    b = H.hessian_diag(CE(tanh_mlp), params, batch, method="hutchinson", probes=10, key=5, chunk_size=3)
    c = H.hessian_diag(CE(tanh_mlp), params, batch, method="hutchinson", probes=10, key=6)
    _close(a, b, rtol=1e-12)
    assert (_flat(a) - _flat(c)).abs().max() > 1e-6


def test_auto_routes(mlp_case):
    params, batch = mlp_case
    ggn = H.ggn_diag(CE(relu_mlp), params, batch)
    _close(H.hessian_diag(CE(relu_mlp), params, batch), ggn)  # auto: checked exact, no key needed
    _close(H.hessian_diag(CE(relu_mlp), params, batch, piecewise_linear=True), ggn)
    with pytest.raises(ValueError, match="key"):
        H.hessian_diag(CE(relu_mlp), params, batch, piecewise_linear=False)
    with pytest.raises(ValueError, match=r"fc1\.bias.*key"):
        H.hessian_diag(CE(tanh_mlp), params, batch)
    mixed = H.hessian_diag(CE(tanh_mlp), params, batch, key=3, probes=4)
    hut = H.hessian_diag(CE(tanh_mlp), params, batch, method="hutchinson", key=3, probes=4)
    exact = H.hessian_diag(CE(tanh_mlp), params, batch, method="exact")
    _close(mixed["fc3"], exact["fc3"])  # GGN route where it is exact
    assert (mixed["fc1"]["weight"] - exact["fc1"]["weight"]).abs().max() > 1e-6  # Hutchinson elsewhere
    assert (mixed["fc1"]["weight"] - hut["fc1"]["weight"]).abs().max() > 1e-9  # fewer probed leaves


def test_batches_are_weighted_by_size(mlp_case):
    params, (x, y) = mlp_case
    parts = [(x[:6], y[:6]), (x[6:], y[6:])]
    whole = H.hessian_diag(CE(tanh_mlp), params, (x, y), method="exact")
    _close(H.hessian_diag(CE(tanh_mlp), params, parts, method="exact"), whole)
    _close(H.ggn_diag(CE(relu_mlp), params, parts), H.ggn_diag(CE(relu_mlp), params, (x, y)))


def test_masks_score_at_masked_params_and_skip_none(mlp_case):
    params, batch = mlp_case
    masks = tree.map(lambda w: rng.uniform(11, w.shape) > 0.4, params)
    masks["fc2"]["bias"] = None
    got = H.hessian_diag(CE(tanh_mlp), params, batch, method="exact", masks=masks)
    assert got["fc2"]["bias"] is None
    theta = tree.map(lambda w, m: w if m is None else w * m, params, masks)
    full = _full_hessian(tanh_mlp, theta, batch)
    keep = _flat(tree.map(lambda w, m: torch.full_like(w, m is not None, dtype=torch.bool), params, masks))
    torch.testing.assert_close(_flat(got), torch.diagonal(full)[keep])
    ggn = H.ggn_diag(CE(relu_mlp), params, batch, masks=masks)
    torch.testing.assert_close(
        _flat(ggn), _flat(H.hessian_diag(CE(relu_mlp), theta, batch, method="exact"))[keep]
    )


def test_mc_fisher_is_unbiased_for_the_ggn(mlp_case):
    params, batch = mlp_case
    ggn = H.ggn_diag(CE(relu_mlp), params, batch)
    mc = H.fisher_diag_mc(CE(relu_mlp), params, batch, key=0, samples=4000)
    for p, a, b in zip(tree.paths(ggn), tree.leaves(mc), tree.leaves(ggn)):
        assert float((a - b).abs().max()) < 0.08 * float(b.abs().max()), p
    one = H.fisher_diag_mc(CE(relu_mlp), params, batch, key=1, samples=3)
    _close(H.fisher_diag_mc(CE(relu_mlp), params, batch, key=1, samples=3, fast=False), one)  # same labels


# ------------------------------------------------------------------------------- derived scores


def test_unit_trace_by_hand():
    diag = {
        "a": {"weight": torch.arange(6.0).reshape(3, 2)},
        "b": {"weight": torch.arange(12.0).reshape(2, 6)},
    }
    assert torch.equal(H.unit_trace(diag, 0)["a.weight"], torch.tensor([1.0, 5.0, 9.0]))
    assert torch.equal(H.unit_trace(diag, 1)["a.weight"], torch.tensor([6.0, 9.0]))
    group = ChannelGroup(
        "a", 3, (Member("a.weight", 0), Member("b.weight", 1, inner=2), Member("x", 0, score=False))
    )
    # unit c of b.weight owns columns 2c and 2c+1: column sums are [6, 8, 10, 12, 14, 16]
    assert torch.equal(H.unit_trace(diag, [group])["a"], torch.tensor([1.0 + 14, 5.0 + 22, 9.0 + 30]))
    with pytest.raises(ValueError, match="'missing'"):
        H.unit_trace(diag, [ChannelGroup("a", 3, (Member("missing", 0),))])
    with pytest.raises(ValueError, match="axis 2.*a.weight"):
        H.unit_trace(diag, 2)


def test_obd_by_hand():
    params = {"w": torch.tensor([1.0, -2.0, 3.0]), "b": torch.tensor([4.0])}
    diag = {"w": torch.tensor([2.0, 0.5, -1.0]), "b": None}
    masks = {"w": torch.tensor([True, True, False]), "b": None}
    got = H.obd(params, diag, masks=masks)
    assert torch.equal(got["w"], torch.tensor([1.0, 1.0, 0.0])) and got["b"] is None
    assert torch.equal(H.obd(params, diag)["w"], torch.tensor([1.0, 1.0, -4.5]))
    with pytest.raises(ValueError, match="'w'"):
        H.obd(params, {"w": torch.ones(2), "b": None})
    with pytest.raises(ValueError, match="'w'.*NaN"):
        H.obd(params, {"w": torch.tensor([1.0, float("nan"), 0.0]), "b": None})


def test_hap_by_hand():
    """Unit score = trace * ||w||² / numel over the unit's entries."""
    params = {"fc": {"weight": torch.tensor([[1.0, 2.0], [3.0, 0.0]]), "bias": torch.tensor([1.0, 1.0])}}
    diag = {"fc": {"weight": torch.tensor([[0.5, 0.25], [1.0, 2.0]]), "bias": None}}
    got = H.hap(params, diag, 0)
    assert set(got) == {"fc.weight"}
    assert torch.equal(got["fc.weight"], torch.tensor([0.75 * 5.0 / 2, 3.0 * 9.0 / 2]))
    group = ChannelGroup("fc", 2, (Member("fc.weight", 0), Member("fc.bias", 0)))
    diag2 = {"fc": {"weight": diag["fc"]["weight"], "bias": torch.tensor([1.0, -1.0])}}
    assert torch.equal(H.hap(params, diag2, [group])["fc"], torch.tensor([1.75 * 6.0 / 3, 2.0 * 10.0 / 3]))
    masks = {"fc": {"weight": torch.tensor([[True, False], [True, True]]), "bias": None}}
    assert torch.equal(
        H.hap(params, diag, 0, masks=masks)["fc.weight"], torch.tensor([0.75 * 1.0 / 2, 3.0 * 9.0 / 2])
    )


def test_grasp_equals_theta_times_hessian_gradient(mlp_case):
    params, batch = mlp_case
    leaves = [w.clone().requires_grad_() for w in tree.leaves(params)]
    loss = F.cross_entropy(tanh_mlp(tree.unflatten(tree.structure(params), leaves), batch[0]), batch[1])
    g = torch.autograd.grad(loss, leaves, create_graph=True)
    hg = torch.autograd.grad(g, leaves, [t.detach() for t in g])
    got = H.grasp(CE(tanh_mlp), params, batch)
    for w, h, o in zip(tree.leaves(params), hg, tree.leaves(got)):
        torch.testing.assert_close(o, w * h)


# ---------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("probes", [0, -3, 2.5, True])
def test_bad_probes(mlp_case, probes):
    params, batch = mlp_case
    with pytest.raises(ValueError, match="probes"):
        H.hessian_diag(CE(relu_mlp), params, batch, method="hutchinson", probes=probes, key=0)


def test_bad_arguments(mlp_case):
    params, batch = mlp_case
    with pytest.raises(ValueError, match="method"):
        H.hessian_diag(CE(relu_mlp), params, batch, method="newton")
    with pytest.raises(ValueError, match="max_exact=10"):
        H.hessian_diag(CE(relu_mlp), params, batch, method="exact", max_exact=10)
    with pytest.raises(ValueError, match="chunk_size"):
        H.ggn_diag(CE(relu_mlp), params, batch, chunk_size=0)
    with pytest.raises(TypeError, match="key"):
        H.fisher_diag_mc(CE(relu_mlp), params, batch, key="seed")
    with pytest.raises(ValueError, match="samples"):
        H.fisher_diag_mc(CE(relu_mlp), params, batch, key=0, samples=0)
    masks = tree.map(lambda w: torch.ones_like(w), params)
    with pytest.raises(TypeError, match="masks leaf 'fc1.bias'.*bool"):
        H.ggn_diag(CE(relu_mlp), params, batch, masks=masks)
    with pytest.raises(TypeError, match="obd: masks leaf 'fc1.bias'.*bool"):
        H.obd(params, params, masks=masks)
    with pytest.raises(ValueError, match="coords"):
        H.ggn_is_exact(CE(relu_mlp), params, batch, coords=0)
    with pytest.raises(ValueError, match="rtol"):
        H.ggn_is_exact(CE(relu_mlp), params, batch, rtol=-1.0)
    with pytest.raises(TypeError, match="units"):
        H.unit_trace(params, "fc1")


def test_model_output_that_does_not_fit(mlp_case):
    params, (x, y) = mlp_case
    with pytest.raises(ValueError, match="model_fn output has shape \\(9,\\)"):
        H.ggn_diag(CE(lambda p, xx: relu_mlp(p, xx)[:, 0]), params, (x, y))
    with pytest.raises(TypeError, match="logits tensor"):
        H.hessian_diag(CE(lambda p, xx: (relu_mlp(p, xx), {})), params, (x, y), method="exact")
    with pytest.raises(ValueError, match="labels y span \\[7, 7\\].*3 classes"):
        H.ggn_diag(CE(relu_mlp), params, (x, torch.full_like(y, 7)))
    with pytest.raises(ValueError, match="9 inputs and 4 labels"):
        H.ggn_diag(CE(relu_mlp), params, (x, y[:4]))


def test_non_finite_values_are_named(mlp_case):
    params, batch = mlp_case
    bad = tree.map(lambda w: w.clone(), params)
    bad["fc2"]["weight"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="'fc2.weight'.*NaN"):
        H.ggn_diag(CE(relu_mlp), bad, batch)

    def sqrt_model(p, x):  # d/dw sqrt(w²) at w = 0 is NaN
        return relu_mlp(p, x) * torch.sqrt(p["fc3"]["bias"][0] ** 2)

    zero = tree.map(lambda w: w.clone(), params)
    zero["fc3"]["bias"][0] = 0.0
    with pytest.raises(
        ValueError, match=r"hessian_diag \(result\): leaf 'fc1.bias' has \d+ non-finite values \(NaN\)"
    ):
        H.hessian_diag(CE(sqrt_model), zero, batch, method="exact")
