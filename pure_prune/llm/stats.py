"""Input statistics of one linear layer, accumulated over calibration tokens without keeping them.

For the inputs ``x_t ∈ R^in`` (one per token ``t``) of a linear layer ``y = x Wᵀ``:

* ``count`` — the number of tokens;
* ``sq_norms[j] = Σ_t x_tj²`` — the squared L2 norm of input channel ``j`` over all tokens
  (Wanda's ``‖X_j‖₂²``);
* ``gram = Σ_t x_t x_tᵀ = X Xᵀ`` (``in × in``, optional) — SparseGPT's Hessian up to the factor
  ``2/count``, and what gives the reconstruction error ``‖W X − W' X‖_F² = tr(ΔW X Xᵀ ΔWᵀ)``.

All three are sums over tokens, so the statistics of sequence shards add up
(:func:`all_reduce` sums them over ``torch.distributed`` ranks). Pure: :func:`accumulate`
returns new statistics and modifies nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from einops import rearrange

__all__ = ["LayerStats", "accumulate", "all_reduce", "empty", "reconstruction_error"]


@dataclass(frozen=True)
class LayerStats:
    """``count`` tokens, ``sq_norms`` ``(in,)``, ``gram`` ``(in, in)`` or ``None``; see the module doc."""

    count: int
    sq_norms: torch.Tensor
    gram: torch.Tensor | None = None

    @property
    def norms(self) -> torch.Tensor:
        """``‖X_j‖₂`` per input channel, ``(in,)``."""
        return self.sq_norms.sqrt()


def empty(in_features: int, *, gram: bool, dtype: torch.dtype, device: torch.device | str) -> LayerStats:
    """Statistics of zero tokens."""
    g = torch.zeros(in_features, in_features, dtype=dtype, device=device) if gram else None
    return LayerStats(0, torch.zeros(in_features, dtype=dtype, device=device), g)


def accumulate(stats: LayerStats, x: torch.Tensor) -> LayerStats:
    """``stats`` plus the tokens of ``x`` ``(..., in)`` (every leading axis counts as tokens)."""
    if x.shape[-1] != stats.sq_norms.shape[0]:
        raise ValueError(f"inputs have {x.shape[-1]} features, the statistics {stats.sq_norms.shape[0]}")
    flat = rearrange(x, "... i -> (...) i").to(stats.sq_norms.dtype)
    sq = stats.sq_norms + (flat * flat).sum(0)
    g = None if stats.gram is None else torch.addmm(stats.gram, flat.T, flat)  # one new (in, in) tensor
    return LayerStats(stats.count + flat.shape[0], sq, g)


def all_reduce(stats: LayerStats) -> LayerStats:
    """The sums of ``stats`` over every rank of the default process group (itself without one).

    Every rank gets bit-identical sums, so ranks that prune from them compute identical masks.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return stats
    count = torch.tensor([float(stats.count)], dtype=torch.float64, device=stats.sq_norms.device)
    sq = stats.sq_norms.clone()
    g = None if stats.gram is None else stats.gram.clone()
    for t in (count, sq) if g is None else (count, sq, g):
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return LayerStats(int(count.item()), sq, g)


def reconstruction_error(weight: torch.Tensor, new_weight: torch.Tensor, gram: torch.Tensor) -> float:
    """``‖W X − W' X‖_F`` over the calibration tokens, from ``gram = X Xᵀ`` (no activations kept).

    ``weight``, ``new_weight``: ``(out, in)``; ``gram``: ``(in, in)``. Returns a Python float.
    """
    delta = (weight.to(gram.dtype) - new_weight.to(gram.dtype)).to(gram.device)
    sq = ((delta @ gram) * delta).sum()
    return float(sq.clamp_min(0).sqrt())
