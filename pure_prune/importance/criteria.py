"""The criteria behind :mod:`pure_prune.importance.registry`, each a thin adapter from
:class:`~pure_prune.importance.criterion_types.ScoreInput` to one scoring function.

Element-level (a score per weight; lowest pruned first):

==============  ==============================================================================
``magnitude``   ``|w|`` (``l1`` is the same ranking; ``l2`` is ``w²``)
``random``      uniform scores from the key: the control every comparison needs
``snip``        ``|g ⊙ θ|`` with the mean loss gradient at ``θ = W ⊙ M`` (Lee et al. 2019)
``taylor``      first-order Taylor ``Σ_b w_b (g_b·θ)²`` per element, ``g_b`` batch ``b``'s gradient
                (Molchanov et al. 2019); with one batch it ranks as SNIP does
``grasp``       ``θ ⊙ Hg`` (Wang et al. 2020; sign flipped so the lowest are pruned)
``fisher``      ``½ F θ²`` with the empirical Fisher diagonal ``F`` (Theis et al. 2018)
``obd``         ``½ h θ²`` with the Hessian diagonal ``h`` (LeCun et al. 1990)
``hessian``     ``|h|·|θ|``: second derivatives × ``|w|`` (a Hessian-weighted magnitude)
``gsnr``        gradient signal-to-noise ``mean² / (variance + ε)`` of per-sample gradients
==============  ==============================================================================

Unit-level (a score per channel group unit, for ``select.units``):

==================  ==========================================================================
``hap``             ``trace_u(H) · ‖θ_u‖² / numel_u`` (HAP, Yu et al. 2022)
``taylor_units``    ``|Σ_u g·θ|`` per unit (Molchanov et al. 2019)
``l1_units``        ``Σ_u |θ|`` over the unit's scored members (filter L1, Li et al. 2017)
``enhanced``        a fusion of the weights, activations, gradients and cooperation
                    families (and HAP), ``fusion.fuse`` with ``strategy`` (default ``adaptive``)
==================  ==========================================================================

The Hessian diagonal is ``hessian.hessian_diag(method="auto")``: exact (the GGN, which equals the
Hessian diagonal for cross-entropy on piecewise-linear networks) where that holds, Hutchinson
otherwise, from ``inp.key``.
"""

from __future__ import annotations

from typing import Any

import torch

from pure_prune import losses, tree
from pure_prune.importance import activation, fusion, gradient, hessian, magnitude, weights
from pure_prune.importance.criterion_types import Criterion, ScoreInput

__all__ = ["all_criteria", "hessian_diagonal"]


def _magnitude(inp: ScoreInput, p: float = 1) -> Any:
    return magnitude.magnitude(inp.params, inp.masks, p=p)


def _l2(inp: ScoreInput) -> Any:
    return magnitude.magnitude(inp.params, inp.masks, p=2)


def _random(inp: ScoreInput) -> Any:
    return magnitude.random(inp.masks, inp.key)


def _fn(inp: ScoreInput) -> losses.ModelLoss:
    # the importance functions apply the masks themselves (theta = W * M)
    return losses.model_loss(inp.model_fn(masked=False), "cross_entropy")


def _snip(inp: ScoreInput) -> Any:
    return inp.restrict(gradient.snip(_fn(inp), inp.params, list(inp.batches), masks=inp.masks))


def _taylor(inp: ScoreInput) -> Any:
    return inp.restrict(gradient.taylor(_fn(inp), inp.params, list(inp.batches), masks=inp.masks))


def _grasp(inp: ScoreInput) -> Any:
    return inp.restrict(hessian.grasp(_fn(inp), inp.params, list(inp.batches), masks=inp.masks))


def _theta(inp: ScoreInput) -> Any:
    return tree.map(
        lambda w, m: None if m is None else torch.where(m, w, torch.zeros_like(w)), inp.params, inp.masks
    )


def _fisher(inp: ScoreInput) -> Any:
    f = gradient.empirical_fisher(_fn(inp), inp.params, list(inp.batches), masks=inp.masks)
    return inp.restrict(
        tree.map(lambda fi, t: None if fi is None or t is None else 0.5 * fi * t * t, f, _theta(inp))
    )


def hessian_diagonal(inp: ScoreInput, *, method: str = "auto", probes: int = 64) -> Any:
    """The Hessian diagonal of the loss over ``inp.batches`` at the masked params (a params-like tree)."""
    return hessian.hessian_diag(
        _fn(inp), inp.params, list(inp.batches), method=method, probes=probes, key=inp.key, masks=inp.masks
    )


def _obd(inp: ScoreInput, method: str = "auto", probes: int = 64) -> Any:
    diag = hessian_diagonal(inp, method=method, probes=probes)
    return inp.restrict(hessian.obd(inp.params, diag, masks=inp.masks))


def _hessian(inp: ScoreInput, method: str = "auto", probes: int = 64) -> Any:
    diag = hessian_diagonal(inp, method=method, probes=probes)
    return inp.restrict(
        tree.map(lambda h, t: None if h is None or t is None else h.abs() * t.abs(), diag, _theta(inp))
    )


def _gsnr(inp: ScoreInput, eps: float = 1e-12) -> Any:
    return inp.restrict(
        gradient.gradient_snr(_fn(inp), inp.params, list(inp.batches), masks=inp.masks, eps=eps)
    )


def _hap(inp: ScoreInput, method: str = "auto", probes: int = 64) -> dict[str, torch.Tensor]:
    diag = hessian_diagonal(inp, method=method, probes=probes)
    groups = [g for g in inp.groups if g.prunable]
    return hessian.hap(inp.params, diag, groups, masks=inp.masks)


def _taylor_units(inp: ScoreInput) -> dict[str, torch.Tensor]:
    groups = [g for g in inp.groups if g.prunable]
    return gradient.taylor_units(_fn(inp), inp.params, list(inp.batches), groups, masks=inp.masks)


def _l1_units(inp: ScoreInput) -> dict[str, torch.Tensor]:
    groups = [g for g in inp.groups if g.prunable]
    return magnitude.channel_norms(_magnitude(inp), groups, ord=1)


def _enhanced(
    inp: ScoreInput,
    strategy: str = "adaptive",
    families: tuple[str, ...] = ("weights", "activations", "gradients", "cooperation", "hap"),
    activation_samples: int = 100,
    state: fusion.LearnedState | None = None,
) -> dict[str, torch.Tensor]:
    """The enhanced unit importance (docs/methods.md): the chosen families fused by ``strategy``.

    With ``strategy="learned"`` pass the previous call's ``fusion.Fused.state`` as ``state`` to
    carry the accumulated importance across pruning rounds (a fresh state otherwise).
    """
    groups = [g for g in inp.groups if g.prunable]
    known = ("weights", "activations", "gradients", "cooperation", "hap")
    unknown = sorted(set(families) - set(known))
    if unknown or not families:
        raise ValueError(f"enhanced: unknown families {unknown}; choose from {known}")
    fam: dict[str, dict[str, torch.Tensor]] = {}
    if "weights" in families:
        fam["weights"] = fusion.family_score(
            weights.weight_stats(inp.params, groups, masks=inp.masks), fusion.WEIGHT_FAMILY
        )
    if "cooperation" in families:
        fam["cooperation"] = fusion.family_score(
            weights.cooperation_stats(inp.params, groups, masks=inp.masks), fusion.COOPERATION_FAMILY
        )
    if "activations" in families:
        from pure_prune import mask

        masked = mask.apply(inp.params, inp.masks)
        stats = activation.activation_stats(
            inp.apply,
            masked,
            inp.state,
            inp.batches,
            samples=activation_samples,
            groups=[g.name for g in groups],
        )
        fam["activations"] = fusion.family_score(stats, fusion.ACTIVATION_FAMILY)
    if "gradients" in families:
        gs = gradient.gradient_stats(_fn(inp), inp.params, list(inp.batches), masks=inp.masks)
        fam["gradients"] = fusion.family_score(fusion.gradient_family(gs, groups), fusion.GRADIENT_FAMILY)
    if "hap" in families:
        fam["hap"] = _hap(inp)
    fam = {k: {g.name: v[g.name] for g in groups} for k, v in fam.items()}
    if strategy == "learned" and state is None:  # a first call: no importance accumulated yet
        state = fusion.learned_init({g.name: g.size for g in groups})
    return fusion.fuse(fam, strategy=strategy, state=state).scores


def all_criteria() -> list[Criterion]:
    """Every registered criterion."""
    return [
        Criterion("magnitude", _magnitude, "element", False, "|w| (Han et al. 2015; global L1)"),
        Criterion("l1", _magnitude, "element", False, "|w|, the same ranking as magnitude"),
        Criterion("l2", _l2, "element", False, "w², for channel norms summed as L2"),
        Criterion("random", _random, "element", False, "uniform random scores from the key (a control)"),
        Criterion("snip", _snip, "element", True, "|g ⊙ θ| (SNIP, Lee et al. 2019)"),
        Criterion(
            "taylor", _taylor, "element", True, "mean over batches of (g_b·θ)² (Molchanov et al. 2019)"
        ),
        Criterion("grasp", _grasp, "element", True, "θ ⊙ Hg (GraSP, Wang et al. 2020; lowest pruned)"),
        Criterion("fisher", _fisher, "element", True, "½ F θ², empirical Fisher (Theis et al. 2018)"),
        Criterion("obd", _obd, "element", True, "½ h θ², Hessian diagonal (OBD, LeCun et al. 1990)"),
        Criterion("hessian", _hessian, "element", True, "|h|·|θ|: second derivatives × |w|"),
        Criterion("gsnr", _gsnr, "element", True, "per-sample gradient mean² / (variance + ε)"),
        Criterion("hap", _hap, "unit", True, "trace(H_u)·‖θ_u‖²/numel_u (HAP, Yu et al. 2022)"),
        Criterion("taylor_units", _taylor_units, "unit", True, "|Σ_u g·θ| per unit (Molchanov et al. 2019)"),
        Criterion("l1_units", _l1_units, "unit", False, "Σ_u |θ| per unit (filter L1, Li et al. 2017)"),
        Criterion(
            "enhanced",
            _enhanced,
            "unit",
            True,
            "fused weights/activations/gradients/cooperation/HAP statistics",
        ),
    ]
