"""Evaluation over batches: metrics of an eval step summed (:func:`sum_metrics`) and averaged over every
target entry (:func:`evaluate`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import Tensor

from pure_prune.train_types import Batch, EvalStep, Params

__all__ = ["evaluate", "sum_metrics"]


def sum_metrics(
    eval_step: Callable[..., dict[str, Tensor]],
    params: Params,
    state: Params,
    masks: Params | None,
    batches: Iterable[Batch],
    *,
    where: str = "sum_metrics",
) -> dict[str, Tensor]:
    """``eval_step(params, state, masks, batch)``'s metrics summed key by key over ``batches`` (any
    eval step whose metrics add up across batches: :func:`make_eval_step`'s, or a vmapped one's,
    whose tensors are ``(S,)``). Raises ``ValueError`` (prefixed ``where``) when ``batches`` is empty."""
    totals: dict[str, Tensor] | None = None
    for batch in batches:
        metrics = eval_step(params, state, masks, batch)
        totals = metrics if totals is None else {k: totals[k] + metrics[k] for k in totals}
    if totals is None:
        raise ValueError(f"{where}: batches is empty")
    return totals


def evaluate(
    eval_step: EvalStep, params: Params, state: Params, masks: Params | None, batches: Iterable[Batch]
) -> dict[str, float]:
    """Run ``eval_step`` over ``batches`` and return ``{"count", "loss"}`` over all of them, with
    ``"accuracy"`` where the eval step counts correct predictions (class labels) and each extra
    metric's mean (``"<name>_sum"`` -> ``"<name>"``).

    ``loss``, ``accuracy`` and the extra metrics are means over every target entry (not over
    batches); ``count`` is the number of target entries (an int). Raises ``ValueError`` when
    ``batches`` is empty.
    """
    totals = sum_metrics(eval_step, params, state, masks, batches, where="evaluate")
    count = int(totals["count"])
    out = {"accuracy": float(totals["correct"]) / count} if "correct" in totals else {}
    out["count"] = count
    out["loss"] = float(totals["loss_sum"]) / count
    out.update(
        {
            k[: -len("_sum")]: float(v) / count
            for k, v in totals.items()
            if k.endswith("_sum") and k != "loss_sum"
        }
    )
    return out
