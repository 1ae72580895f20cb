"""First-order scores and per-sample gradient statistics.

Conventions (``loss_fn(params, batch)``, inputs, masks, the ``fast`` linear-layer route) are those
of :mod:`pure_prune.importance.problem`; every score here needs only ``loss_fn`` (a
:class:`~pure_prune.losses.ModelLoss` adds the linear-layer fast path). Let ``g_n`` be the gradient
of sample ``n``'s loss (``loss_fn`` of row ``n`` of the batch, as a batch of one) w.r.t.
``theta = W * M`` and ``N`` the number of samples in all batches (for token-level cross-entropy,
labels ``(N, T)``, a sample is one sequence and its loss the mean over its ``T`` tokens). Then,
elementwise:

* ``mean = (1/N) sum_n g_n`` and ``fisher = (1/N) sum_n g_n²`` (the empirical Fisher diagonal);
* ``variance = fisher - mean²`` over samples (no Bessel correction), less a rounding allowance of
  ``16 * machine eps * fisher`` and floored at 0, so samples that agree have variance exactly 0;
* ``snr = mean² / (variance + eps)`` (``eps > 0``);
* ``magnitude = (1/N) sum_n |g_n|``;
* ``sign_consistency = (1/N) #{n : sign(g_n) = sign(mean)}`` with ``sign(0) = 0``;
* ``stability = mean² / (sum_b (N_b/N) m_b² + eps)`` where ``m_b`` is the mean gradient of batch
  ``b`` (``N_b`` samples). It lies in ``[0, 1]``: 1 when every batch has the same mean gradient,
  near 0 when batch means scatter around zero. With one batch it is ``mean² / (mean² + eps)``.

SNIP and first-order Taylor use the mean gradient ``g`` of the loss over all batches: per element
``|g * theta|`` (SNIP; the per-element first-order Taylor score is the same number) and per unit
``|sum over the unit's entries of g * theta|`` (Taylor, Molchanov et al.).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from pure_prune import tree
from pure_prune.importance.problem import (
    Batch,
    Batches,
    LinearTaps,
    LossFn,
    Problem,
    Units,
    batch_grads,
    batch_moments,
    check_chunk,
    check_result,
    iter_batches,
    linear_taps,
    mean_grad,
    merge,
    per_sample_chunks,
    prepare,
    split_leaves,
    to_tree,
    unit_sum,
)

__all__ = [
    "GradStats",
    "LinearTaps",
    "empirical_fisher",
    "gradient_snr",
    "gradient_stats",
    "linear_taps",
    "per_sample_grads",
    "snip",
    "taylor",
    "taylor_units",
]


class GradStats(NamedTuple):
    """Per-sample gradient statistics (trees like params, ``None`` at unscored leaves); see the
    module docstring for the definitions. ``samples`` and ``batches`` count what was reduced."""

    mean: tree.Tree
    variance: tree.Tree
    snr: tree.Tree
    magnitude: tree.Tree
    stability: tree.Tree
    sign_consistency: tree.Tree
    fisher: tree.Tree
    samples: int
    batches: int


def _check_eps(where: str, eps: float) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"{where}: eps must be a float > 0 (it keeps mean² / variance finite), got {eps!r}")
    return float(eps)


def _snr_terms(s1: torch.Tensor, s2: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(q, d, keep)`` with ``q = s1² / (n keep)``, ``d = max(s2 - q, 0)`` from the sums
    ``s1 = sum g``, ``s2 = sum g²`` over ``n`` samples, so that ``variance = keep * d / n`` and
    ``mean² / (variance + eps) = q / (d + n eps / keep)``.

    ``keep = 1 - 16 * machine eps``: ``s2 - s1² / n`` carries rounding errors of a few ulps of ``s2``,
    and subtracting that allowance gives samples that agree to working precision a variance of
    exactly 0, whatever the order of summation (the fast and generic routes sum differently).
    Three passes (measured twice as fast as the naive six on the digits MLP).
    """
    keep = 1.0 - 16 * torch.finfo(s1.dtype).eps
    q = s1.mul(1.0 / math.sqrt(n * keep)).square_()
    return q, torch.sub(s2, q).clamp_min_(0.0), keep


def _moments(
    where: str,
    problem: Problem,
    fast: bool | LinearTaps,
    stats: Sequence[str],
    chunk_size: int | None,
    batch_means: bool = False,
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Sums of ``stats`` over every sample of every batch and (when ``batch_means``) the sum over
    batches of ``N_b * m_b²``, each flat over the scored leaves: ``(D,)``, D their total size.

    Flat, so that the elementwise statistics after it are a handful of ops, not a handful per leaf
    (on the digits MLP that halved their cost). A trace made for one batch is reused by the next
    of equal shape.
    """
    check_chunk(chunk_size)
    totals: dict[str, torch.Tensor] | None = None
    squares = None
    for b, batch, taps in iter_batches(problem, fast):
        m = batch_moments(problem, taps, batch, stats, chunk_size)
        totals = m if totals is None else {s: totals[s] + m[s] for s in stats}
        if batch_means:
            sq = m["sum"] * m["sum"] / problem.rows[b]
            squares = sq if squares is None else squares + sq
    assert totals is not None  # prepare() guarantees at least one batch
    if not bool(totals[stats[0]].sum().isfinite()):  # one reduction; leaf by leaf only to name the culprit
        check_result(where, problem, split_leaves(problem, totals[stats[0]]), "per-sample gradients")
    return totals, squares


def per_sample_grads(
    loss_fn: LossFn,
    params: tree.Tree,
    batch: Batch,
    *,
    masks: tree.Tree | None = None,
    chunk_size: int | None = None,
) -> tree.Tree:
    """Per-sample gradients by ``vmap(grad)`` of the one-row loss (any ``loss_fn``).

    ``batch`` is one batch with ``N`` rows. Returns a tree like ``params``: at scored
    leaves a tensor ``(N, *leaf.shape)`` holding the gradient of sample ``n``'s loss w.r.t.
    ``theta = W * M`` in row ``n``; ``None`` elsewhere. ``chunk_size`` samples are vmapped at once
    (default: as many as fit a 2**24-float block).
    """
    problem = prepare("per_sample_grads", loss_fn, params, batch, masks)
    check_chunk(chunk_size)
    if len(problem.batches) != 1:
        raise ValueError(
            f"per_sample_grads takes one batch (such as one (x, y) batch), got {len(problem.batches)}"
        )
    batch = problem.batches[0]
    if problem.model is not None:
        x, y = problem.model.split(batch)
        problem.model.check("per_sample_grads", problem.model.model_fn(merge(problem, []), x), y)
    chunks = list(per_sample_chunks(problem, batch, chunk_size))
    values = [torch.cat([c[j] for c in chunks]) for j in range(len(problem.scored))]
    check_result("per_sample_grads", problem, values)
    return to_tree(problem, values)


def gradient_stats(
    loss_fn: LossFn,
    params: tree.Tree,
    batches: Batches,
    *,
    masks: tree.Tree | None = None,
    eps: float = 1e-12,
    fast: bool | LinearTaps = True,
    chunk_size: int | None = None,
) -> GradStats:
    """Mean, variance, SNR, magnitude, stability, sign consistency and empirical Fisher of the
    per-sample gradients over all samples of ``batches`` (definitions in the module docstring).

    ``fast=True`` (with a :class:`~pure_prune.losses.ModelLoss`) takes the memoised trace of its
    ``model_fn`` (:func:`linear_taps`, traced once per function and shapes) and reduces linear
    layers with matrix products, without forming per-sample gradients; other leaves, or all with
    ``fast=False`` or a plain ``loss_fn``, use chunked ``vmap(grad)`` (``chunk_size`` samples at
    once). Pass a :class:`LinearTaps` to hold a trace yourself.
    Returns a :class:`GradStats` of trees like ``params`` (``None`` at unscored leaves).
    """
    where = "gradient_stats"
    eps = _check_eps(where, eps)
    problem = prepare(where, loss_fn, params, batches, masks)
    sums, squares = _moments(where, problem, fast, ("sum", "sumsq", "abs", "pos", "neg"), chunk_size, True)
    n = problem.samples
    mean = sums["sum"] / n
    q, d, keep = _snr_terms(sums["sum"], sums["sumsq"], n)
    pos, neg = sums["pos"], sums["neg"]
    agree = torch.where(mean > 0, pos, torch.where(mean < 0, neg, n - pos - neg))
    flat = (
        mean,
        d * (keep / n),  # variance
        q / (d + n * eps / keep),  # snr
        sums["abs"] / n,  # magnitude
        mean * mean / (squares / n + eps),  # stability
        agree / n,  # sign consistency
        sums["sumsq"] / n,  # fisher
    )
    return GradStats(
        *(to_tree(problem, split_leaves(problem, v)) for v in flat),
        samples=n,
        batches=len(problem.batches),
    )


def gradient_snr(
    loss_fn: LossFn,
    params: tree.Tree,
    batches: Batches,
    *,
    masks: tree.Tree | None = None,
    eps: float = 1e-12,
    fast: bool | LinearTaps = True,
    chunk_size: int | None = None,
) -> tree.Tree:
    """Signal-to-noise ratio ``mean² / (variance + eps)`` of the per-sample gradients.

    The same number as ``gradient_stats(...).snr``, from the first two moments only. Returns a tree
    like ``params`` (``None`` at unscored leaves). ``fast``/``chunk_size`` as in :func:`gradient_stats`.
    """
    where = "gradient_snr"
    eps = _check_eps(where, eps)
    problem = prepare(where, loss_fn, params, batches, masks)
    sums, _ = _moments(where, problem, fast, ("sum", "sumsq"), chunk_size)
    q, d, keep = _snr_terms(sums["sum"], sums["sumsq"], problem.samples)
    return to_tree(problem, split_leaves(problem, q.div_(d.add_(problem.samples * eps / keep))))


def empirical_fisher(
    loss_fn: LossFn,
    params: tree.Tree,
    batches: Batches,
    *,
    masks: tree.Tree | None = None,
    fast: bool | LinearTaps = True,
    chunk_size: int | None = None,
) -> tree.Tree:
    """Empirical Fisher diagonal ``(1/N) sum_n g_n²`` with the data labels ``y``.

    Returns a tree like ``params`` (``None`` at unscored leaves). For the Fisher with labels drawn
    from the model see :func:`pure_prune.importance.hessian.fisher_diag_mc`.
    """
    where = "empirical_fisher"
    problem = prepare(where, loss_fn, params, batches, masks)
    sums, _ = _moments(where, problem, fast, ("sumsq",), chunk_size)
    return to_tree(problem, split_leaves(problem, sums["sumsq"] / problem.samples))


def _grad_times_theta(where: str, problem: Problem) -> list[torch.Tensor]:
    g = mean_grad(problem)
    check_result(where, problem, g, "gradient")
    return [gi * problem.theta[i] for gi, i in zip(g, problem.scored)]


def snip(
    loss_fn: LossFn, params: tree.Tree, batches: Batches, *, masks: tree.Tree | None = None
) -> tree.Tree:
    """SNIP connection sensitivity ``|g * theta|`` (= per-element first-order Taylor ``|g·w|``).

    ``g`` is the gradient of the loss over all batches at ``theta = W * M``. Returns a tree like
    ``params``, ``None`` at unscored leaves; pruned entries score 0.
    """
    problem = prepare("snip", loss_fn, params, batches, masks)
    return to_tree(problem, [v.abs() for v in _grad_times_theta("snip", problem)])


def taylor(
    loss_fn: LossFn, params: tree.Tree, batches: Batches, *, masks: tree.Tree | None = None
) -> tree.Tree:
    """First-order Taylor importance per weight (Molchanov et al. 2019): ``Σ_b w_b (g_b ⊙ θ)²``,
    the mean over batches weighted by their share of the samples.

    ``g_b`` is the gradient of batch ``b``'s mean loss at ``theta = W * M`` and ``w_b`` the batch's
    share of the samples: the squared loss change of removing each weight, estimated per
    mini-batch and averaged. With one batch it ranks as :func:`snip` does (``(g·θ)²`` against
    ``|g·θ|``); over several it differs, since batch gradients that cancel in SNIP's mean gradient
    still count here. Returns a tree like ``params``, ``None`` at unscored leaves; pruned entries
    score 0.
    """
    problem = prepare("taylor", loss_fn, params, batches, masks)
    theta = [problem.theta[i] for i in problem.scored]
    total = [torch.zeros_like(t) for t in theta]
    for w, g in batch_grads(problem):
        total = [acc + w * (gi * t).square() for acc, gi, t in zip(total, g, theta)]
    check_result("taylor", problem, total, "score")
    return to_tree(problem, total)


def taylor_units(
    loss_fn: LossFn,
    params: tree.Tree,
    batches: Batches,
    units: Units,
    *,
    masks: tree.Tree | None = None,
) -> dict[str, torch.Tensor]:
    """First-order Taylor score per unit: ``|sum of g * theta over the unit's entries|``.

    ``units``: channel groups (``{group name: (size,)}``, summing members marked ``score``) or an int
    axis (``{leaf path: (shape[axis],)}`` per scored leaf). ``g`` as in :func:`snip`.
    """
    problem = prepare("taylor_units", loss_fn, params, batches, masks)
    prod = to_tree(problem, _grad_times_theta("taylor_units", problem))
    return {k: v.abs() for k, v in unit_sum(prod, units, "taylor_units").items()}
