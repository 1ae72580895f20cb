"""Section 3, the Hessian diagonal: Hutchinson's estimate against the exact diagonal (basis-vector HVPs
on a small MLP; the GGN diagonal, exact for ReLU nets, on the LeNet-300-100-style MLP), at
initialisation and after training: error, seconds and OBD kept-set overlap per probe count.

Makes ``results/hessian.json`` (cached measurements), ``results/hessian.png``, the section's
Markdown, its checks and its summary line."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from pure_prune import losses
from pure_prune import seeds as seed_sweep
from pure_prune.app import data
from pure_prune.app.experiment import setup
from pure_prune.app.report import plain_log_axis
from pure_prune.importance import hessian as H
from pure_prune.models import mlp

from .common import Checks, Context, cached, dashed, finish_axes, md_table, mean_std, pm, pyplot, save_figure


def _flat(t: Any) -> torch.Tensor:
    from pure_prune import tree

    return torch.cat([x.reshape(-1) for x in tree.leaves(t) if x is not None])


def _kept(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    k = scores.numel() - round(sparsity * scores.numel())
    idx = torch.topk(scores, k).indices
    out = torch.zeros_like(scores, dtype=torch.bool)
    out[idx] = True
    return out


def _overlap(kept: torch.Tensor, reference: torch.Tensor) -> float:
    """The share of ``reference``'s kept entries that ``kept`` keeps too."""
    return float((kept & reference).sum() / reference.sum())


def _trained(sizes: tuple[int, ...], seeds: int, epochs: int) -> list[Any]:
    """``seeds`` digits MLPs of ``sizes`` trained ``epochs`` epochs (SGD 0.05, batch 64), vmapped, eager:
    seed ``k`` (``0 .. seeds-1``) from ``init(k)`` on the data order of ``k`` (``seeds.fit_seeds``)."""
    exp, init = setup("mlp", "digits", model_cfg={"sizes": sizes}, batch_size=64, lr=0.05, compile=False)
    keys = list(range(seeds))
    steps = seed_sweep.make_seed_steps(exp.model, losses.cross_entropy, exp.optimizer, compile=False)
    params, state = seed_sweep.init_seeds(init, keys)
    ds = exp.dataset
    fit = seed_sweep.fit_seeds(
        steps.train,
        params,
        state,
        seed_sweep.init_opt_seeds(exp.optimizer, params),
        seed_sweep.masks_like_seeds(params),
        lambda epoch: seed_sweep.seed_batches((ds.x_train, ds.y_train), exp.batch_size, keys, epoch),
        epochs,
    )
    return [seed_sweep.seed_slice(fit.params, i) for i in range(seeds)]


def _measure(model_fn: Any, params: Any, batch: Any, s: int, net: str, cfg: dict[str, Any]):
    """One seed's record: reference diagonal timings, |w|-alone overlap, then per K error/seconds/overlap."""
    rec: dict[str, Any] = {"seed": s}
    t0 = time.perf_counter()
    ggn = _flat(H.hessian_diag(model_fn, params, batch, method="ggn"))
    rec["ggn_s"] = time.perf_counter() - t0
    if net == "small":
        t0 = time.perf_counter()
        exact = _flat(H.hessian_diag(model_fn, params, batch, method="exact"))
        rec["exact_s"] = time.perf_counter() - t0
        rec["ggn_vs_exact"] = float((ggn - exact).abs().max() / exact.abs().max())
    else:
        exact = ggn
    sps = cfg["sparsities"]
    theta2 = _flat(params) ** 2
    kept_exact = {sp: _kept(0.5 * exact * theta2, sp) for sp in sps}
    # the baseline: how much of exact OBD's kept set |w| alone keeps (OBD = ½ h w²)
    rec["magnitude_overlap"] = {str(sp): _overlap(_kept(theta2, sp), kept_exact[sp]) for sp in sps}
    rec["exact_negative_share"] = float((exact < 0).float().mean())
    rec["K"] = []
    for k in cfg["probes"]:
        t0 = time.perf_counter()
        key = 10_000 * (s + 1) + k
        est = _flat(H.hessian_diag(model_fn, params, batch, method="hutchinson", probes=k, key=key))
        sec = time.perf_counter() - t0
        rec["K"].append(
            {
                "K": k,
                "rel_err": float((est - exact).norm() / exact.norm()),
                "seconds": sec,
                "overlap": {str(sp): _overlap(_kept(0.5 * est * theta2, sp), kept_exact[sp]) for sp in sps},
                "negative_share": float((est < 0).float().mean()),
            }
        )
    return rec, int(exact.numel())


def runs(cfg: dict[str, Any], seeds: int) -> dict[str, Any]:
    """Hutchinson vs the exact diagonal: relative L2 error, OBD kept-set overlap and seconds per K,
    for every net (``small``: exact by basis HVPs; ``large``: the GGN, exact for ReLU nets) at
    initialisation and after ``cfg["train_epochs"]`` epochs of training."""
    ds = data.load("digits")
    batch = (ds.x_train[: cfg["batch"]], ds.y_train[: cfg["batch"]])
    out: dict[str, Any] = {}
    for net in ("small", "large"):
        sizes = tuple(cfg[net])
        _, state = mlp.init(0, sizes=sizes)

        def apply_fn(p: Any, xx: torch.Tensor, state: Any = state) -> torch.Tensor:
            return mlp.apply(p, state, xx, train=False)[0]

        model_fn = losses.model_loss(apply_fn, "cross_entropy")

        inits = [mlp.init(s, sizes=sizes)[0] for s in range(seeds)]
        for when, all_params in (("init", inits), ("trained", _trained(sizes, seeds, cfg["train_epochs"]))):
            # warm-up calls, untimed (first-call overheads of vmap/jvp)
            H.hessian_diag(model_fn, all_params[0], batch, method="ggn")
            H.hessian_diag(model_fn, all_params[0], batch, method="hutchinson", probes=2, key=1)
            measured = [_measure(model_fn, p, batch, s, net, cfg) for s, p in enumerate(all_params)]
            out[f"{net}-{when}"] = {
                "net": net,
                "when": when,
                "sizes": list(sizes),
                "entries": measured[-1][1],
                "per_seed": [rec for rec, _ in measured],
            }
    return out


def _log_log_slope(ks: list[int], errs: list[float]) -> float:
    """Least-squares slope of log(error) against log(K)."""
    lx = [math.log(k) for k in ks]
    ly = [math.log(e) for e in errs]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((u - mx) * (v - my) for u, v in zip(lx, ly)) / sum((u - mx) ** 2 for u in lx)


def _case(c: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    ps, sps = c["per_seed"], cfg["sparsities"]
    rows = []
    for i, k in enumerate(cfg["probes"]):
        rows.append(
            {
                "K": k,
                "err": mean_std([p["K"][i]["rel_err"] for p in ps]),
                "sec": mean_std([p["K"][i]["seconds"] for p in ps]),
                "overlap": {sp: mean_std([p["K"][i]["overlap"][str(sp)] for p in ps]) for sp in sps},
                "neg": mean_std([p["K"][i]["negative_share"] for p in ps]),
            }
        )
    a = {
        "rows": rows,
        "slope": _log_log_slope([r["K"] for r in rows], [r["err"][0] for r in rows]),
        "ggn_s": mean_std([p["ggn_s"] for p in ps]),
        "entries": c["entries"],
        "sizes": c["sizes"],
        "net": c["net"],
        "when": c["when"],
        "mag_overlap": {sp: mean_std([p["magnitude_overlap"][str(sp)] for p in ps]) for sp in sps},
        "exact_neg": mean_std([p["exact_negative_share"] for p in ps]),
    }
    if c["net"] == "small":
        a["exact_s"] = mean_std([p["exact_s"] for p in ps])
        a["ggn_vs_exact"] = max(p["ggn_vs_exact"] for p in ps)
    return a


def analysis(res: dict[str, Any], cfg: dict[str, Any], checks: Checks) -> dict[str, Any]:
    """Per case (``<net>-<init|trained>``): mean ± std of error, seconds and overlap per K; the log-log
    slope of the error against K; the reference's cost."""
    out = {}
    for case, c in res.items():
        if not isinstance(c, dict) or "per_seed" not in c:
            continue
        a = _case(c, cfg)
        rows, slope = a["rows"], a["slope"]
        name = f"MLP {dashed(a['sizes'])} ({a['when']})"
        if "ggn_vs_exact" in a:
            checks.add(
                "hessian",
                f"{name}: the GGN diagonal equals the exact Hessian diagonal of a ReLU MLP (max abs diff / max abs diag < 1e-4)",
                a["ggn_vs_exact"] < 1e-4,
                f"{a['ggn_vs_exact']:.2e}",
            )
        last = rows[-1]
        sp0 = cfg["sparsities"][0]
        checks.add(
            "hessian",
            f"{name}: Hutchinson's diagonal (K={last['K']}) ranks weights for OBD closer to the exact OBD than |w| alone "
            f"(kept-set overlap at {100 * sp0:.0f}% sparsity)",
            last["overlap"][sp0][0] > a["mag_overlap"][sp0][0],
            f"Hutchinson-OBD {pm(*last['overlap'][sp0])}%, |w| alone {pm(*a['mag_overlap'][sp0])}%; "
            f"{pm(*last['neg'])}% of Hutchinson's entries < 0, exact {pm(*a['exact_neg'])}%",
        )
        checks.add(
            "hessian",
            f"{name}: the exact (GGN) diagonal costs less than Hutchinson with K={last['K']}",
            a["ggn_s"][0] < last["sec"][0],
            f"GGN {pm(*a['ggn_s'], scale=1.0, digits=3)} s, Hutchinson K={last['K']} {pm(*last['sec'], scale=1.0, digits=3)} s",
        )
        checks.add(
            "hessian",
            f"{name}: Hutchinson's relative error falls like 1/sqrt(K) (log-log slope in [-0.6, -0.4])",
            -0.6 <= slope <= -0.4,
            f"slope {slope:.3f}; error {rows[0]['err'][0]:.2f} at K={rows[0]['K']}, {rows[-1]['err'][0]:.2f} at K={rows[-1]['K']}",
        )
        out[case] = a
    return out


def plot(an: dict[str, Any], path: Path, seeds: int) -> Path:
    """Left: relative error against K (log-log), ∝ 1/√K for reference; right: seconds against K, the
    reference diagonal's cost as a dotted line."""
    fig, axes = pyplot().subplots(1, 2, figsize=(12, 4.3))
    colours = {"small": "tab:blue", "large": "tab:red"}
    for a in an.values():
        colour = colours[a["net"]]
        ls = "-" if a["when"] == "trained" else "--"
        ks = [r["K"] for r in a["rows"]]
        m = [r["err"][0] for r in a["rows"]]
        s = [r["err"][1] for r in a["rows"]]
        lab = f"MLP {dashed(a['sizes'])}, {a['when']}"
        axes[0].errorbar(ks, m, yerr=s, marker="o", ls=ls, color=colour, capsize=3, label=lab)
        axes[1].errorbar(
            ks,
            [r["sec"][0] for r in a["rows"]],
            yerr=[r["sec"][1] for r in a["rows"]],
            marker="o",
            ls=ls,
            color=colour,
            capsize=3,
            label=f"{lab}: Hutchinson",
        )
        if a["when"] == "trained":
            axes[0].plot(ks, [m[0] / math.sqrt(k) for k in ks], ls=":", color="0.4", lw=1)
            ref = a["exact_s"][0] if "exact_s" in a else a["ggn_s"][0]
            what = "exact (basis HVPs)" if "exact_s" in a else "GGN (exact for ReLU)"
            axes[1].axhline(ref, color=colour, ls=":", lw=1.2, label=f"MLP {dashed(a['sizes'])}: {what}")
    axes[0].plot([], [], ls=":", color="0.4", label="∝ 1/√K")
    all_ks = sorted({r["K"] for a in an.values() for r in a["rows"]})
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_ks, [str(k) for k in all_ks])  # 1, 4, 16, ... rather than 2^k
        ax.set_yscale("log")
        plain_log_axis(ax, "y")
        finish_axes(ax, legend_size=7, xlabel="Hutchinson probes K (log2)")
    axes[0].set_ylabel(f"relative L2 error vs exact, mean ± std ({seeds} seeds)")
    axes[1].set_ylabel("seconds (mean ± std)")
    return save_figure(fig, path)


def _pct(ms: tuple[float, float]) -> str:
    """``"mean ± std%"`` of a fraction, one decimal."""
    return pm(*ms, scale=100.0, digits=1) + "%"


def _dec3(ms: tuple[float, float]) -> str:
    """``"mean ± std"`` unscaled, three decimals (errors, seconds)."""
    return pm(*ms, scale=1.0, digits=3)


def markdown(an: dict[str, Any], cfg: dict[str, Any]) -> str:
    """Per case: a line with the reference and its cost, then the table of K x error/seconds/overlap."""
    parts = []
    sps = cfg["sparsities"]
    for a in an.values():
        small = a["net"] == "small"
        ref = "exact diagonal from basis-vector HVPs" if small else "GGN diagonal (exact for ReLU nets)"
        when = (
            "at initialisation" if a["when"] == "init" else f"after {cfg['train_epochs']} epochs of training"
        )
        head = [
            "K",
            "relative L2 error",
            "seconds",
            "entries < 0",
            *(f"OBD kept-set overlap, {100 * sp:.0f}% sparsity" for sp in sps),
        ]
        rows = [
            [
                r["K"],
                _dec3(r["err"]),
                _dec3(r["sec"]),
                _pct(r["neg"]),
                *(_pct(r["overlap"][sp]) for sp in sps),
            ]
            for r in a["rows"]
        ]
        rows.append(["exact", "0", "-", _pct(a["exact_neg"]), *("100%" for _ in sps)])
        rows.append(["|w| alone (no Hessian)", "-", "-", "-", *(_pct(a["mag_overlap"][sp]) for sp in sps)])
        extra = ""
        if "exact_s" in a:
            extra = (
                f"; exact diagonal {_dec3(a['exact_s'])} s; GGN vs exact: "
                f"max abs difference / max abs diagonal = {a['ggn_vs_exact']:.1e}"
            )
        parts.append(
            f"**MLP {dashed(a['sizes'])}, {when}** ({a['entries']} parameters; reference: {ref}). "
            f"GGN diagonal {_dec3(a['ggn_s'])} s{extra}. Log-log slope of the error against K: "
            f"**{a['slope']:.3f}** (1/√K is −0.5).\n"
        )
        parts.append(md_table(head, rows, "r" * len(head)))
    return "\n".join(parts)


def build(ctx: Context) -> dict[str, Any]:
    """The section's results (cached or computed), with its ``analysis`` and ``markdown``; the figure."""
    cfg, seeds = ctx.settings["hessian"], ctx.seeds
    res = cached(ctx, "hessian", {"seeds": seeds, **cfg}, lambda: runs(cfg, seeds))
    an = analysis(res, cfg, ctx.checks)
    res["analysis"] = an
    ctx.figs["hessian"] = "results/" + plot(an, ctx.rd / "hessian.png", seeds).name
    res["markdown"] = markdown(an, cfg) + "\n**Checked.**\n\n" + ctx.checks.bullets("hessian")
    return res


def chapter(ctx: Context, res: dict[str, Any]) -> list[str]:
    """The section's part of ``results.md``: heading, method, figure and tables."""
    return [
        "## 3. Hessian diagonal: Hutchinson against the exact diagonal\n",
        '`importance.hessian_diag(method="hutchinson", probes=K)` (Rademacher probes, forward-over-reverse HVPs '
        f"vmapped over probes) against the exact diagonal, at {ctx.seeds} seeds (each seed: its own "
        "initialisation and probes). The OBD columns ask whether the error matters for pruning: the share of the "
        "weights kept by OBD (½ h w²) with the exact diagonal that Hutchinson's OBD also keeps.\n",
        f"![hutchinson]({ctx.figs['hessian']})\n",
        res["markdown"],
    ]


def headlines(res: dict[str, Any]) -> list[str]:
    """The summary's line: the trained large MLP's exact diagonal against Hutchinson at the most probes."""
    big = [a for a in res["analysis"].values() if a["net"] == "large" and a["when"] == "trained"]
    if not big:
        return []
    a = big[0]
    last = a["rows"][-1]
    return [
        f"**Hessian diagonal, MLP {dashed(a['sizes'])} (trained):** the exact diagonal (GGN, exact "
        f"for ReLU nets) takes {a['ggn_s'][0]:.3f} s; Hutchinson with K={last['K']} takes {last['sec'][0]:.3f} s "
        f"and is still {last['err'][0]:.2f} off in relative L2 error (slope {a['slope']:.2f} against log K)."
    ]
