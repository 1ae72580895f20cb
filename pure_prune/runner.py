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

**Several seeds** (``seeds = S > 1``; keys ``k_i = seed + i``, :meth:`RunConfig.seed_keys`). Seed
``i`` is, to float tolerance, the single-seed run with ``seed = k_i``: same init, data order,
scores, masks and controls, all derived from ``k_i`` as that run derives them.

* ``one_shot``, ``imp`` (rewind and controls included) and ``gradual`` run the ``S`` seeds as
  one vmapped program (``pure_prune.sweep``): every tree is stacked with a leading seed axis, the
  train and eval steps are ``torch.func.vmap``-ed (and compiled once), each seed's batches come
  from its own key, and each seed gets its own masks (``sweep.select_seeds`` for unstructured
  selection, a loop over seeds of ``masking.prune_to`` for the structured forms). Checkpoints hold
  the stacked trees, so resuming works as for one seed.
* ``rsst``, ``refill``, ``distill`` and ``dst`` have no vmapped rounds: their seeds run one after
  another in this process, seed ``k_i`` as the single-seed run in ``<save_dir>/seed_<k_i>/``
  (each with its own checkpoints and resume); the log says so.

Either way ``rounds.jsonl`` holds one row per round with, for every per-seed metric ``m``
(:data:`SEED_METRICS`), its mean ``m``, sample standard deviation ``m_std`` and the per-seed values
``per_seed[m]``; ``summary.csv`` has the means and the ``_std`` columns. Timings of a vmapped
round are the program's; those of sequential seeds are sums over the seeds.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import math
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from tqdm import tqdm

from pure_prune import checkpoint, data, importance, losses, mask, optim, rng, sweep, train, tree
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
VMAPPED_METHODS = ("one_shot", "gradual", "imp")
"""Methods whose seeds run as one vmapped program; the others run their seeds one after another."""
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
_SEED_SUMMARY_COLUMNS = (
    "round",
    "pruned",
    "target",
    "seeds",
    *itertools.chain.from_iterable((m, f"{m}_std") for m in SEED_METRICS),
    "params_total",
    "epochs",
    *_TIMES,
)


class RunResult(NamedTuple):
    """The save directory, one metrics dict per round, and the final trees (stacked over the seeds,
    seed axis first, when the run has several; sequential seeds give ``rewind``/``extra`` ``None``:
    those stay in the seeds' directories)."""

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
        step=train.make_step(
            exp.model, losses.cross_entropy, exp.optimizer, compile=cfg.compile, backend=backend
        ),
        eval_step=train.make_eval_step(exp.model, losses.cross_entropy, compile=cfg.compile, backend=backend),
    )
    k_init, k_method, k_score = rng.split(cfg.seed, 3)
    params, _ = init(k_init)
    groups = masking.active_groups(exp.model.groups(params), cfg.exclude)
    if cfg.method in ("rsst", "refill") and not any(g.prunable for g in groups):
        raise ValueError(
            f"method {cfg.method!r} removes whole channels, but model {cfg.model!r} has no prunable group"
        )
    score = tuple(
        itertools.islice(data.batches(ds.x_train, ds.y_train, cfg.batch_size, key=k_score), cfg.score_batches)
    )
    return _Ctx(cfg, exp, init, groups, su.spe, k_method, k_init, score, su.stats, _steps(cfg, exp, backend))


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


def _rsst_round(ctx: _Ctx, a: _Round) -> RoundOut:
    cfg, exp = ctx.cfg, ctx.exp
    s = rsst.Settings(
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


def _distill_round(ctx: _Ctx, a: _Round) -> RoundOut:
    cfg = ctx.cfg
    s = distill.Settings(
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


def _dst_round(ctx: _Ctx, a: _Round) -> RoundOut:
    cfg, exp = ctx.cfg, ctx.exp
    s = dst.Settings(
        kind=cfg.dst,
        sparsity=cfg.sparsity,
        epochs=cfg.epochs,
        steps_per_epoch=ctx.spe,
        update_every=cfg.update_every,
        drop_fraction=cfg.drop_fraction,
        end_fraction=cfg.end_fraction,
        distribution=cfg.distribution,
        scope=cfg.scope,
    )
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


# ----------------------------------------------------------------------------- several seeds, vmapped
# Seed i of a vmapped round derives its keys from k_method[i] exactly as the single-seed rounds of
# pure_prune.algorithms derive theirs from their one key (the same offsets, read from those modules,
# so both stay equal; tests/test_runner_seeds.py pins it).


class _SeedCtx(NamedTuple):
    """The context of a vmapped several-seed run: per-seed keys (``k_*[i]`` from ``rng.split(keys[i], 3)``,
    as :func:`_context` splits one seed), per-seed scoring batches ``((x (S, B, ...), y (S, B)), ...)``
    and the vmapped steps (train: one batch per seed; eval: the shared test batches)."""

    cfg: RunConfig
    exp: Experiment
    init: Callable[[int], tuple[Any, Any]]
    groups: tuple
    spe: int
    keys: tuple[int, ...]
    k_init: tuple[int, ...]
    k_method: tuple[int, ...]
    score_batches: tuple
    stats: dict[str, float]
    steps: sweep.SeedSteps


_SeedTrainFn = Callable[..., base.Trained]
"""``train_fn(params, state, opt_state, masks, *, start, stop, keys) -> base.Trained`` over stacked
trees; ``keys[i]`` orders seed ``i``'s data. History entries hold per-seed lists."""


def _seed_context(cfg: RunConfig) -> _SeedCtx:
    su = _setup(cfg)
    exp = su.exp
    keys = tuple(cfg.seed_keys())
    k_init, k_method, k_score = (tuple(k) for k in zip(*(rng.split(k, 3) for k in keys)))
    params, _ = su.init(k_init[0])
    groups = masking.active_groups(exp.model.groups(params), cfg.exclude)
    ds = exp.dataset
    per_seed = [
        list(itertools.islice(data.batches(ds.x_train, ds.y_train, cfg.batch_size, key=k), cfg.score_batches))
        for k in k_score
    ]
    score = tuple(
        tuple(torch.stack([seed[b][j] for seed in per_seed]) for j in range(2))
        for b in range(len(per_seed[0]))
    )
    kw = dict(compile=cfg.compile, backend=su.backend)
    steps = sweep.SeedSteps(
        sweep.make_seed_step(exp.model, losses.cross_entropy, exp.optimizer, per_seed_batches=True, **kw),
        sweep.make_seed_eval_step(exp.model, losses.cross_entropy, per_seed_batches=False, **kw),
    )
    return _SeedCtx(cfg, exp, su.init, groups, su.spe, keys, k_init, k_method, score, su.stats, steps)


def _fold(keys: tuple[int, ...] | list[int], offset: int) -> list[int]:
    """``[rng.fold_in(k, offset) for k in keys]``: one derived key per seed."""
    return [rng.fold_in(k, offset) for k in keys]


def _seed_trainer(ctx: _SeedCtx, desc: str) -> _SeedTrainFn:
    """:func:`base.fit_trainer` for stacked seeds: epoch ``e`` of seed ``i`` is ordered by
    ``data.epoch_key(keys[i], e)`` (``sweep.seed_batches``); with ``eval_every_epoch`` each entry also
    holds the per-seed ``test_accuracy``/``test_loss``."""
    cfg, exp = ctx.cfg, ctx.exp

    def fn(params: Any, state: Any, opt_state: Any, masks: Any, *, start: int, stop: int, keys: list[int]):
        history: list[dict[str, Any]] = []
        bar = tqdm(range(start, stop), desc=desc, unit="epoch", disable=not cfg.progress, leave=False)
        for epoch in bar:
            res = sweep.fit_seeds(
                ctx.steps.train,
                params,
                state,
                opt_state,
                masks,
                lambda _, e=epoch: sweep.seed_batches(exp.dataset, exp.batch_size, keys, e),
                1,
            )
            params, state, opt_state = res.params, res.state, res.opt_state
            entry: dict[str, Any] = {"epoch": float(epoch), **res.history[0]}
            if cfg.eval_every_epoch:
                test = sweep.evaluate_seeds(ctx.steps.eval, params, state, masks, exp.test_batches())
                entry.update(test_accuracy=test["accuracy"], test_loss=test["loss"])
            history.append(entry)
        return base.Trained(params, state, opt_state, history)

    return fn


def _seed_start(ctx: _SeedCtx) -> tuple[Any, Any, Any]:
    """Stacked ``init(k_init[i])`` and each seed's initial masks (``masking.initial``)."""
    cfg = ctx.cfg
    params, state = sweep.init_seeds(ctx.init, ctx.k_init)
    masks = tree.stack(
        [
            masking.initial(sweep.seed_slice(params, i), cfg.struct, ctx.groups, exclude=cfg.exclude)
            for i in range(len(ctx.keys))
        ]
    )
    return params, state, masks


def _seed_opt_state(ctx: _SeedCtx, params: Any, count: int = 0) -> dict[str, Any]:
    """Stacked :func:`base.fresh_opt_state`: every seed's fresh optimizer state, step counter at ``count``."""
    st = sweep.init_opt_seeds(ctx.exp.optimizer, params)
    return {**st, "count": torch.full_like(st["count"], count)}


def _seed_scores(ctx: _SeedCtx, params: Any, state: Any, masks: Any, keys: list[int]) -> tuple[Any, str]:
    """Every seed's scores by the configured criterion (seed ``i`` with ``keys[i]`` and its own batches)
    and their level (``"element"``/``"unit"``)."""
    crit = importance.get(ctx.cfg.importance)
    scores = sweep.score_seeds(
        crit,
        ctx.exp.model,
        params,
        state,
        masks,
        keys=keys,
        batches=ctx.score_batches,
        per_seed_batches=True,
        groups=ctx.groups,
    )
    return scores, crit.level


def _seed_prune(ctx: _SeedCtx, scores: Any, target: float, masks: Any, level: str) -> Any:
    """Each seed's masks pruned to ``target`` by its own scores (nested in ``masks``): the vmapped
    ``sweep.select_seeds`` for unstructured element selection, ``masking.prune_to`` seed by seed
    for the structured forms."""
    cfg = ctx.cfg
    if cfg.struct == "unstructured" and level == "element":
        return sweep.select_seeds(scores, target, scope=cfg.scope, masks=masks)
    return tree.stack(
        [
            masking.prune_to(
                sweep.seed_slice(scores, i),
                target,
                struct=cfg.struct,
                masks=sweep.seed_slice(masks, i),
                groups=ctx.groups,
                scope=cfg.scope,
                level=level,
                nm=parse_nm(cfg.nm),
            )
            for i in range(len(ctx.keys))
        ]
    )


def _seed_one_shot_round(ctx: _SeedCtx, carry: Carry | None, r: int, train_fn: _SeedTrainFn) -> RoundOut:
    """``one_shot.first_round`` / ``next_round`` for stacked seeds."""
    cfg, keys = ctx.cfg, ctx.k_method
    if r == 0:
        params, state, masks = _seed_start(ctx)
        params = mask.apply(params, masks)
        out = train_fn(
            params, state, _seed_opt_state(ctx, params), masks, start=0, stop=cfg.epochs, keys=_fold(keys, 0)
        )
        return base.carry_out(out, masks, extra={})
    t0 = time.perf_counter()
    scores, level = _seed_scores(ctx, carry.params, carry.state, carry.masks, _fold(keys, 1 << 20))
    masks = _seed_prune(ctx, scores, cfg.sparsity, carry.masks, level)
    params = mask.apply(carry.params, masks)
    seconds = time.perf_counter() - t0
    out = train_fn(
        params,
        carry.state,
        _seed_opt_state(ctx, params),
        masks,
        start=0,
        stop=cfg.finetune_epochs,
        keys=_fold(keys, 1),
    )
    return base.carry_out(out, masks, extra=carry.extra, seconds=seconds)


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


def _seed_imp_round(ctx: _SeedCtx, carry: Carry | None, r: int, train_fn: _SeedTrainFn) -> RoundOut:
    """``imp.first_round`` / ``next_round`` (rewind, ``reinit`` and ``random_masks`` controls) for
    stacked seeds."""
    s, keys = _imp_settings(ctx.cfg, ctx.spe), ctx.k_method
    if r == 0:
        params, state, masks = _seed_start(ctx)
        params = mask.apply(params, masks)
        opt_state = _seed_opt_state(ctx, params)
        k_train = _fold(keys, imp._TRAIN)
        history: list[dict[str, Any]] = []
        if s.rewind_epoch > 0:
            early = train_fn(params, state, opt_state, masks, start=0, stop=s.rewind_epoch, keys=k_train)
            params, state, opt_state, history = (
                early.params,
                early.state,
                early.opt_state,
                list(early.history),
            )
        rewind = {"params": params, "state": state}
        out = train_fn(params, state, opt_state, masks, start=s.rewind_epoch, stop=s.epochs, keys=k_train)
        return RoundOut(
            Carry(out.params, out.state, out.opt_state, masks, rewind, {}), history + out.history, None
        )
    t0 = time.perf_counter()
    scores, level = _seed_scores(ctx, carry.params, carry.state, carry.masks, _fold(keys, imp._SCORE + r))
    masks = _seed_prune(ctx, scores, imp.target(r, s.rate, s.schedule), carry.masks, level)
    k_control = _fold(keys, imp._CONTROL + r)
    if s.control == "random_masks":
        masks = tree.stack(
            [
                imp.random_masks_like(sweep.seed_slice(masks, i), sweep.seed_slice(carry.masks, i), k)
                for i, k in enumerate(k_control)
            ]
        )
    if s.control == "reinit":
        base_params, base_state = sweep.init_seeds(ctx.init, k_control)
    else:
        base_params, base_state = carry.rewind["params"], carry.rewind["state"]
    params = mask.apply(base_params, masks)
    prune_seconds = time.perf_counter() - t0
    out = train_fn(
        params,
        base_state,
        _seed_opt_state(ctx, params, s.rewind_epoch * s.steps_per_epoch),
        masks,
        start=s.rewind_epoch,
        stop=s.epochs,
        keys=_fold(keys, imp._TRAIN + r),
    )
    return base.carry_out(out, masks, rewind=carry.rewind, extra=carry.extra, seconds=prune_seconds)


def _seed_gradual_round(ctx: _SeedCtx, carry: Carry | None, r: int, train_fn: _SeedTrainFn) -> RoundOut:
    """``gradual.first_round`` / ``next_round`` (segment ``r``) for stacked seeds."""
    keys = ctx.k_method
    start, stop, target = gradual.segments(_gradual_schedule(ctx.cfg), ctx.cfg.epochs)[r]
    if r == 0:
        params, state, masks = _seed_start(ctx)
        params = mask.apply(params, masks)
        carry = Carry(params, state, _seed_opt_state(ctx, params), masks, None, {})
    masks, params, seconds = carry.masks, carry.params, None
    if target > 0.0:
        t0 = time.perf_counter()
        scores, level = _seed_scores(ctx, params, carry.state, masks, _fold(keys, gradual._SCORE + r))
        masks = _seed_prune(ctx, scores, target, masks, level)
        params = mask.apply(params, masks)
        seconds = time.perf_counter() - t0
    out = train_fn(
        params, carry.state, carry.opt_state, masks, start=start, stop=stop, keys=_fold(keys, gradual._TRAIN)
    )
    return base.carry_out(out, masks, extra=carry.extra, seconds=seconds)


_SEED_ROUNDS: dict[str, Callable[[_SeedCtx, Carry | None, int, _SeedTrainFn], RoundOut]] = {
    "one_shot": _seed_one_shot_round,
    "imp": _seed_imp_round,
    "gradual": _seed_gradual_round,
}


# ----------------------------------------------------------------------------- per-seed rows


def _aggregate(rows: list[dict[str, Any]], keys: list[int], *, mode: str) -> dict[str, Any]:
    """One several-seed row from the single-seed rows of one round (one per seed, in key order).

    Per :data:`SEED_METRICS` entry ``m``: ``m`` (mean), ``m_std`` (sample std, ``sweep.summarize``)
    and ``per_seed[m]``; a metric that some seed lacks (``None``) has mean and std ``None``.
    ``layer_sparsity`` is the mean per layer. Timings: ``mode="vmap"`` (one program) keeps the
    shared values, ``"sequential"`` sums them over the seeds.
    """
    first = rows[0]
    out: dict[str, Any] = {
        k: first[k] for k in ("round", "method", "pruned", "target", "params_total", "epochs")
    }
    out.update(seeds=len(rows), keys=list(keys), mode=mode)
    for m in SEED_METRICS:
        values = [r[m] for r in rows]
        stats = None if any(v is None for v in values) else sweep.summarize(values)
        out[m] = None if stats is None else stats["mean"]
        out[f"{m}_std"] = None if stats is None else stats["std"]
    out["per_seed"] = {m: [r[m] for r in rows] for m in SEED_METRICS}
    out["layer_sparsity"] = {
        p: math.fsum(r["layer_sparsity"][p] for r in rows) / len(rows) for p in first["layer_sparsity"]
    }
    for k in _TIMES:
        values = [r[k] for r in rows if r[k] is not None]
        if mode == "vmap" or not values:
            out[k] = first[k]
        else:
            out[k] = sum(values)
    return out


def _seed_metrics(ctx: _SeedCtx, r: int, out: RoundOut, timing: dict[str, Any]) -> dict[str, Any]:
    """The round's row of a vmapped run: every seed's single-seed row (:func:`_row`), aggregated."""
    carry, n = out.carry, len(ctx.keys)
    test = sweep.evaluate_seeds(
        ctx.steps.eval, carry.params, carry.state, carry.masks, ctx.exp.test_batches()
    )
    rows = []
    for i in range(n):
        history = [{k: v[i] if isinstance(v, list) else v for k, v in h.items()} for h in out.history]
        rows.append(
            _row(
                ctx.cfg,
                r,
                sweep.seed_slice(carry.masks, i),
                sweep.seed_slice(carry.params, i),
                history,
                {"accuracy": test["accuracy"][i], "loss": test["loss"][i]},
                out.prune_seconds,
                timing,
            )
        )
    return _aggregate(rows, list(ctx.keys), mode="vmap")


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


def _single_engine(cfg: RunConfig, digest: str, total: int) -> _Engine:
    ctx = _context(cfg)

    def round_fn(carry: Carry | None, r: int) -> RoundOut:
        train_fn = base.fit_trainer(
            ctx.exp, evaluate=cfg.eval_every_epoch, progress=cfg.progress, desc=f"round {r}/{total - 1}"
        )
        return _round(ctx, carry, r, train_fn)

    header = f"run {cfg.method} on {cfg.model}/{cfg.data}: {total} rounds, config {digest[:12]}, save dir {cfg.save_dir}"
    return _Engine(
        round_fn,
        lambda r, out, timing: _metrics(ctx, r, out, timing),
        ctx.stats,
        _model_info(ctx.exp),
        header,
        _SUMMARY_COLUMNS,
    )


def _seed_engine(cfg: RunConfig, digest: str, total: int) -> _Engine:
    ctx = _seed_context(cfg)

    def round_fn(carry: Carry | None, r: int) -> RoundOut:
        return _SEED_ROUNDS[cfg.method](ctx, carry, r, _seed_trainer(ctx, f"round {r}/{total - 1}"))

    keys = list(ctx.keys)
    header = (
        f"run {cfg.method} on {cfg.model}/{cfg.data}: {total} rounds, {len(keys)} seeds (keys {keys[0]}..{keys[-1]}) "
        f"as one vmapped program, config {digest[:12]}, save dir {cfg.save_dir}"
    )
    return _Engine(
        round_fn,
        lambda r, out, timing: _seed_metrics(ctx, r, out, timing),
        ctx.stats,
        {**_model_info(ctx.exp), "seeds": {"keys": keys, "mode": "vmap", "dirs": []}},
        header,
        _SEED_SUMMARY_COLUMNS,
    )


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


def _seed_dir(save: Path, key: int) -> Path:
    return save / f"seed_{key}"


def _run_sequential(
    cfg: RunConfig, digest: str, total: int, save: Path, say: Callable[[str], None]
) -> RunResult:
    """Several seeds of a method without vmapped rounds: the single-seed run of every key in turn,
    in ``save/seed_<key>/`` (each resumes on its own), then the aggregated rows at the top level."""
    keys = cfg.seed_keys()
    dirs = [_seed_dir(save, k).name for k in keys]
    if not (save / "run.json").is_file():
        extra = {**_model_info(_setup(cfg).exp), "seeds": {"keys": keys, "mode": "sequential", "dirs": dirs}}
        _write_info(save, cfg, digest, extra, total)
    say(
        f"run {cfg.method} on {cfg.model}/{cfg.data}: {total} rounds, {len(keys)} seeds (keys {keys[0]}..{keys[-1]}) "
        f"run one after another in this process (method {cfg.method!r} has no vmapped rounds; vmapped: "
        f"{', '.join(VMAPPED_METHODS)}), config {digest[:12]}, save dir {save}, seed dirs {', '.join(dirs)}"
    )
    results = []
    for k in keys:
        sub = dataclasses.replace(cfg, seed=k, seeds=1, save_dir=str(_seed_dir(save, k)))
        started = (_seed_dir(save, k) / "run.json").is_file()
        results.append(run(sub, resume=started, log=lambda m, k=k: say(f"[seed {k}] {m}")))
    rounds = [_aggregate([res.rounds[r] for res in results], keys, mode="sequential") for r in range(total)]
    _write_tables(save, rounds, _SEED_SUMMARY_COLUMNS)
    final = rounds[-1]
    say(
        f"{len(keys)} seeds done: test acc {_pct(final, 'test_accuracy')}, "
        f"weights kept {_pct(final, 'sparsity', complement=True)}, {final['elapsed_seconds']:.2f} s in all"
    )
    stacked = [
        tree.stack([getattr(res.carry, f) for res in results]) for f in ("params", "opt_state", "masks")
    ]
    state = [res.carry.state for res in results]
    state = tree.stack(state) if tree.leaves(state[0]) else state[0]
    return RunResult(save, rounds, Carry(stacked[0], state, stacked[1], stacked[2], None, None))


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

    if cfg.seeds > 1 and cfg.method not in VMAPPED_METHODS:
        save.mkdir(parents=True, exist_ok=True)
        return _run_sequential(cfg, digest, total, save, say)
    engine = (_single_engine if cfg.seeds == 1 else _seed_engine)(cfg, digest, total)
    save.mkdir(parents=True, exist_ok=True)
    return _loop(cfg, engine, digest, total, save, say)
