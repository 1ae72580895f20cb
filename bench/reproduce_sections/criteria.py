"""Section 2, pruning criteria compared (ShrinkBench-style, Blalock et al. 2020): every registered
criterion prunes the trained dense nets one-shot to each compression, before and after fine-tuning.

Makes ``results/criteria.json`` (cached sweeps), ``results/criteria_<net>.csv`` and ``.png``, the
section's Markdown, its checks against the literature and its summary line."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pure_prune.app import sweep as grid

from .common import (
    Checks,
    Context,
    accuracy,
    cached,
    find_row,
    fmt_s,
    fresh_compile_caches,
    log_to,
    md_table,
    pm,
    write_csv,
)


def sweep_config(n: dict[str, Any], seeds: int, eager: bool, **more: Any) -> grid.SweepConfig:
    """The ``grid.SweepConfig`` of one net of the settings' ``nets`` (model, data, epochs, batch, lr),
    with ``more`` fields (criteria, compression, fine-tuning, ...)."""
    return grid.SweepConfig(
        model=n["model"],
        data=n["data"],
        model_cfg=dict(n["model_cfg"]),
        seeds=seeds,
        epochs=n["epochs"],
        batch_size=n["batch_size"],
        lr=n["lr"],
        eager=eager,
        **more,
    )


def runs(cfg: dict[str, Any], seeds: int, work: Path) -> dict[str, Any]:
    """``pure_prune.app.sweep.run`` for every net of ``cfg["nets"]``; the rows of each sweep."""
    out = {}
    crits = tuple(grid.parse_criteria(cfg["criteria"])) if cfg["criteria"] else ()
    for name, n in cfg["nets"].items():
        sc = sweep_config(
            n,
            seeds,
            cfg["eager"],
            criteria=crits,
            compression=tuple(float(c) for c in cfg["compression"]),
            finetune_epochs=n["finetune_epochs"],
            score_batches=cfg["score_batches"],
            save_dir=str(work / "criteria" / f"{name}-s{seeds}"),
        )
        t0 = time.perf_counter()
        fresh_compile_caches()
        res = grid.run(sc, plots=False, log=log_to(work / "criteria.log"))
        out[name] = {"rows": res.rows, "wall_s": time.perf_counter() - t0, "settings": n}
        print(
            f"criteria: {name} done, {res.computed} points computed, {fmt_s(out[name]['wall_s'])}", flush=True
        )
    return {"nets": out}


def cell(
    rows: Sequence[dict[str, Any]], crit: str, scope: str, comp: float, ft: bool
) -> dict[str, Any] | None:
    """The grid row of ``crit`` (``scope``) at compression ``comp``, fine-tuned or not; None if absent."""
    return find_row(rows, comp, criterion=crit, scope=scope, finetuned=ft)


def _net_analysis(name: str, rows: list[dict[str, Any]], checks: Checks) -> dict[str, Any]:
    dense = next(r for r in rows if r["criterion"] == "dense")
    comps = sorted({float(r["compression"]) for r in rows if r["criterion"] != "dense"})
    present = {(r["criterion"], r["scope"]) for r in rows}
    a: dict[str, Any] = {"dense": dense, "comps": comps}
    hi = comps[-1]
    mid = [c for c in comps if c <= 8][-1]

    def compare(
        key: str, first: tuple[str, str], second: tuple[str, str], claim: str, holds: Callable, label: str
    ) -> None:
        """``a[key]``: fine-tuned accuracy of ``first`` minus ``second`` per compression, checked by
        ``holds(diffs)``; ``label`` formats one compression's difference for the evidence."""
        if first not in present or second not in present:
            return
        diffs = {
            c: accuracy(cell(rows, *first, c, True)) - accuracy(cell(rows, *second, c, True)) for c in comps
        }
        a[key] = diffs
        checks.add(
            "criteria",
            f"{name}: {claim}",
            holds(diffs),
            ", ".join(label.format(c=c, g=100 * g) for c, g in diffs.items()),
        )

    mag, rnd = ("magnitude", "global"), ("random", "global")
    if mag in present:
        m8 = cell(rows, *mag, mid, True)
        a["mag_mid"] = m8
        checks.add(
            "criteria",
            f"{name}: global magnitude, fine-tuned, stays within 2 pp of dense at x{mid:g}",
            m8["accuracy_mean"] >= dense["accuracy_mean"] - 0.02,
            f"{pm(m8['accuracy_mean'], m8['accuracy_std'])}% vs dense {pm(dense['accuracy_mean'], dense['accuracy_std'])}%",
        )
    compare(
        "mag_minus_random",
        mag,
        rnd,
        f"random pruning is far weaker than magnitude at high compression (> 10 pp at x{hi:g}, fine-tuned)",
        lambda d: d[hi] > 0.10,
        "x{c:g}: {g:+.1f} pp",
    )
    compare(
        "global_minus_layer",
        mag,
        ("magnitude", "layer"),
        f"global magnitude >= layer-wise magnitude at x{hi:g}, fine-tuned (ShrinkBench)",
        lambda d: d[hi] >= -0.005,
        "x{c:g}: {g:+.2f} pp",
    )
    pairs = []
    for c, s in sorted(present):
        if c == "dense":
            continue
        for comp in comps:
            before, after = cell(rows, c, s, comp, False), cell(rows, c, s, comp, True)
            if before and after:
                pairs.append(after["accuracy_mean"] - before["accuracy_mean"])
    gain = {"n": len(pairs), "improved": sum(p > 0 for p in pairs), "mean": sum(pairs) / max(len(pairs), 1)}
    a["ft_gain"] = gain
    checks.add(
        "criteria",
        f"{name}: fine-tuning recovers accuracy (improves at least 90% of the points)",
        gain["improved"] >= 0.9 * len(pairs),
        f"improved {gain['improved']} of {len(pairs)} points, mean gain {100 * gain['mean']:+.1f} pp",
    )
    if ("snip", "global") in present and ("taylor", "global") in present:
        a["snip_taylor_diff"] = max(
            abs(
                accuracy(cell(rows, "snip", "global", c, ft))
                - accuracy(cell(rows, "taylor", "global", c, ft))
            )
            for c in comps
            for ft in (False, True)
        )
    if ("grasp", "global") in present:
        g2 = cell(rows, "grasp", "global", comps[0], False)
        g2f = cell(rows, "grasp", "global", comps[0], True)
        a["grasp"] = {"pruned": g2, "finetuned": g2f}
        checks.add(
            "criteria",
            f"{name}: GraSP applied to the trained net keeps it useful at x{comps[0]:g} before fine-tuning (what the paper's at-init use would suggest)",
            g2["accuracy_mean"] >= dense["accuracy_mean"] - 0.05,
            f"GraSP x{comps[0]:g}: {pm(g2['accuracy_mean'], g2['accuracy_std'])}% before, "
            f"{pm(g2f['accuracy_mean'], g2f['accuracy_std'])}% after fine-tuning; dense {pm(dense['accuracy_mean'], dense['accuracy_std'])}%",
        )
    compare(
        "mag_minus_gsnr",
        mag,
        ("gsnr", "global"),
        f"gradient SNR ranks weights about as well as magnitude (within 2 pp at x{mid:g}, fine-tuned)",
        lambda d: d[mid] <= 0.02,
        "magnitude - gsnr x{c:g}: {g:+.1f} pp",
    )
    compare(
        "obd_minus_mag",
        ("obd", "global"),
        mag,
        f"OBD (second order, LeCun et al. 1990) is at least as good as magnitude at x{hi:g}, fine-tuned (within 1 pp)",
        lambda d: d[hi] >= -0.01,
        "obd - magnitude x{c:g}: {g:+.2f} pp",
    )
    compare(
        "taylor_minus_mag",
        ("taylor", "global"),
        mag,
        f"first-order Taylor / SNIP scores (Molchanov et al. 2019; Lee et al. 2019) are within 2 pp of magnitude at x{mid:g}, fine-tuned",
        lambda d: d[mid] >= -0.02,
        "taylor - magnitude x{c:g}: {g:+.2f} pp",
    )
    compare(
        "enhanced_minus_hap",
        ("enhanced", "layer"),
        ("hap", "layer"),
        "The fused 'enhanced' unit criterion beats its HAP baseline (mean over compressions, fine-tuned)",
        lambda d: sum(d.values()) / len(d) > 0,
        "enhanced - hap x{c:g}: {g:+.2f} pp",
    )
    # every criterion at the highest compression, fine-tuned, best first
    ranks = [
        (r["accuracy_mean"], c, s)
        for c, s in sorted(present)
        if c != "dense" and (r := cell(rows, c, s, hi, True))
    ]
    a["rank_hi"] = sorted(ranks, reverse=True)
    return a


def analysis(res: dict[str, Any], checks: Checks) -> dict[str, Any]:
    """Per net: dense row, compressions, pairwise criterion differences, fine-tuning gain, ranking."""
    return {name: _net_analysis(name, d["rows"], checks) for name, d in res["nets"].items()}


def legend(names: Sequence[str]) -> str:
    """What each criterion scores, from the registry's own one-line descriptions."""
    from pure_prune import importance

    rows = []
    for n in names:
        c = importance.get(n)
        rows.append(
            [
                f"`{n}`",
                "weights" if c.level == "element" else "units",
                "yes" if c.needs_data else "no",
                c.description,
            ]
        )
    return md_table(["criterion", "removes", "needs data", "score (higher = kept)"], rows, "llll")


def _findings(a: dict[str, Any]) -> str:
    hi = a["comps"][-1]
    txt = []
    if "mag_mid" in a:
        m = a["mag_mid"]
        txt.append(
            f"Global magnitude, fine-tuned, holds {pm(m['accuracy_mean'], m['accuracy_std'])}% at ×{m['compression']:g} "
            f"(dense {pm(a['dense']['accuracy_mean'], a['dense']['accuracy_std'])}%)."
        )
    if "mag_minus_random" in a:
        txt.append(f"Random pruning trails it by {100 * a['mag_minus_random'][hi]:.1f} pp at ×{hi:g}.")
    if "global_minus_layer" in a:
        g = a["global_minus_layer"]
        txt.append(
            "Global minus layer-wise magnitude, fine-tuned: "
            + ", ".join(f"×{c:g} {100 * v:+.2f} pp" for c, v in g.items())
            + "."
        )
    if "ft_gain" in a:
        f = a["ft_gain"]
        txt.append(
            f"Fine-tuning raised accuracy at {f['improved']} of {f['n']} points (mean {100 * f['mean']:+.1f} pp)."
        )
    if "snip_taylor_diff" in a:
        txt.append(
            "SNIP scores |g ⊙ w| with the gradient of all scoring batches; Taylor (Molchanov et al. 2019) "
            "averages the per-batch (g_b ⊙ w)², so batch gradients that cancel in SNIP's mean still count; "
            f"their largest difference in mean accuracy over the grid is {100 * a['snip_taylor_diff']:.2f} pp."
        )
    if a.get("rank_hi"):
        order = ", ".join(f"{c} ({s}) {100 * m:.1f}" for m, c, s in a["rank_hi"])
        txt.append(f"Ranking at ×{hi:g} after fine-tuning (mean %): {order}.")
    return " ".join(txt) + "\n"


def markdown(res: dict[str, Any], an: dict[str, Any], seeds: int, ctx: Context, score_batches: int) -> str:
    """The criteria legend, then per net: heading, command, figure, the grid's table, findings, checks;
    writes the CSVs."""
    names = list(
        dict.fromkeys(
            r["criterion"] for d in res["nets"].values() for r in d["rows"] if r["criterion"] != "dense"
        )
    )
    parts = [legend(names)]
    for name, d in res["nets"].items():
        st, rows, a = d["settings"], d["rows"], an[name]
        write_csv(ctx.rd / f"criteria_{name}.csv", rows)
        cfg_txt = json.dumps(st["model_cfg"]) if st["model_cfg"] else "default"
        parts.append(
            f"### {st['model']} ({cfg_txt}) on {st['data']}: {st['epochs']} epochs dense, "
            f"{st['finetune_epochs']} epochs fine-tuning, batch {st['batch_size']}, SGD lr {st['lr']}\n"
        )
        parts.append(
            f"Wall time {fmt_s(d['wall_s'])}; raw: [`results/criteria_{name}.csv`](results/criteria_{name}.csv).\n"
        )
        parts.append(
            f"`pure-prune sweep --model {st['model']} --data {st['data']}"
            + (f" --model-cfg '{json.dumps(st['model_cfg'])}'" if st["model_cfg"] else "")
            + f" --seeds {seeds} --compression {','.join(f'{c:g}' for c in a['comps'])} --epochs {st['epochs']}"
            f" --finetune-epochs {st['finetune_epochs']} --batch-size {st['batch_size']} --lr {st['lr']}"
            f" --score-batches {score_batches}`\n"
        )
        parts.append(f"![criteria {name}]({ctx.figs[name]})\n")
        parts.append(grid.markdown(rows, title=f"{st['model']} on {st['data']}"))
        parts.append(_findings(a))
        parts.append("**Against the literature.**\n\n" + ctx.checks.bullets("criteria", f"{name}:"))
    return "\n".join(parts)


def build(ctx: Context) -> dict[str, Any]:
    """The section's results (cached or computed), with its ``analysis`` and ``markdown``; the figures."""
    cfg, seeds = ctx.settings["criteria"], ctx.seeds
    res = cached(ctx, "criteria", {"seeds": seeds, **cfg}, lambda: runs(cfg, seeds, ctx.work))
    an = analysis(res, ctx.checks)
    res["analysis"] = an
    for name, d in res["nets"].items():
        st = d["settings"]
        path = ctx.rd / f"criteria_{name}.png"
        grid.plot(d["rows"], path, title=f"{st['model']} on {st['data']} ({seeds} seeds)")
        ctx.figs[name] = f"results/criteria_{name}.png"
    res["markdown"] = markdown(res, an, seeds, ctx, cfg["score_batches"])
    return res


def chapter(ctx: Context, res: dict[str, Any]) -> list[str]:
    """The section's part of ``results.md``: heading, method, then the per-net parts."""
    C = ctx.settings["criteria"]
    return [
        "## 2. Pruning criteria compared (ShrinkBench-style, Blalock et al. 2020)\n",
        "Each seed trains one dense model; every criterion then prunes it one-shot to compression "
        f"{', '.join(f'{c}×' for c in C['compression'])} (sparsity 1 − 1/c), globally unless marked `layer`, "
        "and the pruned net is evaluated before and after fine-tuning with the mask fixed. Data-driven criteria "
        f"score {C['score_batches']} training batch(es). `hap` and `enhanced` remove whole units (hidden neurons or "
        "channels), so their compression counts units, not weights. The equivalent command is under each table.\n",
        res["markdown"],
    ]


def headlines(res: dict[str, Any]) -> list[str]:
    """The summary's lines: per net, the best criterion at the highest compression, global vs layer, GraSP."""
    out = []
    for name, a in res["analysis"].items():
        hi = a["comps"][-1]
        best = a["rank_hi"][0] if a.get("rank_hi") else None
        gl = a.get("global_minus_layer", {})
        worst_gl = max(gl.items(), key=lambda kv: kv[1]) if gl else None
        text = f"**Criteria, {name}:** after fine-tuning at ×{hi:g}"
        if best:
            text += f" the best criterion is {best[1]} ({best[2]}) at {100 * best[0]:.1f}%"
        if worst_gl:
            text += (
                f"; global magnitude beats layer-wise by up to {100 * worst_gl[1]:+.1f} pp (×{worst_gl[0]:g})"
            )
        if "grasp" in a:
            g = a["grasp"]["pruned"]
            text += (
                f"; GraSP applied to the trained net leaves {pm(g['accuracy_mean'], g['accuracy_std'])}% at "
                f"×{g['compression']:g} before fine-tuning"
            )
        out.append(text + ".")
    return out
