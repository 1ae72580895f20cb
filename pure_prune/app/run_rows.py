"""A run's per-round metrics rows and their log formatting.

Round metrics: global sparsity (prunable leaves and all params), per-layer sparsity, parameters
kept, test accuracy/loss at the end of the round and the best test accuracy over its epochs,
training metrics, wall time (pruning, training, round), and the compile count of the steps
(graphs compiled during the round, via a counting ``torch.compile`` backend).

With several seeds, ``rounds.jsonl`` holds one row per round with, for every per-seed metric ``m``
(:data:`SEED_METRICS`), its mean ``m``, sample standard deviation ``m_std`` and the per-seed values
``per_seed[m]``; ``summary.csv`` has the means and the ``_std`` columns. Timings of a round are the
one program's.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

from pure_prune import mask, seeds
from pure_prune.algorithms import gradual, imp
from pure_prune.app.runconfig import RunConfig, parse_nm
from pure_prune.schedule import linear, linear_steps, polynomial

__all__ = [
    "ROUND_COLUMNS",
    "SEED_METRICS",
    "SUMMARY_COLUMNS",
    "TIME_COLUMNS",
    "aggregate",
    "gradual_schedule",
    "round_row",
]

SEED_METRICS = (
    "sparsity",
    "sparsity_all",
    "params_kept",
    "test_accuracy",
    "test_loss",
    "best_test_accuracy",
    "train_accuracy",
    "train_loss",
)
"""Round metrics that differ between seeds: a several-seed row holds their mean, ``_std`` and values."""
TIME_COLUMNS = (
    "prune_seconds",
    "train_seconds",
    "round_seconds",
    "elapsed_seconds",
    "compiled_graphs",
    "compile_seconds",
)
ROUND_COLUMNS = (
    "round",
    "pruned",
    "target",
    "sparsity",
    "sparsity_all",
    "params_kept",
    "params_total",
    "test_accuracy",
    "best_test_accuracy",
    "test_loss",
    "train_accuracy",
    "train_loss",
    "epochs",
    *TIME_COLUMNS,
)


SUMMARY_COLUMNS = (
    "round",
    "pruned",
    "target",
    "seeds",
    *itertools.chain.from_iterable((m, f"{m}_std") for m in SEED_METRICS),
    "params_total",
    "epochs",
    *TIME_COLUMNS,
)
"""The ``summary.csv`` columns of a several-seed run: means and ``_std`` of :data:`run_rows.SEED_METRICS`."""


def round_row(
    cfg: RunConfig,
    r: int,
    masks: Any,
    params: Any,
    history: list[dict[str, float]],
    test: dict[str, float],
    prune_seconds: float | None,
    timing: dict[str, Any],
) -> dict[str, Any]:
    """One seed's round row from its final masks and params, its epoch history, its test metrics
    ``{"accuracy", "loss"}`` and ``timing`` (``t_round``, ``graphs``, ``compile_seconds``, ``elapsed``)."""
    kept, total = mask.count(masks, params)
    best = max([test["accuracy"], *(h["test_accuracy"] for h in history if "test_accuracy" in h)])
    last = history[-1] if history else {}
    return {
        "round": r,
        "method": cfg.method,
        "pruned": prune_seconds is not None,
        "target": _target(cfg, r) if prune_seconds is not None else None,
        "sparsity": mask.sparsity(masks),
        "sparsity_all": 1.0 - kept / total,
        "params_kept": kept,
        "params_total": total,
        "layer_sparsity": mask.layer_sparsity(masks),
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "best_test_accuracy": best,
        "train_accuracy": last.get("accuracy"),
        "train_loss": last.get("loss"),
        "epochs": len(history),
        "last_epoch_seconds": last.get("seconds"),
        "prune_seconds": prune_seconds,
        "train_seconds": timing["t_round"] - (prune_seconds or 0.0),
        "round_seconds": timing["t_round"],
        "elapsed_seconds": timing["elapsed"],
        "compiled_graphs": timing["graphs"],
        "compile_seconds": timing["compile_seconds"],
    }


def gradual_schedule(cfg: RunConfig) -> Callable[[int], float]:
    """Gradual pruning's ``schedule(epoch) -> target sparsity`` of the (resolved) config ``cfg``."""
    if cfg.schedule == "linear_steps":
        return linear_steps(
            cfg.sparsity, steps=cfg.gradual_steps, start=cfg.gradual_start, every=cfg.gradual_every
        )
    make = linear if cfg.schedule == "linear" else polynomial
    return make(
        0.0, cfg.sparsity, start=cfg.gradual_start, every=cfg.gradual_every, updates=cfg.gradual_steps
    )


def _target(cfg: RunConfig, r: int) -> float | None:
    """The sparsity a pruning step of round ``r`` aims at (rows/channels: of rows/units), or ``None``."""
    if cfg.method in ("imp", "refill", "rsst", "distill"):
        return imp.target(min(r, cfg.pruning_times), cfg.rate, cfg.schedule)
    if cfg.method == "gradual":
        return gradual.segments(gradual_schedule(cfg), cfg.epochs)[r][2]
    if cfg.method == "one_shot":
        return 1.0 - parse_nm(cfg.nm)[0] / parse_nm(cfg.nm)[1] if cfg.struct == "nm" else cfg.sparsity
    return None


def pct_text(row: dict[str, Any], key: str, *, complement: bool = False) -> str:
    """``row[key]`` in percent (``1 - row[key]`` with ``complement``), with ``± std`` when the row has one."""
    v = row[key]
    text = f"{100 * (1 - v if complement else v):.2f}%"
    std = row.get(f"{key}_std")
    return text if std is None else f"{text} ± {100 * std:.2f}%"


def aggregate(rows: list[dict[str, Any]], keys: list[int]) -> dict[str, Any]:
    """One several-seed row from the single-seed rows of one round (one per seed, in key order).

    Per :data:`run_rows.SEED_METRICS` entry ``m``: ``m`` (mean), ``m_std`` (sample std,
    ``seeds.summarize``) and ``per_seed[m]``; a metric that some seed lacks (``None``) has mean and
    std ``None``. ``layer_sparsity`` is the mean per layer. Timings are the one program's (shared by
    the rows); ``mode`` is ``"vmap"``.
    """
    first = rows[0]
    out: dict[str, Any] = {
        k: first[k] for k in ("round", "method", "pruned", "target", "params_total", "epochs")
    }
    out.update(seeds=len(rows), keys=list(keys), mode="vmap")
    for m in SEED_METRICS:
        values = [r[m] for r in rows]
        stats = None if any(v is None for v in values) else seeds.summarize(values)
        out[m] = None if stats is None else stats["mean"]
        out[f"{m}_std"] = None if stats is None else stats["std"]
    out["per_seed"] = {m: [r[m] for r in rows] for m in SEED_METRICS}
    out["layer_sparsity"] = {
        p: math.fsum(r["layer_sparsity"][p] for r in rows) / len(rows) for p in first["layer_sparsity"]
    }
    out.update({k: first[k] for k in TIME_COLUMNS})
    out["last_epoch_seconds"] = first.get("last_epoch_seconds")  # the one program's, shared by the seeds
    return out
