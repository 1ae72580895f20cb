"""Magnitude and random importance: scores from the weights alone.

Every function returns a score tree shaped like ``masks`` (a float tensor of the leaf's shape where
the mask is a tensor, ``None`` where it is ``None``); higher means more important.
"""

from __future__ import annotations

import torch
from einops import reduce

from pure_prune import rng, tree
from pure_prune.groups import ChannelGroup, member_view

__all__ = ["channel_norms", "magnitude", "random"]


def magnitude(params: tree.Tree, masks: tree.Tree, *, p: float = 1) -> tree.Tree:
    """``|w|**p`` on the masked leaves (``p=1``: L1 magnitude, ``p=2``: ``w²``).

    Ranking by ``|w|**p`` is the same for every ``p > 0``; ``p`` matters when scores are summed
    (e.g. into channel norms). Returns scores of dtype float32 or wider.
    """
    if not p > 0:
        raise ValueError(f"magnitude: p must be > 0, got {p!r}")
    tree.assert_same_structure(params, masks, ("params", "masks"))

    def score(w: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor | None:
        if m is None:
            return None
        a = w.detach().abs().to(torch.promote_types(w.dtype, torch.float32))
        return a if p == 1 else a**p

    return tree.map(score, params, masks)


def random(masks: tree.Tree, key: int) -> tree.Tree:
    """Uniform ``[0, 1)`` scores drawn from ``key`` (each leaf from ``rng.fold_in(key, leaf index)``)."""
    rng.check_key(key)
    names, leaves, spec = tree.flatten_with_paths(masks)
    out = [
        None if m is None else rng.uniform(rng.fold_in(key, i), tuple(m.shape), device=m.device)
        for i, m in enumerate(leaves)
    ]
    return tree.unflatten(spec, out)


def channel_norms(
    scores: tree.Tree, groups: tuple[ChannelGroup, ...] | list[ChannelGroup], *, ord: float = 1
) -> dict[str, torch.Tensor]:
    """Per-unit Ln norms of ``scores`` for each channel group: ``{group name: (size,) tensor}``.

    Sums ``|score|**ord`` over every scored member of the group (members whose score leaf is a
    tensor) and takes the ``1/ord`` power; ``ord=inf`` gives the largest ``|score|`` of the unit.
    """
    if not ord > 0:
        raise ValueError(f"channel_norms: ord must be > 0, got {ord!r}")
    names, leaves, _ = tree.flatten_with_paths(scores)
    index = dict(zip(names, leaves))
    out: dict[str, torch.Tensor] = {}
    for g in groups:
        total = None
        for mem in g.members:
            x = index.get(mem.path)
            if x is None or not mem.score:
                continue
            v = member_view(x.abs().to(torch.promote_types(x.dtype, torch.float32)), mem, g.size)
            if ord == float("inf"):
                r = reduce(v, "u r -> u", "max") if v.shape[1] else torch.zeros(v.shape[0], dtype=v.dtype)
                total = r if total is None else torch.maximum(total, r)
                continue
            r = reduce(v**ord, "u r -> u", "sum")
            total = r if total is None else total + r
        if total is None:
            raise ValueError(f"channel_norms: group {g.name!r} has no scored member with a score tensor")
        out[g.name] = total if ord == float("inf") else total ** (1.0 / ord)
    return out
