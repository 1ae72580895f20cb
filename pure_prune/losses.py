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
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import Tensor
from torch.func import grad, hessian, vmap

from pure_prune import tree

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

OUTPUT_LOSSES = ("cross_entropy", "mse")
"""The output losses :func:`model_loss` knows by name (closed-form output-Hessian factors)."""


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
        raise ValueError(f"mse: outputs must be a float tensor, got {_describe(outputs)}")
    if not isinstance(targets, Tensor) or not targets.is_floating_point() or targets.shape != outputs.shape:
        raise ValueError(
            f"mse: targets must be a float tensor of the outputs' shape {tuple(outputs.shape)}, "
            f"got {_describe(targets)}"
        )
    return (outputs - targets).square().mean()  # not F.mse_loss: it has no forward-over-reverse HVP


def _describe(t: Any) -> str:
    return f"{t.dtype} tensor of shape {tuple(t.shape)}" if isinstance(t, Tensor) else f"{t!r:.80}"


def _fits(logits: Any, y: Tensor) -> bool:
    """Whether ``logits`` has the shape ``(*y.shape, C)``."""
    return isinstance(logits, Tensor) and logits.ndim == y.ndim + 1 and logits.shape[:-1] == y.shape


def sample_cross_entropy(logits: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
    """Cross-entropy of ``logits`` ``(N, ..., C)`` against int labels ``(N, ...)``, sample by sample.

    The loss of sample ``n`` is ``l_n``, the mean over its label entries (its tokens; one entry for
    ``(N,)`` labels). ``reduction``: ``"mean"`` -> scalar ``(1/N) sum_n l_n`` (= the mean over all
    label entries), ``"sum"`` -> scalar ``sum_n l_n``, ``"none"`` -> ``(N,)`` the ``l_n``. Uses
    ``F.cross_entropy`` (not :func:`cross_entropy`'s gather), the cheaper kernel for ``(N, C)``.
    """
    if not _fits(logits, y):
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


@dataclass(frozen=True, eq=False)
class ModelLoss:
    """``loss_fn(params, batch) -> scalar`` built from a model and an output loss (:func:`model_loss`).

    ``batch[keys[0]]`` is the model input ``x`` (any pytree ``model_fn`` takes, rows on axis 0) and
    ``batch[keys[1]]`` the targets ``y`` (``keys=(0, 1)``: a ``(x, y, *extra)`` tuple; string keys:
    a dict batch such as ``{"tokens": ..., "labels": ...}``). The value is
    ``output_loss(model_fn(params, x), y)``, the mean over the ``N`` rows of the per-sample losses
    ``l_n``:

    * ``"cross_entropy"``: integer labels ``(N,)`` or ``(N, T)`` (token-level, ``l_n`` the mean over
      tokens), outputs ``(*y.shape, C)`` logits (:func:`sample_cross_entropy`);
    * ``"mse"``: float targets of the outputs' shape, ``l_n`` the mean squared error over the
      sample's entries (:func:`mse`);
    * a callable ``(outputs, targets) -> scalar``: it must be the mean over rows of a per-row loss
      (``output_loss(o, y) == mean_n output_loss(o[n:n+1], y[n:n+1])``) and twice differentiable
      in the outputs.

    Compared by identity (hashable): a trace cached for one ``ModelLoss`` or ``model_fn`` serves
    every call with it.
    """

    model_fn: Callable[[Any, Any], Tensor]
    output_loss: str | Callable[[Tensor, Any], Tensor]
    keys: tuple[Hashable, Hashable] = (0, 1)

    def __call__(self, params: Any, batch: Any) -> Tensor:
        x, y = self.split(batch)
        return self.loss(self.model_fn(params, x), y)

    @property
    def name(self) -> str:
        """The output loss's name (a callable's ``__name__``)."""
        out = self.output_loss
        return out if isinstance(out, str) else getattr(out, "__name__", type(out).__name__)

    @property
    def classes(self) -> bool:
        """Whether the targets are class labels (cross-entropy)."""
        return self.output_loss == "cross_entropy"

    def split(self, batch: Any) -> tuple[Any, Any]:
        """``(batch[keys[0]], batch[keys[1]])``: the model input and the targets."""
        try:
            return batch[self.keys[0]], batch[self.keys[1]]
        except (KeyError, IndexError, TypeError) as err:
            raise ValueError(
                f"model_loss: batch ({type(batch).__name__}) has no entries {self.keys!r} (model input, "
                f"targets): {err!r}"
            ) from None

    def join(self, batch: Any, x: Any, y: Any) -> Any:
        """A batch like ``batch`` with its model input replaced by ``x`` and its targets by ``y``."""
        out = dict(batch) if isinstance(batch, Mapping) else list(batch)
        out[self.keys[0]], out[self.keys[1]] = x, y
        return tuple(out) if isinstance(batch, tuple) else out

    def loss(self, outputs: Tensor, targets: Any, reduction: str = "mean") -> Tensor:
        """The output loss: ``"mean"`` over the rows (the batch loss) or ``"sum"`` of the sample
        losses; ``"none"`` gives the ``(N,)`` sample losses (cross-entropy and MSE only)."""
        if self.output_loss == "cross_entropy":
            return sample_cross_entropy(outputs, targets, reduction)
        if self.output_loss == "mse":
            if reduction == "mean":
                return mse(outputs, targets)
            per_row = reduce((outputs - targets).square(), "n ... -> n", "mean")
            return per_row if reduction == "none" else per_row.sum()
        if reduction == "none":
            raise ValueError(f"model_loss: a callable output loss ({self.name}) has no per-row reduction")
        value = self.output_loss(outputs, targets)
        return value if reduction == "mean" else value * outputs.shape[0]

    def check_targets(self, where: str, label: str, y: Any) -> Any:
        """Check a batch's targets (``label`` names them in errors); returns them (int labels as int64)."""
        if self.output_loss == "cross_entropy":
            if not isinstance(y, Tensor) or y.dtype not in (torch.int64, torch.int32) or y.ndim == 0:
                raise TypeError(
                    f"{where}: {label} must be an int64 tensor of shape (N,) or (N, ...) (class labels "
                    f"for cross-entropy), got {_describe(y)}"
                )
            return y.long()
        if self.output_loss == "mse" and (not isinstance(y, Tensor) or not y.is_floating_point()):
            raise TypeError(f"{where}: {label} must be a float tensor (targets for mse), got {_describe(y)}")
        return y

    def check(self, where: str, outputs: Any, targets: Any) -> Tensor:
        """Check that a model output fits the output loss with ``targets`` (outside any transform);
        returns ``outputs``. Cross-entropy: float logits ``(*y.shape, C)`` and labels in ``[0, C)``;
        MSE: float outputs of the targets' shape; a callable: a float scalar value."""
        if not isinstance(outputs, Tensor):
            what = "a logits tensor (N, C)" if self.classes else "one output tensor (N, ...)"
            raise TypeError(f"{where}: model_fn must return {what}, got {type(outputs).__name__}")
        if self.output_loss == "cross_entropy":
            y = targets
            if not _fits(outputs, y) or not outputs.is_floating_point():
                raise ValueError(
                    f"{where}: model_fn output has shape {tuple(outputs.shape)} ({outputs.dtype}); "
                    f"cross-entropy with labels of shape {tuple(y.shape)} needs float logits of shape "
                    f"{(*y.shape, 'C')}"
                )
            n_cls = outputs.shape[-1]
            lo, hi = (int(v) for v in torch.aminmax(y))
            if lo < 0 or hi >= n_cls:
                raise ValueError(f"{where}: labels y span [{lo}, {hi}], the model output has {n_cls} classes")
        elif self.output_loss == "mse":
            if not outputs.is_floating_point() or outputs.shape != targets.shape:
                raise ValueError(
                    f"{where}: model_fn output has shape {tuple(outputs.shape)} ({outputs.dtype}); mse "
                    f"needs float outputs of the targets' shape {tuple(targets.shape)}"
                )
        else:
            value = self.output_loss(outputs, targets)
            if not isinstance(value, Tensor) or value.ndim != 0 or not value.is_floating_point():
                raise ValueError(
                    f"{where}: output loss {self.name} must return a float scalar, got {_describe(value)}"
                )
        return outputs

    def output_grad(self, outputs: Tensor, targets: Any) -> Tensor:
        """Gradient of the batch loss w.r.t. the outputs (detached), shape of ``outputs``."""
        if self.output_loss == "cross_entropy":
            onehot = F.one_hot(targets, outputs.shape[-1]).to(outputs.dtype)
            return (outputs.detach().softmax(-1) - onehot) / targets.numel()
        return grad(lambda o: self.loss(o, targets))(outputs.detach())

    def ggn_entries(self, outputs: Tensor, targets: Any) -> int:
        """The divisor of :meth:`hessian_factor`: labels (``N T``) for cross-entropy, output entries
        for MSE, rows ``N`` for a callable."""
        if self.output_loss == "cross_entropy":
            return targets.numel()
        return outputs.numel() if self.output_loss == "mse" else outputs.shape[0]

    def hessian_factor(self, outputs: Tensor, targets: Any) -> Tensor:
        """``rows`` ``(N, R, *outputs.shape[1:])`` with ``sum_r rows[n, r] ⊗ rows[n, r] =
        (E / N) d²l_n/do_n²`` (``E`` = :meth:`ggn_entries`), so that the GGN diagonal of the batch
        loss is ``sum_n sum_r (J_n^T rows[n, r])² / E``.

        Cross-entropy: :func:`softmax_factor`. MSE: ``sqrt(2) I`` (``R`` = the entries per sample). A
        callable: the Hessian of the one-row loss w.r.t. the row's outputs (``torch.func.hessian``,
        vmapped over rows) factored by ``eigh`` as ``V sqrt(max(λ, 0))`` (negative curvature of a
        non-convex output loss is dropped: the GGN is defined for convex output losses).
        """
        if self.output_loss == "cross_entropy":
            return softmax_factor(outputs)
        shape = outputs.shape[1:]
        k = math.prod(shape)
        if self.output_loss == "mse":
            eye = torch.eye(k, dtype=outputs.dtype, device=outputs.device) * math.sqrt(2.0)
            return eye.reshape(k, *shape).expand(outputs.shape[0], k, *shape)

        def one(o: Tensor, y: Any) -> Tensor:
            return self.output_loss(o[None], tree.map(lambda t: t[None], y))

        h = vmap(hessian(one))(outputs.detach(), targets).reshape(outputs.shape[0], k, k)
        lam, vecs = torch.linalg.eigh((h + h.transpose(1, 2)) / 2)
        rows = (vecs * lam.clamp_min(0).sqrt()[:, None, :]).transpose(1, 2)  # (N, R = k, k)
        return rows.reshape(outputs.shape[0], k, *shape)


def model_loss(
    model_fn: Callable[[Any, Any], Tensor],
    output_loss: str | Callable[[Tensor, Any], Tensor] = "cross_entropy",
    *,
    keys: Sequence[Hashable] = (0, 1),
) -> ModelLoss:
    """``loss_fn(params, batch) = output_loss(model_fn(params, batch[keys[0]]), batch[keys[1]])``.

    ``output_loss``: ``"cross_entropy"`` (integer labels), ``"mse"`` (float targets) or a callable
    ``(outputs, targets) -> scalar`` mean over rows, twice differentiable in the outputs. See
    :class:`ModelLoss` for the batch layout and what the scores gain from it (the GGN and
    Monte-Carlo Fisher diagonals, the linear-layer fast path).
    """
    if not callable(model_fn):
        raise TypeError(f"model_loss: model_fn must be callable, got {type(model_fn).__name__}")
    if isinstance(output_loss, str):
        if output_loss not in OUTPUT_LOSSES:
            raise ValueError(
                f"model_loss: output_loss must be one of {OUTPUT_LOSSES} or a callable, got {output_loss!r}"
            )
    elif not callable(output_loss):
        raise TypeError(
            f"model_loss: output_loss must be a name or a callable, got {type(output_loss).__name__}"
        )
    keys = tuple(keys) if isinstance(keys, (list, tuple)) else keys
    if not isinstance(keys, tuple) or len(keys) != 2 or keys[0] == keys[1]:
        raise ValueError(
            f"model_loss: keys must be two distinct batch keys (model input, targets), got {keys!r}"
        )
    for k in keys:
        if isinstance(k, bool) or not isinstance(k, (int, str)):
            raise TypeError(f"model_loss: a batch key must be an int index or a str, got {k!r}")
    return ModelLoss(model_fn, output_loss, keys)
