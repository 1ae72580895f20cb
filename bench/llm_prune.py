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
against it; writes ``bench/results/llm_prune.json`` with every run's record. The functions that run
one method and summarise the runs (:func:`configs`, :func:`run_one`, :func:`summarise`,
:func:`findings`) are shared with ``bench/reproduce_sections/llm.py``.

    OMP_NUM_THREADS=1 python bench/llm_prune.py            # about 5 minutes on 2 cores
    python bench/llm_prune.py --seeds 2 --sequences 8      # quick look
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write_json  # noqa: E402
from train_llama import corpus, evaluate  # noqa: E402

from pure_prune.llm import blocks, calibrate, magnitude, owl, sparsegpt, wanda  # noqa: E402
from pure_prune.models import llama  # noqa: E402

METHODS = {"magnitude": magnitude.METHOD, "wanda": wanda.METHOD, "sparsegpt": sparsegpt.METHOD}
EXTRA = {"wanda-layer": wanda.method("layer")}  # Wanda's scores compared over the layer, as magnitude
PATTERNS = ("0.5", "2:4", "4:8", "0.7")
OWL_M, OWL_LAM = 5.0, 0.08  # the OWL paper's outlier threshold and spread for LLaMA
ROW_ORDER = ("magnitude", "wanda", "wanda-layer", "sparsegpt", "owl+wanda", "owl+sparsegpt")


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


def configs(
    patterns: Sequence[str] = PATTERNS,
    methods: Sequence[str] = tuple(METHODS),
    extra: Sequence[str] = tuple(EXTRA),
    owl_methods: Sequence[str] = ("wanda", "sparsegpt"),
    owl_sparsity: str = "0.7",
) -> list[tuple[str, str]]:
    """``(method, pattern)`` of every run: each of ``methods`` at each pattern, each of ``extra`` at the
    unstructured ones, then ``owl+<m>`` for each of ``owl_methods`` at ``owl_sparsity``."""
    out = [(m, p) for p in patterns for m in [*methods, *([] if ":" in p else extra)]]
    return out + [(f"owl+{m}", owl_sparsity) for m in owl_methods]


def seeds_of(method: str, seeds: int) -> list[int]:
    """The calibration seeds a method runs with: magnitude reads no data, so one."""
    return [0] if method == "magnitude" else list(range(seeds))


def run_one(
    model: blocks.BlockModel,
    params: Any,
    calib: torch.Tensor,
    method: str,
    pattern: str,
    ppl: Callable[[Any], float],
    **engine: Any,
) -> dict[str, Any]:
    """Prune ``params`` one-shot with ``method`` (a key of :data:`METHODS` or :data:`EXTRA`, or
    ``owl+wanda`` / ``owl+sparsegpt``) at ``pattern`` on the calibration tokens ``calib`` ``(N, T)``;
    ``engine``: ``calibrate.prune`` options. Returns the run's record: held-out perplexity
    (``ppl(pruned params)``), pruning seconds, mean relative layer error and the engine's record."""
    t = time.perf_counter()
    if method.startswith("owl+"):
        base = METHODS[method.removeprefix("owl+")]
        res = owl.prune(
            model, params, calib, base, float(pattern), m=OWL_M, lam=OWL_LAM, errors=True, **engine
        )
    else:
        res = calibrate.prune(
            model, params, calib, {**METHODS, **EXTRA}[method], pattern, errors=True, **engine
        )
    seconds = time.perf_counter() - t
    rel = [r["relative_error"] for r in res.record["layers"]]
    return {
        "method": method, "pattern": pattern, "perplexity": ppl(res.params), "seconds": seconds,
        "mean_relative_error": statistics.fmean(rel), "record": res.record,
    }  # fmt: skip


def summarise(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``{"<method> <pattern>": {"mean", "std", "seeds"}}`` of the runs' perplexities."""
    groups: dict[str, list[float]] = {}
    for r in runs:
        groups.setdefault(f"{r['method']} {r['pattern']}", []).append(r["perplexity"])
    return {k: dict(zip(("mean", "std"), mean_std(v)), seeds=len(v)) for k, v in groups.items()}


def findings(summary: dict[str, dict[str, float]], dense: float) -> dict[str, Any]:
    """The published findings against the summary (those whose cells were run): SparseGPT and Wanda far
    ahead of magnitude at 50% (a perplexity increase over dense at most half of magnitude's), Wanda
    compared over the layer against magnitude, 2:4 above 50%, OWL below uniform at 70%."""

    def m(key: str) -> float | None:
        return summary[key]["mean"] if key in summary else None

    out: dict[str, Any] = {}
    mag = m("magnitude 0.5")
    if mag is not None:
        out["far_ahead_of_magnitude_at_50"] = {
            k: {"holds": (m(f"{k} 0.5") - dense) <= 0.5 * (mag - dense), "increase": m(f"{k} 0.5") - dense,
                "magnitude_increase": mag - dense}
            for k in ("sparsegpt", "wanda") if m(f"{k} 0.5") is not None
        }  # fmt: skip
        if m("wanda-layer 0.5") is not None:
            out["wanda_compared_over_the_layer_vs_magnitude_at_50"] = {
                "holds": m("wanda-layer 0.5") < mag, "wanda (per row)": m("wanda 0.5"),
                "wanda-layer": m("wanda-layer 0.5"), "magnitude": mag,
            }  # fmt: skip
    out["2:4_hurts_more_than_50_unstructured"] = {
        k: {"holds": m(f"{k} 2:4") > m(f"{k} 0.5"), "50%": m(f"{k} 0.5"), "2:4": m(f"{k} 2:4")}
        for k in METHODS
        if m(f"{k} 2:4") is not None and m(f"{k} 0.5") is not None
    }
    out["owl_helps_at_70"] = {
        k: {"holds": m(f"owl+{k} 0.7") < m(f"{k} 0.7"), "uniform": m(f"{k} 0.7"), "owl": m(f"owl+{k} 0.7")}
        for k in ("wanda", "sparsegpt")
        if m(f"owl+{k} 0.7") is not None and m(f"{k} 0.7") is not None
    }
    return out


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
    for name, pattern in configs():
        for seed in seeds_of(name, args.seeds):
            calib = calibrate.sample_windows(splits["train"], args.sequences, seq_len, key=seed)
            settings = {"data": "pydoc topics, train split", "key": seed, "sequences": args.sequences,
                        "seq_len": seq_len}  # fmt: skip
            bar = None if args.quiet else progress_bar(f"{name} {pattern} seed {seed}")
            rec = run_one(model, params, calib, name, pattern, ppl, batch_size=args.batch_size,
                          calibration=settings, progress=bar)  # fmt: skip
            runs.append({**rec, "seed": seed})

    summary = summarise(runs)
    rows = [["dense", f"{dense:.3f}", "", "", "", ""]]
    for method in ROW_ORDER:
        row = [method]
        for pattern in PATTERNS:
            c = summary.get(f"{method} {pattern}")
            if c is None:
                row.append("")
                continue
            row.append(f"{c['mean']:.3f} ± {c['std']:.3f}" if c["seeds"] > 1 else f"{c['mean']:.3f}")
        err = [r["mean_relative_error"] for r in runs if r["method"] == method and r["pattern"] == "0.5"]
        row.append(f"{statistics.fmean(err):.4f}" if err else "")
        rows.append(row)
    title = (
        f"Shipped llama ({info['model']}), held-out perplexity (test split, {len(heldout)} bytes), "
        f"mean ± std over {args.seeds} calibration seeds of {args.sequences}x{seq_len} tokens"
    )
    headers = ["method", "50%", "2:4", "4:8", "70%", "rel. error at 50%"]
    print(table(title, headers, rows))

    found = findings(summary, dense)
    for name, f in found.items():
        print(f"{name}: {f}")
    payload = {
        "model": info["model"], "dense_perplexity": dense, "seq_len": seq_len,
        "heldout_tokens": len(heldout), "seeds": args.seeds, "sequences": args.sequences,
        "summary": summary, "findings": found, "runs": runs,
        "dense_bits_per_byte": math.log(dense) / math.log(2),
    }  # fmt: skip
    print(f"wrote {write_json('llm_prune', payload, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
