"""Losses built from a model: :func:`model_loss` and :class:`ModelLoss`.

:func:`model_loss` joins a model function ``model_fn(params, x) -> outputs`` and an output loss
(``"cross_entropy"``, ``"mse"`` or any ``(outputs, targets) -> scalar`` mean over rows) into a
``loss_fn(params, batch) -> scalar``, the first argument of every data-driven importance score. It
also carries what the curvature routes need from the outputs: the per-sample loss and a factor of
its Hessian w.r.t. the outputs (the generalized Gauss-Newton matrix of Schraudolph 2002).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import reduce
from torch import Tensor
from torch.func import grad, hessian, vmap

from pure_prune import tree
from pure_prune.losses_outputs import describe, fits_labels, mse, sample_cross_entropy, softmax_factor

__all__ = ["OUTPUT_LOSSES", "ModelLoss", "model_loss"]

OUTPUT_LOSSES = ("cross_entropy", "mse")
"""The output losses :func:`model_loss` knows by name (closed-form output-Hessian factors)."""


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
                    f"for cross-entropy), got {describe(y)}"
                )
            return y.long()
        if self.output_loss == "mse" and (not isinstance(y, Tensor) or not y.is_floating_point()):
            raise TypeError(f"{where}: {label} must be a float tensor (targets for mse), got {describe(y)}")
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
            if not fits_labels(outputs, y) or not outputs.is_floating_point():
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
                    f"{where}: output loss {self.name} must return a float scalar, got {describe(value)}"
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
