"""Calibration time and peak memory of each one-shot LLM method, as ratios to one forward pass.

Two models: the shipped LLaMA-style model (``pure_prune.models.llama.load_pretrained()``) and a
100M-parameter random-weight config of the same family (dim 768, 16 blocks, 24 heads over 8 KV
heads, MLP 2048, byte vocabulary: 100.7M parameters). For each, the reference is one forward pass
of the whole model over the calibration set (``llama.apply`` in the engine's micro-batches, no
gradient); each method runs through ``pure_prune.llm.calibrate.prune`` (the sequential engine) on
the same calibration set. Time is wall-clock seconds; memory is the process's peak resident set
above what it held before the call (Linux ``VmHWM`` after resetting it through
``/proc/self/clear_refs``), so it counts the stored block outputs, statistics, temporaries and the
returned pruned copy of the weights, and not the model that was already loaded. Every run (the
forward pass included) is measured in a fresh Python process, so no run reuses memory an earlier
one freed.

The engine's own estimate (see ``pure_prune.llm.calibrate``): ``2·N·T·D`` stored activations plus one
block's statistics (``Σ in²`` over its distinct linear inputs, float64) plus one micro-batch's
activations inside a block; printed next to the measurement.

    OMP_NUM_THREADS=1 python bench/llm_calibration_cost.py                 # both models
    python bench/llm_calibration_cost.py --only shipped
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write_json  # noqa: E402
from train_llama import corpus  # noqa: E402

from pure_prune.llm import blocks, calibrate, magnitude, owl, sparsegpt, wanda  # noqa: E402
from pure_prune.models import llama  # noqa: E402

CONFIG_100M = {"vocab": 256, "dim": 768, "n_layers": 16, "n_heads": 24, "n_kv_heads": 8, "ffn": 2048,
               "context": 128}  # fmt: skip
RUNS = [
    ("magnitude 50%", lambda m, p, c, o: calibrate.prune(m, p, c, magnitude.METHOD, 0.5, **o)),
    ("wanda 50%", lambda m, p, c, o: calibrate.prune(m, p, c, wanda.METHOD, 0.5, **o)),
    ("sparsegpt 50%", lambda m, p, c, o: calibrate.prune(m, p, c, sparsegpt.METHOD, 0.5, **o)),
    ("sparsegpt 2:4", lambda m, p, c, o: calibrate.prune(m, p, c, sparsegpt.METHOD, "2:4", **o)),
    ("owl+wanda 70%", lambda m, p, c, o: owl.prune(m, p, c, wanda.METHOD, 0.7, **o)),
]


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(fn) -> tuple[float, int]:
    """``(seconds, peak resident bytes above the start)`` of ``fn()`` (its result dropped)."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    start = _status_kib("VmRSS")
    t = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t
    peak = _status_kib("VmHWM")
    del out
    gc.collect()
    return seconds, (peak - start) * 1024


def engine_estimate(params, n: int, t: int, batch: int) -> int:
    """Bytes the engine is estimated to hold: 2·N·T·D stored floats, the largest block's float64 statistics
    (X Xᵀ of its four distinct inputs) and one micro-batch inside a block (a rough 12 (B·T·max in))."""
    blk = params["blocks"]["0"]
    d = params["embed"]["weight"].shape[1]
    ins = [blk["attn"]["q"]["weight"].shape[1], blk["attn"]["o"]["weight"].shape[1],
           blk["mlp"]["gate"]["weight"].shape[1], blk["mlp"]["down"]["weight"].shape[1]]  # fmt: skip
    return 2 * n * t * d * 4 + sum(i * i for i in ins) * 8 + 12 * batch * t * max(ins) * 4


def load(name: str, sequences: int) -> tuple[dict, dict, torch.Tensor]:
    """``(params, state, calibration tokens)`` of ``"shipped"`` or ``"100m"`` (windows of the train split, key 0)."""
    _, splits = corpus()
    if name == "shipped":
        params, state, info = llama.load_pretrained()
        ctx = int(info["model"]["context"])
    else:
        params, state = llama.init(0, **CONFIG_100M)
        ctx = CONFIG_100M["context"]
    return params, state, calibrate.sample_windows(splits["train"], sequences, ctx, key=0)


def child(name: str, run: str, sequences: int, batch: int) -> dict:
    """Measure one run in this (fresh) process; ``run`` is ``"forward"`` or a label of :data:`RUNS`."""
    params, state, calib = load(name, sequences)
    model = blocks.from_llama(llama, state)
    if run == "forward":

        def fn():
            with torch.no_grad():
                return [llama.apply(params, state, calib[i : i + batch], train=False)[0].sum()
                        for i in range(0, len(calib), batch)]  # fmt: skip
    else:
        prune = dict(RUNS)[run]

        def fn():
            return prune(model, params, calib, {"batch_size": batch})

    seconds, peak = measure(fn)
    return {
        "run": run, "seconds": seconds, "peak_bytes": peak,
        "parameters": sum(x.numel() for x in torch.utils._pytree.tree_leaves(params)),
        "sequences": int(calib.shape[0]), "seq_len": int(calib.shape[1]), "batch_size": batch,
        "engine_estimate_bytes": engine_estimate(params, calib.shape[0], calib.shape[1], batch),
    }  # fmt: skip


def run_model(name: str, sequences: int, batch: int, threads: int) -> dict:
    """Every run of ``name``, each in its own process; ratios to the forward pass."""
    rows = []
    for run in ["forward", *(label for label, _ in RUNS)]:
        print(f"  {name}: {run}", file=sys.stderr, flush=True)
        cmd = [sys.executable, __file__, "--child", name, run, "--threads", str(threads),
               "--batch-size", str(batch), "--child-sequences", str(sequences)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"{name} {run} failed: {out.stderr[-2000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    fwd = rows[0]
    for r in rows:
        r["time_ratio"] = r["seconds"] / fwd["seconds"]
        r["memory_ratio"] = r["peak_bytes"] / max(fwd["peak_bytes"], 1)
    first = rows[0]
    return {
        "model": name, "parameters": first["parameters"], "param_bytes": 4 * first["parameters"],
        "sequences": first["sequences"], "seq_len": first["seq_len"], "batch_size": batch,
        "engine_estimate_bytes": first["engine_estimate_bytes"], "rows": rows,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=["shipped", "100m"], default=None)
    ap.add_argument("--sequences", type=int, default=32, help="calibration sequences (shipped model)")
    ap.add_argument("--sequences-100m", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", nargs=2, metavar=("MODEL", "RUN"), help=argparse.SUPPRESS)
    ap.add_argument("--child-sequences", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(*args.child, args.child_sequences, args.batch_size)))
        return 0
    results = []
    if args.only in (None, "shipped"):
        results.append(run_model("shipped", args.sequences, args.batch_size, args.threads))
    if args.only in (None, "100m"):
        results.append(run_model("100m", args.sequences_100m, args.batch_size, args.threads))
    for res in results:
        mib = 2**20
        title = (
            f"{res['model']} ({res['parameters'] / 1e6:.1f}M parameters, {res['param_bytes'] / mib:.0f} MiB), "
            f"{res['sequences']}x{res['seq_len']} calibration tokens, micro-batch {res['batch_size']}; "
            f"engine estimate {res['engine_estimate_bytes'] / mib:.1f} MiB + the pruned copy of the weights"
        )
        rows = [[r["run"], f"{r['seconds']:.2f}", f"{r['time_ratio']:.1f}x", f"{r['peak_bytes'] / mib:.1f}",
                 f"{r['memory_ratio']:.1f}x"] for r in res["rows"]]  # fmt: skip
        print(
            table(
                title, ["run", "seconds", "time / forward", "peak MiB above start", "memory / forward"], rows
            )
        )
    print(
        f"wrote {write_json('llm_calibration_cost', {'threads': args.threads, 'results': results}, args.out)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
