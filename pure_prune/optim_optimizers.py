"""The optimizers: :class:`Optimizer` and ``sgd``, ``adam``, ``adamw`` (mask-aware, pure), and
:func:`apply_updates`.

They follow ``torch.optim.SGD`` (dampening 0), ``torch.optim.Adam`` and ``torch.optim.AdamW`` (Kingma
& Ba 2015; Loshchilov & Hutter 2019; no amsgrad) step for step, with every gradient, state entry and
update of a pruned entry ``0.0``; see :mod:`pure_prune.optim` for the guarantees and the layout of
``opt_state``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from pure_prune import tree
from pure_prune.mask import keep
from pure_prune.mask import validate as validate_masks
from pure_prune.optim_checks import (
    OptState,
    Params,
    check_non_negative,
    check_params,
    check_state,
    check_tree,
    check_unit_interval,
)
from pure_prune.optim_leaves import (
    apply_factors,
    list_add,
    list_add_into,
    list_add_scalar,
    list_div,
    list_mul,
    list_sqrt,
    list_sub,
    mask_factors,
    mask_into,
)
from pure_prune.optim_lr import Schedule, as_schedule, current_lr, lr_state

__all__ = ["Optimizer", "adam", "adamw", "apply_updates", "sgd"]


class Optimizer(NamedTuple):
    """A pure optimizer.

    * ``init(params) -> opt_state``
    * ``update(grads, opt_state, params, masks=None) -> (updates, new_opt_state)``: ``updates`` has
      the structure and shapes of ``params``; add them with :func:`apply_updates`.
    * ``current_lr(opt_state) -> Tensor``: the float32 ``()`` learning rate the next update uses.
    * ``update_leaves(grads, opt_state, params, factors, grads_masked=False) -> (updates,
      new_opt_state)``: the same update over leaf lists (``tree.leaves`` order; ``factors`` from
      :func:`mask_factors`), without the tree checks, for a caller that flattens once per step and
      has checked the trees (``train.make_step``'s eager path); the updates are new tensors, which
      the caller may overwrite (no state or input shares them). ``grads_masked=True`` promises
      grads that are already ``g * factor`` (the gradient of a forward pass on ``W * M``), which
      skips that product: masking twice gives the same values. ``None`` for an optimizer that
      has only ``update``.
    """

    init: Callable[[Params], OptState]
    update: Callable[..., tuple[Params, OptState]]
    current_lr: Callable[[OptState], Tensor]
    update_leaves: Callable[..., tuple[list[Tensor], OptState]] | None = None


def _checking() -> bool:
    """Whether to validate trees: in eager code only.

    Under ``torch.compile`` the checks would run once at trace time anyway, and dynamo cannot flatten
    a mask dict whose values are all ``None`` (e.g. a BatchNorm's ``{"scale": None, "shift": None}``),
    so traced code skips them; ``train.make_step`` validates before calling compiled code.
    """
    return not torch.compiler.is_compiling()


def apply_updates(params: Params, updates: Params) -> Params:
    """``params + updates`` leaf by leaf (a new tree; nothing is modified in place)."""
    if _checking():
        check_tree(params, updates, "updates")
    p_leaves, spec = tree.flatten(params)
    return tree.unflatten(spec, list_add(p_leaves, tree.leaves(updates)))


def _begin(
    grads: Params, opt_state: OptState, params: Params, masks: Params | None, keys: Sequence[str]
) -> None:
    """Check the arguments of ``update`` (eagerly), naming the offending leaf path."""
    if _checking():
        check_state(opt_state, ["count", "lr_override", "lr_override_on", *keys])
        check_params(params)
        check_tree(params, grads, "grads")
        for k in keys:
            check_tree(params, opt_state[k], f"opt_state[{k!r}]")
        if masks is not None:
            validate_masks(params, masks, bytes_ok=True)


def _state_leaves(opt_state: OptState, key: str, params: Sequence[Tensor]) -> tuple[list[Tensor], Any]:
    """Leaves and structure of the state tree ``opt_state[key]``. In eager code a state whose
    leaves differ from ``params`` in number, shape or dtype raises ``ValueError``/``TypeError``
    naming the leaf path (``update`` checks the whole tree first)."""
    leaves, spec = tree.flatten(opt_state[key])
    if not _checking():
        return leaves, spec
    if len(leaves) != len(params):
        raise ValueError(
            f"opt_state[{key!r}] has {len(leaves)} leaves but the params have {len(params)}: made by "
            "init on other params?"
        )
    for i, (s, p) in enumerate(zip(leaves, params)):
        if not isinstance(s, Tensor):
            raise TypeError(
                f"opt_state[{key!r}] at {tree.paths(opt_state[key])[i]!r} must be a tensor, got {s!r:.60}"
            )
        if s.shape != p.shape or s.dtype != p.dtype:
            raise ValueError(
                f"opt_state[{key!r}] at {tree.paths(opt_state[key])[i]!r} is {s.dtype} {tuple(s.shape)}, "
                f"but the param is {p.dtype} {tuple(p.shape)}"
            )
    return leaves, spec


def _tree_update(
    keys: Sequence[str], update_leaves: Callable[..., tuple[list[Tensor], OptState]]
) -> Callable[..., tuple[Params, OptState]]:
    """The tree-level ``update`` around a leaf-list ``update_leaves``: checks, one flatten of each
    tree, the masks as factors (:func:`mask_factors`), one unflatten of the updates."""

    def update(
        grads: Params, opt_state: OptState, params: Params, masks: Params | None = None
    ) -> tuple[Params, OptState]:
        _begin(grads, opt_state, params, masks, keys)
        p_leaves, spec = tree.flatten(params)
        m_leaves = [None] * len(p_leaves) if masks is None else tree.leaves(masks)
        updates, new_state = update_leaves(
            tree.leaves(grads), opt_state, p_leaves, mask_factors(m_leaves, p_leaves)
        )
        return tree.unflatten(spec, updates), new_state

    return update


def sgd(
    lr: float | Schedule, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0
) -> Optimizer:
    """Stochastic gradient descent as ``torch.optim.SGD`` (dampening 0, coupled weight decay).

    Per entry, with ``g`` the gradient, ``p`` the param and ``b`` the momentum buffer (zeros at init)::

        g <- g + weight_decay * p          (masked: 0 where pruned)
        b <- momentum * b + g              (masked; the first step gives b = g, as torch)
        d <- g + momentum * b  if nesterov else  b   (d = g without momentum)
        update = -lr * d                   (0 where pruned, since g and b are)

    ``momentum`` is in ``[0, 1)`` (at 1 or above the buffer never decays and the steps grow
    without bound); ``lr`` and ``weight_decay`` are finite and ``>= 0``. Each line is one
    multi-tensor op over the leaf list (``torch._foreach_*`` in eager code).
    """
    schedule = as_schedule(lr)
    mu = check_unit_interval("momentum", momentum)
    wd = check_non_negative("weight_decay", weight_decay)
    if not isinstance(nesterov, bool):
        raise TypeError(f"nesterov must be a bool, got {nesterov!r}")
    if nesterov and mu == 0.0:
        raise ValueError("nesterov=True needs momentum > 0, got momentum=0")
    keys = ["momentum"] if mu > 0 else []

    def init(params: Params) -> OptState:
        state = lr_state(params)
        if mu > 0:
            state["momentum"] = tree.map(torch.zeros_like, params)
        return state

    def update_leaves(
        grads: list[Tensor],
        opt_state: OptState,
        params: list[Tensor],
        factors: Sequence[Tensor | None],
        grads_masked: bool = False,
    ) -> tuple[list[Tensor], OptState]:
        if _checking():
            check_state(opt_state, ["count", "lr_override", "lr_override_on", *keys])
        rate = current_lr(schedule, opt_state)
        if wd:
            g = mask_into(list_add(grads, list_mul(params, wd)), factors)
        else:
            g = grads if grads_masked else apply_factors(grads, factors)
        new_state = {**opt_state, "count": opt_state["count"] + 1}
        d = g
        if mu > 0:
            bufs, spec = _state_leaves(opt_state, "momentum", params)
            buf = mask_into(list_add_into(list_mul(bufs, mu), g), factors)
            d = list_add_into(list_mul(buf, mu), g) if nesterov else buf  # mu * b + g == g + mu * b exactly
            new_state["momentum"] = tree.unflatten(spec, buf)
        dtypes = {x.dtype for x in d}
        if len(dtypes) == 1:
            return list_mul(d, -rate.to(d[0].dtype)), new_state
        return [-rate.to(x.dtype) * x for x in d], new_state

    return Optimizer(
        init,
        _tree_update(keys, update_leaves),
        lambda opt_state: current_lr(schedule, opt_state),
        update_leaves,
    )


def _adam(
    lr: float | Schedule, betas: tuple[float, float], eps: float, weight_decay: float, decoupled: bool
) -> Optimizer:
    schedule = as_schedule(lr)
    if not isinstance(betas, Sequence) or len(betas) != 2:
        raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    b1, b2 = check_unit_interval("betas[0]", betas[0]), check_unit_interval("betas[1]", betas[1])
    eps_ = check_non_negative("eps", eps)
    wd = check_non_negative("weight_decay", weight_decay)
    coupled_wd, decoupled_wd = (0.0, wd) if decoupled else (wd, 0.0)

    def init(params: Params) -> OptState:
        return {
            **lr_state(params),
            "mu": tree.map(torch.zeros_like, params),
            "nu": tree.map(torch.zeros_like, params),
        }

    def update_leaves(
        grads: list[Tensor],
        opt_state: OptState,
        params: list[Tensor],
        factors: Sequence[Tensor | None],
        grads_masked: bool = False,
    ) -> tuple[list[Tensor], OptState]:
        if _checking():
            check_state(opt_state, ["count", "lr_override", "lr_override_on", "mu", "nu"])
        rate = current_lr(schedule, opt_state).to(torch.float64)
        t = opt_state["count"].to(torch.float64) + 1.0
        step_size = rate / (1.0 - torch.pow(b1, t))
        root_bc2 = torch.sqrt(1.0 - torch.pow(b2, t))
        mu_old, spec = _state_leaves(opt_state, "mu", params)
        nu_old, nu_spec = _state_leaves(opt_state, "nu", params)
        if coupled_wd:
            g = mask_into(list_add(grads, list_mul(params, coupled_wd)), factors)
        else:
            g = grads if grads_masked else apply_factors(grads, factors)
        # mu + (1 - b1) * (g - mu) and b2 * nu + (1 - b2) * g**2, each product and sum as before
        mus = mask_into(list_add_into(list_mul(list_sub(g, mu_old), 1.0 - b1), mu_old), factors)
        nus = mask_into(list_add_into(list_mul(nu_old, b2), list_mul(list_mul(g, g), 1.0 - b2)), factors)
        if len({p.dtype for p in params}) == 1:
            dtype = params[0].dtype
            denom = list_add_scalar(list_div(list_sqrt(nus), root_bc2.to(dtype)), eps_)
            u = list_mul(list_div(mus, denom), -step_size.to(dtype))
            if decoupled_wd:
                u = list_sub(u, list_mul(params, (rate * decoupled_wd).to(dtype)))
        else:  # mixed float dtypes: the scalars in each leaf's dtype
            u = []
            for m_, n_, p in zip(mus, nus, params):
                x = -step_size.to(p.dtype) * (m_ / (torch.sqrt(n_) / root_bc2.to(p.dtype) + eps_))
                u.append(x - (rate * decoupled_wd).to(p.dtype) * p if decoupled_wd else x)
        if eps_ == 0.0:  # 0 / 0 = NaN at pruned entries: select, a product would keep the NaN
            u = [x if f is None else keep(x, f != 0) for x, f in zip(u, factors)]
        elif decoupled_wd:  # -lr * wd * p is not 0 where a pruned p is not
            u = apply_factors(u, factors)
        new_state = {
            **opt_state,
            "count": opt_state["count"] + 1,
            "mu": tree.unflatten(spec, mus),
            "nu": tree.unflatten(nu_spec, nus),
        }
        return u, new_state

    return Optimizer(
        init,
        _tree_update(["mu", "nu"], update_leaves),
        lambda opt_state: current_lr(schedule, opt_state),
        update_leaves,
    )


def adam(
    lr: float | Schedule = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> Optimizer:
    """Adam as ``torch.optim.Adam`` (L2 weight decay coupled into the gradient, no amsgrad).

    Per entry, at update ``t = count + 1``::

        g  <- g + weight_decay * p                         (masked)
        mu <- mu + (1 - beta1) * (g - mu);  nu <- beta2 * nu + (1 - beta2) * g**2   (masked)
        update = -lr / (1 - beta1**t) * mu / (sqrt(nu) / sqrt(1 - beta2**t) + eps)   (masked)

    The bias corrections are computed in float64, as torch computes them in Python floats.
    """
    return _adam(lr, betas, eps, weight_decay, decoupled=False)


def adamw(
    lr: float | Schedule = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
) -> Optimizer:
    """AdamW as ``torch.optim.AdamW``: :func:`adam` without the L2 term, plus the decoupled decay
    ``-lr * weight_decay * p`` in the update (masked)."""
    return _adam(lr, betas, eps, weight_decay, decoupled=True)
