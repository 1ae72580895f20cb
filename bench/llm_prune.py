"""Perplexity of the shipped LLaMA-style model after one-shot pruning: magnitude, Wanda, SparseGPT, OWL.

Model: ``pure_prune.models.llama.load_pretrained()`` (byte level, trained by ``bench/train_llama.py``
on Python's pydoc topics). Calibration: ``--sequences`` random windows of the model's context from
the *train* split, drawn with keys ``0 .. seeds-1`` (``pure_prune.llm.calibrate.sample_windows``);
held-out: the *test* split (the last 5% of the corpus), mean next-byte cross-entropy over its
non-overlapping windows, as perplexity. Each method runs through the sequential block-by-block
engine (``pure_prune.llm.calibrate.prune``) on every linear layer of every block
(attn.q/k/v/o, mlp.gate/up/down; embeddings, norms and the tied head stay dense), at 50%
unstructured, 2:4 and 4:8, and at 70% uniform and with OWL's block sparsities (M = 5, λ = 0.08);
``wanda-layer`` is Wanda's score compared over the whole layer (as magnitude is) instead of per row.
Magnitude reads no data: one run, no spread over seeds.

Prints a Markdown table (mean ± std over the calibration seeds) and the published findings checked
against it; writes ``bench/results/llm_prune.json`` with every run's record.

    OMP_NUM_THREADS=1 python bench/llm_prune.py            # about 5 minutes on 2 cores
    python bench/llm_prune.py --seeds 2 --sequences 8      # quick look
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write_json  # noqa: E402
from train_llama import corpus, evaluate  # noqa: E402

from pure_prune.llm import blocks, calibrate, magnitude, owl, sparsegpt, wanda  # noqa: E402
from pure_prune.models import llama  # noqa: E402

METHODS = {"magnitude": magnitude.METHOD, "wanda": wanda.METHOD, "sparsegpt": sparsegpt.METHOD}
EXTRA = {"wanda-layer": wanda.method("layer")}  # Wanda's scores compared over the layer, as magnitude
PATTERNS = ("0.5", "2:4", "4:8", "0.7")


def progress_bar(label: str):
    """A text progress bar on stderr, as the engine's ``progress`` callback."""

    def show(done: int, total: int, what: str) -> None:
        filled = int(20 * done / total)
        end = "\n" if done == total else ""
        print(f"\r  {label:<24} [{'#' * filled}{'.' * (20 - filled)}] {done}/{total} {what:<40}", end=end,
              file=sys.stderr, flush=True)  # fmt: skip

    return show


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--sequences", type=int, default=32, help="calibration sequences per seed")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    params, state, info = llama.load_pretrained()
    seq_len = int(info["model"]["context"])
    _, splits = corpus()
    heldout = splits["test"]
    model = blocks.from_llama(llama, state)

    def ppl(p) -> float:
        return evaluate(p, state, heldout, seq_len)["perplexity"]

    t0 = time.perf_counter()
    dense = ppl(params)
    eval_seconds = time.perf_counter() - t0
    print(f"dense held-out perplexity {dense:.3f} ({eval_seconds:.1f} s per evaluation)", file=sys.stderr)

    runs: list[dict] = []
    configs = [(m, p, False) for p in PATTERNS for m in [*METHODS, *([] if ":" in p else EXTRA)]]
    configs += [("wanda", "0.7", True), ("sparsegpt", "0.7", True)]
    for name, pattern, use_owl in configs:
        seeds = [0] if name == "magnitude" else list(range(args.seeds))
        for seed in seeds:
            calib = calibrate.sample_windows(splits["train"], args.sequences, seq_len, key=seed)
            settings = {"data": "pydoc topics, train split", "key": seed, "sequences": args.sequences,
                        "seq_len": seq_len}  # fmt: skip
            label = f"{'owl+' if use_owl else ''}{name} {pattern} seed {seed}"
            opts = dict(batch_size=args.batch_size, errors=True, calibration=settings,
                        progress=None if args.quiet else progress_bar(label))  # fmt: skip
            t = time.perf_counter()
            if use_owl:
                res = owl.prune(model, params, calib, METHODS[name], float(pattern), m=5.0, lam=0.08, **opts)
            else:
                res = calibrate.prune(model, params, calib, {**METHODS, **EXTRA}[name], pattern, **opts)
            seconds = time.perf_counter() - t
            rel = [r["relative_error"] for r in res.record["layers"]]
            runs.append({
                "method": ("owl+" if use_owl else "") + name, "pattern": pattern, "seed": seed,
                "perplexity": ppl(res.params), "seconds": seconds,
                "mean_relative_error": statistics.fmean(rel), "record": res.record,
            })  # fmt: skip

    def cell(method: str, pattern: str) -> tuple[float, float, int] | None:
        xs = [r["perplexity"] for r in runs if r["method"] == method and r["pattern"] == pattern]
        return (*mean_std(xs), len(xs)) if xs else None

    summary = {}
    rows = [["dense", f"{dense:.3f}", "", "", "", ""]]
    for method in ("magnitude", "wanda", "wanda-layer", "sparsegpt", "owl+wanda", "owl+sparsegpt"):
        row = [method]
        for pattern in PATTERNS:
            c = cell(method, pattern)
            if c is None:
                row.append("")
                continue
            summary[f"{method} {pattern}"] = {"mean": c[0], "std": c[1], "seeds": c[2]}
            row.append(f"{c[0]:.3f} ± {c[1]:.3f}" if c[2] > 1 else f"{c[0]:.3f}")
        err = [r["mean_relative_error"] for r in runs if r["method"] == method and r["pattern"] == "0.5"]
        row.append(f"{statistics.fmean(err):.4f}" if err else "")
        rows.append(row)
    title = (
        f"Shipped llama ({info['model']}), held-out perplexity (test split, {len(heldout)} bytes), "
        f"mean ± std over {args.seeds} calibration seeds of {args.sequences}x{seq_len} tokens"
    )
    headers = ["method", "50%", "2:4", "4:8", "70%", "rel. error at 50%"]
    print(table(title, headers, rows))

    def m(key: str) -> float:
        return summary[key]["mean"]

    findings = {
        "sparsegpt_and_wanda_far_ahead_of_magnitude_at_50": {
            "holds": m("sparsegpt 0.5") < m("magnitude 0.5") and m("wanda 0.5") < m("magnitude 0.5"),
            "perplexity_increase_over_dense": {k: m(f"{k} 0.5") - dense for k in METHODS},
        },
        "wanda_compared_over_the_layer_vs_magnitude_at_50": {
            "holds": m("wanda-layer 0.5") < m("magnitude 0.5"),
            "wanda (per row)": m("wanda 0.5"),
            "wanda-layer": m("wanda-layer 0.5"),
            "magnitude": m("magnitude 0.5"),
        },  # fmt: skip
        "2:4_hurts_more_than_50_unstructured": {
            k: {"holds": m(f"{k} 2:4") > m(f"{k} 0.5"), "50%": m(f"{k} 0.5"), "2:4": m(f"{k} 2:4")}
            for k in METHODS
        },
        "owl_helps_at_70": {
            k: {
                "holds": m(f"owl+{k} 0.7") < m(f"{k} 0.7"),
                "uniform": m(f"{k} 0.7"),
                "owl": m(f"owl+{k} 0.7"),
            }
            for k in ("wanda", "sparsegpt")
        },
    }
    for name, f in findings.items():
        print(f"{name}: {f}")
    payload = {
        "model": info["model"], "dense_perplexity": dense, "seq_len": seq_len,
        "heldout_tokens": len(heldout), "seeds": args.seeds, "sequences": args.sequences,
        "summary": summary, "findings": findings, "runs": runs,
        "dense_bits_per_byte": math.log(dense) / math.log(2),
    }  # fmt: skip
    print(f"wrote {write_json('llm_prune', payload, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
