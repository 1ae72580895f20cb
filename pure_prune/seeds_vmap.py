"""A single-seed function mapped over stacked seeds: ``torch.func.vmap``, run in chunks of seeds.

:func:`over_seeds` maps a pure single-seed ``fn`` over the seed axis of its stacked arguments
(``None`` leaves pass through unbatched) and returns a :class:`SeedFn`, which runs the seeds in
chunks of ``chunk_size`` (``None``: all at once) and concatenates the chunks, so its result does not
depend on the chunk. When a chunk runs out of memory (``torch.OutOfMemoryError``, or a
``RuntimeError`` saying "can't allocate") the chunk is halved with a ``RuntimeWarning`` and retried;
the smaller chunk is kept for later calls. :func:`run_chunked` is that loop as a function;
:func:`vmap_seeded` and :func:`stacked_in_dims` are the vmap wrapper and its ``in_dims``, shared
with :mod:`pure_prune.seeds_steps` and :mod:`pure_prune.seeds_scores`. Re-exported by
:mod:`pure_prune.seeds`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from pure_prune import stage, tree
from pure_prune.seeds_stack import check_bool, num_seeds

__all__ = ["SeedFn", "is_oom", "over_seeds", "run_chunked", "stacked_in_dims", "vmap_seeded"]


def is_oom(err: BaseException) -> bool:
    """Whether ``err`` is an out-of-memory error: CUDA's ``OutOfMemoryError`` or the CPU allocator's
    "can't allocate"."""
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


def _chunks(
    fn: Callable[..., Any],
    args: Sequence[Any],
    seeded: Sequence[bool],
    n: int,
    chunk: int | None,
    retry: bool = True,
):
    """:func:`run_chunked` for ``n`` seeds, the arguments already checked; ``retry=False``: an
    out-of-memory error propagates (a chunk that writes into its arguments cannot be run twice)."""
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
            if not retry or not is_oom(err) or stop - start == 1:
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
        self.seeded = tuple(check_bool(f"seeded[{i}]", s) for i, s in enumerate(seeded))
        self.chunk_size = _check_chunk(chunk_size)

    def __call__(self, *args: Any) -> Any:
        if len(args) != len(self.seeded):
            raise TypeError(f"expected {len(self.seeded)} arguments, got {len(args)}")
        return self._run(args, _seed_count(args, self.seeded))

    def _run(self, args: Sequence[Any], n: int, fn: Callable[..., Any] | None = None) -> Any:
        """``fn`` (default: the mapped function) over the chunks; a function other than the
        mapped one (an in-place variant) is not retried on an out-of-memory error."""
        retry = fn is None
        out, used = _chunks(self._fn if fn is None else fn, args, self.seeded, n, self.chunk_size, retry)
        if used < n:
            self.chunk_size = used
        return out

    def __repr__(self) -> str:
        return f"SeedFn(seeded={self.seeded}, chunk_size={self.chunk_size})"


def stacked_in_dims(t: tree.Tree) -> tree.Tree:
    """``in_dims`` for a stacked tree: 0 at tensor leaves, ``None`` at ``None`` leaves (or ``None``)."""
    return tree.map(lambda x: None if x is None else 0, t)


def vmap_seeded(fn: Callable[..., Any], seeded: Sequence[bool]) -> Callable[..., Any]:
    """``vmap(fn)`` over the seeded arguments; ``None`` leaves in and out are passed through."""

    def mapped(*args: Any) -> Any:
        found: list[tuple[Any, list[bool]]] = []

        def flat_fn(*a: Any) -> list[Tensor]:
            leaves, spec = tree.flatten(fn(*a))
            found.append((spec, [x is None for x in leaves]))
            return [x for x in leaves if x is not None]

        in_dims = tuple(stacked_in_dims(a) if s else None for a, s in zip(args, seeded))
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
    mapped = vmap_seeded(fn, seeded)
    if check_bool("compile", compile):
        mapped = stage.compile_fresh(mapped, fullgraph=True, dynamic=False, backend=backend)
    return SeedFn(mapped, seeded, chunk_size)
