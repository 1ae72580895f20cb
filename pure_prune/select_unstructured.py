"""Unstructured selection: prune the lowest-scoring entries, globally or per leaf.

:func:`unstructured` (``torch.nn.utils.prune.l1_unstructured`` / ``global_unstructured`` when the
scores are magnitudes): bool masks with the structure of the scores, exactly ``round(s · N)`` pruned.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from einops import rearrange

from pure_prune import tree
from pure_prune.select_inputs import (
    Sparsity,
    check_scope,
    check_sparsity,
    common_dtype,
    flatten_inputs,
    live_scores,
    prune_count,
)
from pure_prune.select_lowest_k import lowest_k

__all__ = ["unstructured"]


def unstructured(
    scores: tree.Tree,
    sparsity: Sparsity,
    *,
    scope: str = "global",
    masks: tree.Tree | None = None,
) -> tree.Tree:
    """Prune the lowest-scoring entries.

    ``scores``: tree of float tensors (``None`` = dense leaf). ``sparsity``: a float, or with
    ``scope="layer"`` a ``{path: sparsity}`` mapping (e.g. from :mod:`pure_prune.allocate`) that
    names every scored leaf. ``scope="global"`` prunes ``round(s·N)`` of all ``N`` scored entries
    by one ranking; ``"layer"`` prunes ``round(s_l·N_l)`` in each leaf. Returns bool masks with the
    structure of ``scores`` (``True`` = kept); where the score is ``None`` the leaf keeps its mask
    from ``masks`` (``None`` without ``masks``), as in the other selectors. Every argument is
    checked before any work (``sparsity`` a real number in [0, 1], not a bool or a string).
    """
    check_scope(scope)
    if not isinstance(sparsity, Mapping):
        check_sparsity(sparsity)
    names, s_leaves, m_leaves, spec = flatten_inputs(scores, masks)
    live = [(i, s) for i, s in enumerate(s_leaves) if s is not None]
    dtype = common_dtype([s for _, s in live])
    flat = [rearrange(live_scores(s, m_leaves[i], dtype), "... -> (...)") for i, s in live]
    if scope == "global":
        if isinstance(sparsity, Mapping):
            raise TypeError("a per-leaf sparsity mapping needs scope='layer'")
        s = check_sparsity(sparsity)
        pruned = lowest_k(flat, prune_count(s, sum(x.numel() for x in flat)))
    elif scope == "layer":
        if isinstance(sparsity, Mapping):
            missing = [names[i] for i, _ in live if names[i] not in sparsity]
            extra = sorted(set(sparsity) - {names[i] for i, _ in live})
            if missing or extra:
                raise ValueError(f"per-leaf sparsity: missing paths {missing}, unknown paths {extra}")
            per = [check_sparsity(sparsity[names[i]], f" of {names[i]!r}") for i, _ in live]
        else:
            per = [check_sparsity(sparsity)] * len(live)
        pruned = [lowest_k([x], prune_count(s, x.numel()))[0] for x, s in zip(flat, per)]
    else:
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    out: list[torch.Tensor | None] = list(m_leaves)  # unscored leaves keep their mask (or None)
    for (i, s), p in zip(live, pruned):
        keep = ~p.reshape(s.shape)
        out[i] = keep if m_leaves[i] is None else keep & m_leaves[i]
    return tree.unflatten(spec, out)
