"""One-shot pruning: score once, prune to the target, fine-tune with the mask fixed.

``W' = W ⊙ M`` (Han et al. 2015); fine-tuning keeps ``M`` fixed and trains the kept weights.
As rounds (the runner's view): round 0 trains the dense model (:func:`first_round`), round 1 prunes
it and fine-tunes (:func:`next_round`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from pure_prune import mask, rng, train
from pure_prune.algorithms import masking
from pure_prune.algorithms.base import Carry, RoundOut, ScoreFn, TrainFn, carry_out, train_fresh
from pure_prune.app.experiment import Experiment
from pure_prune.groups import ChannelGroup
from pure_prune.optim import Optimizer

__all__ = ["OneShotResult", "first_round", "next_round", "prune", "run"]


class OneShotResult(NamedTuple):
    """Trees after pruning and fine-tuning, and the fine-tuning history (one dict per epoch)."""

    params: Any
    state: Any
    masks: Any
    history: list[dict[str, float]]


def prune(
    params: Any,
    masks: Any,
    scores: Any,
    sparsity: float,
    *,
    scope: str = "global",
    struct: str = "unstructured",
    groups: Sequence[ChannelGroup] = (),
    level: str = "element",
    nm: tuple[int, int] = (2, 4),
) -> tuple[Any, Any]:
    """New masks at ``sparsity`` (already-pruned entries stay pruned) and the params zeroed by them.

    ``struct``/``groups``/``level``/``nm`` choose the mask form (``masking.prune_to``); the default
    is unstructured selection by element scores. Returns ``(params ⊙ new_masks, new_masks)``.
    """
    new_masks = masking.prune_to(
        scores, sparsity, struct=struct, masks=masks, groups=groups, scope=scope, level=level, nm=nm
    )
    return mask.apply(params, new_masks), new_masks


def run(
    exp: Experiment,
    params: Any,
    state: Any,
    masks: Any,
    scores: Any,
    sparsity: float,
    *,
    finetune_epochs: int,
    key: int,
    scope: str = "global",
    progress: bool = True,
) -> OneShotResult:
    """Prune ``params`` to ``sparsity`` by ``scores`` and fine-tune for ``finetune_epochs`` epochs.

    The optimizer state is initialised afresh for fine-tuning (no stale momentum); data order comes
    from ``key``. Returns the fine-tuned trees, the masks, and the per-epoch training metrics.
    """
    params, masks = prune(params, masks, scores, sparsity, scope=scope)
    opt_state = exp.optimizer.init(params)
    res = train.fit(
        exp.step, params, state, opt_state, masks, exp.train_batches(key), finetune_epochs, progress=progress
    )
    return OneShotResult(res.params, res.state, masks, res.history)


def first_round(
    params: Any, state: Any, masks: Any, *, epochs: int, optimizer: Optimizer, train_fn: TrainFn, key: int
) -> RoundOut:
    """Round 0: train ``params ⊙ masks`` (usually dense) for ``epochs`` epochs from a fresh optimizer state."""
    params = mask.apply(params, masks)
    out = train_fresh(train_fn, optimizer, params, state, masks, stop=epochs, key=rng.fold_in(key, 0))
    return carry_out(out, masks, extra={})


def next_round(
    carry: Carry,
    sparsity: float,
    *,
    finetune_epochs: int,
    optimizer: Optimizer,
    train_fn: TrainFn,
    score_fn: ScoreFn,
    key: int,
    scope: str = "global",
    struct: str = "unstructured",
    groups: Sequence[ChannelGroup] = (),
    level: str = "element",
    nm: tuple[int, int] = (2, 4),
) -> RoundOut:
    """Round 1: score the trained weights, :func:`prune` to ``sparsity`` and fine-tune
    ``finetune_epochs`` epochs from a fresh optimizer state."""
    t0 = time.perf_counter()
    scores = score_fn(carry.params, carry.state, carry.masks, rng.fold_in(key, 1 << 20))
    params, masks = prune(
        carry.params,
        carry.masks,
        scores,
        sparsity,
        scope=scope,
        struct=struct,
        groups=groups,
        level=level,
        nm=nm,
    )
    seconds = time.perf_counter() - t0
    out = train_fresh(
        train_fn, optimizer, params, carry.state, masks, stop=finetune_epochs, key=rng.fold_in(key, 1)
    )
    return carry_out(out, masks, extra=carry.extra, seconds=seconds)
