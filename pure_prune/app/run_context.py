"""The context of a single-seed run: the experiment, its compiled steps, its keys and scoring batches.

:func:`setup_eager` builds the experiment (model, data, optimizer) from a config; :func:`setup_run`
adds the learning-rate schedule, the steps per epoch and the compile backend (counting its graphs
with :func:`compile_counter` when ``compile`` is on); :func:`build_context` adds the compiled train and
eval steps (one static graph per form for compact runs), the method's extra steps, the keys split
from ``seed`` (``rng.split(seed, 3)`` into init, method and scoring keys), the prunable groups and
the scoring batches; for ``seeds > 1`` the same context holds a stack of seeds. Grid sweeps reuse :func:`setup_run` and
:func:`check_method_groups`.

:func:`setup_run` ends with :func:`check_fit`, so that every run (one seed or several) refuses a model
that cannot be built from ``model_cfg``, a model that cannot read the data or has too few classes
for its labels, ``exclude`` globs that match no prunable leaf or leave nothing to prune, and an
``nm`` pattern that does not divide a pruned axis, before the runner writes anything.
"""

from __future__ import annotations

import fnmatch
import itertools
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from pure_prune import losses, mask, optim, rng, seeds, select, stage, train, tree
from pure_prune.algorithms import distill, dst, masking, rsst
from pure_prune.algorithms.base import Carry, RoundOut
from pure_prune.app import data
from pure_prune.app.experiment import Experiment, make_optimizer, setup
from pure_prune.app.runconfig import STEP_CACHE_WORDS, RunConfig, parse_nm
from pure_prune.app.vec_isa_record import trust_recorded_probe

__all__ = ["check_fit", "compile_counter", "setup_eager", "step_cache_dir"]


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


def step_cache_dir(cfg: RunConfig) -> str | None:
    """The folder of ``cfg``'s saved steps (``stage_saved.Saved``), or ``None`` for none.

    ``step_cache="auto"`` (the default): ``pure_prune_steps`` inside torch's inductor cache folder
    (``TORCHINDUCTOR_CACHE_DIR``, else torch's default), when the steps compile with inductor and
    no compact stages (``stage.Compiled`` forms); ``"off"``/``None``: none; else the folder given."""
    if cfg.step_cache not in STEP_CACHE_WORDS:
        return cfg.step_cache
    if cfg.step_cache != "auto" or not cfg.compile or cfg.backend != "inductor" or cfg.compact:
        return None
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return os.path.join(cache_dir(), "pure_prune_steps")


# ----------------------------------------------------------------------------- the experiment


class RunCtx(NamedTuple):
    """A run's context, for one seed (``seeds=None``) or a stack of ``S`` seeds (``seeds=S``).

    ``key``/``k_init``: the method's and the init's keys (``rng.split(seed, 3)``; a tuple of one
    per seed for a stack, each split from ``seed + i`` as that single-seed run splits it);
    ``score_batches``: ``((x, y), ...)`` (stacked per seed, ``x (S, B, ...)``, for a stack);
    ``steps``: ``"train"``/``"eval"`` (seed steps for a stack) and the method's extra steps;
    ``seed_steps``: the stack's ``seeds.SeedSteps`` (``None`` for one seed)."""

    cfg: RunConfig
    exp: Experiment
    init: Callable[[int], tuple[Any, Any]]
    groups: tuple
    spe: int
    key: Any
    k_init: Any
    score_batches: tuple
    stats: dict[str, float]
    steps: dict[str, Any]
    seeds: int | None = None
    seed_steps: Any = None


class RunSetup(NamedTuple):
    """The seed-independent part of a run's context: the experiment (its optimizer with the
    learning-rate schedule, eager single-seed steps), init, steps per epoch and the compile backend."""

    exp: Experiment
    init: Callable[[int], tuple[Any, Any]]
    spe: int
    backend: Callable | str
    stats: dict[str, float]


def setup_eager(cfg: Any) -> tuple[Experiment, Callable[[int], tuple[Any, Any]]]:
    """:func:`pure_prune.app.experiment.setup` from a config's ``model``/``data``/``root``/``batch_size``/
    ``optimizer``/``lr``/``momentum``/``weight_decay``/``model_cfg`` fields, with eager steps
    (``compile=False``). ``cfg`` is a :class:`~pure_prune.app.runconfig.RunConfig` or a grid
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


def setup_run(cfg: RunConfig) -> RunSetup:
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
    check_fit(cfg, exp, init)
    return RunSetup(exp._replace(optimizer=opt), init, spe, backend, stats)


def check_fit(cfg: RunConfig, exp: Experiment, init: Callable[[int], tuple[Any, Any]]) -> None:
    """Check that the run ``cfg`` can start on ``exp``, eagerly and on two samples; raises
    ``ValueError`` naming the knob and the value that do not fit, else returns ``None``.

    * ``init(key)`` (the run's init key) builds the model from ``model_cfg``;
    * the model reads ``x_train[:2]`` (eval mode, no gradient);
    * integer labels whose shape is the output's without its last axis lie in ``[0, C)``, ``C`` the
      output's last axis, in both splits;
    * every ``exclude`` glob matches a prunable leaf, and some leaf stays prunable
      (``masking.initial`` for ``struct``);
    * ``struct = "nm"``: ``n:m`` divides the pruned axis of every prunable leaf (``select.n_of_m``
      on the all-kept masks).
    """
    cfg = cfg.resolved()
    k_init = rng.split(cfg.seed, 3)[0]
    try:
        params, state = init(k_init)
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as e:
        raise ValueError(
            f"model {cfg.model!r} cannot be built with model_cfg {dict(cfg.model_cfg)!r}: {e}"
        ) from e
    ds = exp.dataset
    if ds.x_train.ndim < 2:
        raise ValueError(
            f"data set {cfg.data!r} has x_train of shape {tuple(ds.x_train.shape)}: one scalar per sample; "
            "samples need at least one axis (x_train of shape (N, features, ...))"
        )
    sample = f"samples of shape {tuple(ds.x_train.shape[1:])} and dtype {ds.x_train.dtype}"
    try:
        with torch.no_grad():
            out = exp.model.apply(params, state, ds.x_train[:2], train=False)[0]
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        raise ValueError(f"model {cfg.model!r} cannot read data set {cfg.data!r} ({sample}): {e}") from e
    for split, y in (("train", ds.y_train), ("test", ds.y_test)):
        if y.dtype.is_floating_point or y.dtype == torch.bool or not len(y):
            continue
        if out.ndim != y.ndim + 1 or tuple(out.shape[1:-1]) != tuple(y.shape[1:]):
            continue  # integer targets that are not class labels of this output
        classes = out.shape[-1]
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= classes:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"data set {cfg.data!r} has label {bad} in its {split} split, but model {cfg.model!r} "
                f"has {classes} classes (labels must be in [0, {classes})); set the output size in model_cfg"
            )
    prunable = mask.prunable_paths(mask.ones_like(params))
    for glob in cfg.exclude:
        if not fnmatch.filter(prunable, glob):
            raise ValueError(
                f"exclude glob {glob!r} matches no prunable leaf of model {cfg.model!r}; its prunable "
                f"leaves: {', '.join(prunable)}"
            )
    groups = masking.active_groups(exp.model.groups(params), cfg.exclude)
    try:
        masks = masking.initial(params, cfg.struct, groups, exclude=cfg.exclude)
    except ValueError as e:
        raise ValueError(
            f"exclude {list(cfg.exclude)} with struct {cfg.struct!r} leaves nothing to prune: {e}"
        ) from e
    if cfg.struct == "nm":
        n, m = parse_nm(cfg.nm)
        ones = tree.map(lambda x: None if x is None else x.float(), masks)
        try:
            select.n_of_m(ones, n, m, masks=masks)
        except ValueError as e:
            raise ValueError(f"nm {cfg.nm!r} does not fit model {cfg.model!r}: {e}") from e


def build_context(cfg: RunConfig) -> RunCtx:
    """The :class:`RunCtx` of ``cfg``: one seed when ``cfg.seeds == 1``, else a stack of ``cfg.seeds``
    (keys ``seed + i``) whose steps are ``torch.func.vmap``-ed (``pure_prune.seeds``) and compiled once.
    Raises ``ValueError`` for settings, a model or data that do not fit (:func:`check_fit`)."""
    su = setup_run(cfg)
    exp, init, backend = su.exp, su.init, su.backend
    # --step-cache: inductor's steps saved and loaded (stage_saved.Saved); compiles counted, loads not
    compiling = dict(backend=backend, cache_dir=step_cache_dir(cfg))
    if cfg.compile and cfg.backend == "inductor":  # inductor's ISA probe: once per machine, recorded
        trust_recorded_probe()
    ds = exp.dataset
    stacked = cfg.seeds > 1
    keys = list(cfg.seed_keys()) if stacked else [cfg.seed]
    k_init, k_method, k_score = (tuple(k) for k in zip(*(rng.split(k, 3) for k in keys)))
    params, _ = init(k_init[0])
    groups = masking.active_groups(exp.model.groups(params), cfg.exclude)
    check_method_groups(cfg, groups)
    per_seed = [
        list(itertools.islice(data.batches(ds.x_train, ds.y_train, cfg.batch_size, key=k), cfg.score_batches))
        for k in k_score
    ]
    if not stacked:
        # compact runs: one static graph per form (shape), counted per stage
        compiler = (
            (lambda body: stage.Compiled(body, backend=backend)) if cfg.compact and cfg.compile else None
        )
        exp = exp._replace(
            step=train.make_step(  # premasked: the trainer masks the params when a round starts
                exp.model,
                losses.cross_entropy,
                exp.optimizer,
                compile=cfg.compile,
                premasked=True,
                compiler=compiler,
                **compiling,
            ),
            # eager: its compile (~3 s of a cold run on the digits MLP; one per stage when compact)
            # does not repay: an eager evaluation of the test split costs ~0.1 ms more than a compiled
            # one (bench/end_to_end.py --eval-time)
            eval_step=train.make_eval_step(exp.model, losses.cross_entropy, compile=False),
        )
        steps = {"train": exp.step, "eval": exp.eval_step, **_steps(cfg, exp, backend)}
        return RunCtx(
            cfg, exp, init, groups, su.spe, k_method[0], k_init[0], tuple(per_seed[0]), su.stats, steps
        )
    score = tuple(
        tuple(torch.stack([seed[b][j] for seed in per_seed]) for j in range(2))
        for b in range(len(per_seed[0]))
    )
    kw = dict(compile=cfg.compile, **compiling)
    seed_steps = seeds.SeedSteps(
        seeds.make_seed_step(exp.model, losses.cross_entropy, exp.optimizer, per_seed_batches=True, **kw),
        # compiled, unlike one seed's: the vmapped eager eval step costs ~10 ms a call (every epoch)
        seeds.make_seed_eval_step(exp.model, losses.cross_entropy, per_seed_batches=False, **kw),
    )
    extra: dict[str, Any] = {}
    for name, step in _steps(cfg, exp, backend, compile=False).items():
        if name == "penalized":
            extra[name] = step
        else:  # make_step's body reads uint8 masks (faster compiled); STE's reads either
            bytes_masks = cfg.compile and name != "ste"
            extra[name] = seeds.seed_step_of(step, per_seed_batches=True, bytes_masks=bytes_masks, **kw)
    steps = {"train": seed_steps.train, "eval": seed_steps.eval, **extra}
    return RunCtx(
        cfg, exp, init, groups, su.spe, k_method, k_init, score, su.stats, steps, len(keys), seed_steps
    )


def check_method_groups(cfg: RunConfig, groups: tuple) -> None:
    """Refuse a channel method (``rsst``, ``refill``) on a model without a prunable channel group."""
    if cfg.method in ("rsst", "refill") and not any(g.prunable for g in groups):
        raise ValueError(
            f"method {cfg.method!r} removes whole channels, but model {cfg.model!r} has no prunable group"
        )


def _steps(
    cfg: RunConfig, exp: Experiment, backend: Callable | str, *, compile: bool | None = None
) -> dict[str, Any]:
    """The method's extra single-seed steps (``torch.compile`` is lazy: building them costs nothing
    until used); ``compile`` overrides ``cfg.compile`` (a stack compiles the vmapped step instead)."""
    kw = dict(compile=cfg.compile if compile is None else compile, backend=backend)
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


class Engine(NamedTuple):
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
