"""Compiles per stage: mask-only IMP, structured pruning with compaction, and the on-disk compile cache.

1. **Mask-only IMP**, 20 rounds (global magnitude, 20% of what remains per round, a few SGD
   steps per round) on the digits MLP through ``stage.Compiled``: compiles and compile seconds
   per stage, read from torch's own counters. Masks and learning rates are inputs: one compile
   for the train step and one for the eval step, however many rounds.
2. **What a recompile of the unchanged masked-dense graph gains** (the staged-recompilation fix): the step at
   the last round's sparsity in the graph compiled at round 1 vs a freshly compiled one (a new
   form tag forces it), timed interleaved; plus the dense step.
3. **Structured pruning with compaction** on LeNet-300-100 (random data): the equal-steps schedule,
   8% -> 40% of the hidden units in 5 steps, each variant of ``stage.should_rematerialize``
   (default / aggressive / conservative, and "never": stay masked-dense) deciding when the
   pruned model is compacted to its smaller form. A compaction is a new stage (new shapes) and
   compiles once; between compactions the newly removed units are masks on the current form
   (``compact(..., kept=...)``, no recompile). Printed: the decision's log lines, compiles per stage,
   and the step time of every form against the masked full-size form. Each variant runs in a
   process of its own with an empty inductor cache, so none reuses another's compiled shapes.
4. **Cold vs warm on-disk cache**: the same step compiled in a fresh subprocess twice with one
   fresh ``TORCHINDUCTOR_CACHE_DIR`` (the first fills inductor's FX graph and AOTAutograd caches,
   the second reads them).

Sections 1-3 run in a subprocess with a fresh, empty inductor cache directory (so their compile
seconds are those of a first run) unless ``--warm-cache`` is given.

    python bench/compile_stages.py [--reps 30] [--skip-cache] [--warm-cache]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, setup_threads, table, time_interleaved, write_json  # noqa: E402

from pure_prune import compact, losses, mask, optim, select, stage, train, tree
from pure_prune import models as model_registry  # noqa: E402
from pure_prune.app import data

SCHEDULE = (0.08, 0.16, 0.24, 0.32, 0.40)


def _stats_rows(label: str, compiled: stage.Compiled) -> list[list]:
    return [
        [label, sig, s["compiles"], s["compile_seconds"], s["calls"]] for sig, s in compiled.stats().items()
    ]


# --------------------------------------------------------------------------- 1-2. mask-only IMP
def _imp(step, evaluate, spec, opt, batch, rounds: int, steps: int):
    """``rounds`` of IMP (global magnitude, 20% of what remains, rewind to init): the final trees."""
    params, state = spec.init(0)
    init = params
    masks = mask.ones_like(params)
    for r in range(rounds):
        opt_state = opt.init(params)
        for _ in range(steps):
            params, state, opt_state, _ = step(params, state, opt_state, masks, batch)
        evaluate(params, state, masks, batch)
        scores = tree.map(lambda p, m: None if m is None else p.abs(), params, masks)
        masks = select.unstructured(scores, 1.0 - 0.8 ** (r + 1), masks=masks)
        params = mask.apply(init, masks)  # rewind to init (lottery ticket)
    return params, state, masks


def mask_only_imp(rounds: int, steps: int, reps: int) -> dict:
    spec = model_registry.get("mlp")
    ds = data.load("digits")
    batch = (ds.x_train[:128].contiguous(), ds.y_train[:128].contiguous())
    opt = optim.sgd(0.05, momentum=0.9)
    raw = train.make_step(spec, losses.cross_entropy, opt, compile=False)
    raw_eval = train.make_eval_step(spec, losses.cross_entropy, compile=False)
    step, evaluate = stage.Compiled(raw), stage.Compiled(raw_eval)
    t0 = time.perf_counter()
    params, state, masks = _imp(step, evaluate, spec, opt, batch, rounds, steps)
    wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    _imp(raw, raw_eval, spec, opt, batch, rounds, steps)
    eager_wall = time.perf_counter() - t0
    rows = _stats_rows("train step", step) + _stats_rows("eval step", evaluate)
    print(
        table(
            f"\n1. mask-only IMP: {rounds} rounds x {steps} steps, digits MLP, final sparsity "
            f"{mask.sparsity(masks):.2%}; wall {wall:.1f} s compiled, {eager_wall:.1f} s eager (same loop)",
            ["function", "stage", "compiles", "compile s", "calls"],
            rows,
        )
    )

    # 2. the same graph vs a recompiled one at the final sparsity, and dense
    opt_state = opt.init(params)
    runs = {}
    for label, run, m in (
        ("compiled at round 1", step, masks),
        ("recompiled now", step.at("masked-recompiled"), masks),
        ("dense (no masks)", stage.Compiled(raw, form="dense"), None),
    ):
        trees = [params, state, opt_state]

        def one(run=run, trees=trees, m=m):
            trees[0], trees[1], trees[2], _ = run(trees[0], trees[1], trees[2], m, batch)

        one()  # compiles the new forms
        runs[label] = one
    timing = time_interleaved(runs, reps=reps, warmup=5)
    base = timing["compiled at round 1"]["median_ms"]
    recompile_s = step.stats()[next(k for k in step.stats() if k.startswith("masked-recompiled/"))]
    print(
        table(
            f"\n2. recompiling the unchanged masked graph at {mask.sparsity(masks):.1%} sparsity "
            f"(cost: {recompile_s['compile_seconds']:.1f} s of compile)",
            ["graph", "median ms", "min ms", "vs round-1 graph"],
            [[k, v["median_ms"], v["min_ms"], base / v["median_ms"]] for k, v in timing.items()],
        )
    )
    return {
        "rounds": rounds,
        "steps_per_round": steps,
        "final_sparsity": mask.sparsity(masks),
        "wall_s": wall,
        "eager_wall_s": eager_wall,
        "train_stats": step.stats(),
        "eval_stats": evaluate.stats(),
        "recompile_gain": {"timing": timing, "recompile_seconds": recompile_s["compile_seconds"]},
    }


# ------------------------------------------------------------------ 3. structured with compaction
def structured_run(variant: str, steps: int, reps: int) -> dict:
    spec = model_registry.get("lenet300")
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(128, 784, generator=g), torch.randint(0, 10, (128,), generator=g))
    params, state = spec.init(0)
    groups = spec.groups(params)
    opt = optim.sgd(0.05, momentum=0.9)
    step = stage.Compiled(train.make_step(spec, losses.cross_entropy, opt, compile=False))
    full_m = mask.ones_like(params)
    full_p, full_s = params, state
    kept = None  # the current form's units (None: the full masked form)
    form = "masked"
    last = None
    log, forms = [], {}
    for i, s in enumerate(SCHEDULE, start=1):
        t0 = time.perf_counter()
        scores = tree.map(torch.abs, full_p)
        full_m = select.channels(scores, s, groups, masks=full_m)  # s of every hidden layer's units
        prune_s = time.perf_counter() - t0
        if variant == "never":
            decision = (False, "variant 'never' keeps the masked form")
        else:
            knobs = stage.VARIANTS[variant]
            decision = stage.should_rematerialize(
                i, s, last, recompile_every=knobs.recompile_every, threshold=knobs.threshold
            )
        if decision[0]:
            cur_p, cur_s, cur_m, kept = compact.compact(full_p, full_s, full_m, groups)
            form = f"compact@{s:.0%}"
            last = s
        elif kept is not None:  # new units are masks on the current compact form: same shapes
            cur_p, cur_s, cur_m, _ = compact.compact(full_p, full_s, full_m, groups, kept=kept)
        else:
            cur_p, cur_s, cur_m = mask.apply(full_p, full_m), full_s, full_m
        run = step.at("compact" if kept is not None else "masked")
        before = {k: dict(v) for k, v in step.stats().items()}
        opt_state = opt.init(cur_p)
        t1 = time.perf_counter()
        cur_p, cur_s, opt_state, _ = run(cur_p, cur_s, opt_state, cur_m, batch)
        first_s = time.perf_counter() - t1
        new = {k: v for k, v in step.stats().items() if v["compiles"] != before.get(k, {}).get("compiles", 0)}
        seconds = sum(
            v["compile_seconds"] - before.get(k, {}).get("compile_seconds", 0.0) for k, v in new.items()
        )
        reason = decision[1] if decision[0] else "no compiled model yet"  # a first compile of this form
        log += stage.log_lines(i, s, prune_s, (bool(new), reason), seconds if new else first_s)
        for _ in range(steps - 1):
            cur_p, cur_s, opt_state, _ = run(cur_p, cur_s, opt_state, cur_m, batch)
        if kept is not None:
            full_p, full_s, _ = compact.expand(cur_p, cur_s, cur_m, kept, groups)
        else:
            full_p, full_s = cur_p, cur_s
        forms[f"step {i} ({form})"] = (run, cur_p, cur_s, cur_m)
    # step time of each stage's form (fresh optimizer state; params as the stage left them), and of
    # the masked full-size form at the final masks (a separate Compiled: not in this run's stats)
    reference = stage.Compiled(train.make_step(spec, losses.cross_entropy, opt, compile=False))
    forms["masked, final masks (reference)"] = (reference, mask.apply(full_p, full_m), full_s, full_m)
    fns = {}
    for label, (run, p, st, m) in forms.items():
        trees = [p, st, opt.init(p)]

        def one(run=run, trees=trees, m=m):
            trees[0], trees[1], trees[2], _ = run(trees[0], trees[1], trees[2], m, batch)

        fns[label] = one
    timing = time_interleaved(fns, reps=reps, warmup=3)
    return {"variant": variant, "log": log, "stats": step.stats(), "timing": timing}


# ----------------------------------------------------------------------------- 4. on-disk cache
def child_compile() -> None:
    """In a fresh process: compile the digits-MLP train step once and print its stats as JSON."""
    setup_threads()
    spec = model_registry.get("mlp")
    params, state = spec.init(0)
    opt = optim.sgd(0.05, momentum=0.9)
    step = stage.Compiled(train.make_step(spec, losses.cross_entropy, opt, compile=False))
    batch = (torch.randn(128, 64), torch.randint(0, 10, (128,)))
    t0 = time.perf_counter()
    step(params, state, opt.init(params), mask.ones_like(params), batch)
    (s,) = step.stats().values()
    print(json.dumps({"compile_seconds": s["compile_seconds"], "first_call_s": time.perf_counter() - t0}))


def cache_cold_warm() -> dict:
    out = {}
    with tempfile.TemporaryDirectory(prefix="pure_prune_inductor_") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        for label in ("cold", "warm"):
            t0 = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, __file__, "--child-compile"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            res["process_s"] = time.perf_counter() - t0
            out[label] = res
    print(
        table(
            "\n4. on-disk compile cache (digits-MLP train step, fresh process each, one cache dir)",
            ["cache", "compile s (dynamo metric)", "first call s", "whole process s"],
            [[k, v["compile_seconds"], v["first_call_s"], v["process_s"]] for k, v in out.items()],
        )
    )
    return out


def structured_in_subprocess(variant: str, args: argparse.Namespace) -> dict:
    """:func:`structured_run` in a fresh process with a fresh inductor cache of its own (unless
    ``--warm-cache``), so that no variant reuses the compiled shapes of another."""
    cmd = [sys.executable, __file__, "--structured-child", variant]
    cmd += ["--reps", str(args.reps), "--steps", str(args.steps), "--threads", str(args.threads)]
    with tempfile.TemporaryDirectory(prefix="pure_prune_inductor_") as cache:
        env = dict(os.environ) if args.warm_cache else {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--skip-cache", action="store_true", help="leave out section 4")
    ap.add_argument(
        "--warm-cache",
        action="store_true",
        help="use the existing on-disk inductor cache (default: a fresh one)",
    )
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (the anchors used 2)")
    ap.add_argument("--child-compile", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--structured-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.child_compile:
        child_compile()
        return
    if args.structured_child:
        setup_threads(args.threads)
        print(json.dumps(structured_run(args.structured_child, args.steps, args.reps)))
        return
    if not args.warm_cache and "PURE_PRUNE_BENCH_FRESH_CACHE" not in os.environ:
        with tempfile.TemporaryDirectory(prefix="pure_prune_inductor_") as cache:  # compile seconds: cold
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "PURE_PRUNE_BENCH_FRESH_CACHE": "1"}
            subprocess.run([sys.executable, __file__, *sys.argv[1:]], env=env, check=True)
        return
    setup_threads(args.threads)
    print(f"load average {machine()['loadavg_1m']:.1f}, {torch.get_num_threads()} threads")
    results: dict = {"imp": mask_only_imp(args.rounds, args.steps, args.reps)}
    results["structured"] = {}
    for variant in ("default", "aggressive", "conservative", "never"):
        res = structured_in_subprocess(variant, args)
        results["structured"][variant] = res
        print(f"\n3. structured, LeNet-300-100, variant {variant!r} (recompilation log):")
        print("\n".join("   " + line for line in res["log"]))
        ref = res["timing"]["masked, final masks (reference)"]["median_ms"]
        rows = [
            [label, v["median_ms"], v["min_ms"], ref / v["median_ms"]] for label, v in res["timing"].items()
        ]
        print(table("", ["stage form", "step median ms", "min ms", "speedup vs masked"], rows))
        rows = [[sig, s["compiles"], s["compile_seconds"], s["calls"]] for sig, s in res["stats"].items()]
        total = sum(s["compile_seconds"] for s in res["stats"].values())
        print(
            table(
                f"   compiles per stage (total {total:.1f} s)",
                ["stage", "compiles", "compile s", "calls"],
                rows,
            )
        )
    rows = []
    for variant, res in results["structured"].items():
        stats = res["stats"].values()
        *_, last, ref = (v["median_ms"] for v in res["timing"].values())
        rows.append(
            [
                variant,
                sum(s["compiles"] for s in stats),
                sum(s["compile_seconds"] for s in stats),
                last,
                ref / last,
            ]
        )
    print(
        table(
            "\n3. summary per variant: compiles, compile seconds, the step at 40% of the units removed",
            ["variant", "compiles", "compile s", "step ms at 40%", "speedup vs masked"],
            rows,
        )
    )
    if not args.skip_cache:
        results["cache"] = cache_cold_warm()
    print(f"\nwrote {write_json('compile_stages', results, args.out)}")


if __name__ == "__main__":
    main()
