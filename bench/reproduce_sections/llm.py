"""Section 5, pruning a language model: one-shot magnitude (Han et al. 2015), Wanda (Sun et al. 2024),
SparseGPT (Frantar & Alistarh 2023) and OWL (Yin et al. 2024) on the shipped LLaMA-style model, its
heads, MLP channels and blocks (ShortGPT's block influence, Men et al. 2024) removed at 25%, what
calibrating costs against one forward pass, and what the compacted structured forms gain in tokens/s
against their FLOP ratio.

The runs are those of ``bench/llm_prune.py`` (:func:`llm_prune.run_one`), ``bench/llm_structured.py``
(:func:`llm_structured.forms`, ``measure``, ``speed``) and ``bench/llm_calibration_cost.py``
(``run_model``, in a fresh process per run; ``child`` in this process under ``--quick``), over the
same calibration windows per seed (``pure_prune.llm.calibrate.sample_windows`` with key = seed).
The 100M-parameter random-weight config's cost is read from ``bench/results/llm_calibration_cost.json``
(about 15 minutes to measure on 2 cores), not recomputed.

Makes ``results/llm.json`` (cached; every run also under ``<work>/llm/`` so a killed run resumes),
the section's Markdown, its checks and its summary line."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import llm_calibration_cost
import llm_prune
import llm_structured
import torch
from train_llama import corpus, evaluate

from pure_prune import tree
from pure_prune.llm import blocks, calibrate
from pure_prune.models import llama

from .common import ROOT, Checks, Context, cached, fmt_s, machine_line, md_table, mean_std

COST_JSON = ROOT / "bench" / "results" / "llm_calibration_cost.json"
PAPER = {
    "magnitude": "magnitude (Han et al. 2015)",
    "wanda": "Wanda (Sun et al. 2024)",
    "wanda-layer": "Wanda, compared over the layer",
    "sparsegpt": "SparseGPT (Frantar & Alistarh 2023)",
    "owl+wanda": "OWL (Yin et al. 2024) + Wanda",
    "owl+sparsegpt": "OWL + SparseGPT",
}
STRUCTURED_LABEL = {
    "heads (magnitude)": ("heads", "L1 of the producers' weights"),
    "heads (wanda)": ("heads", "structured Wanda, Σ|W|·‖X‖ (An et al. 2024)"),
    "channels (magnitude)": ("MLP channels", "L1 of the producers' weights"),
    "channels (wanda)": ("MLP channels", "structured Wanda, Σ|W|·‖X‖ (An et al. 2024)"),
    "blocks (BI)": ("blocks", "block influence (Men et al. 2024)"),
}


def _resumable(work: Path, name: str, config: dict[str, Any], compute: Any) -> dict[str, Any]:
    """``compute()``'s record, stored in ``work/<name>.json`` with ``config`` and reused when it matches."""
    path = work / f"{name}.json"
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("config") == config:
            return stored["record"]
    record = compute()
    work.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"config": config, "record": record}, default=str) + "\n")
    tmp.replace(path)
    return record


def _slim(rec: dict[str, Any]) -> dict[str, Any]:
    """A run's record without the engine's per-layer record (kept: OWL's outlier ratios and block sparsities)."""
    out = {k: v for k, v in rec.items() if k != "record"}
    if "owl" in rec["record"]:
        out["owl"] = rec["record"]["owl"]
    return out


def _cost(cfg: dict[str, Any], threads: int) -> dict[str, Any]:
    """Calibration time and peak memory of the shipped model per run, with ratios to one forward pass:
    ``llm_calibration_cost.run_model`` (each run in a fresh process) or, with ``fresh_process`` off,
    its ``child`` in this process for ``forward`` and ``cfg["runs"]``."""
    if cfg["fresh_process"]:
        return llm_calibration_cost.run_model("shipped", cfg["sequences"], cfg["batch_size"], threads)
    rows = [llm_calibration_cost.child("shipped", r, cfg["sequences"], cfg["batch_size"])
            for r in ["forward", *cfg["runs"]]]  # fmt: skip
    for r in rows:
        r["time_ratio"] = r["seconds"] / rows[0]["seconds"]
        r["memory_ratio"] = r["peak_bytes"] / max(rows[0]["peak_bytes"], 1)
    return {"model": "shipped", "parameters": rows[0]["parameters"], "sequences": rows[0]["sequences"],
            "seq_len": rows[0]["seq_len"], "batch_size": cfg["batch_size"], "rows": rows}  # fmt: skip


def runs(cfg: dict[str, Any], seeds: int, work: Path) -> dict[str, Any]:
    """Every measurement of the section: the dense and pruned held-out perplexities (unstructured runs
    per method, pattern and seed; structured forms per seed), the structured forms' speed (seed 0) and
    the shipped model's calibration cost, at ``cfg["threads"]`` threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg["threads"])
    try:
        params, state, info = llama.load_pretrained()
        seq = int(info["model"]["context"])
        _, splits = corpus()
        heldout = splits["test"]
        if cfg["heldout_tokens"]:
            heldout = heldout[: cfg["heldout_tokens"] + 1]
        model = blocks.from_llama(llama, state)

        def ppl(p: Any) -> float:
            return evaluate(p, state, heldout, seq)["perplexity"]

        def calib(seed: int) -> torch.Tensor:
            return calibrate.sample_windows(splits["train"], cfg["sequences"], seq, key=seed)

        dense = ppl(params)
        unstructured = []
        todo = llm_prune.configs(
            cfg["patterns"], cfg["methods"], cfg["extra"], cfg["owl"], cfg["owl_sparsity"]
        )
        for method, pattern in todo:
            for seed in llm_prune.seeds_of(method, seeds):
                print(f"llm: {method} {pattern} seed {seed}", flush=True)
                rec = _resumable(
                    work, f"{method}_{pattern}_{seed}", cfg,
                    lambda m=method, p=pattern, s=seed: _slim(
                        llm_prune.run_one(model, params, calib(s), m, p, ppl, batch_size=cfg["batch_size"])
                    ),
                )  # fmt: skip
                unstructured.append({**rec, "seed": seed})

        sparsity = cfg["structured_sparsity"]
        structured_runs, influence = [], []
        speed_forms: dict[str, Any] = {}
        for seed in range(seeds):
            print(f"llm: structured forms, seed {seed}", flush=True)
            names = [n for n, reads in llm_structured.READS_DATA.items() if reads or seed == 0]
            stats = llm_structured.calibration_stats(params, state, calib(seed), cfg["batch_size"])
            influence.append(stats.block_influence.tolist())
            made = llm_structured.forms(params, state, stats, sparsity, names)
            for name, form in made.items():
                m = llm_structured.measure(params, form["params"], state, heldout, seq)
                structured_runs.append({"form": name, "seed": seed, "removed": form["removed"], **m})
            if seed == 0:
                speed_forms = made
        n_blocks = len(llama.block_names(params))
        each_block = [ppl(llama.drop_blocks(params, [i])) for i in range(n_blocks)]

        sp = cfg["speed"]
        speed = []
        for name, form in {"dense": {"params": params}, **speed_forms}.items():
            print(f"llm: timing {name}", flush=True)
            row = {
                "form": name,
                "flop_ratio": llama.flops_per_token(params, seq) / llama.flops_per_token(form["params"], seq),
            }
            row.update(
                llm_structured.speed(
                    params, form["params"], state, splits["test"], seq, sp["batches"], sp["reps"]
                )
            )
            speed.append(row)
        print("llm: calibration cost (shipped model)", flush=True)
        cost = _cost(cfg["cost"], cfg["threads"])
    finally:
        torch.set_num_threads(threads)
    return {
        "model": info["model"],
        "weights_sha256": info.get("weights_sha256"),
        "seq_len": seq,
        "heldout_tokens": int(heldout.numel()) - 1,
        "dense_perplexity": dense,
        "dense_params": sum(x.numel() for x in tree.leaves(params)),
        "unstructured": unstructured,
        "structured": structured_runs,
        "block_influence": influence,
        "perplexity_with_block_dropped": each_block,
        "speed": speed,
        "cost_shipped": cost,
    }


def _structured(res: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per structured form: perplexity mean ± std over its seeds, its size and FLOP ratio (seed 0) and what
    it removed (``"removed"``: one description when every seed removed the same, else each with its seed count)."""
    out: dict[str, dict[str, Any]] = {}
    for r in res["structured"]:
        v = out.setdefault(r["form"], {"ppl": [], "what": [], **{k: r[k] for k in ("params", "flop_ratio")}})
        v["ppl"].append(r["perplexity"])
        v["what"].append(r["removed"])
    for v in out.values():
        v["mean"], v["std"] = mean_std(v["ppl"])
        v["seeds"] = len(v["ppl"])
        kinds = sorted(set(v["what"]))
        v["removed"] = (
            kinds[0]
            if len(kinds) == 1
            else ", ".join(
                f"{k} ({n} seed{'s' if n > 1 else ''})" for k in kinds for n in [v["what"].count(k)]
            )
        )
    return out


def analysis(res: dict[str, Any], checks: Checks) -> dict[str, Any]:
    """The perplexity cells, the structured forms' spread, and the checks of the published findings
    (each only where its cells were run)."""
    dense = res["dense_perplexity"]
    cells = llm_prune.summarise(res["unstructured"])
    found = llm_prune.findings(cells, dense)

    def ms(key: str) -> str:
        c = cells[key]
        return f"{c['mean']:.3f} ± {c['std']:.3f}" if c["seeds"] > 1 else f"{c['mean']:.3f}"

    for k, f in found.get("far_ahead_of_magnitude_at_50", {}).items():
        checks.add(
            "llm",
            f"{PAPER[k].split(' (')[0]} is far ahead of magnitude at 50% (its perplexity increase over dense is at "
            "most half of magnitude's)",
            f["holds"],
            f"dense {dense:.3f}; {k} {ms(k + ' 0.5')} (+{f['increase']:.3f}), magnitude {ms('magnitude 0.5')} "
            f"(+{f['magnitude_increase']:.3f}): {k}'s increase is {f['increase'] / f['magnitude_increase']:.2f} of magnitude's",
        )
    f = found.get("wanda_compared_over_the_layer_vs_magnitude_at_50")
    if f:
        checks.add(
            "llm",
            "Wanda's score compared over the whole layer (as magnitude is compared) beats magnitude at 50%",
            f["holds"],
            f"wanda-layer {ms('wanda-layer 0.5')}, wanda per row {ms('wanda 0.5')}, magnitude {ms('magnitude 0.5')}",
        )
    for k, f in found["2:4_hurts_more_than_50_unstructured"].items():
        checks.add(
            "llm",
            f"{PAPER[k].split(' (')[0]}: 2:4 costs more perplexity than 50% unstructured",
            f["holds"],
            f"50% {ms(k + ' 0.5')}, 2:4 {ms(k + ' 2:4')}",
        )
    for k, f in found["owl_helps_at_70"].items():
        checks.add(
            "llm",
            f"OWL's block sparsities give {PAPER[k].split(' (')[0]} a lower perplexity than uniform 70%",
            f["holds"],
            f"uniform {ms(k + ' 0.7')}, OWL {ms('owl+' + k + ' 0.7')}",
        )
    st = _structured(res)
    drop = res["perplexity_with_block_dropped"]
    if "blocks (BI)" in st:
        picks = [min(range(len(bi)), key=bi.__getitem__) for bi in res["block_influence"]]
        best = min(range(len(drop)), key=drop.__getitem__)
        bi_mean = [statistics.fmean(col) for col in zip(*res["block_influence"])]
        by_bi = sorted(range(len(bi_mean)), key=bi_mean.__getitem__)
        by_drop = sorted(range(len(drop)), key=drop.__getitem__)
        checks.add(
            "llm",
            "on every calibration seed, ShortGPT's lowest block influence picks the block whose removal hurts "
            "held-out perplexity least",
            all(p == best for p in picks),
            f"{sum(p == best for p in picks)} of {len(picks)} seeds pick block {best} (per seed: "
            + ", ".join(map(str, picks))
            + "); perplexity with block i dropped: "
            + ", ".join(f"{i}: {v:.3f}" for i, v in enumerate(drop))
            + f"; blocks by mean influence {by_bi}, by the perplexity their removal costs {by_drop}",
        )
    owl_recs = [r["owl"] for r in res["unstructured"] if "owl" in r]
    owl = None
    if owl_recs:
        ratios = [statistics.fmean(col) for col in zip(*(o["outlier_ratios"] for o in owl_recs))]
        spars = [statistics.fmean(col) for col in zip(*(o["block_sparsities"] for o in owl_recs))]
        owl = {"ratios": ratios, "sparsities": spars, "m": owl_recs[0]["m"], "lam": owl_recs[0]["lam"]}
    return {"cells": cells, "findings": found, "structured": st, "owl": owl}


def _cost_table(shipped: dict[str, Any], big: dict[str, Any] | None) -> str:
    """One row per run: seconds and peak MiB above the start, and both as ratios to the forward pass,
    for the shipped model and (when recorded) the 100M config."""
    mib = 2**20

    def cells(rows: dict[str, dict[str, Any]], run: str) -> list[str]:
        r, fwd = rows.get(run), rows.get("forward")
        if r is None or fwd is None:
            return ["", "", ""]
        return [f"{r['seconds']:.2f}", f"{r['seconds'] / fwd['seconds']:.1f}×",
                f"{r['peak_bytes'] / mib:.1f} ({r['peak_bytes'] / max(fwd['peak_bytes'], 1):.1f}×)"]  # fmt: skip

    a = {r["run"]: r for r in shipped["rows"]}
    b = {r["run"]: r for r in big["rows"]} if big else {}
    order = list(a) + [r for r in b if r not in a]
    head = ["run", "shipped: s", "× forward", "peak MiB (× forward)"]
    if big:
        head += ["100M: s", "× forward", "peak MiB (× forward)"]
    rows = [[run, *cells(a, run), *(cells(b, run) if big else [])] for run in order]
    return md_table(head, rows, "l" + "r" * (len(head) - 1))


def _read_100m() -> dict[str, Any] | None:
    """The 100M config's recorded cost (``bench/results/llm_calibration_cost.json``), with its machine."""
    if not COST_JSON.is_file():
        return None
    stored = json.loads(COST_JSON.read_text())
    big = next((r for r in stored.get("results", []) if r.get("model") == "100m"), None)
    return (
        None if big is None else {**big, "machine": stored.get("machine"), "threads": stored.get("threads")}
    )


def markdown(res: dict[str, Any], cfg: dict[str, Any], seeds: int, checks: Checks) -> str:
    """The three tables (perplexity, unstructured and structured; cost; speed) and what they show."""
    an = res["analysis"]
    cells, st = an["cells"], an["structured"]
    dense = res["dense_perplexity"]
    pats = cfg["patterns"]
    head = {"0.5": "50%", "0.7": "70%"}

    def cell(key: str) -> str:
        c = cells.get(key)
        if c is None:
            return ""
        return f"{c['mean']:.3f} ± {c['std']:.3f}" if c["seeds"] > 1 else f"{c['mean']:.3f}"

    methods = [m for m in PAPER if any(f"{m} {p}" in cells for p in pats)]
    rows = [["dense", "-", f"{dense:.3f}", *([""] * (len(pats) - 1))]]
    for m in methods:
        rows.append([PAPER[m], "no" if m == "magnitude" else "yes", *(cell(f"{m} {p}") for p in pats)])
    t1 = md_table(["method", "reads data", *(head.get(p, p) for p in pats)], rows, "ll" + "r" * len(pats))

    srows = [["nothing (dense)", "-", "-", "-", res["dense_params"], "1.00×", f"{dense:.3f}"]]
    for name, v in st.items():
        what, score = STRUCTURED_LABEL[name]
        reads = llm_structured.READS_DATA[name]
        ppl = (
            f"{v['mean']:.3f} ± {v['std']:.3f}"
            if v["seeds"] > 1
            else f"{v['mean']:.3f} (reads no data: one run)"
        )
        srows.append(
            [what, score, "yes" if reads else "no", v["removed"], v["params"], f"{v['flop_ratio']:.2f}×", ppl]
        )
    t2 = md_table(["removed", "score", "reads data", "units removed", "parameters", "FLOP ratio", "perplexity"],
                  srows, "lllrrrr")  # fmt: skip

    batches = cfg["speed"]["batches"]
    sh = ["form", "FLOP ratio"]
    for n in batches:
        sh += [f"B={n}: dense tok/s", f"B={n}: pruned tok/s", f"B={n}: speedup"]
    trows = []
    for r in res["speed"]:
        row = [
            r["form"] + (" (against itself: timing noise)" if r["form"] == "dense" else ""),
            f"{r['flop_ratio']:.2f}×",
        ]
        for n in batches:
            b = r[f"batch{n}"]
            row += [f"{b['dense_tokens_per_s']:.0f}", f"{b['tokens_per_s']:.0f}", f"{b['speedup']:.2f}×"]
        trows.append(row)
    t3 = md_table(sh, trows, "l" + "r" * (len(sh) - 1))
    shares = []
    for r in res["speed"]:
        if r["form"] != "dense":
            got = [r[f"batch{n}"]["speedup"] / r["flop_ratio"] for n in batches]
            shares.append(f"{r['form']} {min(got):.2f}–{max(got):.2f}")
    t3 += "\nSpeedup divided by the FLOP ratio (1 = all of the saved FLOPs turn into speed), over the batch sizes: "
    t3 += "; ".join(shares) + ".\n"

    shipped, big = res["cost_shipped"], res.get("cost_100m")
    cost_cfg = cfg["cost"]
    where = (
        "`llm_calibration_cost.run_model`, each run in a fresh process"
        if cost_cfg["fresh_process"]
        else "`llm_calibration_cost.child`, every run in the same process"
    )
    cost_src = (
        f"Shipped model: measured by this section ({where}), "
        f"{shipped['sequences']}×{shipped['seq_len']} calibration tokens, micro-batch {shipped['batch_size']}. "
    )
    if big:
        cost_src += (
            f"100M config ({big['parameters'] / 1e6:.1f}M parameters, random weights, dim 768, 16 blocks): **read from "
            f"`bench/results/llm_calibration_cost.json`**, not recomputed (about {fmt_s(sum(r['seconds'] for r in big['rows']))} "
            f"of runs), written by `OMP_NUM_THREADS=1 python bench/llm_calibration_cost.py --only 100m` on "
            f"{machine_line(big.get('machine'))}; {big['sequences']}×{big['seq_len']} calibration tokens. "
        )
    else:
        cost_src += "The 100M config's record (`bench/results/llm_calibration_cost.json`) is missing. "

    owl = an["owl"]
    owl_text = ""
    if owl:
        lo, hi = min(owl["ratios"]), max(owl["ratios"])
        owl_text = (
            f"OWL's outlier ratios (the share of Wanda scores above {owl['m']:g}× the block's mean, dense model, mean "
            f"over seeds) are {', '.join(f'{100 * r:.2f}%' for r in owl['ratios'])} for blocks 0–{len(owl['ratios']) - 1}: "
            f"the most outlier-heavy block holds {hi / lo:.2f}× the share of the least, a spread of "
            f"{100 * (hi - lo):.2f} points that OWL stretches to the full ±λ = ±{owl['lam']:g}, giving block "
            f"sparsities {', '.join(f'{100 * s:.0f}%' for s in owl['sparsities'])}. Yin et al. note that OWL gains "
            "most on larger models, whose outlier features concentrate in some layers; on this model the allocation "
            "follows the small differences above.\n"
        )
    wl = cells.get("wanda-layer 0.5")
    wanda_text = ""
    if wl and "wanda 0.5" in cells and "magnitude 0.5" in cells:
        wanda_text = (
            "Sun et al. trace Wanda's edge over magnitude to the few input features of very large activation that "
            "large language models develop (Dettmers et al. 2022). Here Wanda, comparing weights within each output "
            f"row as the paper does, gives {cell('wanda 0.5')} at 50% against magnitude's {cell('magnitude 0.5')}; "
            f"the same scores compared over the whole layer, as magnitude is, give {cell('wanda-layer 0.5')}: on this "
            "model it is the per-row comparison that puts Wanda behind magnitude, and weighting |W| by the input norms "
            "helps once the comparison is layer-wide (checked above).\n"
        )
    return "\n".join(
        [
            f"**Perplexity, one-shot unstructured and N:M** (mean ± sample std over {seeds} calibration seeds; "
            "magnitude reads no data and runs once):\n",
            t1,
            f"**Perplexity, structured, {100 * cfg['structured_sparsity']:.0f}% removed** (over the same {seeds} "
            "calibration seeds; the magnitude scores read no data and run once). Heads: a KV head with its query heads, "
            "the lowest-scored units over all blocks; MLP channels: the lowest in every block; blocks: the lowest "
            "block influence (1 − cosine between a block's input and output), dropped. Models compacted:\n",
            t2,
            "Perplexity with one block dropped: "
            + ", ".join(f"block {i} {v:.3f}" for i, v in enumerate(res["perplexity_with_block_dropped"]))
            + "; block influence, mean over seeds: "
            + ", ".join(f"{statistics.fmean(c):.3f}" for c in zip(*res["block_influence"]))
            + ".\n",
            "**Calibration cost, as ratios to one forward pass over the calibration set** (wall seconds; peak "
            "resident memory above what the process held before the call, so it counts stored block outputs, "
            "statistics and the pruned copy of the weights, not the loaded model). " + cost_src + "\n",
            _cost_table(shipped, big),
            f"**Speed of the compacted structured forms** (seed 0's forms; eager forward passes over held-out windows "
            f"of {res['seq_len']} bytes, dense and pruned timed in alternation, median of {cfg['speed']['reps']} calls, "
            f"{cfg['threads']} thread):\n",
            t3,
            "**Checked.**\n",
            checks.bullets("llm"),
            wanda_text,
            owl_text,
        ]
    )


def config(ctx: Context) -> dict[str, Any]:
    """The settings the cache is keyed on: the section's, the seeds and the shipped weights' hash."""
    _, _, info = llama.load_pretrained()
    return {"seeds": ctx.seeds, "weights_sha256": info.get("weights_sha256"), **ctx.settings["llm"]}


def build(ctx: Context) -> dict[str, Any]:
    """The section's results (cached or computed), with its ``analysis`` and ``markdown``; the 100M
    config's cost read from ``bench/results/llm_calibration_cost.json``."""
    cfg, seeds = ctx.settings["llm"], ctx.seeds
    res = cached(ctx, "llm", config(ctx), lambda: runs(cfg, seeds, ctx.work / "llm"))
    res["cost_100m"] = _read_100m()
    res["analysis"] = analysis(res, ctx.checks)
    res["markdown"] = markdown(res, cfg, seeds, ctx.checks)
    return res


def chapter(ctx: Context, res: dict[str, Any]) -> list[str]:
    """The section's part of ``results.md``: heading, setup, tables, checks."""
    m = res["model"]
    return [
        "## 5. Pruning a language model\n",
        f"One-shot, post-training pruning of the shipped LLaMA-style model (`pure_prune.models.llama.load_pretrained()`: "
        f"{m['n_layers']} blocks, {m['dim']} wide, {m['n_heads']} query and {m['n_kv_heads']} key/value heads, byte level, "
        "trained by `bench/train_llama.py` on Python's pydoc topics). The unstructured and N:M methods prune every "
        "linear layer (attention q/k/v/o, MLP gate/up/down) block by block through `pure_prune.llm.calibrate.prune`, "
        "on the outputs of the already-pruned blocks; embeddings, norms and the tied head stay dense. Calibration: "
        f"{ctx.settings['llm']['sequences']} random windows of {res['seq_len']} bytes from the train split (the first "
        "90% of the text), one draw per seed (`calibrate.sample_windows`, key = seed), the same draws for every method. "
        f"Held-out: perplexity over the test split ({res['heldout_tokens']:,} predicted bytes in windows of "
        f"{res['seq_len']}). OWL uses the paper's M = 5 and λ = 0.08. Computed on {machine_line(res.get('machine'))} "
        f"in {fmt_s(res['wall_s'])}; the runs are those of `bench/llm_prune.py`, `bench/llm_structured.py` and "
        "`bench/llm_calibration_cost.py`. The papers measure LLaMA and OPT models of 125M to 65B parameters on "
        "WikiText-2; this model is far smaller. One cell at a time, the same methods run from the command line "
        "(`pure-prune llm --model shipped --method sparsegpt --sparsity 2:4 --calib 32 --seeds 5`), also on a local "
        "transformers LLaMA, Qwen2 or OPT checkpoint with its own tokenizer (`--model <folder>`, `pure_prune.llm.hf`).\n",
        res["markdown"],
    ]


def headlines(res: dict[str, Any]) -> list[str]:
    """The summary's line: dense against each method at 50%, and the 25% blocks form's perplexity and speed."""
    cells = res["analysis"]["cells"]
    parts = [
        f"{PAPER[k].split(' (')[0]} {cells[f'{k} 0.5']['mean']:.2f}"
        for k in ("magnitude", "wanda", "sparsegpt")
        if f"{k} 0.5" in cells
    ]
    out = f"**Language model (shipped LLaMA-style, byte level):** held-out perplexity {res['dense_perplexity']:.2f} dense"
    if parts:
        out += "; at 50%: " + ", ".join(parts)
    blk = res["analysis"]["structured"].get("blocks (BI)")
    spd = next((r for r in res["speed"] if r["form"] == "blocks (BI)"), None)
    if blk and spd:
        b = max((k for k in spd if k.startswith("batch")), key=lambda k: int(k[5:]))
        out += (
            f"; one block in four dropped by block influence: {blk['mean']:.2f}, {spd[b]['speedup']:.2f}× tokens/s "
            f"at {spd['flop_ratio']:.2f}× fewer FLOPs ({b.replace('batch', 'batch ')})"
        )
    return [out + "."]
