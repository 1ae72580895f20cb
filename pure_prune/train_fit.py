"""The fit loop: train a fixed-mask model for some epochs with a training step (:func:`fit`).

Progress is reported through a callback (:data:`Progress`): ``progress=True`` writes a plain line
per epoch to stderr; a bar (e.g. tqdm) is the application's, passed in as ``progress=callable``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

import torch
from torch import Tensor

from pure_prune.optim import OptState
from pure_prune.train_types import Batch, Params, Step

__all__ = ["FitResult", "Progress", "fit"]

Progress = Callable[[int, int, str], object]
"""``progress(done, total, label)`` after each epoch: epochs done, epochs asked for, and the epoch's
metrics as ``"name=value ..."`` (as ``pure_prune.llm.calibrate``'s progress callback)."""


class FitResult(NamedTuple):
    """What :func:`fit` returns: the final trees and one dict of the step's metrics per epoch
    (``{"accuracy", "loss"}`` for class labels, ``{"loss"}`` and any extra metrics otherwise)."""

    params: Params
    state: Params
    opt_state: OptState
    history: list[dict[str, float]]


def fit(
    step: Step,
    params: Params,
    state: Params,
    opt_state: OptState,
    masks: Params | None,
    batches_fn: Callable[[int], Iterable[Batch]],
    epochs: int,
    *,
    progress: bool | Progress | None = True,
) -> FitResult:
    """Train for ``epochs`` epochs with a fixed ``masks``; ``batches_fn(epoch)`` yields the batches.

    Each epoch's ``history`` entry holds the step metrics averaged over the epoch, weighted by the
    number of label entries of each batch (training-mode metrics, taken before each update). The
    metrics stay tensors during an epoch (no device sync and no tensor op per step) and are added
    up in float64 every 256 steps (:func:`_fold`). ``progress``: ``True`` writes
    one line per epoch to stderr (``fit: epoch 3/10 accuracy=0.8812 loss=0.4321``), ``False`` or ``None`` nothing;
    a callable is called as ``progress(done, epochs, label)`` after each epoch (:data:`Progress`;
    e.g. an application's tqdm bar). Raises ``ValueError`` when an epoch has no batches.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
    if not callable(batches_fn):
        raise TypeError(f"batches_fn must be callable as batches_fn(epoch), got {batches_fn!r}")
    report = _progress(progress)
    history: list[dict[str, float]] = []
    for epoch in range(epochs):
        sums: dict[str, Tensor] = {}
        count = 0
        pending: list[tuple[Mapping[str, Tensor], int]] = []
        for batch in batches_fn(epoch):
            params, state, opt_state, metrics = step(params, state, opt_state, masks, batch)
            pending.append((metrics, batch[1].numel()))
            if len(pending) == _FOLD:
                count += _fold(sums, pending)
        count += _fold(sums, pending)
        if count == 0:
            raise ValueError(f"fit: batches_fn({epoch}) yielded no batches")
        history.append({k: float(v) / count for k, v in sorted(sums.items())})
        if report is not None:
            report(epoch + 1, epochs, " ".join(f"{k}={v:.4g}" for k, v in history[-1].items()))
    return FitResult(params, state, opt_state, history)


_FOLD = 256  # steps whose metrics are kept before they are added up: one stack per metric per 256 steps


def _fold(sums: dict[str, Tensor], pending: list[tuple[Mapping[str, Tensor], int]]) -> int:
    """Add ``sum_b n_b * metric_b`` over the ``pending`` steps (``(metrics, n)``: a step's metrics
    and its batch's label entries) into ``sums`` (one tensor per name, on the metrics' device, in
    float64 where the device has it), empty ``pending`` and return ``sum_b n_b``.

    One ``stack`` and one product per name for the whole list, instead of two tensor ops per metric
    per step; the list is bounded so that a long epoch keeps few tensors alive. A name that some
    steps leave out adds 0 for those steps (its mean is divided by every step's entries)."""
    for name in {k for metrics, _ in pending for k in metrics}:
        values, entries = zip(*((m[name], n) for m, n in pending if name in m))
        stacked = torch.stack([torch.as_tensor(v).detach().reshape(()) for v in values])
        dtype = torch.float64 if stacked.device.type in ("cpu", "cuda") else torch.float32
        part = stacked.to(dtype) @ torch.tensor(entries, dtype=dtype, device=stacked.device)
        sums[name] = part if name not in sums else sums[name] + part
    count = sum(n for _, n in pending)
    pending.clear()
    return count


def _progress(progress: bool | Progress | None) -> Progress | None:
    """The callback of ``fit``'s ``progress``: ``None`` (quiet), a line per epoch on stderr, or the
    caller's callable."""
    if progress is None or isinstance(progress, bool):
        return _stderr_line if progress else None
    if not callable(progress):
        raise TypeError(
            f"progress must be a bool or a callable progress(done, total, label), got {progress!r:.80}"
        )
    return progress


def _stderr_line(done: int, total: int, label: str) -> None:
    print(f"fit: epoch {done}/{total} {label}", file=sys.stderr, flush=True)
