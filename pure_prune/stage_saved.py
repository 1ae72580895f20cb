"""Compiled steps saved to disk: :class:`Saved` compiles a pure function once per stage signature
(:func:`pure_prune.stage.signature`) with ``torch.compile(fullgraph=True).aot_compile`` and writes the
result to a directory the caller names; a later process with the same function loads the file
instead of running dynamo and inductor again (``torch.compiler.load_compiled_function``).

A file is keyed by the signature of the arguments (tree structure, shapes, dtypes, devices), the
function pickled by value as ``aot_compile`` saves it (its code and closures: for a train step the
model's apply, the loss, the optimizer's hyperparameters), the torch version and a caller's ``key``;
it is used only while the source lines that dynamo inlined are unchanged. What it gains, measured
by ``bench/compile_latency.py`` (digits MLP, 3-round IMP run, 1 thread): see that file's results.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
from collections.abc import Callable
from typing import Any

import torch

from pure_prune import stage

__all__ = ["Saved", "compile_step"]


def _fingerprint(fn: Callable) -> str | None:
    """sha256 of ``fn`` pickled as ``aot_compile`` saves it (nested functions and their closures by
    value, module-level functions by name); ``None`` if it cannot be pickled."""
    from torch._dynamo.aot_compile import AOTCompilePickler

    buf = io.BytesIO()
    pickler = AOTCompilePickler({}, buf)
    try:
        pickler.dump(fn)
    except Exception:  # noqa: BLE001 - an unpicklable closure is only not cached
        return None
    return None if pickler.errors else hashlib.sha256(buf.getvalue()).hexdigest()


def _serializable(entries: list[Any]) -> list[bool]:
    """``aot_compile``'s default guard filter: no guards on globals nor on object identity."""
    bad = set(torch._dynamo.guards.CheckFunctionManager.UNSUPPORTED_SERIALIZATION_GUARD_TYPES)
    return [
        not (g.is_global or g.guard_type in bad or bad & set(g.derived_guard_types or ())) for g in entries
    ]


class Saved:
    """``fn`` compiled by inductor once per stage signature and saved, so that a second process
    loads it instead of tracing (dynamo) and compiling (inductor) again.

    One static graph per signature (``dynamic=False``). The first call of a signature looks for
    ``<cache_dir>/<digest>.aot``; the digest covers the
    signature, ``fn`` pickled by value (its code and closures: the model's apply, the loss, the
    optimizer's hyperparameters), the torch version and ``key``. A file is used only if the source
    lines dynamo inlined are unchanged; otherwise, or when none is there, ``fn`` is compiled with
    ``torch.compile(fullgraph=True).aot_compile`` and written to ``cache_dir`` (created if needed).
    ``fn`` that cannot be pickled, or arguments the saved guards reject, fall back to
    :func:`pure_prune.stage.compile_fresh` (not saved). The results are those of ``torch.compile(fn)``, bit for bit.
    ``backend``: ``"inductor"`` or a callable that returns inductor's compiled code (e.g. a wrapper
    that counts and times the compiles, as the application's ``compile_counter``); it runs only for
    the signatures compiled here, not for those loaded. A compile whose result cannot be saved
    (a backend that is not inductor underneath) is used as it is and counted ``fresh``.
    ``bench/compile_latency.py``: the digits-MLP train step's first call takes 2.7 s loaded, 4.2 s
    traced with inductor's warm on-disk cache (both with ~2.5 s of torch imports and CPU checks). ``stats()`` counts ``{"loaded", "saved", "fresh"}``.
    """

    def __init__(
        self,
        fn: Callable,
        cache_dir: str | os.PathLike,
        *,
        form: str = "masked",
        key: str = "",
        backend: str | Callable = "inductor",
    ):
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        if backend != "inductor" and not callable(backend):
            raise ValueError(f"backend must be 'inductor' or a callable wrapping it, got {backend!r}")
        stage.signature(form)  # checks the form tag
        self._fn, self._dir, self._form, self._backend = fn, os.fspath(cache_dir), form, backend
        self._print = _fingerprint(fn)
        self._key = f"{torch.__version__}|{key}|{self._print}"
        self._runs: dict[str, Callable] = {}
        self._stats = {"loaded": 0, "saved": 0, "fresh": 0}
        self._last: Callable | None = None  # the saved/loaded function the last call ran

    def __call__(self, *args: Any) -> Any:
        last = self._last
        if last is not None:  # its guards check these arguments (raising before it runs), so the
            try:  # signature (~65 µs a call for the digits MLP's train step) is computed only on a miss
                return last(*args)
            except RuntimeError as err:
                if not _guard_miss(err):
                    raise
        key = stage.signature(self._form, *args)
        run = self._runs.get(key)
        if run is None:
            run = self._runs[key] = self._build(key, args)
        try:
            out = run(*args)
        except RuntimeError as err:  # a saved guard this call fails: trace it as torch.compile would
            if not _guard_miss(err):
                raise
            self._stats["fresh"] += 1
            run = self._runs[key] = self._fresh()
            return run(*args)
        # only saved/loaded functions raise on a guard miss; a fresh torch.compile would recompile
        self._last = run if _is_saved_kind(run) else None
        return out

    def _build(self, key: str, args: tuple) -> Callable:
        if self._print is None:
            self._stats["fresh"] += 1
            return self._fresh()
        text = self._key + "|" + key
        path = os.path.join(self._dir, hashlib.sha256(text.encode()).hexdigest()[:32] + ".aot")
        if os.path.exists(path):
            try:
                run = _load(path)
                self._stats["loaded"] += 1
                return run
            except Exception:  # noqa: BLE001 - stale sources, another torch, a torn file: compile again
                pass
        options = {"guard_filter_fn": _serializable}
        try:
            compiled = stage.compile_fresh(
                self._fn, fullgraph=True, backend=self._backend, dynamic=False, options=options
            )
            run = compiled.aot_compile((args, {}))
        except torch._dynamo.exc.TensorifyScalarRestartAnalysis:  # a restart aot_compile cannot take
            self._stats["fresh"] += 1
            return self._fresh()
        os.makedirs(self._dir, exist_ok=True)
        try:
            run.save_compiled_function(path)  # written to a temporary file, then renamed
        except Exception:  # noqa: BLE001 - a backend whose code cannot be saved: use it unsaved
            self._stats["fresh"] += 1
            return run
        self._stats["saved"] += 1
        return run

    def _fresh(self) -> Callable:
        """``fn`` compiled as ``torch.compile(fn, fullgraph=True, backend=...)`` would, not saved."""
        return stage.compile_fresh(self._fn, fullgraph=True, backend=self._backend, dynamic=False)

    def stats(self) -> dict[str, int]:
        """``{"loaded": files loaded, "saved": files written, "fresh": compiles not saved}``."""
        return dict(self._stats)


def compile_step(
    fn: Callable,
    *,
    backend: str | Callable,
    cache_dir: str | os.PathLike | None,
    form: str,
    **compile_kwargs: Any,
) -> Callable:
    """``fn`` compiled with ``fullgraph=True`` (:func:`pure_prune.stage.compile_fresh`, ``compile_kwargs``
    passed on), or, given ``cache_dir``, a :class:`Saved` that saves it there and loads it in later
    processes (``form`` tags its signature; ``backend`` ``"inductor"`` or a callable wrapping it).
    ``ValueError`` for a ``cache_dir`` with another backend name (only inductor's code is saved)."""
    if cache_dir is None:
        return stage.compile_fresh(fn, fullgraph=True, backend=backend, **compile_kwargs)
    if backend != "inductor" and not callable(backend):
        raise ValueError(f"cache_dir saves inductor's code: backend must be 'inductor', got {backend!r}")
    return Saved(fn, cache_dir, form=form, backend=backend)


def _guard_miss(err: RuntimeError) -> bool:
    """Whether ``err`` is a saved function's guards refusing the arguments (raised before it runs)."""
    return str(err).startswith("GuardManager check failed")


def _is_saved_kind(run: Callable) -> bool:
    """Whether ``run`` is an ``aot_compile`` result (saved or loaded), which raises on a guard miss."""
    from torch._dynamo.aot_compile import AOTCompiledFunction  # imported already by then

    return isinstance(run, AOTCompiledFunction)


def _load(path: str) -> Callable:
    """A saved ``aot_compile`` result; ``RuntimeError`` if a source line it inlined has changed."""
    from torch._dynamo.package import _hash_sourcelines

    with open(path, "rb") as fh, torch._guards.tracing(torch._guards.TracingContext(None)):
        run = torch.compiler.load_compiled_function(fh)  # (its guards' sources need a context)
    for src in run.source_info().inlined_sources:
        module = importlib.import_module(src.module)
        if _hash_sourcelines(module, src.firstlineno, src.lastlineno) != src.checksum:
            raise RuntimeError(f"{path}: {src.module} changed since it was saved")
    return run
