"""The context of a single-seed run: the experiment, its compiled steps, its keys and scoring batches.

:func:`setup_eager` builds the experiment (model, data, optimizer) from a config; :func:`_setup`
adds the learning-rate schedule, the steps per epoch and the compile backend (counting its graphs
with :func:`compile_counter` when ``compile`` is on); :func:`_context` adds the compiled train and
eval steps (one static graph per form for compact runs), the method's extra steps, the keys split
from ``seed`` (``rng.split(seed, 3)`` into init, method and scoring keys), the prunable groups and
the scoring batches. The several-seed engine (``pure_prune.runner_seeds``) reuses :func:`_setup` and
:func:`_check_groups`.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from pure_prune import data, losses, optim, rng, stage, train
from pure_prune.algorithms import distill, dst, masking, rsst
from pure_prune.experiment import Experiment, make_optimizer, setup
from pure_prune.runconfig import RunConfig

__all__ = ["compile_counter", "setup_eager"]


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
    # compact runs: one static graph per form (shape), counted per stage
    compiler = (lambda body: stage.Compiled(body, backend=backend)) if cfg.compact and cfg.compile else None
    exp = exp._replace(
        step=train.make_step(  # premasked: base.fit_trainer masks the params when a round starts
            exp.model,
            losses.cross_entropy,
            exp.optimizer,
            compile=cfg.compile,
            backend=backend,
            premasked=True,
            compiler=compiler,
        ),
        eval_step=train.make_eval_step(
            exp.model, losses.cross_entropy, compile=cfg.compile, backend=backend, compiler=compiler
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
