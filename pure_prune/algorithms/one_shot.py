"""One-shot pruning: score once, prune to the target, fine-tune with the mask fixed.

``W' = W ⊙ M`` (Han et al. 2015); fine-tuning keeps ``M`` fixed and trains the kept weights.
As rounds (the runner's view): round 0 trains the dense model (:func:`first_round`), round 1 prunes
it and fine-tunes (:func:`next_round`), on one seed or stacked seeds alike
(:class:`~pure_prune.algorithms.ops.RoundOps`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from pure_prune import mask
from pure_prune.algorithms import masking
from pure_prune.algorithms.base import Carry, RoundOut, carry_out
from pure_prune.algorithms.ops import Key, RoundOps
from pure_prune.groups import ChannelGroup

__all__ = ["first_round", "next_round", "prune"]


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


def first_round(params: Any, state: Any, masks: Any, *, epochs: int, ops: RoundOps, key: Key) -> RoundOut:
    """Round 0: train ``params ⊙ masks`` (usually dense) for ``epochs`` epochs from a fresh optimizer state."""
    out = ops.train_fresh(params, state, masks, epochs=epochs, key=ops.fold(key, 0))
    return carry_out(out, masks, extra={})


def next_round(
    carry: Carry,
    sparsity: float,
    *,
    finetune_epochs: int,
    ops: RoundOps,
    key: Key,
    scope: str = "global",
    struct: str = "unstructured",
    groups: Sequence[ChannelGroup] = (),
    nm: tuple[int, int] = (2, 4),
) -> RoundOut:
    """Round 1: score the trained weights, prune to ``sparsity`` (as :func:`prune`) and fine-tune
    ``finetune_epochs`` epochs from a fresh optimizer state."""
    t0 = time.perf_counter()
    scores = ops.scores(carry.params, carry.state, carry.masks, ops.fold(key, 1 << 20))
    masks = ops.prune(scores, sparsity, carry.masks, struct=struct, scope=scope, groups=groups, nm=nm)
    params = mask.apply(carry.params, masks)
    seconds = time.perf_counter() - t0
    out = ops.train_fresh(params, carry.state, masks, epochs=finetune_epochs, key=ops.fold(key, 1))
    return carry_out(out, masks, extra=carry.extra, seconds=seconds)
