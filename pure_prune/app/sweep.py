"""``pure-prune sweep``: accuracy against compression for many criteria, every point over many seeds.

In the spirit of ShrinkBench (Blalock et al. 2020, *What is the state of neural network
pruning?*): one model and data set, every criterion pruned one-shot to every compression ratio
``c`` (sparsity ``1 − 1/c``: ``c = 2, 4, 8, 16, 32`` keep 50%, 25%, 12.5%, 6.25%, 3.125% of the
prunable weights), each point measured over ``S`` seeds and reported as ``mean ± std``, without
fine-tuning and after it.

**A sweep is ``pure-prune run --method one_shot --seeds S``, many times over one dense round.** The
settings give one run config (:meth:`SweepConfig.run_config`); its context
(``run_context.build_context``: compiled steps, keys ``k_i = seed + i`` split ``rng.split(k_i, 3)``,
scoring batches) is built once and serves every point.

* **Dense training once.** Round 0 of that run (``run_rounds.run_round(ctx, None, 0, ...)``: ``epochs``
  epochs, all ``S`` seeds as one vmapped program), evaluated with the seed eval step. Its carry is
  cached in ``<save_dir>/dense/<hash>.safetensors`` (``pure_prune.app.checkpoint``), keyed by every
  setting that changes it (:meth:`SweepConfig.dense_config`); every point, and every later sweep
  with the same settings, starts from this file.
* **A point** is one criterion (with its scope) at one compression: round 1 of the same run with
  ``importance``, ``scope`` and ``sparsity`` set to the point's (:func:`run_point`): score, prune,
  fine-tune ``finetune_epochs`` epochs with the masks fixed. So seed ``i`` of a point is exactly
  round 1 of ``pure-prune run --method one_shot --seeds S`` with those settings
  (``tests/test_grid.py`` checks it). A unit-level criterion (one that scores whole channels, e.g.
  ``hap``) runs with ``struct = "channels"``: it removes channels, its compression is counted in
  units (``sparsity`` = share of removed units; ``achieved_sparsity`` in the CSV is the pruned
  share of the masked entries). Metrics per seed: ``dense_accuracy``/``dense_loss`` (round 0),
  ``pruned_accuracy``/``pruned_loss`` (the dense params under the point's masks, before
  fine-tuning), ``accuracy``/``loss`` (after fine-tuning) and ``sparsity``.
* **Distributed and resumable.** The points run under ``distributed.run_grid``: one process, or
  ``torchrun --nproc_per_node N -m pure_prune sweep ...`` (rank 0 trains or loads the dense
  round and broadcasts it; the points are sharded round robin). Each point's result is a JSON
  file in ``<save_dir>/points/<settings hash>/`` (so sweeps with other fine-tuning settings keep
  their own results beside it); running again computes only the missing points, and adding a
  criterion or a compression computes only the new ones.

Outputs (rank 0): ``sweep.csv`` (:data:`CSV_COLUMNS`: one row per criterion, scope, compression
and fine-tuning state, plus a ``dense`` row), ``sweep.png`` (accuracy against compression, log₂
axis, one line per criterion with ``mean ± std`` bands; one panel before and one after
fine-tuning) and ``sweep.md`` (the Markdown table that the command prints).

The settings live in :mod:`pure_prune.app.sweep_config`, the table and plot in
:mod:`pure_prune.app.sweep_table`; this module re-exports their public names.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist

from pure_prune import importance, mask, seeds, tree
from pure_prune.algorithms import base, masking
from pure_prune.algorithms.base import Carry
from pure_prune.app import checkpoint, distributed, extras, report
from pure_prune.app.run_context import RunCtx, build_context
from pure_prune.app.run_rounds import round_ops, run_round
from pure_prune.app.sweep_config import (
    COMPRESSIONS,
    CSV_COLUMNS,
    DEFAULT_CRITERIA,
    FORMAT,
    SCOPES,
    SweepConfig,
    default_criteria,
    parse_criteria,
    sparsity_of,
    sweep_points,
)
from pure_prune.app.sweep_table import markdown, plot, table
from pure_prune.app.trainer import epoch_trainer

__all__ = [
    "COMPRESSIONS",
    "CSV_COLUMNS",
    "DEFAULT_CRITERIA",
    "FORMAT",
    "PointResult",
    "SweepConfig",
    "SweepResult",
    "default_criteria",
    "dense_round",
    "evaluate",
    "markdown",
    "parse_criteria",
    "plot",
    "point_context",
    "run",
    "run_point",
    "sparsity_of",
    "sweep_points",
    "table",
]

_TREES = ("params", "state", "opt_state", "masks", "rewind", "extra")


# ----------------------------------------------------------------------------- one round's numbers


def evaluate(ctx: RunCtx, params: Any, state: Any, masks: Any) -> dict[str, list[float]]:
    """Test ``{"accuracy": [S], "loss": [S]}`` of the context's trees, one value per seed (a list of
    one for a single-seed context): the seed eval step for a stack, ``Experiment.evaluate`` for one
    seed, as the runner's rows evaluate them."""
    if ctx.seeds is None:
        test = ctx.exp.evaluate(params, state, masks)
        return {"accuracy": [float(test["accuracy"])], "loss": [float(test["loss"])]}
    test = seeds.evaluate_seeds(ctx.steps["eval"], params, state, masks, ctx.exp.test_batches())
    return {"accuracy": [float(v) for v in test["accuracy"]], "loss": [float(v) for v in test["loss"]]}


def _per_seed(ctx: RunCtx, stacked: Any) -> list[Any]:
    return [stacked] if ctx.seeds is None else tree.unstack(stacked, ctx.seeds)


def _trainer(ctx: RunCtx) -> base.TrainFn:
    return epoch_trainer(ctx.exp, seeds_step=ctx.seed_steps)


def dense_round(ctx: RunCtx, train_fn: base.TrainFn | None = None) -> tuple[Carry, dict[str, list[float]]]:
    """Round 0 of the context's one_shot run (dense training, ``ctx.cfg.epochs`` epochs) and its test
    ``{"accuracy", "loss"}`` per seed. ``train_fn`` defaults to ``trainer.epoch_trainer`` of ``ctx``."""
    out = run_round(ctx, None, 0, train_fn or _trainer(ctx))
    c = out.carry
    return c, evaluate(ctx, c.params, c.state, c.masks)


class PointResult(NamedTuple):
    """One point: the fine-tuned ``carry`` (stacked for several seeds), per-seed ``metrics``
    (``dense_accuracy``, ``dense_loss``, ``pruned_accuracy``, ``pruned_loss``, ``accuracy``,
    ``loss``, ``sparsity``), their ``summary`` (``seeds.summarize``), the round's ``history``
    (``{"train": [], "finetune": [per epoch]}``) and the seeds' ``keys``."""

    carry: Carry
    metrics: dict[str, list[float]]
    summary: dict[str, dict[str, float | int]]
    history: dict[str, list[dict[str, Any]]]
    keys: list[int]

    def as_json(self) -> dict[str, Any]:
        """The plain-JSON part: ``{"keys", "metrics", "summary", "history"}`` (no tensors)."""
        return {"keys": self.keys, "metrics": self.metrics, "summary": self.summary, "history": self.history}


def point_context(ctx: RunCtx, *, criterion: str, scope: str, compression: float) -> RunCtx:
    """``ctx`` with the point's run config: ``importance = criterion``, ``scope``, ``sparsity =
    1 − 1/compression`` and ``struct = "channels"`` for a unit-level criterion (else
    ``"unstructured"``); the compiled steps, keys and scoring batches are ``ctx``'s."""
    if not isinstance(criterion, str) or criterion not in importance.names():
        raise ValueError(
            f"criterion must be a registered name, got {criterion!r}; known: {', '.join(importance.names())}"
        )
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    unit = importance.get(criterion).level == "unit"
    if unit and not any(g.prunable for g in ctx.groups):
        raise ValueError(
            f"criterion {criterion!r} removes whole channels, but the model has no prunable group"
        )
    cfg = dataclasses.replace(
        ctx.cfg,
        importance=criterion,
        scope=scope,
        sparsity=sparsity_of(compression),
        struct="channels" if unit else "unstructured",
    )
    return ctx._replace(cfg=cfg)


def run_point(
    ctx: RunCtx,
    dense: Carry,
    *,
    criterion: str,
    scope: str,
    compression: float,
    train_fn: base.TrainFn | None = None,
    dense_metrics: dict[str, list[float]] | None = None,
) -> PointResult:
    """One point of the grid: round 1 of ``ctx``'s one_shot run from the dense round-0 carry
    ``dense`` (:func:`dense_round`), with the point's settings (:func:`point_context`): score by
    ``criterion``, prune to sparsity ``1 − 1/compression`` by ``scope``, fine-tune
    ``ctx.cfg.finetune_epochs`` epochs; test metrics of the dense, the pruned (dense params under
    the new masks) and the fine-tuned trees. A unit-level criterion starts from the dense carry
    with ``masking.initial(..., "channels")`` masks (all kept, as the run with ``struct =
    "channels"`` starts). ``dense_metrics`` skips evaluating ``dense`` again."""
    pctx = point_context(ctx, criterion=criterion, scope=scope, compression=compression)
    train_fn = train_fn or _trainer(ctx)
    carry = dense
    if pctx.cfg.struct == "channels":
        exclude = pctx.cfg.exclude
        masks = round_ops(pctx, train_fn).each(
            lambda p: masking.initial(p, "channels", ctx.groups, exclude=exclude), dense.params
        )
        carry = dense._replace(masks=masks)
    out = run_round(pctx, carry, 1, train_fn)
    c = out.carry
    before = dense_metrics or evaluate(ctx, dense.params, dense.state, dense.masks)
    pruned = evaluate(ctx, mask.apply(dense.params, c.masks), dense.state, c.masks)
    final = evaluate(ctx, c.params, c.state, c.masks)
    metrics = {
        "dense_accuracy": before["accuracy"],
        "dense_loss": before["loss"],
        "pruned_accuracy": pruned["accuracy"],
        "pruned_loss": pruned["loss"],
        "accuracy": final["accuracy"],
        "loss": final["loss"],
        "sparsity": [mask.sparsity(m) for m in _per_seed(ctx, c.masks)],
    }
    history = [{k: v for k, v in h.items() if k != "seconds"} for h in out.history]
    keys = list(ctx.cfg.seed_keys())
    summary = {k: seeds.summarize(v) for k, v in metrics.items()}
    return PointResult(c, metrics, summary, {"train": [], "finetune": history}, keys)


# ----------------------------------------------------------------------------- the dense cache


def _dense_path(save: Path, cfg: SweepConfig) -> Path:
    return save / "dense" / f"{distributed.config_hash(cfg.dense_config())[:16]}.safetensors"


def _load_or_train_dense(
    cfg: SweepConfig, ctx: RunCtx, log: Callable[[str], None]
) -> tuple[Carry, dict[str, Any]]:
    """The cached dense round-0 carry and its metadata (``config``, ``metrics``, ``seconds``),
    trained and saved when the cache is missing, corrupt or of other settings."""
    path = _dense_path(Path(cfg.save_dir), cfg)
    if path.is_file():
        try:
            trees, meta = checkpoint.load(path)
        except checkpoint.CorruptCheckpointError as e:
            log(f"dense: cache {path} is unreadable ({e}); training again")
        else:
            if meta.get("config") == cfg.dense_config() and all(k in trees for k in _TREES):
                acc = seeds.summarize(meta["metrics"]["accuracy"])
                log(
                    f"dense: loaded {cfg.seeds} seeds from cache {path} ({cfg.epochs} epochs; test acc "
                    f"{100 * acc['mean']:.2f} ± {100 * acc['std']:.2f}%)"
                )
                return Carry(*(trees[k] for k in _TREES)), meta
            log(f"dense: cache {path} holds other settings; training again")
    log(f"dense: training {cfg.seeds} seeds x {cfg.epochs} epochs as one vmapped program")
    t0 = time.perf_counter()
    carry, metrics = dense_round(ctx)
    meta = {"config": cfg.dense_config(), "metrics": metrics, "seconds": time.perf_counter() - t0}
    trees = dict(zip(_TREES, carry, strict=True))
    trees["extra"] = trees["extra"] or {}
    checkpoint.save(path, trees, meta)
    acc = seeds.summarize(metrics["accuracy"])
    log(
        f"dense: test acc {100 * acc['mean']:.2f} ± {100 * acc['std']:.2f}% after {meta['seconds']:.1f} s; "
        f"cached at {path}"
    )
    return carry, meta


def _share(obj: Any, rank: int, world: int) -> Any:
    """``obj`` of rank 0 on every rank (``broadcast_object_list``); ``obj`` itself in one process."""
    if world == 1:
        return obj
    box = [obj if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ----------------------------------------------------------------------------- the command


class SweepResult(NamedTuple):
    """What :func:`run` returns on rank 0: the CSV rows, the files written, the Markdown table, and
    how many points this call computed (the others were on disk)."""

    rows: list[dict[str, Any]]
    files: list[Path]
    markdown: str
    computed: int


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _label(point: dict[str, Any]) -> str:
    return f"{point['criterion']} ({point['scope']}) x{point['compression']:g}"


def run(cfg: SweepConfig, *, plots: bool = True, log: Callable[[str], None] = _stderr) -> SweepResult | None:
    """Run the sweep ``cfg`` (see the module docstring) in this process or on every ``torchrun`` rank.

    Returns the :class:`SweepResult` on rank 0 and ``None`` on the other ranks. ``plots=False``
    skips ``sweep.png``. Raises ``ValueError`` for bad settings, and ``extras.MissingExtraError`` for
    ``plots`` without matplotlib, before anything is computed or written."""
    cfg = cfg.check()
    if plots:
        extras.pyplot("the sweep's plot (plots=False leaves it out)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ctx = build_context(cfg.run_config())
    points = sweep_points(cfg)
    if any(p["level"] == "unit" for p in points) and not any(g.prunable for g in ctx.groups):
        raise ValueError(
            f"unit-level criteria remove whole channels, but model {cfg.model!r} has no prunable group"
        )
    save = Path(cfg.save_dir)
    results_dir = save / "points" / distributed.config_hash(cfg.grid_config())[:12]
    with distributed.process_group() as (rank, world):
        say = log if rank == 0 else (lambda msg: log(f"[rank {rank}] {msg}"))
        dense, meta = _share(_load_or_train_dense(cfg, ctx, say) if rank == 0 else None, rank, world)
        todo = distributed.missing(points, results_dir, config=cfg.grid_config()) if rank == 0 else []
        if rank == 0:
            say(
                f"sweep: {len(points)} points ({len(cfg.criteria)} criteria x {len(cfg.compression)} compressions), "
                f"{len(todo)} to compute on {world} process{'es' * (world > 1)}, {cfg.seeds} seeds each"
            )

        def point_fn(point: dict[str, Any]) -> dict[str, Any]:
            t0 = time.perf_counter()
            res = run_point(
                ctx,
                dense,
                criterion=point["criterion"],
                scope=point["scope"],
                compression=point["compression"],
                dense_metrics=meta["metrics"],
            )
            s = res.summary
            say(
                f"point {_label(point)}: pruned {100 * s['pruned_accuracy']['mean']:.2f} ± "
                f"{100 * s['pruned_accuracy']['std']:.2f}%, fine-tuned {100 * s['accuracy']['mean']:.2f} ± "
                f"{100 * s['accuracy']['std']:.2f}%, {time.perf_counter() - t0:.1f} s"
            )
            return res.as_json()

        results = distributed.run_grid(points, point_fn, results_dir, config=cfg.grid_config())
    if results is None:
        return None
    rows = table(points, results)
    save.mkdir(parents=True, exist_ok=True)
    title = f"{cfg.model} on {cfg.data}, {cfg.epochs} epochs dense, {cfg.finetune_epochs} epochs fine-tuning"
    text = markdown(rows, title=title)
    (save / "sweep.csv").write_text(report.csv_text(rows, CSV_COLUMNS))
    (save / "sweep.md").write_text(text)
    files = [save / "sweep.csv", save / "sweep.md"]
    if plots:
        files.append(plot(rows, save / "sweep.png", title=title))
    say(f"sweep: wrote {', '.join(str(f) for f in files)}")
    return SweepResult(rows, files, text, len(todo))
