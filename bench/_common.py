"""Shared bench helpers: interleaved median timing, tables, JSON results with machine information.

Peers are timed *interleaved* (one call of each per round, in rotating order), so that the
load of a shared machine falls on all of them alike and their ratios stay meaningful even when
absolute times drift. Every script sets ``torch.set_num_threads(2)`` (the anchors' setting).

On a shared, oversubscribed 2-core machine, two OpenMP threads that spin at every barrier
(libgomp's default) stall each other for up to hundreds of milliseconds per call whenever other
processes hold the cores; the distribution of a step's time turns bimodal and medians then
measure the neighbours. ``OMP_WAIT_POLICY=PASSIVE`` (set in the environment before Python starts)
makes waiting threads sleep instead, at the price of a futex wake-up per parallel region: a step
of many small kernels is then slower on two threads than on one (``bench/train_step.py``). The
machine information written with every result records the policy, with the load average and
the CPU time per call.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from pure_prune.app import machine as machine_lib

RESULTS = Path(__file__).resolve().parent / "results"
THREADS = 2


def setup_threads(threads: int = THREADS) -> None:
    """``torch.set_num_threads(threads)`` (intra-op) for the whole benchmark."""
    torch.set_num_threads(threads)


def cpu_model() -> str:
    """The CPU's model name (``pure_prune.app.machine.cpu_name``)."""
    return machine_lib.cpu_name()


def machine() -> dict[str, Any]:
    """Machine, library versions, thread settings and the load average when called."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    try:
        import jax

        info["jax"] = jax.__version__
    except ImportError:
        info["jax"] = None
    return info


def time_interleaved(
    fns: Mapping[str, Callable[[], Any]],
    *,
    reps: int = 30,
    warmup: int = 5,
    sync: Callable[[], None] | None = None,
    raw: bool = False,
) -> dict[str, dict[str, Any]]:
    """Time every function of ``fns`` ``reps`` times, one call of each per round.

    ``warmup`` rounds are run first and discarded. ``sync`` (e.g. ``torch.cuda.synchronize``) is
    called after each call. Returns ``{name: {"median_ms", "min_ms", "cpu_median_ms", "reps"}}``:
    wall-clock medians and minima, and the median CPU time of the process per call
    (``time.process_time``, all threads). With one thread the CPU time is the work itself and
    stays put when other processes load the machine; with two it also counts the time a thread
    spins at a barrier waiting for the other one. ``raw=True`` adds the samples, in seconds, as
    ``"wall_s"`` and ``"cpu_s"`` lists (to pool blocks of calls).
    """
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            c0, t0 = time.process_time(), time.perf_counter()
            fns[n]()
            if sync is not None:
                sync()
            times[n].append(time.perf_counter() - t0)
            cpu[n].append(time.process_time() - c0)
    out: dict[str, dict[str, Any]] = {
        n: {
            "median_ms": statistics.median(t) * 1e3,
            "min_ms": min(t) * 1e3,
            "cpu_median_ms": statistics.median(cpu[n]) * 1e3,
            "reps": len(t),
        }
        for n, t in times.items()
    }
    if raw:
        for n, t in times.items():
            out[n].update(wall_s=t, cpu_s=cpu[n])
    return out


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table (numbers with 3 significant decimals), with ``title`` above it."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    body = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)]
    line = "  ".join("-" * w for w in widths)
    out = [title, "  ".join(h.ljust(w) for h, w in zip(headers, widths)), line]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in body]
    return "\n".join(out)


def write_json(name: str, payload: Mapping[str, Any], out: str | Path | None = None) -> Path:
    """Write ``{"machine": machine(), **payload}`` to ``bench/results/<name>.json`` (or ``out``)."""
    path = Path(out) if out is not None else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2, default=str) + "\n")
    return path
