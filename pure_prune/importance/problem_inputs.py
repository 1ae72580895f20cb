"""The checked scoring problem: input checks, the :class:`Problem`, and its leaf layout.

:func:`prepare` checks a score's ``(loss_fn, params, batches, masks)`` (conventions in
:mod:`pure_prune.importance.problem`) and returns a :class:`Problem`: ``theta = W * M`` leaf by leaf,
the indices of the scored leaves, the checked batches and their row counts. The helpers here move
values between that layout and trees: :func:`merge` (scored leaves from a list, the rest from
``theta``), :func:`to_tree` (a scores tree, ``None`` at unscored leaves), :func:`flatten_leaves` /
:func:`split_leaves` (one flat ``(D,)`` vector over the scored leaves), :func:`flat_rows`
(``[(k, *shape)] -> (k, D)``). :func:`check_result` names the culprit of a NaN/inf result
(an input leaf or batch, else the result's leaf).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from einops import rearrange

from pure_prune import tree
from pure_prune.losses import ModelLoss

__all__ = [
    "Batch",
    "Batches",
    "LossFn",
    "Problem",
    "auto_chunk",
    "check_chunk",
    "check_finite",
    "check_result",
    "check_same_tree",
    "checked_outputs",
    "flat_rows",
    "flatten_leaves",
    "mask_leaves",
    "merge",
    "need_model",
    "prepare",
    "rows_of",
    "split_leaves",
    "to_tree",
]

LossFn = Callable[[tree.Tree, Any], torch.Tensor]
Batch = Any  # a pytree of tensors with a common leading sample axis
Batches = Batch | Sequence[Batch]
_BLOCK = 2**24  # floats in one vmapped block when chunk_size is None (64 MiB in float32)


class Problem(NamedTuple):
    """A checked scoring problem. ``theta`` holds every leaf of ``W * M`` (detached), in tree order;
    ``scored`` the indices of the scored leaves; ``batches`` the checked batches (int labels as
    int64 for cross-entropy), ``rows`` their row counts and ``samples`` the total; ``model`` is
    ``loss_fn`` when it is a :class:`~pure_prune.losses.ModelLoss`, else ``None``."""

    loss_fn: LossFn
    model: ModelLoss | None
    spec: Any
    paths: tuple[str, ...]
    theta: tuple[torch.Tensor, ...]
    scored: tuple[int, ...]
    batches: tuple[Batch, ...]
    rows: tuple[int, ...]
    samples: int


# ----------------------------------------------------------------------------------------- checks


def check_finite(
    where: str,
    paths: Sequence[str],
    leaves: Sequence[torch.Tensor | None],
    extra: Sequence[tuple[str, torch.Tensor]] = (),
) -> None:
    """Raise ``ValueError`` naming the first leaf of ``leaves`` (then of the ``(label, tensor)`` pairs
    in ``extra``) that holds NaN or inf.

    One sync: the sums of all tensors are finite unless one holds NaN/inf (or a sum overflows, in
    which case the tensors are inspected one by one and nothing is raised for finite values).
    """
    named = [(f"leaf {p!r}", x) for p, x in zip(paths, leaves)] + list(extra)
    tensors = [(name, x) for name, x in named if x is not None and x.numel() > 0]
    if not tensors:
        return
    if bool(torch.stack([x.sum().float() for _, x in tensors]).sum().isfinite()):
        return
    for name, x in tensors:
        bad = ~x.isfinite()
        if bool(bad.any()):
            kind = "NaN" if bool(x.isnan().any()) else "inf"
            raise ValueError(f"{where}: {name} has {int(bad.sum())} non-finite values ({kind})")


def check_result(where: str, problem: Problem, values: Sequence[torch.Tensor], what: str = "result") -> None:
    """Raise ``ValueError`` when ``values`` (one tensor per scored leaf) hold NaN or inf, naming the
    culprit: first a non-finite input (a ``params`` leaf, a float leaf of ``batches[i]``), else the
    leaf of the result. Inputs are inspected only then: a non-finite input that reaches the result
    is found at no cost to the calls where everything is finite (one sync)."""
    if bool(torch.stack([v.sum().float() for v in values]).sum().isfinite()):
        return
    keys = {} if problem.model is None else {str(problem.model.keys[0]): "x", str(problem.model.keys[1]): "y"}
    xs = [
        (f"batches[{i}].{keys[p]}" if p in keys else f"batches[{i}] leaf {p!r}", t)
        for i, b in enumerate(problem.batches)
        for p, t in zip(*tree.flatten_with_paths(b)[:2])
        if t.is_floating_point()
    ]
    check_finite(f"{where} (inputs)", problem.paths, problem.theta, xs)
    check_finite(f"{where} ({what})", [problem.paths[i] for i in problem.scored], values)


def check_chunk(chunk_size: int | None) -> None:
    """``chunk_size`` must be ``None`` or a positive int."""
    if chunk_size is None:
        return
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size}")


def check_same_tree(where: str, params: tree.Tree, other: tree.Tree, name: str) -> list[Any]:
    """Check that ``other`` has the structure of ``params`` and, at each non-None leaf, its shape.

    Returns the leaves of ``other``.
    """
    tree.assert_same_structure(params, other, ("params", name))
    paths, p_leaves, _ = tree.flatten_with_paths(params)
    o_leaves = tree.leaves(other)
    for p, w, o in zip(paths, p_leaves, o_leaves):
        if o is None:
            continue
        if not isinstance(o, torch.Tensor):
            raise TypeError(f"{where}: {name} leaf {p!r} must be a tensor or None, got {type(o).__name__}")
        if w is not None and o.shape != w.shape:
            raise ValueError(
                f"{where}: {name} leaf {p!r} has shape {tuple(o.shape)}, params has {tuple(w.shape)}"
            )
    return o_leaves


def mask_leaves(where: str, params: tree.Tree, masks: tree.Tree | None) -> list[torch.Tensor | None]:
    """The leaves of ``masks`` (all ``None`` when ``masks`` is None), checked: the structure of
    ``params``, a bool tensor of the leaf's shape or ``None`` at every leaf."""
    if masks is None:
        return [None] * len(tree.leaves(params))
    m_leaves = check_same_tree(where, params, masks, "masks")
    for p, m in zip(tree.paths(params), m_leaves):
        if m is not None and m.dtype != torch.bool:
            raise TypeError(f"{where}: masks leaf {p!r} must be a bool tensor or None, got {m.dtype}")
    return m_leaves


def _as_batches(where: str, batches: Any) -> tuple[Any, ...]:
    """One batch -> ``(batch,)``; a list, or a tuple holding no tensor at its top level, is a
    sequence of batches."""
    many = isinstance(batches, list) or (
        isinstance(batches, tuple) and not any(isinstance(b, torch.Tensor) for b in batches)
    )
    out = tuple(batches) if many else (batches,)
    if not out:
        raise TypeError(f"{where}: batches must be a batch or a non-empty sequence of batches")
    return out


def rows_of(where: str, label: str, batch: Any) -> int:
    """The common leading size ``N > 0`` of every leaf of ``batch``; ``TypeError``/``ValueError``
    naming the leaf (``label`` names the batch) otherwise."""
    if isinstance(batch, (str, bytes)) or batch is None:
        raise TypeError(f"{where}: {label} must be a pytree of tensors, got {batch!r:.80}")
    paths, leaves, _ = tree.flatten_with_paths(batch)
    if not leaves:
        raise ValueError(f"{where}: {label} holds no tensor")
    first = None
    for p, t in zip(paths, leaves):
        if not isinstance(t, torch.Tensor) or t.ndim == 0:
            got = f"a {t.dtype} scalar" if isinstance(t, torch.Tensor) else f"{t!r:.60}"
            raise TypeError(f"{where}: {label} leaf {p!r} must be a tensor with a sample axis, got {got}")
        if first is None:
            first = (p, t.shape[0])
        elif t.shape[0] != first[1]:
            raise ValueError(
                f"{where}: {label} leaf {p!r} has {t.shape[0]} rows, leaf {first[0]!r} has {first[1]} "
                "(every leaf of a batch needs one common leading sample axis)"
            )
    if first[1] == 0:
        raise ValueError(f"{where}: {label} has 0 rows (leaf {first[0]!r})")
    return first[1]


def _check_batch(where: str, i: int, batch: Any, model: ModelLoss | None) -> tuple[Any, int]:
    """A checked batch (int labels as int64 for cross-entropy) and its row count."""
    if model is not None:
        if not isinstance(batch, (tuple, list, Mapping)):
            raise TypeError(
                f"{where}: batches[{i}] must be a tuple/list or dict holding the model input and targets "
                f"at {model.keys!r}, got {type(batch).__name__}"
            )
        x, y = model.split(batch)
        label = "y" if model.keys == (0, 1) else f"targets {model.keys[1]!r}"
        y2 = model.check_targets(where, f"batches[{i}] {label}", y)
        if not isinstance(x, torch.Tensor) and not tree.leaves(x):
            raise TypeError(f"{where}: batches[{i}] x must be a tensor with a batch axis, got {x!r:.80}")
        if isinstance(x, torch.Tensor) and x.ndim == 0:
            raise TypeError(f"{where}: batches[{i}] x must be a tensor with a batch axis, got {x!r:.80}")
        if isinstance(x, torch.Tensor) and isinstance(y2, torch.Tensor) and y2.shape[0] != x.shape[0]:
            raise ValueError(
                f"{where}: batches[{i}] has {x.shape[0]} inputs and {y2.shape[0]} labels (need equal, > 0)"
            )
        if isinstance(y2, torch.Tensor) and y2.numel() == 0:
            raise ValueError(f"{where}: batches[{i}] y of shape {tuple(y2.shape)} holds no label")
        if y2 is not y:
            batch = model.join(batch, x, y2)
    return batch, rows_of(where, f"batches[{i}]", batch)


def _check_plain_loss(where: str, problem: Problem) -> None:
    """A plain ``loss_fn`` must give a float scalar that depends differentiably on the scored
    leaves (checked on the first batch, outside any transform: one forward pass)."""
    sub = [problem.theta[i].detach().requires_grad_() for i in problem.scored]
    with torch.enable_grad():
        try:
            value = problem.loss_fn(merge(problem, sub), problem.batches[0])
        except (TypeError, ValueError, AttributeError, IndexError, KeyError) as err:
            raise TypeError(
                f"{where}: loss_fn(params, batches[0]) raised {type(err).__name__}: {err}. loss_fn must "
                "be loss_fn(params, batch) -> scalar; to score a model_fn(params, x) -> outputs, pass "
                "losses.model_loss(model_fn, 'cross_entropy' | 'mse' | output_loss)"
            ) from err
    if not isinstance(value, torch.Tensor) or value.ndim != 0 or not value.is_floating_point():
        got = (
            f"a {value.dtype} tensor of shape {tuple(value.shape)}"
            if isinstance(value, torch.Tensor)
            else (f"{type(value).__name__}")
        )
        raise TypeError(
            f"{where}: loss_fn(params, batches[0]) must return a float scalar (the mean loss over the "
            f"batch's rows), got {got}; to score a model_fn(params, x) -> outputs, pass "
            "losses.model_loss(model_fn, 'cross_entropy' | 'mse' | output_loss)"
        )
    if not value.requires_grad:
        raise TypeError(
            f"{where}: loss_fn's value is not differentiable in the scored params (no autograd graph "
            f"reaches leaves {[problem.paths[i] for i in problem.scored][:5]}): was it detached or "
            "computed without grad?"
        )


def prepare(where: str, loss_fn: LossFn, params: tree.Tree, batches: Any, masks: tree.Tree | None) -> Problem:
    """Check the inputs of a scoring function named ``where`` and build its :class:`Problem`.

    Raises ``TypeError``/``ValueError`` naming the offending leaf path or batch. NaN/inf in the
    inputs are reported by :func:`check_result` when they reach a result.
    """
    if not callable(loss_fn):
        raise TypeError(f"{where}: loss_fn must be callable, got {type(loss_fn).__name__}")
    model = loss_fn if isinstance(loss_fn, ModelLoss) else None
    paths, leaves, spec = tree.flatten_with_paths(params)
    if not leaves:
        raise ValueError(f"{where}: params has no leaves")
    for p, w in zip(paths, leaves):
        if not isinstance(w, torch.Tensor) or not w.is_floating_point():
            raise TypeError(f"{where}: params leaf {p!r} must be a float tensor, got {w!r:.80}")
    m_leaves = mask_leaves(where, params, masks)
    if masks is None:
        scored = tuple(range(len(leaves)))
    else:
        scored = tuple(i for i, m in enumerate(m_leaves) if m is not None)
        if not scored:
            raise ValueError(f"{where}: masks has no scored leaf (every leaf is None)")
    first_of: dict[torch.dtype, str] = {}
    for i in scored:
        first_of.setdefault(leaves[i].dtype, paths[i])
    if len(first_of) > 1:
        seen = ", ".join(f"{d} at {p!r}" for d, p in first_of.items())
        raise TypeError(f"{where}: scored leaves must share one dtype, got {seen}")
    theta = tuple(w.detach() if m is None else w.detach() * m.to(w.dtype) for w, m in zip(leaves, m_leaves))
    checked = [_check_batch(where, i, b, model) for i, b in enumerate(_as_batches(where, batches))]
    bs, rows = tuple(b for b, _ in checked), tuple(n for _, n in checked)
    problem = Problem(loss_fn, model, spec, tuple(paths), theta, scored, bs, rows, sum(rows))
    if model is None:
        _check_plain_loss(where, problem)
    return problem


def need_model(where: str, problem: Problem, route: str) -> ModelLoss:
    """``problem.model``, or a ``TypeError`` saying that ``route`` needs the model's outputs."""
    if problem.model is None:
        raise TypeError(
            f"{where}: {route} needs the model's outputs: pass loss_fn as "
            "losses.model_loss(model_fn, output_loss), not a plain loss function"
        )
    return problem.model


def checked_outputs(where: str, problem: Problem, outputs: Any, y: Any) -> torch.Tensor:
    """Check a model output against the targets ``y`` (:meth:`ModelLoss.check`); returns it."""
    return need_model(where, problem, "this route").check(where, outputs, y)


def merge(problem: Problem, sub: Sequence[torch.Tensor]) -> tree.Tree:
    """The params tree with ``theta`` everywhere except the scored leaves, which come from ``sub``."""
    leaves = list(problem.theta)
    for i, s in zip(problem.scored, sub):
        leaves[i] = s
    return tree.unflatten(problem.spec, leaves)


def to_tree(problem: Problem, values: Sequence[torch.Tensor]) -> tree.Tree:
    """A scores tree: ``values`` (one per scored leaf) at the scored leaves, ``None`` elsewhere."""
    leaves: list[Any] = [None] * len(problem.theta)
    for i, v in zip(problem.scored, values):
        leaves[i] = v
    return tree.unflatten(problem.spec, leaves)


def flatten_leaves(values: Sequence[torch.Tensor]) -> torch.Tensor:
    """One tensor per scored leaf -> their entries concatenated, ``(D,)``."""
    return torch.cat([v.reshape(-1) for v in values])


def split_leaves(problem: Problem, flat: torch.Tensor) -> list[torch.Tensor]:
    """Inverse of :func:`flatten_leaves`: views of ``flat`` ``(D,)`` in the shapes of the scored
    leaves (which share one dtype, see :func:`prepare`)."""
    leaves = [problem.theta[i] for i in problem.scored]
    return [c.view(w.shape) for c, w in zip(torch.split(flat, [w.numel() for w in leaves]), leaves)]


def auto_chunk(count: int, width: int, chunk_size: int | None) -> int:
    """Vectors per vmapped block: ``chunk_size``, or as many ``width``-float vectors as fit ``2**24``."""
    if chunk_size is not None:
        return max(1, min(count, chunk_size))
    return max(1, min(count, _BLOCK // max(width, 1)))


def flat_rows(values: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate batched leaves ``[(k, *shape)]`` into ``(k, sum of numel)``."""
    return torch.cat([rearrange(v, "k ... -> k (...)") for v in values], dim=1)
