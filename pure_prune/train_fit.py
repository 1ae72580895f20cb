"""The fit loop: train a fixed-mask model for some epochs with a training step (:func:`fit`).

Progress is reported through a callback (:data:`Progress`): ``progress=True`` writes a plain line
per epoch to stderr; a bar (e.g. tqdm) is the application's, passed in as ``progress=callable``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor

from pure_prune import tree
from pure_prune.optim import OptState
from pure_prune.train_types import Batch, Params, Step

__all__ = ["FOLD", "FitResult", "MetricSums", "Progress", "fit", "in_place_step", "own_copies"]

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
    up in float64 every 256 steps (:class:`MetricSums`). ``progress``: ``True`` writes
    one line per epoch to stderr (``fit: epoch 3/10 accuracy=0.8812 loss=0.4321``), ``False`` or ``None`` nothing;
    a callable is called as ``progress(done, epochs, label)`` after each epoch (:data:`Progress`;
    e.g. an application's tqdm bar). Raises ``ValueError`` when an epoch has no batches.

    A step with an ``in_place`` variant (:func:`in_place_step`: the compiled steps of
    :func:`pure_prune.train.make_step`) is run through it on copies of ``params`` and ``opt_state``
    that ``fit`` makes once (:func:`own_copies`): each step then writes into those copies instead
    of allocating new trees. The results are the same, bit for bit, and the caller's trees are
    never written.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
    if not callable(batches_fn):
        raise TypeError(f"batches_fn must be callable as batches_fn(epoch), got {batches_fn!r}")
    report = _progress(progress)
    in_place = in_place_step(step, params, opt_state) if epochs else None
    if in_place is not None:  # its own copies, which the steps then update in place
        params, opt_state = own_copies(params), own_copies(opt_state)
    history: list[dict[str, float]] = []
    for epoch in range(epochs):
        sums = MetricSums()
        for batch in batches_fn(epoch):
            if in_place is not None:
                state, metrics = in_place(params, state, opt_state, masks, batch)
            else:
                params, state, opt_state, metrics = step(params, state, opt_state, masks, batch)
            sums.add(metrics, batch[1].numel())
        if sums.count == 0:
            raise ValueError(f"fit: batches_fn({epoch}) yielded no batches")
        history.append({k: float(v) for k, v in sums.means().items()})
        if report is not None:
            report(epoch + 1, epochs, " ".join(f"{k}={v:.4g}" for k, v in history[-1].items()))
    return FitResult(params, state, opt_state, history)


class MetricSums:
    """An epoch's step metrics added up, each weighted by its batch's label entries:
    ``sums.add(metrics, entries)`` per step, then ``sums.means()`` ``{name: sum_b n_b * metric_b /
    sum_b n_b}``, sorted by name, in float64 where the device has it (``cuda``, ``cpu``), else float32.

    A metric may be a 0-d tensor (one model) or of any fixed shape, e.g. ``(S,)`` for a stack of
    ``S`` seeds (:func:`pure_prune.seeds.fit_seeds`). The metrics stay tensors (no device sync,
    no tensor op per step) and are added up every :data:`FOLD` steps with one ``stack`` and one
    product per name, so that a long epoch keeps few tensors alive. A name that some steps leave
    out adds 0 for those steps (its mean is divided by every step's entries). ``count``: the
    entries added so far.
    """

    def __init__(self) -> None:
        self.count = 0
        self._sums: dict[str, Tensor] = {}
        self._pending: list[tuple[Mapping[str, Tensor], int]] = []

    def add(self, metrics: Mapping[str, Tensor], entries: int) -> None:
        """Add one step's ``metrics`` (tensors of one shape per name), weighted by ``entries``."""
        self._pending.append((metrics, entries))
        self.count += entries
        if len(self._pending) == FOLD:
            self._fold()

    def means(self) -> dict[str, Tensor]:
        """``{name: weighted mean}`` over the steps added (``ZeroDivisionError`` if none were)."""
        self._fold()
        if self.count == 0:
            raise ZeroDivisionError("MetricSums.means: no step was added")
        return {k: v / self.count for k, v in sorted(self._sums.items())}

    def _fold(self) -> None:
        pending = self._pending
        for name in {k for metrics, _ in pending for k in metrics}:
            values, entries = zip(*((m[name], n) for m, n in pending if name in m))
            stacked = torch.stack([torch.as_tensor(v).detach() for v in values])
            dtype = torch.float64 if stacked.device.type in ("cpu", "cuda") else torch.float32
            weights = torch.tensor(entries, dtype=dtype, device=stacked.device)
            part = torch.tensordot(weights, stacked.to(dtype), dims=1)
            self._sums[name] = part if name not in self._sums else self._sums[name] + part
        pending.clear()


FOLD = 256
"""Steps whose metrics :class:`MetricSums` keeps before it adds them up."""


def in_place_step(step: Any, params: Params, opt_state: OptState) -> Callable[..., Any] | None:
    """``step.in_place`` (:func:`pure_prune.train.make_step`'s compiled steps have one: see
    :func:`pure_prune.train_steps.in_place_body`) when ``params`` and ``opt_state`` hold only tensors
    that autograd does not track, else ``None`` (the step is then called as it is)."""
    in_place = getattr(step, "in_place", None)
    if not callable(in_place):
        return None
    leaves = [*tree.leaves(params), *tree.leaves(opt_state)]
    if not all(isinstance(x, Tensor) and not x.requires_grad for x in leaves):
        return None
    return in_place


def own_copies(trees: Any) -> Any:
    """``trees`` with every tensor leaf cloned into memory of its own (dense, even where the leaf was
    an expanded view), so that in-place steps write nowhere else."""
    return tree.map(
        lambda x: x.clone(memory_format=torch.contiguous_format) if isinstance(x, Tensor) else x, trees
    )


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
