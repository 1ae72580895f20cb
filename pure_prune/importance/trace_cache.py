"""A bounded memo of traces (and other shape-fixed facts) per model function.

The fast path of the scores traces ``model_fn`` (``make_fx``, tens of milliseconds, about a second
on the first call of a process) and ``hessian_diag(method="auto")`` checks once where the GGN is
exact. Both depend only on the function and the shapes it is called with, so they are memoised here,
keyed by the function object (held weakly: a memo goes when its function is garbage-collected) and a
hashable key (leaf paths, shapes, dtypes, devices, ...). The memo is bounded: at most ``per_fn``
keys per function and ``max_fns`` functions, least recently used evicted first.

This is the one piece of process state of :mod:`pure_prune.importance`. It is transparent (a hit
returns what a miss would compute) provided ``model_fn`` is pure: one function object computes one
function. A function that reads mutable globals or closes over values that change between calls
must not count on it; pass ``fast=False`` or a fresh function then.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

__all__ = ["TraceCache", "TRACES"]

T = TypeVar("T")


class TraceCache:
    """``get(fn, key, build)``: ``build()`` memoised per ``(fn, key)``, bounded (module docstring)."""

    def __init__(self, max_fns: int = 32, per_fn: int = 8) -> None:
        if max_fns < 1 or per_fn < 1:
            raise ValueError(f"TraceCache: max_fns and per_fn must be >= 1, got {max_fns}, {per_fn}")
        self.max_fns = max_fns
        self.per_fn = per_fn
        self._by_fn: OrderedDict[int, tuple[weakref.ref, OrderedDict[Hashable, Any]]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def _entries(self, fn: Callable) -> OrderedDict[Hashable, Any] | None:
        """The memo of ``fn`` (created on demand), or ``None`` when ``fn`` cannot be weakly referenced."""
        ident = id(fn)
        slot = self._by_fn.get(ident)
        if slot is not None and slot[0]() is fn:
            self._by_fn.move_to_end(ident)
            return slot[1]
        try:
            ref = weakref.ref(fn, lambda r: self._drop(ident, r))
        except TypeError:
            return None
        entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._by_fn[ident] = (ref, entries)
        while len(self._by_fn) > self.max_fns:
            self._by_fn.popitem(last=False)
        return entries

    def _drop(self, ident: int, ref: weakref.ref) -> None:
        slot = self._by_fn.get(ident)
        if slot is not None and slot[0] is ref:
            del self._by_fn[ident]

    def get(self, fn: Callable, key: Hashable, build: Callable[[], T]) -> T:
        """The value memoised for ``(fn, key)``, built by ``build()`` on a miss."""
        entries = self._entries(fn)
        if entries is None:
            self.misses += 1
            return build()
        if key in entries:
            entries.move_to_end(key)
            self.hits += 1
            return entries[key]
        self.misses += 1
        value = build()
        entries[key] = value
        while len(entries) > self.per_fn:
            entries.popitem(last=False)
        return value

    def clear(self) -> None:
        """Forget every memo (and reset the hit/miss counters)."""
        self._by_fn.clear()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return sum(len(entries) for _, entries in self._by_fn.values())


TRACES = TraceCache()
"""The memo the scores use for their ``fast=True`` traces and ``ggn_is_exact`` verdicts."""
