"""Shared machinery of the gradient and Hessian scores: checked inputs, the loss, per-sample moments.

This module states the conventions and re-exports the machinery, which lives in
:mod:`~pure_prune.importance.problem_inputs` (input checks, :class:`Problem`, leaf layout),
:mod:`~pure_prune.importance.linear_fast_path` (:func:`linear_taps`),
:mod:`~pure_prune.importance.grad_moments` (gradients and per-sample moments) and
:mod:`~pure_prune.importance.unit_sums` (:func:`unit_sum`).

Every score in :mod:`pure_prune.importance.gradient` and :mod:`pure_prune.importance.hessian` takes

* ``loss_fn(params, batch) -> scalar``: the mean loss over the batch's rows, a pure function
  (twice differentiable in ``params`` for the second-order scores). A plain callable gets every
  route the loss alone allows (gradients, HVPs, exact and Hutchinson Hessian diagonals, per-sample
  statistics by ``vmap``); a :class:`~pure_prune.losses.ModelLoss` from
  ``losses.model_loss(model_fn, output_loss)`` also gets the routes that need the model's outputs
  (GGN and Monte-Carlo Fisher diagonals, the linear-layer fast path). Samples must not interact
  (BatchNorm in eval mode, state closed over by the caller).
* ``params``: a canonical dict tree of float tensors.
* ``batches``: one batch or a non-empty sequence (list, or tuple of non-tensors) of them. A batch
  is any pytree of tensors with one common leading sample axis of ``N > 0`` rows: ``(x, y)``, a
  dict for a language model, ... (a single batch whose top level holds no tensor, such as
  ``((x1, x2), y_tree)``, must be wrapped in a list). For a ``ModelLoss``, ``batch[keys[0]]`` is
  the model input and ``batch[keys[1]]`` the targets (class labels for cross-entropy).
* ``masks``: ``None`` (every leaf is scored) or a tree like ``params``: a bool tensor of the leaf's
  shape where the leaf is scored, ``None`` where it is not. Derivatives are taken at the masked
  parameters ``theta = W * M`` and with respect to ``theta``, so pruned entries get scores too.

Over several batches, batches are weighted by their row count ``N`` (the loss of all samples when
``loss_fn`` is a mean over rows). A *sample* of the per-sample statistics is one row of every
leaf of the batch, scored as a batch of one (``loss_fn(params, row[None])``): for token-level
cross-entropy one sequence, whose loss is the mean over its tokens.

Per-sample moments (:func:`batch_moments`) have two routes that give the same numbers:

* generic: ``vmap(grad)`` of the one-row loss over chunks of rows, reduced chunk by chunk;
* linear fast path (``ModelLoss`` only): a linear layer ``z = a W^T (+ b)`` has per-sample gradient
  ``g_n ⊗ a_n`` where ``g_n = dl_n/dz_n``, so ``sum_n f(g_n ⊗ a_n) = f(g)^T f(a)`` for ``f`` in
  ``x, x², |x|`` and the sign indicators (signs of products are products of signs).
  :func:`linear_taps` traces ``model_fn`` once (``make_fx``), finds such layers and builds a
  function that also returns each layer's input ``a`` and adds a zero "tap" to its output ``z``, so
  one backward pass to the taps yields every ``g``. Leaves it does not cover take the generic
  route. (The fast route calls ``torch.autograd.grad`` on the traced graph: measured,
  ``torch.func.grad`` costs ~0.4 ms more per call on the digits MLP, half a forward+backward.)

The default ``fast=True`` takes its trace from :data:`~pure_prune.importance.trace_cache.TRACES`
(per ``model_fn`` and shapes, bounded), so only a process's first call per shape traces; pass a
:class:`LinearTaps` to hold a trace yourself. The moments run eagerly on purpose: on the digits MLP
of ``bench/importance.py`` they cost 1.33x one forward+backward, against 1.36x in FLOPs (a second
matrix product per layer for ``g²``), and tracing the tapped forward, backward and products into
one ``make_fx`` graph made the whole ``gradient_snr`` call only ~3% faster; compiling that graph
with inductor made it no faster, after a compile of 13-36 s. The scores are eager functions; they also run under
``torch.compile`` (with graph breaks at the input checks).
"""

from __future__ import annotations

from pure_prune.importance.grad_moments import (
    batch_grads,
    batch_loss,
    batch_moments,
    mean_grad,
    per_sample_chunks,
)
from pure_prune.importance.linear_fast_path import (
    LinearLayer,
    LinearTaps,
    cached_taps,
    fast_layers,
    iter_batches,
    linear_grads,
    linear_taps,
    resolve_taps,
)
from pure_prune.importance.problem_inputs import (
    Batch,
    Batches,
    LossFn,
    Problem,
    auto_chunk,
    check_chunk,
    check_finite,
    check_result,
    check_same_tree,
    checked_outputs,
    flat_rows,
    flatten_leaves,
    mask_leaves,
    merge,
    need_model,
    prepare,
    rows_of,
    split_leaves,
    to_tree,
)
from pure_prune.importance.unit_sums import Units, unit_sum

__all__ = [
    "Batch",
    "Batches",
    "LinearLayer",
    "LinearTaps",
    "LossFn",
    "Problem",
    "Units",
    "auto_chunk",
    "batch_grads",
    "batch_loss",
    "batch_moments",
    "check_chunk",
    "check_finite",
    "check_result",
    "check_same_tree",
    "cached_taps",
    "checked_outputs",
    "fast_layers",
    "flat_rows",
    "flatten_leaves",
    "iter_batches",
    "linear_grads",
    "linear_taps",
    "mask_leaves",
    "mean_grad",
    "merge",
    "need_model",
    "per_sample_chunks",
    "prepare",
    "resolve_taps",
    "rows_of",
    "split_leaves",
    "to_tree",
    "unit_sum",
]
