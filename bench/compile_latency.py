"""Compile latency of a run (issue 16, "hide the compile"): what each way of not waiting for inductor gains.

Every measurement is a fresh process (``OMP_NUM_THREADS=1``, one torch thread) running a 3-round IMP
run of the digits MLP (30 epochs a round, ``pure_prune.app.runner.run``); it reports the seconds of
the first train-step call, of the first eval-step call and of the whole run. The ways, interleaved
per repeat (medians over the repeats; ratios to the eager run):

* ``eager``: ``compile=False`` (no compile at all: the floor of the run's wall time);
* ``compiled``: ``torch.compile`` with inductor's on-disk cache already warm (the default);
* ``saved``: ``make_step(..., cache_dir=...)`` (``pure_prune.stage.Saved``): the steps' ``aot_compile``
  results loaded from files written by an earlier process (no dynamo, no inductor);
* ``background``: the eager steps run while a thread compiles the same step (warm cache) and calls
  it once on the first call's inputs; the run switches to it when ready (2 cores, the GIL);
* ``no_einops``: ``compiled`` with ``cross_entropy`` and the MLP's ``flatten`` written with
  ``reshape`` instead of einops (item 1: dynamo traces einops' pattern parsing on every compile).

Writes ``bench/results/compile_latency.json`` with the machine and load average.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WAYS = ("eager", "compiled", "saved", "background", "no_einops")


def _cross_entropy_reshape(logits, labels, *, label_smoothing=0.0):
    """``losses.cross_entropy`` (no smoothing) without einops; its code runs in ``losses_outputs``."""
    _check_logits(logits, labels)  # noqa: F821 - a global of losses_outputs
    logp = torch.log_softmax(logits.reshape(-1, logits.shape[-1]), dim=-1)  # noqa: F821
    return (-torch.gather(logp, 1, labels.reshape(-1, 1).long())).mean()  # noqa: F821


def _patch(way: str, cache_dir: str, times: dict) -> None:
    """Wrap ``train.make_step``/``make_eval_step`` (as the run context calls them) for ``way`` and
    record the seconds of each step's first call in ``times``."""

    from pure_prune import train

    if way == "no_einops":
        from models import layers
        from pure_prune import losses_outputs

        losses_outputs.cross_entropy.__code__ = _cross_entropy_reshape.__code__
        layers.flatten.__code__ = (lambda x: x.reshape(x.shape[0], -1)).__code__

    def timed(name, fn):
        def call(*args):
            if name in times:
                return fn(*args)
            t0 = time.perf_counter()
            out = fn(*args)
            times[name] = time.perf_counter() - t0
            return out

        return call

    def wrap(make, name):
        def build(*args, **kwargs):
            if way == "saved" and kwargs.get("compile"):
                kwargs.update(cache_dir=cache_dir, backend="inductor")
            if way == "background" and kwargs.get("compile"):
                return timed(name, _background(make, args, kwargs))
            return timed(name, make(*args, **kwargs))

        return build

    train.make_step = wrap(train.make_step, "train")
    train.make_eval_step = wrap(train.make_eval_step, "eval")


def _background(make, args, kwargs):
    """The eager step until a thread has compiled (and called once) the compiled one."""
    eager = make(*args, **{**kwargs, "compile": False})
    compiled = make(*args, **kwargs)
    ready: list = []

    def first(call_args):
        compiled(*call_args)
        ready.append(compiled)

    def step(*call_args):
        if ready:
            return ready[0](*call_args)
        if not hasattr(step, "thread"):
            step.thread = threading.Thread(target=first, args=(call_args,), daemon=True)
            step.thread.start()
        step.eager_calls = getattr(step, "eager_calls", 0) + 1
        return eager(*call_args)

    return step


def child(way: str, cache_dir: str) -> dict:
    import torch

    torch.set_num_threads(1)
    times: dict = {}
    _patch(way, cache_dir, times)
    from pure_prune.app import runner
    from pure_prune.app.runconfig import RunConfig

    with tempfile.TemporaryDirectory() as d:
        cfg = RunConfig(
            method="imp", model="mlp", data="digits", pruning_times=3, epochs=30, rate=0.2, lr=0.05,
            momentum=0.9, batch_size=64, compile=way != "eager", progress=False, threads=1, save_dir=d,
        )  # fmt: skip
        t0 = time.perf_counter()
        res = runner.run(cfg, log=lambda m: None)
        wall = time.perf_counter() - t0
    rows = res.rounds
    last = rows[-1] if rows else {}
    acc = next((v for k, v in last.items() if "acc" in k and isinstance(v, float)), None)
    return {"way": way, "run_s": wall, "first_train_s": times.get("train"), "first_eval_s": times.get("eval"),
            "last_accuracy": acc}  # fmt: skip


def _spawn(way: str, cache_dir: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, __file__, "--child", way, cache_dir],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    if out.returncode:
        raise RuntimeError(f"{way}: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(repeats: int = 3) -> None:
    sys.path.insert(0, str(ROOT))
    from bench import _common

    cache_dir = tempfile.mkdtemp(prefix="pp_saved_steps_")
    warm = [
        _spawn("compiled", cache_dir),
        _spawn("saved", cache_dir),
    ]  # fill inductor's cache, write the files
    runs: dict[str, list[dict]] = {w: [] for w in WAYS}
    for r in range(repeats):
        for way in WAYS[r % len(WAYS) :] + WAYS[: r % len(WAYS)]:
            runs[way].append(_spawn(way, cache_dir))
            print(runs[way][-1], flush=True)
    med = {
        w: {k: statistics.median(x[k] for x in rs) for k in ("run_s", "first_train_s", "first_eval_s") if rs[0][k] is not None}
        for w, rs in runs.items()
    }  # fmt: skip
    base = med["eager"]["run_s"]
    print(f"\n{'way':<12}{'run s':>8}{'x eager':>9}{'1st train s':>13}{'1st eval s':>12}")
    for w in WAYS:
        m = med[w]
        print(
            f"{w:<12}{m['run_s']:>8.2f}{m['run_s'] / base:>9.2f}"
            f"{m.get('first_train_s', float('nan')):>13.3f}{m.get('first_eval_s', float('nan')):>12.3f}"
        )
    result = {
        "machine": _common.machine(),
        "setup": "3-round IMP, digits MLP, 30 epochs/round, batch 64, 1 thread, fresh process per run",
        "repeats": repeats,
        "median": med,
        "ratio_to_eager": {w: med[w]["run_s"] / base for w in WAYS},
        "first_write": warm,
        "runs": runs,
        "loadavg_end": os.getloadavg(),
    }
    _common.RESULTS.mkdir(exist_ok=True)
    (_common.RESULTS / "compile_latency.json").write_text(json.dumps(result, indent=1, default=str) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], sys.argv[3])))
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
