"""Global unstructured selection at 10M and 100M parameters: time and peak memory.

Each case runs in a fresh subprocess so its peak resident memory (``ru_maxrss``) is its own; the
figure reported is the peak above the memory held by the scores themselves. Peers in the same run:
a full ``torch.cat`` + ``torch.argsort`` (the textbook way) and ``torch.topk`` over the
concatenation (what ``torch.nn.utils.prune.global_unstructured`` does internally).

    python bench/selection.py [--sizes 10e6 100e6] [--reps 3] [--out bench/results/selection.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

LEAVES = 10


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _case(method: str, n: int, reps: int) -> dict:
    from pure_prune import select

    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    per = n // LEAVES
    scores = {f"layer{i:02d}": {"weight": torch.rand(per, generator=g)} for i in range(LEAVES)}
    leaves = [scores[k]["weight"] for k in scores]
    k = round(0.8 * per * LEAVES)
    base = _rss_mib()

    def ours():
        return select.unstructured(scores, 0.8)

    def sort():
        flat = torch.cat(leaves)
        order = torch.argsort(flat, stable=True)
        keep = torch.ones_like(flat, dtype=torch.bool)
        keep[order[:k]] = False
        return keep.split([x.numel() for x in leaves])

    def topk():
        flat = torch.cat(leaves)
        idx = torch.topk(flat, k, largest=False).indices
        keep = torch.ones_like(flat, dtype=torch.bool)
        keep[idx] = False
        return keep.split([x.numel() for x in leaves])

    fn = {"pure_prune": ours, "cat+argsort": sort, "cat+topk (torch.nn.utils.prune)": topk}[method]
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        del out
    return {
        "method": method,
        "n": n,
        "seconds": statistics.median(times),
        "peak_extra_mib": _rss_mib() - base,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", type=float, default=[10e6, 100e6])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default="bench/results/selection.json")
    ap.add_argument("--child", nargs=3, metavar=("METHOD", "N", "REPS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_case(args.child[0], int(args.child[1]), int(args.child[2]))))
        return
    rows = []
    for n in (int(s) for s in args.sizes):
        for method in ("pure_prune", "cat+argsort", "cat+topk (torch.nn.utils.prune)"):
            res = subprocess.run(
                [sys.executable, __file__, "--child", method, str(n), str(args.reps)],
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    print(f"{'params':>12} {'method':<34} {'seconds':>9} {'peak MiB over scores':>21} {'time vs ours':>12}")
    for r in rows:
        ours = next(x for x in rows if x["n"] == r["n"] and x["method"] == "pure_prune")
        print(
            f"{r['n']:>12,} {r['method']:<34} {r['seconds']:>9.3f} {r['peak_extra_mib']:>21.0f}"
            f" {r['seconds'] / ours['seconds']:>11.2f}x"
        )
    meta = {
        "machine": platform.processor() or platform.machine(),
        "cpus": torch.get_num_threads(),
        "torch": torch.__version__,
        "rows": rows,
    }
    with open(args.out, "w") as f:
        json.dump(meta, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
