"""End to end: the 20-round lottery-ticket run on the digits MLP, ``pure-prune run`` against its eager peer.

    OMP_NUM_THREADS=1 python bench/end_to_end.py            # the full table (minutes)
    python bench/end_to_end.py --quick                       # 1 round of 1 epoch, a smoke test
    python bench/end_to_end.py --eval-time 300               # one test-split evaluation, eager and compiled

One process drives subprocesses, each timed wall clock from start to exit (imports, data, compile
and start-up included), one thread each (``--threads 1``; ``OMP_NUM_THREADS=1`` for the peer):

* ``peer``: ``bench/peer_lottery.py`` (nn.Module, ``torch.nn.utils.prune`` hooks, ``torch.optim.SGD``)
* ``first on the machine``: ``pure-prune run --method imp`` with an empty inductor cache and no
  record of inductor's vector-ISA probe (``PURE_PRUNE_CACHE``, see ``app/vec_isa_record``), which
  then builds and loads its test libraries (~10 s)
* ``cold``: the same with another empty inductor cache (``TORCHINDUCTOR_CACHE_DIR``, which also
  holds the default step cache ``pure_prune_steps``), the ISA probe recorded by the first run.
  Neither row empties inductor's precompiled headers, which torch keeps in its default cache folder
  whatever ``TORCHINDUCTOR_CACHE_DIR`` says (``precompiled_headers``, ~150 MB a variant): on a
  machine that never compiled with this torch the first compile also builds them
* ``warm``: the same with the caches the cold run filled: the compiled steps are loaded
  (``stage_saved.Saved``: no dynamo, no inductor; bit-identical results)
* ``--step-cache off, warm``: dynamo traces the steps again, inductor finds its code in its cache
* ``eager``: ``pure-prune run --eager``
* ``seeds``: ``pure-prune run --seeds N`` (one vmapped program), first with the vmapped steps not
  yet in the step cache (the single-seed entries do not cover them), then warm, against
  ``N sequential peers`` (seeds 0..N-1)
* ``compute limit``: one compiled training step's median time (``--step-time``, 50 calls in a
  subprocess with the filled cache, run in place as ``train.fit`` runs it, alternating in blocks
  of 10 with the step that returns new trees, whose medians the JSON also keeps; the least of
  three such processes) times the steps a seed takes: ``(rounds + 1) * epochs * (1437 // 64)``,
  and ``N`` times that for the seeds; what the run would take with nothing but its steps.

The single-seed rows run ``--repeats`` times (3), interleaved (peer, first, cold, warm, traced,
eager, then again, each repeat with fresh caches): the table gives each row's median wall time,
the median of its ratios to the same repeat's peer (on a shared machine the peer's own time moves
10-20% between minutes) and each repeat's ratio; the seeds rows and the sequential peers run once,
against the peers' median. Settings: rate 0.2, batch 64, SGD lr 0.05 momentum 0.9, evaluation
after every epoch. Writes a table and ``bench/results/end_to_end.json`` with the machine and the
load average before and after (a shared machine: a 1-minute load above its core count means the
times are inflated and noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pure_prune.app.machine import cpu_name

HERE = Path(__file__).resolve().parent
TRAIN_SIZE, BATCH = 1437, 64  # the digits train split and the batch size of both programs


def _timed(cmd: list[str], env: dict[str, str]) -> dict:
    """Run ``cmd``; its wall seconds and last stdout line. Raises ``RuntimeError`` if it fails."""
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    lines = done.stdout.strip().splitlines()
    return {"wall_s": wall, "last_line": lines[-1] if lines else ""}


def _step_time(reps: int, backend: str) -> None:
    """Print, as JSON, the median seconds of one training step of the digits MLP (masks all kept),
    compiled unless ``backend`` is ``eager``: ``step_s`` of the step as ``train.fit`` runs it (in
    place on its own copies when the step has ``in_place``, as compiled steps do) and ``pure_step_s``
    of the step returning new trees; the two alternate in blocks of 10 calls."""
    import torch

    from pure_prune import mask, train
    from pure_prune.app.experiment import setup

    torch.set_num_threads(1)
    exp, init = setup("mlp", "digits", batch_size=BATCH, compile=backend != "eager")
    params, state = init(0)
    masks, opt_state = mask.ones_like(params), exp.optimizer.init(params)
    batch = next(exp.train_batches(0)(0))
    in_place = train.in_place_step(exp.step, params, opt_state)
    own = [train.own_copies(params), state, train.own_copies(opt_state)]
    times: dict[str, list[float]] = {"step_s": [], "pure_step_s": []}
    for block in range(reps // 10 + 1):  # the first block compiles
        for _ in range(10):
            t0 = time.perf_counter()
            params, state, opt_state, _ = exp.step(params, state, opt_state, masks, batch)
            t1 = time.perf_counter()
            if in_place is not None:
                own[1], _ = in_place(own[0], own[1], own[2], masks, batch)
            else:
                own[:] = exp.step(own[0], own[1], own[2], masks, batch)[:3]
            t2 = time.perf_counter()
            if block:
                times["pure_step_s"].append(t1 - t0)
                times["step_s"].append(t2 - t1)
    print(json.dumps({k: statistics.median(v) for k, v in times.items()}))


def _eval_time(reps: int) -> None:
    """Print the median seconds of one evaluation of the digits test split (the runner's, every
    epoch) by the eager and the compiled eval step, as JSON."""
    import torch

    from pure_prune import losses, mask, train
    from pure_prune.app.experiment import setup

    torch.set_num_threads(1)
    exp, init = setup("mlp", "digits", batch_size=BATCH, compile=False)
    params, state = init(0)
    masks = mask.ones_like(params)
    steps = {
        "eval_eager_s": train.make_eval_step(exp.model, losses.cross_entropy, compile=False),
        "eval_compiled_s": train.make_eval_step(exp.model, losses.cross_entropy, compile=True),
    }
    times: dict[str, list[float]] = {k: [] for k in steps}
    for i in range(reps + 3):  # the first calls compile; the two alternate
        for name, step in steps.items():
            t0 = time.perf_counter()
            train.evaluate(step, params, state, masks, exp.test_batches())
            if i >= 3:
                times[name].append(time.perf_counter() - t0)
    print(json.dumps({k: statistics.median(v) for k, v in times.items()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20, help="pruning rounds (default: %(default)s)")
    ap.add_argument("--epochs", type=int, default=30, help="epochs per round (default: %(default)s)")
    ap.add_argument("--seeds", type=int, default=8, help="seeds of the vmapped run (default: %(default)s)")
    ap.add_argument("--quick", action="store_true", help="1 round, 1 epoch, 2 seeds: a smoke test")
    ap.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="times each single-seed row runs, interleaved with the peer; the table gives medians "
        "(default: %(default)s)",
    )
    ap.add_argument(
        "--out", default=str(HERE / "results" / "end_to_end.json"), help="JSON (default: %(default)s)"
    )
    ap.add_argument(
        "--backend",
        default="inductor",
        choices=("inductor", "aot_eager", "eager"),
        help="torch.compile backend of the compiled runs; not inductor only to test this script quickly "
        "(default: %(default)s)",
    )
    ap.add_argument("--step-time", type=int, default=None, metavar="REPS", help=argparse.SUPPRESS)
    ap.add_argument(
        "--eval-time",
        type=int,
        default=None,
        metavar="REPS",
        help="only print the median time of one test-split evaluation, eager and compiled (JSON)",
    )
    args = ap.parse_args()
    if args.step_time is not None:
        return _step_time(args.step_time, args.backend)
    if args.eval_time is not None:
        return _eval_time(args.eval_time)
    if args.quick:
        args.rounds, args.epochs, args.seeds, args.repeats = 1, 1, 2, 1
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="pp-e2e-"))
    # each repeat's runs get their own caches (``mine`` below: the inductor cache and the recorded
    # ISA probe of app/vec_isa_record); the seeds rows, the sequential peers and the step time reuse
    # the last repeat's
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    py = sys.executable
    peer = [py, str(HERE / "peer_lottery.py"), "--rounds", str(args.rounds), "--epochs", str(args.epochs)]
    run = [py, "-m", "pure_prune", "run", "--method", "imp", "--model", "mlp", "--data", "digits"]
    run += ["--rate", "0.2", "--pruning-times", str(args.rounds), "--epochs", str(args.epochs)]
    run += [
        "--batch-size",
        str(BATCH),
        "--lr",
        "0.05",
        "--momentum",
        "0.9",
        "--threads",
        "1",
        "--no-progress",
    ]
    rows: dict[str, dict] = {}
    peer_name = "peer (eager nn.Module + prune hooks + torch.optim)"

    def one(name: str, cmd: list[str], repeat: int | None, **env_changes: str) -> None:
        """Time ``cmd`` into row ``name``; ``repeat``: which of the repeats (``None``: run once)."""
        timed = _timed(cmd, {**env, **env_changes})
        row = rows.setdefault(name, {"walls_s": [], "last_line": ""})
        row["walls_s"].append(timed["wall_s"])
        row["last_line"] = timed["last_line"]
        tag = "" if repeat is None else f"[{repeat + 1}/{args.repeats}] "
        print(f"  {tag}{name}: {timed['wall_s']:.1f} s  ({timed['last_line']})", flush=True)

    for r in range(args.repeats):  # interleaved: each repeat's rows against its own peer
        mine = {
            "TORCHINDUCTOR_CACHE_DIR": str(tmp / f"inductor-{r}"),
            "PURE_PRUNE_CACHE": str(tmp / f"machine-{r}"),
        }
        one(peer_name, peer, r)
        one(
            "pure-prune run, first on the machine (empty caches, ISA not yet probed)",
            [*run, "--save-dir", str(tmp / f"first-{r}")],
            r,
            **{**mine, "TORCHINDUCTOR_CACHE_DIR": str(tmp / f"inductor-first-{r}")},
        )
        one(
            "pure-prune run, cold (empty inductor cache)",
            [*run, "--save-dir", str(tmp / f"cold-{r}")],
            r,
            **mine,
        )
        one(
            "pure-prune run, warm (steps loaded from the step cache)",
            [*run, "--save-dir", str(tmp / f"warm-{r}")],
            r,
            **mine,
        )
        one(
            "pure-prune run --step-cache off, warm (dynamo traces, inductor's cache)",
            [*run, "--step-cache", "off", "--save-dir", str(tmp / f"traced-{r}")],
            r,
            **mine,
        )
        one("pure-prune run --eager", [*run, "--eager", "--save-dir", str(tmp / f"eager-{r}")], r, **mine)
    env.update(mine)  # the seeds: once, with the last repeat's caches
    seeds = [*run, "--seeds", str(args.seeds)]
    one(f"pure-prune run --seeds {args.seeds}, cold", [*seeds, "--save-dir", str(tmp / "seeds-cold")], None)
    one(f"pure-prune run --seeds {args.seeds}, warm", [*seeds, "--save-dir", str(tmp / "seeds-warm")], None)
    t0 = time.perf_counter()
    for seed in range(args.seeds):
        _timed([*peer, "--seed", str(seed)], env)
    rows[f"{args.seeds} peers one after another"] = {"walls_s": [time.perf_counter() - t0], "last_line": ""}
    timings = [  # three processes: the least median, a lower bound less moved by the machine's noise
        json.loads(_timed([py, __file__, "--step-time", "50", "--backend", args.backend], env)["last_line"])
        for _ in range(3)
    ]
    step_medians = [t["step_s"] for t in timings]  # in place, as the run's fit calls it
    step = min(step_medians)
    steps = (args.rounds + 1) * args.epochs * (TRAIN_SIZE // BATCH)
    rows["compute limit, 1 seed (compiled step x steps)"] = {"walls_s": [step * steps], "last_line": ""}
    rows[f"compute limit, {args.seeds} seeds"] = {"walls_s": [args.seeds * step * steps], "last_line": ""}
    load_after = os.getloadavg()

    peers = rows[peer_name]["walls_s"]
    base = statistics.median(peers)
    for r in rows.values():
        r["wall_s"] = statistics.median(r["walls_s"])
        if len(r["walls_s"]) == len(peers):  # median of the ratios to the same repeat's peer
            r["ratio_to_peer"] = statistics.median(w / p for w, p in zip(r["walls_s"], peers))
            r["ratios_to_peer"] = [w / p for w, p in zip(r["walls_s"], peers)]
        else:  # measured once: against the peers' median
            r["ratio_to_peer"] = r["wall_s"] / base
    width = max(map(len, rows))
    lines = [
        f"| {'program':<{width}} | wall s (median) | vs peer (median) | vs peer, each repeat |",
        f"|{'-' * (width + 2)}|----------------:|-----------------:|----------------------|",
    ]
    lines += [
        f"| {k:<{width}} | {r['wall_s']:15.1f} | {r['ratio_to_peer']:16.2f} | "
        f"{' '.join(f'{x:.2f}' for x in r.get('ratios_to_peer', [])):<20} |"
        for k, r in rows.items()
    ]
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(), "threads": 1}
    import torch  # the version only, after every timed run

    machine["torch"] = torch.__version__
    print(
        f"\n{args.rounds} rounds x {args.epochs} epochs, {steps} steps per seed, one step {1e3 * step:.2f} ms"
    )
    print("\n".join(lines))
    print(f"machine: {machine['cpu']}, {os.cpu_count()} cores, torch {torch.__version__}, 1 thread; "
          f"load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "settings": {"backend": args.backend, "rounds": args.rounds, "epochs": args.epochs, "seeds": args.seeds, "rate": 0.2,
                     "batch_size": BATCH, "lr": 0.05, "momentum": 0.9, "steps_per_seed": steps},
        "step_s": step,
        "step_medians_s": step_medians,
        "pure_step_medians_s": [t["pure_step_s"] for t in timings],
        "repeats": args.repeats,
        "rows": rows,
        "machine": machine,
        "loadavg_before": list(load_before),
        "loadavg_after": list(load_after),
    }  # fmt: skip
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
