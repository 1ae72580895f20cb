"""Structure of the LLaMA model (:mod:`models.llama`): its channel groups, whole-block removal, FLOPs.

:func:`groups` gives one unit per KV head (with its query heads) and one per MLP channel of every
block; :func:`drop_blocks` removes whole residual blocks from any tree with a ``"blocks"`` subtree;
:func:`flops_per_token` counts the forward FLOPs of the current shapes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pure_prune import tree
from pure_prune.groups import ChannelGroup, Member

from . import structure
from .llama_forward import HEAD_DIM, LINEARS, block_names, get_block, head_counts

__all__ = ["drop_blocks", "flops_per_token", "groups"]


def groups(params: Mapping[str, Any]) -> tuple[ChannelGroup, ...]:
    """``blocks.<i>.attn`` (one unit per KV head with its query heads) and ``blocks.<i>.mlp`` (one per
    MLP channel) for every block, in block order (see the module docstring)."""
    out = []
    for name in block_names(params):
        p = get_block(params, name)
        hd = HEAD_DIM
        n_heads, n_kv = head_counts(p, hd)
        g = n_heads // n_kv
        attn = (
            Member(f"{name}.attn.q.weight", 0, inner=g * hd),
            Member(f"{name}.attn.k.weight", 0, inner=hd),
            Member(f"{name}.attn.v.weight", 0, inner=hd),
            Member(f"{name}.attn.o.weight", 1, inner=g * hd, score=False),
        )
        ffn = p["mlp"]["gate"]["weight"].shape[0]
        mlp = (
            Member(f"{name}.mlp.gate.weight", 0),
            Member(f"{name}.mlp.up.weight", 0),
            Member(f"{name}.mlp.down.weight", 1, score=False),
        )
        out += [ChannelGroup(f"{name}.attn", n_kv, attn), ChannelGroup(f"{name}.mlp", ffn, mlp)]
    return tuple(out)


# ----------------------------------------------------------------------------------- whole blocks
def drop_blocks(t: Mapping[str, Any], drop: Sequence[int]) -> dict[str, Any]:
    """``t`` (params, masks or scores: any tree with a ``"blocks"`` subtree) without the blocks whose
    indices are in ``drop``; the remaining blocks keep their order and are renumbered ``0, 1, ...``.

    With a residual block removed the stream passes unchanged, which is what the masked model
    computes when all of the block's linear weights are pruned (the module docstring). ``ValueError``
    for an index that is not a block or is given twice. Leaves are shared, not copied.
    """
    names = structure.indexed(t.get("blocks", {}))
    drop = list(drop)
    if any(isinstance(i, bool) or not isinstance(i, int) for i in drop):
        raise TypeError(f"drop must hold int block indices, got {drop!r}")
    bad = [i for i in drop if not 0 <= i < len(names)]
    if bad or len(set(drop)) != len(drop):
        raise ValueError(f"drop={drop} must name distinct blocks in [0, {len(names)})")
    kept = [t["blocks"][k] for k in names if int(k) not in set(drop)]
    out = {k: v for k, v in t.items() if k != "blocks"}
    out["blocks"] = {str(i): b for i, b in enumerate(kept)}
    return tree.canonical(out)


# ------------------------------------------------------------------------------------------ FLOPs
def flops_per_token(params: Mapping[str, Any], seq_len: int) -> float:
    """Forward FLOPs per token (2 per multiply-add) of a ``seq_len``-token sequence: every linear
    layer (head included), plus causal attention's ``QKᵀ`` and ``AV`` over on average
    ``(seq_len + 1) / 2`` keys. Norms, RoPE, softmax and SwiGLU's elementwise work are left out."""
    total = 0.0
    for name in block_names(params):
        p = get_block(params, name)
        for lin in LINEARS:
            total += 2.0 * structure.get_path(p, f"{lin}.weight").numel()
        total += 2 * 2.0 * p["attn"]["q"]["weight"].shape[0] * (seq_len + 1) / 2
    w = params["head"]["weight"] if "head" in params else params["embed"]["weight"]
    return total + 2.0 * w.numel()
