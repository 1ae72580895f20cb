"""``pure-prune run --seeds S``: every method's rounds over ``S`` stacked seeds, as one vmapped program.

Seed ``i`` (key ``k_i = seed + i``) is, to float tolerance, the single-seed run with ``seed = k_i``
(:mod:`pure_prune.app.runner`): same init, data order, scores, masks and random controls, each derived
from ``k_i`` exactly as that run derives it (``rng.split(k_i, 3)`` into init, method and scoring
keys; the method key folded with the offsets the modules of ``pure_prune.algorithms`` use).

Every tree is stacked with a leading seed axis (``pure_prune.seeds``). What runs once for all seeds:
the train and eval steps (``torch.func.vmap``-ed, compiled once with ``compile``), each seed on its
own batches; RSST's penalized step (each seed's penalty table and chosen entries ride in its
optimizer state); the distillation step, with each seed's dense teacher's logits from one vmapped
forward; RigL's dense gradients. What runs seed by seed on the host, as the single-seed round does
it: choosing masks — ``seeds.select_seeds`` (vmapped) for unstructured element selection, otherwise
``masking.prune_to``, Refill's channel conversion, RSST's unit choice and penalty set-up
(``rsst.plan_round``), DST's initial masks and drop-and-grow updates (``dst.start``,
``dst.update_masks``: SET draws from seed ``i``'s key, RigL grows by seed ``i``'s gradients).

Checkpoints hold the stacked trees (a method's extras too: RSST's pending units, the distillation
teachers), so a seeded run resumes as a single-seed one does.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from tqdm import tqdm

from pure_prune import importance, losses, mask, rng, seeds, tree
from pure_prune.algorithms import base, distill, dst, gradual, imp, masking, refill, rsst
from pure_prune.algorithms.base import Carry, RoundOut
from pure_prune.app import data
from pure_prune.app.experiment import Experiment
from pure_prune.app.run_context import Engine, check_method_groups, setup_run
from pure_prune.app.run_dir import model_info
from pure_prune.app.run_rounds import (
    distill_settings,
    dst_settings,
    gradual_schedule,
    imp_settings,
    rsst_settings,
)
from pure_prune.app.run_rows import SEED_METRICS, TIME_COLUMNS, round_row
from pure_prune.app.runconfig import RunConfig, parse_nm

__all__ = ["SUMMARY_COLUMNS", "aggregate", "engine"]

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


class _SeedCtx(NamedTuple):
    """The context of a vmapped several-seed run: per-seed keys (``k_*[i]`` from ``rng.split(keys[i], 3)``,
    as ``run_context.build_context`` splits one seed), per-seed scoring batches ``((x (S, B, ...), y (S, B)), ...)``,
    the vmapped steps (train: one batch per seed; eval: the shared test batches) and the method's
    extra seed functions (:func:`_method_steps`)."""

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
    steps: seeds.SeedSteps
    extra: dict[str, Any]


_SeedTrainFn = Callable[..., base.Trained]
"""``train_fn(params, state, opt_state, masks, *, start, stop, keys, step=None, batch_map=None) ->
base.Trained`` over stacked trees; ``keys[i]`` orders seed ``i``'s data, ``step`` replaces the plain
seed step, ``batch_map`` transforms every stacked batch. History entries hold per-seed lists."""


def _method_steps(cfg: RunConfig, exp: Experiment, backend: Callable | str) -> dict[str, Any]:
    """The method's extra seed functions, as ``run_context._steps`` builds the single-seed ones: RSST's
    penalized optimizer and its vmapped step; distill's vmapped KD step and teacher forward
    (``(params, state, x) -> logits``); STE's vmapped straight-through step; RigL's vmapped dense
    gradient (``(params, state, masks, batch) -> grads``)."""
    kw = dict(per_seed_batches=True, compile=cfg.compile, backend=backend)
    apply = exp.model.apply
    if cfg.method == "rsst":
        pen = rsst.penalized(exp.optimizer)
        return {"penalized": pen, "rsst": seeds.make_seed_step(exp.model, losses.cross_entropy, pen, **kw)}
    if cfg.method == "distill":
        kd = distill.kd(cfg.alpha, cfg.temperature)
        return {
            "distill": seeds.make_seed_step(exp.model, kd, exp.optimizer, **kw),
            "teacher": seeds.over_seeds(lambda p, s, x: apply(p, s, x, train=False)[0], (True, True, True)),
        }
    if cfg.method == "dst" and cfg.dst == "ste":
        ste = dst.make_ste_step(exp.model, losses.cross_entropy, exp.optimizer, compile=False)
        return {"ste": seeds.seed_step_of(ste, **kw)}
    if cfg.method == "dst" and cfg.dst == "rigl":
        grad = seeds.over_seeds(
            lambda p, s, m, b: dst.dense_grad(apply, losses.cross_entropy, p, s, m, b), (True,) * 4
        )
        return {"dense_grad": grad}
    return {}


def _seed_context(cfg: RunConfig) -> _SeedCtx:
    """The :class:`_SeedCtx` of ``cfg`` (``seeds > 1``); raises ``ValueError`` as ``run_context.build_context``."""
    su = setup_run(cfg)
    exp = su.exp
    keys = tuple(cfg.seed_keys())
    k_init, k_method, k_score = (tuple(k) for k in zip(*(rng.split(k, 3) for k in keys)))
    params, _ = su.init(k_init[0])
    groups = masking.active_groups(exp.model.groups(params), cfg.exclude)
    check_method_groups(cfg, groups)
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
    steps = seeds.SeedSteps(
        seeds.make_seed_step(exp.model, losses.cross_entropy, exp.optimizer, per_seed_batches=True, **kw),
        seeds.make_seed_eval_step(exp.model, losses.cross_entropy, per_seed_batches=False, **kw),
    )
    extra = _method_steps(cfg, exp, su.backend)
    return _SeedCtx(cfg, exp, su.init, groups, su.spe, keys, k_init, k_method, score, su.stats, steps, extra)


# ----------------------------------------------------------------------------- shared pieces


def _fold(keys: tuple[int, ...] | list[int], offset: int) -> list[int]:
    """``[rng.fold_in(k, offset) for k in keys]``: one derived key per seed."""
    return [rng.fold_in(k, offset) for k in keys]


def _seed_carry(carry: Carry, i: int) -> Carry:
    """Seed ``i`` of a stacked carry (``None`` fields and trees without tensors stay as they are)."""
    return Carry(*(seeds.seed_slice(t, i) for t in carry))


def _stack(trees: list[Any]) -> Any:
    """The seeds' trees stacked (seed axis first); trees without tensors (``{}``, ``None``) stay."""
    return trees[0] if not any(x is not None for x in tree.leaves(trees[0])) else tree.stack(trees)


def _seed_score_batches(ctx: _SeedCtx, i: int) -> tuple:
    """Seed ``i``'s scoring batches ``((x (B, ...), y (B,)), ...)``: the single-seed run's."""
    return tuple(tuple(t[i] for t in batch) for batch in ctx.score_batches)


def _seed_trainer(ctx: _SeedCtx, desc: str) -> _SeedTrainFn:
    """:func:`base.fit_trainer` for stacked seeds: epoch ``e`` of seed ``i`` is ordered by
    ``data.epoch_key(keys[i], e)`` (``seeds.seed_batches``); with ``eval_every_epoch`` each entry also
    holds the per-seed ``test_accuracy``/``test_loss``."""
    cfg, exp = ctx.cfg, ctx.exp

    def fn(
        params: Any,
        state: Any,
        opt_state: Any,
        masks: Any,
        *,
        start: int,
        stop: int,
        keys: list[int],
        step: seeds.SeedStep | None = None,
        batch_map: Callable[[tuple], tuple] | None = None,
    ) -> base.Trained:
        run = ctx.steps.train if step is None else step
        history: list[dict[str, Any]] = []
        bar = tqdm(range(start, stop), desc=desc, unit="epoch", disable=not cfg.progress, leave=False)
        for epoch in bar:

            def batches(_: int, e: int = epoch) -> Any:
                it = seeds.seed_batches(exp.dataset, exp.batch_size, keys, e)
                return it if batch_map is None else map(batch_map, it)

            t0 = time.perf_counter()
            res = seeds.fit_seeds(run, params, state, opt_state, masks, batches, 1)
            params, state, opt_state = res.params, res.state, res.opt_state
            entry: dict[str, Any] = {
                "epoch": float(epoch),
                **res.history[0],
                "seconds": time.perf_counter() - t0,
            }
            if cfg.eval_every_epoch:
                test = seeds.evaluate_seeds(ctx.steps.eval, params, state, masks, exp.test_batches())
                entry.update(test_accuracy=test["accuracy"], test_loss=test["loss"])
            history.append(entry)
        return base.Trained(params, state, opt_state, history)

    return fn


def _seed_start(ctx: _SeedCtx) -> tuple[Any, Any, Any]:
    """Stacked ``init(k_init[i])`` and each seed's initial masks (``masking.initial``)."""
    cfg = ctx.cfg
    params, state = seeds.init_seeds(ctx.init, ctx.k_init)
    masks = tree.stack(
        [
            masking.initial(seeds.seed_slice(params, i), cfg.struct, ctx.groups, exclude=cfg.exclude)
            for i in range(len(ctx.keys))
        ]
    )
    return params, state, masks


def _seed_opt_state(ctx: _SeedCtx, params: Any, count: int = 0) -> dict[str, Any]:
    """Stacked :func:`base.fresh_opt_state`: every seed's fresh optimizer state, step counter at ``count``."""
    st = seeds.init_opt_seeds(ctx.exp.optimizer, params)
    return {**st, "count": torch.full_like(st["count"], count)}


def _seed_scores(ctx: _SeedCtx, params: Any, state: Any, masks: Any, keys: list[int]) -> tuple[Any, str]:
    """Every seed's scores by the configured criterion (seed ``i`` with ``keys[i]`` and its own batches)
    and their level (``"element"``/``"unit"``)."""
    crit = importance.get(ctx.cfg.importance)
    scores = seeds.score_seeds(
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
    ``seeds.select_seeds`` for unstructured element selection, ``masking.prune_to`` seed by seed
    for the structured forms."""
    cfg = ctx.cfg
    if cfg.struct == "unstructured" and level == "element":
        return seeds.select_seeds(scores, target, scope=cfg.scope, masks=masks)
    return tree.stack(
        [
            masking.prune_to(
                seeds.seed_slice(scores, i),
                target,
                struct=cfg.struct,
                masks=seeds.seed_slice(masks, i),
                groups=ctx.groups,
                scope=cfg.scope,
                level=level,
                nm=parse_nm(cfg.nm),
            )
            for i in range(len(ctx.keys))
        ]
    )


def _seed_first_round(
    ctx: _SeedCtx, epochs: int, offset: int, train_fn: _SeedTrainFn
) -> tuple[base.Trained, Any]:
    """Round 0 of RSST and distill (``base.train_fresh``): ``epochs`` epochs under the initial masks
    from a fresh optimizer state on keys ``fold_in(k_method[i], offset)``. Returns the trained
    trees and the masks."""
    params, state, masks = _seed_start(ctx)
    params = mask.apply(params, masks)
    return train_fn(
        params,
        state,
        _seed_opt_state(ctx, params),
        masks,
        start=0,
        stop=epochs,
        keys=_fold(ctx.k_method, offset),
    ), masks


# ----------------------------------------------------------------------------- the rounds


def _one_shot_round(ctx: _SeedCtx, carry: Carry | None, r: int, train_fn: _SeedTrainFn) -> RoundOut:
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


def _imp_round(ctx: _SeedCtx, carry: Carry | None, r: int, train_fn: _SeedTrainFn) -> RoundOut:
    """``imp.first_round`` / ``next_round`` (rewind, ``reinit`` and ``random_masks`` controls) for
    stacked seeds; for ``refill`` each seed's selected masks are refilled (``refill.mask_fn``) as
    ``imp.next_round``'s ``mask_fn`` does."""
    cfg, keys = ctx.cfg, ctx.k_method
    s = imp_settings(cfg, ctx.spe)
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
    n = len(keys)
    if s.control == "random_masks":
        masks = tree.stack(
            [
                imp.random_masks_like(seeds.seed_slice(masks, i), seeds.seed_slice(carry.masks, i), k)
                for i, k in enumerate(k_control)
            ]
        )
    if cfg.method == "refill":
        fn = refill.mask_fn(ctx.groups, cfg.fillback_rate, criterion=cfg.criteria)
        masks = tree.stack(
            [
                fn(
                    seeds.seed_slice(masks, i),
                    seeds.seed_slice(carry.masks, i),
                    seeds.seed_slice(carry.params, i),
                )
                for i in range(n)
            ]
        )
    if s.control == "reinit":
        base_params, base_state = seeds.init_seeds(ctx.init, k_control)
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


def _gradual_round(ctx: _SeedCtx, carry: Carry | None, r: int, train_fn: _SeedTrainFn) -> RoundOut:
    """``gradual.first_round`` / ``next_round`` (segment ``r``) for stacked seeds."""
    keys = ctx.k_method
    start, stop, target = gradual.segments(gradual_schedule(ctx.cfg), ctx.cfg.epochs)[r]
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


def _rsst_round(ctx: _SeedCtx, carry: Carry | None, r: int, train_fn: _SeedTrainFn) -> RoundOut:
    """``rsst.first_round`` / ``next_round`` for stacked seeds: each seed's ``rsst.plan_round`` (its
    own units, by its own weights and scoring batches, and its own penalty), then one vmapped
    training of the stacked plans with the penalized seed step."""
    s, keys = rsst_settings(ctx.cfg), ctx.k_method
    if r == 0:
        out, masks = _seed_first_round(ctx, s.check().epochs, rsst._TRAIN, train_fn)
        return base.carry_out(out, masks, extra={"target": None})
    apply = ctx.exp.model.apply
    t0 = time.perf_counter()
    plans = []
    for i in range(len(keys)):
        one = _seed_carry(carry, i)
        plans.append(
            rsst.plan_round(
                one,
                r,
                s,
                optimizer=ctx.exp.optimizer,
                penalized_optimizer=ctx.extra["penalized"],
                groups=ctx.groups,
                model_fn=lambda p, x, st=one.state: apply(p, st, x, train=False)[0],
                batches=_seed_score_batches(ctx, i),
                steps_per_epoch=ctx.spe,
            )
        )
    params, masks, opt_state = (
        _stack([getattr(p, f) for p in plans]) for f in ("params", "masks", "opt_state")
    )
    target = None if plans[0].target is None else _stack([p.target for p in plans])
    seconds = time.perf_counter() - t0
    out = train_fn(
        params,
        carry.state,
        opt_state,
        masks,
        start=0,
        stop=plans[0].epochs,
        keys=_fold(keys, rsst._TRAIN + r),
        step=ctx.extra["rsst"] if plans[0].penalized else None,
    )
    return base.carry_out(out, masks, extra={"target": target}, seconds=seconds)


def _distill_round(ctx: _SeedCtx, carry: Carry | None, r: int, train_fn: _SeedTrainFn) -> RoundOut:
    """``distill.first_round`` / ``next_round`` for stacked seeds: seed ``i`` distils from its own
    dense teacher (round 0's trees, stacked in ``extra["teacher"]``), whose logits for seed ``i``'s
    batch come from one vmapped eval-mode forward without autograd."""
    s, keys = distill_settings(ctx.cfg).check(), ctx.k_method
    if r == 0:
        out, masks = _seed_first_round(ctx, s.epochs, distill._TRAIN, train_fn)
        return base.carry_out(out, masks, extra={"teacher": {"params": out.params, "state": out.state}})
    teacher = (carry.extra or {}).get("teacher")
    if teacher is None:
        raise ValueError("distill: the carry holds no teacher (run round 0 first)")
    t0 = time.perf_counter()
    scores, level = _seed_scores(ctx, carry.params, carry.state, carry.masks, _fold(keys, imp._SCORE + r))
    masks = _seed_prune(ctx, scores, imp.target(r, s.rate, s.schedule), carry.masks, level)
    params = mask.apply(carry.params, masks)
    seconds = time.perf_counter() - t0
    forward = ctx.extra["teacher"]

    def with_teacher(batch: tuple) -> tuple:
        with torch.no_grad():
            logits = forward(teacher["params"], teacher["state"], batch[0])
        return (batch[0], batch[1], logits)

    out = train_fn(
        params,
        carry.state,
        _seed_opt_state(ctx, params),
        masks,
        start=0,
        stop=s.finetune_epochs,
        keys=_fold(keys, distill._TRAIN + r),
        step=ctx.extra["distill"],
        batch_map=with_teacher,
    )
    return base.carry_out(out, masks, extra=carry.extra, seconds=seconds)


def _dst_update(
    ctx: _SeedCtx, s: dst.Settings, t: int, params: Any, state: Any, masks: Any, batch: tuple
) -> tuple[Any, Any] | None:
    """The mask update due after step ``t`` for every seed (``dst.update_masks`` on seed ``i`` with its
    key; RigL's dense gradients from one vmapped call on the step's batches), stacked; ``None`` when
    no update is due."""
    if not dst.update_due(s, t):
        return None
    grads: dict[str, Any] = {}

    def grads_fn(i: int) -> Callable[[], Any]:
        def fn() -> Any:
            if "all" not in grads:
                grads["all"] = ctx.extra["dense_grad"](params, state, masks, batch)
            return seeds.seed_slice(grads["all"], i)

        return fn

    outs = [
        dst.update_masks(
            s,
            t,
            seeds.seed_slice(params, i),
            seeds.seed_slice(masks, i),
            key=k,
            grads_fn=grads_fn(i),
        )
        for i, k in enumerate(ctx.k_method)
    ]
    return tree.stack([p for p, _ in outs]), tree.stack([m for _, m in outs])


def _dst_round(ctx: _SeedCtx, carry: Carry | None, r: int, train_fn: _SeedTrainFn) -> RoundOut:
    """``dst.start`` (round 0) and ``dst.train_epoch`` (epoch ``r``) for stacked seeds: one vmapped
    step per batch (seed ``i`` on its own batch), then each seed's due mask update. DST trains inside
    the round (the masks move between steps), so ``train_fn`` is not used."""
    cfg, exp = ctx.cfg, ctx.exp
    s = dst_settings(cfg, ctx.spe).check()
    keys, n = ctx.k_method, len(ctx.keys)
    if r == 0:
        params, state, masks = _seed_start(ctx)
        starts = [
            dst.start(
                seeds.seed_slice(params, i),
                seeds.seed_slice(state, i),
                seeds.seed_slice(masks, i),
                s,
                optimizer=exp.optimizer,
                key=k,
            )
            for i, k in enumerate(keys)
        ]
        carry = Carry(
            *(_stack([getattr(c, f) for c in starts]) for f in ("params", "state", "opt_state", "masks")),
            None,
            {},
        )
    step = ctx.extra.get("ste", ctx.steps.train)
    params, state, opt_state, masks = carry.params, carry.state, carry.opt_state, carry.masks
    batches = seeds.seed_batches(exp.dataset, exp.batch_size, keys, r)
    if cfg.progress:
        batches = tqdm(batches, total=ctx.spe, desc=f"round {r}", unit="step", leave=False)
    t = r * s.steps_per_epoch
    sums: dict[str, torch.Tensor] = {}
    count, updates, seconds = 0, 0, 0.0
    for batch in batches:
        params, state, opt_state, metrics = step(params, state, opt_state, masks, batch)
        per = batch[1].numel() // n
        sums = {k: sums.get(k, 0.0) + v * per for k, v in metrics.items()}
        count += per
        t += 1
        t0 = time.perf_counter()
        new = _dst_update(ctx, s, t, params, state, masks, batch)
        if new is not None:
            params, masks = new
            updates += 1
            seconds += time.perf_counter() - t0
    if count == 0:
        raise ValueError(f"dst: epoch {r} has no batches")
    entry: dict[str, Any] = {
        "epoch": float(r),
        **{k: [float(x) / count for x in v] for k, v in sorted(sums.items())},
        "mask_updates": float(updates),
    }
    return RoundOut(
        Carry(params, state, opt_state, masks, None, carry.extra), [entry], seconds if updates else None
    )


_ROUNDS: dict[str, Callable[[_SeedCtx, Carry | None, int, _SeedTrainFn], RoundOut]] = {
    "one_shot": _one_shot_round,
    "imp": _imp_round,
    "refill": _imp_round,
    "gradual": _gradual_round,
    "rsst": _rsst_round,
    "distill": _distill_round,
    "dst": _dst_round,
}
"""Every method's seeded round; ``runner.VMAPPED_METHODS`` lists the same keys."""


# ----------------------------------------------------------------------------- per-seed rows


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


def _metrics(ctx: _SeedCtx, r: int, out: RoundOut, timing: dict[str, Any]) -> dict[str, Any]:
    """The round's row: every seed's single-seed row (``run_rows.round_row``), aggregated."""
    carry, n = out.carry, len(ctx.keys)
    test = seeds.evaluate_seeds(
        ctx.steps.eval, carry.params, carry.state, carry.masks, ctx.exp.test_batches()
    )
    rows = []
    for i in range(n):
        history = [{k: v[i] if isinstance(v, list) else v for k, v in h.items()} for h in out.history]
        rows.append(
            round_row(
                ctx.cfg,
                r,
                seeds.seed_slice(carry.masks, i),
                seeds.seed_slice(carry.params, i),
                history,
                {"accuracy": test["accuracy"][i], "loss": test["loss"][i]},
                out.prune_seconds,
                timing,
            )
        )
    return aggregate(rows, list(ctx.keys))


def engine(cfg: RunConfig, digest: str, total: int) -> Engine:
    """The round loop's engine (``run_context.Engine``) for ``cfg.seeds > 1``: seeded rounds, aggregated
    rows, ``run.json`` extras ``seeds = {"keys", "mode": "vmap", "dirs": []}``."""
    if cfg.method not in _ROUNDS:
        raise ValueError(f"method {cfg.method!r} has no seeded rounds; known: {', '.join(_ROUNDS)}")
    ctx = _seed_context(cfg)

    def round_fn(carry: Carry | None, r: int) -> RoundOut:
        return _ROUNDS[cfg.method](ctx, carry, r, _seed_trainer(ctx, f"round {r}/{total - 1}"))

    keys = list(ctx.keys)
    header = (
        f"run {cfg.method} on {cfg.model}/{cfg.data}: {total} rounds, {len(keys)} seeds (keys {keys[0]}..{keys[-1]}) "
        f"as one vmapped program, config {digest[:12]}, save dir {cfg.save_dir}"
    )
    return Engine(
        round_fn,
        lambda r, out, timing: _metrics(ctx, r, out, timing),
        ctx.stats,
        {**model_info(ctx.exp), "seeds": {"keys": keys, "mode": "vmap", "dirs": []}},
        header,
        SUMMARY_COLUMNS,
    )
