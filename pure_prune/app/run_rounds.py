"""The rounds of each method of a run: settings from the config, the round count, round ``r``.

Each method of ``pure_prune.algorithms`` is driven by one round function ``(ctx, RoundArgs) ->
RoundOut`` (:data:`ROUNDS`): round 0 starts from the context's init and masks, later rounds take
the previous round's carry. The same function runs one seed or a stack of seeds: what differs is
in the :class:`~pure_prune.algorithms.ops.RoundOps` built from the context (:func:`round_ops`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

from tqdm import tqdm

from pure_prune import importance, losses, seeds
from pure_prune.algorithms import base, distill, dst, gradual, imp, masking, one_shot, refill, rsst
from pure_prune.algorithms.base import Carry, RoundOut
from pure_prune.algorithms.ops import RoundOps
from pure_prune.app.run_context import RunCtx
from pure_prune.app.run_rows import gradual_schedule
from pure_prune.app.runconfig import RunConfig, parse_nm

__all__ = ["RENAMED", "ROUNDS", "RoundArgs", "n_rounds", "round_ops", "run_round", "settings_of"]

S = TypeVar("S", bound=tuple)


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
        return len(gradual.segments(gradual_schedule(c), c.epochs))
    return c.epochs


def _score_fn(ctx: RunCtx) -> tuple[base.ScoreFn, str]:
    """The configured criterion as a ``ScoreFn`` on the context's scoring batches (one seed, or every
    seed of a stack with its own key and batches) and its level."""
    crit = ctx.cfg.importance
    level = importance.get(crit).level
    apply = ctx.exp.model.apply

    def one(params: Any, state: Any, masks: Any, key: int) -> Any:
        return masking.score(
            crit, apply, params, state, masks, batches=ctx.score_batches, key=key, groups=ctx.groups
        )[0]

    def stack(params: Any, state: Any, masks: Any, key: tuple[int, ...]) -> Any:
        return seeds.score_seeds(
            crit,
            ctx.exp.model,
            params,
            state,
            masks,
            keys=list(key),
            batches=ctx.score_batches,
            per_seed_batches=True,
            groups=ctx.groups,
        )

    return (one if ctx.seeds is None else stack), level


def round_ops(ctx: RunCtx, train_fn: base.TrainFn) -> RoundOps:
    """The :class:`RoundOps` of the context (one seed or its stack) with the round's ``train_fn``."""
    score_fn, level = _score_fn(ctx)
    return RoundOps(ctx.exp.optimizer, train_fn, score_fn, level, ctx.init, ctx.seeds)


def _start(ctx: RunCtx, ops: RoundOps) -> tuple[Any, Any, Any]:
    """Fresh ``(params, state)`` from the init key(s) and each seed's initial masks."""
    cfg = ctx.cfg
    params, state = ops.initialise(ctx.k_init)
    masks = ops.each(lambda p: masking.initial(p, cfg.struct, ctx.groups, exclude=cfg.exclude), params)
    return params, state, masks


class RoundArgs(NamedTuple):
    """What a method's round function gets besides the context: the carry (``None`` at round 0),
    the round index and the round's operations."""

    carry: Carry | None
    r: int
    ops: RoundOps


RENAMED = {
    "rounds": "pruning_times",
    "criterion": "criteria",
    "growth": "rst_schedule",
    "granularity": "reg_granularity",
    "T": "temperature",
    "kind": "dst",
}
"""``{Settings field: RunConfig knob}`` where a method's settings name a knob otherwise (the names of
the lottery-ticket code live on in the config); every other field is the knob of the same name."""


def settings_of(settings: type[S], cfg: RunConfig, **given: Any) -> S:
    """A method's ``settings`` NamedTuple (``imp.Settings``, ``rsst.Settings``, ...) filled from
    ``cfg``: each field from the knob of its name (or its :data:`RENAMED` knob); ``given`` holds the
    fields the config does not have (``steps_per_epoch``, from the data set). Raises ``TypeError``
    naming a field that neither supplies."""
    values = {}
    for field in settings._fields:
        if field in given:
            values[field] = given[field]
        elif hasattr(cfg, RENAMED.get(field, field)):
            values[field] = getattr(cfg, RENAMED.get(field, field))
        else:
            raise TypeError(f"{settings.__name__}.{field}: no knob of that name in RunConfig; pass it")
    return settings(**values)


def imp_settings(cfg: RunConfig, spe: int) -> imp.Settings:
    return settings_of(imp.Settings, cfg, steps_per_epoch=spe).check()


def rsst_settings(cfg: RunConfig) -> rsst.Settings:
    return settings_of(rsst.Settings, cfg)


def distill_settings(cfg: RunConfig) -> distill.Settings:
    return settings_of(distill.Settings, cfg)


def dst_settings(cfg: RunConfig, spe: int) -> dst.Settings:
    return settings_of(dst.Settings, cfg, steps_per_epoch=spe)


def _with_settings(method: Any, s: Any, ctx: RunCtx, a: RoundArgs, **next_kw: Any) -> RoundOut:
    """Round ``a.r`` of a method whose rounds take its settings ``s`` (``imp``/``refill``, ``rsst``,
    ``distill``): its ``first_round`` from the context's start at round 0, else its ``next_round`` of
    the carry (with the context's groups and the method's own ``next_kw``)."""
    if a.r == 0:
        return method.first_round(*_start(ctx, a.ops), s, ops=a.ops, key=ctx.key)
    return method.next_round(a.carry, a.r, s, ops=a.ops, key=ctx.key, groups=ctx.groups, **next_kw)


def _imp_round(ctx: RunCtx, a: RoundArgs) -> RoundOut:
    cfg = ctx.cfg
    refills = cfg.method == "refill" and a.r > 0
    fn = refill.mask_fn(ctx.groups, cfg.fillback_rate, criterion=cfg.criteria) if refills else None
    return _with_settings(imp, imp_settings(cfg, ctx.spe), ctx, a, mask_fn=fn)


def _one_shot_round(ctx: RunCtx, a: RoundArgs) -> RoundOut:
    cfg = ctx.cfg
    if a.r == 0:
        return one_shot.first_round(*_start(ctx, a.ops), epochs=cfg.epochs, ops=a.ops, key=ctx.key)
    return one_shot.next_round(
        a.carry,
        cfg.sparsity,
        finetune_epochs=cfg.finetune_epochs,
        ops=a.ops,
        key=ctx.key,
        scope=cfg.scope,
        struct=cfg.struct,
        groups=ctx.groups,
        nm=parse_nm(cfg.nm),
    )


def _gradual_round(ctx: RunCtx, a: RoundArgs) -> RoundOut:
    cfg = ctx.cfg
    segs = gradual.segments(gradual_schedule(cfg), cfg.epochs)
    kw = dict(ops=a.ops, key=ctx.key, struct=cfg.struct, scope=cfg.scope, groups=ctx.groups)
    if a.r == 0:
        return gradual.first_round(*_start(ctx, a.ops), segs, **kw)
    return gradual.next_round(a.carry, a.r, segs, **kw)


def _rsst_round(ctx: RunCtx, a: RoundArgs) -> RoundOut:
    return _with_settings(
        rsst,
        rsst_settings(ctx.cfg),
        ctx,
        a,
        penalized_optimizer=ctx.steps["penalized"],
        penalty_step=ctx.steps["rsst"],
        apply=ctx.exp.model.apply,
        batches=ctx.score_batches,
        steps_per_epoch=ctx.spe,
    )


def _distill_round(ctx: RunCtx, a: RoundArgs) -> RoundOut:
    kw = dict(apply=ctx.exp.model.apply, kd_step=ctx.steps["distill"])
    return _with_settings(distill, distill_settings(ctx.cfg), ctx, a, **kw)


def _dst_round(ctx: RunCtx, a: RoundArgs) -> RoundOut:
    cfg, exp = ctx.cfg, ctx.exp
    s = dst_settings(cfg, ctx.spe)
    carry = dst.start(*_start(ctx, a.ops), s, ops=a.ops, key=ctx.key) if a.r == 0 else a.carry
    ds = exp.dataset
    if ctx.seeds is None:
        batches = exp.train_batches(ctx.key)(a.r)
    else:
        batches = seeds.seed_batches((ds.x_train, ds.y_train), exp.batch_size, list(ctx.key), a.r)
    if cfg.progress:
        batches = tqdm(batches, total=ctx.spe, desc=f"round {a.r}", unit="step", leave=False)
    return dst.train_epoch(
        carry,
        a.r,
        s,
        batches,
        step=ctx.steps.get("ste", ctx.steps["train"]),
        ops=a.ops,
        key=ctx.key,
        apply=exp.model.apply,
        loss=losses.cross_entropy,
    )


ROUNDS: dict[str, Callable[[RunCtx, RoundArgs], RoundOut]] = {
    "imp": _imp_round,
    "refill": _imp_round,
    "one_shot": _one_shot_round,
    "gradual": _gradual_round,
    "rsst": _rsst_round,
    "distill": _distill_round,
    "dst": _dst_round,
}


def run_round(ctx: RunCtx, carry: Carry | None, r: int, train_fn: base.TrainFn) -> RoundOut:
    """Round ``r`` of the configured method (``carry`` is ``None`` at round 0), on one seed or the
    context's stack of seeds alike."""
    return ROUNDS[ctx.cfg.method](ctx, RoundArgs(carry, r, round_ops(ctx, train_fn)))
