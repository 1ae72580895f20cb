"""Section 4, speed: what each form of a pruned model gains. ``bench/inference.py`` rerun with a short
rep count (masked vs compacted vs FLOP ratio; CSR vs dense), plus the recorded train-step and
compile-stage benches.

Makes ``results/speed.json`` (cached), ``results/inference.json`` (when rerun), ``results/speed.png``,
the section's Markdown, its checks and its summary line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from pure_prune.app.report import plain_log_axis

from .common import ROOT, Checks, Context, cached, fmt_s, machine_line, md_table, pyplot, save_figure

MODEL_LABEL = {"mlp": "MLP 784-1024-1024-10", "conv4": "Conv-4 (width 64)"}


def runs(cfg: dict[str, Any], rd: Path) -> dict[str, Any]:
    """``bench/inference.py --reps R`` into ``rd/inference.json`` (or the recorded JSON when not rerun),
    plus the recorded train-step and compile-stage benches."""
    bench = ROOT / "bench"
    out: dict[str, Any] = {"cuda": torch.cuda.is_available()}
    if cfg["rerun"]:
        target = rd / "inference.json"
        cmd = [sys.executable, str(bench / "inference.py"), "--reps", str(cfg["reps"]), "--out", str(target)]
        env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
        print("speed: " + " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        out["inference"] = json.loads(target.read_text())
        out["inference_command"] = f"python bench/inference.py --reps {cfg['reps']}"
        out["inference_wall_s"] = time.perf_counter() - t0
        out["inference_rerun"] = True
    else:
        out["inference"] = json.loads((bench / "results" / "inference.json").read_text())
        out["inference_command"] = "python bench/inference.py (recorded in bench/results/inference.json)"
        out["inference_rerun"] = False
    for name in ("train_step_1thread", "train_step", "compile_stages"):
        p = bench / "results" / f"{name}.json"
        out[name] = json.loads(p.read_text()) if p.is_file() else None
    return out


def analysis(res: dict[str, Any], checks: Checks) -> dict[str, Any]:
    """Ranges of the masked speedups and efficiencies, CSR speedup per sparsity; checks on all three."""
    inf = res["inference"]
    st = inf["structured"]
    masked = [r["speedup_masked"] for r in st]
    eff = [r["efficiency"] for r in st]
    a = {"masked_range": (min(masked), max(masked)), "eff_range": (min(eff), max(eff))}
    checks.add(
        "speed",
        "a masked dense model runs at the dense speed at every sparsity (0.85x-1.15x)",
        all(0.85 <= m <= 1.15 for m in masked),
        f"masked/dense speedups {min(masked):.2f}x-{max(masked):.2f}x",
    )
    checks.add(
        "speed",
        "compaction turns removed units into real speed: speedup > 1.3x wherever half or more of the units are gone",
        all(r["speedup_compacted"] > 1.3 for r in st if r["channel_sparsity"] >= 0.5),
        ", ".join(
            f"{r['model']}@{100 * r['channel_sparsity']:.0f}%: {r['speedup_compacted']:.2f}x" for r in st
        ),
    )
    us = inf["unstructured"]
    a["csr"] = {r["sparsity"]: r["speedup_csr"] for r in us}
    checks.add(
        "speed",
        "CSR loses to dense at 50% sparsity and wins at 95%+ (1024x1024, batch 64)",
        a["csr"].get(0.5, 0) < 1.0 and all(v > 1.0 for s, v in a["csr"].items() if s >= 0.95),
        ", ".join(f"{100 * s:.0f}%: {v:.2f}x" for s, v in a["csr"].items()),
    )
    return a


def plot(res: dict[str, Any], path: Path) -> Path:
    """Left: masked / compacted speedups and the FLOP ratio per model and unit sparsity; right: CSR
    speedups against unstructured sparsity (log), with the FLOP ratio."""
    inf = res["inference"]
    fig, axes = pyplot().subplots(1, 2, figsize=(11, 4))
    st = inf["structured"]
    labels = [f"{r['model']}\n{100 * r['channel_sparsity']:.0f}% units" for r in st]
    xs = range(len(st))
    w = 0.27
    axes[0].bar([i - w for i in xs], [r["speedup_masked"] for r in st], w, label="masked")
    axes[0].bar(list(xs), [r["speedup_compacted"] for r in st], w, label="compacted")
    axes[0].bar(
        [i + w for i in xs], [r["flop_ratio"] for r in st], w, label="FLOP ratio (limit)", color="0.7"
    )
    axes[0].set_xticks(list(xs), labels, fontsize=7)
    axes[0].set_ylabel("speedup over dense (eval forward)")
    axes[0].axhline(1, color="k", lw=0.8)
    axes[0].set_title("whole units removed (structured)")
    axes[0].legend(fontsize=8)
    us = inf["unstructured"]
    sparsity = [100 * r["sparsity"] for r in us]
    axes[1].plot(sparsity, [r["speedup_csr"] for r in us], marker="o", label="csr_apply (weight left)")
    axes[1].plot(sparsity, [r["speedup_flinear_csr"] for r in us], marker="s", label="F.linear(CSR)")
    axes[1].plot(
        sparsity, [1 / (1 - r["sparsity"]) for r in us], ls=":", color="0.5", label="FLOP ratio 1/(1-s)"
    )
    axes[1].axhline(1, color="k", lw=0.8)
    axes[1].set_yscale("log")
    plain_log_axis(axes[1], "y")
    axes[1].set(
        xlabel="unstructured sparsity (%)",
        ylabel="speedup over dense (log)",
        title="1024x1024 linear, batch 64",
    )
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    return save_figure(fig, path)


def _structured_table(inf: dict[str, Any]) -> str:
    head = [
        "model",
        "units removed",
        "weights removed",
        "dense ms",
        "masked ms",
        "compacted ms",
        "masked ×",
        "compacted ×",
        "FLOP ratio",
        "efficiency",
    ]
    rows = []
    for r in inf["structured"]:
        t = r["timing"]
        rows.append(
            [
                MODEL_LABEL.get(r["model"], r["model"]),
                f"{100 * r['channel_sparsity']:.0f}%",
                f"{100 * r['weight_sparsity']:.0f}%",
                f"{t['dense']['median_ms']:.2f}",
                f"{t['masked']['median_ms']:.2f}",
                f"{t['compacted']['median_ms']:.2f}",
                f"{r['speedup_masked']:.2f}×",
                f"{r['speedup_compacted']:.2f}×",
                f"{r['flop_ratio']:.2f}×",
                f"{r['efficiency']:.2f}",
            ]
        )
    return md_table(head, rows, "lrrrrrrrrr")


def _unstructured_table(inf: dict[str, Any]) -> str:
    rows = [
        [
            f"{100 * r['sparsity']:.0f}%",
            f"{r['timing']['dense']['median_ms']:.3f}",
            f"{r['timing']['csr_apply (weight left)']['median_ms']:.3f}",
            f"{r['speedup_csr']:.2f}×",
            f"{r['speedup_flinear_csr']:.2f}×",
            f"{1 / (1 - r['sparsity']):.0f}×",
        ]
        for r in inf["unstructured"]
    ]
    head = ["sparsity", "dense ms", "CSR ms", "CSR ×", "F.linear(CSR) ×", "FLOP ratio"]
    return md_table(head, rows, "rrrrrr")


_STEP = "pure_prune make_step, premasked=True"
_HOOKS = "torch.nn.utils.prune + torch.optim"


def _train_step_part(ts: dict[str, Any], file: str) -> list[str]:
    """The recorded train-step table: the runner's compiled step against the hooks, dense eager and JAX."""
    rows = []
    for name, c in ts["cases"].items():
        t = c["timing"]
        if _STEP not in t or _HOOKS not in t:
            continue
        ms = t[_STEP]["median_ms"]
        jax = t.get("JAX jit", {}).get("median_ms")
        rows.append(
            [
                name,
                f"{t['dense eager']['median_ms']:.2f}",
                f"{ms:.2f}",
                f"{t[_HOOKS]['median_ms']:.2f}",
                f"{jax:.2f}" if jax else "-",
                f"{t[_HOOKS]['median_ms'] / ms:.2f}×",
                f"{jax / ms:.2f}×" if jax else "-",
            ]
        )
    head = [
        "case",
        "dense eager ms",
        "pure_prune ms",
        "hooks + torch.optim ms",
        "JAX jit ms",
        "vs hooks",
        "vs JAX",
    ]
    return [
        f"\nA masked training step, compiled, costs about what a dense eager one does; the hooks of "
        f"`torch.nn.utils.prune` add their own cost (not rerun by this command: `python bench/train_step.py`, "
        f"recorded in `bench/results/{file}.json` on {machine_line(ts.get('machine'))}; "
        f"{100 * ts['sparsity']:.0f}% sparsity; pure_prune is the runner's `make_step(..., premasked=True)`):\n",
        md_table(head, rows, "lrrrrrr"),
    ]


def _compile_stages_part(cs: dict[str, Any]) -> str:
    imp = cs["imp"]
    g = imp["recompile_gain"]["timing"]
    compiles = sum(v["compiles"] for k, v in imp["train_stats"].items() if k.startswith("masked/"))
    return (
        f"\nRecompiling a masked graph after the masks change gains nothing: {g['compiled at round 1']['median_ms']:.3f} ms "
        f"(compiled once) vs {g['recompiled now']['median_ms']:.3f} ms (recompiled); a {imp['rounds']}-round IMP "
        f"compiled its train step {compiles} time(s) "
        f"(`python bench/compile_stages.py`, recorded in `bench/results/compile_stages.json` on {machine_line(cs.get('machine'))}).\n"
    )


def markdown(res: dict[str, Any]) -> str:
    """The inference tables (structured, unstructured, CSR break-even), the recorded train-step and
    compile-stage results, and what was not measured (2:4 kernels without a GPU)."""
    inf = res["inference"]
    parts = [
        f"`{res['inference_command']}` on {machine_line(inf.get('machine'))}"
        + (f", {fmt_s(res['inference_wall_s'])}" if res.get("inference_wall_s") else "")
        + ". Medians of interleaved timings; compare ratios within the table, not absolute times across machines.\n"
    ]
    parts.append(_structured_table(inf))
    parts.append(
        "\nUnstructured (1024×1024 linear, batch 64, random masks): CSR with the sparse weight on the left "
        "(`compact.csr_apply`) against dense; `F.linear` with a CSR weight as torch ships it for comparison.\n"
    )
    parts.append(_unstructured_table(inf))
    cross = inf.get("crossover_1024x1024_b64")
    if cross is not None:
        parts.append(
            f"\n`compact.measure_crossover` put the CSR break-even at **{100 * cross:.0f}%** sparsity on this machine.\n"
        )
    file = "train_step_1thread" if res.get("train_step_1thread") else "train_step"
    if res.get(file):
        parts += _train_step_part(res[file], file)
    cs = res.get("compile_stages")
    if cs and "imp" in cs:
        parts.append(_compile_stages_part(cs))
    if res.get("cuda"):
        parts.append(
            "\nA GPU was visible, but this command does not time 2:4 semi-structured kernels; see `compact.to_semi_structured`.\n"
        )
    else:
        parts.append(
            "\n**2:4 semi-structured sparsity was not measured**: it needs an NVIDIA GPU (Ampere or newer) and "
            "none was available to this run (`torch.cuda.is_available()` is False). `compact.to_semi_structured` "
            "exists and is tested for its CPU-side contract only.\n"
        )
    return "\n".join(parts)


def build(ctx: Context) -> dict[str, Any]:
    """The section's results (cached or computed), with its ``analysis`` and ``markdown``; the figure."""
    cfg = ctx.settings["speed"]
    res = cached(ctx, "speed", dict(cfg), lambda: runs(cfg, ctx.rd))
    res["analysis"] = analysis(res, ctx.checks)
    ctx.figs["speed"] = "results/" + plot(res, ctx.rd / "speed.png").name
    res["markdown"] = markdown(res)
    return res


def chapter(ctx: Context, res: dict[str, Any]) -> list[str]:
    """The section's part of ``results.md``: heading, figure and tables."""
    return [
        "## 4. Speed: what each form of a pruned model gains\n",
        f"![speed]({ctx.figs['speed']})\n",
        res["markdown"],
    ]


def headlines(res: dict[str, Any]) -> list[str]:
    """The summary's line: masks alone, the best compaction, the CSR break-even."""
    inf = res["inference"]
    top = max(inf["structured"], key=lambda r: r["speedup_compacted"])
    cross = inf.get("crossover_1024x1024_b64")
    lo, hi = res["analysis"]["masked_range"]
    return [
        f"**Speed:** masks alone change nothing ({lo:.2f}–{hi:.2f}× dense); removing units and compacting gives up to "
        f"{top['speedup_compacted']:.1f}× ({top['model']}, {100 * top['channel_sparsity']:.0f}% of units; FLOP "
        f"ratio {top['flop_ratio']:.1f}×)"
        + (f"; CSR beats dense from {100 * cross:.0f}% unstructured sparsity" if cross is not None else "")
        + "."
    ]
