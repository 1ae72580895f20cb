"""Scores from a Hessian diagonal or a Hessian-vector product: OBD, HAP, the per-unit trace, GraSP.

:func:`obd` (Optimal Brain Damage) and :func:`hap` (Yu et al. 2022) take a Hessian-diagonal tree
(``hessian_diag``, ``ggn_diag``, ...); :func:`unit_trace` sums it per unit; :func:`grasp` computes
``theta * (H g)`` from the loss. Every score is higher = keep.
"""

from __future__ import annotations

import torch

from pure_prune import tree
from pure_prune.importance.grad_moments import batch_loss, mean_grad
from pure_prune.importance.hessian_hvp import hvp_batched, weighted_sum
from pure_prune.importance.problem_inputs import (
    Batches,
    LossFn,
    check_finite,
    check_result,
    check_same_tree,
    mask_leaves,
    prepare,
    to_tree,
)
from pure_prune.importance.unit_sums import Units, unit_sum

__all__ = ["grasp", "hap", "obd", "unit_trace"]


def _theta_and_diag(
    where: str, params: tree.Tree, diag: tree.Tree, masks: tree.Tree | None
) -> tuple[list[str], list, list, object]:
    paths, p_leaves, spec = tree.flatten_with_paths(params)
    d_leaves = check_same_tree(where, params, diag, "diag")
    check_finite(f"{where} (diag)", paths, d_leaves)
    m_leaves = mask_leaves(where, params, masks)
    theta = [w if m is None else w * m.to(w.dtype) for w, m in zip(p_leaves, m_leaves)]
    return paths, theta, d_leaves, spec


def unit_trace(diag: tree.Tree, units: Units) -> dict[str, torch.Tensor]:
    """Hessian trace per unit: the sum of ``diag`` over the entries each unit owns.

    ``units``: channel groups (``{group name: (size,)}``, members marked ``score`` whose leaf is not
    None) or an int axis (``{leaf path: (shape[axis],)}`` per non-None leaf).
    """
    return unit_sum(diag, units, "unit_trace")


def obd(params: tree.Tree, diag: tree.Tree, *, masks: tree.Tree | None = None) -> tree.Tree:
    """Optimal Brain Damage saliency ``0.5 * h * theta²`` per entry (``theta = W * M``).

    ``diag`` is a Hessian-diagonal tree like ``params`` (``None`` leaves stay ``None``).
    """
    paths, theta, d_leaves, spec = _theta_and_diag("obd", params, diag, masks)
    return tree.unflatten(spec, [None if h is None else 0.5 * h * w * w for w, h in zip(theta, d_leaves)])


def hap(
    params: tree.Tree, diag: tree.Tree, units: Units, *, masks: tree.Tree | None = None
) -> dict[str, torch.Tensor]:
    """Hessian-aware channel score (HAP): ``trace_u * ||theta_u||² / numel_u`` (Yu et al. 2022).

    For unit ``u``, ``trace_u`` sums ``diag`` over the entries ``u`` owns, ``||theta_u||²`` sums their
    squared weights and ``numel_u`` counts them (members with a non-None ``diag`` leaf).
    ``units`` as in :func:`unit_trace`. Returns ``{name: (size,)}``.
    """
    paths, theta, d_leaves, spec = _theta_and_diag("hap", params, diag, masks)
    present = [h is not None for h in d_leaves]
    sq = tree.unflatten(spec, [w * w if k else None for w, k in zip(theta, present)])
    ones = tree.unflatten(spec, [torch.ones_like(w) if k else None for w, k in zip(theta, present)])
    trace = unit_sum(diag, units, "hap")
    norm = unit_sum(sq, units, "hap")
    count = unit_sum(ones, units, "hap")
    return {k: trace[k] * norm[k] / count[k] for k in trace}


def grasp(
    loss_fn: LossFn,
    params: tree.Tree,
    batches: Batches,
    *,
    masks: tree.Tree | None = None,
) -> tree.Tree:
    """GraSP importance ``theta * (H g)`` (higher = keep).

    ``g`` is the loss gradient over all batches and ``H g`` its Hessian-vector product, both over
    the scored leaves. The GraSP paper's score is ``S = -theta * (H g)`` and prunes the *largest*
    ``S``; this returns ``-S`` so that, as for every pure_prune score, the lowest are pruned.
    Returns a tree like ``params`` (``None`` at unscored leaves).
    """
    problem = prepare("grasp", loss_fn, params, batches, masks)
    g = mean_grad(problem)
    check_result("grasp", problem, g, "gradient")

    def per_batch(b: int, batch: object, _taps: object) -> list[torch.Tensor]:
        return [
            h[0] for h in hvp_batched(problem, batch_loss("hessian", problem, batch))([t[None] for t in g])
        ]

    hg = weighted_sum(problem, per_batch)
    check_result("grasp", problem, hg, "Hg")
    return to_tree(problem, [problem.theta[i] * h for i, h in zip(problem.scored, hg)])
