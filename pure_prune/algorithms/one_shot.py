"""One-shot pruning: score once, prune to the target, fine-tune with the mask fixed.

``W' = W ⊙ M`` (seeds.md Source E); fine-tuning keeps ``M`` fixed and trains the kept weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from pure_prune import mask, train
from pure_prune.algorithms import masking
from pure_prune.experiment import Experiment
from pure_prune.groups import ChannelGroup

__all__ = ["OneShotResult", "prune", "run"]


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
