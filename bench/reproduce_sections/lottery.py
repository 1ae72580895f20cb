"""Section 1, lottery tickets (Frankle & Carbin 2019): iterative magnitude pruning with rewinding to
the initialisation against its two controls, the same masks re-initialised and random masks.

Makes ``results/lottery.json`` (cached runs), ``results/lottery_<data>.csv``, ``results/lottery.png``,
the section's Markdown, its checks and its summary line."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pure_prune.app import runner
from pure_prune.app.report import plain_log_axis
from pure_prune.app.runconfig import RunConfig, config_hash

from .common import (
    Checks,
    Context,
    band,
    cached,
    dashed,
    finish_axes,
    fmt_s,
    fresh_compile_caches,
    log_to,
    md_table,
    pm,
    pyplot,
    save_figure,
    write_csv,
)

CONTROLS = ("none", "reinit", "random_masks")
CONTROL_LABEL = {
    "none": "winning ticket (rewind to init)",
    "reinit": "random re-init",
    "random_masks": "random mask",
}
COLOURS = {"none": "tab:blue", "reinit": "tab:orange", "random_masks": "tab:green"}


def model_cfg(d: dict[str, Any]) -> dict[str, Any]:
    """``{"sizes": ...}`` for ``mlp``; nothing for ``lenet300``, whose input and output sizes follow the
    data (``experiment.setup`` checks the data against the registered input shape, which an explicit
    ``sizes`` does not update: ``--model mlp --model-cfg '{"sizes": [40, ...]}' --data mnist1d`` is refused)."""
    return {} if d["model"] == "lenet300" else {"sizes": list(d["sizes"])}


def _run_config(name: str, d: dict[str, Any], control: str, cfg: dict[str, Any], seeds: int, **kw: Any):
    rc = RunConfig(
        model=d["model"],
        data=name,
        model_cfg=model_cfg(d),
        method="imp",
        rate=cfg["rate"],
        pruning_times=cfg["rounds"],
        rewind_epoch=cfg["rewind_epoch"],
        control=control,
        epochs=d["epochs"],
        lr=d["lr"],
        batch_size=d["batch_size"],
        seeds=seeds,
        compile=cfg["compile"],
        progress=False,
        **kw,
    )
    # one folder per configuration: a changed setting starts a new run instead of hitting
    # the runner's refusal to mix configurations in one folder
    folder = Path(rc.save_dir).parent / f"{name}-{control}-{config_hash(rc)[:12]}"
    return dataclasses.replace(rc, save_dir=str(folder))


def runs(cfg: dict[str, Any], seeds: int, work: Path, mnist_root: str | None) -> dict[str, Any]:
    """Every data set x control as one vmapped ``pure-prune run --method imp --seeds S``."""
    sets = dict(cfg["datasets"])
    if mnist_root:
        sets["mnist"] = cfg["mnist"]
    out: dict[str, Any] = {}
    log_path = work / "lottery.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    for name, d in sets.items():
        out[name] = {"settings": d, "controls": {}}
        for control in CONTROLS:
            root = mnist_root if name == "mnist" else None
            pending = str(work / "lottery" / "pending")
            rc = _run_config(name, d, control, cfg, seeds, root=root, save_dir=pending)
            t0 = time.perf_counter()
            resume = (Path(rc.save_dir) / "run.json").is_file()
            print(
                f"lottery: {name} control={control} ({'resume' if resume else 'new'}) in {rc.save_dir}",
                flush=True,
            )
            fresh_compile_caches()
            res = runner.run(rc, resume=resume, log=log_to(log_path))
            rows = [
                {
                    "round": r["round"],
                    "remaining": 1.0 - r["sparsity"],
                    "test_accuracy": r["test_accuracy"],
                    "test_accuracy_std": r["test_accuracy_std"],
                    "best_test_accuracy": r["best_test_accuracy"],
                    "best_test_accuracy_std": r["best_test_accuracy_std"],
                    "per_seed": r["per_seed"]["test_accuracy"],
                    "round_seconds": r["round_seconds"],
                }
                for r in res.rounds
            ]
            out[name]["controls"][control] = {"rows": rows, "wall_s": time.perf_counter() - t0}
            last = rows[-1]
            print(
                f"lottery: {name} {control}: {100 * last['remaining']:.2f}% weights, "
                f"acc {pm(last['test_accuracy'], last['test_accuracy_std'])}%",
                flush=True,
            )
    return {"datasets": out}


def matches_down_to(rows: Sequence[dict[str, Any]], floor: float) -> float:
    """The smallest weight fraction down to which every round's mean accuracy stays >= ``floor``
    (rounds in order, stopping at the first that falls below); 1.0 when round 1 already falls."""
    best = 1.0
    for r in rows[1:]:
        if r["test_accuracy"] < floor:
            break
        best = r["remaining"]
    return best


def analysis(res: dict[str, Any], checks: Checks) -> dict[str, Any]:
    """Per data set: dense accuracy, how far down each arm matches it, the gaps at the sparsest round."""
    out = {}
    for name, d in res["datasets"].items():
        c = d["controls"]
        dense = c["none"]["rows"][0]
        floor = dense["test_accuracy"] - dense["test_accuracy_std"]
        down = {k: matches_down_to(v["rows"], floor) for k, v in c.items()}
        tk = c["none"]["rows"]
        peak = max(tk[1:], key=lambda r: r["test_accuracy"])
        last = {k: v["rows"][-1] for k, v in c.items()}
        others = ("reinit", "random_masks")
        gaps = {k: last["none"]["test_accuracy"] - last[k]["test_accuracy"] for k in others}
        spread = {
            k: math.hypot(last["none"]["test_accuracy_std"], last[k]["test_accuracy_std"]) for k in others
        }
        a = {
            "dense": dense,
            "floor": floor,
            "down_to": down,
            "peak": peak,
            "last": last,
            "gap_last": gaps,
            "gap_spread": spread,
        }
        lowest = tk[-1]["remaining"]
        a["claim_match"] = checks.add(
            "lottery",
            f"{name}: winning tickets match the dense net (mean >= dense mean - 1 std) down to a few percent of the weights",
            down["none"] <= 0.05,
            f"matches down to {100 * down['none']:.1f}% of weights; dense {pm(dense['test_accuracy'], dense['test_accuracy_std'])}%, "
            f"lowest tested {100 * lowest:.1f}%",
        )
        a["claim_controls"] = checks.add(
            "lottery",
            f"{name}: both controls fall below the dense net earlier (at more weights) than the tickets",
            all(down[k] > down["none"] for k in others),
            ", ".join(f"{k} matches down to {100 * down[k]:.1f}%" for k in CONTROLS),
        )
        a["claim_gap"] = checks.add(
            "lottery",
            f"{name}: at the sparsest round the ticket beats both controls by more than their combined std",
            all(gaps[k] > spread[k] for k in gaps),
            ", ".join(
                f"ticket - {k}: {100 * gaps[k]:+.2f} pp (combined std {100 * spread[k]:.2f})" for k in gaps
            ),
        )
        out[name] = a
    return out


def plot(res: dict[str, Any], path: Path, seeds: int) -> Path:
    """One panel per data set: accuracy against weights left (log), each arm's mean ± std, dense dotted."""
    sets = list(res["datasets"].items())
    fig, axes = pyplot().subplots(1, len(sets), figsize=(6 * len(sets), 4.3), squeeze=False)
    for ax, (name, d) in zip(axes[0], sets):
        for control, v in d["controls"].items():
            rows = v["rows"]
            xs = [100 * r["remaining"] for r in rows]
            m = [100 * r["test_accuracy"] for r in rows]
            s = [100 * r["test_accuracy_std"] for r in rows]
            band(ax, xs, m, s, color=COLOURS[control], label=CONTROL_LABEL[control])
        dense = d["controls"]["none"]["rows"][0]
        ax.axhline(100 * dense["test_accuracy"], color="k", ls=":", lw=1, label="dense")
        ax.set_xscale("log")
        ax.invert_xaxis()
        plain_log_axis(ax, "x")
        finish_axes(
            ax,
            xlabel="prunable weights remaining (%, log scale)",
            ylabel=f"test accuracy (%), mean ± std, {seeds} seeds",
            title=f"{d['settings']['model']} {dashed(d['settings']['sizes'])} on {name}",
        )
    return save_figure(fig, path)


def _run_seconds(control: dict[str, Any]) -> float:
    """A run's compute time: the sum of its rounds' wall times (also right for a run finished by resume)."""
    return max(control["wall_s"], sum(r["round_seconds"] or 0.0 for r in control["rows"]))


def wall_seconds(res: dict[str, Any]) -> float:
    """The section's compute time: the invocation that computed it, or the sum of its runs' round
    times when that is larger (the runs resume across invocations)."""
    runs_s = sum(_run_seconds(c) for d in res["datasets"].values() for c in d["controls"].values())
    return max(res["wall_s"], runs_s)


def _csv_row(name: str, control: str, q: dict[str, Any]) -> dict[str, Any]:
    return {
        "dataset": name,
        "control": control,
        "round": q["round"],
        "weights_remaining": q["remaining"],
        "test_accuracy_mean": q["test_accuracy"],
        "test_accuracy_std": q["test_accuracy_std"],
        "best_test_accuracy_mean": q["best_test_accuracy"],
        "best_test_accuracy_std": q["best_test_accuracy_std"],
        "seeds": len(q["per_seed"]),
    }


def _command(name: str, st: dict[str, Any], cfg: dict[str, Any], seeds: int) -> str:
    mcfg = model_cfg(st)
    return (
        f"`pure-prune run --model {st['model']} --data {name}"
        + (f" --model-cfg '{json.dumps(mcfg)}'" if mcfg else "")
        + f" --method imp --rate {cfg['rate']} --pruning-times {cfg['rounds']} --rewind-epoch {cfg['rewind_epoch']}"
        f" --epochs {st['epochs']} --lr {st['lr']} --batch-size {st['batch_size']} --seeds {seeds}"
        f" --control {{none,reinit,random_masks}}`\n"
    )


def _findings(a: dict[str, Any], lowest: float) -> str:
    dn, dense, peak, gl = a["down_to"], a["dense"], a["peak"], a["gap_last"]
    return (
        f"Dense: {pm(dense['test_accuracy'], dense['test_accuracy_std'])}%. Counting a round as matching the "
        f"dense net when its mean is at least the dense mean minus one dense std ({100 * a['floor']:.2f}%), the "
        f"winning tickets match it down to **{100 * dn['none']:.1f}%** of the weights, random re-initialisation "
        f"down to {100 * dn['reinit']:.1f}% and random masks down to {100 * dn['random_masks']:.1f}%. The best "
        f"ticket reaches {pm(peak['test_accuracy'], peak['test_accuracy_std'])}% at {100 * peak['remaining']:.1f}% "
        f"of the weights ({100 * (peak['test_accuracy'] - dense['test_accuracy']):+.2f} pp against dense). At "
        f"{lowest:.1f}% the ticket leads re-initialisation by {100 * gl['reinit']:+.2f} pp and random masks by "
        f"{100 * gl['random_masks']:+.2f} pp.\n"
    )


def markdown(res: dict[str, Any], an: dict[str, Any], cfg: dict[str, Any], seeds: int, rd: Path) -> str:
    """Per data set: heading, equivalent command, the table of rounds x arms, the findings; writes the CSVs."""
    lines = []
    for name, d in res["datasets"].items():
        st, ctrl = d["settings"], d["controls"]
        rows_csv, table_rows = [], []
        for i, r in enumerate(ctrl["none"]["rows"]):
            cells = [str(r["round"]), f"{100 * r['remaining']:.2f}"]
            for k in CONTROLS:
                q = ctrl[k]["rows"][i]
                cells.append(pm(q["test_accuracy"], q["test_accuracy_std"]))
                rows_csv.append(_csv_row(name, k, q))
            table_rows.append(cells)
        write_csv(rd / f"lottery_{name}.csv", rows_csv)
        wall = sum(_run_seconds(v) for v in ctrl.values())
        lines.append(
            f"### {name}: MLP {dashed(st['sizes'])}, {st['epochs']} epochs per round, "
            f"SGD lr {st['lr']} momentum 0.9, batch {st['batch_size']}\n"
        )
        lines.append(
            f"Test accuracy (%) at the end of each round, mean ± std over {seeds} seeds; raw: "
            f"[`results/lottery_{name}.csv`](results/lottery_{name}.csv). Wall time of the three runs: {fmt_s(wall)}.\n"
        )
        lines.append(_command(name, st, cfg, seeds))
        head = ["round", "weights left (%)", *(CONTROL_LABEL[k] for k in CONTROLS)]
        lines.append(md_table(head, table_rows, "rr" + "r" * len(CONTROLS)))
        lines.append(_findings(an[name], 100 * ctrl["none"]["rows"][-1]["remaining"]))
    return "\n".join(lines)


def build(ctx: Context) -> dict[str, Any]:
    """The section's results (cached or computed), with its ``analysis`` and ``markdown``; the figure."""
    cfg = ctx.settings["lottery"]
    conf = {"seeds": ctx.seeds, **cfg, "mnist_root": ctx.mnist_root}
    res = cached(ctx, "lottery", conf, lambda: runs(cfg, ctx.seeds, ctx.work, ctx.mnist_root))
    an = analysis(res, ctx.checks)
    ctx.figs["lottery"] = "results/" + plot(res, ctx.rd / "lottery.png", ctx.seeds).name
    res["analysis"] = an
    res["markdown"] = markdown(res, an, cfg, ctx.seeds, ctx.rd)
    return res


def chapter(ctx: Context, res: dict[str, Any]) -> list[str]:
    """The section's part of ``results.md``: heading, method, figure, tables, verdicts."""
    L = ctx.settings["lottery"]
    out = ["## 1. Lottery tickets (Frankle & Carbin 2019)\n"]
    out.append(
        f"Iterative magnitude pruning, global over the three weight matrices (biases dense), "
        f"{100 * L['rate']:.0f}% of the remaining weights per round for {L['rounds']} rounds "
        f"(down to {100 * (1 - L['rate']) ** L['rounds']:.1f}% of the weights), rewinding the survivors to their "
        f"initial values (epoch {L['rewind_epoch']}) and retraining. Controls, as in the paper: **random re-init** "
        f"(the ticket's masks with a fresh initialisation from another key) and **random mask** (random positions "
        f"with the ticket's per-layer sparsity, rewound to the original init). Each arm is one "
        f"`pure-prune run` (command under each table); its seeds train as one vmapped program.\n"
    )
    out.append(f"![lottery tickets]({ctx.figs['lottery']})\n")
    out.append(res["markdown"])
    if not ctx.mnist_root:
        out.append(
            "MNIST itself was not run: it needs the IDX files, which are never downloaded. Pass "
            "`--mnist-root DIR` (a folder holding `train-images-idx3-ubyte` etc.) to add a LeNet-300-100 panel.\n"
        )
    verdict = ctx.checks.verdict
    verdicts = [
        f"*{name}*: tickets match dense to a few percent — {verdict(a['claim_match'])}; controls fall off "
        f"earlier — {verdict(a['claim_controls'])}; tickets beat both controls at the sparsest round beyond "
        f"the seed spread — {verdict(a['claim_gap'])}."
        for name, a in res["analysis"].items()
    ]
    out.append("**Against the paper.** " + " ".join(verdicts) + "\n")
    return out


def headlines(res: dict[str, Any]) -> list[str]:
    """The summary's lines: per data set, the sparsest round's three arms against dense."""
    out = []
    for name, a in res["analysis"].items():
        last, d = a["last"], a["dense"]
        out.append(
            f"**Lottery tickets, {name}:** at {100 * last['none']['remaining']:.1f}% of the weights the winning "
            f"tickets reach {pm(last['none']['test_accuracy'], last['none']['test_accuracy_std'])}% (dense "
            f"{pm(d['test_accuracy'], d['test_accuracy_std'])}%); the same masks re-initialised reach "
            f"{pm(last['reinit']['test_accuracy'], last['reinit']['test_accuracy_std'])}%, random masks "
            f"{pm(last['random_masks']['test_accuracy'], last['random_masks']['test_accuracy_std'])}%."
        )
    return out
