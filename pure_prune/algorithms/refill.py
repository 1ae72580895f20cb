"""Refill: turn an unstructured IMP mask into whole channels (Chen et al. 2022, "refilling").

After an unstructured IMP round, each prunable channel group of ``C`` units is converted:

1. rank the units by ``criterion`` on the IMP masks — ``"remain"``: the number of the unit's own
   weights the IMP masks keep; ``"l1"``: the L1 norm of those kept weights (:mod:`.unit_criteria`);
2. **refill** the top ``round(fillback_rate · C)`` units: all of the unit's own weights (the group's
   members marked ``score``: a linear layer's row, a conv's filter) become kept again;
3. **pay** for them with whole units from the bottom of the ranking: the lowest-ranked units are
   removed entirely (every member with a mask: weights, the consumer's input slice, biases when
   masked) until the group's own weights keep no more entries than the IMP masks did.

So ``fillback_rate = 0`` refills nothing, removes nothing and leaves the IMP masks exactly as
they are (plain IMP); as the rate grows the masks become channel-structured at the same weight
budget, and once the refilled units alone reach the budget every other unit is removed — the
fully structured conversion of Chen et al. (2022). Ties rank the earlier unit first (refilled
first, removed first). Units already fully pruned count as removable at no saving.

Used inside IMP through ``imp.next_round(..., mask_fn=...)`` (see :func:`mask_fn`): refilled entries
take their values from the rewind point, like every kept entry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from einops import reduce

from pure_prune import tree
from pure_prune.algorithms import unit_criteria
from pure_prune.groups import ChannelGroup, member_view, unit_mask_to_member

__all__ = ["CRITERIA", "mask_fn", "refill", "refilled_units"]

CRITERIA = ("remain", "l1")


def _check(fillback_rate: float, criterion: str) -> float:
    f = float(fillback_rate)
    if not 0.0 <= f <= 1.0:
        raise ValueError(f"fillback_rate must be in [0, 1], got {fillback_rate!r}")
    if criterion not in CRITERIA:
        raise ValueError(f"unknown refill criterion {criterion!r}; known: {', '.join(CRITERIA)}")
    return f


def _scored(g: ChannelGroup, index: dict[str, int], m_leaves: list[Any]):
    return [
        m
        for m in g.members
        if m.score
        and not m.path.startswith("state.")
        and m.path in index
        and m_leaves[index[m.path]] is not None
    ]


def refilled_units(
    masks: Any,
    params: Any,
    groups: Sequence[ChannelGroup],
    fillback_rate: float,
    *,
    criterion: str = "remain",
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{group name: (refilled, removed)}``: two bool ``(size,)`` tensors per prunable group —
    the units whose own weights become fully kept, and the units removed to pay for them."""
    f = _check(fillback_rate, criterion)
    names, m_leaves, _ = tree.flatten_with_paths(masks)
    index = {p: i for i, p in enumerate(names)}
    live = [g for g in groups if g.prunable and _scored(g, index, m_leaves)]
    scores = unit_criteria.unit_scores(criterion, params, masks, live)
    out = {}
    for g in live:
        members = _scored(g, index, m_leaves)
        kept = sum(
            reduce(member_view(m_leaves[index[m.path]], m, g.size).to(torch.int64), "u r -> u", "sum")
            for m in members
        )
        size = sum(m_leaves[index[m.path]].numel() // g.size for m in members)
        order = torch.sort(scores[g.name], descending=True, stable=True).indices
        n = int(round(f * g.size))
        refilled = torch.zeros(g.size, dtype=torch.bool)
        refilled[order[:n]] = True
        excess = int(n * size + kept[~refilled].sum() - kept.sum())
        removed = torch.zeros(g.size, dtype=torch.bool)
        if excess > 0:
            rest = [int(i) for i in torch.flip(order, [0]) if not refilled[i]]  # lowest ranked first
            saved = torch.cumsum(kept[rest], 0)
            count = int(torch.searchsorted(saved, torch.tensor(excess), right=False)) + 1
            removed[rest[: min(count, len(rest))]] = True
        out[g.name] = (refilled, removed)
    return out


def refill(
    masks: Any,
    params: Any,
    groups: Sequence[ChannelGroup],
    fillback_rate: float,
    *,
    criterion: str = "remain",
) -> Any:
    """Masks after refilling (module docstring): a tree like ``masks``; leaves whose mask is ``None``
    stay ``None``. ``fillback_rate = 0`` returns masks equal to ``masks``."""
    plan = refilled_units(masks, params, groups, fillback_rate, criterion=criterion)
    names, m_leaves, spec = tree.flatten_with_paths(masks)
    index = {p: i for i, p in enumerate(names)}
    out = list(m_leaves)
    for g in groups:  # refill first, then remove: a removed unit wins over a refilled row
        if g.name in plan:
            for m in _scored(g, index, m_leaves):
                i = index[m.path]
                out[i] = out[i] | unit_mask_to_member(plan[g.name][0], m, out[i].shape)
    for g in groups:
        if g.name in plan:
            for m in g.members:
                i = index.get(m.path)
                if i is not None and out[i] is not None:
                    out[i] = out[i] & ~unit_mask_to_member(plan[g.name][1], m, out[i].shape)
    return tree.unflatten(spec, out)


def mask_fn(
    groups: Sequence[ChannelGroup], fillback_rate: float, *, criterion: str = "remain"
) -> Callable[[Any, Any, Any], Any]:
    """``fn(new_masks, old_masks, params) -> refill(new_masks, params, ...)`` for ``imp.next_round``."""
    _check(fillback_rate, criterion)
    return lambda new, old, params: refill(new, params, groups, fillback_rate, criterion=criterion)
