"""Train and eval steps over stacked seeds, and the training and evaluation loops that run them.

:func:`make_seed_step` is ``train.make_step`` vmapped over ``S`` seeds (compiled once per chunk
size); :func:`seed_step_of` does the same for any single-seed step; :func:`make_seed_eval_step`
and :func:`evaluate_seeds` evaluate every seed (``{"accuracy": [S], "loss": [S], "count"}``);
:func:`fit_seeds` is ``train.fit`` for stacked seeds (:class:`SeedFitResult`);
:func:`make_seed_steps` builds a train and an eval step at once (:class:`SeedSteps`). A
:class:`SeedStep` checks the stacked trees (:func:`check_stacked`) and the batch
(:func:`check_batch`) eagerly before it runs. Batches are shared by all seeds (``x (B, ...)``) or
one per seed (``x (S, B, ...)``): ``per_seed_batches`` has no default. Seed ``i`` of every result
equals the single-seed computation on seed ``i``'s slice, to float tolerance. Re-exported by
:mod:`pure_prune.seeds`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from pure_prune import mask, stage_saved, train, tree
from pure_prune.optim import Optimizer, OptState
from pure_prune.seeds_stack import Batch, check_bool, num_seeds
from pure_prune.seeds_vmap import SeedFn, is_oom, stacked_in_dims
from pure_prune.train_fit import MetricSums

__all__ = [
    "SeedFitResult",
    "SeedStep",
    "SeedSteps",
    "check_batch",
    "check_stacked",
    "evaluate_seeds",
    "fit_seeds",
    "make_seed_eval_step",
    "make_seed_step",
    "make_seed_steps",
    "seed_step_of",
]


def check_stacked(params: Any, state: Any, masks: Any, others: Mapping[str, Any]) -> int:
    """Eager checks before a seed step: one seed count, masks that fit params. Returns ``S``."""
    n = num_seeds(params, "params")
    for name, t in {"state": state, **others}.items():
        if t is not None and tree.leaves(t):
            k = num_seeds(t, name)
            if k != n:
                raise ValueError(f"{name} has {k} seeds but params has {n}")
    if masks is not None:
        mask.validate(params, masks)
    return n


def check_batch(batch: Any, per_seed: bool, n: int) -> None:
    """Eager batch check: a tuple ``(x, y, *extra)``; per seed, every tensor has ``n`` seeds on axis 0."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise TypeError(f"batch must be a tuple (x, y, *extra), got {type(batch).__name__}")
    if per_seed:
        for i, b in enumerate(batch):
            if not isinstance(b, Tensor) or b.ndim == 0 or b.shape[0] != n:
                shape = tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__
                raise ValueError(
                    f"per-seed batch[{i}] must have the {n} seeds on axis 0, got {shape} "
                    "(pass per_seed_batches=False for one batch shared by all seeds)"
                )


class SeedStep(SeedFn):
    """A :class:`SeedFn` that checks stacked trees and the batch eagerly before running.

    ``bytes_masks=True`` hands the checked bool masks to ``fn`` as their uint8 views
    (``mask.as_bytes``, no copy), for a compiled ``fn`` that reads either (``train.make_step``'s
    and ``make_eval_step``'s bodies): inductor loads a bool tensor one element at a time, so the
    masked 32-seed step of ``bench/seeds.py`` took ~1.35x the dense one with bool masks and the
    same time with their bytes.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        seeded: Sequence[bool],
        chunk_size: int | None,
        *,
        opt_state: bool,
        bytes_masks: bool = False,
        in_place_fn: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(fn, seeded, chunk_size)
        self._has_opt_state = opt_state  # train steps: (params, state, opt_state, masks, batch)
        self._bytes_masks = check_bool("bytes_masks", bytes_masks)
        self._checked: tuple[Any, int, list] | None = None  # (layout key, seed count, mask leaves)
        self._views = mask.bytes_views()  # the masks' uint8 views, kept per stage
        self._in_place_fn = in_place_fn
        self.in_place: Callable[..., Any] | None = None if in_place_fn is None else self._in_place
        """``in_place(params, state, opt_state, masks, batch) -> (state, metrics)`` for a compiled
        train step (else ``None``): the step written into the stacked ``params`` and ``opt_state``
        tensors (``train.in_place_body``), checked as a call is, chunk by chunk; a chunk that runs
        out of memory is not retried (:func:`fit_seeds` retries its first step on fresh copies)."""

    def _seed_count(self, params: Any, state: Any, masks: Any, others: dict[str, Any]) -> int:
        """:func:`check_stacked`, run again only when the layout changes: the trees' structures,
        every leaf's shape and dtype, or the mask tensors themselves (once per stage, not once per
        step: ~53 µs a call for 8 stacked digits MLPs)."""
        parts = [params, state, masks, *others.values()]
        flat = [tree.flatten(t) for t in parts]
        key = (
            tuple(spec for _, spec in flat),
            tuple((x.shape, x.dtype) if isinstance(x, Tensor) else x for leaves, _ in flat for x in leaves),
        )
        last = self._checked
        if last is not None and last[0] == key and all(a is b for a, b in zip(last[2], flat[2][0])):
            return last[1]
        n = check_stacked(params, state, masks, others)
        self._checked = (key, n, flat[2][0])
        return n

    @property
    def per_seed_batches(self) -> bool:
        """Whether the batch carries a seed axis (``x (S, B, ...)``) or is shared (``x (B, ...)``)."""
        return self.seeded[-1]

    def __call__(self, *args: Any) -> Any:
        return self._run(*self._checked_args(args))

    def _in_place(self, *args: Any) -> Any:
        args, n = self._checked_args(args)
        return self._run(args, n, self._in_place_fn)

    def _checked_args(self, args: tuple) -> tuple[tuple, int]:
        """The arguments as the mapped function takes them (the masks as uint8 views with
        ``bytes_masks``) and the number of seeds, after the checks."""
        if len(args) != len(self.seeded):
            raise TypeError(f"expected {len(self.seeded)} arguments, got {len(args)}")
        params, state, *rest = args
        others = {"opt_state": rest[0]} if self._has_opt_state else {}
        n = self._seed_count(params, state, rest[-2], others)
        check_batch(args[-1], self.per_seed_batches, n)
        if self._bytes_masks and rest[-2] is not None:
            args = (*args[:-2], self._views(rest[-2]), args[-1])
        return args, n


def make_seed_step(
    model: Any,
    loss: Callable[..., Tensor],
    optimizer: Optimizer,
    *,
    per_seed_batches: bool,
    compile: bool = True,  # noqa: A002 - the switch's natural name
    chunk_size: int | None = None,
    backend: str | Callable = "inductor",
    cache_dir: str | os.PathLike | None = None,
) -> SeedStep:
    """``train.make_step`` for stacked seeds, vmapped (and compiled once per chunk size).

    ``step(params, state, opt_state, masks, batch) -> (params, state, opt_state, metrics)`` with
    every tree stacked over ``S`` seeds (``masks`` may be ``None`` for dense training; its ``None``
    leaves stay unbatched), the new BatchNorm state stacked, and ``metrics`` ``{"accuracy": (S,),
    "loss": (S,)}``. ``per_seed_batches=True``: ``batch`` is ``(x (S, B, ...), y (S, B), ...)``,
    one batch per seed; ``False``: ``(x (B, ...), y (B,), ...)`` shared by all seeds. Seed ``i``'s
    result equals ``train.make_step(...)`` on seed ``i``'s slice. ``chunk_size`` bounds the seeds
    run at once (see :class:`SeedFn`).
    """
    single = train.make_step(model, loss, optimizer, compile=False)
    compiled = check_bool("compile", compile)
    return seed_step_of(
        single,
        per_seed_batches=per_seed_batches,
        compile=compiled,
        chunk_size=chunk_size,
        backend=backend,
        bytes_masks=compiled,  # make_step's body reads uint8 masks; compiled, they are faster
        cache_dir=cache_dir,
    )


def seed_step_of(
    step: train.Step,
    *,
    per_seed_batches: bool,
    compile: bool = True,  # noqa: A002 - the switch's natural name
    chunk_size: int | None = None,
    backend: str | Callable = "inductor",
    bytes_masks: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> SeedStep:
    """Any single-seed train step mapped over stacked seeds (vmapped, compiled once per chunk size).

    ``step(params, state, opt_state, masks, batch) -> (params, state, opt_state, metrics)`` is a
    pure single-seed step with ``train.make_step``'s signature, built *uncompiled* (e.g.
    ``algorithms.dst.make_ste_step(..., compile=False)``, or a step over ``rsst.penalized``'s
    optimizer); its metrics must be 0-d tensors. The result behaves as :func:`make_seed_step`'s:
    every tree stacked over ``S`` seeds, ``per_seed_batches`` as there, metrics ``(S,)``.
    ``bytes_masks=True`` passes the (checked) bool masks to ``step`` as their uint8 views, for a
    step that reads either (see :class:`SeedStep`). ``cache_dir`` (compiled, inductor): the vmapped
    step is saved there and loaded by later processes (:class:`pure_prune.stage_saved.Saved`).
    """
    if not callable(step):
        raise TypeError(f"step must be a train step function, got {step!r}")
    per_seed = check_bool("per_seed_batches", per_seed_batches)
    batch_dim = 0 if per_seed else None

    def seeds_step(params: Any, state: Any, opt_state: OptState, masks: Any, batch: Batch):
        mapped = torch.func.vmap(step, in_dims=(0, 0, 0, stacked_in_dims(masks), batch_dim))
        return mapped(params, state, opt_state, masks, batch)

    run, run_in_place = seeds_step, None
    if check_bool("compile", compile):  # once per chunk shape (dynamic=False), or saved to cache_dir
        kw = dict(backend=backend, cache_dir=cache_dir, dynamic=False)
        run = stage_saved.compile_step(seeds_step, form="seeds", **kw)
        run_in_place = stage_saved.compile_step(train.in_place_body(seeds_step), form="seeds-in-place", **kw)
    return SeedStep(
        run,
        (True, True, True, True, per_seed),
        chunk_size,
        opt_state=True,
        bytes_masks=bytes_masks,
        in_place_fn=run_in_place,
    )


def make_seed_eval_step(
    model: Any,
    loss: Callable[..., Tensor],
    *,
    per_seed_batches: bool,
    compile: bool = True,  # noqa: A002 - the switch's natural name
    chunk_size: int | None = None,
    backend: str | Callable = "inductor",
    cache_dir: str | os.PathLike | None = None,
) -> SeedStep:
    """``train.make_eval_step`` for stacked seeds.

    ``eval_step(params, state, masks, batch) -> {"correct": (S,) int64, "count": (S,) int64,
    "loss_sum": (S,) float32}``; the batch is shared (``per_seed_batches=False``, the usual test
    split) or per seed, as in :func:`make_seed_step`. See :func:`evaluate_seeds`.
    """
    per_seed = check_bool("per_seed_batches", per_seed_batches)
    single = train.make_eval_step(model, loss, compile=False)
    batch_dim = 0 if per_seed else None

    def seeds_eval(params: Any, state: Any, masks: Any, batch: Batch) -> dict[str, Tensor]:
        mapped = torch.func.vmap(single, in_dims=(0, 0, stacked_in_dims(masks), batch_dim))
        return mapped(params, state, masks, batch)

    run = seeds_eval
    compiled = check_bool("compile", compile)
    if compiled:
        run = stage_saved.compile_step(
            seeds_eval, backend=backend, cache_dir=cache_dir, form="seeds", dynamic=False
        )
    return SeedStep(run, (True, True, True, per_seed), chunk_size, opt_state=False, bytes_masks=compiled)


def evaluate_seeds(
    eval_step: SeedFn, params: Any, state: Any, masks: Any, batches: Iterable[Batch]
) -> dict[str, Any]:
    """Run a seed eval step over ``batches``: ``{"accuracy": [S floats], "loss": [S floats], "count": int}``.

    Per seed, ``accuracy`` and ``loss`` are means over every label entry, as ``train.evaluate``;
    ``count`` is the number of label entries each seed saw. Raises ``ValueError`` on no batches.
    """
    totals = train.sum_metrics(eval_step, params, state, masks, batches, where="evaluate_seeds")
    count = totals["count"].to(torch.float64)
    return {
        "accuracy": (totals["correct"].to(torch.float64) / count).tolist(),
        "loss": (totals["loss_sum"].to(torch.float64) / count).tolist(),
        "count": int(totals["count"][0]),
    }


class SeedFitResult(NamedTuple):
    """Stacked trees after :func:`fit_seeds`, and per epoch ``{"accuracy": [S], "loss": [S]}``."""

    params: Any
    state: Any
    opt_state: OptState
    history: list[dict[str, list[float]]]


def fit_seeds(
    step: SeedStep,
    params: Any,
    state: Any,
    opt_state: OptState,
    masks: Any,
    batches_fn: Callable[[int], Iterable[Batch]],
    epochs: int,
) -> SeedFitResult:
    """:func:`train.fit` for stacked seeds: ``epochs`` epochs of ``step`` with fixed ``masks``.

    ``batches_fn(epoch)`` yields batches in the form the step expects (per seed, e.g.
    ``lambda e: seed_batches((x, y), 64, keys, e)``, or shared). Each history entry holds, per seed,
    the step metrics averaged over the epoch weighted by label entries, as ``train.fit`` does.
    A compiled step runs in place (``SeedStep.in_place``) on copies that ``fit_seeds`` makes at its
    first step, as ``train.fit`` does: the same results, and the caller's trees are not written.
    """
    if not isinstance(step, SeedStep) or len(step.seeded) != 5:
        raise TypeError(f"step must come from make_seed_step, got {step!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
    n = num_seeds(params, "params")
    in_place = train.in_place_step(step, params, opt_state) if epochs else None
    start = (params, state, opt_state)  # an in-place fit's first step copies them (_first_in_place)
    history: list[dict[str, list[float]]] = []
    first = True
    for epoch in range(epochs):
        sums = MetricSums()
        for batch in batches_fn(epoch):
            if in_place is None:
                params, state, opt_state, metrics = step(params, state, opt_state, masks, batch)
            elif first:
                params, state, opt_state, metrics = _first_in_place(step, start, masks, batch, n)
            else:
                state, metrics = in_place(params, state, opt_state, masks, batch)
            first = False
            sums.add(metrics, batch[1].numel() // n if step.per_seed_batches else batch[1].numel())
        if sums.count == 0:
            raise ValueError(f"fit_seeds: batches_fn({epoch}) yielded no batches")
        history.append({k: v.tolist() for k, v in sums.means().items()})
    return SeedFitResult(params, state, opt_state, history)


def _first_in_place(step: SeedStep, start: tuple[Any, Any, Any], masks: Any, batch: Batch, n: int) -> tuple:
    """The first in-place step of :func:`fit_seeds`, on fresh copies of ``start``'s params and
    optimizer state; a chunk that runs out of memory is halved (with a ``RuntimeWarning``, as a
    call's chunks are) and the step run again on new copies, since the failed one may have written
    into the old. Returns ``(params, state, opt_state, metrics)``."""
    params, state, opt_state = start
    while True:
        own_params, own_opt_state = train.own_copies(params), train.own_copies(opt_state)
        try:
            new_state, metrics = step.in_place(own_params, state, own_opt_state, masks, batch)
        except RuntimeError as err:
            size = n if step.chunk_size is None else step.chunk_size
            if not is_oom(err) or size == 1:
                raise
            step.chunk_size = max(1, size // 2)
            warnings.warn(
                f"fit_seeds: out of memory with a chunk of {size} seeds; retrying with chunks of "
                f"{step.chunk_size}",
                RuntimeWarning,
                stacklevel=3,
            )
            continue
        return own_params, new_state, own_opt_state, metrics


class SeedSteps(NamedTuple):
    """A compiled seed train step (per-seed batches) and eval step (shared test batches)."""

    train: SeedStep
    eval: SeedStep


def make_seed_steps(
    model: Any,
    loss: Callable[..., Tensor],
    optimizer: Optimizer,
    *,
    compile: bool = True,  # noqa: A002 - the switch's natural name
    chunk_size: int | None = None,
) -> SeedSteps:
    """A train step (per-seed batches) and an eval step (shared batches) over stacked seeds; build
    them once to reuse the compiled code across runs."""
    return SeedSteps(
        make_seed_step(model, loss, optimizer, per_seed_batches=True, compile=compile, chunk_size=chunk_size),
        make_seed_eval_step(model, loss, per_seed_batches=False, compile=compile, chunk_size=chunk_size),
    )
