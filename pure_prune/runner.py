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

from pure_prune import checkpoint, data, importance, losses, mask, optim, rng, train
from pure_prune.algorithms import base, distill, dst, gradual, imp, masking, one_shot, refill, rsst
from pure_prune.algorithms.base import Carry, RoundOut
from pure_prune.experiment import Experiment, make_optimizer, setup
from pure_prune.runconfig import NOT_HASHED, RunConfig, config_hash, parse_nm
from pure_prune.schedule import linear, linear_steps, polynomial

__all__ = ["FORMAT", "RunResult", "compile_counter", "n_rounds", "run"]

FORMAT = "pure_prune.run/1"
_CKPT_DIR = "checkpoints"
_CKPT = re.compile(r"^round_(\d{4,})\.safetensors$")
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
    "prune_seconds",
    "train_seconds",
    "round_seconds",
    "elapsed_seconds",
    "compiled_graphs",
    "compile_seconds",
)


class RunResult(NamedTuple):
    """The save directory, one metrics dict per round, and the final trees."""

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


def _context(cfg: RunConfig) -> _Ctx:
    exp, init = setup(
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
    ds = exp.dataset
    spe = data.num_batches(len(ds.y_train), cfg.batch_size)
    lr = (
        optim.multistep(cfg.lr, [m * spe for m in cfg.decreasing_lr], cfg.gamma)
        if cfg.decreasing_lr
        else cfg.lr
    )
    opt = make_optimizer(cfg.optimizer, lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    backend, stats = (
        compile_counter(cfg.backend) if cfg.compile else (cfg.backend, {"graphs": 0, "seconds": 0.0})
    )
    exp = exp._replace(
        optimizer=opt,
        step=train.make_step(exp.model, losses.cross_entropy, opt, compile=cfg.compile, backend=backend),
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
    return _Ctx(cfg, exp, init, groups, spe, k_method, k_init, score, stats, _steps(cfg, exp, backend))


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
    s = imp.Settings(
        rate=cfg.rate,
        rounds=cfg.pruning_times,
        epochs=cfg.epochs,
        rewind_epoch=cfg.rewind_epoch,
        steps_per_epoch=ctx.spe,
        schedule=cfg.schedule,
        scope=cfg.scope,
        struct=cfg.struct,
        control=cfg.control,
    )
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


def _write_info(save: Path, cfg: RunConfig, digest: str, ctx: _Ctx, total: int) -> None:
    checkpoint.save_json_atomic(
        save / "run.json",
        {
            "format": FORMAT,
            "config": cfg.to_json(),
            "config_hash": digest,
            "rounds": total,
            "input_shape": list(ctx.exp.model.input_shape),
            "input_dtype": str(ctx.exp.model.input_dtype).removeprefix("torch."),
            "torch": torch.__version__,
        },
    )


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
    meta = {
        "format": FORMAT,
        "config_hash": digest,
        "round": r,
        "rounds": total,
        "rng": {"seed": cfg.seed, "next_round": r + 1},
        "metrics": rounds,
    }
    checkpoint.save(save / _CKPT_DIR / f"round_{r:04d}.safetensors", trees, meta)


def _write_tables(save: Path, rounds: list[dict[str, Any]]) -> None:
    """``rounds.jsonl`` and ``summary.csv`` from the metrics (rewritten whole: they are derived)."""
    (save / "rounds.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rounds))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_SUMMARY_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rounds)
    (save / "summary.csv").write_text(buf.getvalue())


# ----------------------------------------------------------------------------- metrics and logs


def _metrics(
    ctx: _Ctx, r: int, out: RoundOut, t_round: float, graphs: int, compile_seconds: float, elapsed: float
) -> dict[str, Any]:
    carry = out.carry
    test = ctx.exp.evaluate(carry.params, carry.state, carry.masks)
    kept, total = mask.count(carry.masks, carry.params)
    best = max([test["accuracy"], *(h["test_accuracy"] for h in out.history if "test_accuracy" in h)])
    last = out.history[-1] if out.history else {}
    return {
        "round": r,
        "method": ctx.cfg.method,
        "pruned": out.prune_seconds is not None,
        "target": _target(ctx.cfg, r) if out.prune_seconds is not None else None,
        "sparsity": mask.sparsity(carry.masks),
        "sparsity_all": 1.0 - kept / total,
        "params_kept": kept,
        "params_total": total,
        "layer_sparsity": mask.layer_sparsity(carry.masks),
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "best_test_accuracy": best,
        "train_accuracy": last.get("accuracy"),
        "train_loss": last.get("loss"),
        "epochs": len(out.history),
        "prune_seconds": out.prune_seconds,
        "train_seconds": t_round - (out.prune_seconds or 0.0),
        "round_seconds": t_round,
        "elapsed_seconds": elapsed,
        "compiled_graphs": graphs,
        "compile_seconds": compile_seconds,
    }


def _target(cfg: RunConfig, r: int) -> float | None:
    """The sparsity a pruning step of round ``r`` aims at (rows/channels: of rows/units), or ``None``."""
    if cfg.method in ("imp", "refill", "rsst", "distill"):
        return imp.target(min(r, cfg.pruning_times), cfg.rate, cfg.schedule)
    if cfg.method == "gradual":
        return gradual.segments(_gradual_schedule(cfg), cfg.epochs)[r][2]
    if cfg.method == "one_shot":
        return 1.0 - parse_nm(cfg.nm)[0] / parse_nm(cfg.nm)[1] if cfg.struct == "nm" else cfg.sparsity
    return None


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(cfg: RunConfig, *, resume: bool = False, log: Callable[[str], None] = _stderr) -> RunResult:
    """Run (or, with ``resume``, finish) the experiment ``cfg`` in ``cfg.save_dir``; see the module doc.

    ``log(line)`` receives the log lines (also appended to ``run.log``): one per pruning step
    (round, sparsity, seconds), one per compile decision (compiled new step / reused, seconds), one
    summary per round. Returns the :class:`RunResult`. Raises ``ValueError`` for bad settings or a
    save directory it must not touch (module docstring).
    """
    cfg = cfg.check()
    digest = config_hash(cfg)
    total = n_rounds(cfg)
    save = Path(cfg.save_dir)
    _prepare(save, cfg, digest, resume, total)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ctx = _context(cfg)
    save.mkdir(parents=True, exist_ok=True)

    def say(msg: str) -> None:
        log(msg)
        with (save / "run.log").open("a") as f:
            f.write(msg + "\n")

    carry: Carry | None = None
    rounds: list[dict[str, Any]] = []
    first = 0
    found = _checkpoints(save)
    if not (save / "run.json").is_file():
        _write_info(save, cfg, digest, ctx, total)
        say(
            f"run {cfg.method} on {cfg.model}/{cfg.data}: {total} rounds, config {digest[:12]}, save dir {save}"
        )
    elif found:
        last = max(found)
        carry, meta = _load(found[last], digest, last)
        rounds, first = list(meta.get("metrics", [])), last + 1
        say(f"resume: loaded round {last} from {found[last].name}; {total - first} rounds left")
    else:
        say("resume: no checkpoint yet; starting from round 0")
    _write_tables(save, rounds)
    elapsed = rounds[-1]["elapsed_seconds"] if rounds else 0.0
    for r in range(first, total):
        t0 = time.perf_counter()
        graphs0, seconds0 = ctx.stats["graphs"], ctx.stats["seconds"]
        train_fn = base.fit_trainer(
            ctx.exp, evaluate=cfg.eval_every_epoch, progress=cfg.progress, desc=f"round {r}/{total - 1}"
        )
        out = _round(ctx, carry, r, train_fn)
        t_round = time.perf_counter() - t0
        graphs, c_seconds = ctx.stats["graphs"] - graphs0, ctx.stats["seconds"] - seconds0
        elapsed += t_round
        metrics = _metrics(ctx, r, out, t_round, graphs, c_seconds, elapsed)
        carry = out.carry
        rounds.append(metrics)
        _save(save, r, total, carry, digest, cfg, rounds)
        _write_tables(save, rounds)
        tag = f"round {r}/{total - 1}"
        if out.prune_seconds is not None:
            say(
                f"{tag} prune: step {r}, sparsity {100 * metrics['sparsity']:.2f}%, {out.prune_seconds:.3f} s"
            )
        if not cfg.compile:
            say(f"{tag} step: eager (compile off), train {metrics['train_seconds']:.2f} s")
        elif graphs:
            say(
                f"{tag} step: compiled new step ({graphs} graph{'s' * (graphs > 1)}, {c_seconds:.2f} s compiling)"
            )
        else:
            say(f"{tag} step: reused compiled step (0 new graphs), train {metrics['train_seconds']:.2f} s")
        say(
            f"{tag}: test acc {100 * metrics['test_accuracy']:.2f}% (best {100 * metrics['best_test_accuracy']:.2f}%), "
            f"weights kept {100 * (1 - metrics['sparsity']):.2f}%, {t_round:.2f} s"
        )
    if first >= total:
        say(f"run already complete ({total} rounds)")
    return RunResult(save, rounds, carry)
