"""OWL: outlier-weighed layer-wise sparsity (Yin et al., "Outlier Weighed Layerwise Sparsity (OWL):
A Missing Secret Sauce for Pruning LLMs to High Sparsity", ICML 2024).

Layers (transformer blocks) that hold more *outliers* of Wanda's score should be pruned less.
For block ``l`` with linears ``W`` and inputs ``X`` (the dense model's calibration activations):

    A_ij = |W_ij| · ‖X_j‖₂                                  (Wanda's score, over all the block's linears)
    D_l  = #{A_ij > M · mean(A)} / #A                        (layer-wise outlier distribution, LOD)

and the block sparsities are ``S_l = 1 − D_l``-ordered: with ``D̃_l = 2λ (D_l − min D) / (max D −
min D)`` (a spread of ``2λ``), ``S_l = S − (D̃_l − mean D̃)``, so the mean block sparsity is the
target ``S`` and every ``S_l`` lies in ``[S − λ, S + λ]`` (the paper uses ``M = 5``, ``λ = 0.08``
for LLaMA). OWL then runs Wanda or SparseGPT with those block sparsities
(:func:`prune`). Unstructured patterns only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from pure_prune.llm import calibrate, wanda
from pure_prune.llm.blocks import BlockModel, subtree
from pure_prune.llm.pattern import parse
from pure_prune.llm.stats import LayerStats

__all__ = ["allocate", "block_sparsities", "outlier_ratio", "prune"]


def outlier_ratio(weights: Sequence[torch.Tensor], sq_norms: Sequence[torch.Tensor], m: float) -> float:
    """``D = #{A > m · mean(A)} / #A`` over the Wanda scores ``A`` of all the given linears.

    ``weights[k]`` ``(out_k, in_k)``; ``sq_norms[k]`` ``(in_k,)`` = ``Σ_t x_tj²`` of its inputs.
    """
    if not weights or len(weights) != len(sq_norms):
        raise ValueError(
            f"need as many weights as input norms (at least one), got {len(weights)}, {len(sq_norms)}"
        )
    scores = [wanda.scores(w, s).reshape(-1) for w, s in zip(weights, sq_norms)]
    total = sum(x.numel() for x in scores)
    mean = sum(float(x.sum()) for x in scores) / total
    return sum(int((x > m * mean).sum()) for x in scores) / total


def allocate(ratios: Sequence[float], sparsity: float, lam: float) -> list[float]:
    """Block sparsities from outlier ratios: ``S − (D̃_l − mean D̃)`` with ``D̃`` spread over ``[0, 2λ]``.

    Equal ratios give ``sparsity`` everywhere. Raises ``ValueError`` when a block sparsity would
    leave ``[0, 1]``.
    """
    s = parse(sparsity)
    if s.is_nm:
        raise ValueError(f"OWL allocates unstructured sparsities, got {s}")
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam >= 0:
        raise ValueError(f"lam must be a number >= 0, got {lam!r}")
    d = torch.tensor([float(r) for r in ratios], dtype=torch.float64)
    spread = float(d.max() - d.min()) if d.numel() else 0.0
    if spread == 0:
        return [s.sparsity] * len(ratios)
    scaled = (d - d.min()) * (2 * lam / spread)
    out = [s.sparsity - float(x) for x in scaled - scaled.mean()]
    bad = [(i, v) for i, v in enumerate(out) if not 0 <= v <= 1]
    if bad:
        raise ValueError(f"OWL block sparsities leave [0, 1] at (block, sparsity) {bad}; lower lam")
    return out


def block_sparsities(
    model: BlockModel,
    params: Any,
    tokens: torch.Tensor,
    sparsity: float,
    *,
    m: float = 5.0,
    lam: float = 0.08,
    **engine: Any,
) -> tuple[list[float], list[float]]:
    """``(block sparsities, outlier ratios)`` of the dense model on ``tokens`` ``(N, T)``.

    ``engine``: :func:`pure_prune.llm.calibrate.collect` options (``batch_size``, ``device``, ...).
    """
    if isinstance(m, bool) or not isinstance(m, (int, float)) or not m > 0:
        raise ValueError(f"m (the outlier threshold) must be a number > 0, got {m!r}")
    parse(sparsity)
    per_block: list[Mapping[str, LayerStats]] = calibrate.collect(model, params, tokens, **engine)
    paths = list(model.block_paths(params))
    ratios = []
    for path, block_stats in zip(paths, per_block):
        block = subtree(params, path)
        names = list(model.linears)
        weights = [subtree(block, model.linears[n][0]) for n in names]
        ratios.append(outlier_ratio(weights, [block_stats[n].sq_norms for n in names], m))
    return allocate(ratios, sparsity, lam), ratios


def prune(
    model: BlockModel,
    params: Any,
    tokens: torch.Tensor,
    method: calibrate.Method,
    sparsity: float,
    *,
    m: float = 5.0,
    lam: float = 0.08,
    **engine: Any,
) -> calibrate.CalibrationResult:
    """OWL on top of ``method`` (Wanda or SparseGPT): block sparsities from the dense model's
    outlier ratios, then :func:`pure_prune.llm.calibrate.prune` with them. The record gains
    ``owl``: ``m``, ``lam``, the ratios and the block sparsities."""
    collect_opts = {
        k: v for k, v in engine.items() if k in ("batch_size", "device", "storage", "stats_dtype")
    }
    sparsities, ratios = block_sparsities(model, params, tokens, sparsity, m=m, lam=lam, **collect_opts)
    result = calibrate.prune(model, params, tokens, method, sparsities, **engine)
    result.record["owl"] = {
        "m": float(m), "lam": float(lam), "target": float(parse(sparsity).sparsity),
        "outlier_ratios": ratios, "block_sparsities": sparsities,
    }  # fmt: skip
    return result
