"""Losses and metrics as pure tensor functions, and losses built from a model (:class:`ModelLoss`).

Logits are ``(N, C)`` or ``(N, T, C)`` (a class axis last, e.g. per token); labels are integer
class indices of shape ``logits.shape[:-1]``. Every function is data-independent (no Python
branching on tensor values), so a compiled step compiles once whatever the values; hyper-parameters
are Python floats fixed at trace time.

:func:`model_loss` joins a model function ``model_fn(params, x) -> outputs`` and an output loss
(``"cross_entropy"``, ``"mse"`` or any ``(outputs, targets) -> scalar`` mean over rows) into a
``loss_fn(params, batch) -> scalar``, the first argument of every data-driven importance score. It
also carries what the curvature routes need from the outputs: the per-sample loss and a factor of
its Hessian w.r.t. the outputs (the generalized Gauss-Newton matrix of Schraudolph 2002).

The functions live in :mod:`pure_prune.losses_outputs` and the model losses in
:mod:`pure_prune.losses_model`, all re-exported here.
"""

from __future__ import annotations

from pure_prune.losses_model import OUTPUT_LOSSES, ModelLoss, model_loss
from pure_prune.losses_outputs import (
    accuracy,
    class_labels,
    correct,
    cross_entropy,
    kd_loss,
    mse,
    sample_cross_entropy,
    softmax_factor,
)

__all__ = [
    "OUTPUT_LOSSES",
    "ModelLoss",
    "accuracy",
    "class_labels",
    "correct",
    "cross_entropy",
    "kd_loss",
    "model_loss",
    "mse",
    "sample_cross_entropy",
    "softmax_factor",
]
