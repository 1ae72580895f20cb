"""Hessian-vector products over the scored leaves, and the exact Hessian diagonal.

``H`` is the Hessian of the loss w.r.t. the scored leaves of ``theta = W * M`` (conventions:
:mod:`pure_prune.importance.problem`). :func:`hvp_batched` builds ``vs -> [H v]`` for one batch,
forward-over-reverse (``jvp`` of ``grad``, vmapped over the leading axis of ``vs``), with a
reverse-over-reverse fallback; :func:`hvp` is the public score over several batches;
:func:`exact_diag` takes ``(H e_i)_i`` for every basis vector ``e_i`` (vmapped blocks; for small
models). Shared helpers: :func:`weighted_sum` (the row-weighted sum over batches),
:func:`split_rows` (``(k, D)`` rows -> ``[(k, *leaf.shape)]``), :func:`scored_width` (``D``) and
:func:`scored_paths`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import grad, jvp, vjp, vmap

from pure_prune import tree
from pure_prune.importance.grad_moments import batch_loss
from pure_prune.importance.linear_fast_path import LinearTaps, iter_batches
from pure_prune.importance.problem_inputs import (
    Batches,
    LossFn,
    Problem,
    auto_chunk,
    check_chunk,
    check_result,
    flat_rows,
    prepare,
    to_tree,
)

__all__ = ["exact_diag", "hvp", "hvp_batched", "scored_paths", "scored_width", "split_rows", "weighted_sum"]


def scored_paths(problem: Problem) -> list[str]:
    return [problem.paths[i] for i in problem.scored]


def split_rows(problem: Problem, rows: torch.Tensor) -> list[torch.Tensor]:
    """``(k, D)`` rows over the scored leaves -> ``[(k, *leaf.shape)]``."""
    shapes = [problem.theta[i].shape for i in problem.scored]
    parts = torch.split(rows, [s.numel() for s in shapes], dim=1)
    return [p.reshape(rows.shape[0], *s) for p, s in zip(parts, shapes)]


def scored_width(problem: Problem) -> int:
    return sum(problem.theta[i].numel() for i in problem.scored)


def hvp_batched(
    problem: Problem, scalar: Callable[[list[torch.Tensor]], torch.Tensor]
) -> Callable[[list[torch.Tensor]], list[torch.Tensor]]:
    """``vs -> [H vs]`` for the Hessian of ``scalar`` at the scored leaves, batched over the
    leading axis of ``vs`` (forward-over-reverse: ``jvp`` of ``grad``, vmapped).

    Some torch kernels have no forward-mode derivative of their backward (``F.mse_loss`` raises
    "ZeroTensors are immutable" under ``jvp`` of ``grad`` in torch 2.x); for a loss that uses one,
    the products fall back to reverse-over-reverse (``vjp`` of ``grad``, the pullback built once and
    vmapped over ``vs``; ``H`` is symmetric, so ``H^T v = H v``).
    """
    sub0 = [problem.theta[i] for i in problem.scored]
    g = grad(scalar)
    forward = vmap(lambda v: jvp(g, (sub0,), (v,))[1])
    pullback: list[Callable] = []

    def hvp(vs: list[torch.Tensor]) -> list[torch.Tensor]:
        if not pullback:
            try:
                return forward(vs)
            except RuntimeError as err:
                if "ZeroTensor" not in str(err):
                    raise
                pullback.append(vjp(g, sub0)[1])
        return list(vmap(pullback[0])(vs)[0])

    return hvp


def weighted_sum(problem: Problem, per_batch: Callable[..., list], fast: bool | LinearTaps = False) -> list:
    """``sum_b (N_b / N) per_batch(b, batch_b, taps_b)`` leaf by leaf (``taps_b`` from ``fast``)."""
    total = None
    for b, batch, taps in iter_batches(problem, fast):
        w = problem.rows[b] / problem.samples
        part = per_batch(b, batch, taps)
        part = part if w == 1.0 else [w * t for t in part]
        total = part if total is None else [a + c for a, c in zip(total, part)]
    return total


# ------------------------------------------------------------------------------------------- HVP


def hvp(
    loss_fn: LossFn,
    params: tree.Tree,
    batches: Batches,
    vs: tree.Tree,
    *,
    masks: tree.Tree | None = None,
    chunk_size: int | None = None,
) -> tree.Tree:
    """Hessian-vector products ``H v_k`` of the loss, forward-over-reverse, vmapped over ``k``.

    ``vs`` is a tree like ``params``: ``(K, *leaf.shape)`` at every scored leaf (``None`` at the
    others). Returns the tree of ``H v_k`` in the same layout. ``chunk_size`` vectors are vmapped at
    once (default: as many as fit a 2**24-float block).
    """
    problem = prepare("hvp", loss_fn, params, batches, masks)
    check_chunk(chunk_size)
    v_leaves = _check_vs("hvp", problem, vs)
    k = v_leaves[0].shape[0]
    step = auto_chunk(k, scored_width(problem), chunk_size)

    def per_batch(b: int, batch: object, _taps: object) -> list[torch.Tensor]:
        hv = hvp_batched(problem, batch_loss("hessian", problem, batch))
        blocks = [hv([v[s : s + step] for v in v_leaves]) for s in range(0, k, step)]
        return [torch.cat([blk[j] for blk in blocks]) for j in range(len(v_leaves))]

    out = weighted_sum(problem, per_batch)
    check_result("hvp", problem, out)
    return to_tree(problem, out)


def _check_vs(where: str, problem: Problem, vs: tree.Tree) -> list[torch.Tensor]:
    """The scored leaves of ``vs``, each ``(K, *leaf.shape)`` with one ``K >= 1``; ``ValueError``
    naming the leaf otherwise."""
    params = tree.unflatten(problem.spec, problem.theta)
    tree.assert_same_structure(params, vs, ("params", "vs"))
    leaves = tree.leaves(vs)
    out, k = [], None
    scored = set(problem.scored)
    for i, (p, w, v) in enumerate(zip(problem.paths, problem.theta, leaves)):
        if i not in scored:
            if v is not None:
                raise ValueError(f"{where}: vs leaf {p!r} must be None (the leaf is not scored)")
            continue
        if not isinstance(v, torch.Tensor) or tuple(v.shape[1:]) != tuple(w.shape) or v.ndim != w.ndim + 1:
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else v
            raise ValueError(f"{where}: vs leaf {p!r} must have shape (K, *{tuple(w.shape)}), got {got}")
        if k is None:
            k = v.shape[0]
        if v.shape[0] != k or k == 0:
            raise ValueError(
                f"{where}: vs leaf {p!r} holds {v.shape[0]} vectors, other leaves {k} (need >= 1)"
            )
        out.append(v.to(w.dtype))
    return out


def exact_diag(problem: Problem, chunk_size: int | None) -> list[torch.Tensor]:
    """``(H e_i)_i`` for every coordinate ``i`` of the scored leaves, ``chunk`` basis vectors at once."""
    width = scored_width(problem)
    dtype = problem.theta[problem.scored[0]].dtype
    step = auto_chunk(width, width, chunk_size)

    def per_batch(b: int, batch: object, _taps: object) -> list[torch.Tensor]:
        hv = hvp_batched(problem, batch_loss("hessian", problem, batch))
        diag = []
        for s in range(0, width, step):
            idx = torch.arange(s, min(s + step, width))
            rows = torch.zeros(idx.numel(), width, dtype=dtype)
            rows[torch.arange(idx.numel()), idx] = 1.0
            diag.append(flat_rows(hv(split_rows(problem, rows)))[torch.arange(idx.numel()), idx])
        return [d[0] for d in split_rows(problem, torch.cat(diag)[None])]

    return weighted_sum(problem, per_batch)
