"""Pure masked train and eval steps, evaluation over batches, and a fit loop.

A step is a pure function of its inputs; masks are *inputs*, never constants, so one compiled step
serves every mask (and every learning rate set with ``optim.set_lr``) without recompiling::

    step = make_step(models.get("mlp"), losses.cross_entropy, optim.sgd(0.1, momentum=0.9))
    params, state, opt_state, metrics = step(params, state, opt_state, masks, (x, y))

Training minimises ``L(W ⊙ M)``: the forward pass sees the masked params, the
gradient flows through the masked product (so it is 0 at pruned entries), the optimizer update is
masked, and the params are re-masked after the update. Hence after every step each pruned weight is
exactly 0.0, even one that was non-zero before the step (``optim`` alone only guarantees zero
updates and zero optimizer state at pruned entries). ``premasked=True`` skips the forward pass's
masking for params that are already zero at pruned entries (same results; see :func:`make_step`).

A batch is a tuple ``(x, y, *extra)``: ``x`` goes to the model, ``loss(out, y, *extra)`` must
return the float ``()`` mean over the entries of ``y`` (any loss: ``losses.cross_entropy``,
``losses.mse`` for regression, ...). Accuracy is reported only where ``y`` holds class labels
(``losses.class_labels``: integer, of shape ``out.shape[:-1]``; decided from dtypes and shapes, so
a compiled step never branches on values); ``metrics={name: fn(out, y, *extra) -> mean}`` adds
others. Extra entries carry e.g. teacher logits for distillation:
``loss = lambda s, y, t: losses.kd_loss(s, t, y)``.

The pieces live in modules of their own, all re-exported here: :mod:`pure_prune.train_steps` (building
the steps), :mod:`pure_prune.train_checks` (their checks), :mod:`pure_prune.train_eval` (evaluation
over batches), :mod:`pure_prune.train_fit` (the fit loop), :mod:`pure_prune.train_types` (the types).
"""

from __future__ import annotations

from pure_prune.train_eval import evaluate, sum_metrics
from pure_prune.train_fit import FitResult, MetricSums, fit, in_place_step, own_copies
from pure_prune.train_fit import Progress as Progress
from pure_prune.train_steps import in_place_body, make_eval_step, make_step
from pure_prune.train_types import Batch as Batch
from pure_prune.train_types import Compiler as Compiler
from pure_prune.train_types import EvalStep as EvalStep
from pure_prune.train_types import Loss as Loss
from pure_prune.train_types import Metrics as Metrics
from pure_prune.train_types import Params as Params
from pure_prune.train_types import Step as Step

__all__ = [
    "FitResult", "MetricSums", "evaluate", "fit", "in_place_body", "in_place_step", "make_eval_step", "make_step",
    "own_copies", "sum_metrics",
]  # fmt: skip
