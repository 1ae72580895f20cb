"""Many seeds as one program: ``torch.func.vmap`` over stacked trees, compiled once.

A *stacked* tree holds the trees of ``S`` seeds with a leading seed axis on every tensor leaf
(:func:`stack`): params ``(S, *shape)``, BatchNorm state ``(S, C)``, optimizer state (``count``
``(S,)``, momentum ``(S, *shape)``), masks ``(S, *shape)`` bool. A ``None`` leaf (a dense leaf of a
mask tree) has no seed axis and stays ``None``. Seed ``i`` of every result equals the single-seed
computation on seed ``i``'s slice, to float tolerance (``tests/test_sweep.py`` checks it with
BatchNorm and a pruning step in between).

Data is either shared by all seeds (a batch ``x (B, ...)``, vmapped with ``in_dims=None``) or one
batch per seed (``x (S, B, ...)``, ``in_dims=0``, e.g. from :func:`seed_batches`). The choice is
explicit: ``per_seed_batches`` has no default.

Memory: a :class:`SeedFn` runs its seeds in chunks of ``chunk_size`` seeds (``None``: all at once)
and concatenates the chunks, so its result does not depend on the chunk. When a chunk runs out of
memory (``torch.OutOfMemoryError``, or a ``RuntimeError`` saying "can't allocate") the chunk is
halved with a ``RuntimeWarning`` and retried; the smaller chunk is kept for later calls.

Randomness is explicit: every seed has its own key (``rng``); its init, data order and scoring key
derive from it. Whole pipelines over stacked seeds are the application's round loop
(``pure-prune run --seeds S``, ``pure-prune sweep``), which calls these functions through
``pure_prune.algorithms.ops.RoundOps``; :func:`fit_seeds` is the plain training loop::

    params, state = init_seeds(init, keys)
    steps = make_seed_steps(model, losses.cross_entropy, optimizer)
    fit = fit_seeds(steps.train, params, state, init_opt_seeds(optimizer, params),
                    masks_like_seeds(params), lambda e: seed_batches((x, y), 64, keys, e), epochs)
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from einops import repeat
from torch import Tensor

from pure_prune import batching, mask, rng, select, stage, train, tree
from pure_prune.importance.registry import Criterion, ScoreInput
from pure_prune.importance.registry import get as get_criterion
from pure_prune.optim import Optimizer, OptState
from pure_prune.tree import stack, unstack

__all__ = [
    "SeedFitResult",
    "SeedFn",
    "SeedStep",
    "SeedSteps",
    "evaluate_seeds",
    "fit_seeds",
    "init_opt_seeds",
    "init_seeds",
    "make_seed_eval_step",
    "make_seed_step",
    "make_seed_steps",
    "masks_like_seeds",
    "num_seeds",
    "over_seeds",
    "run_chunked",
    "score_seeds",
    "seed_batches",
    "seed_slice",
    "seed_step_of",
    "select_seeds",
    "stack",
    "summarize",
    "unstack",
]

Batch = tuple[Tensor, ...]


# ------------------------------------------------------------------------------ stacked trees
def _check_keys(keys: Sequence[int]) -> list[int]:
    if isinstance(keys, (str, bytes)) or not isinstance(keys, Sequence) or len(keys) == 0:
        raise ValueError(f"keys must be a non-empty sequence of int keys (one per seed), got {keys!r}")
    return [rng.check_key(k, f"keys[{i}]") for i, k in enumerate(keys)]


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def num_seeds(stacked: tree.Tree, name: str = "tree") -> int:
    """The seed count ``S``: the leading size shared by every tensor leaf of ``stacked``.

    Raises ``ValueError`` naming the leaf path when a leaf is 0-d or has another leading size, or
    when the tree has no tensor leaf; ``TypeError`` for a leaf that is neither a tensor nor ``None``.
    """
    sizes = {x.shape[0] for x in tree.leaves(stacked) if isinstance(x, Tensor) and x.ndim > 0}
    if len(sizes) == 1 and all(x is None or (isinstance(x, Tensor) and x.ndim) for x in tree.leaves(stacked)):
        return sizes.pop()  # the common case, without building paths
    names, leaves, _ = tree.flatten_with_paths(stacked)
    first: tuple[str, int] | None = None
    for path, x in zip(names, leaves):
        if x is None:
            continue
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} leaf {path!r} is {type(x).__name__}, expected a tensor or None")
        if x.ndim == 0:
            raise ValueError(f"{name} leaf {path!r} is 0-d: a stacked leaf has a leading seed axis")
        if first is None:
            first = (path, x.shape[0])
        elif x.shape[0] != first[1]:
            raise ValueError(
                f"{name} leaf {path!r} has {x.shape[0]} seeds on axis 0, but {first[0]!r} has {first[1]}"
            )
    if first is None:
        raise ValueError(f"{name} has no tensor leaf, so no seed axis")
    return first[1]


def seed_slice(stacked: tree.Tree, i: int) -> tree.Tree:
    """Seed ``i`` of a stacked tree: every tensor leaf ``x`` becomes ``x[i]``; ``None`` stays.

    A tree without tensor leaves (``None``, the ``{}`` state of a model without buffers) is
    returned as it is.
    """
    if all(x is None for x in tree.leaves(stacked)):
        return stacked
    n = num_seeds(stacked)
    if isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n:
        raise ValueError(f"seed index must be an int in [-{n}, {n}), got {i!r}")
    return tree.map(lambda x: None if x is None else x[i], stacked)


def init_seeds(init: Callable[[int], tuple[Any, Any]], keys: Sequence[int]) -> tuple[Any, Any]:
    """``(params, state)`` of ``S = len(keys)`` seeds, stacked: seed ``i`` is exactly ``init(keys[i])``.

    ``init(key) -> (params, state)`` is a model's init with its config bound (e.g. the second value
    of ``experiment.setup``, or ``spec.init``). Leaves become ``(S, *shape)``; an empty state
    ``{}`` stays ``{}``.
    """
    if not callable(init):
        raise TypeError(f"init must be callable as init(key) -> (params, state), got {init!r}")
    pairs = [init(k) for k in _check_keys(keys)]
    for i, pair in enumerate(pairs):
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise TypeError(f"init(keys[{i}]) must return (params, state), got {type(pair).__name__}")
    return tree.stack([p for p, _ in pairs]), tree.stack([s for _, s in pairs])


def masks_like_seeds(
    params: tree.Tree, prunable: mask.Prunable = mask.default_prunable, *, exclude_paths: Iterable[str] = ()
) -> tree.Tree:
    """All-kept masks for stacked ``params``: ``(S, *shape)`` ``True`` where prunable, ``None`` elsewhere.

    Prunability is decided on one seed's leaves (``mask.ones_like`` of seed 0), so a bias
    ``(S, out)`` is not mistaken for a matrix.
    """
    n = num_seeds(params, "params")
    one = mask.ones_like(seed_slice(params, 0), prunable, exclude_paths=exclude_paths)
    return tree.map(lambda m: None if m is None else repeat(m, "... -> s ...", s=n).contiguous(), one)


def init_opt_seeds(optimizer: Optimizer, params: tree.Tree) -> OptState:
    """Stacked optimizer state: seed ``i`` is exactly ``optimizer.init(seed i's params)``."""
    if not callable(getattr(optimizer, "init", None)):
        raise TypeError(f"optimizer must be an optim.Optimizer, got {optimizer!r}")
    return tree.stack([optimizer.init(p) for p in tree.unstack(params, num_seeds(params, "params"))])


def seed_batches(
    data: tuple[Tensor, Tensor], batch_size: int, keys: Sequence[int], epoch: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """Per-seed shuffled batches of one epoch, stacked: ``(x (S, B, ...), y (S, B))``.

    ``data``: ``(x (N, ...), y (N,))`` (a data set's training split: ``(ds.x_train, ds.y_train)``).
    Seed ``i``'s batches are exactly ``batching.batches(x, y, batch_size,
    key=batching.epoch_key(keys[i], epoch))`` (full batches only), i.e.
    ``Experiment.train_batches(keys[i])(epoch)``: the order is
    ``randperm(N, generator=rng.generator(epoch_key(keys[i], epoch)))``.
    """
    if not (isinstance(data, tuple) and len(data) == 2):
        raise TypeError(f"data must be a pair (x, y) of tensors, got {type(data).__name__}")
    x, y = data
    keys = _check_keys(keys)
    batching.batches(x, y, batch_size, key=None)  # checks x, y and batch_size eagerly
    batching.epoch_key(keys[0], epoch)  # checks epoch
    n = len(x)
    count = batching.num_batches(n, batch_size)
    orders = torch.stack(
        [torch.randperm(n, generator=rng.generator(batching.epoch_key(k, epoch))) for k in keys]
    )

    def gen() -> Iterator[tuple[Tensor, Tensor]]:
        for i in range(count):
            idx = orders[:, i * batch_size : (i + 1) * batch_size]
            yield x[idx], y[idx]

    return gen()


# ---------------------------------------------------------------------------------- chunking
def _is_oom(err: BaseException) -> bool:
    """An out-of-memory error: CUDA's ``OutOfMemoryError`` or the CPU allocator's "can't allocate"."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("can't allocate" in text or "out of memory" in text)


def _seed_count(args: Sequence[Any], seeded: Sequence[bool]) -> int:
    counts = [
        (i, num_seeds(a, f"args[{i}]"))
        for i, (a, s) in enumerate(zip(args, seeded))
        if s and any(x is not None for x in tree.leaves(a))  # None, {} (no buffers) carry no seed axis
    ]
    if not counts:
        raise ValueError("no seeded argument holds a tensor: nothing to map over seeds")
    for i, c in counts[1:]:
        if c != counts[0][1]:
            raise ValueError(f"args[{i}] has {c} seeds but args[{counts[0][0]}] has {counts[0][1]}")
    return counts[0][1]


def _check_chunk(chunk_size: int | None) -> int | None:
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    return chunk_size


def run_chunked(
    fn: Callable[..., Any], args: Sequence[Any], seeded: Sequence[bool], chunk_size: int | None
) -> tuple[Any, int]:
    """``fn(*args)`` over stacked seeds, ``chunk_size`` seeds at a time, chunks concatenated.

    ``seeded[i]`` says whether ``args[i]`` is stacked (its tensor leaves are sliced ``[a:b]`` on
    axis 0) or shared (passed whole to every chunk). ``fn`` returns a tree whose tensor leaves
    all have the chunk's seed axis first. On an out-of-memory error the chunk is halved (down to 1)
    with a ``RuntimeWarning`` and the failed chunk retried; other errors propagate.

    Returns ``(output tree with S on axis 0, the chunk size in use at the end)``.
    """
    if len(args) != len(seeded):
        raise ValueError(f"seeded has {len(seeded)} entries for {len(args)} args")
    return _chunks(fn, args, seeded, _seed_count(args, seeded), _check_chunk(chunk_size))


def _chunks(fn: Callable[..., Any], args: Sequence[Any], seeded: Sequence[bool], n: int, chunk: int | None):
    """:func:`run_chunked` for ``n`` seeds, the arguments already checked."""
    size = n if chunk is None else min(chunk, n)
    outs: list[Any] = []
    start = 0
    while start < n:
        stop = min(start + size, n)
        part = args
        if stop - start < n:  # a real chunk: slice the seeded arguments
            part = [
                tree.map(lambda x, a=start, b=stop: None if x is None else x[a:b], arg) if s else arg
                for arg, s in zip(args, seeded)
            ]
        try:
            outs.append(fn(*part))
        except RuntimeError as err:
            if not _is_oom(err) or stop - start == 1:
                raise
            size = max(1, (stop - start) // 2)
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            warnings.warn(
                f"seeds {start}..{stop - 1}: out of memory with a chunk of {stop - start} seeds "
                f"({first_line}); retrying with chunks of {size}",
                RuntimeWarning,
                stacklevel=3,
            )
            continue
        start = stop
    if len(outs) == 1:
        return outs[0], size
    return tree.map(lambda *xs: None if xs[0] is None else torch.cat(xs), *outs), size


class SeedFn:
    """A single-seed function mapped over stacked seeds, run in chunks (see :func:`over_seeds`).

    Call it with the single-seed function's arguments, stacked where ``seeded`` says so. Attributes:
    ``seeded`` (which arguments carry a seed axis) and ``chunk_size`` (the chunk in use: ``None``
    means all seeds at once until a chunk runs out of memory; it only shrinks). The chunk is the
    object's only mutable attribute, and it never changes a result.
    """

    def __init__(self, fn: Callable[..., Any], seeded: Sequence[bool], chunk_size: int | None) -> None:
        self._fn = fn
        self.seeded = tuple(_check_bool(f"seeded[{i}]", s) for i, s in enumerate(seeded))
        self.chunk_size = _check_chunk(chunk_size)

    def __call__(self, *args: Any) -> Any:
        if len(args) != len(self.seeded):
            raise TypeError(f"expected {len(self.seeded)} arguments, got {len(args)}")
        return self._run(args, _seed_count(args, self.seeded))

    def _run(self, args: Sequence[Any], n: int) -> Any:
        out, used = _chunks(self._fn, args, self.seeded, n, self.chunk_size)
        if used < n:
            self.chunk_size = used
        return out

    def __repr__(self) -> str:
        return f"SeedFn(seeded={self.seeded}, chunk_size={self.chunk_size})"


def _dims(t: tree.Tree) -> tree.Tree:
    """``in_dims`` for a stacked tree: 0 at tensor leaves, ``None`` at ``None`` leaves (or ``None``)."""
    return tree.map(lambda x: None if x is None else 0, t)


def _vmapped(fn: Callable[..., Any], seeded: Sequence[bool]) -> Callable[..., Any]:
    """``vmap(fn)`` over the seeded arguments; ``None`` leaves in and out are passed through."""

    def mapped(*args: Any) -> Any:
        found: list[tuple[Any, list[bool]]] = []

        def flat_fn(*a: Any) -> list[Tensor]:
            leaves, spec = tree.flatten(fn(*a))
            found.append((spec, [x is None for x in leaves]))
            return [x for x in leaves if x is not None]

        in_dims = tuple(_dims(a) if s else None for a, s in zip(args, seeded))
        tensors = torch.func.vmap(flat_fn, in_dims=in_dims)(*args)
        spec, is_none = found[0]
        it = iter(tensors)
        return tree.unflatten(spec, [None if n else next(it) for n in is_none])

    return mapped


def over_seeds(
    fn: Callable[..., Any],
    seeded: Sequence[bool],
    *,
    compile: bool = False,  # noqa: A002 - the switch's natural name
    chunk_size: int | None = None,
    backend: str | Callable = "inductor",
) -> SeedFn:
    """Map a pure single-seed ``fn`` over stacked seeds with ``torch.func.vmap``.

    ``seeded[i]``: whether argument ``i`` is stacked (vmapped on axis 0; its ``None`` leaves get
    ``in_dims=None``) or shared by all seeds (``in_dims=None``). ``fn``'s output tree may hold
    ``None`` leaves (they stay ``None``); its tensor leaves come back with the seed axis first.
    ``compile=True`` wraps the vmapped function in ``torch.compile(fullgraph=True, dynamic=False)``
    (one compile per chunk size). ``fn`` must not read tensor values in Python (no ``bool(x)``).
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {fn!r}")
    mapped = _vmapped(fn, seeded)
    if _check_bool("compile", compile):
        mapped = stage.compile_fresh(mapped, fullgraph=True, dynamic=False, backend=backend)
    return SeedFn(mapped, seeded, chunk_size)


# ------------------------------------------------------------------------------------ steps
def _check_stacked(params: Any, state: Any, masks: Any, others: Mapping[str, Any]) -> int:
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


def _check_batch(batch: Any, per_seed: bool, n: int) -> None:
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
    ) -> None:
        super().__init__(fn, seeded, chunk_size)
        self._has_opt_state = opt_state  # train steps: (params, state, opt_state, masks, batch)
        self._bytes_masks = _check_bool("bytes_masks", bytes_masks)

    @property
    def per_seed_batches(self) -> bool:
        """Whether the batch carries a seed axis (``x (S, B, ...)``) or is shared (``x (B, ...)``)."""
        return self.seeded[-1]

    def __call__(self, *args: Any) -> Any:
        if len(args) != len(self.seeded):
            raise TypeError(f"expected {len(self.seeded)} arguments, got {len(args)}")
        params, state, *rest = args
        others = {"opt_state": rest[0]} if self._has_opt_state else {}
        n = _check_stacked(params, state, rest[-2], others)
        _check_batch(args[-1], self.per_seed_batches, n)
        if self._bytes_masks and rest[-2] is not None:
            args = (*args[:-2], mask.as_bytes(rest[-2]), args[-1])
        return self._run(args, n)


def make_seed_step(
    model: Any,
    loss: Callable[..., Tensor],
    optimizer: Optimizer,
    *,
    per_seed_batches: bool,
    compile: bool = True,  # noqa: A002 - the switch's natural name
    chunk_size: int | None = None,
    backend: str | Callable = "inductor",
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
    compiled = _check_bool("compile", compile)
    return seed_step_of(
        single,
        per_seed_batches=per_seed_batches,
        compile=compiled,
        chunk_size=chunk_size,
        backend=backend,
        bytes_masks=compiled,  # make_step's body reads uint8 masks; compiled, they are faster
    )


def seed_step_of(
    step: train.Step,
    *,
    per_seed_batches: bool,
    compile: bool = True,  # noqa: A002 - the switch's natural name
    chunk_size: int | None = None,
    backend: str | Callable = "inductor",
    bytes_masks: bool = False,
) -> SeedStep:
    """Any single-seed train step mapped over stacked seeds (vmapped, compiled once per chunk size).

    ``step(params, state, opt_state, masks, batch) -> (params, state, opt_state, metrics)`` is a
    pure single-seed step with ``train.make_step``'s signature, built *uncompiled* (e.g.
    ``algorithms.dst.make_ste_step(..., compile=False)``, or a step over ``rsst.penalized``'s
    optimizer); its metrics must be 0-d tensors. The result behaves as :func:`make_seed_step`'s:
    every tree stacked over ``S`` seeds, ``per_seed_batches`` as there, metrics ``(S,)``.
    ``bytes_masks=True`` passes the (checked) bool masks to ``step`` as their uint8 views, for a
    step that reads either (see :class:`SeedStep`).
    """
    if not callable(step):
        raise TypeError(f"step must be a train step function, got {step!r}")
    per_seed = _check_bool("per_seed_batches", per_seed_batches)
    batch_dim = 0 if per_seed else None

    def seeds_step(params: Any, state: Any, opt_state: OptState, masks: Any, batch: Batch):
        mapped = torch.func.vmap(step, in_dims=(0, 0, 0, _dims(masks), batch_dim))
        return mapped(params, state, opt_state, masks, batch)

    run = seeds_step
    if _check_bool("compile", compile):
        run = stage.compile_fresh(seeds_step, fullgraph=True, dynamic=False, backend=backend)
    return SeedStep(
        run, (True, True, True, True, per_seed), chunk_size, opt_state=True, bytes_masks=bytes_masks
    )


def make_seed_eval_step(
    model: Any,
    loss: Callable[..., Tensor],
    *,
    per_seed_batches: bool,
    compile: bool = True,  # noqa: A002 - the switch's natural name
    chunk_size: int | None = None,
    backend: str | Callable = "inductor",
) -> SeedStep:
    """``train.make_eval_step`` for stacked seeds.

    ``eval_step(params, state, masks, batch) -> {"correct": (S,) int64, "count": (S,) int64,
    "loss_sum": (S,) float32}``; the batch is shared (``per_seed_batches=False``, the usual test
    split) or per seed, as in :func:`make_seed_step`. See :func:`evaluate_seeds`.
    """
    per_seed = _check_bool("per_seed_batches", per_seed_batches)
    single = train.make_eval_step(model, loss, compile=False)
    batch_dim = 0 if per_seed else None

    def seeds_eval(params: Any, state: Any, masks: Any, batch: Batch) -> dict[str, Tensor]:
        mapped = torch.func.vmap(single, in_dims=(0, 0, _dims(masks), batch_dim))
        return mapped(params, state, masks, batch)

    run = seeds_eval
    compiled = _check_bool("compile", compile)
    if compiled:
        run = stage.compile_fresh(seeds_eval, fullgraph=True, dynamic=False, backend=backend)
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
    """
    if not isinstance(step, SeedStep) or len(step.seeded) != 5:
        raise TypeError(f"step must come from make_seed_step, got {step!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
    n = num_seeds(params, "params")
    history: list[dict[str, list[float]]] = []
    for epoch in range(epochs):
        sums: dict[str, Tensor] = {}
        count = 0
        for batch in batches_fn(epoch):
            params, state, opt_state, metrics = step(params, state, opt_state, masks, batch)
            per = batch[1].numel() // n if step.per_seed_batches else batch[1].numel()
            sums = {k: sums.get(k, 0.0) + v * per for k, v in metrics.items()}
            count += per
        if count == 0:
            raise ValueError(f"fit_seeds: batches_fn({epoch}) yielded no batches")
        history.append({k: (v.to(torch.float64) / count).tolist() for k, v in sorted(sums.items())})
    return SeedFitResult(params, state, opt_state, history)


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


# ------------------------------------------------------------------------- scoring and selection
class _NeedsKey(Exception):
    """A criterion read ``ScoreInput.key`` under vmap: its random draws would be shared by all seeds."""


class _VmapInput(ScoreInput):
    """The :class:`ScoreInput` a criterion sees under vmap; reading ``key`` raises :class:`_NeedsKey`."""

    __slots__ = ()

    @property
    def key(self) -> int:  # type: ignore[override]
        raise _NeedsKey


def _score_loop(crit: Criterion, apply: Any, args: tuple, keys: list[int], groups, options, per_seed: bool):
    """The criterion on each seed in turn (seed ``i`` with ``keys[i]``), results stacked."""
    params, state, masks, batches = args
    out = []
    for i, k in enumerate(keys):
        b = tuple(tuple(t[i] for t in batch) for batch in batches) if per_seed else batches
        inp = ScoreInput(
            apply, seed_slice(params, i), seed_slice(state, i), seed_slice(masks, i), b, k, groups
        )
        out.append(crit(inp, **options))
    return tree.stack(out)


def score_seeds(
    criterion: str | Criterion,
    model: Any,
    params: Any,
    state: Any,
    masks: Any,
    *,
    keys: Sequence[int],
    batches: Sequence[Batch] = (),
    per_seed_batches: bool = False,
    groups: Sequence[Any] | None = None,
    options: Mapping[str, Any] | None = None,
    vmap: bool | None = None,
) -> Any:
    """Importance scores of every seed by a registered criterion: stacked scores.

    ``criterion``: a name of ``importance.registry`` or a :class:`Criterion`. ``model``: a
    ModelSpec (``.apply``, ``.groups``) or an apply function. ``keys``: one scoring key per seed.
    ``batches``: ``(x, y)`` batches for data-driven criteria, per seed (``x (S, B, ...)``) or
    shared. ``groups``: channel groups for unit criteria (default: ``model.groups`` of seed 0).

    ``vmap=None`` (auto): the criterion runs once under ``torch.func.vmap`` over the seeds, except
    (a) a criterion that reads ``ScoreInput.key`` (it draws random numbers, which vmap would share
    between seeds) and (b) one that vmap cannot trace (e.g. Python control flow on tensor values:
    a ``RuntimeWarning`` names the error): those run in a Python loop over seeds, seed ``i`` with
    ``keys[i]``. ``vmap=True`` refuses (a) with ``ValueError``; ``vmap=False`` always loops.
    Both ways give the same scores. Returns element scores ``(S, *shape)`` shaped like ``masks``
    (``None`` where it is ``None``), or unit scores ``{group: (S, size)}``.
    """
    crit = get_criterion(criterion) if isinstance(criterion, str) else criterion
    if not isinstance(crit, Criterion):
        raise TypeError(f"criterion must be a registered name or a Criterion, got {criterion!r}")
    apply = getattr(model, "apply", model)
    if not callable(apply):
        raise TypeError(f"model must be a ModelSpec or an apply function, got {model!r}")
    keys = _check_keys(keys)
    n = _check_stacked(params, state, masks, {})
    if len(keys) != n:
        raise ValueError(f"got {len(keys)} keys for {n} seeds")
    per_seed = _check_bool("per_seed_batches", per_seed_batches)
    batches = tuple(tuple(b) for b in batches)
    for b in batches:
        _check_batch(b, per_seed, n)
    if groups is None:
        groups = tuple(model.groups(seed_slice(params, 0))) if hasattr(model, "groups") else ()
    opts = dict(options or {})
    if vmap not in (None, True, False):
        raise TypeError(f"vmap must be None (auto), True or False, got {vmap!r}")
    args = (params, state, masks, batches)
    if vmap is False:
        return _score_loop(crit, apply, args, keys, groups, opts, per_seed)

    def one(p: Any, s: Any, m: Any, b: tuple) -> Any:
        return crit(_VmapInput(apply, p, s, m, b, 0, groups), **opts)

    try:
        return _vmapped(one, (True, True, True, per_seed))(*args)
    except _NeedsKey:
        if vmap:
            raise ValueError(
                f"criterion {crit.name!r} reads the random key, so its draws would be shared by all "
                "seeds under vmap; use vmap=False or None"
            ) from None
    except RuntimeError as err:
        if vmap:
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        warnings.warn(
            f"criterion {crit.name!r} cannot run under vmap ({first}); scoring the seeds in a loop",
            RuntimeWarning,
            stacklevel=2,
        )
    return _score_loop(crit, apply, args, keys, groups, opts, per_seed)


def _check_finite_scores(scores: Any) -> None:
    """Raise naming the leaf, the seed and the index of the first non-finite stacked score."""
    names, leaves, _ = tree.flatten_with_paths(scores)
    for path, x in zip(names, leaves):
        if x is None:
            continue
        if not isinstance(x, Tensor) or not x.is_floating_point():
            what = x.dtype if isinstance(x, Tensor) else type(x).__name__
            raise TypeError(f"score {path!r} must be a floating-point tensor or None, got {what}")
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            idx = tuple(int(i) for i in torch.nonzero(bad)[0])
            raise ValueError(
                f"score {path!r} of seed {idx[0]} is not finite at index {idx[1:]}: {x[idx].item()}"
            )


def select_seeds(
    scores: Any,
    sparsity: float | Mapping[str, float],
    *,
    scope: str = "global",
    masks: Any = None,
) -> Any:
    """Per-seed ``select.unstructured`` under vmap: stacked masks, exactly ``round(s·N)`` pruned per seed.

    ``scores``: stacked ``(S, *shape)`` (``None`` = dense leaf); ``masks``: stacked current masks
    (already-pruned entries stay pruned) or ``None``. ``scope="global"`` ranks each seed's entries
    by one global ranking, ``"layer"`` per leaf (``sparsity`` may then map paths to fractions).
    Seed ``i`` of the result equals ``select.unstructured(seed i's scores, ...)`` exactly (same
    threshold, same tie-break). Non-finite scores raise ``ValueError`` naming path, seed and index.
    """
    n = num_seeds(scores, "scores")
    _check_finite_scores(scores)
    if masks is not None:
        tree.assert_same_structure(scores, masks, ("scores", "masks"))
        if num_seeds(masks, "masks") != n:
            raise ValueError(f"masks have {num_seeds(masks, 'masks')} seeds but scores have {n}")

    def one(s: Any, m: Any) -> Any:
        return select.unstructured(s, sparsity, scope=scope, masks=m)

    return _vmapped(one, (True, True))(scores, masks)


# ----------------------------------------------------------------------------------- summaries
def summarize(values: Sequence[float] | Tensor) -> dict[str, float | int]:
    """``{"mean", "std", "n"}`` of per-seed values; ``std`` is the sample standard deviation
    ``sqrt(Σ(v - mean)² / (n - 1))`` (0.0 when ``n == 1``).

    ``values``: a sequence of real numbers or a 1-D tensor. Raises ``ValueError`` when empty or
    not finite, naming the index.
    """
    if isinstance(values, Tensor):
        if values.ndim != 1:
            raise ValueError(f"summarize: values must be 1-D (one per seed), got shape {tuple(values.shape)}")
        values = values.tolist()
    vals = list(values)
    if not vals:
        raise ValueError("summarize: no values")
    for i, v in enumerate(vals):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ValueError(f"summarize: values[{i}] = {v!r} is not a finite real number")
    n = len(vals)
    mean = math.fsum(vals) / n
    var = math.fsum((v - mean) ** 2 for v in vals) / (n - 1) if n > 1 else 0.0
    return {"mean": mean, "std": math.sqrt(var), "n": n}
