"""``pure-prune run``: one pruning experiment, round by round, checkpointed and resumable.

A run is a sequence of rounds of one method (``pure_prune.algorithms``); the method's round
functions do the work, this module does the I/O around them. The save directory holds:

================================  ===================================================================
``run.json``                      the resolved config, its hash, the model's input shape (written once)
``checkpoints/round_NNNN.safetensors``  after every round (``pure_prune.checkpoint``: atomic, hashed):
                                  params, state, opt_state, masks, rewind weights, method extras;
                                  metadata: round index, rng position, config hash, metrics so far
``rounds.jsonl``                  one line of metrics per round (derived from the last checkpoint)
``summary.csv``                   the same, one row per round, flat columns
``run.log``                       the log lines (also printed)
================================  ===================================================================

Round metrics: global sparsity (prunable leaves and all params), per-layer sparsity, parameters
kept, test accuracy/loss at the end of the round and the best test accuracy over its epochs,
training metrics, wall time (pruning, training, round), and the compile count of the steps
(graphs compiled during the round, via a counting ``torch.compile`` backend).

Resuming (``resume=True``) reloads the newest checkpoint and runs the remaining rounds. Every
round is a function of the previous round's trees, the round index and the config: data order,
scores and random controls come from keys folded from ``seed`` and the round/epoch index, and the
compiled-or-eager choice is part of the config. So on CPU, with the same thread count, a killed and
resumed run ends bit-identical to an uninterrupted one.

Refusals (``ValueError`` before anything is written): a save directory that holds another run
(different config hash; the differing knobs are named), one that holds this run without
``resume`` (its results are never overwritten), a non-empty directory without ``run.json``, and a
corrupt or truncated checkpoint on resume.

**Several seeds** (``seeds = S > 1``; keys ``k_i = seed + i``, :meth:`RunConfig.seed_keys`). Every
method runs the ``S`` seeds as one vmapped program (``pure_prune.runner_seeds``, built on
``pure_prune.sweep``), and seed ``i`` is, to float tolerance, the single-seed run with
``seed = k_i``: same init, data order, scores, masks and controls, all derived from ``k_i`` as that
run derives them. Every tree is stacked with a leading seed axis, the train and eval steps (and
RSST's penalized step, distillation's step and teacher forward, STE's step, RigL's dense gradient)
are ``torch.func.vmap``-ed and compiled once, each seed's batches come from its own key, and each
seed gets its own masks (chosen seed by seed on the host where the choice is not vmapped: structured
selection, Refill, RSST's units and penalty, DST's drop-and-grow). Checkpoints hold the stacked
trees, so resuming works as for one seed. (Runs saved by versions that ran the seeds of ``rsst``,
``refill``, ``distill`` and ``dst`` one after another, in ``<save_dir>/seed_<k>/``, are refused
on resume with a message naming those directories: each is a single-seed run of its own.)

``rounds.jsonl`` holds one row per round with, for every per-seed metric ``m``
(:data:`SEED_METRICS`), its mean ``m``, sample standard deviation ``m_std`` and the per-seed values
``per_seed[m]``; ``summary.csv`` has the means and the ``_std`` columns. Timings of a round are the
one program's.

**Compact stages** (``compact = True``; ``struct = "channels"``, methods one_shot, gradual, imp,
one seed). Each round trains the model with its pruned units removed
(:func:`pure_prune.compact_training.compacting_trainer`) and hands full-size trees back, so
scoring, rewinding and checkpoints are unchanged. The steps are :class:`pure_prune.stage.Compiled`
(one static graph per shape): a new form compiles once, and ``recompile_every`` /
``sparsity_change_threshold`` (Source A's knobs, :func:`pure_prune.stage.should_rematerialize`)
decide when one is made; otherwise the newly removed units stay masks on the current form. Rows
carry ``form_units``, ``form_sizes``, ``form_made`` and ``form_reason``. Results equal the masked
run's up to float rounding (other GEMM shapes), so a compact run hashes differently.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from tqdm import tqdm

from pure_prune import (
    checkpoint,
    compact_training,
    data,
    importance,
    losses,
    mask,
    optim,
    rng,
    stage,
    train,
)
from pure_prune.algorithms import base, distill, dst, gradual, imp, masking, one_shot, refill, rsst
from pure_prune.algorithms.base import Carry, RoundOut
from pure_prune.experiment import Experiment, make_optimizer, setup
from pure_prune.runconfig import NOT_HASHED, RunConfig, config_hash, parse_nm
from pure_prune.schedule import linear, linear_steps, polynomial

__all__ = [
    "FORMAT",
    "SEED_METRICS",
    "VMAPPED_METHODS",
    "RunResult",
    "compile_counter",
    "n_rounds",
    "run",
    "setup_eager",
]

FORMAT = "pure_prune.run/1"
VMAPPED_METHODS = ("one_shot", "gradual", "imp", "refill", "rsst", "distill", "dst")
"""Methods whose seeds run as one vmapped program (``pure_prune.runner_seeds``): all of them."""
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
_CKPT_DIR = "checkpoints"
_CKPT = re.compile(r"^round_(\d{4,})\.safetensors$")
_TIMES = (
    "prune_seconds",
    "train_seconds",
    "round_seconds",
    "elapsed_seconds",
    "compiled_graphs",
    "compile_seconds",
)
_SUMMARY_COLUMNS = (
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
    *_TIMES,
)


class RunResult(NamedTuple):
    """The save directory, one metrics dict per round, and the final trees (stacked over the seeds,
    seed axis first, when the run has several)."""

    save_dir: Path
    rounds: list[dict[str, Any]]
    carry: Carry


# ----------------------------------------------------------------------------- compile counting


def compile_counter(inner: str = "inductor") -> tuple[Callable, dict[str, float]]:
    """A ``torch.compile`` backend that counts and times its compilations, and its live counters.

    Returns ``(backend, stats)``; ``stats["graphs"]`` grows by one per graph compiled (a
    recompile included), ``stats["seconds"]`` by the time spent inside the ``inner`` backend."""
    stats = {"graphs": 0, "seconds": 0.0}
    compiler = torch._dynamo.lookup_backend(inner)

    def backend(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable:
        t0 = time.perf_counter()
        fn = compiler(gm, example_inputs)
        stats["graphs"] += 1
        stats["seconds"] += time.perf_counter() - t0
        return fn

    return backend, stats


# ----------------------------------------------------------------------------- the experiment


class _Ctx(NamedTuple):
    cfg: RunConfig
    exp: Experiment
    init: Callable[[int], tuple[Any, Any]]
    groups: tuple
    spe: int
    key: int
    k_init: int
    score_batches: tuple
    stats: dict[str, float]
    steps: dict[str, Any]


class _Setup(NamedTuple):
    """The seed-independent part of a run's context: the experiment (its optimizer with the
    learning-rate schedule, eager single-seed steps), init, steps per epoch and the compile backend."""

    exp: Experiment
    init: Callable[[int], tuple[Any, Any]]
    spe: int
    backend: Callable | str
    stats: dict[str, float]


def setup_eager(cfg: Any) -> tuple[Experiment, Callable[[int], tuple[Any, Any]]]:
    """:func:`pure_prune.experiment.setup` from a config's ``model``/``data``/``root``/``batch_size``/
    ``optimizer``/``lr``/``momentum``/``weight_decay``/``model_cfg`` fields, with eager steps
    (``compile=False``). ``cfg`` is a :class:`~pure_prune.runconfig.RunConfig` or a grid
    ``SweepConfig``. Returns ``(experiment, init)`` with ``init(key) -> (params, state)``."""
    return setup(
        cfg.model,
        cfg.data,
        root=cfg.root,
        batch_size=cfg.batch_size,
        optimizer=cfg.optimizer,
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        compile=False,
        model_cfg=dict(cfg.model_cfg),
    )


def _setup(cfg: RunConfig) -> _Setup:
    exp, init = setup_eager(cfg)
    spe = data.num_batches(len(exp.dataset.y_train), cfg.batch_size)
    lr = (
        optim.multistep(cfg.lr, [m * spe for m in cfg.decreasing_lr], cfg.gamma)
        if cfg.decreasing_lr
        else cfg.lr
    )
    opt = make_optimizer(cfg.optimizer, lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    backend, stats = (
        compile_counter(cfg.backend) if cfg.compile else (cfg.backend, {"graphs": 0, "seconds": 0.0})
    )
    return _Setup(exp._replace(optimizer=opt), init, spe, backend, stats)


def _context(cfg: RunConfig) -> _Ctx:
    su = _setup(cfg)
    exp, init, backend = su.exp, su.init, su.backend
    ds = exp.dataset
    exp = exp._replace(
        step=train.make_step(  # premasked: base.fit_trainer masks the params when a round starts
            exp.model,
            losses.cross_entropy,
            exp.optimizer,
            compile=cfg.compile,
            backend=backend,
            premasked=True,
        ),
        eval_step=train.make_eval_step(exp.model, losses.cross_entropy, compile=cfg.compile, backend=backend),
    )
    if cfg.compact and cfg.compile:  # one static graph per form (shape), counted per stage
        exp = exp._replace(
            step=_bytes_masks(
                stage.Compiled(
                    train.make_step(
                        exp.model, losses.cross_entropy, exp.optimizer, compile=False, premasked=True
                    ),
                    backend=backend,
                ),
                3,
            ),
            eval_step=_bytes_masks(
                stage.Compiled(
                    train.make_eval_step(exp.model, losses.cross_entropy, compile=False), backend=backend
                ),
                2,
            ),
        )
    k_init, k_method, k_score = rng.split(cfg.seed, 3)
    params, _ = init(k_init)
    groups = masking.active_groups(exp.model.groups(params), cfg.exclude)
    _check_groups(cfg, groups)
    score = tuple(
        itertools.islice(data.batches(ds.x_train, ds.y_train, cfg.batch_size, key=k_score), cfg.score_batches)
    )
    return _Ctx(cfg, exp, init, groups, su.spe, k_method, k_init, score, su.stats, _steps(cfg, exp, backend))


def _check_groups(cfg: RunConfig, groups: tuple) -> None:
    """Refuse a channel method (``rsst``, ``refill``) on a model without a prunable channel group."""
    if cfg.method in ("rsst", "refill") and not any(g.prunable for g in groups):
        raise ValueError(
            f"method {cfg.method!r} removes whole channels, but model {cfg.model!r} has no prunable group"
        )


def _bytes_masks(step: Callable[..., Any], at: int) -> Callable[..., Any]:
    """``step`` with its bool masks (argument ``at``) checked, then passed as their uint8 views
    (``mask.as_bytes``), as ``train.make_step(compile=True)`` passes them: faster compiled code."""

    def run(*args: Any) -> Any:
        masks = args[at]
        if masks is None:
            return step(*args)
        mask.validate(args[0], masks)
        return step(*args[:at], mask.as_bytes(masks), *args[at + 1 :])

    return run


def _steps(cfg: RunConfig, exp: Experiment, backend: Callable | str) -> dict[str, Any]:
    """The method's extra steps (``torch.compile`` is lazy: building them costs nothing until used)."""
    kw = dict(compile=cfg.compile, backend=backend)
    if cfg.method == "rsst":
        pen = rsst.penalized(exp.optimizer)
        return {"penalized": pen, "rsst": train.make_step(exp.model, losses.cross_entropy, pen, **kw)}
    if cfg.method == "distill":
        return {
            "distill": distill.make_step(exp.model, exp.optimizer, alpha=cfg.alpha, T=cfg.temperature, **kw)
        }
    if cfg.method == "dst" and cfg.dst == "ste":
        return {"ste": dst.make_ste_step(exp.model, losses.cross_entropy, exp.optimizer, **kw)}
    return {}


def _gradual_schedule(cfg: RunConfig) -> Callable[[int], float]:
    if cfg.schedule == "linear_steps":
        return linear_steps(
            cfg.sparsity, steps=cfg.gradual_steps, start=cfg.gradual_start, every=cfg.gradual_every
        )
    make = linear if cfg.schedule == "linear" else polynomial
    return make(
        0.0, cfg.sparsity, start=cfg.gradual_start, every=cfg.gradual_every, updates=cfg.gradual_steps
    )


def n_rounds(cfg: RunConfig) -> int:
    """Number of rounds of the (resolved) config: ``pruning_times + 1`` (IMP, Refill, distill; RSST
    ``+ 2`` for the final fine-tuning), 2 for one-shot, the schedule's segments for gradual, and
    one per epoch for DST."""
    c = cfg.resolved()
    if c.method in ("imp", "refill", "distill"):
        return c.pruning_times + 1
    if c.method == "rsst":
        return c.pruning_times + 2
    if c.method == "one_shot":
        return 2
    if c.method == "gradual":
        return len(gradual.segments(_gradual_schedule(c), c.epochs))
    return c.epochs


def _score_fn(ctx: _Ctx) -> tuple[base.ScoreFn, str]:
    crit = ctx.cfg.importance
    level = importance.get(crit).level
    apply = ctx.exp.model.apply

    def fn(params: Any, state: Any, masks: Any, key: int) -> Any:
        return masking.score(
            crit, apply, params, state, masks, batches=ctx.score_batches, key=key, groups=ctx.groups
        )[0]

    return fn, level


def _start(ctx: _Ctx) -> tuple[Any, Any, Any]:
    cfg = ctx.cfg
    params, state = ctx.init(ctx.k_init)
    return params, state, masking.initial(params, cfg.struct, ctx.groups, exclude=cfg.exclude)


class _Round(NamedTuple):
    """What a method's round function gets besides the context: the carry (``None`` at round 0),
    the round index, the round's training callback, its score function and its score level."""

    carry: Carry | None
    r: int
    train_fn: base.TrainFn
    score_fn: base.ScoreFn
    level: str


def _imp_round(ctx: _Ctx, a: _Round) -> RoundOut:
    cfg = ctx.cfg
    s = _imp_settings(cfg, ctx.spe)
    kw = dict(optimizer=ctx.exp.optimizer, train_fn=a.train_fn, key=ctx.key)
    if a.r == 0:
        return imp.first_round(*_start(ctx), s, **kw)
    fn = (
        refill.mask_fn(ctx.groups, cfg.fillback_rate, criterion=cfg.criteria)
        if cfg.method == "refill"
        else None
    )
    return imp.next_round(
        a.carry,
        a.r,
        s,
        score_fn=a.score_fn,
        groups=ctx.groups,
        level=a.level,
        init_fn=ctx.init,
        mask_fn=fn,
        **kw,
    )


def _one_shot_round(ctx: _Ctx, a: _Round) -> RoundOut:
    cfg = ctx.cfg
    kw = dict(optimizer=ctx.exp.optimizer, train_fn=a.train_fn, key=ctx.key)
    if a.r == 0:
        return one_shot.first_round(*_start(ctx), epochs=cfg.epochs, **kw)
    return one_shot.next_round(
        a.carry,
        cfg.sparsity,
        finetune_epochs=cfg.finetune_epochs,
        score_fn=a.score_fn,
        scope=cfg.scope,
        struct=cfg.struct,
        groups=ctx.groups,
        level=a.level,
        nm=parse_nm(cfg.nm),
        **kw,
    )


def _gradual_round(ctx: _Ctx, a: _Round) -> RoundOut:
    cfg = ctx.cfg
    segs = gradual.segments(_gradual_schedule(cfg), cfg.epochs)
    kw = dict(
        train_fn=a.train_fn,
        score_fn=a.score_fn,
        key=ctx.key,
        struct=cfg.struct,
        scope=cfg.scope,
        groups=ctx.groups,
        level=a.level,
    )
    if a.r == 0:
        return gradual.first_round(*_start(ctx), segs, optimizer=ctx.exp.optimizer, **kw)
    return gradual.next_round(a.carry, a.r, segs, **kw)


def _rsst_settings(cfg: RunConfig) -> rsst.Settings:
    return rsst.Settings(
        rate=cfg.rate,
        rounds=cfg.pruning_times,
        epochs=cfg.epochs,
        finetune_epochs=cfg.finetune_epochs,
        criterion=cfg.criteria,
        growth=cfg.rst_schedule,
        granularity=cfg.reg_granularity,
        exponent=cfg.exponent,
        scope=cfg.scope,
        schedule=cfg.schedule,
    )


def _rsst_round(ctx: _Ctx, a: _Round) -> RoundOut:
    cfg, exp = ctx.cfg, ctx.exp
    s = _rsst_settings(cfg)
    kw = dict(optimizer=exp.optimizer, train_fn=a.train_fn, key=ctx.key)
    if a.r == 0:
        return rsst.first_round(*_start(ctx), s, **kw)
    state = a.carry.state

    def model_fn(params: Any, x: torch.Tensor) -> torch.Tensor:
        return exp.model.apply(params, state, x, train=False)[0]

    return rsst.next_round(
        a.carry,
        a.r,
        s,
        penalized_optimizer=ctx.steps["penalized"],
        penalty_step=ctx.steps["rsst"],
        groups=ctx.groups,
        model_fn=model_fn,
        batches=ctx.score_batches,
        steps_per_epoch=ctx.spe,
        **kw,
    )


def _distill_settings(cfg: RunConfig) -> distill.Settings:
    return distill.Settings(
        rate=cfg.rate,
        rounds=cfg.pruning_times,
        epochs=cfg.epochs,
        finetune_epochs=cfg.finetune_epochs,
        alpha=cfg.alpha,
        T=cfg.temperature,
        schedule=cfg.schedule,
        scope=cfg.scope,
        struct=cfg.struct,
    )


def _distill_round(ctx: _Ctx, a: _Round) -> RoundOut:
    s = _distill_settings(ctx.cfg)
    kw = dict(optimizer=ctx.exp.optimizer, train_fn=a.train_fn, key=ctx.key)
    if a.r == 0:
        return distill.first_round(*_start(ctx), s, **kw)
    return distill.next_round(
        a.carry,
        a.r,
        s,
        apply=ctx.exp.model.apply,
        kd_step=ctx.steps["distill"],
        score_fn=a.score_fn,
        groups=ctx.groups,
        level=a.level,
        **kw,
    )


def _dst_settings(cfg: RunConfig, spe: int) -> dst.Settings:
    return dst.Settings(
        kind=cfg.dst,
        sparsity=cfg.sparsity,
        epochs=cfg.epochs,
        steps_per_epoch=spe,
        update_every=cfg.update_every,
        drop_fraction=cfg.drop_fraction,
        end_fraction=cfg.end_fraction,
        distribution=cfg.distribution,
        scope=cfg.scope,
    )


def _dst_round(ctx: _Ctx, a: _Round) -> RoundOut:
    cfg, exp = ctx.cfg, ctx.exp
    s = _dst_settings(cfg, ctx.spe)
    carry = dst.start(*_start(ctx), s, optimizer=exp.optimizer, key=ctx.key) if a.r == 0 else a.carry
    batches = exp.train_batches(ctx.key)(a.r)
    if cfg.progress:
        batches = tqdm(batches, total=ctx.spe, desc=f"round {a.r}", unit="step", leave=False)
    return dst.train_epoch(
        carry,
        a.r,
        s,
        batches,
        step=ctx.steps.get("ste", exp.step),
        key=ctx.key,
        apply=exp.model.apply,
        loss=losses.cross_entropy,
    )


_ROUNDS: dict[str, Callable[[_Ctx, _Round], RoundOut]] = {
    "imp": _imp_round,
    "refill": _imp_round,
    "one_shot": _one_shot_round,
    "gradual": _gradual_round,
    "rsst": _rsst_round,
    "distill": _distill_round,
    "dst": _dst_round,
}


def _round(ctx: _Ctx, carry: Carry | None, r: int, train_fn: base.TrainFn) -> RoundOut:
    """Round ``r`` of the configured method (``carry`` is ``None`` at round 0)."""
    score_fn, level = _score_fn(ctx)
    return _ROUNDS[ctx.cfg.method](ctx, _Round(carry, r, train_fn, score_fn, level))


# ----------------------------------------------------------------------------- the save directory


def _imp_settings(cfg: RunConfig, spe: int) -> imp.Settings:
    return imp.Settings(
        rate=cfg.rate,
        rounds=cfg.pruning_times,
        epochs=cfg.epochs,
        rewind_epoch=cfg.rewind_epoch,
        steps_per_epoch=spe,
        schedule=cfg.schedule,
        scope=cfg.scope,
        struct=cfg.struct,
        control=cfg.control,
    ).check()


def _differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    keys = sorted((set(a) | set(b)) - set(NOT_HASHED))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


def _checkpoints(save: Path) -> dict[int, Path]:
    folder = save / _CKPT_DIR
    if not folder.is_dir():
        return {}
    found = {}
    for p in folder.iterdir():
        m = _CKPT.match(p.name)
        if m and p.is_file():
            found[int(m.group(1))] = p
    return found


def _prepare(save: Path, cfg: RunConfig, digest: str, resume: bool, total: int) -> None:
    info = save / "run.json"
    if info.is_file():
        try:
            stored = json.loads(info.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{str(info)!r} is not valid JSON ({e}); this directory's run cannot be identified"
            ) from e
        if stored.get("config_hash") != digest:
            diff = _differences(stored.get("config", {}), cfg.to_json())
            raise ValueError(
                f"save dir {str(save)!r} holds another run (config hash {str(stored.get('config_hash'))[:12]} != "
                f"{digest[:12]}; differing: {'; '.join(diff) or 'format'}); choose another --save-dir"
            )
        seeds = stored.get("seeds") or {}
        if seeds.get("mode") == "sequential":
            dirs = ", ".join(str(save / d) for d in seeds.get("dirs", []))
            raise ValueError(
                f"save dir {str(save)!r} holds a run whose seeds ran one after another, each a single-seed "
                f"run in its own directory ({dirs}); resume those one by one with --save-dir, or choose "
                "another --save-dir to run the seeds as one vmapped program"
            )
        if not resume:
            done = max(_checkpoints(save), default=-1) + 1
            state = "finished" if done >= total else f"unfinished ({done}/{total} rounds)"
            raise ValueError(
                f"save dir {str(save)!r} already holds this run, {state}; pass --resume to continue it, or "
                "choose another --save-dir (results are never overwritten)"
            )
        return
    if save.exists() and (not save.is_dir() or any(save.iterdir())):
        raise ValueError(
            f"save dir {str(save)!r} exists and holds no pure-prune run; choose another --save-dir"
        )


def _write_info(save: Path, cfg: RunConfig, digest: str, extra: dict[str, Any], total: int) -> None:
    """``run.json``: format, config, hash, round count, torch version and ``extra`` (the model's input
    shape and dtype; for several seeds, ``seeds = {"keys", "mode", "dirs"}``)."""
    checkpoint.save_json_atomic(
        save / "run.json",
        {
            "format": FORMAT,
            "config": cfg.to_json(),
            "config_hash": digest,
            "rounds": total,
            **extra,
            "torch": torch.__version__,
        },
    )


def _model_info(exp: Experiment) -> dict[str, Any]:
    return {
        "input_shape": list(exp.model.input_shape),
        "input_dtype": str(exp.model.input_dtype).removeprefix("torch."),
    }


def _load(path: Path, digest: str, r: int) -> tuple[Carry, dict[str, Any]]:
    try:
        trees, meta = checkpoint.load(path)
    except checkpoint.CorruptCheckpointError as e:
        raise ValueError(
            f"cannot resume: {e}. Delete {path.name} to resume from the round before it, or start a new --save-dir"
        ) from e
    if meta.get("format") != FORMAT or meta.get("config_hash") != digest or meta.get("round") != r:
        raise ValueError(
            f"cannot resume: checkpoint {str(path)!r} belongs to another run or round "
            f"(format {meta.get('format')!r}, round {meta.get('round')!r}, hash {str(meta.get('config_hash'))[:12]})"
        )
    missing = [k for k in ("params", "state", "opt_state", "masks", "rewind", "extra") if k not in trees]
    if missing:
        raise ValueError(f"cannot resume: checkpoint {str(path)!r} lacks the trees {missing}")
    carry = Carry(
        trees["params"], trees["state"], trees["opt_state"], trees["masks"], trees["rewind"], trees["extra"]
    )
    return carry, meta


def _save(
    save: Path, r: int, total: int, carry: Carry, digest: str, cfg: RunConfig, rounds: list[dict]
) -> None:
    trees = {
        "params": carry.params,
        "state": carry.state,
        "opt_state": carry.opt_state,
        "masks": carry.masks,
        "rewind": carry.rewind,
        "extra": carry.extra or {},
    }
    position: dict[str, Any] = {"seed": cfg.seed, "next_round": r + 1}
    if cfg.seeds > 1:
        position["keys"] = cfg.seed_keys()
    meta = {
        "format": FORMAT,
        "config_hash": digest,
        "round": r,
        "rounds": total,
        "rng": position,
        "metrics": rounds,
    }
    checkpoint.save(save / _CKPT_DIR / f"round_{r:04d}.safetensors", trees, meta)


def _write_tables(
    save: Path, rounds: list[dict[str, Any]], columns: tuple[str, ...] = _SUMMARY_COLUMNS
) -> None:
    """``rounds.jsonl`` and ``summary.csv`` (``columns``) from the metrics (rewritten whole: they are derived)."""
    (save / "rounds.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rounds))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rounds)
    (save / "summary.csv").write_text(buf.getvalue())


# ----------------------------------------------------------------------------- metrics and logs


def _row(
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


def _metrics(ctx: _Ctx, r: int, out: RoundOut, timing: dict[str, Any]) -> dict[str, Any]:
    carry = out.carry
    test = ctx.exp.evaluate(carry.params, carry.state, carry.masks)
    return _row(ctx.cfg, r, carry.masks, carry.params, out.history, test, out.prune_seconds, timing)


def _target(cfg: RunConfig, r: int) -> float | None:
    """The sparsity a pruning step of round ``r`` aims at (rows/channels: of rows/units), or ``None``."""
    if cfg.method in ("imp", "refill", "rsst", "distill"):
        return imp.target(min(r, cfg.pruning_times), cfg.rate, cfg.schedule)
    if cfg.method == "gradual":
        return gradual.segments(_gradual_schedule(cfg), cfg.epochs)[r][2]
    if cfg.method == "one_shot":
        return 1.0 - parse_nm(cfg.nm)[0] / parse_nm(cfg.nm)[1] if cfg.struct == "nm" else cfg.sparsity
    return None


def _pct(row: dict[str, Any], key: str, *, complement: bool = False) -> str:
    """``row[key]`` in percent (``1 - row[key]`` with ``complement``), with ``± std`` when the row has one."""
    v = row[key]
    text = f"{100 * (1 - v if complement else v):.2f}%"
    std = row.get(f"{key}_std")
    return text if std is None else f"{text} ± {100 * std:.2f}%"


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the round loop


class _Engine(NamedTuple):
    """What the round loop needs from a run: ``round(carry, r) -> RoundOut`` (``carry`` ``None`` at
    round 0), ``metrics(r, out, timing) -> row``, the live compile counters, the ``run.json`` extras,
    the header log line and the summary columns."""

    round: Callable[[Carry | None, int], RoundOut]
    metrics: Callable[[int, RoundOut, dict[str, Any]], dict[str, Any]]
    stats: dict[str, float]
    info: dict[str, Any]
    header: str
    columns: tuple[str, ...]
    resume: Callable[[list[dict[str, Any]]], None] = lambda rows: None
    """Called with the saved rows when a run resumes (restores what the engine keeps between rounds)."""


def _single_engine(cfg: RunConfig, digest: str, total: int) -> _Engine:
    ctx = _context(cfg)
    forms: dict[int, dict[str, Any]] = {}  # compact runs: the form each round trained
    memo: dict[str, Any] = {}
    all_groups = ctx.exp.model.groups(ctx.init(ctx.k_init)[0]) if cfg.compact else ()

    def round_fn(carry: Carry | None, r: int) -> RoundOut:
        train_fn = base.fit_trainer(
            ctx.exp, evaluate=cfg.eval_every_epoch, progress=cfg.progress, desc=f"round {r}/{total - 1}"
        )
        if cfg.compact:

            def on_form(form: compact_training.Form, made: bool, reason: str) -> None:
                before = forms.get(r)  # a round may train twice (IMP's rewind epochs, then the round)
                if before is not None and before["form_made"]:
                    made, reason = True, before["form_reason"]
                forms[r] = {
                    "form_units": sum(form.sizes.values()),
                    "form_sizes": dict(form.sizes),
                    "form_made": made,
                    "form_reason": reason,
                    "form_memo": compact_training.memo_to_json(memo),
                }

            train_fn = compact_training.compacting_trainer(
                train_fn,
                all_groups,
                recompile_every=cfg.recompile_every,
                threshold=cfg.sparsity_change_threshold,
                on_form=on_form,
                memo=memo,
            )
        return _round(ctx, carry, r, train_fn)

    def metrics(r: int, out: RoundOut, timing: dict[str, Any]) -> dict[str, Any]:
        return {**_metrics(ctx, r, out, timing), **forms.get(r, {})}

    header = f"run {cfg.method} on {cfg.model}/{cfg.data}: {total} rounds, config {digest[:12]}, save dir {cfg.save_dir}"

    def resume(rows: list[dict[str, Any]]) -> None:  # the form the last saved round trained
        if rows and "form_memo" in rows[-1]:
            memo.update(compact_training.memo_from_json(rows[-1]["form_memo"]))

    return _Engine(
        round_fn,
        metrics,
        ctx.stats,
        _model_info(ctx.exp),
        header,
        _SUMMARY_COLUMNS,
        resume,
    )


def _seed_engine(cfg: RunConfig, digest: str, total: int) -> _Engine:
    """The engine of a several-seed run (``pure_prune.runner_seeds``, which builds on this module)."""
    from pure_prune import runner_seeds

    return runner_seeds.engine(cfg, digest, total)


def _loop(
    cfg: RunConfig, engine: _Engine, digest: str, total: int, save: Path, say: Callable[[str], None]
) -> RunResult:
    """Rounds ``first .. total - 1`` (after the newest checkpoint), each checkpointed and logged."""
    carry: Carry | None = None
    rounds: list[dict[str, Any]] = []
    first = 0
    found = _checkpoints(save)
    if not (save / "run.json").is_file():
        _write_info(save, cfg, digest, engine.info, total)
        say(engine.header)
    elif found:
        last = max(found)
        carry, meta = _load(found[last], digest, last)
        rounds, first = list(meta.get("metrics", [])), last + 1
        engine.resume(rounds)
        say(f"resume: loaded round {last} from {found[last].name}; {total - first} rounds left")
    else:
        say("resume: no checkpoint yet; starting from round 0")
    _write_tables(save, rounds, engine.columns)
    elapsed = rounds[-1]["elapsed_seconds"] if rounds else 0.0
    for r in range(first, total):
        t0 = time.perf_counter()
        graphs0, seconds0 = engine.stats["graphs"], engine.stats["seconds"]
        out = engine.round(carry, r)
        t_round = time.perf_counter() - t0
        graphs, c_seconds = engine.stats["graphs"] - graphs0, engine.stats["seconds"] - seconds0
        elapsed += t_round
        timing = {"t_round": t_round, "graphs": graphs, "compile_seconds": c_seconds, "elapsed": elapsed}
        metrics = engine.metrics(r, out, timing)
        carry = out.carry
        rounds.append(metrics)
        _save(save, r, total, carry, digest, cfg, rounds)
        _write_tables(save, rounds, engine.columns)
        tag = f"round {r}/{total - 1}"
        if out.prune_seconds is not None:
            say(f"{tag} prune: step {r}, sparsity {_pct(metrics, 'sparsity')}, {out.prune_seconds:.3f} s")
        if "form_units" in metrics:
            what = "new form" if metrics["form_made"] else "kept form"
            say(f"{tag} compact: {what} of {metrics['form_units']} units ({metrics['form_reason']})")
        if not cfg.compile:
            say(f"{tag} step: eager (compile off), train {metrics['train_seconds']:.2f} s")
        elif graphs:
            say(
                f"{tag} step: compiled new step ({graphs} graph{'s' * (graphs > 1)}, {c_seconds:.2f} s compiling)"
            )
        else:
            say(f"{tag} step: reused compiled step (0 new graphs), train {metrics['train_seconds']:.2f} s")
        say(
            f"{tag}: test acc {_pct(metrics, 'test_accuracy')} (best {_pct(metrics, 'best_test_accuracy')}), "
            f"weights kept {_pct(metrics, 'sparsity', complement=True)}, {t_round:.2f} s"
        )
    if first >= total:
        say(f"run already complete ({total} rounds)")
    return RunResult(save, rounds, carry)


def run(cfg: RunConfig, *, resume: bool = False, log: Callable[[str], None] = _stderr) -> RunResult:
    """Run (or, with ``resume``, finish) the experiment ``cfg`` in ``cfg.save_dir``; see the module doc.

    ``log(line)`` receives the log lines (also appended to ``run.log``): one per pruning step
    (round, sparsity, seconds), one per compile decision (compiled new step / reused, seconds), one
    summary per round; with several seeds, values are ``mean ± std`` over the seeds. Returns the
    :class:`RunResult`. Raises ``ValueError`` for bad settings or a save directory it must not touch
    (module docstring).
    """
    cfg = cfg.check()
    digest = config_hash(cfg)
    total = n_rounds(cfg)
    save = Path(cfg.save_dir)
    _prepare(save, cfg, digest, resume, total)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    def say(msg: str) -> None:
        log(msg)
        with (save / "run.log").open("a") as f:
            f.write(msg + "\n")

    engine = (_single_engine if cfg.seeds == 1 else _seed_engine)(cfg, digest, total)
    save.mkdir(parents=True, exist_ok=True)
    return _loop(cfg, engine, digest, total, save, say)
