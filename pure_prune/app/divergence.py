"""A run's divergence: a loss that turns NaN or infinite stops it, with a row that says where.

Every epoch's training loss (and test loss, with ``eval_every_epoch``) is checked where the epoch's
metrics are read anyway (no extra device sync per step): :func:`check_epoch` (called by the run's
trainer after each epoch) raises :class:`Diverged` at the end of the first non-finite epoch (a stack
of seeds: any seed's loss). :func:`check_finite` checks a finished round's history and metrics row; :func:`diverged_row`
and :func:`marked` build the row ``rounds.jsonl`` and ``summary.csv`` get (non-finite floats as
``None``, ``diverged`` naming the metric, value, round and epoch).
"""

from __future__ import annotations

import math
from typing import Any

from pure_prune import mask
from pure_prune.algorithms import base
from pure_prune.algorithms.base import RoundOut, Trained
from pure_prune.app.runconfig import RunConfig

__all__ = [
    "EPOCH_LOSSES",
    "ROW_LOSSES",
    "Diverged",
    "attaching",
    "check_finite",
    "diverged_row",
    "check_epoch",
    "marked",
    "non_finite",
]


class Diverged(ValueError):
    """The loss turned NaN or infinite: ``round``, ``epoch`` (``None`` when only the round's final
    metrics are not finite), the ``metric`` and its ``value``. ``history`` holds the round's epochs
    up to the diverged one; ``masks``/``params`` are the trees that round trained (full size)."""

    def __init__(self, r: int, epoch: int | None, metric: str, value: float, history: list[dict[str, Any]]):
        where = f"round {r}" if epoch is None else f"round {r}, epoch {epoch}"
        super().__init__(
            f"the run diverged: {metric} is {value} in {where}; nothing of round {r} was checkpointed "
            "(lower --lr, or check the data), and --resume would restart it from the round before"
        )
        self.round, self.epoch, self.metric, self.value, self.history = r, epoch, metric, value, history
        self.masks: Any = None
        self.params: Any = None
        self.row: dict[str, Any] | None = None  # the round's metrics row, when the round finished


def non_finite(row: dict[str, Any], keys: tuple[str, ...]) -> tuple[str, float] | None:
    """The first of ``keys`` whose value in ``row`` is a float that is NaN or infinite (per-seed
    values included: a list of floats, or ``row["per_seed"][key]``), with that value; ``None`` when
    all are finite."""
    for k in keys:
        v = row.get(k)
        values = [*(v if isinstance(v, list) else [v]), *(row.get("per_seed", {}) or {}).get(k, [])]
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                return k, v
    return None


EPOCH_LOSSES = ("loss", "test_loss")  # an epoch's history entry
ROW_LOSSES = ("train_loss", "test_loss")  # a round's metrics row


def check_epoch(
    r: int, entry: dict[str, Any], history: list[dict[str, Any]], masks: Any, params: Any
) -> None:
    """Raise :class:`Diverged` (carrying ``masks``/``params``, the trees the round trained) when the
    epoch ``entry`` of round ``r`` has a loss that is not finite; ``history`` holds the round's
    epochs so far, ``entry`` included."""
    bad = non_finite(entry, EPOCH_LOSSES)
    if bad is not None:
        d = Diverged(r, int(entry["epoch"]), *bad, history)
        d.masks, d.params = masks, params
        raise d


def attaching(train_fn: base.TrainFn) -> base.TrainFn:
    """``train_fn`` whose :class:`Diverged` carries the masks and params it was called with (a
    compacting trainer's inner trainer sees the small trees: this puts the full-size ones back)."""

    def attaching(params, state, opt_state, masks, **kw: Any) -> Trained:
        try:
            return train_fn(params, state, opt_state, masks, **kw)
        except Diverged as d:
            d.masks, d.params = masks, params
            raise

    return attaching


def diverged_row(cfg: RunConfig, d: Diverged, timing: dict[str, Any]) -> dict[str, Any]:
    """The row that marks a round stopped by :class:`Diverged` (from the trees it trained)."""
    masks = d.masks
    row: dict[str, Any] = {"round": d.round, "method": cfg.method, "pruned": None, "target": None}
    if masks is not None:  # several seeds: stacked trees, so the counts are over all the seeds
        kept, total = mask.count(masks, d.params)
        row.update(
            sparsity=mask.sparsity(masks),
            sparsity_all=1.0 - kept / total,
            params_kept=kept / cfg.seeds,
            params_total=total // cfg.seeds,
            layer_sparsity=mask.layer_sparsity(masks),
        )
    last = d.history[-1] if d.history else {}
    names = {
        "test_accuracy": "test_accuracy",
        "test_loss": "test_loss",
        "accuracy": "train_accuracy",
        "loss": "train_loss",
    }
    per_seed = {name: last[k] for k, name in names.items() if isinstance(last.get(k), list)}
    if per_seed:  # several seeds: one value per seed, and their mean
        row["per_seed"] = per_seed

    def value(k: str) -> Any:
        v = last.get(k)
        return sum(v) / len(v) if isinstance(v, list) and v else v

    row.update(
        test_accuracy=value("test_accuracy"),
        test_loss=value("test_loss"),
        best_test_accuracy=None,
        train_accuracy=value("accuracy"),
        train_loss=value("loss"),
        epochs=len(d.history),
        round_seconds=timing["t_round"],
        elapsed_seconds=timing["elapsed"],
        compiled_graphs=timing["graphs"],
        compile_seconds=timing["compile_seconds"],
    )
    return row


def marked(row: dict[str, Any], d: Diverged) -> dict[str, Any]:
    """``row`` with ``diverged`` (metric, value, round, epoch) and its non-finite floats as ``None``."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    where = "" if d.epoch is None else f", epoch {d.epoch}"
    return {**clean(row), "diverged": f"{d.metric} {d.value} in round {d.round}{where}"}


def check_finite(r: int, out: RoundOut, metrics: dict[str, Any] | None) -> None:
    """Raise :class:`Diverged` when an epoch's loss of round ``r`` is not finite (carrying the
    round's final trees), or, given the round's ``metrics`` row, its train or test loss (carrying
    the row)."""
    if metrics is None:
        for h in out.history:
            bad = non_finite(h, EPOCH_LOSSES)
            if bad is not None:
                d = Diverged(r, int(h["epoch"]) if "epoch" in h else None, *bad, out.history)
                d.masks, d.params = out.carry.masks, out.carry.params
                raise d
        return
    bad = non_finite(metrics, ROW_LOSSES)
    if bad is not None:
        d = Diverged(r, None, *bad, out.history)
        d.row = metrics
        raise d
