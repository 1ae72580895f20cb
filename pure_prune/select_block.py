"""Block selection: prune whole ``(bh, bw)`` blocks of the first two axes by their scores' magnitudes.

:func:`block` removes exactly ``round(s · B)`` blocks (globally or per leaf) and returns bool masks
with whole blocks ``False``.
"""

from __future__ import annotations

import numbers

import torch
from einops import rearrange, reduce

from pure_prune import tree
from pure_prune.select_inputs import check_scope, check_sparsity, common_dtype, flatten_inputs, prune_count
from pure_prune.select_lowest_k import lowest_k

__all__ = ["block"]


def block(
    scores: tree.Tree,
    sparsity: float,
    block_shape: tuple[int, int],
    *,
    scope: str = "global",
    masks: tree.Tree | None = None,
) -> tree.Tree:
    """Prune whole ``(bh, bw)`` blocks of the last two axes by the sum of their scores' magnitudes.

    Exactly ``round(s · B)`` blocks are removed (``B`` = blocks over all scored leaves for
    ``scope="global"``, per leaf for ``"layer"``). Leading axes (e.g. conv kernel dims after the
    first two) are folded into the block score: a leaf ``(out, in, kh, kw)`` is blocked over
    ``(out, in)``. Raises ``ValueError`` when a block does not divide the leaf.
    """
    s = check_sparsity(sparsity)
    check_scope(scope)
    if (
        not isinstance(block_shape, (tuple, list))
        or len(block_shape) != 2
        or any(isinstance(b, bool) or not isinstance(b, numbers.Integral) for b in block_shape)
    ):
        raise TypeError(f"block_shape must be a pair of ints (bh, bw), got {block_shape!r}")
    bh, bw = (int(b) for b in block_shape)
    if bh < 1 or bw < 1:
        raise ValueError(f"block_shape must be positive, got {block_shape!r}")
    names, s_leaves, m_leaves, spec = flatten_inputs(scores, masks)
    live_idx, block_scores = [], []
    for i, (path, x) in enumerate(zip(names, s_leaves)):
        if x is None:
            continue
        if x.ndim < 2 or x.shape[0] % bh or x.shape[1] % bw:
            raise ValueError(
                f"block: block {block_shape} does not tile the first two axes of score {path!r} "
                f"with shape {tuple(x.shape)}"
            )
        b = reduce(x.abs().to(common_dtype([x])), "(r bh) (c bw) ... -> r c", "sum", bh=bh, bw=bw)
        if m_leaves[i] is not None:  # a block counts as pruned only when all its entries are (as rows)
            alive = reduce(m_leaves[i], "(r bh) (c bw) ... -> r c", "any", bh=bh, bw=bw)
            b = torch.where(alive, b, torch.full_like(b, float("-inf")))
        block_scores.append(b)
        live_idx.append(i)
    flat = [rearrange(b, "r c -> (r c)") for b in block_scores]
    if scope == "global":
        pruned = lowest_k(flat, prune_count(s, sum(f.numel() for f in flat)))
    elif scope == "layer":
        pruned = [lowest_k([f], prune_count(s, f.numel()))[0] for f in flat]
    else:
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    out: list[torch.Tensor | None] = list(m_leaves)
    for i, b, p in zip(live_idx, block_scores, pruned):
        x = s_leaves[i]
        keep_blocks = ~p.reshape(b.shape)
        keep = keep_blocks.repeat_interleave(bh, 0).repeat_interleave(bw, 1)
        keep = keep.reshape(*keep.shape, *([1] * (x.ndim - 2))).expand(x.shape)
        out[i] = keep.clone() if m_leaves[i] is None else keep & m_leaves[i]
    return tree.unflatten(spec, out)
