"""First-order scores and per-sample gradient statistics; the linear fast path vs the generic one."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from _importance_nets import CE, D, cnn
from _importance_nets import batch as _batch
from _importance_nets import cnn_params as _cnn_params
from _importance_nets import dense as _dense
from hypothesis import given, settings
from hypothesis import strategies as st

from pure_prune import rng, tree
from pure_prune.groups import ChannelGroup, Member
from pure_prune.importance import gradient as G


def relu_mlp(p: dict, x: torch.Tensor) -> torch.Tensor:
    h = x
    names = sorted(p)
    for name in names[:-1]:
        h = torch.relu(F.linear(h, p[name]["weight"], p[name]["bias"]))
    return h @ p[names[-1]]["weight"].T + p[names[-1]]["bias"]


@pytest.fixture(scope="module")
def mlp_case():
    return _dense(0, (5, 4, 4, 3)), [_batch(1, 7, (5,), 3), _batch(2, 4, (5,), 3)]


def _loop_grads(model_fn, params, x, y) -> list[list[torch.Tensor]]:
    """Per-sample gradients, one backward per sample: ``[sample][leaf]``."""
    out = []
    for n in range(x.shape[0]):
        leaves = [w.clone().requires_grad_() for w in tree.leaves(params)]
        loss = F.cross_entropy(
            model_fn(tree.unflatten(tree.structure(params), leaves), x[n : n + 1]), y[n : n + 1]
        )
        out.append(list(torch.autograd.grad(loss, leaves)))
    return out


def _close(a, b, rtol=1e-9, atol=1e-12) -> None:
    tree.assert_same_structure(a, b)
    for p, x, y in zip(tree.paths(a), tree.leaves(a), tree.leaves(b)):
        assert (x is None) == (y is None), p
        if x is not None:
            torch.testing.assert_close(x, y, rtol=rtol, atol=atol, msg=lambda m, p=p: f"{p}: {m}")


# ------------------------------------------------------------------------------ per-sample grads


@pytest.mark.parametrize("case", ["mlp", "cnn"])
def test_per_sample_grads_equal_the_loop(mlp_case, case):
    if case == "mlp":
        model_fn, params, (x, y) = relu_mlp, mlp_case[0], mlp_case[1][0]
    else:
        model_fn, params, (x, y) = cnn, _cnn_params(3), _batch(4, 5, (2, 6, 6), 3)
    got = G.per_sample_grads(CE(model_fn), params, (x, y), chunk_size=2)
    loop = _loop_grads(model_fn, params, x, y)
    for j, leaf in enumerate(tree.leaves(got)):
        torch.testing.assert_close(leaf, torch.stack([g[j] for g in loop]))


def test_per_sample_grads_with_masks(mlp_case):
    params, (x, y) = mlp_case[0], mlp_case[1][0]
    masks = tree.map(lambda w: rng.uniform(5, w.shape) > 0.5, params)
    masks["fc1"]["bias"] = None
    got = G.per_sample_grads(CE(relu_mlp), params, (x, y), masks=masks)
    assert got["fc1"]["bias"] is None
    theta = tree.map(lambda w, m: w if m is None else w * m, params, masks)
    loop = _loop_grads(relu_mlp, theta, x, y)
    for j, (leaf, m) in enumerate(zip(tree.leaves(got), tree.leaves(masks))):
        if m is not None:
            torch.testing.assert_close(leaf, torch.stack([g[j] for g in loop]))
    with pytest.raises(ValueError, match="one \\(x, y\\) batch"):
        G.per_sample_grads(CE(relu_mlp), params, mlp_case[1])


# ----------------------------------------------------------------------- statistics by hand


def test_stats_by_hand(mlp_case):
    """Every statistic from per-sample gradients of the loop, with Python loops over samples."""
    params, batches = mlp_case
    stats = G.gradient_stats(CE(relu_mlp), params, batches, eps=1e-9, fast=True)
    per_batch = [_loop_grads(relu_mlp, params, x, y) for x, y in batches]
    samples = [g for b in per_batch for g in b]
    n = len(samples)
    assert stats.samples == n == 11 and stats.batches == 2
    for j, p in enumerate(tree.paths(params)):
        gs = torch.stack([g[j] for g in samples])
        mean = sum(g[j] for g in samples) / n
        fisher = sum(g[j] ** 2 for g in samples) / n
        var = sum((g[j] - mean) ** 2 for g in samples) / n
        agree = sum((torch.sign(g[j]) == torch.sign(mean)).to(D) for g in samples) / n
        batch_means = [sum(g[j] for g in b) / len(b) for b in per_batch]
        second = sum(len(b) * m**2 for b, m in zip(per_batch, batch_means)) / n
        want = {
            "mean": mean,
            "fisher": fisher,
            "variance": var,
            "snr": mean**2 / (var + 1e-9),
            "magnitude": gs.abs().mean(0),
            "sign_consistency": agree,
            "stability": mean**2 / (second + 1e-9),
        }
        for name, value in want.items():
            got = tree.leaves(getattr(stats, name))[j]
            torch.testing.assert_close(
                got, value, rtol=1e-7, atol=1e-12, msg=lambda m, k=name, p=p: f"{k} {p}: {m}"
            )
    for leaf in tree.leaves(stats.stability):
        assert bool(((leaf >= 0) & (leaf <= 1)).all())


def test_sign_consistency_and_snr_on_a_one_weight_model():
    """logits = [w x, 0]: d CE_n / d w = (p_n - [y_n = 0]) x_n, p_n = sigmoid(w x_n)."""
    w = torch.tensor([0.0], dtype=D)
    x = torch.tensor([[1.0], [2.0], [-1.0], [3.0]], dtype=D)
    y = torch.tensor([0, 0, 0, 1])
    g = torch.tensor([-0.5, -1.0, 0.5, 1.5], dtype=D)  # p = 1/2 everywhere at w = 0
    stats = G.gradient_stats(CE(lambda p, xx: F.pad(xx * p["w"], (0, 1))), {"w": w}, (x, y), eps=1e-300)
    assert stats.mean["w"].item() == pytest.approx(0.125)
    assert stats.variance["w"].item() == pytest.approx(float((g**2).mean() - 0.125**2))
    assert stats.snr["w"].item() == pytest.approx(0.125**2 / float((g**2).mean() - 0.125**2))
    assert stats.sign_consistency["w"].item() == 0.5  # two of the four agree with the positive mean
    assert stats.magnitude["w"].item() == pytest.approx(0.875)
    assert stats.fisher["w"].item() == pytest.approx(float((g**2).mean()))


def test_snr_and_fisher_match_stats(mlp_case):
    params, batches = mlp_case
    stats = G.gradient_stats(CE(relu_mlp), params, batches)
    _close(G.gradient_snr(CE(relu_mlp), params, batches), stats.snr)
    _close(G.empirical_fisher(CE(relu_mlp), params, batches), stats.fisher)


# ------------------------------------------------------------------------ fast path vs generic


def _assert_stats_equal(a: G.GradStats, b: G.GradStats) -> None:
    for name in G.GradStats._fields[:7]:
        _close(getattr(a, name), getattr(b, name), rtol=1e-8, atol=1e-10)


def test_fast_path_equals_generic_on_mlp_with_masks(mlp_case):
    params, batches = mlp_case
    masks = tree.map(lambda w: rng.uniform(8, w.shape) > 0.3, params)
    masks["fc2"]["bias"] = None
    fast = G.gradient_stats(CE(relu_mlp), params, batches, masks=masks)
    generic = G.gradient_stats(CE(relu_mlp), params, batches, masks=masks, fast=False, chunk_size=3)
    _assert_stats_equal(fast, generic)
    assert fast.mean["fc2"]["bias"] is None


def test_fast_path_equals_generic_on_cnn():
    params, batch = _cnn_params(3), _batch(4, 6, (2, 6, 6), 3)
    taps = G.linear_taps(cnn, params, batch[0])
    assert [(lay.weight, lay.bias) for lay in taps.layers] == [(3, 2)]  # fc only; conv is generic
    _assert_stats_equal(
        G.gradient_stats(CE(cnn), params, batch, fast=taps),
        G.gradient_stats(CE(cnn), params, batch, fast=False),
    )


@settings(max_examples=8, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 5), min_size=2, max_size=4),
    n=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_fast_path_equals_generic_property(sizes, n, seed):
    params = _dense(seed, tuple(sizes) + (3,))
    batch = _batch(seed + 1, n, (sizes[0],), 3)
    _assert_stats_equal(
        G.gradient_stats(CE(relu_mlp), params, batch),
        G.gradient_stats(CE(relu_mlp), params, batch, fast=False),
    )


def test_linear_taps_finds_layer_forms():
    k = rng.split(0, 4)
    params = {
        "a": rng.normal(k[0], (4, 3), dtype=D),  # used as x @ a.T
        "b": rng.normal(k[1], (4,), dtype=D),
        "c": rng.normal(k[2], (4, 2), dtype=D),  # used as h @ c: (in, out)
        "s": rng.normal(k[3], (2, 2), dtype=D),  # used twice: not a fast layer
    }
    x, y = _batch(9, 5, (3,), 2)

    def model(p, xx):
        h = torch.relu(xx @ p["a"].T + p["b"])
        return (h @ p["c"]) @ p["s"] @ p["s"]

    taps = G.linear_taps(model, params, x)
    assert [(lay.weight, lay.bias, lay.out_in) for lay in taps.layers] == [(0, 1, True), (2, None, False)]
    _assert_stats_equal(
        G.gradient_stats(CE(model), params, (x, y), fast=taps),
        G.gradient_stats(CE(model), params, (x, y), fast=False),
    )


def test_linear_taps_refuses_rows_that_mix_samples():
    params = _dense(0, (3, 4, 2))
    x, _ = _batch(1, 5, (3,), 2)

    def batch_centred(p, xx):  # BatchNorm-in-train-mode style: every row depends on every sample
        h = F.linear(xx, p["fc1"]["weight"], p["fc1"]["bias"])
        return F.linear(torch.relu(h - h.mean(0)), p["fc2"]["weight"], p["fc2"]["bias"])

    assert G.linear_taps(batch_centred, params, x).layers == ()
    assert len(G.linear_taps(relu_mlp, params, x).layers) == 2


def test_integer_inputs_embedding_generic_and_linear_fast():
    k = rng.split(4, 3)
    params = {
        "emb": rng.normal(k[0], (7, 4), dtype=D),
        "fc": {"bias": rng.normal(k[1], (3,), dtype=D), "weight": rng.normal(k[2], (3, 4), dtype=D)},
    }

    def model(p, tokens):
        return F.linear(torch.tanh(p["emb"][tokens]), p["fc"]["weight"], p["fc"]["bias"])

    x, y = torch.tensor([0, 3, 6, 2, 3]), torch.tensor([0, 1, 2, 1, 0])
    assert [lay.weight for lay in G.linear_taps(model, params, x).layers] == [2]
    _assert_stats_equal(
        G.gradient_stats(CE(model), params, (x, y)), G.gradient_stats(CE(model), params, (x, y), fast=False)
    )

    def mixing(p, tokens):  # a batch-centred output: found by perturbing the taps
        h = F.linear(p["emb"][tokens], p["fc"]["weight"], p["fc"]["bias"])
        return h - h.mean(0)

    assert G.linear_taps(mixing, params, x).layers == ()


def test_a_trace_of_another_shape_is_redone(mlp_case):
    params, batches = mlp_case
    taps = G.linear_taps(relu_mlp, params, batches[1][0])  # traced for 4 rows, used for 7 and 4
    _assert_stats_equal(
        G.gradient_stats(CE(relu_mlp), params, batches, fast=taps),
        G.gradient_stats(CE(relu_mlp), params, batches, fast=False),
    )


def test_runs_under_torch_compile(mlp_case):
    """The scores compose with torch.compile (aot_eager: AOT autograd without inductor's codegen)."""
    params, batches = mlp_case
    compiled = torch.compile(functools.partial(G.gradient_snr, CE(relu_mlp)), backend="aot_eager")
    _close(compiled(params, batches), G.gradient_snr(CE(relu_mlp), params, batches), rtol=1e-12)


# ----------------------------------------------------------------------------- SNIP and Taylor


def test_snip_and_taylor_by_hand(mlp_case):
    params, batches = mlp_case
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    leaves = [w.clone().requires_grad_() for w in tree.leaves(params)]
    loss = F.cross_entropy(relu_mlp(tree.unflatten(tree.structure(params), leaves), x), y)
    g = tree.unflatten(tree.structure(params), torch.autograd.grad(loss, leaves))
    _close(G.snip(CE(relu_mlp), params, batches), tree.map(lambda gi, w: (gi * w).abs(), g, params))
    per_row = G.taylor_units(CE(relu_mlp), params, batches, 0)
    torch.testing.assert_close(
        per_row["fc1.weight"], (g["fc1"]["weight"] * params["fc1"]["weight"]).sum(1).abs()
    )
    group = ChannelGroup("fc1", 4, (Member("fc1.weight", 0), Member("fc1.bias", 0), Member("fc2.weight", 1)))
    unit = (
        (g["fc1"]["weight"] * params["fc1"]["weight"]).sum(1)
        + g["fc1"]["bias"] * params["fc1"]["bias"]
        + (g["fc2"]["weight"] * params["fc2"]["weight"]).sum(0)
    ).abs()
    torch.testing.assert_close(G.taylor_units(CE(relu_mlp), params, batches, [group])["fc1"], unit)


def test_taylor_averages_squared_per_batch_contributions_by_hand(mlp_case):
    """Molchanov et al. 2019: Σ_b (n_b / n) (g_b ⊙ θ)², with g_b the gradient of batch b's mean loss."""
    params, batches = mlp_case
    n = sum(b[0].shape[0] for b in batches)
    want = tree.map(torch.zeros_like, params)
    for x, y in batches:
        leaves = [w.clone().requires_grad_() for w in tree.leaves(params)]
        loss = F.cross_entropy(relu_mlp(tree.unflatten(tree.structure(params), leaves), x), y)
        g = tree.unflatten(tree.structure(params), torch.autograd.grad(loss, leaves))
        want = tree.map(lambda acc, gi, w, k=x.shape[0]: acc + k / n * (gi * w).square(), want, g, params)
    got = G.taylor(CE(relu_mlp), params, batches)
    _close(got, want)
    one = G.taylor(CE(relu_mlp), params, batches[:1])  # one batch: SNIP's score squared
    _close(one, tree.map(lambda s: s.square(), G.snip(CE(relu_mlp), params, batches[:1])))
    assert len(batches) > 1 and not torch.allclose(got["fc1"]["weight"], one["fc1"]["weight"])
    masks = tree.map(lambda w: rng.uniform(5, w.shape) > 0.5, params)
    pruned = G.taylor(CE(relu_mlp), params, batches, masks=masks)
    for s, m in zip(tree.leaves(pruned), tree.leaves(masks)):
        assert bool((s[~m] == 0).all())


def test_snip_is_zero_on_pruned_entries(mlp_case):
    params, batches = mlp_case
    masks = tree.map(lambda w: rng.uniform(3, w.shape) > 0.5, params)
    got = G.snip(CE(relu_mlp), params, batches, masks=masks)
    for s, m in zip(tree.leaves(got), tree.leaves(masks)):
        assert bool((s[~m] == 0).all())


# ---------------------------------------------------------------------------------- bad inputs


def test_bad_arguments(mlp_case):
    params, batches = mlp_case
    for eps in (-1.0, 0.0, float("nan")):
        with pytest.raises(ValueError, match="eps must be a float > 0"):
            G.gradient_stats(CE(relu_mlp), params, batches, eps=eps)
    with pytest.raises(ValueError, match="chunk_size"):
        G.gradient_snr(CE(relu_mlp), params, batches, chunk_size=0)
    with pytest.raises(TypeError, match="fast must be"):
        G.gradient_snr(CE(relu_mlp), params, batches, fast="yes")
    with pytest.raises(TypeError, match="batches"):
        G.gradient_stats(CE(relu_mlp), params, [])
    with pytest.raises(TypeError, match=r"batches\[1\] y must be an int64"):
        G.gradient_stats(CE(relu_mlp), params, [batches[0], (batches[1][0], batches[1][1].to(D))])
    with pytest.raises(ValueError, match=r"batches\[0\].x.*NaN"):
        G.snip(CE(relu_mlp), params, (torch.full_like(batches[0][0], float("nan")), batches[0][1]))
    masks = tree.map(lambda w: torch.ones(w.shape[0], dtype=torch.bool), params)
    with pytest.raises(ValueError, match="masks leaf 'fc1.weight' has shape \\(4,\\)"):
        G.gradient_stats(CE(relu_mlp), params, batches, masks=masks)
    with pytest.raises(ValueError, match="no scored leaf"):
        G.snip(CE(relu_mlp), params, batches, masks=tree.map(lambda w: None, params))
    mixed = {**params, "fc3": {"bias": params["fc3"]["bias"].float(), "weight": params["fc3"]["weight"]}}
    with pytest.raises(TypeError, match="share one dtype.*torch.float32 at 'fc3.bias'"):
        G.gradient_snr(CE(relu_mlp), mixed, batches)
    with pytest.raises(TypeError, match="params leaf 'fc1.bias' must be a float tensor"):
        G.snip(
            CE(relu_mlp),
            {**params, "fc1": {"bias": torch.tensor([1]), "weight": params["fc1"]["weight"]}},
            batches,
        )


@pytest.mark.parametrize("fast", [True, False])
def test_model_output_that_does_not_fit(mlp_case, fast):
    params, batches = mlp_case
    with pytest.raises(ValueError, match="model_fn output has shape \\(7, 3, 1\\)"):
        G.gradient_stats(CE(lambda p, x: relu_mlp(p, x)[..., None]), params, batches, fast=fast)
    with pytest.raises(ValueError, match="labels y span \\[0, 2\\].*2 classes"):
        G.gradient_snr(CE(lambda p, x: relu_mlp(p, x)[:, :2]), params, batches, fast=fast)


def test_nan_gradients_name_the_leaf(mlp_case):
    params, batches = mlp_case
    zero = tree.map(lambda w: w.clone(), params)
    zero["fc3"]["bias"][0] = 0.0

    def sqrt_model(p, x):  # d/db sqrt(b²) at b = 0 is NaN; only fc3.bias sees it
        return relu_mlp(p, x) + torch.sqrt(p["fc3"]["bias"] ** 2)

    for fn in (G.gradient_stats, G.empirical_fisher):
        with pytest.raises(ValueError, match="per-sample gradients.*'fc3.bias'.*NaN"):
            fn(CE(sqrt_model), zero, batches)
    with pytest.raises(ValueError, match="snip \\(gradient\\): leaf 'fc3.bias'.*NaN"):
        G.snip(CE(sqrt_model), zero, batches)
