"""Gradients of a :class:`~pure_prune.importance.problem_inputs.Problem`'s loss: per batch, their
mean, and sums over samples of functions of per-sample gradients.

:func:`batch_grads` / :func:`mean_grad` give the gradient of each batch's mean loss and of the loss
over all batches (batches weighted by their rows). :func:`batch_moments` gives ``{stat: (D,)}``,
sums over one batch's samples of ``g``, ``g²``, ``|g|`` or the sign counts of per-sample gradients
``g``, flat over the scored leaves: tapped linear layers (:mod:`pure_prune.importance.linear_fast_path`)
as matrix products ``f(g)^T f(a)``, the other leaves by chunked ``vmap(grad)``
(:func:`per_sample_chunks`). Both routes give the same numbers (see
:mod:`pure_prune.importance.problem`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.func import grad, vmap

from pure_prune import tree
from pure_prune.importance.linear_fast_path import LinearLayer, LinearTaps, fast_layers, linear_grads
from pure_prune.importance.problem_inputs import Problem, auto_chunk, merge, split_leaves

__all__ = ["batch_grads", "batch_loss", "batch_moments", "mean_grad", "per_sample_chunks"]


def batch_loss(where: str, problem: Problem, batch: Any) -> Callable[[list[torch.Tensor]], torch.Tensor]:
    """``sub -> loss_fn(params with the scored leaves from sub, batch)``. For a ``ModelLoss`` the
    model output is checked against the targets first (one forward pass outside any transform)."""
    if problem.model is not None:
        x, y = problem.model.split(batch)
        problem.model.check(where, problem.model.model_fn(merge(problem, []), x), y)
    return lambda sub: problem.loss_fn(merge(problem, sub), batch)


def batch_grads(problem: Problem, where: str = "gradient") -> Iterator[tuple[float, list[torch.Tensor]]]:
    """For each batch: its share of the samples and the gradient of its mean loss w.r.t. the
    scored leaves of ``theta`` (one tensor per scored leaf)."""
    sub0 = [problem.theta[i] for i in problem.scored]
    model = problem.model
    for batch, n in zip(problem.batches, problem.rows):
        if model is not None:
            x, y = model.split(batch)

            def loss(sub, x=x, y=y):
                return model.loss(model.check(where, model.model_fn(merge(problem, sub), x), y), y)
        else:

            def loss(sub, batch=batch):
                return problem.loss_fn(merge(problem, sub), batch)

        yield n / problem.samples, grad(loss)(sub0)


def mean_grad(problem: Problem, where: str = "gradient") -> list[torch.Tensor]:
    """Gradient of the loss over all batches w.r.t. the scored leaves of ``theta`` (one per leaf)."""
    total = [torch.zeros_like(problem.theta[i]) for i in problem.scored]
    for w, g in batch_grads(problem, where):
        total = [t + w * gi for t, gi in zip(total, g)]
    return total


def _signs(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (t > 0).to(t.dtype), (t < 0).to(t.dtype)


def _transform(stat: str, t: torch.Tensor, cache: dict[str, Any]) -> Any:
    """``f(t)`` for ``stat`` (``t``, ``t²``, ``|t|`` or the sign indicators), computed once per
    tensor: ``cache`` is a dict local to one layer of one batch."""
    key = "signs" if stat in ("pos", "neg") else stat
    if key not in cache:
        if key == "sum":
            cache[key] = t
        elif key == "sumsq":
            cache[key] = t * t
        elif key == "abs":
            cache[key] = t.abs()
        else:
            cache[key] = _signs(t)
    return cache[key]


def _layer_moments_into(
    stats: Sequence[str],
    layer: LinearLayer,
    g: torch.Tensor,
    a: torch.Tensor,
    w_out: dict[str, torch.Tensor] | None,
    b_out: dict[str, torch.Tensor] | None,
) -> None:
    """Write ``sum_n f(g_n ⊗ a_n)`` (the weight's moments) into ``w_out[stat]`` and ``sum_n f(g_n)``
    (the bias's) into ``b_out[stat]`` for one linear layer, from its output gradients ``g``
    ``(n, out)`` and inputs ``a`` ``(n, in)``; each transform of ``g`` and ``a`` is computed once.
    ``w_out``/``b_out`` are ``None`` when that leaf is not scored."""
    gc: dict[str, Any] = {}
    ac: dict[str, Any] = {}
    for stat in stats:
        gt = _transform(stat, g, gc)
        if w_out is not None:
            at, w = _transform(stat, a, ac), w_out[stat]
            if stat == "pos":
                layer.outer_sum(gt[0], at[0], out=w).add_(layer.outer_sum(gt[1], at[1]))
            elif stat == "neg":
                layer.outer_sum(gt[0], at[1], out=w).add_(layer.outer_sum(gt[1], at[0]))
            else:
                layer.outer_sum(gt, at, out=w)
        if b_out is not None:
            torch.sum(gt[0] if stat == "pos" else gt[1] if stat == "neg" else gt, 0, out=b_out[stat])


def _sample_moment(stat: str, g: torch.Tensor) -> torch.Tensor:
    """``sum_n f(g_n)`` over the leading (sample) axis of per-sample gradients ``g``.

    ``Tensor.sum(0)`` rather than ``einops.reduce``: on the small bias tensors of the fast path the
    einops call overhead measured larger than the reduction itself.
    """
    if stat == "sum":
        return g.sum(0)
    if stat == "sumsq":
        return (g * g).sum(0)
    if stat == "abs":
        return g.abs().sum(0)
    return _signs(g)[0 if stat == "pos" else 1].sum(0)


def per_sample_chunks(problem: Problem, batch: Any, chunk_size: int | None):
    """Yield per-sample gradients of the scored leaves, ``[(n, *shape) per leaf]``, chunk by chunk:
    ``vmap`` over the rows of every leaf of ``batch`` of ``grad`` of the loss of one row (a batch
    of one)."""
    sub0 = [problem.theta[i] for i in problem.scored]

    def one_loss(sub, row):
        return problem.loss_fn(merge(problem, sub), tree.map(lambda t: t[None], row))

    per_sample = vmap(grad(one_loss), in_dims=(None, 0))
    n = tree.leaves(batch)[0].shape[0]
    width = sum(s.numel() for s in sub0)
    step = auto_chunk(n, width, chunk_size)
    for start in range(0, n, step):
        yield per_sample(sub0, tree.map(lambda t, s=start: t[s : s + step], batch))


def batch_moments(
    problem: Problem,
    taps: LinearTaps | None,
    batch: Any,
    stats: Sequence[str],
    chunk_size: int | None,
) -> dict[str, torch.Tensor]:
    """Sums over the samples of one batch of functions of per-sample gradients.

    ``stats`` names them: ``"sum"`` (g), ``"sumsq"`` (g²), ``"abs"`` (|g|), ``"pos"``/``"neg"``
    (counts of g > 0 / g < 0), where g is the gradient of one sample's loss w.r.t. a scored leaf.
    Returns ``{stat: (D,)}``, flat over the scored leaves (:func:`split_leaves` gives them leaf by
    leaf): results are written in place into these fresh buffers, which saves a copy per
    statistic. Tapped linear layers are reduced with matrix products; the other leaves with
    chunked ``vmap(grad)``.
    """
    leaves = [problem.theta[i] for i in problem.scored]
    dtype = leaves[0].dtype
    out = {s: torch.empty(sum(w.numel() for w in leaves), dtype=dtype) for s in stats}
    slots = {s: split_leaves(problem, buf) for s, buf in out.items()}  # views, leaf by leaf
    pos_of = {leaf: j for j, leaf in enumerate(problem.scored)}
    done: set[int] = set()
    layers = fast_layers(problem, taps)
    where = "per-sample gradients"
    if layers:
        inputs, gs, _ = linear_grads(where, problem, taps, batch, [k for k, _ in layers], False)
        for (_, layer), a, g in zip(layers, inputs, gs):
            jw, jb = pos_of.get(layer.weight), pos_of.get(layer.bias)
            w_out = None if jw is None else {s: slots[s][jw] for s in stats}
            b_out = None if jb is None else {s: slots[s][jb] for s in stats}
            _layer_moments_into(stats, layer, g, a, w_out, b_out)
            done.update(j for j in (jw, jb) if j is not None)
    elif problem.model is not None:
        x, y = problem.model.split(batch)
        problem.model.check(where, problem.model.model_fn(merge(problem, []), x), y)
    rest = [j for j in range(len(problem.scored)) if j not in done]
    if rest:
        sub = problem._replace(scored=tuple(problem.scored[j] for j in rest))
        for c, chunk in enumerate(per_sample_chunks(sub, batch, chunk_size)):
            for s in stats:
                for j, g in zip(rest, chunk):
                    if c == 0:
                        slots[s][j].copy_(_sample_moment(s, g))
                    else:
                        slots[s][j].add_(_sample_moment(s, g))
    return out
