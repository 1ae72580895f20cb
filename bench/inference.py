"""Inference speed from sparsity: dense vs masked vs compacted (structured), dense vs CSR (unstructured).

1. Structured: an MLP 784-1024-1024-10 (batch 256) and Conv-4 (width 64, 32x32, batch 64), eval
   mode under ``torch.no_grad``, at 25/50/75% of the units of every hidden layer removed by
   ``select.channels``. Peers: the dense model, the masked model (``mask.apply``: same shapes,
   zeros) and ``compact.compact``'s smaller model, timed interleaved. The limit is the FLOP ratio
   dense/compacted, counted by ``torch.utils.flop_counter.FlopCounterMode``; ``efficiency`` is the
   measured speedup over that ratio. ``compact`` stores convolution weights channels_last
   (``compact.to_channels_last``); for Conv-4 the same run also times the dense model in that
   layout and the compacted one in the input's NCHW layout (``channels_last=False``), so
   ``efficiency_same_layout`` (compacted / dense, both channels_last) and
   ``efficiency_nchw`` (both NCHW, the layout compact used before) compare like with like.
2. Unstructured: a 1024x1024 linear, batch 64, at 50/90/95/99% random sparsity: dense
   ``F.linear``; ``F.linear`` with a CSR weight as torch ships it; and ``compact.csr_apply``'s kernel
   (``addmm`` with the sparse weight on the left). Then ``compact.measure_crossover`` on this machine.

    python bench/inference.py [--reps 30]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, setup_threads, table, time_interleaved, write_json  # noqa: E402

from pure_prune import compact, mask, rng, select, tree  # noqa: E402
from pure_prune import models as model_registry  # noqa: E402

CHANNEL_SPARSITIES = (0.25, 0.5, 0.75)
CSR_SPARSITIES = (0.5, 0.9, 0.95, 0.99)


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def structured(name: str, reps: int) -> list[dict]:
    if name == "mlp":
        spec = model_registry.get("mlp")
        params, state = spec.init(0, sizes=(784, 1024, 1024, 10))
        x = rng.normal(1, (256, 784))
    else:
        spec = model_registry.get("conv4")
        params, state = spec.init(0, width=64)
        x = rng.normal(1, (64, 3, 32, 32))
    groups = spec.groups(params)
    out = []
    for s in CHANNEL_SPARSITIES:
        masks = select.channels(tree.map(torch.abs, params), s, groups)
        masked = mask.apply(params, masks)
        small_p, small_s, _, _ = compact.compact(params, state, masks, groups)
        conv = name == "conv4"
        with torch.no_grad():
            want = spec.apply(masked, state, x, train=False)[0]
            got = spec.apply(small_p, small_s, x, train=False)[0]
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
            runs = {
                "dense": lambda: spec.apply(params, state, x, train=False),
                "masked": lambda masked=masked: spec.apply(masked, state, x, train=False),
                "compacted": lambda p=small_p, st=small_s: spec.apply(p, st, x, train=False),
            }
            if conv:
                dense_cl = compact.to_channels_last(params)
                small_nchw = compact.compact(params, state, masks, groups, channels_last=False)[0]
                runs["dense channels_last"] = lambda p=dense_cl: spec.apply(p, state, x, train=False)
                runs["compacted NCHW"] = lambda p=small_nchw, st=small_s: spec.apply(p, st, x, train=False)
            f_dense, f_small = flops(runs["dense"]), flops(runs["compacted"])
            timing = time_interleaved(runs, reps=reps, warmup=3)
        dense_ms = timing["dense"]["median_ms"]
        speed = dense_ms / timing["compacted"]["median_ms"]
        ratio = f_dense / f_small
        row = {
            "model": name,
            "channel_sparsity": s,
            "weight_sparsity": mask.sparsity(masks),
            "timing": timing,
            "flop_ratio": ratio,
            "speedup_compacted": speed,
            "speedup_masked": dense_ms / timing["masked"]["median_ms"],
            "efficiency": speed / ratio,
        }
        if conv:
            ms = {k: v["median_ms"] for k, v in timing.items()}
            row["efficiency_same_layout"] = ms["dense channels_last"] / ms["compacted"] / ratio
            row["efficiency_nchw"] = ms["dense"] / ms["compacted NCHW"] / ratio
        out.append(row)
    return out


def unstructured(reps: int) -> list[dict]:
    weight = rng.normal(0, (1024, 1024))
    x = rng.normal(1, (64, 1024))
    bias = torch.zeros(1024)
    kernel = compact.csr_apply(lambda w: F.linear(x, w, bias))
    out = []
    for s in CSR_SPARSITIES:
        keep = rng.uniform(2, (1024, 1024)) >= s
        dense = torch.where(keep, weight, torch.zeros(()))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            csr = dense.to_sparse_csr()
        torch.testing.assert_close(kernel(csr), F.linear(x, dense, bias), rtol=1e-4, atol=1e-4)
        with torch.no_grad():
            timing = time_interleaved(
                {
                    "dense": lambda dense=dense: F.linear(x, dense, bias),
                    "F.linear(CSR)": lambda csr=csr: F.linear(x, csr, bias),
                    "csr_apply (weight left)": lambda csr=csr: kernel(csr),
                },
                reps=reps,
                warmup=3,
            )
        d = timing["dense"]["median_ms"]
        out.append(
            {
                "sparsity": s,
                "timing": timing,
                "speedup_csr": d / timing["csr_apply (weight left)"]["median_ms"],
                "speedup_flinear_csr": d / timing["F.linear(CSR)"]["median_ms"],
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (the anchors used 2)")
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--structured-only", action="store_true", help="skip the unstructured (CSR) part and the crossover"
    )
    args = ap.parse_args()
    setup_threads(args.threads)
    rows_s, results = [], {"structured": [], "unstructured": []}
    for name in ("mlp", "conv4"):
        for r in structured(name, args.reps):
            results["structured"].append(r)
            t = r["timing"]
            rows_s.append(
                [
                    name,
                    f"{r['channel_sparsity']:.0%}",
                    f"{r['weight_sparsity']:.0%}",
                    t["dense"]["median_ms"],
                    t["masked"]["median_ms"],
                    t["compacted"]["median_ms"],
                    r["speedup_masked"],
                    r["speedup_compacted"],
                    r["flop_ratio"],
                    r["efficiency"],
                    r.get("efficiency_same_layout", "-"),
                    r.get("efficiency_nchw", "-"),
                ]
            )
    print(
        table(
            f"structured (channel) sparsity, eval forward, {torch.get_num_threads()} threads, "
            f"{args.reps} reps (load {machine()['loadavg_1m']:.1f})",
            [
                "model",
                "units off",
                "weights off",
                "dense ms",
                "masked ms",
                "compact ms",
                "masked x",
                "compact x",
                "FLOP ratio",
                "efficiency",
                "eff. both CL",
                "eff. both NCHW",
            ],
            rows_s,
        )
    )
    if args.structured_only:
        print(f"wrote {write_json('inference', results, args.out)}")
        return
    rows_u = []
    for r in unstructured(args.reps):
        results["unstructured"].append(r)
        t = r["timing"]
        rows_u.append(
            [
                f"{r['sparsity']:.0%}",
                t["dense"]["median_ms"],
                t["F.linear(CSR)"]["median_ms"],
                t["csr_apply (weight left)"]["median_ms"],
                r["speedup_flinear_csr"],
                r["speedup_csr"],
            ]
        )
    print(
        table(
            "\nunstructured sparsity, 1024x1024 linear, batch 64 (anchor: dense 0.757 ms; CSR 1.12/0.273/0.160/0.071)",
            ["sparsity", "dense ms", "F.linear(CSR) ms", "csr_apply ms", "F.linear(CSR) x", "csr_apply x"],
            rows_u,
        )
    )
    cross = compact.measure_crossover(
        (1024, 1024), 64, (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99), reps=args.reps
    )
    print(f"\nmeasure_crossover((1024, 1024), batch 64): CSR wins from sparsity {cross}")
    results["crossover_1024x1024_b64"] = cross
    print(f"wrote {write_json('inference', results, args.out)}")


if __name__ == "__main__":
    main()
