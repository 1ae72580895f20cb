"""What every pruning algorithm shares: the carry between rounds and the training callback.

An algorithm is a sequence of *rounds*. A round takes a :class:`Carry` (the trees that survive from
one round to the next), changes the masks on the host (score, select, rewind, refill, ...), trains
with a :data:`TrainFn` and returns the next :class:`Carry`. Everything a round needs is in its
arguments, so a runner can checkpoint the carry after any round and resume with the same result.

Training is injected: ``train_fn(params, state, opt_state, masks, *, start, stop, key, step=None,
batch_map=None) -> Trained`` trains epochs ``start .. stop-1`` (the data order of epoch ``e`` comes
from ``key`` and ``e``). The application builds one over its data set
(``pure_prune.app.trainer.epoch_trainer``); :func:`no_training` returns its inputs (for property
tests of the mask logic, which then run in milliseconds). The rounds reach it, and everything else
that differs between one seed and a stack of seeds, through
:class:`~pure_prune.algorithms.ops.RoundOps`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import torch

from pure_prune import train
from pure_prune.optim import Optimizer

__all__ = [
    "Carry",
    "RoundOut",
    "ScoreFn",
    "TrainFn",
    "Trained",
    "carry_out",
    "check_epochs",
    "fresh_opt_state",
    "no_training",
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


def check_epochs(start: int, stop: int) -> None:
    """Raise ``ValueError`` unless ``0 <= start <= stop`` are ints (naming the bad one): the epoch
    range every :data:`TrainFn` is given."""
    for name, v in (("start", start), ("stop", stop)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} epoch must be an int >= 0, got {v!r}")
    if stop < start:
        raise ValueError(f"stop epoch {stop} is before start epoch {start}")


def no_training(
    params: Any, state: Any, opt_state: Any, masks: Any, *, start: int, stop: int, **_: Any
) -> Trained:
    """A :data:`TrainFn` that trains nothing: checks the epoch range (:func:`check_epochs`) and
    returns its trees unchanged and an empty history (``key``/``step``/``batch_map`` unused)."""
    check_epochs(start, stop)
    return Trained(params, state, opt_state, [])


def fresh_opt_state(optimizer: Optimizer, params: Any, count: int = 0) -> dict[str, Any]:
    """``optimizer.init(params)`` with the step counter at ``count`` (the learning-rate schedule's
    position: a round that rewinds to epoch ``k`` starts at ``k · steps_per_epoch``)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be an int >= 0, got {count!r}")
    st = optimizer.init(params)
    return {**st, "count": torch.full_like(st["count"], count)}


def carry_out(
    out: Trained, masks: Any, *, rewind: Any = None, extra: Any = None, seconds: float | None = None
) -> RoundOut:
    """The :class:`RoundOut` of a round that trained to ``out`` under ``masks``: the carry holds
    ``out``'s trees with ``masks``/``rewind``/``extra``, the history is ``out.history`` (a new list)
    and ``seconds`` the time spent choosing the masks (``None``: the round did not prune)."""
    return RoundOut(
        Carry(out.params, out.state, out.opt_state, masks, rewind, extra), list(out.history), seconds
    )
