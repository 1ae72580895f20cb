"""How RSST and Refill rank channels (the ``criteria`` knob): unit scores, higher = keep.

For unit ``c`` of a channel group, sums run over the entries the unit owns in the group's members
marked ``score`` (its own weights: a linear layer's row, a conv's filter), with ``W̃ = W ⊙ M``:

============  ======================================================================================
``remain``    the number of those entries kept by ``reference`` — the masks of an unstructured IMP
              round at the same target: units with the most already-pruned entries go first
``magnitude`` the mean ``|W̃|`` over the unit's entries (comparable across layers of different fan-in)
``l1``        ``Σ |W̃|``
``l2``        ``(Σ W̃²)^½``
``saliency``  ``Σ |W̃ · g|``, ``g`` the gradient of the mean cross-entropy over ``batches`` at ``W̃``
              (first-order Taylor / SNIP, ``importance.gradient.snip``)
============  ======================================================================================

A unit whose entries are all pruned scores 0 (it ranks first for removal).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from pure_prune import losses, mask, select, tree
from pure_prune.groups import ChannelGroup
from pure_prune.importance import gradient

__all__ = ["CRITERIA", "unit_scores"]

CRITERIA = ("remain", "magnitude", "l1", "l2", "saliency")


def _on_masked(values: Any, masks: Any) -> Any:
    return tree.map(lambda v, m: None if m is None else v, values, masks)


def unit_scores(
    criterion: str,
    params: Any,
    masks: Any,
    groups: Sequence[ChannelGroup],
    *,
    reference: Any = None,
    model_fn: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]] = (),
) -> dict[str, torch.Tensor]:
    """``{group name: (size,) float tensor}`` for every prunable group of ``groups`` (module table).

    ``reference``: the masks ``remain`` counts (default ``masks``). ``model_fn(params, x) -> logits``
    (eval mode, unmasked params in, e.g. ``ScoreInput.model_fn(masked=False)``) and ``batches`` are
    needed by ``saliency``. Raises ``ValueError`` for an unknown criterion or missing inputs.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown unit criterion {criterion!r}; known: {', '.join(CRITERIA)}")
    if criterion == "remain":
        ref = masks if reference is None else reference
        tree.assert_same_structure(masks, ref, ("masks", "reference"))
        values = tree.map(lambda r: None if r is None else r.to(torch.float32), ref)
        return select.unit_norms(values, groups, ord=1)
    if criterion == "saliency":
        if model_fn is None or not batches:
            raise ValueError("criterion 'saliency' needs model_fn and at least one (x, y) batch")
        loss_fn = losses.model_loss(model_fn, "cross_entropy")
        values = gradient.snip(loss_fn, params, tuple(batches), masks=masks)
        return select.unit_norms(_on_masked(values, masks), groups, ord=1)
    kept = _on_masked(mask.apply(params, masks), masks)
    if criterion == "l2":
        return {k: torch.sqrt(v) for k, v in select.unit_norms(kept, groups, ord=2).items()}
    return select.unit_norms(kept, groups, ord=1, normalize=criterion == "magnitude")
