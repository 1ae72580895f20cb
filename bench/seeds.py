"""Many seeds at once: one vmapped (and compiled) program against a loop of single-seed runs.

**One step, 32 seeds** of an MLP 64-64-10 (ReLU) on scikit-learn digits / 16, one batch of 64 per
seed (seed ``i`` draws its own batch), SGD lr 0.05 momentum 0.9, float32, ``--threads`` (2).
Peers, timed interleaved in one process (``bench/_common.py``), medians of ``--reps`` (>= 20)
after warm-up, in ``--blocks`` blocks (``per block``: the median over blocks of the loop's block
median over the peer's, peers of one block having met the same load):

* ``pure_prune vmap+compile``: ``seeds.make_seed_step(..., per_seed_batches=True)`` (one
  ``torch.compile``d ``vmap`` of ``train.make_step``'s step; eager checks of the stacked trees
  on every call), dense (``masks=None``) and masked (80% global magnitude per seed; the compiled
  program gets the masks' uint8 views);
* ``... bool masks in the graph``: the same compiled step fed the bool masks themselves (as
  ``make_seed_step`` did before; ``seeds.seed_step_of`` without ``bytes_masks``), checked to give
  the same step;
* ``pure_prune vmap eager``: the same without ``torch.compile``;
* ``torch.optim loop``: 32 ``nn.Sequential`` + 32 ``torch.optim.SGD``, one after the other;
* ``JAX jit(vmap)``: the same dense step in ``jax.numpy``, ``jax.jit(jax.vmap(step))`` (if JAX
  is importable).

All peers start from the same weights and batches; after one step their params are checked to
agree (max |diff| is printed). One thread, load 1.0 (``bench/results/seeds_step_1thread.json``,
``OMP_WAIT_POLICY=PASSIVE python bench/seeds.py --threads 1 --blocks 6 --reps 60 --skip-pipeline
--skip-runner``): the loop 12.2 ms; compiled masked 1.62 ms, 7.5x the loop (per block 7.5x), 1.11x
JAX ``jit(vmap)`` (1.81 ms); dense 1.85 ms, 6.6x; bool masks in the graph 2.15 ms, 5.7x; vmap
eager 3.9 ms, 3.1x; the 8-seed step of ``run --seeds 8`` 4.05 ms, 2.0x eight single compiled steps
taking turns (1.06 ms each). An earlier run at load 2.0: the loop 11.3 ms, masked 6.8x.
The compiled step is GEMM-bound: its five ``bmm`` of 32 seeds take ~0.9 of its ~1.3 ms (called
alone), so 10x the loop is out of reach by trimming its Python; under load 3.8 the loop slowed
more than the vmapped step (26.7 ms; masked 11.2x). At two threads with libgomp's spinning
threads on the loaded machine the loop's median collapsed (439 ms, min 13.6), so its ratios there
measure the neighbours.

**The masked step of ``pure-prune run --seeds 8``** (``mlp`` preset 64-256-256-10, batch 64, 80%
per seed) against ``bench/end_to_end.py``'s compute limit, 8 single compiled steps (timed taking
turns, so each finds the others' weights evicted): 4.97 ms, the limit over it 2.07x; with the
bool masks 6.59 ms, 1.55x (the library before: 7.56 ms, 1.57x).

**Whole pipeline, 8 seeds**: digits MLP ``--sizes`` (default 64-256-256-10, the ``mlp`` preset),
batch 64, SGD lr 0.05 momentum 0.9; ``--train-epochs`` (5) dense epochs, one-shot global magnitude
pruning to 80% per seed, ``--finetune-epochs`` (3) epochs of fine-tuning (fresh momentum), test
accuracy after each phase. ``pure-prune run --method one_shot --seeds 8``'s two rounds as
``pure-prune sweep`` runs them (``sweep.dense_round`` and ``sweep.run_point`` on one vmapped
context) against the same rounds on 8 single-seed contexts one after another (seeds 0..7, the
same keys, so the results must agree). Each variant runs in a fresh process; wall seconds from
``experiment.setup`` to the last evaluation (imports excluded, compile included): compiled with a
fresh inductor cache (cold), then with that cache again (warm), and eager. The machine is shared,
so every variant runs once per round for ``--rounds`` rounds; the table shows min and median.

**``pure-prune run --seeds 8``, other methods**: the whole runner (setup, every round, evaluation,
checkpoints and tables) for RigL (``dst``) and RSST on the digits ``mlp`` preset (64-256-256-10,
batch 64, SGD lr 0.05 momentum 0.9; knobs in ``RUN_METHODS``): ``runner.run`` with ``seeds = 8``
(one vmapped program) against 8 single-seed ``runner.run`` calls one after another in one process
(``torch._dynamo.reset()`` before each: without it the eighth compiled RSST run hits dynamo's
recompile limit, since every run compiles the same step code anew), each variant in a fresh
process, eager and compiled (fresh inductor cache). Wall seconds from the
first ``runner.run`` to the end, imports excluded; the final per-seed test accuracies of the two
must agree (seed ``i`` of the vmapped run is the single run with seed ``i``). ``in vmapped
programs``: the share of the vmapped run's wall time spent inside the vmapped (compiled) programs
(``seeds.SeedFn._run``, after their eager checks), the first call of each program (its compile)
left out of both; scikit-learn and dynamo are imported before the clock starts.

    python bench/seeds.py [--reps 50] [--train-epochs 5] [--finetune-epochs 3] [--rounds 2]
                          [--sizes 64 256 256 10] [--skip-pipeline]
                          [--runner-methods rigl rsst] [--runner-seeds 8] [--runner-rounds 1]
                          [--runner-eager-only] [--only-runner]

``--only-runner`` runs the runner section alone and keeps the other sections of
``bench/results/seeds.json`` (each section records its machine and load).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, setup_threads, table, time_interleaved, write_json  # noqa: E402

from pure_prune import losses, mask, optim, rng, seeds, select, train, tree
from pure_prune.app import data, experiment
from pure_prune.importance import magnitude  # noqa: E402
from pure_prune.models import mlp  # noqa: E402

SEEDS, BATCH, SIZES, LR, MOMENTUM = 32, 64, (64, 64, 10), 0.05, 0.9
PIPE_SEEDS, PIPE_SPARSITY = 8, 0.8


# ----------------------------------------------------------------------------- one step
def step_setup() -> dict:
    """Stacked params ``(32, ...)``, per-seed digits batches ``x (32, 64, 64)``, ``y (32, 64)``."""
    ds = data.load("digits")
    keys = rng.split(0, SEEDS)
    params, state = seeds.init_seeds(lambda k: mlp.init(k, sizes=SIZES), keys)
    x, y = next(seeds.seed_batches((ds.x_train, ds.y_train), BATCH, keys, 0))
    masks = seeds.masks_like_seeds(params)
    masks = seeds.select_seeds(magnitude.magnitude(params, masks), 0.8, masks=masks)
    return {"params": params, "state": state, "masks": masks, "x": x.contiguous(), "y": y.contiguous()}


def torch_loop(setup: dict):
    """32 ``nn.Sequential`` with the same weights, 32 SGD optimizers; ``run()`` does one step of each."""
    nets, opts = [], []
    for p in tree.unstack(setup["params"], SEEDS):
        net = nn.Sequential(nn.Linear(SIZES[0], SIZES[1]), nn.ReLU(), nn.Linear(SIZES[1], SIZES[2]))
        with torch.no_grad():
            for layer, name in ((net[0], "fc1"), (net[2], "fc2")):
                layer.weight.copy_(p[name]["weight"])
                layer.bias.copy_(p[name]["bias"])
        nets.append(net)
        opts.append(torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM))
    x, y = setup["x"], setup["y"]

    def run() -> None:
        for i, (net, opt) in enumerate(zip(nets, opts)):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x[i]), y[i]).backward()
            opt.step()

    def weights() -> torch.Tensor:
        return torch.stack([net[0].weight.detach().clone() for net in nets])

    return run, weights


def jax_step(setup: dict):
    """``jax.jit(jax.vmap(step))`` of the dense SGD-momentum step, or ``None`` without JAX."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    p = setup["params"]
    params = {k: {n: jnp.asarray(p[k][n].numpy()) for n in ("weight", "bias")} for k in ("fc1", "fc2")}
    buf = jax.tree_util.tree_map(jnp.zeros_like, params)
    x, y = jnp.asarray(setup["x"].numpy()), jnp.asarray(setup["y"].numpy())

    def loss_fn(ps, xb, yb):
        h = jax.nn.relu(xb @ ps["fc1"]["weight"].T + ps["fc1"]["bias"])
        logits = h @ ps["fc2"]["weight"].T + ps["fc2"]["bias"]
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, yb[:, None], axis=1))

    def step(ps, b, xb, yb):
        loss, g = jax.value_and_grad(loss_fn)(ps, xb, yb)
        b = jax.tree_util.tree_map(lambda bb, gg: MOMENTUM * bb + gg, b, g)
        ps = jax.tree_util.tree_map(lambda pp, bb: pp - LR * bb, ps, b)
        return ps, b, loss

    fn = jax.jit(jax.vmap(step))

    def run():
        out = fn(params, buf, x, y)
        jax.block_until_ready(out)
        return out

    return run


def bench_step(reps: int, blocks: int = 1) -> dict:
    setup = step_setup()
    opt = optim.sgd(LR, momentum=MOMENTUM)
    opt_state = seeds.init_opt_seeds(opt, setup["params"])
    args = (setup["params"], setup["state"], opt_state)
    batch = (setup["x"], setup["y"])
    compiled = seeds.make_seed_step(mlp, losses.cross_entropy, opt, per_seed_batches=True, compile=True)
    eager = seeds.make_seed_step(mlp, losses.cross_entropy, opt, per_seed_batches=True, compile=False)
    # the same compiled step fed the bool masks themselves (make_seed_step passes their uint8 views)
    bool_masks = seeds.seed_step_of(
        train.make_step(mlp, losses.cross_entropy, opt, compile=False), per_seed_batches=True, compile=True
    )
    t0 = time.perf_counter()
    out_dense = compiled(*args, None, batch)
    compile_dense_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out_masked = compiled(*args, setup["masks"], batch)
    compile_masked_s = time.perf_counter() - t0
    out_bool = bool_masks(*args, setup["masks"], batch)
    for a, b in zip(tree.leaves(out_masked[:3]), tree.leaves(out_bool[:3])):
        assert a is None or torch.equal(a, b), "bool and uint8 masks gave different steps"

    loop_run, loop_weights = torch_loop(setup)
    loop_run()
    checks = {
        "pure_prune vs torch.optim loop": (out_dense[0]["fc1"]["weight"] - loop_weights()).abs().max().item()
    }
    loop_run, _ = torch_loop(setup)
    fns = {
        "torch.optim loop": loop_run,
        "pure_prune vmap+compile": lambda: compiled(*args, None, batch),
        "pure_prune vmap+compile masked": lambda: compiled(*args, setup["masks"], batch),
        "pure_prune vmap eager": lambda: eager(*args, None, batch),
        "pure_prune vmap+compile masked, bool masks in the graph": lambda: bool_masks(
            *args, setup["masks"], batch
        ),
    }
    jx = jax_step(setup)
    if jx is not None:
        t0 = time.perf_counter()
        jx_params = jx()[0]
        jx_w = torch.from_numpy(np.array(jx_params["fc1"]["weight"]))
        checks["JAX vs pure_prune"] = (jx_w - out_dense[0]["fc1"]["weight"]).abs().max().item()
        fns["JAX jit(vmap)"] = jx
        jax_first_s = time.perf_counter() - t0
    load0 = os.getloadavg()[0]
    per_block = [time_interleaved(fns, reps=max(1, reps // blocks), warmup=5 if b == 0 else 1, raw=True)
                 for b in range(blocks)]  # fmt: skip
    timing = {}
    for name in fns:
        wall = [w for blk in per_block for w in blk[name]["wall_s"]]
        cpu = [c for blk in per_block for c in blk[name]["cpu_s"]]
        timing[name] = {"median_ms": statistics.median(wall) * 1e3, "min_ms": min(wall) * 1e3,
                        "cpu_median_ms": statistics.median(cpu) * 1e3, "reps": len(wall)}  # fmt: skip
    # the loop over each peer, per block (the peers of a block met the same load), median over blocks
    block_speedup = {
        name: statistics.median(
            blk["torch.optim loop"]["median_ms"] / blk[name]["median_ms"] for blk in per_block
        )
        for name in fns
    }
    load1 = os.getloadavg()[0]
    base = timing["torch.optim loop"]["median_ms"]
    jax_ms = timing.get("JAX jit(vmap)", {}).get("median_ms")
    rows = [
        [
            name,
            t["median_ms"],
            t["min_ms"],
            base / t["median_ms"],
            block_speedup[name],
            (jax_ms / t["median_ms"]) if jax_ms else "-",
        ]
        for name, t in timing.items()
    ]
    print(
        table(
            f"One SGD-momentum step, {SEEDS} seeds x MLP {'-'.join(map(str, SIZES))}, batch {BATCH} per seed "
            f"(median of {reps}, {blocks} blocks, {torch.get_num_threads()} threads, load {load0:.1f} -> {load1:.1f})",
            ["peer", "median ms", "min ms", "x vs loop", "per block", "x vs JAX"],
            rows,
        )
    )
    print("max |param diff| after one step:", {k: f"{v:.2e}" for k, v in checks.items()})
    return {
        "settings": {
            "seeds": SEEDS,
            "sizes": SIZES,
            "batch_per_seed": BATCH,
            "lr": LR,
            "momentum": MOMENTUM,
            "reps": reps,
            "data": "sklearn digits / 16, per-seed shuffles",
        },  # fmt: skip
        "timing": timing,
        "speedup_vs_loop": {n: base / t["median_ms"] for n, t in timing.items()},
        "speedup_vs_loop_median_of_blocks": block_speedup,
        "blocks": blocks,
        "threads": torch.get_num_threads(),
        "load": [load0, load1],
        "ratio_jax_over": {n: jax_ms / t["median_ms"] for n, t in timing.items()} if jax_ms else None,
        "compile_s": {"dense": compile_dense_s, "masked": compile_masked_s},
        "jax_first_call_s": jax_first_s if jx is not None else None,
        "max_abs_param_diff": checks,
    }


# ---------------------------------------------------------------------------- compute limit
def bench_limit(reps: int, blocks: int, num_seeds: int = PIPE_SEEDS) -> dict:
    """The masked (80%) step of ``pure-prune run --seeds N`` against ``bench/end_to_end.py``'s compute
    limit, ``N`` single compiled steps: the ``mlp`` preset (64-256-256-10) on digits, batch 64,
    ``experiment.setup``'s optimizer; the vmapped step fed the masks' uint8 views (as
    ``make_seed_step`` does) and the bool masks (as it did before)."""
    exp, init = experiment.setup("mlp", "digits", batch_size=64, lr=LR, momentum=MOMENTUM, compile=True)
    params, state = init(0)
    masks = select.unstructured(magnitude.magnitude(params, mask.ones_like(params)), PIPE_SPARSITY)
    single = (mask.apply(params, masks), state)
    single_opt = exp.optimizer.init(single[0])
    x, y = next(exp.train_batches(0)(0))
    ps, ss = seeds.init_seeds(init, rng.split(0, num_seeds))
    ms = seeds.masks_like_seeds(ps)
    ms = seeds.select_seeds(magnitude.magnitude(ps, ms), PIPE_SPARSITY, masks=ms)
    ps = mask.apply(ps, ms)
    opt_s = seeds.init_opt_seeds(exp.optimizer, ps)
    xs = x[None].expand(num_seeds, *x.shape).contiguous()
    ys = y[None].expand(num_seeds, *y.shape).contiguous()
    loss = losses.cross_entropy
    vmapped = seeds.make_seed_step(exp.model, loss, exp.optimizer, per_seed_batches=True, compile=True)
    with_bool = seeds.seed_step_of(
        train.make_step(exp.model, loss, exp.optimizer, compile=False), per_seed_batches=True, compile=True
    )
    one, many, many_bool = "1 compiled step", f"{num_seeds}-seed step", f"{num_seeds}-seed step, bool masks"
    fns = {
        one: lambda: exp.step(*single, single_opt, masks, (x, y)),
        many: lambda: vmapped(ps, ss, opt_s, ms, (xs, ys)),
        many_bool: lambda: with_bool(ps, ss, opt_s, ms, (xs, ys)),
    }
    for f in fns.values():  # compile
        f()
    load0 = os.getloadavg()[0]
    per_block = [time_interleaved(fns, reps=max(1, reps // blocks), warmup=2) for _ in range(blocks)]
    limit = {  # N single steps over the vmapped step, per block, median over blocks
        name: statistics.median(num_seeds * b[one]["median_ms"] / b[name]["median_ms"] for b in per_block)
        for name in (many, many_bool)
    }
    medians = {n: statistics.median(b[n]["median_ms"] for b in per_block) for n in fns}
    print(
        table(
            f"Masked step of pure-prune run --seeds {num_seeds} (mlp 64-256-256-10, batch 64) against the compute "
            f"limit ({num_seeds} x one compiled step); {torch.get_num_threads()} threads, load {load0:.1f}",
            ["step", "median ms", f"limit / this ({num_seeds} x 1 step / step)"],
            [[n, medians[n], limit.get(n, "-")] for n in fns],
        )
    )
    return {
        "median_ms": medians,
        "limit_over_step": limit,
        "seeds": num_seeds,
        "load": [load0, os.getloadavg()[0]],
    }


# ---------------------------------------------------------------------------- pipeline
def pipeline_child(
    mode: str, compiled: bool, train_epochs: int, finetune_epochs: int, sizes: tuple[int, ...]
) -> dict:
    """One pipeline variant in this process: ``mode`` is ``"vmap"`` (``pure-prune run --method
    one_shot --seeds 8``'s rounds as ``pure-prune sweep`` runs them: one vmapped context) or
    ``"sequential"`` (8 single-seed contexts, seeds ``0 .. 7``, one after another)."""
    from pure_prune.app import sweep as grid
    from pure_prune.app.run_context import build_context
    from pure_prune.app.runconfig import RunConfig

    setup_threads()
    t0 = time.perf_counter()
    base = RunConfig(
        method="one_shot", model="mlp", data="digits", model_cfg={"sizes": list(sizes)}, batch_size=64, lr=LR,
        momentum=MOMENTUM, epochs=train_epochs, finetune_epochs=finetune_epochs, compile=compiled,
        eval_every_epoch=False, progress=False,
    )  # fmt: skip
    cfgs = (
        [replace(base, seeds=PIPE_SEEDS)]
        if mode == "vmap"
        else [replace(base, seed=k) for k in range(PIPE_SEEDS)]
    )
    metrics: dict[str, list[float]] = {"dense_accuracy": [], "accuracy": [], "sparsity": []}
    for cfg in cfgs:
        ctx = build_context(cfg.check())
        dense, _ = grid.dense_round(ctx)
        res = grid.run_point(
            ctx, dense, criterion="magnitude", scope="global", compression=round(1 / (1 - PIPE_SPARSITY), 9)
        )
        for k in metrics:
            metrics[k] += res.metrics[k]
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "metrics": metrics}


VARIANTS = (("vmap", True, "cold"), ("sequential", True, "cold"), ("vmap", True, "warm"),
            ("sequential", True, "warm"), ("vmap", False, "-"), ("sequential", False, "-"))  # fmt: skip


def _variant_name(mode: str, compiled: bool, cache: str) -> str:
    who = f"{PIPE_SEEDS} seeds vmapped" if mode == "vmap" else f"{PIPE_SEEDS} sequential runs"
    return f"{who}, " + (f"compiled ({cache} cache)" if compiled else "eager")


def bench_pipeline(train_epochs: int, finetune_epochs: int, sizes: tuple[int, ...], rounds: int) -> dict:
    """Every variant once per round, rounds one after the other; a fresh inductor cache per round."""
    walls: dict[str, list[float]] = {_variant_name(*v): [] for v in VARIANTS}
    metrics: dict[str, dict] = {}
    for r in range(rounds):
        with tempfile.TemporaryDirectory() as cache_root:
            for mode, compiled, cache in VARIANTS:
                env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(Path(cache_root) / mode)}
                cmd = [sys.executable, __file__, "--pipeline-child", mode, "--compiled", str(int(compiled)),
                       "--train-epochs", str(train_epochs), "--finetune-epochs", str(finetune_epochs),
                       "--sizes", *map(str, sizes)]  # fmt: skip
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
                if proc.returncode != 0:
                    raise RuntimeError(f"pipeline child {mode} failed:\n{proc.stderr[-3000:]}")
                name = _variant_name(mode, compiled, cache)
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                walls[name].append(res["wall_s"])
                metrics[name] = res["metrics"]
                print(f"  round {r + 1}: {name}: {res['wall_s']:.1f} s", flush=True)
    ref = metrics[_variant_name("sequential", False, "-")]["accuracy"]
    agree = max(abs(a - b) for m in metrics.values() for a, b in zip(m["accuracy"], ref))
    rows = []
    for name, w in walls.items():
        acc, dense = (
            seeds.summarize(metrics[name]["accuracy"]),
            seeds.summarize(metrics[name]["dense_accuracy"]),
        )
        rows.append([name, min(w), statistics.median(w), f"{dense['mean']:.4f} ± {dense['std']:.4f}",
                     f"{acc['mean']:.4f} ± {acc['std']:.4f}"])  # fmt: skip
    arch = "-".join(map(str, sizes))
    print(
        table(
            f"Whole pipeline, {PIPE_SEEDS} seeds, digits MLP {arch}: {train_epochs} epochs, prune "
            f"{PIPE_SPARSITY:.0%} global magnitude, {finetune_epochs} epochs fine-tuning ({rounds} rounds)",
            ["variant", "min wall s", "median wall s", "dense test acc", "final test acc"],
            rows,
        )
    )
    print(f"max |final test accuracy difference| between variants (same keys): {agree:.2e}")
    return {
        "settings": {"seeds": PIPE_SEEDS, "model": f"mlp {arch}", "data": "digits", "batch": 64, "lr": LR,
                     "momentum": MOMENTUM, "train_epochs": train_epochs, "finetune_epochs": finetune_epochs,
                     "sparsity": PIPE_SPARSITY, "criterion": "magnitude, global per seed", "rounds": rounds,
                     "wall": "from experiment.setup to the last evaluation, imports excluded, compile included"},
        "wall_s": walls,
        "metrics": metrics,
        "max_abs_final_accuracy_diff_between_variants": agree,
    }  # fmt: skip


# ---------------------------------------------------------------------------- the runner
RUN_METHODS: dict[str, dict] = {
    "rigl": {"method": "dst", "dst": "rigl", "sparsity": 0.8, "update_every": 10, "epochs": 4},
    "rsst": {"method": "rsst", "rate": 0.5, "pruning_times": 2, "epochs": 2, "finetune_epochs": 1,
             "criteria": "l1"},
}  # fmt: skip
RUN_COMMON = {"model": "mlp", "data": "digits", "batch_size": 64, "lr": LR, "momentum": MOMENTUM,
              "progress": False, "threads": None}  # fmt: skip


def runner_child(method: str, mode: str, compiled: bool, seeds: int, threads: int = 2) -> dict:
    """One runner variant in this process: ``runner.run`` with ``seeds`` (``mode="vmap"``) or
    ``seeds`` single-seed runs one after another (``"sequential"``), in a temporary directory."""
    import dataclasses

    from pure_prune.app import runner
    from pure_prune.app.runconfig import RunConfig

    setup_threads(threads)
    cfg = dataclasses.replace(RunConfig(), **RUN_COMMON, **RUN_METHODS[method], compile=compiled)
    quiet = lambda _: None  # noqa: E731
    calls: dict[int, list[float]] = {}  # seconds of every run of each vmapped function (SeedFn._run)
    run_seeds = seeds.SeedFn._run

    def timed(self, args, n):  # the vmapped (compiled) program itself, after the eager checks
        t = time.perf_counter()
        out = run_seeds(self, args, n)
        calls.setdefault(id(self), []).append(time.perf_counter() - t)
        return out

    seeds.SeedFn._run = timed
    import torch._dynamo  # noqa: F401 - imports that runner.run would make lazily, inside the clock

    data.load("digits")  # scikit-learn's import (~1.5 s) and the data set
    with tempfile.TemporaryDirectory() as root:
        t0 = time.perf_counter()
        if mode == "vmap":
            res = runner.run(dataclasses.replace(cfg, seeds=seeds, save_dir=f"{root}/v"), log=quiet)
            acc = res.rounds[-1]["per_seed"]["test_accuracy"]
        else:
            acc = []
            for k in range(seeds):
                # each run builds (and compiles) its own steps; dropping the previous run's compiled
                # code keeps dynamo under its recompile limit, as separate `pure-prune run`s would be
                torch._dynamo.reset()
                res = runner.run(dataclasses.replace(cfg, seed=k, save_dir=f"{root}/s{k}"), log=quiet)
                acc.append(res.rounds[-1]["test_accuracy"])
        wall = time.perf_counter() - t0
    seeds.SeedFn._run = run_seeds
    first = sum(c[0] for c in calls.values())  # compiles, for compiled runs
    inside = sum(sum(c) for c in calls.values())
    return {
        "wall_s": wall,
        "test_accuracy": acc,
        "seed_fns_s": inside,
        "seed_fns_first_calls_s": first,
        # the share of the run (first calls left out on both sides) spent in the vmapped programs
        "compute_share": (inside - first) / (wall - first) if calls and wall > first else None,
    }


def bench_runner(methods: list[str], seeds: int, rounds: int, eager_only: bool, threads: int = 2) -> dict:
    """Per method: vmapped and sequential, eager and compiled (cold cache), each in a fresh process,
    once per round."""
    variants = [("vmap", False), ("sequential", False)]
    if not eager_only:
        variants += [("vmap", True), ("sequential", True)]
    out: dict[str, dict] = {}
    rows = []
    for method in methods:
        walls: dict[str, list[float]] = {}
        accs: dict[str, list[float]] = {}
        shares: dict[str, list[float]] = {}
        for r in range(rounds):
            with tempfile.TemporaryDirectory() as cache_root:
                for mode, compiled in variants:
                    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(Path(cache_root) / mode)}
                    cmd = [sys.executable, __file__, "--runner-child", method, "--runner-mode", mode,
                           "--threads", str(threads),
                           "--compiled", str(int(compiled)), "--runner-seeds", str(seeds)]  # fmt: skip
                    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
                    if proc.returncode != 0:
                        raise RuntimeError(f"runner child {method}/{mode} failed:\n{proc.stderr[-3000:]}")
                    res = json.loads(proc.stdout.strip().splitlines()[-1])
                    name = f"{seeds} seeds {'vmapped' if mode == 'vmap' else 'sequential'}, " + (
                        "compiled (cold cache)" if compiled else "eager"
                    )
                    walls.setdefault(name, []).append(res["wall_s"])
                    accs[name] = res["test_accuracy"]
                    if mode == "vmap" and res["compute_share"] is not None:
                        shares.setdefault(name, []).append(res["compute_share"])
                    print(f"  round {r + 1}: {method}: {name}: {res['wall_s']:.1f} s", flush=True)
        for compiled in sorted({c for _, c in variants}):
            kind = "compiled (cold cache)" if compiled else "eager"
            v, q = f"{seeds} seeds vmapped, {kind}", f"{seeds} seeds sequential, {kind}"
            acc = seeds.summarize(accs[v])
            diff = max(abs(a - b) for a, b in zip(accs[v], accs[q]))
            share = statistics.median(shares[v]) if v in shares else float("nan")
            rows.append([method, kind, statistics.median(walls[v]), statistics.median(walls[q]),
                         statistics.median(walls[q]) / statistics.median(walls[v]), f"{share:.0%}",
                         f"{acc['mean']:.4f} ± {acc['std']:.4f}", f"{diff:.1e}"])  # fmt: skip
        out[method] = {"knobs": RUN_METHODS[method], "wall_s": walls, "test_accuracy": accs,
                       "compute_share_vmapped": shares}  # fmt: skip
    print(
        table(
            f"pure-prune run --seeds {seeds}: one vmapped program vs {seeds} single-seed runs one after "
            f"another, digits mlp 64-256-256-10 (median of {rounds})",
            ["method", "steps", "vmapped s", "sequential s", "x sequential/vmapped",
             "vmapped: in vmapped programs", "final test acc", "max |acc diff|"],
            rows,
        )
    )  # fmt: skip
    return {
        "settings": {"seeds": seeds, "rounds": rounds, "threads": threads, "common": RUN_COMMON,
                     "wall": "from the first runner.run to the end, imports excluded, compile included"},
        "methods": out,
        "machine": machine(),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--blocks", type=int, default=1, help="step section: timed in this many blocks")
    ap.add_argument("--threads", type=int, default=2, help="step and runner sections: torch.set_num_threads")
    ap.add_argument("--skip-step", action="store_true", help="leave the one-step section out")
    ap.add_argument("--train-epochs", type=int, default=5)
    ap.add_argument("--finetune-epochs", type=int, default=3)
    ap.add_argument(
        "--sizes", type=int, nargs="+", default=[64, 256, 256, 10], help="pipeline MLP layer sizes"
    )
    ap.add_argument("--rounds", type=int, default=2, help="pipeline rounds (every variant once per round)")
    ap.add_argument("--skip-pipeline", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--pipeline-child", choices=["vmap", "sequential"], help=argparse.SUPPRESS)
    ap.add_argument("--compiled", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--runner-methods", nargs="+", choices=sorted(RUN_METHODS), default=sorted(RUN_METHODS))
    ap.add_argument("--runner-seeds", type=int, default=PIPE_SEEDS)
    ap.add_argument(
        "--runner-rounds", type=int, default=1, help="runner rounds (every variant once per round)"
    )
    ap.add_argument("--runner-eager-only", action="store_true")
    ap.add_argument("--skip-runner", action="store_true")
    ap.add_argument("--only-runner", action="store_true", help="the runner section alone; keep the others")
    ap.add_argument("--runner-child", choices=sorted(RUN_METHODS), help=argparse.SUPPRESS)
    ap.add_argument("--runner-mode", choices=["vmap", "sequential"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.runner_child:
        res = runner_child(
            args.runner_child, args.runner_mode, bool(args.compiled), args.runner_seeds, args.threads
        )
        print(json.dumps(res))
        return
    if args.pipeline_child:
        res = pipeline_child(
            args.pipeline_child,
            bool(args.compiled),
            args.train_epochs,
            args.finetune_epochs,
            tuple(args.sizes),
        )
        print(json.dumps(res))
        return
    if args.reps < 20:
        raise SystemExit("--reps must be >= 20")
    setup_threads(args.threads)
    payload: dict = {}
    if args.only_runner:  # keep the sections of the last full run, each with its machine
        old = Path(args.out) if args.out else RESULTS / "seeds.json"
        if old.is_file():
            stored = json.loads(old.read_text())
            payload = {k: {"machine": stored.get("machine"), **v} if isinstance(v, dict) and "machine" not in v else v
                       for k, v in stored.items() if k != "machine"}  # fmt: skip
    else:
        if not args.skip_step:
            payload["step"] = bench_step(args.reps, args.blocks)
            payload["limit"] = bench_limit(args.reps, args.blocks)
        if not args.skip_pipeline:
            print("pipeline variants (each in a fresh process):", flush=True)
            payload["pipeline"] = bench_pipeline(
                args.train_epochs, args.finetune_epochs, tuple(args.sizes), args.rounds
            )
    if not args.skip_runner:
        print("runner variants (each in a fresh process):", flush=True)
        payload["runner"] = bench_runner(
            args.runner_methods, args.runner_seeds, args.runner_rounds, args.runner_eager_only, args.threads
        )
    path = write_json("seeds", payload, args.out)
    print(f"wrote {path}; machine: {machine()['cpu']}, load {machine()['loadavg_1m']}")


if __name__ == "__main__":
    main()
