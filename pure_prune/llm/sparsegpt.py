"""SparseGPT: one-shot pruning with optimal-brain-surgeon row updates (Frantar & Alistarh, ICML 2023).

For a linear layer ``y = x Wᵀ`` with calibration inputs ``X`` (``in × tokens``), pruning row by
row minimises the layer reconstruction error ``‖W X − W' X‖²``, whose Hessian for every row is
``H = 2 X Xᵀ`` (the same for all rows; only ratios of ``H`` matter, so the engine passes the sum
``X Xᵀ``). The optimal brain surgeon (Hassibi & Stork, 1993) removes weight ``q`` of a row and
compensates with the other weights of that row::

    δw = − (w_q / [H⁻¹]_qq) · H⁻¹_{:,q}                                   (OBS update)
    ε_q = w_q² / [H⁻¹]_qq                                                  (error of removing q)

SparseGPT (their Alg. 1) visits the columns left to right; once column ``j`` is processed it is
frozen, so the update of column ``j`` uses the inverse Hessian of the columns ``≥ j`` only. Row
``j`` of the upper Cholesky factor ``U`` of ``H⁻¹`` (``H⁻¹ = Uᵀ U``) holds exactly those:
``U_{j,j:} = [H_{j:,j:}⁻¹]_{0,:} / √[H_{j:,j:}⁻¹]_00``, so with ``err = (w_j − q_j) / U_jj``::

    W_{:, j:} ← W_{:, j:} − err ⊗ U_{j, j:}          (q_j = 0 where pruned, w_j where kept)

* *Lazy batch updates*: inside a block of ``block_size`` columns the updates are applied
  column by column; the later columns get them all at once, ``W_{:,B:} −= Err · U_{blk, B:}``.
* *Adaptive mask selection*: the mask of each column block is chosen when the block starts, by
  ``ε = w² / U_jj²`` over the block (unstructured: exactly ``round(s · out · in)`` pruned per
  layer, spread over the blocks by cumulative rounding); for N:M at every ``m``-th column the
  ``m − n`` lowest ``ε`` of the next ``m`` columns of each row.
* *Dampening*: ``H + λ · mean(diag H) · I`` (``damp = λ``, 0.01 in the paper); inputs that are
  never active (``H_jj = 0``) get ``H_jj = 1`` and their weights are zeroed.

The result has exact zeros at pruned entries; the kept weights are updated.
"""

from __future__ import annotations

import torch

from pure_prune import select
from pure_prune.llm.calibrate import Method
from pure_prune.llm.pattern import Pattern
from pure_prune.llm.stats import LayerStats

__all__ = ["METHOD", "method", "prune_weight"]


def _check(damp: float, block_size: int) -> None:
    if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not damp >= 0:
        raise ValueError(f"damp must be a number >= 0, got {damp!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")


def _inverse_cholesky(h: torch.Tensor, damp: float, path: str) -> torch.Tensor:
    """Upper Cholesky factor ``U`` of ``(H + damp · mean(diag H) · I)⁻¹``; ``ValueError`` if singular."""
    if damp > 0:
        h = h + damp * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    low, info = torch.linalg.cholesky_ex(h)
    if int(info) != 0:
        raise ValueError(
            f"sparsegpt: the Hessian X Xᵀ of {path!r} is not positive definite (damp={damp}); "
            "use more calibration tokens than inputs or a dampening damp > 0"
        )
    upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(low), upper=True)
    if int(info) != 0:
        raise ValueError(f"sparsegpt: the inverse Hessian of {path!r} is numerically singular (damp={damp})")
    return upper


def prune_weight(
    weight: torch.Tensor,
    gram: torch.Tensor,
    pattern: Pattern | None = None,
    *,
    keep: torch.Tensor | None = None,
    damp: float = 0.01,
    block_size: int = 128,
    dtype: torch.dtype | None = None,
    path: str = "weight",
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT on one layer: ``(new weight (out, in), keep mask (out, in) bool)``.

    ``weight`` ``(out, in)``; ``gram`` ``X Xᵀ`` ``(in, in)``. Either ``pattern`` (the method chooses
    the mask) or ``keep`` (a fixed bool keep mask: only the OBS updates are computed). ``dtype``
    of the computation: float64 on the CPU and float32 elsewhere by default. Raises
    ``ValueError`` naming ``path`` when the dampened Hessian is not positive definite.
    """
    _check(damp, block_size)
    rows, cols = weight.shape
    if gram.shape != (cols, cols):
        raise ValueError(f"gram of {path!r} has shape {tuple(gram.shape)}, expected ({cols}, {cols})")
    if (pattern is None) == (keep is None):
        raise ValueError("give exactly one of pattern and keep")
    if keep is not None and (keep.dtype != torch.bool or keep.shape != weight.shape):
        raise ValueError(
            f"keep must be a bool tensor of shape {tuple(weight.shape)}, got {keep.dtype} {tuple(keep.shape)}"
        )
    if pattern is not None:
        pattern.check_fits(path, tuple(weight.shape))
        if pattern.is_nm and block_size % pattern.m:
            raise ValueError(f"block_size={block_size} must be a multiple of m={pattern.m} for {pattern}")
    dtype = dtype or (torch.float64 if weight.device.type == "cpu" else torch.float32)
    w = weight.to(dtype).clone()
    h = gram.to(device=weight.device, dtype=dtype).clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    u = _inverse_cholesky(h, float(damp), path)

    pruned = torch.zeros(rows, cols, dtype=torch.bool, device=weight.device)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        w1 = w[:, i1:i2].clone()
        u1 = u[i1:i2, i1:i2]
        d1 = torch.diagonal(u1)
        err1 = torch.zeros_like(w1)
        if keep is not None:
            p1 = ~keep[:, i1:i2]
        elif pattern.is_nm:
            p1 = torch.zeros_like(w1, dtype=torch.bool)
        else:
            k = round(pattern.sparsity * rows * i2) - round(pattern.sparsity * rows * i1)
            eps = (w1 * w1 / (d1 * d1)[None, :]).reshape(-1)
            p1 = select.lowest_k([eps], k)[0].reshape(w1.shape)
        for j in range(i2 - i1):
            if keep is None and pattern.is_nm and j % pattern.m == 0:
                g = slice(j, j + pattern.m)
                eps = w1[:, g] ** 2 / (d1[g] ** 2)[None, :]
                p1[:, g] = ~select.n_of_m({path: eps}, pattern.n, pattern.m, axis=-1)[path]
            col = w1[:, j]
            q = torch.where(p1[:, j], torch.zeros_like(col), col)
            err = (col - q) / d1[j]
            w1[:, j + 1 :] -= err[:, None] * u1[j, j + 1 :][None, :]
            w1[:, j] = q
            err1[:, j] = err
        w[:, i1:i2] = w1
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
        pruned[:, i1:i2] = p1
    keep_out = ~pruned
    return torch.where(keep_out, w, torch.zeros_like(w)).to(weight.dtype), keep_out


def method(damp: float = 0.01, block_size: int = 128, dtype: torch.dtype | None = None) -> Method:
    """SparseGPT as an engine :class:`~pure_prune.llm.calibrate.Method` with these settings."""
    _check(damp, block_size)

    def check(path: str, shape: tuple[int, ...], pattern: Pattern, n_tokens: int) -> None:
        if pattern.is_nm and block_size % pattern.m:
            raise ValueError(
                f"sparsegpt: block_size={block_size} must be a multiple of m={pattern.m} ({pattern})"
            )
        if damp == 0 and n_tokens < shape[1]:
            raise ValueError(
                f"sparsegpt: {n_tokens} calibration tokens cannot give a full-rank Hessian X Xᵀ for "
                f"{path!r} with {shape[1]} inputs and damp=0; use at least {shape[1]} tokens or damp > 0"
            )

    def prune_layer(weight, stats: LayerStats | None, pattern: Pattern, path: str):
        if stats is None or stats.gram is None:
            raise ValueError(f"sparsegpt needs X Xᵀ of {path!r}; got no Gram matrix")
        return prune_weight(
            weight, stats.gram, pattern, damp=damp, block_size=block_size, dtype=dtype, path=path
        )

    settings = {"damp": float(damp), "block_size": block_size, "dtype": str(dtype or "auto")}
    return Method("sparsegpt", "gram", prune_layer, check, settings)


METHOD = method()
