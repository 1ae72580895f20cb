"""Classification losses and metrics as pure tensor functions.

Logits are ``(N, C)`` or ``(N, T, C)`` (a class axis last, e.g. per token); labels are integer
class indices of shape ``logits.shape[:-1]``. Every function is data-independent (no Python
branching on tensor values), so a compiled step compiles once whatever the values; hyper-parameters
are Python floats fixed at trace time.
"""

from __future__ import annotations

import math
import numbers

import torch
from einops import rearrange, reduce
from torch import Tensor

__all__ = ["accuracy", "correct", "cross_entropy", "kd_loss"]


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
    logp = torch.log_softmax(rearrange(logits, "... c -> (...) c"), dim=-1)
    picked = torch.gather(logp, 1, rearrange(labels, "... -> (...) 1").long())
    nll = reduce(-picked, "n 1 -> ", "mean")
    if e == 0.0:
        return nll
    return (1.0 - e) * nll + e * reduce(-logp, "n c -> ", "mean")


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
    """Knowledge distillation (seeds Source C): ``alpha * KL(p_t || p_s) * T**2 + (1 - alpha) * CE``.

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
