"""Structured pruning of a decoder language model: attention heads, MLP channels, whole blocks.

Three granularities, each ending in a physically smaller model:

* **Heads** and **MLP channels** are the units of the model's channel groups (for
  ``models.llama``: ``blocks.<i>.attn``, one unit per KV head together with its query heads, so
  grouped-query attention stays consistent; ``blocks.<i>.mlp``, one unit per SwiGLU channel).
  :func:`unit_masks` removes the lowest-scoring units through ``select.units`` and
  ``compact.compact`` slices them out; the compacted model runs through the same ``apply``.
* **Blocks**: ShortGPT's block influence (Men et al. 2024, "ShortGPT: Layers in Large Language
  Models are More Redundant Than You Expect", eq. 1): for block ``i`` with input hidden states
  ``X_i`` and output ``X_{i+1}``,

      BI_i = 1 - E_{X, t} [ X_{i,t} · X_{i+1,t} / (||X_{i,t}||_2 ||X_{i+1,t}||_2) ]

  averaged over every calibration token ``t``. The blocks of lowest BI change the residual stream
  least and are removed (:func:`lowest_blocks`). In masks a removed block has every mask leaf
  ``False`` (:func:`block_masks`): with its output projections zero a residual block is the
  identity, so the masked model equals the model with the block dropped (``llama.drop_blocks``).

Scores for units (higher = more important):

* magnitude: ``select.unit_norms`` of ``|W|`` over the producers (q, k, v rows; gate, up rows);
* activation-aware (:func:`activation_unit_scores`): Wanda's ``|W_ij| · ||X_j||_2`` (Sun et al.
  2023, "A Simple and Effective Pruning Approach for Large Language Models") summed over the
  consumer's input columns that a unit owns (``attn.o`` columns of a head, ``mlp.down`` columns
  of a channel), i.e. the structured Wanda score used as a baseline by An et al. 2024 (FLAP). The
  column norms ``||X_j||_2`` over the calibration tokens come from :func:`calibration_stats`.

The library never imports the model: :func:`calibration_stats` is given the model's embedding and
per-block functions (e.g. ``functools.partial(llama.block, params_block, cos_sin=..., capture=True)``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from einops import reduce
from torch import Tensor

from pure_prune import select, tree
from pure_prune.groups import ChannelGroup, member_view

__all__ = [
    "StructuredStats",
    "activation_unit_scores",
    "block_influence",
    "block_masks",
    "calibration_stats",
    "dead_blocks",
    "groups_of",
    "lowest_blocks",
    "unit_masks",
]

Params = Any
BlockFn = Callable[[Tensor], tuple[Tensor, Mapping[str, Tensor]]]


class StructuredStats(NamedTuple):
    """What structured pruning reads from the calibration data.

    ``input_norms``: ``{"<block>.<linear>.weight": (in_features,) float64}``, the L2 norm over all
    calibration tokens of each input feature of every consumer linear; ``block_influence``:
    ``(L,)`` float64 ShortGPT BI per block; ``tokens``: the number of calibration tokens.
    """

    input_norms: dict[str, Tensor]
    block_influence: Tensor
    tokens: int


def block_influence(h_in: Tensor, h_out: Tensor, eps: float = 1e-12) -> Tensor:
    """ShortGPT's ``BI = 1 - mean_t cos(h_in_t, h_out_t)`` over every position of ``(..., D)`` hidden
    states (float64 scalar). ``ValueError`` unless the shapes are equal."""
    if h_in.shape != h_out.shape or h_in.ndim < 1:
        raise ValueError(
            f"block_influence: h_in {tuple(h_in.shape)} and h_out {tuple(h_out.shape)} must match"
        )
    return 1.0 - _cosines(h_in, h_out, eps).mean()


def _cosines(a: Tensor, b: Tensor, eps: float) -> Tensor:
    a, b = a.double(), b.double()
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(eps)


def calibration_stats(
    embed: Callable[[Tensor], Tensor],
    blocks: Sequence[tuple[str, BlockFn]],
    batches: Iterable[Tensor],
    consumers: Sequence[str] = ("attn.o", "mlp.down"),
) -> StructuredStats:
    """Consumer input norms and block influences over the calibration token batches.

    Args:
        embed: ``tokens (N, T) -> h (N, T, D)``.
        blocks: ``[(name, fn)]`` in order; ``fn(h) -> (h_out, inputs)`` with ``inputs[lin]`` the input
            ``(N, T, in)`` of each linear ``lin`` of ``consumers`` (``llama.block(..., capture=True)``).
        batches: token batches ``(N, T)``, read once.
        consumers: the linears whose input norms are kept, keyed ``"<name>.<lin>.weight"``.

    Runs the *dense* model (each block sees the previous dense block's output) and keeps only
    running sums: ``O(L · width)`` memory whatever the number of batches. Returns
    :class:`StructuredStats`. ``ValueError`` when ``batches`` is empty.
    """
    sq: dict[str, Tensor] = {}
    cos_sum = torch.zeros(len(blocks), dtype=torch.float64)
    tokens = 0
    with torch.no_grad():
        for x in batches:
            h = embed(x)
            n = h.shape[:-1].numel()
            tokens += n
            for i, (name, fn) in enumerate(blocks):
                out, inputs = fn(h)
                cos_sum[i] += _cosines(h, out, 1e-12).sum()
                for lin in consumers:
                    if lin not in inputs:
                        raise ValueError(f"block {name!r} captured no input for linear {lin!r}")
                    v = reduce(inputs[lin].double() ** 2, "... f -> f", "sum")
                    key = f"{name}.{lin}.weight"
                    sq[key] = v if key not in sq else sq[key] + v
                h = out
    if tokens == 0:
        raise ValueError("calibration_stats: no calibration batches")
    return StructuredStats({k: v.sqrt() for k, v in sq.items()}, 1.0 - cos_sum / tokens, tokens)


def activation_unit_scores(
    params: Params, groups: Sequence[ChannelGroup], input_norms: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Structured Wanda scores ``{group name: (size,) float64}`` of every prunable group.

    Unit ``c`` scores ``Σ |W_ij| · ||X_j||_2`` over the entries of every member whose path has an
    entry in ``input_norms`` (a consumer: a 2-D weight read on its input axis 1, whose columns
    ``j`` unit ``c`` owns). ``ValueError`` naming the group when none of its members has norms, or
    when a norm vector does not match its weight's input width.
    """
    names, leaves, _ = tree.flatten_with_paths(params)
    by_path = dict(zip(names, leaves))
    out: dict[str, Tensor] = {}
    for g in groups:
        if not g.prunable:
            continue
        total = None
        for mem in g.members:
            if mem.path not in input_norms:
                continue
            w = by_path.get(mem.path)
            norms = input_norms[mem.path]
            if w is None or w.ndim != 2 or mem.axis % 2 != 1 or norms.shape != (w.shape[1],):
                raise ValueError(
                    f"group {g.name!r}: input norms of {mem.path!r} have shape {tuple(norms.shape)}; "
                    f"need a 2-D weight read on axis 1 with one norm per input column "
                    f"(weight {None if w is None else tuple(w.shape)}, axis {mem.axis})"
                )
            contrib = w.detach().abs().double() * norms.double()[None, :]
            v = reduce(member_view(contrib, mem, g.size), "u r -> u", "sum")
            total = v if total is None else total + v
        if total is None:
            raise ValueError(
                f"group {g.name!r}: no member has input norms (consumers: {sorted(input_norms)[:4]}...)"
            )
        out[g.name] = total
    return out


def groups_of(groups: Sequence[ChannelGroup], kind: str) -> tuple[ChannelGroup, ...]:
    """The groups whose name ends in ``"." + kind`` (``"attn"``: heads, ``"mlp"``: channels).
    ``ValueError`` when there is none."""
    out = tuple(g for g in groups if g.name.endswith("." + kind))
    if not out:
        raise ValueError(f"no channel group named '*.{kind}' among {[g.name for g in groups][:6]}")
    return out


def unit_masks(
    params: Params,
    groups: Sequence[ChannelGroup],
    unit_scores: Mapping[str, Tensor],
    sparsity: float,
    *,
    scope: str = "layer",
    min_units: int = 1,
    masks: Params | None = None,
) -> Params:
    """Masks that remove the lowest-scoring ``sparsity`` of the units of ``groups`` (``select.units``:
    ``scope="layer"`` per group, ``"global"`` ``round(sparsity · U)`` over all of them), every member
    of a removed unit ``False``. The ``min_units`` best units of every group are never removed (so
    a global selection cannot empty a block's attention; ``ValueError`` when the count asked for
    needs them). Leaves outside ``groups`` keep ``masks`` (default: dense, ``None``)."""
    if isinstance(min_units, bool) or not isinstance(min_units, int) or min_units < 0:
        raise ValueError(f"min_units must be a non-negative int, got {min_units!r}")
    active = [g for g in groups if g.prunable]
    if not active:
        raise ValueError("unit_masks: no prunable channel group")
    missing = [g.name for g in active if g.name not in unit_scores]
    if missing:
        raise ValueError(f"unit_masks: no unit scores for groups {missing}")
    raw = {g.name: unit_scores[g.name].double() for g in active}
    hi = max(float(u.max()) for u in raw.values())
    above = hi + (hi - min(float(u.min()) for u in raw.values())) + 1.0  # finite, above every score
    scores = {
        k: u.index_fill(0, torch.topk(u, min(min_units, u.numel())).indices, above) for k, u in raw.items()
    }
    total = sum(g.size for g in active)
    removable = sum(max(g.size - min_units, 0) for g in active)
    asked = round(sparsity * total) if scope == "global" else sum(round(sparsity * g.size) for g in active)
    if asked > removable:
        raise ValueError(
            f"removing {asked} of {total} units needs more than the {removable} left after keeping "
            f"min_units={min_units} per group"
        )
    return select.units(scores, sparsity, groups, params, scope=scope, masks=masks)


def lowest_blocks(influence: Tensor, n: int) -> list[int]:
    """Indices (ascending) of the ``n`` blocks with the lowest influence; ties: the earlier block.
    ``ValueError`` unless ``0 <= n < L`` (one block at least stays)."""
    if influence.ndim != 1:
        raise ValueError(f"influence must be (L,), got shape {tuple(influence.shape)}")
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < influence.numel():
        raise ValueError(f"n must be an int in [0, {influence.numel()}), got {n!r}")
    order = torch.sort(influence, stable=True).indices
    return sorted(int(i) for i in order[:n])


def block_masks(
    params: Params, drop: Sequence[int], masks: Params | None = None, *, prefix: str = "blocks"
) -> Params:
    """Masks (structure of ``params``) with every leaf under ``<prefix>.<i>`` for ``i`` in ``drop``
    pruned: ``False`` at every weight of ndim >= 2 (1-D leaves, the norms, stay as in ``masks``).
    Leaves elsewhere keep ``masks`` (default ``None``). ``ValueError`` for an index that is not a block."""
    present = {k for k in params.get(prefix, {}) if k.isdigit()}
    bad = [i for i in drop if str(i) not in present]
    if bad:
        raise ValueError(
            f"block_masks: no blocks {bad} under {prefix!r} (blocks: {sorted(present, key=int)})"
        )
    heads = tuple(f"{prefix}.{i}." for i in drop)
    base = tree.map(lambda _: None, params) if masks is None else masks

    def one(path: str, p: Tensor, m: Tensor | None) -> Tensor | None:
        if path.startswith(heads) and p.ndim >= 2:
            return torch.zeros(p.shape, dtype=torch.bool, device=p.device)
        return m

    return tree.map_with_path(one, params, base)


def dead_blocks(masks: Params, *, prefix: str = "blocks") -> list[int]:
    """Indices of the blocks under ``<prefix>`` whose every mask tensor is all ``False`` (and that
    hold at least one): the blocks :func:`block_masks` removed, to drop with ``llama.drop_blocks``."""
    out = []
    for k in sorted((k for k in masks.get(prefix, {}) if k.isdigit()), key=int):
        leaves = [m for m in tree.leaves(masks[prefix][k]) if m is not None]
        if leaves and not any(bool(m.any()) for m in leaves):
            out.append(int(k))
    return out
