"""Section 2b, SNIP and GraSP where their papers use them: criteria that score the *untrained* net,
whose masks then stay fixed while it trains (compared with pruning the trained net, section 2).

Makes ``results/init.json`` (cached runs), ``results/init_<net>.csv``, ``results/init.png``, the
section's Markdown, its checks and its summary line."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pure_prune.app import sweep as grid
from pure_prune.app.run_context import build_context

from .common import (
    Checks,
    Context,
    accuracy,
    band,
    cached,
    find_row,
    finish_axes,
    fmt_s,
    fresh_compile_caches,
    md_table,
    pm,
    pyplot,
    save_figure,
    write_csv,
)
from .criteria import cell, sweep_config


def _untrained(ctx: Any) -> Any:
    """The carry a point starts from at initialisation: every seed's *untrained* ``(params, state)``
    (the model's own init from the context's init keys, as round 0 of the run starts), all-kept
    masks (``masking.initial``), a fresh optimizer state; stacked over the seeds for a stack."""
    from pure_prune import seeds as seeds_mod
    from pure_prune.algorithms import masking
    from pure_prune.algorithms.base import Carry

    cfg = ctx.cfg

    def all_kept(p: Any) -> Any:
        return masking.initial(p, cfg.struct, ctx.groups, exclude=cfg.exclude)

    if ctx.seeds is None:
        params, state = ctx.init(ctx.k_init)
        return Carry(params, state, ctx.exp.optimizer.init(params), all_kept(params), None, {})
    params, state = seeds_mod.init_seeds(ctx.init, list(ctx.k_init))
    masks = seeds_mod.stack([all_kept(seeds_mod.seed_slice(params, i)) for i in range(ctx.seeds)])
    return Carry(params, state, seeds_mod.init_opt_seeds(ctx.exp.optimizer, params), masks, None, {})


def runs(cfg: dict[str, Any], ccfg: dict[str, Any], seeds: int) -> dict[str, Any]:
    """Pruning at initialisation, as SNIP and GraSP are meant to be used: every criterion of
    ``cfg["criteria"]`` scores the *untrained* net (``pure_prune.app.sweep.run_point`` from the
    model's own init instead of the dense round), the masks are fixed and the net trains for the
    dense epochs of ``ccfg``'s net (the run config's ``finetune_epochs``)."""
    out = {}
    for name, n in ccfg["nets"].items():
        sc = sweep_config(
            n, seeds, ccfg["eager"], finetune_epochs=n["epochs"], score_batches=ccfg["score_batches"]
        ).check()
        fresh_compile_caches()
        ctx = build_context(sc.run_config())
        start = _untrained(ctx)
        before = grid.evaluate(ctx, start.params, start.state, start.masks)
        t0 = time.perf_counter()
        rows = []
        for crit in cfg["criteria"]:
            for comp in ccfg["compression"]:
                t1 = time.perf_counter()
                res = grid.run_point(
                    ctx,
                    start,
                    criterion=crit,
                    scope="global",
                    compression=float(comp),
                    dense_metrics=before,
                )
                acc = res.summary["accuracy"]
                rows.append(
                    {
                        "criterion": crit,
                        "compression": float(comp),
                        "sparsity": grid.sparsity_of(float(comp)),
                        "accuracy_mean": acc["mean"],
                        "accuracy_std": acc["std"],
                        "n": acc["n"],
                        "seconds": time.perf_counter() - t1,
                    }
                )
                print(f"init: {name} {crit} x{comp:g}: {pm(acc['mean'], acc['std'])}%", flush=True)
        out[name] = {"rows": rows, "wall_s": time.perf_counter() - t0, "settings": n}
    return {"nets": out}


def _net_analysis(name: str, rows: list[dict[str, Any]], after: dict[str, Any] | None, checks: Checks):
    comps = sorted({float(r["compression"]) for r in rows})
    crits = list(dict.fromkeys(r["criterion"] for r in rows))
    lo, hi = comps[0], comps[-1]
    dense = next((r for r in after["rows"] if r["criterion"] == "dense"), None) if after else None
    a: dict[str, Any] = {"comps": comps, "crits": crits, "dense": dense}

    def m(c: str, comp: float) -> float:
        return accuracy(find_row(rows, comp, criterion=c))

    def ms(c: str, comp: float) -> str:
        r = find_row(rows, comp, criterion=c)
        return "-" if r is None else pm(r["accuracy_mean"], r["accuracy_std"]) + "%"

    if "grasp" in crits and dense is not None and after is not None:
        a["grasp_lo"] = (m("grasp", lo), accuracy(cell(after["rows"], "grasp", "global", lo, True)))
        checks.add(
            "init",
            f"{name}: GraSP used as its paper uses it (at initialisation) trains to within 5 pp of dense at x{lo:g}",
            m("grasp", lo) >= dense["accuracy_mean"] - 0.05,
            f"GraSP at init x{lo:g}: {ms('grasp', lo)}; GraSP after training + fine-tuning: "
            f"{100 * a['grasp_lo'][1]:.2f}%; dense {pm(dense['accuracy_mean'], dense['accuracy_std'])}%",
        )
    if {"snip", "grasp", "random"} <= set(crits):
        checks.add(
            "init",
            f"{name}: at initialisation SNIP and GraSP beat random pruning at x{hi:g} (Lee et al. 2019; Wang et al. 2020)",
            m("snip", hi) > m("random", hi) and m("grasp", hi) > m("random", hi),
            f"x{hi:g}: snip {ms('snip', hi)}, grasp {ms('grasp', hi)}, random {ms('random', hi)}",
        )
        checks.add(
            "init",
            f"{name}: GraSP >= SNIP at initialisation at x{hi:g} (Wang et al. 2020's claim for high sparsity)",
            m("grasp", hi) >= m("snip", hi),
            f"x{hi:g}: grasp {ms('grasp', hi)}, snip {ms('snip', hi)}",
        )
    if {"magnitude", "random"} <= set(crits):
        # layer collapse: magnitude at init at chance (< 15%) where random pruning still trains (> 50%)
        where = [c for c in comps if m("magnitude", c) < 0.15 and m("random", c) > 0.5]
        checks.add(
            "init",
            f"{name}: global magnitude at initialisation collapses (near chance where random pruning at the same "
            "compression still trains): it empties the layers with the smallest init scale (layer collapse, "
            "Tanaka et al. 2020)",
            bool(where),
            "magnitude / random at init: "
            + ", ".join(
                f"x{c:g} {100 * m('magnitude', c):.1f}% / {100 * m('random', c):.1f}%" for c in comps
            ),
        )
    if after is not None and crits:
        best_init = max(crits, key=lambda c: m(c, hi))
        mag_after = cell(after["rows"], "magnitude", "global", hi, True)
        if mag_after is not None:
            a["after_vs_init"] = (mag_after["accuracy_mean"], best_init, m(best_init, hi))
            checks.add(
                "init",
                f"{name}: pruning a trained net (magnitude + fine-tuning) beats every criterion applied at "
                f"initialisation at x{hi:g} (Frankle et al. 2021, 'missing the mark')",
                mag_after["accuracy_mean"] > m(best_init, hi),
                f"magnitude after training {pm(mag_after['accuracy_mean'], mag_after['accuracy_std'])}%, best at "
                f"init ({best_init}) {ms(best_init, hi)}",
            )
    return a


def analysis(res: dict[str, Any], crit_res: dict[str, Any] | None, checks: Checks) -> dict[str, Any]:
    """Per net: compressions, criteria, the trained dense row of section 2 (``crit_res``) and the checks
    against it and among the criteria at initialisation."""
    return {
        name: _net_analysis(name, d["rows"], crit_res["nets"].get(name) if crit_res else None, checks)
        for name, d in res["nets"].items()
    }


def plot(res: dict[str, Any], an: dict[str, Any], path: Path, seeds: int) -> Path:
    """One panel per net: accuracy after training against compression (log2), one band per criterion."""
    nets = list(res["nets"].items())
    fig, axes = pyplot().subplots(1, len(nets), figsize=(6 * len(nets), 4.2), squeeze=False)
    for ax, (name, d) in zip(axes[0], nets):
        for crit in an[name]["crits"]:
            pts = sorted((r for r in d["rows"] if r["criterion"] == crit), key=lambda r: r["compression"])
            xs = [r["compression"] for r in pts]
            mm = [100 * r["accuracy_mean"] for r in pts]
            ss = [100 * r["accuracy_std"] for r in pts]
            band(ax, xs, mm, ss, label=f"{crit} at init")
        dense = an[name].get("dense")
        if dense:
            ax.axhline(100 * dense["accuracy_mean"], color="k", ls=":", lw=1, label="dense (trained)")
            low, high = ax.get_ylim()  # keep the dense line off the frame
            ax.set_ylim(low, max(high, 100 * dense["accuracy_mean"] + 0.05 * (high - low)))
        ax.set_xscale("log", base=2)
        comps = an[name]["comps"]
        ax.set_xticks(comps, [f"{c:g}" for c in comps])
        st = d["settings"]
        finish_axes(
            ax,
            xlabel="compression ratio (log2)",
            ylabel=f"test accuracy after training (%), {seeds} seeds",
            title=f"pruned at initialisation: {st['model']} on {st['data']}",
        )
    return save_figure(fig, path)


def markdown(res: dict[str, Any], an: dict[str, Any], rd: Path, fig: str, checks: Checks) -> str:
    """The figure, then per net: a line of settings, criterion x compression table, checks; writes the CSVs."""
    parts = [f"![pruning at initialisation]({fig})\n"]
    for name, d in res["nets"].items():
        rows = d["rows"]
        write_csv(rd / f"init_{name}.csv", rows)
        a = an[name]
        comps = a["comps"]
        st = d["settings"]
        head = ["criterion at init", *(f"×{c:g} ({100 * grid.sparsity_of(c):.1f}%)" for c in comps)]
        body = [
            [
                c,
                *(
                    pm(r["accuracy_mean"], r["accuracy_std"])
                    if (r := find_row(rows, x, criterion=c))
                    else "-"
                    for x in comps
                ),
            ]
            for c in a["crits"]
        ]
        dense = a.get("dense")
        parts.append(
            f"**{st['model']} on {st['data']}**, pruned at initialisation then trained {st['epochs']} epochs "
            f"(wall {fmt_s(d['wall_s'])}; raw [`results/init_{name}.csv`](results/init_{name}.csv))"
            + (
                f"; the trained dense net: {pm(dense['accuracy_mean'], dense['accuracy_std'])}%"
                if dense
                else ""
            )
            + ".\n"
        )
        parts.append(md_table(head, body, "l" + "r" * len(comps)))
        parts.append(checks.bullets("init", f"{name}:"))
    return "\n".join(parts)


def build(ctx: Context) -> dict[str, Any]:
    """The section's results (cached or computed), with its ``analysis`` and ``markdown``; the figure.
    Reads section 2's results from ``ctx.results`` when they are there (the trained nets to compare)."""
    S, seeds = ctx.settings, ctx.seeds
    conf = {
        "seeds": seeds,
        **S["init"],
        "nets": S["criteria"]["nets"],
        "compression": S["criteria"]["compression"],
        "score_batches": S["criteria"]["score_batches"],
    }
    res = cached(ctx, "init", conf, lambda: runs(S["init"], S["criteria"], seeds))
    an = analysis(res, ctx.results.get("criteria"), ctx.checks)
    res["analysis"] = an
    ctx.figs["init"] = "results/" + plot(res, an, ctx.rd / "init.png", seeds).name
    res["markdown"] = markdown(res, an, ctx.rd, ctx.figs["init"], ctx.checks)
    return res


def chapter(ctx: Context, res: dict[str, Any]) -> list[str]:
    """The section's part of ``results.md``: heading, method, figure and tables."""
    return [
        "### 2b. SNIP and GraSP where their papers use them: at initialisation\n",
        "SNIP (Lee et al. 2019) and GraSP (Wang et al. 2020) are pruning-at-initialisation methods. Here every "
        "seed's *untrained* net is scored (the same batches as above), pruned once to each compression, and "
        "trained from there with the mask fixed for as many epochs as the dense net "
        "(`pure_prune.app.sweep.run_point` from the model's own initialisation).\n",
        res["markdown"],
    ]


def headlines(res: dict[str, Any]) -> list[str]:
    """The summary's lines: per net, GraSP at initialisation against dense and against GraSP after training."""
    out = []
    for name, a in res["analysis"].items():
        if "grasp_lo" in a and a.get("dense"):
            at_init, after = a["grasp_lo"]
            gap = at_init - a["dense"]["accuracy_mean"]
            out.append(
                f"**GraSP at initialisation, {name}:** pruned at init to ×{a['comps'][0]:g} and trained, "
                f"{100 * at_init:.2f}% ({100 * gap:+.1f} pp against dense), against {100 * after:.2f}% when it "
                "prunes the trained net (then fine-tuned)."
            )
    return out
