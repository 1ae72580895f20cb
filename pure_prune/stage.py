"""Compile once per sparsity stage: one ``torch.compile``'d callable per *form* of the computation.

A **stage signature** is what the compiled graph depends on: the tree structure of the arguments,
every tensor leaf's shape, dtype, layout and device, the values of non-tensor leaves (Python
numbers, strings, ``None``), and a user ``form`` tag (``"masked"``, ``"compact"``, ``"csr"``, ...).
Tensor *values* are not part of it: masks, learning rates (``optim.set_lr``), optimizer state and
data are graph inputs, so changing them never recompiles. :class:`Compiled` keeps one compiled
callable per signature and counts, per stage, the compiles torch actually did and their seconds,
read from dynamo's own metrics (``torch._dynamo.utils.compilation_time_metrics``, the
``_compile.compile_inner`` entries: one per compiled frame, tracing and backend together)::

    step = Compiled(train.make_step(spec, loss, opt, compile=False))       # form "masked"
    for round_ in range(20):                                               # mask-only IMP
        masks = prune(...)                                                 # new values, same shapes
        params, state, opt_state, _ = step(params, state, opt_state, masks, batch)   # no recompile
    small = compact.compact(params, state, masks, groups)                 # new shapes
    step.at("compact")(*small_args)                                        # compiles once more
    step.stats()   # {"masked/3f0c...": {"compiles": 1, "compile_seconds": 9.1, "calls": 20}, ...}

**What a recompile gains.** A staged-recompilation recipe (``docs/methods.md``) recompiles a model every
``recompile_every`` pruning steps or when sparsity moved by more than ``sparsity_change_threshold``,
claiming the old graph "does not know" the new zeros. With masks as inputs that is not so: a
recompile of the *unchanged* masked-dense graph produces the same kernels (a dense GEMM costs the
same at any sparsity), so it gains nothing and costs a compile. ``bench/compile_stages.py``
measures it (2 CPU threads): the digits-MLP step at 98.8% sparsity runs in 1.48 ms in the graph
compiled at round 1 and in 1.47 ms after a fresh recompile (1.01x: noise); that recompile took
1.0 s with inductor's on-disk cache already holding the very same graph, ~17 s cold. Speed comes
only from a new *form*: fewer units after :func:`pure_prune.compact.compact` (LeNet-300-100 with
40% of its hidden units removed: a 1.5x faster step, one compile per stage), a sparse CSR
kernel, 2:4 hardware sparsity. The knobs survive here as :func:`should_rematerialize`: the
decision *when* a run re-materialises the next faster form, with the recipe's log lines
(:func:`log_lines`).

Limits: a :class:`Compiled` is not thread-safe (the metrics it reads are process-wide), and
``fn`` should not itself be compiled (pass ``make_step(..., compile=False)``; its eager tree checks
are then traced once per signature and cost nothing per call).
"""

from __future__ import annotations

import hashlib
import math
import numbers
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

import torch

from pure_prune import tree

__all__ = ["VARIANTS", "Compiled", "Knobs", "compile_fresh", "log_lines", "should_rematerialize", "signature"]

_METRIC = "_compile.compile_inner"
_SCALARS = (bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device, torch.layout)


class Knobs(NamedTuple):
    """The staged-recompilation knobs (a ``CompileCompressor``'s): re-materialise every ``recompile_every``-th
    compression, or when sparsity moved by more than ``threshold`` since the last one."""

    recompile_every: int
    threshold: float


VARIANTS: Mapping[str, Knobs] = MappingProxyType(
    {
        "default": Knobs(recompile_every=2, threshold=0.05),
        "aggressive": Knobs(recompile_every=1, threshold=0.02),
        "conservative": Knobs(recompile_every=5, threshold=0.10),
    }
)
"""The recipe's three variants (read-only)."""


# ------------------------------------------------------------------------------------ signatures
def _arg_path(path: str) -> str:
    """``"0.1.fc1.weight"`` (a path in ``(args, kwargs)``) as ``"args[1].fc1.weight"``; kwargs by name."""
    which, _, rest = path.partition(".")
    head, _, tail = rest.partition(".")
    name = f"args[{head}]" if which == "0" else head
    return f"{name}.{tail}" if tail else name


def _leaf_key(x: Any) -> Any:
    if isinstance(x, _SCALARS):
        return (type(x), x)
    raise TypeError(type(x).__name__)


def _key(form: str, args: tuple, kwargs: dict) -> tuple:
    """A hashable stage key: ``(form, treespec, per-leaf keys)``. Raises ``TypeError`` naming a bad leaf."""
    leaves, spec = tree.flatten((args, kwargs))
    try:
        keys = tuple(
            [
                (x.shape, x.dtype, x.layout, x.device) if isinstance(x, torch.Tensor) else _leaf_key(x)
                for x in leaves
            ]
        )
    except TypeError:
        i = next(i for i, x in enumerate(leaves) if not isinstance(x, (torch.Tensor, *_SCALARS)))
        raise TypeError(
            f"stage signature: argument leaf {_arg_path(tree.paths((args, kwargs))[i])!r} is "
            f"{type(leaves[i]).__name__}; Compiled accepts trees of tensors, Python scalars, strings and None"
        ) from None
    return (form, spec, keys)


def _describe(key: tuple) -> str:
    """``"<form>/<12 hex digits>"``: the form tag and a digest of the structure and leaf keys."""
    form, spec, leaves = key
    text = repr(spec) + "|" + ";".join(repr(leaf) for leaf in leaves)
    return f"{form}/{hashlib.sha1(text.encode()).hexdigest()[:12]}"


def _check_form(form: object) -> str:
    if not isinstance(form, str) or not form or "/" in form:
        raise ValueError(f"form must be a non-empty string without '/', got {form!r}")
    return form


def signature(form: str, *args: Any, **kwargs: Any) -> str:
    """The stage signature string of calling a :class:`Compiled` with ``form`` and these arguments.

    ``"<form>/<digest>"``: equal strings mean the same compiled graph. The digest covers the tree
    structure of ``(args, kwargs)``, each tensor leaf's shape, dtype, layout and device, and the
    value of each non-tensor leaf; never tensor values. Raises ``TypeError`` naming the path of a
    leaf that is neither a tensor nor a Python scalar/string/``None``.
    """
    return _describe(_key(_check_form(form), args, kwargs))


# ------------------------------------------------------------------------------------ compiling
def _fresh_entry(fn: Callable) -> Callable:
    """``fn`` with a code object of its own.

    Dynamo caches compiled frames on the code object (at most ``recompile_limit`` = 8 per code
    object). A fresh code object per stage gives every stage its own cache, so a run with more
    than 8 stages never silently falls back to eager. A plain Python function is cloned (no
    extra frame per call); any other callable is wrapped.
    """
    if isinstance(fn, types.FunctionType):
        clone = types.FunctionType(
            fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
        )
        clone.__kwdefaults__ = fn.__kwdefaults__
        return clone

    def stage_entry(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    code = stage_entry.__code__.replace()
    return types.FunctionType(code, stage_entry.__globals__, "stage_entry", None, stage_entry.__closure__)


def compile_fresh(fn: Callable, **compile_kwargs: Any) -> Callable:
    """``torch.compile(fn, **compile_kwargs)`` over a copy of ``fn`` with a code object of its own.

    Dynamo keeps its compiled frames, and its limit of ``recompile_limit`` (8) per code object, on
    the code object, which every step built by the same factory shares. A process that builds many
    steps (a sweep over models and data sets, many runs in one notebook) would hit that limit and
    fail under ``fullgraph=True``; a fresh code object per built step gives each its own cache.
    """
    return torch.compile(_fresh_entry(fn), **compile_kwargs)


def _compile_metrics() -> list[float]:
    return torch._dynamo.utils.compilation_time_metrics.get(_METRIC, [])


@dataclass
class _Stage:
    name: str
    run: Callable
    compiles: int = 0
    compile_seconds: float = 0.0
    calls: int = 0


class Compiled:
    """``fn`` compiled once per stage signature (see the module docstring).

    Args:
        fn: a pure function of trees of tensors (e.g. ``train.make_step(..., compile=False)``).
        form: the default form tag of :meth:`__call__` (``"masked"``).
        backend: the ``torch.compile`` backend (``"inductor"``; ``"eager"`` for cheap tests).
        **compile_kwargs: passed to ``torch.compile`` (``mode=``, ``options=``); ``fullgraph``
            defaults to ``True`` and ``dynamic`` to ``False`` (one static graph per stage).

    Calling it computes the signature (about 20 µs for the 23 leaves of a LeNet-300-100 step;
    dynamo's own guard check, which follows, costs about 100 µs), compiles on the first call of a
    new signature and runs the compiled callable. If tracing the first call fails because
    ``fn`` raised (e.g. ``make_step``'s ``ValueError`` for a mask of the wrong shape), ``fn`` is run
    eagerly on the same inputs so that its own error surfaces.
    """

    def __init__(
        self,
        fn: Callable,
        *,
        form: str = "masked",
        backend: str | Callable = "inductor",
        **compile_kwargs: Any,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        self._fn = fn
        self._form = _check_form(form)
        self._backend = backend
        self._kwargs = {"fullgraph": True, "dynamic": False, **compile_kwargs}
        self._stages: dict[tuple, _Stage] = {}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` through the compiled callable of this signature (default form)."""
        return self.call(self._form, *args, **kwargs)

    def at(self, form: str) -> Callable[..., Any]:
        """A callable running ``fn`` under ``form`` (sharing this object's stages and stats)."""
        form = _check_form(form)
        return lambda *args, **kwargs: self.call(form, *args, **kwargs)

    def call(self, form: str, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` under the form tag ``form``: compiles iff this signature is new."""
        key = _key(_check_form(form), args, kwargs)
        stage = self._stages.get(key)
        if stage is None:
            run = compile_fresh(self._fn, backend=self._backend, **self._kwargs)
            stage = self._stages[key] = _Stage(_describe(key), run)
        metrics = _compile_metrics()
        before = len(metrics)
        try:
            out = stage.run(*args, **kwargs)
        except torch._dynamo.exc.TorchDynamoException as err:
            if stage.calls:
                raise
            self._fn(*args, **kwargs)  # raises fn's own error if fn fails eagerly
            raise err
        finally:
            metrics = _compile_metrics()
            new = metrics[before:] if len(metrics) >= before else metrics
            stage.compiles += len(new)
            stage.compile_seconds += float(sum(new))
        stage.calls += 1
        return out

    def stats(self) -> dict[str, dict[str, int | float]]:
        """``{signature: {"compiles": int, "compile_seconds": float, "calls": int}}`` per stage seen,
        in order of first call. ``compiles`` counts frames dynamo compiled for the stage (1 when the
        stage compiled once; more means a guard failed inside it, e.g. a stride change)."""
        return {
            s.name: {"compiles": s.compiles, "compile_seconds": s.compile_seconds, "calls": s.calls}
            for s in self._stages.values()
        }


# ------------------------------------------------------------------------------------ decisions
def _fraction(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


def should_rematerialize(
    step_index: int,
    sparsity: float,
    last_sparsity: float | None,
    *,
    recompile_every: int = 2,
    threshold: float = 0.05,
) -> tuple[bool, str]:
    """The recompilation decision, as a pure function: re-materialise the faster form after this compression?

    Args:
        step_index: the number of this compression (pruning step), counting from 1.
        sparsity: the sparsity reached by this compression, in ``[0, 1]``.
        last_sparsity: the sparsity when the current form was materialised, or ``None`` when
            nothing has been compiled yet.
        recompile_every: re-materialise at every ``recompile_every``-th compression
            (``step_index % recompile_every == 0``).
        threshold: re-materialise when ``|sparsity - last_sparsity| > threshold`` (a difference
            within 1e-9 of the threshold counts as equal, so 0.26 - 0.16 is not "> 0.10").

    Returns:
        ``(decision, reason)``; ``reason`` names every rule that fired, or why none did.

    Defaults are the recipe's; :data:`VARIANTS` holds the aggressive ``(1, 0.02)`` and conservative
    ``(5, 0.10)`` variants.
    """
    if isinstance(step_index, bool) or not isinstance(step_index, numbers.Integral) or step_index < 1:
        raise ValueError(f"step_index must be an int >= 1 (compressions count from 1), got {step_index!r}")
    s = _fraction("sparsity", sparsity)
    every = _positive_int("recompile_every", recompile_every)
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not threshold >= 0:
        raise ValueError(f"threshold must be a number >= 0, got {threshold!r}")
    if last_sparsity is None:
        return True, "no compiled model yet"
    last = _fraction("last_sparsity", last_sparsity)
    change = abs(s - last)
    reasons = []
    if step_index % every == 0:
        reasons.append(f"compression {step_index} is a multiple of recompile_every={every}")
    if change > float(threshold) + 1e-9:
        reasons.append(f"sparsity changed by {change:.3f} > {float(threshold):.3f} ({last:.3f} -> {s:.3f})")
    if reasons:
        return True, "; ".join(reasons)
    return False, (
        f"sparsity changed by {change:.3f} <= {float(threshold):.3f} and compression {step_index} "
        f"is not a multiple of recompile_every={every}"
    )


def log_lines(
    step_index: int, sparsity: float, step_seconds: float, decision: tuple[bool, str], seconds: float
) -> list[str]:
    """The recipe's log lines for one pruning step and its compile decision.

    ``step_seconds``: time of the pruning step; ``decision``: :func:`should_rematerialize`'s
    result; ``seconds``: the compile seconds of the new form when it was re-materialised, else the
    seconds of the first call on the reused one. Returns
    ``["step 3: sparsity 24.0% (0.01 s)", "forcing recompilation: <reason>", "compiled new model in
    9.12 s"]`` or ``[..., "reused compiled model (0.001 s)"]`` (no "forcing" line for the first
    compile).
    """
    for name, v in (("step_seconds", step_seconds), ("seconds", seconds)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    lines = [f"step {step_index}: sparsity {_fraction('sparsity', sparsity):.1%} ({step_seconds:.2f} s)"]
    compiled, reason = decision
    if not compiled:
        return lines + [f"reused compiled model ({seconds:.3f} s)"]
    if reason != "no compiled model yet":
        lines.append(f"forcing recompilation: {reason}")
    return lines + [f"compiled new model in {seconds:.2f} s"]
