"""Importance scores on the digits MLP: cost as multiples of one plain forward+backward, peers side by side.

Model ``pure_prune.models.mlp`` 64-256-256-10 (ReLU) at init key 0, float32; data: scikit-learn digits
divided by 16, one batch of 128; ``torch.set_num_threads(2)``. The unit is an ``nn.Sequential``
forward + ``loss.backward()`` of the same weights. Every case call is timed right after a unit call,
rep by rep, after warm-up; a case's ratio is the median over ``--reps`` of these paired ratios
(on a shared, busy machine it follows the load from second to second, where a ratio of medians
drifts with it); its milliseconds are the median, and the ratio of the fastest times is shown too.

* Hessian diagonal (exact for this ReLU net): pure_prune's GGN route (linear taps / generic vmap)
  vs BackPACK ``DiagHessian`` (skipped with a note when BackPACK is not installed).
* Hutchinson, K = 64: pure_prune (vmapped forward-over-reverse HVPs), the same with
  ``compile=True`` (its block of HVPs compiled once, from the second call), the HVP under
  ``torch.compile``, and the PyHessian-style loop of double-backward HVPs.
* Gradient SNR over per-sample gradients: pure_prune (linear taps / generic ``vmap(grad)``), a compiled
  ``vmap(grad)`` with the reduction in the graph, the per-sample loop, BackPACK ``BatchGrad`` + ``Variance``.
* FLOPs of the main cases over the unit's (``FlopCounterMode``): the x-unit a case would reach at
  the unit's arithmetic efficiency (SNR 1.36: the moments need a second product per layer;
  Hutchinson K = 64: ~120).
* Hutchinson relative L2 error against the exact diagonal for K = 1, 4, 16, 64, 256, with seconds.
* Default calls (no trace passed: the scores take their trace, and ``hessian_diag``'s exactness
  check, from the memo ``importance.trace_cache.TRACES``) against the calls given a pre-built
  trace; the summary prints each default call's time over its pre-traced twin.
* MSE regression (the same MLP regressing the one-hot targets, ``losses.model_loss(model_fn,
  "mse")``): GGN diagonal (= the Hessian diagonal for this ReLU net) and gradient SNR, default and
  generic routes, against BackPACK ``DiagGGNExact`` / ``DiagHessian`` with ``MSELoss`` and
  ``BatchGrad`` + ``Variance``.
* Checks: the GGN diagonal against exact HVP diagonal entries at sampled coordinates; pure_prune's
  SNR against the per-sample loop; default calls equal pre-traced ones; BackPACK's diagonals and
  SNR against pure_prune's, cross-entropy and MSE (when installed).

    python bench/importance.py [--reps 20] [--out bench/results/importance.json] [--no-compile]
                               [--quiet-wait S] [--threads 2] [--only REGEX]
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import logging
import os
import platform
import re
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.func import grad, vmap

from pure_prune import losses, rng, tree
from pure_prune.importance import gradient as G
from pure_prune.importance import hessian as H
from pure_prune.models import mlp

BATCH = 128
DEFAULT_PAIRS = (
    ("pure_prune ggn_diag, default", "pure_prune ggn_diag, linear taps"),
    ("pure_prune hessian_diag auto, default", "pure_prune hessian_diag auto (+ exactness check)"),
    ("pure_prune hessian_diag auto, default", "pure_prune ggn_diag, linear taps"),
    ("pure_prune gradient_snr, default", "pure_prune gradient_snr, linear taps"),
    ("pure_prune gradient_stats (all 7), default", "pure_prune gradient_stats (all 7), linear taps"),
    ("pure_prune ggn_diag mse, default", "pure_prune ggn_diag mse, linear taps"),
)
EPS = 1e-12
KS = (1, 4, 16, 64, 256)


def setup() -> dict:
    """Params, the functional model, the equivalent nn.Module and one digits batch."""
    digits = load_digits()
    order = torch.randperm(len(digits.target), generator=rng.generator(0))[:BATCH]
    x = torch.tensor(digits.data, dtype=torch.float32)[order] / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)[order]
    params, state = mlp.init(0, sizes=(64, 256, 256, 10))

    def model_fn(p: dict, xx: torch.Tensor) -> torch.Tensor:
        return mlp.apply(p, state, xx, train=False)[0]

    net = torch.nn.Sequential(
        torch.nn.Linear(64, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 10),
    )
    with torch.no_grad():
        for layer, name in zip(net[::2], ("fc1", "fc2", "fc3")):
            layer.weight.copy_(params[name]["weight"])
            layer.bias.copy_(params[name]["bias"])
    return {
        "params": params,
        "model_fn": model_fn,
        "loss_fn": losses.model_loss(model_fn, "cross_entropy"),
        "mse_fn": losses.model_loss(model_fn, "mse"),
        "net": net,
        "x": x,
        "y": y,
        "y_mse": F.one_hot(y, 10).to(torch.float32),
    }


def round_robin(
    fns: dict[str, Callable[[], object]], reps: int, warmup: int = 3
) -> dict[str, tuple[float, float]]:
    """``(median, min)`` seconds per call of each function, calls interleaved rep by rep."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: (statistics.median(v), min(v)) for k, v in times.items()}


def flat(t) -> torch.Tensor:
    return torch.cat([v.reshape(-1) for v in tree.leaves(t) if v is not None])


# --------------------------------------------------------------------------------------- peers


def module_fwd_bwd(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    net.zero_grad(set_to_none=True)
    F.cross_entropy(net(x), y).backward()


def pyhessian_hutchinson(
    net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, k: int
) -> list[torch.Tensor]:
    """PyHessian-style: gradients with ``create_graph=True``, then one double backward per probe."""
    ps = list(net.parameters())
    grads = torch.autograd.grad(F.cross_entropy(net(x), y), ps, create_graph=True)
    diag = [torch.zeros_like(p) for p in ps]
    for _ in range(k):
        vs = [torch.randint_like(p, high=2) * 2 - 1 for p in ps]
        hv = torch.autograd.grad(grads, ps, vs, retain_graph=True)
        for d, v, h in zip(diag, vs, hv):
            d.add_(v * h / k)
    return diag


def loop_snr(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """Per-sample loop: one forward+backward per sample, running sums of g and g²."""
    ps = list(net.parameters())
    s1 = [torch.zeros_like(p) for p in ps]
    s2 = [torch.zeros_like(p) for p in ps]
    for n in range(x.shape[0]):
        g = torch.autograd.grad(F.cross_entropy(net(x[n : n + 1]), y[n : n + 1]), ps)
        for a, b, gi in zip(s1, s2, g):
            a.add_(gi)
            b.add_(gi * gi)
    out = []
    for a, b in zip(s1, s2):
        m = a / x.shape[0]
        out.append(m * m / ((b / x.shape[0] - m * m).clamp_min(0) + EPS))
    return out


def vmap_grad_snr(model_fn: Callable, params: dict, x: torch.Tensor, y: torch.Tensor) -> dict:
    """``vmap(grad)`` per-sample gradients reduced to the SNR in one function (for torch.compile)."""

    def one(p: dict, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model_fn(p, xi[None]), yi[None])

    g = vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)

    def snr(t: torch.Tensor) -> torch.Tensor:
        m = t.mean(0)
        return m * m / (((t * t).mean(0) - m * m).clamp_min(0) + EPS)

    return tree.map(snr, g)


def backpack_cases(
    net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[dict[str, Callable], torch.nn.Module | None, str | None]:
    """BackPACK's DiagHessian and BatchGrad+Variance on a copy of ``net``: ``(cases, model, None)``,
    or ``({}, None, why they are skipped)``. Results land on ``model``'s parameters."""
    try:
        from backpack import backpack, extend
        from backpack.extensions import BatchGrad, DiagHessian, Variance
    except ImportError as err:
        return (
            {},
            None,
            f"BackPACK not installed ({err}); skipped (anchors: DiagHessian 5.3 ms, BatchGrad+Variance 13.9 ms)",
        )
    warnings.filterwarnings("ignore", message="Full backward hook is firing")  # x needs no grad
    model = extend(copy.deepcopy(net))
    mean_loss = extend(torch.nn.CrossEntropyLoss())
    sum_loss = extend(torch.nn.CrossEntropyLoss(reduction="sum"))

    def diag_hessian() -> None:
        model.zero_grad()
        with backpack(DiagHessian()):
            mean_loss(model(x), y).backward()

    def batchgrad_variance() -> None:
        model.zero_grad()
        with backpack(BatchGrad(), Variance()):
            sum_loss(model(x), y).backward()
        for p in model.parameters():
            m = p.grad / x.shape[0]
            _ = m * m / (p.variance + EPS)

    return (
        {"BackPACK DiagHessian": diag_hessian, "BackPACK BatchGrad+Variance": batchgrad_variance},
        model,
        None,
    )


def backpack_mse_cases(
    net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor
) -> tuple[dict[str, Callable], torch.nn.Module | None]:
    """BackPACK ``DiagGGNExact`` + ``DiagHessian`` (``MSELoss``, mean) and ``BatchGrad`` + ``Variance``
    (``MSELoss(reduction="sum")``) on a copy of ``net`` regressing ``t``; ``({}, None)`` without BackPACK."""
    try:
        from backpack import backpack, extend
        from backpack.extensions import BatchGrad, DiagGGNExact, DiagHessian, Variance
    except ImportError:
        return {}, None
    model = extend(copy.deepcopy(net))
    mean_loss = extend(torch.nn.MSELoss())
    sum_loss = extend(torch.nn.MSELoss(reduction="sum"))

    def diag_ggn() -> None:
        model.zero_grad()
        with backpack(DiagGGNExact()):
            mean_loss(model(x), t).backward()

    def diag_h() -> None:
        model.zero_grad()
        with backpack(DiagHessian()):
            mean_loss(model(x), t).backward()

    def batchgrad_variance() -> None:
        model.zero_grad()
        with backpack(BatchGrad(), Variance()):
            sum_loss(model(x), t).backward()
        for p in model.parameters():
            m = p.grad / x.shape[0]
            _ = m * m / (p.variance + EPS)

    cases = {
        "BackPACK DiagGGNExact (MSELoss)": diag_ggn,
        "BackPACK DiagHessian (MSELoss)": diag_h,
        "BackPACK BatchGrad+Variance (MSELoss)": batchgrad_variance,
    }
    return cases, model


def mse_group(s: dict, taps: G.LinearTaps, bp: dict[str, Callable]) -> dict[str, Callable]:
    """The MSE regression cases: the digits MLP regressing the one-hot targets."""
    params, mse_fn, batch = s["params"], s["mse_fn"], (s["x"], s["y_mse"])
    return {
        "pure_prune ggn_diag mse, linear taps": lambda: H.ggn_diag(mse_fn, params, batch, fast=taps),
        "pure_prune ggn_diag mse, default": lambda: H.ggn_diag(mse_fn, params, batch),
        "pure_prune hessian_diag mse auto, default": lambda: H.hessian_diag(mse_fn, params, batch),
        "pure_prune ggn_diag mse, generic vmap": lambda: H.ggn_diag(mse_fn, params, batch, fast=False),
        "pure_prune gradient_snr mse, default": lambda: G.gradient_snr(mse_fn, params, batch),
        "pure_prune gradient_snr mse, generic vmap(grad)": lambda: G.gradient_snr(
            mse_fn, params, batch, fast=False
        ),
        **bp,
    }


def mse_checks(s: dict, bp: dict, model: torch.nn.Module | None) -> dict:
    """MSE: the GGN against exact HVP diagonal entries (ReLU: equal) and the per-sample loop's SNR;
    BackPACK's diagonals and SNR against pure_prune's (when installed)."""
    params, mse_fn, x, t = s["params"], s["mse_fn"], s["x"], s["y_mse"]
    ggn = flat(H.ggn_diag(mse_fn, params, (x, t)))
    picks = torch.randperm(ggn.numel(), generator=rng.generator(4))[:64]
    leaves, spec = tree.flatten(params)
    basis = torch.zeros(picks.numel(), ggn.numel())
    basis[torch.arange(picks.numel()), picks] = 1.0
    parts = torch.split(basis, [w.numel() for w in leaves], dim=1)
    vs = tree.unflatten(spec, [p.reshape(picks.numel(), *w.shape) for p, w in zip(parts, leaves)])
    hv = torch.cat([h.reshape(picks.numel(), -1) for h in tree.leaves(H.hvp(mse_fn, params, (x, t), vs))], 1)
    snr = flat(G.gradient_snr(mse_fn, params, (x, t)))
    net = s["net"]
    ps = list(net.parameters())
    gs = []
    for n in range(x.shape[0]):
        g = torch.autograd.grad(F.mse_loss(net(x[n : n + 1]), t[n : n + 1]), ps)
        gs.append(torch.cat([gi.reshape(-1) for gi in g]))
    g = torch.stack(gs)
    m = g.mean(0)
    loop = _module_order(m * m / (((g * g).mean(0) - m * m).clamp_min(0) + EPS), params)
    out = {
        "mse_ggn_vs_exact_hvp_max_abs_diff_over_max_diag": float(
            (hv[torch.arange(picks.numel()), picks] - ggn[picks]).abs().max() / ggn.abs().max()
        ),
        "mse_snr_vs_loop_max_rel_diff_where_snr_gt_1e-3": float(
            ((snr - loop).abs() / loop.abs().clamp_min(1e-3)).max()
        ),
    }
    if model is None:
        return out
    bp["BackPACK DiagGGNExact (MSELoss)"]()
    theirs_ggn = _module_order(torch.cat([p.diag_ggn_exact.reshape(-1) for p in model.parameters()]), params)
    bp["BackPACK DiagHessian (MSELoss)"]()
    theirs_h = _module_order(torch.cat([p.diag_h.reshape(-1) for p in model.parameters()]), params)
    bp["BackPACK BatchGrad+Variance (MSELoss)"]()
    n = x.shape[0]
    d = t.shape[1]  # a summed MSELoss's per-sample gradients are d times those of the per-sample mean
    theirs_snr = torch.cat(
        [((p.grad / (n * d)) ** 2 / (p.variance / d**2 + EPS)).reshape(-1) for p in model.parameters()]
    )
    theirs_snr = _module_order(theirs_snr, params)
    out["backpack_mse_diag_ggn_vs_ours_max_abs_diff_over_max"] = float(
        (theirs_ggn - ggn).abs().max() / ggn.abs().max()
    )
    out["backpack_mse_diag_h_vs_ours_max_abs_diff_over_max"] = float(
        (theirs_h - ggn).abs().max() / ggn.abs().max()
    )
    out["backpack_mse_snr_vs_ours_max_rel_diff_where_snr_gt_1e-3"] = float(
        ((theirs_snr - snr).abs() / snr.abs().clamp_min(1e-3)).max()
    )
    return out


# ----------------------------------------------------------------------------------------- main


def jax_cases(s: dict) -> tuple[dict[str, Callable], str | None]:
    """JAX on CPU as the optional peer (the ``bench`` extra): ``jit(vmap(grad))`` gradient SNR and
    ``jit``-ed Hutchinson with 64 forward-over-reverse HVPs, on the same params and batch.
    Returns ``({case: fn}, why_missing)``; each ``fn`` blocks until JAX's result is ready."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return {}, "JAX peers skipped: jax is not installed (pip install 'pure-prune[bench]')"
    jax.config.update("jax_platforms", "cpu")
    p = {k: {n: jnp.asarray(v.numpy()) for n, v in leaf.items()} for k, leaf in s["params"].items()}
    x, y = jnp.asarray(s["x"].numpy()), jnp.asarray(s["y"].numpy())

    def logits(q, xx):
        h = jax.nn.relu(xx @ q["fc1"]["weight"].T + q["fc1"]["bias"])
        h = jax.nn.relu(h @ q["fc2"]["weight"].T + q["fc2"]["bias"])
        return h @ q["fc3"]["weight"].T + q["fc3"]["bias"]

    def loss(q, xx, yy):
        z = logits(q, xx)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(z), yy[:, None], axis=-1))

    @jax.jit
    def snr(q, xx, yy):
        g = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(q, xx[:, None], yy[:, None])
        mean = jax.tree_util.tree_map(lambda t: t.mean(0), g)
        var = jax.tree_util.tree_map(lambda t, m: (t * t).mean(0) - m * m, g, mean)
        return jax.tree_util.tree_map(lambda m, v: m * m / (v + 1e-12), mean, var)

    probes = jax.tree_util.tree_map(
        lambda t: jnp.where(jax.random.bernoulli(jax.random.PRNGKey(0), 0.5, (64, *t.shape)), 1.0, -1.0), p
    )

    @jax.jit
    def hutchinson(q, xx, yy, vs):
        def hvp(v):
            return jax.jvp(jax.grad(lambda r: loss(r, xx, yy)), (q,), (v,))[1]

        hv = jax.vmap(hvp)(vs)
        return jax.tree_util.tree_map(lambda a, b: (a * b).mean(0), hv, vs)

    def ready(tree_):
        return jax.block_until_ready(tree_)

    ready(snr(p, x, y))  # compile outside the timed region
    ready(hutchinson(p, x, y, probes))
    return {
        "JAX jit(vmap(grad)) SNR": lambda: ready(snr(p, x, y)),
        "JAX jit Hutchinson K=64 (vmapped jvp of grad)": lambda: ready(hutchinson(p, x, y, probes)),
    }, None


def timing_groups(s: dict, taps: G.LinearTaps, bp: dict[str, Callable]) -> dict[str, dict[str, Callable]]:
    """The timed cases, by group (each group is timed round-robin with the unit)."""
    params, model_fn, net, x, y = s["params"], s["model_fn"], s["net"], s["x"], s["y"]
    loss_fn = s["loss_fn"]
    batch = (x, y)

    def func_fwd_bwd() -> dict:
        return grad(lambda q: F.cross_entropy(model_fn(q, x), y))(params)

    return {
        "unit": {"torch.func.grad (functional fwd+bwd)": func_fwd_bwd},
        "Hessian diagonal (exact, ReLU)": {
            "pure_prune ggn_diag, linear taps": lambda: H.ggn_diag(loss_fn, params, batch, fast=taps),
            "pure_prune ggn_diag, default": lambda: H.ggn_diag(loss_fn, params, batch),
            "pure_prune hessian_diag auto (+ exactness check)": lambda: H.hessian_diag(
                loss_fn, params, batch, fast=taps
            ),
            "pure_prune hessian_diag auto, default": lambda: H.hessian_diag(loss_fn, params, batch),
            "pure_prune ggn_diag, generic vmap": lambda: H.ggn_diag(loss_fn, params, batch, fast=False),
            **{k: v for k, v in bp.items() if "Diag" in k},
        },
        "Hutchinson K=64": {
            "pure_prune hessian_diag hutchinson (vmapped HVPs)": lambda: H.hessian_diag(
                loss_fn, params, batch, method="hutchinson", probes=64, key=0
            ),
            "PyHessian-style double-backward loop": lambda: pyhessian_hutchinson(net, x, y, 64),
        },
        "gradient SNR": {
            "pure_prune gradient_snr, linear taps": lambda: G.gradient_snr(loss_fn, params, batch, fast=taps),
            "pure_prune gradient_snr, default": lambda: G.gradient_snr(loss_fn, params, batch),
            "pure_prune gradient_stats (all 7), linear taps": lambda: G.gradient_stats(
                loss_fn, params, batch, fast=taps
            ),
            "pure_prune gradient_stats (all 7), default": lambda: G.gradient_stats(loss_fn, params, batch),
            "pure_prune gradient_snr, generic vmap(grad)": lambda: G.gradient_snr(
                loss_fn, params, batch, fast=False
            ),
            "per-sample loop": lambda: loop_snr(net, x, y),
            **{k: v for k, v in bp.items() if "Batch" in k},
        },
    }


def add_compiled(s: dict, groups: dict[str, dict[str, Callable]]) -> dict[str, float]:
    """Add the torch.compile cases to ``groups``; returns seconds to each one's first result."""
    params, model_fn, x, y = s["params"], s["model_fn"], s["x"], s["y"]
    vs = tree.map(lambda w: torch.where(rng.uniform(1, (64, *w.shape)) < 0.5, -1.0, 1.0), params)
    hvp_c = torch.compile(functools.partial(H.hvp, s["loss_fn"]))
    snr_c = torch.compile(functools.partial(vmap_grad_snr, model_fn))

    def hutch_compiled() -> list[torch.Tensor]:
        return [(v * h).mean(0) for v, h in zip(tree.leaves(vs), tree.leaves(hvp_c(params, (x, y), vs)))]

    def snr_compiled() -> dict:
        return snr_c(params, x, y)

    def hutch_compile_option() -> tree.Tree:
        return H.hessian_diag(
            s["loss_fn"], params, (x, y), method="hutchinson", probes=64, key=0, compile=True
        )

    compile_s = {}
    hutch_compile_option()  # the first call with these shapes runs eagerly; the second compiles
    for name, f in (
        ("hvp", hutch_compiled),
        ("snr", snr_compiled),
        ("hessian_diag compile=True", hutch_compile_option),
    ):
        t0 = time.perf_counter()
        f()
        compile_s[name] = time.perf_counter() - t0
    groups["Hutchinson K=64"]["torch.compile(pure_prune hvp), probes drawn once"] = hutch_compiled
    groups["Hutchinson K=64"]["pure_prune hessian_diag hutchinson, compile=True"] = hutch_compile_option
    groups["gradient SNR"]["torch.compile(vmap(grad) + SNR reduction)"] = snr_compiled
    return compile_s


def flop_ratios(s: dict) -> dict[str, float]:
    """FLOPs (``torch.utils.flop_counter.FlopCounterMode``: matrix products) of one call of the
    main cases over those of the unit: the ratio a case reaches when it computes as efficiently
    as the unit, the floor of its x-unit figure at equal efficiency."""
    from torch.utils.flop_counter import FlopCounterMode

    params, loss_fn, x, y = s["params"], s["loss_fn"], s["x"], s["y"]

    def count(fn: Callable[[], object]) -> int:
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops()

    unit = count(lambda: module_fwd_bwd(s["net"], x, y))
    cases = {
        "gradient_snr (linear taps)": lambda: G.gradient_snr(loss_fn, params, (x, y)),
        "gradient_stats, all 7 (linear taps)": lambda: G.gradient_stats(loss_fn, params, (x, y)),
        "ggn_diag (linear taps)": lambda: H.ggn_diag(loss_fn, params, (x, y)),
        "hessian_diag hutchinson K=64": lambda: H.hessian_diag(
            loss_fn, params, (x, y), method="hutchinson", probes=64, key=0
        ),
    }
    return {"unit_mflop": unit / 1e6, **{k: count(f) / unit for k, f in cases.items()}}


def cpu_pressure() -> float | None:
    """Linux PSI: share of the last 10 s in which runnable tasks waited for a CPU (%), or None."""
    try:
        with open("/proc/pressure/cpu") as fh:
            return float(fh.readline().split("avg10=")[1].split()[0])
    except (OSError, IndexError, ValueError):
        return None


def wait_quiet(max_wait_s: float, below: float = 15.0) -> float | None:
    """Wait up to ``max_wait_s`` for CPU pressure to drop below ``below`` %; returns the last reading."""
    deadline = time.monotonic() + max_wait_s
    reading = cpu_pressure()
    while reading is not None and reading >= below and time.monotonic() < deadline:
        time.sleep(2.0)
        reading = cpu_pressure()
    return reading


def paired_ratios(
    unit: Callable[[], object], fns: dict[str, Callable[[], object]], reps: int, warmup: int = 3
) -> dict[str, dict[str, float]]:
    """Each case timed right after a unit call, rep by rep: per case the median and fastest seconds
    and the median of the per-rep ratios case / preceding unit. Paired ratios follow the load of
    a shared machine from second to second, where ratios of medians drift with it."""
    for f in (unit, *fns.values()):
        for _ in range(warmup):
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    ratios: dict[str, list[float]] = {k: [] for k in fns}
    units: list[float] = []
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            unit()
            t1 = time.perf_counter()
            f()
            t2 = time.perf_counter()
            units.append(t1 - t0)
            times[k].append(t2 - t1)
            ratios[k].append((t2 - t1) / (t1 - t0))
    out = {
        k: {"s": statistics.median(v), "min_s": min(v), "x_unit": statistics.median(ratios[k])}
        for k, v in times.items()
    }
    out["unit"] = {"s": statistics.median(units), "min_s": min(units), "x_unit": 1.0}
    return out


def time_groups(
    groups: dict[str, dict[str, Callable]], unit: Callable, reps: int, quiet_wait_s: float
) -> list[dict]:
    """Per case: median and fastest milliseconds, the median paired ratio to the unit, and the
    ratio of the fastest times."""
    cases = []
    for group, fns in groups.items():
        pressure = wait_quiet(quiet_wait_s)
        res = paired_ratios(unit, fns, reps)
        unit_min = res["unit"]["min_s"]
        names = (["unit"] if group == "unit" else []) + list(fns)
        for name in names:
            r = res[name]
            cases.append(
                {
                    "group": group,
                    "case": "nn.Module fwd + loss.backward() (unit)" if name == "unit" else name,
                    "ms": r["s"] * 1e3,
                    "x_unit": r["x_unit"],
                    "min_ms": r["min_s"] * 1e3,
                    "x_unit_of_mins": r["min_s"] / unit_min,
                    "unit_ms": res["unit"]["s"] * 1e3,
                    "cpu_pressure_before": pressure,
                }
            )
    return cases


def hutchinson_errors(s: dict, exact: torch.Tensor, quiet_wait_s: float) -> list[dict]:
    """Relative L2 error of Hutchinson against ``exact`` and median seconds (of 3), per K, for
    pure_prune and the double-backward loop."""
    params, loss_fn, net, x, y = s["params"], s["loss_fn"], s["net"], s["x"], s["y"]
    rows = []
    for k in KS:
        wait_quiet(quiet_wait_s)
        est = flat(H.hessian_diag(loss_fn, params, (x, y), method="hutchinson", probes=k, key=k))
        loop = _module_order(torch.cat([d.reshape(-1) for d in pyhessian_hutchinson(net, x, y, k)]), params)
        sec = round_robin(
            {
                "ours": lambda k=k: H.hessian_diag(
                    loss_fn, params, (x, y), method="hutchinson", probes=k, key=k
                ),
                "loop": lambda k=k: pyhessian_hutchinson(net, x, y, k),
            },
            reps=3,
            warmup=1,
        )
        rows.append(
            {
                "K": k,
                "rel_l2_error": float((est - exact).norm() / exact.norm()),
                "negative_share": float((est < 0).float().mean()),
                "seconds": sec["ours"][0],
                "loop_rel_l2_error": float((loop - exact).norm() / exact.norm()),
                "loop_seconds": sec["loop"][0],
            }
        )
    return rows


def correctness_checks(
    s: dict, taps: G.LinearTaps, exact: torch.Tensor, bp: dict, bp_model: torch.nn.Module | None
) -> dict:
    """GGN == exact Hessian diagonal at 128 sampled coordinates (basis-vector HVPs); fast SNR ==
    per-sample loop; BackPACK's numbers against pure_prune's."""
    params, loss_fn, net, x, y = s["params"], s["loss_fn"], s["net"], s["x"], s["y"]
    width = exact.numel()
    picks = torch.randperm(width, generator=rng.generator(3))[:128]
    basis = torch.zeros(picks.numel(), width)
    basis[torch.arange(picks.numel()), picks] = 1.0
    leaves, spec = tree.flatten(params)
    parts = torch.split(basis, [w.numel() for w in leaves], dim=1)
    vs = tree.unflatten(spec, [p.reshape(picks.numel(), *w.shape) for p, w in zip(parts, leaves)])
    hv = torch.cat([h.reshape(picks.numel(), -1) for h in tree.leaves(H.hvp(loss_fn, params, (x, y), vs))], 1)
    true_diag = hv[torch.arange(picks.numel()), picks]
    snr_fast = flat(G.gradient_snr(loss_fn, params, (x, y), fast=taps))
    same = {
        "ggn_diag": (H.ggn_diag(loss_fn, params, (x, y)), H.ggn_diag(loss_fn, params, (x, y), fast=taps)),
        "hessian_diag": (
            H.hessian_diag(loss_fn, params, (x, y)),
            H.hessian_diag(loss_fn, params, (x, y), fast=taps),
        ),
        "gradient_snr": (
            G.gradient_snr(loss_fn, params, (x, y)),
            G.gradient_snr(loss_fn, params, (x, y), fast=taps),
        ),
    }
    snr_loop = _module_order(torch.cat([t.reshape(-1) for t in loop_snr(net, x, y)]), params)
    return {
        "ggn_vs_exact_hvp_max_abs_diff_over_max_diag": float(
            (true_diag - exact[picks]).abs().max() / exact.abs().max()
        ),
        **backpack_checks(bp, bp_model, exact, snr_fast, params),
        "default_equals_pre_traced": {k: bool(torch.equal(flat(a), flat(b))) for k, (a, b) in same.items()},
        "ggn_is_exact_verdict": H.ggn_is_exact(loss_fn, params, (x, y)),
        "snr_fast_vs_loop_max_rel_diff_where_snr_gt_1e-3": float(
            ((snr_fast - snr_loop).abs() / snr_loop.abs().clamp_min(1e-3)).max()
        ),
    }


def run(
    reps: int, compile_: bool, quiet_wait_s: float = 0.0, threads: int = 2, only: str | None = None
) -> dict:
    load_start = os.getloadavg()[0]
    torch.set_num_threads(threads)
    s = setup()
    bp, bp_model, why = backpack_cases(s["net"], s["x"], s["y"])
    jx, why_jax = jax_cases(s)
    notes = [w for w in (why, why_jax) if w]
    t0 = time.perf_counter()
    taps = G.linear_taps(s["model_fn"], s["params"], s["x"])
    trace_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    G.linear_taps(s["model_fn"], s["params"], s["x"])
    trace_again_s = time.perf_counter() - t0

    groups = timing_groups(s, taps, bp)
    bp_mse, bp_mse_model = backpack_mse_cases(s["net"], s["x"], s["y_mse"])
    groups["MSE regression (GGN = Hessian diagonal; SNR)"] = mse_group(s, taps, bp_mse)
    groups["Hutchinson K=64"].update({k: v for k, v in jx.items() if "Hutchinson" in k})
    groups["gradient SNR"].update({k: v for k, v in jx.items() if "SNR" in k})
    compile_s = add_compiled(s, groups) if compile_ else {}
    if not compile_:
        notes.append("compiled cases skipped (--no-compile)")
    unit = functools.partial(module_fwd_bwd, s["net"], s["x"], s["y"])
    if only is not None:
        groups = {k: v for k, v in groups.items() if k == "unit" or re.search(only, k)}
    cases = time_groups(groups, unit, reps, quiet_wait_s)
    exact = flat(H.ggn_diag(s["loss_fn"], s["params"], (s["x"], s["y"]), fast=taps))
    return {
        "meta": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "reps": reps,
            "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "model": "mlp 64-256-256-10 ReLU, float32, digits batch 128",
            "linear_taps_trace_s": {"first": trace_s, "again": trace_again_s},
            "compile_s": compile_s,
            "flop_ratio_to_unit": flop_ratios(s),
            "load_average_1min": {"start": load_start, "after_timing": os.getloadavg()[0]},
            "notes": notes,
        },
        "cases": cases,
        "hutchinson_error": hutchinson_errors(s, exact, quiet_wait_s),
        "checks": {
            **correctness_checks(s, taps, exact, bp, bp_model),
            **mse_checks(s, bp_mse, bp_mse_model),
        },
    }


def backpack_checks(
    bp: dict, model: torch.nn.Module | None, exact: torch.Tensor, snr: torch.Tensor, params: dict
) -> dict:
    """BackPACK's diagonal and SNR against pure_prune's (max relative difference), when installed."""
    if model is None:
        return {}
    bp["BackPACK DiagHessian"]()
    diag = _module_order(torch.cat([p.diag_h.reshape(-1) for p in model.parameters()]), params)
    bp["BackPACK BatchGrad+Variance"]()
    n = BATCH
    theirs = torch.cat([((p.grad / n) ** 2 / (p.variance + EPS)).reshape(-1) for p in model.parameters()])
    theirs = _module_order(theirs, params)
    return {
        "backpack_diag_h_vs_ggn_max_abs_diff_over_max_diag": float(
            (diag - exact).abs().max() / exact.abs().max()
        ),
        "backpack_snr_vs_ours_max_rel_diff_where_snr_gt_1e-3": float(
            ((theirs - snr).abs() / snr.abs().clamp_min(1e-3)).max()
        ),
    }


def _module_order(flat_module: torch.Tensor, params: dict) -> torch.Tensor:
    """nn.Sequential parameter order (w1, b1, w2, ...) -> pure_prune leaf order (b1, w1, b2, ...)."""
    sizes = []
    for name in sorted(params):
        sizes += [params[name]["weight"].numel(), params[name]["bias"].numel()]
    chunks = torch.split(flat_module, sizes)
    return torch.cat([c for pair in zip(chunks[1::2], chunks[0::2]) for c in pair])


def report(res: dict) -> None:
    print(
        f"# importance bench: {res['meta']['model']}, torch {res['meta']['torch']}, {res['meta']['threads']} threads"
    )
    load = res["meta"]["load_average_1min"]
    cpus = res["meta"]["cpus"]
    print(
        f"machine load (1-min average, {cpus} cpus): {load['start']:.1f} at start, {load['after_timing']:.1f} after timing"
    )
    for note in res["meta"]["notes"]:
        print(f"note: {note}")
    taps = res["meta"]["linear_taps_trace_s"]
    print(
        f"linear_taps trace: {taps['first'] * 1e3:.0f} ms first call, {taps['again'] * 1e3:.1f} ms again (one-off per shape)"
    )
    for name, sec in res["meta"]["compile_s"].items():
        print(f"torch.compile {name}: {sec:.1f} s to first result")
    flops = res["meta"]["flop_ratio_to_unit"]
    print(
        f"FLOPs over the unit's {flops['unit_mflop']:.1f} MFLOP (the x-unit floor at the unit's efficiency):"
    )
    for name, ratio in flops.items():
        if name != "unit_mflop":
            print(f"  {name:<56s} {ratio:8.2f}")
    group = None
    for c in res["cases"]:
        if c["group"] != group:
            group = c["group"]
            if c["cpu_pressure_before"] is not None:
                print(f"\n(cpu pressure before this group: {c['cpu_pressure_before']:.0f}%)", end="")
            print(f"\n{group:<60s} {'ms':>9s} {'x unit':>8s} {'(mins)':>8s}")
        print(f"  {c['case']:<58s} {c['ms']:9.2f} {c['x_unit']:8.2f} {c['x_unit_of_mins']:8.2f}")
    print(
        f"\n{'Hutchinson error vs K':<30s} {'rel L2':>8s} {'neg':>6s} {'s':>8s} {'loop rel':>9s} {'loop s':>8s}"
    )
    for e in res["hutchinson_error"]:
        print(
            f"  K={e['K']:<26d} {e['rel_l2_error']:8.3f} {e['negative_share']:6.2f} {e['seconds']:8.3f} "
            f"{e['loop_rel_l2_error']:9.3f} {e['loop_seconds']:8.3f}"
        )
    by_case = {c["case"]: c for c in res["cases"]}
    print("\ndefault call (memoised trace) / pre-traced call, ratio of paired x-unit medians:")
    for default, traced in DEFAULT_PAIRS:
        if default in by_case and traced in by_case:
            print(f"  {default:<58s} {by_case[default]['x_unit'] / by_case[traced]['x_unit']:6.2f}")
    print("\nchecks:")
    for k, v in res["checks"].items():
        print(f"  {k}: {v if isinstance(v, dict) else f'{v:.2e}'}")


def main() -> None:
    torch._logging.set_logs(dynamo=logging.ERROR)  # graph breaks at the input checks are expected
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", default="bench/results/importance.json")
    ap.add_argument(
        "--no-compile", action="store_true", help="skip the torch.compile cases (~30 s of compiling)"
    )
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        metavar="S",
        help="on a shared Linux machine, wait up to S seconds before each group for CPU pressure < 15%%",
    )
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (the anchors used 2)")
    ap.add_argument("--only", default=None, metavar="REGEX", help="time only the groups whose name matches")
    args = ap.parse_args()
    if args.reps < 1:
        raise SystemExit("--reps must be >= 1")
    res = run(args.reps, not args.no_compile, args.quiet_wait, args.threads, args.only)
    report(res)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(res, fh, indent=2)
    os.replace(tmp, args.out)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
