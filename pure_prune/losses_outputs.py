"""Losses and metrics of model outputs as pure tensor functions.

Logits are ``(N, C)`` or ``(N, T, C)`` (a class axis last, e.g. per token); labels are integer
class indices of shape ``logits.shape[:-1]``. Every function is data-independent (no Python
branching on tensor values), so a compiled step compiles once whatever the values; hyper-parameters
are Python floats fixed at trace time. :func:`softmax_factor` is the cross-entropy's output-Hessian
factor (the generalized Gauss-Newton matrix of Schraudolph 2002).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import Tensor

__all__ = [
    "accuracy",
    "class_labels",
    "correct",
    "cross_entropy",
    "describe",
    "fits_labels",
    "kd_loss",
    "mse",
    "sample_cross_entropy",
    "softmax_factor",
]


def _check_logits(logits: Tensor, labels: Tensor | None = None) -> None:
    if not isinstance(logits, Tensor) or not logits.is_floating_point() or logits.ndim not in (2, 3):
        what = f"shape {tuple(logits.shape)} {logits.dtype}" if isinstance(logits, Tensor) else repr(logits)
        raise ValueError(f"logits must be a float tensor (N, C) or (N, T, C), got {what}")
    if labels is None:
        return
    if not isinstance(labels, Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        what = labels.dtype if isinstance(labels, Tensor) else repr(labels)
        raise TypeError(f"labels must be an integer tensor of class indices, got {what}")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels of shape {tuple(labels.shape)} do not fit logits of shape {tuple(logits.shape)}: "
            f"expected {tuple(logits.shape[:-1])}"
        )


def _fraction(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def cross_entropy(logits: Tensor, labels: Tensor, *, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy over all label entries, as ``F.cross_entropy(..., label_smoothing=)``.

    Per entry, with ``logp = log_softmax(logits)`` over the ``C`` classes and ``e = label_smoothing``:
    ``(1 - e) * -logp[label] + e * mean_c(-logp[c])``.

    Args:
        logits: float ``(N, C)`` or ``(N, T, C)``.
        labels: integer ``(N,)`` or ``(N, T)``.
    Returns:
        float ``()``.
    """
    _check_logits(logits, labels)
    e = _fraction("label_smoothing", label_smoothing)
    # plain reshapes, not einops: this runs inside every compiled train step, and Dynamo traces
    # einops' pattern parsing anew each time (~0.4 s of a step's compile; bench/compile_latency.py)
    logp = torch.log_softmax(logits.reshape(-1, logits.shape[-1]), dim=-1)
    picked = torch.gather(logp, 1, labels.reshape(-1, 1).long())
    nll = (-picked).mean()
    if e == 0.0:
        return nll
    return (1.0 - e) * nll + e * (-logp).mean()


def correct(logits: Tensor, labels: Tensor) -> Tensor:
    """Number of entries whose arg-max class equals the label: int64 ``()``.

    ``logits`` ``(N, C)`` or ``(N, T, C)``; ``labels`` of shape ``logits.shape[:-1]``. Ties go to the
    lowest class index (``argmax``).
    """
    _check_logits(logits, labels)
    return (logits.argmax(dim=-1) == labels).sum()


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Fraction of label entries predicted correctly (see :func:`correct`): float32 ``()``."""
    return correct(logits, labels).to(torch.float32) / labels.numel()


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    alpha: float = 0.5,
    T: float = 3.0,
) -> Tensor:
    """Knowledge distillation (Hinton, Vinyals & Dean 2015):
    ``alpha * KL(p_t || p_s) * T**2 + (1 - alpha) * CE``.

    ``p_t = softmax(teacher / T)``, ``p_s = softmax(student / T)``; the KL divergence is summed over
    classes and averaged over entries (``F.kl_div(..., reduction="batchmean")`` for ``(N, C)``);
    ``CE = cross_entropy(student_logits, labels)``. The teacher is a target: no gradient flows into it.

    Args:
        student_logits, teacher_logits: float ``(N, C)`` or ``(N, T, C)``, the same shape.
        labels: integer ``student_logits.shape[:-1]``.
    Returns:
        float ``()``.
    """
    _check_logits(student_logits, labels)
    _check_logits(teacher_logits)
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher_logits of shape {tuple(teacher_logits.shape)} differ from "
            f"student_logits of shape {tuple(student_logits.shape)}"
        )
    a = _fraction("alpha", alpha)
    if isinstance(T, bool) or not isinstance(T, numbers.Real) or not (math.isfinite(T) and T > 0):
        raise ValueError(f"T (temperature) must be a finite number > 0, got {T!r}")
    log_ps = torch.log_softmax(student_logits / T, dim=-1)
    log_pt = torch.log_softmax(teacher_logits.detach() / T, dim=-1)
    kl = reduce(torch.exp(log_pt) * (log_pt - log_ps), "... c -> ...", "sum")
    kl = reduce(kl, "... -> ", "mean")
    return a * kl * (T * T) + (1.0 - a) * cross_entropy(student_logits, labels)


def class_labels(outputs: Any, targets: Any) -> bool:
    """Whether ``targets`` are class labels for ``outputs``: an integer (not bool) tensor of shape
    ``outputs.shape[:-1]`` for float ``outputs`` of two or more axes. Decided from dtypes and shapes
    only (no sync, fixed at trace time): where accuracy is a meaningful metric."""
    return (
        isinstance(outputs, Tensor)
        and isinstance(targets, Tensor)
        and outputs.is_floating_point()
        and outputs.ndim >= 2
        and not targets.dtype.is_floating_point
        and not targets.dtype.is_complex
        and targets.dtype != torch.bool
        and tuple(targets.shape) == tuple(outputs.shape[:-1])
    )


def mse(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean squared error over all entries, ``mean((outputs - targets)²)``: float ``()``.

    ``outputs`` and ``targets`` are float tensors of one shape ``(N, ...)``. The loss of sample
    ``n`` is the mean over its entries, so this is also the mean of the sample losses.
    """
    if not isinstance(outputs, Tensor) or not outputs.is_floating_point():
        raise ValueError(f"mse: outputs must be a float tensor, got {describe(outputs)}")
    if not isinstance(targets, Tensor) or not targets.is_floating_point() or targets.shape != outputs.shape:
        raise ValueError(
            f"mse: targets must be a float tensor of the outputs' shape {tuple(outputs.shape)}, "
            f"got {describe(targets)}"
        )
    return (outputs - targets).square().mean()  # not F.mse_loss: it has no forward-over-reverse HVP


def describe(t: Any) -> str:
    """``t`` in an error message: dtype and shape of a tensor, else its repr (80 characters)."""
    return f"{t.dtype} tensor of shape {tuple(t.shape)}" if isinstance(t, Tensor) else f"{t!r:.80}"


def fits_labels(logits: Any, y: Tensor) -> bool:
    """Whether ``logits`` has the shape ``(*y.shape, C)``."""
    return isinstance(logits, Tensor) and logits.ndim == y.ndim + 1 and logits.shape[:-1] == y.shape


def sample_cross_entropy(logits: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
    """Cross-entropy of ``logits`` ``(N, ..., C)`` against int labels ``(N, ...)``, sample by sample.

    The loss of sample ``n`` is ``l_n``, the mean over its label entries (its tokens; one entry for
    ``(N,)`` labels). ``reduction``: ``"mean"`` -> scalar ``(1/N) sum_n l_n`` (= the mean over all
    label entries), ``"sum"`` -> scalar ``sum_n l_n``, ``"none"`` -> ``(N,)`` the ``l_n``. Uses
    ``F.cross_entropy`` (not :func:`cross_entropy`'s gather), the cheaper kernel for ``(N, C)``.
    """
    if not fits_labels(logits, y):
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"model_fn output {shape} does not fit cross-entropy with labels {tuple(y.shape)}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"cross_entropy: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if y.ndim == 1:
        return F.cross_entropy(logits, y, reduction=reduction)
    per_entry = F.cross_entropy(rearrange(logits, "n ... c -> n c ..."), y, reduction="none")
    per_sample = reduce(per_entry, "n ... -> n", "mean")
    return per_sample if reduction == "none" else reduce(per_sample, "n ->", reduction)


def softmax_factor(logits: Tensor) -> Tensor:
    """``(N, C, C)`` for logits ``(N, C)``: row ``c`` of sample ``n`` is ``sqrt(p_nc) (e_c - p_n)``,
    ``p = softmax(logits)``; summing the outer products of the rows gives ``diag(p_n) - p_n p_n^T``,
    the Hessian of the cross-entropy w.r.t. the logits.

    Token-level logits ``(N, T, C)`` (any number of middle axes, flattened to ``T``) give
    ``(N, T*C, T, C)``: row ``(t, c)`` holds the row ``c`` of token ``t``'s factor at token ``t`` and
    zeros at the other tokens, so the rows factor the block-diagonal Hessian of the per-token
    cross-entropies (memory ``N (T C)²``: build it for a few samples at a time).
    """
    p = logits.detach().softmax(-1)
    eye = torch.eye(p.shape[-1], dtype=p.dtype, device=p.device)
    if p.ndim == 2:
        return p.sqrt()[:, :, None] * (eye[None] - p[:, None, :])
    flat = rearrange(p, "n ... c -> n (...) c")
    rows = flat.sqrt()[..., None] * (eye - flat[:, :, None, :])  # (n, t, c, c')
    at = torch.eye(flat.shape[1], dtype=p.dtype, device=p.device)  # (t, t')
    out = rearrange(at[None, :, None, :, None] * rows[:, :, :, None, :], "n t c s k -> n (t c) s k")
    return out.reshape(out.shape[0], out.shape[1], *p.shape[1:])
