"""Every score and every step for any loss: MSE regression, plain loss functions, dict batches,
callable output losses; the memoised traces; bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import jacrev

from pure_prune import losses, mask, optim, rng, train, tree
from pure_prune.importance import gradient as G
from pure_prune.importance import hessian as H
from pure_prune.importance.trace_cache import TRACES, TraceCache
from pure_prune.testing.close import assert_close, assert_trees_close

D = torch.float64
N, IN, HID, OUT = 12, 4, 5, 2


def tanh_net(p: dict, x: torch.Tensor) -> torch.Tensor:
    """A smooth regression MLP (its Hessian differs from its GGN): (N, 4) -> (N, 2)."""
    h = torch.tanh(F.linear(x, p["fc1"]["weight"], p["fc1"]["bias"]))
    return F.linear(h, p["fc2"]["weight"], p["fc2"]["bias"])


def relu_net(p: dict, x: torch.Tensor) -> torch.Tensor:
    h = torch.relu(x @ p["fc1"]["weight"].T + p["fc1"]["bias"])
    return h @ p["fc2"]["weight"].T + p["fc2"]["bias"]


def _params(key: int) -> dict:
    k = rng.split(key, 4)
    return tree.canonical(
        {
            "fc1": {
                "bias": 0.2 * rng.normal(k[0], (HID,), dtype=D),
                "weight": rng.normal(k[1], (HID, IN), dtype=D) / 2,
            },
            "fc2": {
                "bias": 0.2 * rng.normal(k[2], (OUT,), dtype=D),
                "weight": rng.normal(k[3], (OUT, HID), dtype=D) / 2,
            },
        }
    )


@pytest.fixture(scope="module")
def reg():
    kx, ky = rng.split(11, 2)
    x = rng.normal(kx, (N, IN), dtype=D)
    y = rng.normal(ky, (N, OUT), dtype=D)
    return _params(3), (x, y)


def _flat(t) -> torch.Tensor:
    return torch.cat([v.reshape(-1) for v in tree.leaves(t) if v is not None])


def _unflat(params: dict, flat: torch.Tensor) -> dict:
    leaves, spec = tree.flatten(params)
    parts = torch.split(flat, [w.numel() for w in leaves])
    return tree.unflatten(spec, [c.reshape(w.shape) for c, w in zip(parts, leaves)])


def _mse_of(net):
    return lambda flat, params, x, y: F.mse_loss(net(_unflat(params, flat), x), y)


# ------------------------------------------------------------------------------ Hessian diagonals


def test_exact_hessian_diag_of_mse_equals_autograd(reg):
    params, (x, y) = reg
    full = torch.autograd.functional.hessian(lambda f: _mse_of(tanh_net)(f, params, x, y), _flat(params))
    for loss_fn in (losses.model_loss(tanh_net, "mse"), lambda p, b: F.mse_loss(tanh_net(p, b[0]), b[1])):
        got = H.hessian_diag(loss_fn, params, (x, y), method="exact")
        assert_close(_flat(got), full.diagonal(), 1e-12, what="exact diag vs autograd")


def test_hutchinson_8192_probes_within_5_percent(reg):
    params, (x, y) = reg
    full = torch.autograd.functional.hessian(lambda f: _mse_of(tanh_net)(f, params, x, y), _flat(params))
    est = _flat(
        H.hessian_diag(
            losses.model_loss(tanh_net, "mse"), params, (x, y), method="hutchinson", probes=8192, key=5
        )
    )
    rel = float((est - full.diagonal()).norm() / full.diagonal().norm())
    assert rel < 0.05, rel


def _ggn_by_autograd(net, params, x, h_out) -> torch.Tensor:
    """diag((1/N) sum_n J_n^T H_n J_n) with J_n from jacrev and the per-sample output Hessians h_out."""
    flat0 = _flat(params)
    jac = jacrev(lambda f: net(_unflat(params, f), x))(flat0)  # (N, K, P)
    ggn = torch.einsum("nkp,nkl,nlq->pq", jac, h_out, jac) / x.shape[0]
    return ggn.diagonal()


@pytest.mark.parametrize("fast", [True, False])
def test_ggn_of_mse_equals_jt_h_j(reg, fast):
    params, (x, y) = reg
    want = _ggn_by_autograd(tanh_net, params, x, torch.eye(OUT, dtype=D).expand(N, OUT, OUT) * 2 / OUT)
    got = H.ggn_diag(losses.model_loss(tanh_net, "mse"), params, (x, y), fast=fast)
    assert_close(_flat(got), want, 1e-12, what=f"ggn fast={fast}")


def log_cosh(o: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A convex, twice differentiable robust loss without a closed-form factor here."""
    return torch.log(torch.cosh(o - t)).sum(-1).mean()


@pytest.mark.parametrize("fast", [True, False])
def test_ggn_of_a_callable_output_loss_uses_its_autodiff_hessian(reg, fast):
    params, (x, y) = reg
    out = tanh_net(params, x)
    h_out = torch.diag_embed(1 - torch.tanh(out - y) ** 2)  # d²/do² of sum_k log cosh(o_k - t_k)
    want = _ggn_by_autograd(tanh_net, params, x, h_out)
    got = H.ggn_diag(losses.model_loss(tanh_net, log_cosh), params, (x, y), fast=fast)
    assert_close(_flat(got), want, 1e-10, what=f"ggn fast={fast}")


def test_ggn_of_relu_mse_is_the_hessian_diag_and_auto_finds_it(reg):
    params, (x, y) = reg
    loss_fn = losses.model_loss(relu_net, "mse")
    exact = H.hessian_diag(loss_fn, params, (x, y), method="exact")
    assert all(H.ggn_is_exact(loss_fn, params, (x, y)).values())
    assert_trees_close(H.hessian_diag(loss_fn, params, (x, y)), exact, 1e-12)  # auto: GGN, no key needed


def test_mc_fisher_of_mse_is_unbiased_for_the_ggn(reg):
    params, (x, y) = reg
    loss_fn = losses.model_loss(tanh_net, "mse")
    ggn = _flat(H.ggn_diag(loss_fn, params, (x, y)))
    mc = _flat(H.fisher_diag_mc(loss_fn, params, (x, y), key=1, samples=4000))
    assert_close(mc, ggn, 0.1, what="MC Fisher (4000 samples) vs GGN")
    generic = _flat(H.fisher_diag_mc(loss_fn, params, (x, y), key=1, samples=3, fast=False))
    assert_close(generic, _flat(H.fisher_diag_mc(loss_fn, params, (x, y), key=1, samples=3)), 1e-12)


def test_plain_loss_routes(reg):
    params, (x, y) = reg

    def plain(p, b):
        return F.mse_loss(tanh_net(p, b[0]), b[1])

    model = losses.model_loss(tanh_net, "mse")
    assert_trees_close(
        H.hessian_diag(plain, params, (x, y), key=2, probes=16),
        H.hessian_diag(model, params, (x, y), method="hutchinson", key=2, probes=16),
        1e-12,
    )
    assert_trees_close(H.grasp(plain, params, (x, y)), H.grasp(model, params, (x, y)), 1e-12)
    assert_trees_close(G.snip(plain, params, (x, y)), G.snip(model, params, (x, y)), 1e-12)
    assert_trees_close(G.taylor(plain, params, [(x, y)]), G.taylor(model, params, [(x, y)]), 1e-12)
    with pytest.raises(TypeError, match="ggn_diag: the GGN diagonal needs the model's outputs"):
        H.ggn_diag(plain, params, (x, y))
    with pytest.raises(TypeError, match="fisher_diag_mc: the Monte-Carlo Fisher needs"):
        H.fisher_diag_mc(plain, params, (x, y), key=0)
    with pytest.raises(ValueError, match="pass key="):  # auto: Hutchinson, the only cheap route
        H.hessian_diag(plain, params, (x, y))


# ------------------------------------------------------------------------ per-sample statistics


def _loop_snr(loss_one, params, n, eps=1e-12) -> torch.Tensor:
    leaves, spec = tree.flatten(params)
    gs = []
    for i in range(n):
        ws = [w.clone().requires_grad_() for w in leaves]
        gs.append(
            torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss_one(tree.unflatten(spec, ws), i), ws)])
        )
    g = torch.stack(gs)
    mean = g.mean(0)
    return mean**2 / ((g * g).mean(0) - mean**2 + eps)


def test_gradient_snr_of_mse_equals_a_per_sample_loop(reg):
    params, (x, y) = reg
    loop = _loop_snr(lambda p, i: F.mse_loss(tanh_net(p, x[i : i + 1]), y[i : i + 1]), params, N)
    model = losses.model_loss(tanh_net, "mse")
    for fn, fast in ((model, True), (model, False), (lambda p, b: F.mse_loss(tanh_net(p, b[0]), b[1]), True)):
        got = _flat(G.gradient_snr(fn, params, (x, y), fast=fast))
        assert_close(got, loop, 1e-9, what=f"snr fast={fast}")
    fast = G.gradient_stats(model, params, (x, y))
    slow = G.gradient_stats(model, params, (x, y), fast=False)
    for a, b in zip(fast[:7], slow[:7]):
        assert_trees_close(a, b, 1e-10)


def test_dict_batches_and_plain_losses_vmap_over_every_leaf():
    """A language-model-like loss over a dict batch: per-sample statistics equal a loop over rows."""
    v, t, e = 6, 3, 4
    k = rng.split(2, 3)
    params = {"emb": rng.normal(k[0], (v, e), dtype=D), "out": rng.normal(k[1], (v, e), dtype=D)}
    tokens = torch.randint(0, v, (5, t), generator=rng.generator(k[2]))
    batch = {
        "tokens": tokens,
        "labels": torch.roll(tokens, 1, 1),
        "weight": torch.linspace(0.5, 1.5, 5, dtype=D),
    }

    def lm_loss(p, b):
        logits = torch.tanh(p["emb"][b["tokens"]]) @ p["out"].T  # (n, t, v)
        per = F.cross_entropy(logits.reshape(-1, v), b["labels"].reshape(-1), reduction="none").reshape(-1, t)
        return (per.mean(1) * b["weight"]).mean()

    def one(p, i):
        return lm_loss(p, {key: val[i : i + 1] for key, val in batch.items()})

    assert_close(_flat(G.gradient_snr(lm_loss, params, batch)), _loop_snr(one, params, 5), 1e-9)
    per = G.per_sample_grads(lm_loss, params, batch)
    assert per["emb"].shape == (5, v, e)
    model = losses.model_loss(
        lambda p, tok: torch.tanh(p["emb"][tok]) @ p["out"].T, keys=("tokens", "labels")
    )
    want = losses.sample_cross_entropy(model.model_fn(params, tokens), batch["labels"])
    assert torch.equal(model(params, batch), want)
    assert_trees_close(G.snip(model, params, batch), G.snip(lambda p, b: model(p, b), params, batch), 1e-12)


# ------------------------------------------------------------------------------------ bad input


def test_bad_losses_and_batches_are_named(reg):
    params, (x, y) = reg
    before = tree.map(torch.clone, params)
    with pytest.raises(TypeError, match=r"must return a float scalar.*shape \(12, 2\).*model_loss"):
        G.snip(lambda p, b: tanh_net(p, b[0]), params, (x, y))
    with pytest.raises(TypeError, match=r"loss_fn\(params, batches\[0\]\) raised TypeError.*model_loss"):
        G.snip(tanh_net, params, (x, y))  # a model function where a loss is expected
    with pytest.raises(TypeError, match="not differentiable in the scored params"):
        G.snip(lambda p, b: F.mse_loss(tanh_net(p, b[0]), b[1]).detach(), params, (x, y))
    with pytest.raises(ValueError, match=r"batches\[0\] has 12 inputs and 11 labels"):
        G.snip(losses.model_loss(tanh_net, "mse"), params, (x, y[:-1]))
    with pytest.raises(ValueError, match=r"batches\[0\] leaf '1' has 11 rows, leaf '0' has 12"):
        G.snip(lambda p, b: F.mse_loss(tanh_net(p, b[0]), b[1]), params, (x, y[:-1]))
    with pytest.raises(ValueError, match=r"batches\[1\] leaf 'b' has 3 rows, leaf 'a' has 12"):
        H.hvp(lambda p, b: 0.0, params, [(x, y), {"a": x, "b": x[:3]}], tree.map(lambda w: w[None], params))
    with pytest.raises(TypeError, match=r"batches\[0\] y must be a float tensor \(targets for mse\)"):
        G.snip(losses.model_loss(tanh_net, "mse"), params, (x, y.long()))
    with pytest.raises(ValueError, match=r"mse needs float outputs of the targets' shape \(12, 3\)"):
        G.snip(losses.model_loss(tanh_net, "mse"), params, (x, torch.zeros(N, 3, dtype=D)))
    with pytest.raises(ValueError, match="output_loss must be one of"):
        losses.model_loss(tanh_net, "hinge")
    with pytest.raises(ValueError, match="two distinct batch keys"):
        losses.model_loss(tanh_net, "mse", keys=("x", "x"))
    with pytest.raises(ValueError, match="batch .dict. has no entries"):
        G.snip(losses.model_loss(tanh_net, "mse", keys=("x", "y")), params, {"inputs": x, "y": y})
    with pytest.raises(TypeError, match="fast=LinearTaps needs loss_fn"):
        G.gradient_snr(
            lambda p, b: F.mse_loss(tanh_net(p, b[0]), b[1]),
            params,
            (x, y),
            fast=G.linear_taps(tanh_net, params, x),
        )
    assert_trees_close(params, before, 0.0)


# ------------------------------------------------------------------------------ memoised traces


def test_default_calls_reuse_the_trace_and_the_exactness_check(reg):
    params, (x, y) = reg

    def net(p, xx):  # a fresh function: its own memo
        return relu_net(p, xx)

    loss_fn = losses.model_loss(net, "mse")
    H.hessian_diag(loss_fn, params, (x, y))
    G.gradient_snr(losses.model_loss(net, "mse"), params, (x, y))  # another ModelLoss, same model_fn
    misses = TRACES.misses
    for _ in range(3):
        H.hessian_diag(loss_fn, params, (x, y))
        G.gradient_stats(loss_fn, params, (x, y))
    assert TRACES.misses == misses
    G.gradient_snr(loss_fn, params, (x[:5], y[:5]))  # another shape: one more trace
    assert TRACES.misses == misses + 1


def test_trace_cache_is_bounded_and_weak():
    cache = TraceCache(max_fns=2, per_fn=2)
    fns = [lambda: 0 for _ in range(3)]
    for f in fns:
        for k in range(3):
            cache.get(f, k, lambda k=k: k)
    assert len(cache) == 4  # 2 functions x 2 keys
    assert cache.get(fns[2], 2, lambda: -1) == 2 and cache.get(fns[2], 0, lambda: -1) == -1
    del fns[2], f
    assert len(cache) == 2  # the collected function's memo is gone


# ----------------------------------------------------------------------------------- train steps


def test_masked_mse_train_step_keeps_pruned_weights_zero(reg):
    params, (x, y) = reg

    def apply(p, state, xx, *, train):
        return tanh_net(p, xx), state

    masks = {
        "fc1": {"bias": None, "weight": rng.uniform(4, (HID, IN)) > 0.5},
        "fc2": {"bias": None, "weight": rng.uniform(5, (OUT, HID)) > 0.3},
    }
    opt = optim.sgd(0.1, momentum=0.9)
    mae = {"mae": lambda out, t: (out - t).abs().mean()}
    step = train.make_step(apply, losses.mse, opt, compile=False, metrics=mae)
    p, s, o = params, {}, opt.init(params)
    for _ in range(3):
        p, s, o, metrics = step(p, s, o, masks, (x, y))
    assert set(metrics) == {"loss", "mae"}
    for w, m in zip(tree.leaves(p), tree.leaves(masks)):
        if m is not None:
            assert torch.equal(w[~m], torch.zeros_like(w[~m]))
    ev = train.evaluate(
        train.make_eval_step(apply, losses.mse, compile=False, metrics=mae), p, s, masks, [(x, y)]
    )
    assert set(ev) == {"count", "loss", "mae"} and ev["count"] == N * OUT
    assert_close(torch.tensor(ev["loss"], dtype=D), F.mse_loss(tanh_net(mask.apply(p, masks), x), y), 1e-12)
    with pytest.raises(ValueError, match="metrics: name 'loss'"):
        train.make_step(apply, losses.mse, opt, compile=False, metrics={"loss": losses.mse})
