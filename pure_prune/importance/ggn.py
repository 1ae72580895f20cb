"""The generalized Gauss-Newton diagonal, its Monte-Carlo (Fisher) estimate, and the check of
where it equals the Hessian diagonal.

:func:`ggn_diag` (Schraudolph 2002): ``(1/E) sum_n sum_r (J_n^T s_nr)²`` with ``J_n = d outputs_n /
d theta`` and the rows ``s_nr`` of the output-Hessian factor of the
:class:`~pure_prune.losses.ModelLoss` (:meth:`~pure_prune.losses.ModelLoss.hessian_factor`), one
tensor per scored leaf; traced linear layers reduce as ``(sum_r G_r²)^T a² / E``
(:mod:`pure_prune.importance.linear_fast_path`), other leaves by ``vmap`` over samples and factor
rows of vjps. :func:`fisher_diag_mc` draws labels (or Gaussian factor weights) instead of summing
over the factor rows. :func:`ggn_is_exact` probes, per leaf, whether the residual curvature
vanishes (piecewise-linear nets), :func:`ggn_is_exact_cached` memoises it per model and shapes.
The routes of ``hessian_diag`` that use them: :mod:`pure_prune.importance.hessian`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from einops import rearrange, reduce, repeat
from torch.func import vjp, vmap

from pure_prune import rng, tree
from pure_prune.importance.grad_moments import batch_moments
from pure_prune.importance.hessian_hvp import hvp_batched, scored_width, split_rows, weighted_sum
from pure_prune.importance.linear_fast_path import LinearTaps, fast_layers, linear_grads, resolve_taps
from pure_prune.importance.problem_inputs import (
    Batches,
    LossFn,
    Problem,
    auto_chunk,
    check_chunk,
    check_result,
    flat_rows,
    merge,
    need_model,
    prepare,
    split_leaves,
    to_tree,
)
from pure_prune.importance.trace_cache import TRACES

__all__ = ["fisher_diag_mc", "ggn_diag", "ggn_is_exact", "ggn_is_exact_cached", "ggn_leaves"]

_CHECK_ROWS = 16  # samples of the first batch that ggn_is_exact looks at
_CHECK_COORDS = 3  # coordinates per leaf it probes
_CHECK_RTOL = 1e-5


def _rows(t: object, start: int, stop: int) -> object:
    """Rows ``start:stop`` of every leaf of ``t`` (a tensor or a pytree of them)."""
    return tree.map(lambda v: v[start:stop], t)


def _ggn_generic(
    problem: Problem,
    x: torch.Tensor,
    outputs: torch.Tensor,
    factor: Callable[[int, int], torch.Tensor],
    rows_per_sample: int,
    chunk_size: int | None,
) -> list:
    """``sum_n sum_r (J_n^T s_nr)²`` for the scored leaves: ``vmap`` over samples of ``vmap`` over
    the factor rows ``r`` (``factor(start, stop)`` gives ``(stop - start, R, *outputs.shape[1:])``,
    built chunk by chunk: ``T*C`` rows per sample for token-level logits) of a one-sample vjp, in
    chunks of samples."""
    sub0 = [problem.theta[i] for i in problem.scored]
    model_fn = problem.model.model_fn

    def one(xi: torch.Tensor, rows: torch.Tensor) -> list[torch.Tensor]:
        _, pull = vjp(lambda sub: model_fn(merge(problem, sub), tree.map(lambda t: t[None], xi))[0], sub0)
        gs = vmap(pull)(rows)[0]
        return [reduce(g * g, "c ... -> ...", "sum") for g in gs]

    per_sample = vmap(one)
    n = outputs.shape[0]
    step = auto_chunk(n, rows_per_sample * scored_width(problem), chunk_size)
    total = None
    for s in range(0, n, step):
        part = [
            reduce(t, "n ... -> ...", "sum") for t in per_sample(_rows(x, s, s + step), factor(s, s + step))
        ]
        total = part if total is None else [a + c for a, c in zip(total, part)]
    return total


def _ggn_batch(
    problem: Problem,
    taps: LinearTaps | None,
    batch: object,
    chunk_size: int | None,
    mc: Callable[[torch.Tensor, object], torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """The GGN diagonal of one batch's mean loss, ``(1/E) sum_n sum_r (J_n^T s_nr)²`` with the
    output-Hessian factor rows ``s_nr`` and divisor ``E`` of the ``ModelLoss``
    (:meth:`~pure_prune.losses.ModelLoss.hessian_factor`: for cross-entropy ``E = N`` labels, or
    ``N T`` token-level), one tensor per scored leaf. ``mc(outputs, targets)`` replaces the factor
    rows by Monte-Carlo ones. Traced linear layers as in :func:`ggn_diag`; the other leaves:
    :func:`_ggn_generic`."""
    model = problem.model
    pos_of = {leaf: j for j, leaf in enumerate(problem.scored)}
    out: list = [None] * len(problem.scored)
    layers = fast_layers(problem, taps)
    if layers:
        ks = [k for k, _ in layers]
        inputs, gs, entries = linear_grads("ggn_diag", problem, taps, batch, ks, mc or True)
        for (_, layer), a, g in zip(layers, inputs, gs):
            q = (g * g).sum(0)  # (N, out): sum over the R factor rows
            if layer.weight in pos_of:
                out[pos_of[layer.weight]] = layer.outer_sum(q, a * a / entries)
            if layer.bias in pos_of:
                out[pos_of[layer.bias]] = q.sum(0) / entries
    rest = [j for j, o in enumerate(out) if o is None]
    if rest:
        x, y = model.split(batch)
        outputs = model.check("ggn_diag", model.model_fn(merge(problem, []), x), y)
        if mc is None:

            def factor(s: int, e: int) -> torch.Tensor:
                return model.hessian_factor(outputs[s:e], _rows(y, s, e))

            per = outputs[0].numel()
        else:
            drawn = mc(outputs, y)

            def factor(s: int, e: int) -> torch.Tensor:
                return drawn[s:e]

            per = drawn.shape[1]
        sub = problem._replace(scored=tuple(problem.scored[j] for j in rest))
        entries = model.ggn_entries(outputs, y)
        for j, v in zip(rest, _ggn_generic(sub, x, outputs, factor, per, chunk_size)):
            out[j] = v / entries
    return out


def ggn_leaves(problem: Problem, fast: bool | LinearTaps, chunk_size: int | None) -> list[torch.Tensor]:
    need_model("ggn_diag", problem, "the GGN diagonal")

    def per_batch(b: int, batch: object, taps: LinearTaps | None) -> list[torch.Tensor]:
        return _ggn_batch(problem, taps, batch, chunk_size)

    return weighted_sum(problem, per_batch, fast)


def ggn_diag(
    loss_fn: LossFn,
    params: tree.Tree,
    batches: Batches,
    *,
    masks: tree.Tree | None = None,
    fast: bool | LinearTaps = True,
    chunk_size: int | None = None,
) -> tree.Tree:
    """Exact generalized Gauss-Newton diagonal (Schraudolph 2002) of the loss (module docstring).

    ``loss_fn`` must be a :class:`~pure_prune.losses.ModelLoss` (the GGN needs the model's
    outputs): ``diag(J^T H_out J)`` averaged over samples, ``H_out`` the Hessian of a sample's loss
    w.r.t. its outputs. Equals the Hessian diagonal where the model is piecewise linear in each
    weight (check with :func:`ggn_is_exact`). ``fast=True`` uses the memoised trace of
    ``model_fn`` and reduces a linear layer as ``(sum_r G_r²)^T a² / E`` (``G_r`` ``(N, out)``: the
    vjps of the R factor rows to the layer's output, one batched backward; ``a`` its input); other
    leaves (or all, ``fast=False``) use ``vmap`` over samples and factor rows of vjps,
    ``chunk_size`` samples at once. Returns a tree like ``params`` (``None`` at unscored leaves).
    """
    problem = prepare("ggn_diag", loss_fn, params, batches, masks)
    check_chunk(chunk_size)
    out = ggn_leaves(problem, fast, chunk_size)
    check_result("ggn_diag", problem, out)
    return to_tree(problem, out)


def fisher_diag_mc(
    loss_fn: LossFn,
    params: tree.Tree,
    batches: Batches,
    *,
    key: int,
    samples: int = 1,
    masks: tree.Tree | None = None,
    fast: bool | LinearTaps = True,
    chunk_size: int | None = None,
) -> tree.Tree:
    """Monte-Carlo Fisher (= GGN) diagonal, unbiased for :func:`ggn_diag`; ``loss_fn`` must be a
    :class:`~pure_prune.losses.ModelLoss`.

    Cross-entropy: ``(1/(N S)) sum_n sum_s g_n(ŷ_ns)²``, ``ŷ_ns`` ``samples`` labels per input drawn
    from the model's softmax (key ``fold_in(key, b)`` for batch ``b``) and ``g_n(ŷ)`` the gradient
    of ``CE(logits_n, ŷ)``: ``E[(J^T (p - e_ŷ))²] = diag(J^T (diag p - p p^T) J)``. Each batch is
    scored as one batch of ``samples * N`` rows (memory grows with ``samples``). Token-level labels
    ``(N, T)``: one label per token is drawn, ``g_n`` is the gradient of sequence ``n``'s mean loss
    and the sum is multiplied by ``T``: the cross-token terms of ``g_n²`` have zero mean, so
    ``T E[g_n²] = (1/T) sum_t diag(J_nt^T (diag p_nt - p_nt p_nt^T) J_nt)``.

    Other output losses (MSE, callables): ``(1/E) sum_n (1/S) sum_s (J_n^T S_n z_ns)²`` with the
    output-Hessian factor ``S_n`` (:meth:`~pure_prune.losses.ModelLoss.hessian_factor`) and
    standard normal ``z_ns`` (key ``fold_in(key, b)``): ``E[S z z^T S^T] = S S^T``. For MSE this is
    the gradient at targets drawn from the Gaussian the squared error is the likelihood of.
    Returns a tree like ``params`` (``None`` at unscored leaves).
    """
    rng.check_key(key)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples <= 0:
        raise ValueError(f"fisher_diag_mc: samples must be a positive int, got {samples!r}")
    problem = prepare("fisher_diag_mc", loss_fn, params, batches, masks)
    model = need_model("fisher_diag_mc", problem, "the Monte-Carlo Fisher")
    check_chunk(chunk_size)
    if not model.classes:
        out = _fisher_mc_factor(problem, key, samples, fast, chunk_size)
        check_result("fisher_diag_mc", problem, out)
        return to_tree(problem, out)
    pair = dataclasses.replace(model, keys=(0, 1))
    sampled = problem._replace(loss_fn=pair, model=pair)
    out, current = None, fast
    for b, batch in enumerate(problem.batches):
        x, y = model.split(batch)
        logits = model.check("fisher_diag_mc", model.model_fn(merge(problem, []), x), y)
        gen = rng.generator(rng.fold_in(key, b))
        probs = rearrange(logits.softmax(-1), "... c -> (...) c")
        drawn = torch.multinomial(probs, samples, replacement=True, generator=gen).reshape(*y.shape, samples)
        xs = repeat(x, "n ... -> (s n) ...", s=samples)
        taps = resolve_taps(current, sampled, xs)
        current = current if taps is None else taps
        ys = rearrange(torch.movedim(drawn, -1, 0), "s n ... -> (s n) ...")
        sums = batch_moments(sampled, taps, (xs, ys), ("sumsq",), chunk_size)
        tokens = y[0].numel()  # 1 for (N,) labels
        part = split_leaves(problem, sums["sumsq"] * (tokens / (problem.samples * samples)))
        out = part if out is None else [a + c for a, c in zip(out, part)]
    check_result("fisher_diag_mc", problem, out)
    return to_tree(problem, out)


def _fisher_mc_factor(
    problem: Problem, key: int, samples: int, fast: bool | LinearTaps, chunk_size: int | None
) -> list[torch.Tensor]:
    """The Monte-Carlo GGN of :func:`fisher_diag_mc` for output losses other than cross-entropy."""
    model = problem.model

    def per_batch(b: int, batch: object, taps: LinearTaps | None) -> list[torch.Tensor]:
        def mc(outputs: torch.Tensor, y: object) -> torch.Tensor:
            rows = model.hessian_factor(outputs, y)  # (N, R, ...)
            z = torch.randn(
                rows.shape[0],
                samples,
                rows.shape[1],
                dtype=rows.dtype,
                generator=rng.generator(rng.fold_in(key, b)),
            )
            return torch.einsum("nsr,nr...->ns...", z, rows) / math.sqrt(samples)

        return _ggn_batch(problem, taps, batch, chunk_size, mc)

    return weighted_sum(problem, per_batch, fast)


def ggn_is_exact(
    loss_fn: LossFn,
    params: tree.Tree,
    batches: Batches,
    *,
    masks: tree.Tree | None = None,
    coords: int = _CHECK_COORDS,
    rtol: float = _CHECK_RTOL,
) -> dict[str, bool]:
    """For each scored leaf, whether its Hessian diagonal equals its GGN diagonal.

    ``loss_fn`` must be a :class:`~pure_prune.losses.ModelLoss`. Checks ``coords`` evenly spaced
    coordinates ``i`` per leaf, on the first 16 samples of the first batch: the residual curvature
    ``R_ii = e_i^T (d²/dtheta² sum_n r_n . outputs_n) e_i`` (``r`` the loss gradient w.r.t. the
    outputs, held fixed) must satisfy ``|R_ii| <= rtol * max_j |(R e_i)_j|``. ``R_ii`` is exactly 0
    where the outputs are linear in the single weight ``i`` (piecewise-linear nets) and generically
    not otherwise (smooth activations, weight sharing). A sampled check, not a proof; it costs
    ``coords`` HVPs per leaf. Returns ``{leaf path: bool}``.
    """
    if isinstance(coords, bool) or not isinstance(coords, int) or coords <= 0:
        raise ValueError(f"ggn_is_exact: coords must be a positive int, got {coords!r}")
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not rtol >= 0:
        raise ValueError(f"ggn_is_exact: rtol must be a float >= 0, got {rtol!r}")
    problem = prepare("ggn_is_exact", loss_fn, params, batches, masks)
    need_model("ggn_is_exact", problem, "the GGN exactness check")
    return _ggn_is_exact(problem, coords, rtol)


def ggn_is_exact_cached(problem: Problem) -> dict[str, bool]:
    """:func:`_ggn_is_exact` with the default coordinates and tolerance, memoised per model
    function, output loss, shapes and scored leaves (:data:`TRACES`): a property of the model's
    structure, checked once per model rather than per call."""
    model = problem.model
    x, y = model.split(problem.batches[0])
    sig = tuple((p, tuple(w.shape), w.dtype) for p, w in zip(problem.paths, problem.theta))
    data = tuple((tuple(t.shape), t.dtype) for t in tree.leaves((x, y)))
    key = ("ggn_is_exact", model.output_loss, sig, problem.scored, data)
    return TRACES.get(model.model_fn, key, lambda: _ggn_is_exact(problem, _CHECK_COORDS, _CHECK_RTOL))


def _ggn_is_exact(problem: Problem, coords: int, rtol: float) -> dict[str, bool]:
    model = problem.model
    x, y = (_rows(t, 0, _CHECK_ROWS) for t in model.split(problem.batches[0]))
    outputs = model.check("ggn_is_exact", model.model_fn(merge(problem, []), x), y)
    r = model.output_grad(outputs, y)

    def residual(sub: list[torch.Tensor]) -> torch.Tensor:
        return (r * model.model_fn(merge(problem, sub), x)).sum()

    width, offset, picks, owner = scored_width(problem), 0, [], []
    for j, i in enumerate(problem.scored):
        n = problem.theta[i].numel()
        idx = torch.linspace(0, n - 1, coords).round().long().unique()
        picks.append(idx + offset)
        owner += [j] * idx.numel()
        offset += n
    flat = torch.cat(picks)
    rows = torch.zeros(flat.numel(), width, dtype=outputs.dtype)
    rows[torch.arange(flat.numel()), flat] = 1.0
    out = flat_rows(hvp_batched(problem, residual)(split_rows(problem, rows)))
    diag = out[torch.arange(flat.numel()), flat].abs()
    ok = diag <= rtol * out.abs().amax(dim=1)
    owners = torch.tensor(owner)
    return {problem.paths[i]: bool(ok[owners == j].all()) for j, i in enumerate(problem.scored)}
