"""The mask forms the algorithms prune to, and scoring by criterion name.

``struct`` names the form of a selection:

==================  ==============================================================================
``"unstructured"``  single entries: ``select.unstructured`` (``scope`` global or per layer)
``"rows"``          whole output rows/filters of every prunable leaf (``select.rows``, axis 0,
                    L1 norm; always per leaf, as ``torch.nn.utils.prune.ln_structured``)
``"channels"``      whole units of the model's channel groups, every member removed together
                    (``select.channels`` by element scores, ``select.units`` by unit scores)
``"nm"``            ``n`` of every ``m`` consecutive entries of the input axis (``select.n_of_m``);
                    its sparsity is fixed at ``1 − n/m``
==================  ==============================================================================

Exactness is the selectors': sparsity ``s`` over ``N`` entries (units, rows) prunes ``round(s·N)``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from pure_prune import importance, mask, select, tree
from pure_prune.groups import ChannelGroup

__all__ = ["STRUCTS", "active_groups", "initial", "prune_to", "score"]

STRUCTS = ("unstructured", "rows", "channels", "nm")


def _check_struct(struct: str) -> str:
    if struct not in STRUCTS:
        raise ValueError(f"unknown struct {struct!r}; known: {', '.join(STRUCTS)}")
    return struct


def active_groups(groups: Sequence[ChannelGroup], exclude: Sequence[str] = ()) -> tuple[ChannelGroup, ...]:
    """``groups`` with ``prunable=False`` where a scored member's path matches a glob of ``exclude``
    (a layer kept dense, e.g. ``"conv1.*"``, keeps its units too)."""

    def hit(g: ChannelGroup) -> bool:
        return any(fnmatch.fnmatchcase(m.path, p) for m in g.members if m.score for p in exclude)

    return tuple(g._replace(prunable=False) if g.prunable and hit(g) else g for g in groups)


def initial(
    params: Any,
    struct: str = "unstructured",
    groups: Sequence[ChannelGroup] = (),
    *,
    exclude: Sequence[str] = (),
) -> Any:
    """All-kept masks for ``struct``: ``mask.ones_like(params, exclude_paths=exclude)`` and, for
    ``"channels"``, also an all-``True`` mask at every param member of the prunable ``groups``
    (biases, BatchNorm scales), so that removing a unit zeroes all of it and the mask tree keeps
    one structure for the whole run (a compiled step never sees a new tree form).
    """
    masks = mask.ones_like(params, exclude_paths=tuple(exclude))
    if _check_struct(struct) != "channels":
        return masks
    live = [g for g in active_groups(groups, exclude) if g.prunable]
    if not live:
        raise ValueError("struct 'channels' needs at least one prunable channel group; the model has none")
    members = {m.path for g in live for m in g.members if not m.path.startswith("state.")}
    return tree.map_with_path(
        lambda p, x, m: torch.ones_like(x, dtype=torch.bool) if m is None and p in members else m,
        params,
        masks,
    )


def score(
    criterion: str,
    apply: Any,
    params: Any,
    state: Any,
    masks: Any,
    *,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]] = (),
    key: int = 0,
    groups: Sequence[ChannelGroup] = (),
    options: Mapping[str, Any] | None = None,
) -> tuple[Any, str]:
    """Scores of the registered criterion ``criterion`` (``importance.get``) and their level.

    Returns ``(scores, level)``: ``level == "element"`` gives a tree like ``masks``, ``"unit"``
    gives ``{group name: (size,)}``. ``batches`` are passed to data-driven criteria.
    """
    crit = importance.get(criterion)
    inp = importance.ScoreInput(apply, params, state, masks, tuple(batches), key, tuple(groups))
    return crit(inp, **dict(options or {})), crit.level


def prune_to(
    scores: Any,
    sparsity: float,
    *,
    struct: str,
    masks: Any,
    groups: Sequence[ChannelGroup] = (),
    scope: str = "global",
    level: str = "element",
    nm: tuple[int, int] = (2, 4),
) -> Any:
    """New masks of form ``struct`` at ``sparsity``, nested in ``masks`` (pruned entries stay pruned).

    ``scores``: element scores (a tree like ``masks``) or, with ``level="unit"``, unit scores for
    ``struct="channels"``. ``scope``: ``"global"`` (one ranking over every prunable entry or unit)
    or ``"layer"``; global channel ranking uses per-entry mean norms (``normalize=True``) so that
    wide and narrow layers compare. ``nm=(n, m)`` for ``struct="nm"`` (``sparsity`` is ignored).
    Returns a mask tree with the structure of ``masks``.
    """
    _check_struct(struct)
    if level not in ("element", "unit"):
        raise ValueError(f"level must be 'element' or 'unit', got {level!r}")
    if level == "unit":
        if struct != "channels":
            raise ValueError(f"unit scores select whole channels: struct must be 'channels', got {struct!r}")
        return select.units(scores, sparsity, groups, masks, scope=scope, masks=masks)
    if struct == "unstructured":
        return select.unstructured(scores, sparsity, scope=scope, masks=masks)
    if struct == "rows":
        return select.rows(scores, sparsity, axis=0, ord=1, masks=masks)
    if struct == "channels":
        return select.channels(
            scores, sparsity, groups, scope=scope, ord=1, normalize=scope == "global", masks=masks
        )
    n, m = nm
    return select.n_of_m(scores, n, m, masks=masks)
