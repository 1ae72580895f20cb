"""What every pruning algorithm shares: the carry between rounds and the training callback.

An algorithm is a sequence of *rounds*. A round takes a :class:`Carry` (the trees that survive from
one round to the next), changes the masks on the host (score, select, rewind, refill, ...), trains
with a :data:`TrainFn` and returns the next :class:`Carry`. Everything a round needs is in its
arguments, so a runner can checkpoint the carry after any round and resume with the same result.

Training is injected: ``train_fn(params, state, opt_state, masks, *, start, stop, key, step=None,
batch_map=None) -> Trained`` trains epochs ``start .. stop-1`` (the data order of epoch ``e`` comes
from ``key`` and ``e``). :func:`fit_trainer` builds one from an
:class:`~pure_prune.app.experiment.Experiment`; :func:`no_training` returns its inputs (for property
tests of the mask logic, which then run in milliseconds).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, Protocol

import torch
from tqdm import tqdm

from pure_prune import mask, train
from pure_prune.app.experiment import Experiment
from pure_prune.optim import Optimizer

__all__ = [
    "Carry",
    "RoundOut",
    "ScoreFn",
    "TrainFn",
    "Trained",
    "fit_trainer",
    "carry_out",
    "fresh_opt_state",
    "no_training",
    "train_fresh",
]

Batch = tuple[torch.Tensor, ...]
ScoreFn = Callable[[Any, Any, Any, int], Any]
"""``score_fn(params, state, masks, key) -> scores``: an element score tree (like ``masks``) or unit
scores ``{group name: (size,)}``; higher = more important."""


class Carry(NamedTuple):
    """The trees a round hands to the next one.

    ``params``/``state``/``opt_state``/``masks`` as in :mod:`pure_prune.train`. ``rewind``:
    ``{"params": ..., "state": ...}`` to rewind to (lottery tickets), or ``None``. ``extra``: a
    dict of method-specific trees (e.g. RSST's chosen units, the distillation teacher); ``{}``.
    """

    params: Any
    state: Any
    opt_state: Any
    masks: Any
    rewind: Any = None
    extra: Any = None


class RoundOut(NamedTuple):
    """One round's result: the next carry, the per-epoch training history and the seconds spent
    choosing the new masks (``None`` when the round did not prune)."""

    carry: Carry
    history: list[dict[str, float]]
    prune_seconds: float | None


class Trained(NamedTuple):
    """What a :data:`TrainFn` returns: the trees after training and one metrics dict per epoch."""

    params: Any
    state: Any
    opt_state: Any
    history: list[dict[str, float]]


class TrainFn(Protocol):
    """Train epochs ``start .. stop-1`` with ``masks`` fixed; see the module docstring."""

    def __call__(
        self,
        params: Any,
        state: Any,
        opt_state: Any,
        masks: Any,
        *,
        start: int,
        stop: int,
        key: int,
        step: train.Step | None = None,
        batch_map: Callable[[Batch], Batch] | None = None,
    ) -> Trained: ...


def no_training(
    params: Any,
    state: Any,
    opt_state: Any,
    masks: Any,
    *,
    start: int,
    stop: int,
    key: int,
    step: train.Step | None = None,
    batch_map: Callable[[Batch], Batch] | None = None,
) -> Trained:
    """A :data:`TrainFn` that trains nothing: returns its trees unchanged and an empty history."""
    return Trained(params, state, opt_state, [])


def _check_range(start: int, stop: int) -> None:
    for name, v in (("start", start), ("stop", stop)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} epoch must be an int >= 0, got {v!r}")
    if stop < start:
        raise ValueError(f"stop epoch {stop} is before start epoch {start}")


def fit_trainer(
    exp: Experiment,
    *,
    evaluate: bool = False,
    progress: bool = False,
    desc: str = "train",
) -> TrainFn:
    """A :data:`TrainFn` over ``exp``'s training split: one :func:`pure_prune.train.fit` epoch at a time.

    Epoch ``e`` is shuffled by ``data.epoch_key(key, e)`` (so training epochs ``k..E-1`` after a
    rewind sees the same data order as the epochs ``k..E-1`` of an uninterrupted run). ``step``
    defaults to ``exp.step``; ``batch_map`` transforms every batch (e.g. appends teacher logits).
    With ``evaluate`` each epoch's history entry also holds ``test_accuracy``/``test_loss`` from
    ``exp.evaluate``, and ``seconds`` the epoch's training time (a first epoch includes compiling a
    new step). ``progress`` shows one tqdm bar (``desc``) over the epochs. The params are
    masked once on entry (``mask.apply``), so every step sees params that are zero at the pruned
    entries: a step built with ``train.make_step(..., premasked=True)`` (as the runner builds
    them) gives the results of an unpremasked one.
    """

    def train_fn(
        params: Any,
        state: Any,
        opt_state: Any,
        masks: Any,
        *,
        start: int,
        stop: int,
        key: int,
        step: train.Step | None = None,
        batch_map: Callable[[Batch], Batch] | None = None,
    ) -> Trained:
        _check_range(start, stop)
        run = exp.step if step is None else step
        if masks is not None:  # zero at every pruned entry on entry: a premasked step may rely on it
            params = mask.apply(params, masks)
        epoch_batches = exp.train_batches(key)

        def batches_fn(epoch: int) -> Iterator[Batch]:
            it = epoch_batches(epoch)
            return it if batch_map is None else map(batch_map, it)

        history: list[dict[str, float]] = []
        bar = tqdm(range(start, stop), desc=desc, unit="epoch", disable=not progress, leave=False)
        for epoch in bar:
            t0 = time.perf_counter()
            res = train.fit(
                run, params, state, opt_state, masks, lambda _, e=epoch: batches_fn(e), 1, progress=False
            )
            params, state, opt_state = res.params, res.state, res.opt_state
            entry = {"epoch": float(epoch), **res.history[0], "seconds": time.perf_counter() - t0}
            if evaluate:
                test = exp.evaluate(params, state, masks)
                entry.update(test_accuracy=test["accuracy"], test_loss=test["loss"])
            history.append(entry)
            bar.set_postfix({k: round(v, 4) for k, v in entry.items() if k != "epoch"})
        return Trained(params, state, opt_state, history)

    return train_fn


def fresh_opt_state(optimizer: Optimizer, params: Any, count: int = 0) -> dict[str, Any]:
    """``optimizer.init(params)`` with the step counter at ``count`` (the learning-rate schedule's
    position: a round that rewinds to epoch ``k`` starts at ``k · steps_per_epoch``)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be an int >= 0, got {count!r}")
    st = optimizer.init(params)
    return {**st, "count": torch.full_like(st["count"], count)}


def train_fresh(
    train_fn: TrainFn,
    optimizer: Optimizer,
    params: Any,
    state: Any,
    masks: Any,
    *,
    stop: int,
    key: int,
    **train_kw: Any,
) -> Trained:
    """``train_fn`` over epochs ``0 .. stop-1`` from a fresh ``optimizer.init(params)`` state.

    ``params`` should already be masked; ``train_kw`` (``step``, ``batch_map``) is passed through.
    Returns the :class:`Trained` trees and history."""
    return train_fn(params, state, optimizer.init(params), masks, start=0, stop=stop, key=key, **train_kw)


def carry_out(
    out: Trained, masks: Any, *, rewind: Any = None, extra: Any = None, seconds: float | None = None
) -> RoundOut:
    """The :class:`RoundOut` of a round that trained to ``out`` under ``masks``: the carry holds
    ``out``'s trees with ``masks``/``rewind``/``extra``, the history is ``out.history`` (a new list)
    and ``seconds`` the time spent choosing the masks (``None``: the round did not prune)."""
    return RoundOut(
        Carry(out.params, out.state, out.opt_state, masks, rewind, extra), list(out.history), seconds
    )
