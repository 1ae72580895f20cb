"""Pure, mask-aware optimizers over parameter pytrees (optax-like), and learning-rate schedules.

An :class:`Optimizer` is a NamedTuple of pure functions::

    opt = sgd(0.1, momentum=0.9, weight_decay=5e-4)
    opt_state = opt.init(params)
    updates, opt_state = opt.update(grads, opt_state, params, masks)
    params = apply_updates(params, updates)

``sgd``, ``adam`` and ``adamw`` follow ``torch.optim.SGD`` (dampening 0), ``torch.optim.Adam`` and
``torch.optim.AdamW`` (no amsgrad) step for step, with one parameter group.

**Who guarantees what.** With ``masks`` (the structure of ``params``; bool tensors or their
``mask.as_bytes`` views, ``None`` for dense leaves), ``update`` makes the gradient, the weight-decay term, the momentum buffer or Adam
moments, and the update of every pruned entry exactly ``0.0`` — also when the masks became sparser
since the last update (stale state at newly pruned entries is zeroed). So :func:`apply_updates`
leaves a pruned entry that is already ``0.0`` at exactly ``0.0``. The optimizer never rewrites
``params`` itself: a pruned entry that is non-zero on entry stays as it was. ``train.make_step``
re-applies the masks to the params after each update, so there every pruned weight is exactly
``0.0`` after every step.

**opt_state** is a canonical dict of tensors, so it can be checkpointed, stacked over seeds and fed
to a compiled step:

* ``count``: int64, shape ``()``: number of updates done; the schedule's step.
* ``lr_override`` (float32, ``()``) and ``lr_override_on`` (bool, ``()``): see :func:`set_lr`.
* ``momentum`` (``sgd`` with momentum > 0) or ``mu``, ``nu`` (``adam``/``adamw``): trees like
  ``params``.

The learning rate is a float or a :data:`Schedule`, evaluated at every update on the step tensor
``count``; the override of :func:`set_lr` is read from ``opt_state`` too. So neither a new step nor
:func:`set_lr` recompiles a compiled step. Trees are validated (paths named in errors) in eager
code; under ``torch.compile`` validation is skipped, see ``train.make_step``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from pure_prune import tree
from pure_prune.mask import keep
from pure_prune.mask import validate as validate_masks

__all__ = [
    "Optimizer",
    "Schedule",
    "adam",
    "adamw",
    "apply_updates",
    "clear_lr",
    "constant",
    "cosine",
    "multistep",
    "set_lr",
    "sgd",
    "warmup",
]

Params = Any
OptState = dict[str, Any]
Schedule = Callable[[Tensor], Tensor]
"""A learning rate as a pure tensor function of the step: int64 ``S`` -> float32 ``S``."""


class Optimizer(NamedTuple):
    """A pure optimizer.

    * ``init(params) -> opt_state``
    * ``update(grads, opt_state, params, masks=None) -> (updates, new_opt_state)``: ``updates`` has
      the structure and shapes of ``params``; add them with :func:`apply_updates`.
    * ``current_lr(opt_state) -> Tensor``: the float32 ``()`` learning rate the next update uses.
    """

    init: Callable[[Params], OptState]
    update: Callable[..., tuple[Params, OptState]]
    current_lr: Callable[[OptState], Tensor]


# ----------------------------------------------------------------------------- argument checks


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _non_negative(name: str, value: object) -> float:
    v = _number(name, value)
    if v < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return v


def _unit_interval(name: str, value: object) -> float:
    v = _number(name, value)
    if not 0.0 <= v < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return v


def _count(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    return int(value)


def _check_tree(params: Params, other: Params, name: str) -> None:
    """Raise naming the first bad leaf path unless ``other`` has the structure, leaf shapes and
    dtypes of ``params`` (a float64 gradient would silently promote a float32 param)."""
    p_leaves, p_spec = tree.flatten(params)
    o_leaves, o_spec = tree.flatten(other)
    if p_spec != o_spec:
        tree.assert_same_structure(params, other, ("params", name))
    for i, (p, o) in enumerate(zip(p_leaves, o_leaves)):
        if not isinstance(o, Tensor):
            raise TypeError(f"{name} at {tree.paths(params)[i]!r} must be a tensor, got {o!r}")
        if o.shape != getattr(p, "shape", None):
            want = tuple(p.shape) if isinstance(p, Tensor) else repr(p)
            raise ValueError(
                f"{name} at {tree.paths(params)[i]!r} has shape {tuple(o.shape)}, but the param is {want}"
            )
        if o.dtype != p.dtype:
            raise TypeError(
                f"{name} at {tree.paths(params)[i]!r} has dtype {o.dtype}, but the param is {p.dtype}"
            )


def _check_params(params: Params) -> list[Tensor]:
    p_leaves = tree.leaves(params)
    for i, p in enumerate(p_leaves):
        if not isinstance(p, Tensor) or not p.is_floating_point():
            path = tree.paths(params)[i]
            what = f"a {p.dtype} tensor" if isinstance(p, Tensor) else repr(p)
            raise TypeError(f"params at {path!r} must be a floating-point tensor, got {what}")
    if not p_leaves:
        raise ValueError("params has no tensor leaves")
    return p_leaves


def _check_state(opt_state: OptState, keys: Sequence[str]) -> None:
    if not isinstance(opt_state, dict):
        raise TypeError(f"opt_state must be the dict made by init, got {type(opt_state).__name__}")
    missing = [k for k in keys if k not in opt_state]
    if missing:
        raise ValueError(f"opt_state lacks {missing} (has {sorted(opt_state)}): made by another optimizer?")
    for k in ("count", "lr_override", "lr_override_on"):
        if k in keys and not isinstance(opt_state[k], Tensor):
            raise TypeError(f"opt_state[{k!r}] must be a tensor, got {opt_state[k]!r:.60}")


# ----------------------------------------------------------------------------- schedules


def _step(step: Tensor | int) -> Tensor:
    return torch.as_tensor(step).to(torch.float32)


def constant(lr: float) -> Schedule:
    """``lr`` at every step. Returns a :data:`Schedule` (float32 of the step's shape)."""
    value = _non_negative("lr", lr)

    def schedule(step: Tensor) -> Tensor:
        return torch.full_like(_step(step), value)

    return schedule


def multistep(lr: float, milestones: Sequence[int], gamma: float = 0.1) -> Schedule:
    """``lr * gamma ** k`` where ``k`` counts the milestones ``<= step`` (``torch.optim.lr_scheduler.MultiStepLR``).

    This is the lottery-ticket code's ``--decreasing_lr 91,136``. Milestones are in optimizer steps (multiply
    epochs by the steps per epoch), strictly increasing, ``>= 0``.
    """
    value = _non_negative("lr", lr)
    factor = _number("gamma", gamma)
    if factor <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma!r}")
    if isinstance(milestones, (str, bytes)) or not isinstance(milestones, Sequence):
        raise TypeError(f"milestones must be a sequence of ints, got {milestones!r}")
    marks = [_count(f"milestones[{i}]", m, 0) for i, m in enumerate(milestones)]
    if any(b <= a for a, b in zip(marks, marks[1:])):
        raise ValueError(f"milestones must be strictly increasing, got {list(milestones)!r}")

    def schedule(step: Tensor) -> Tensor:
        t = _step(step)
        passed = torch.zeros_like(t)
        for m in marks:
            passed = passed + (t >= m).to(torch.float32)
        return value * torch.pow(factor, passed)

    return schedule


def cosine(lr: float, total_steps: int, final: float = 0.0) -> Schedule:
    """``final + (lr - final) * (1 + cos(pi * min(step, total_steps) / total_steps)) / 2``.

    The closed form of ``torch.optim.lr_scheduler.CosineAnnealingLR`` (``eta_min=final``), held at
    ``final`` after ``total_steps``.
    """
    hi = _non_negative("lr", lr)
    lo = _non_negative("final", final)
    total = _count("total_steps", total_steps, 1)

    def schedule(step: Tensor) -> Tensor:
        frac = torch.clamp(_step(step), 0.0, float(total)) / total
        return lo + (hi - lo) * 0.5 * (1.0 + torch.cos(math.pi * frac))

    return schedule


def warmup(schedule: float | Schedule, warmup_steps: int) -> Schedule:
    """Linear warm-up: ``schedule(step) * min(1, (step + 1) / warmup_steps)``.

    The first update uses ``1 / warmup_steps`` of the rate, update ``warmup_steps - 1`` the full
    rate; ``schedule`` runs on the same clock (a cosine over ``total_steps`` includes the warm-up).
    ``warmup_steps = 0`` returns ``schedule`` unchanged. A float ``schedule`` means :func:`constant`.
    """
    inner = _as_schedule(schedule)
    steps = _count("warmup_steps", warmup_steps, 0)
    if steps == 0:
        return inner

    def warmed(step: Tensor) -> Tensor:
        ramp = torch.clamp((_step(step) + 1.0) / steps, max=1.0)
        return inner(step) * ramp

    return warmed


def _as_schedule(lr: float | Schedule) -> Schedule:
    if callable(lr) and not isinstance(lr, Tensor):
        return lr
    return constant(lr)


# ----------------------------------------------------------------------------- learning-rate state


def _lr_state(params: Params) -> OptState:
    device = _check_params(params)[0].device
    return {
        "count": torch.zeros((), dtype=torch.int64, device=device),
        "lr_override": torch.zeros((), dtype=torch.float32, device=device),
        "lr_override_on": torch.zeros((), dtype=torch.bool, device=device),
    }


def _current_lr(schedule: Schedule, opt_state: OptState) -> Tensor:
    return torch.where(opt_state["lr_override_on"], opt_state["lr_override"], schedule(opt_state["count"]))


def set_lr(opt_state: OptState, value: float | Tensor) -> OptState:
    """A new ``opt_state`` whose updates use ``value`` as the learning rate, whatever the schedule.

    ``value`` is a float or a tensor broadcastable to ``opt_state["lr_override"]`` (shape ``()``,
    or ``(S,)`` for states stacked over seeds). The schedule's step keeps counting; the override
    stays until :func:`clear_lr`. Changing it does not recompile a compiled step (it is data).
    Call it between steps, outside compiled code (a tensor ``value`` is checked eagerly).
    """
    _check_state(opt_state, ["lr_override", "lr_override_on"])
    old = opt_state["lr_override"]
    if isinstance(value, Tensor):
        if not value.is_floating_point() or not bool(torch.isfinite(value).all()) or bool((value < 0).any()):
            raise ValueError(f"set_lr: value must be finite, >= 0 and floating point, got {value!r}")
        new = torch.broadcast_to(value.to(device=old.device, dtype=old.dtype), old.shape).clone()
    else:
        new = torch.full_like(old, _non_negative("lr", value))
    return {**opt_state, "lr_override": new, "lr_override_on": torch.ones_like(opt_state["lr_override_on"])}


def clear_lr(opt_state: OptState) -> OptState:
    """A new ``opt_state`` whose updates follow the optimizer's schedule again (undoes :func:`set_lr`)."""
    _check_state(opt_state, ["lr_override", "lr_override_on"])
    return {**opt_state, "lr_override_on": torch.zeros_like(opt_state["lr_override_on"])}


# ----------------------------------------------------------------------------- optimizers


def _keep(x: Tensor, mask: Tensor | None) -> Tensor:
    """``x`` with the entries that ``mask`` prunes set to exactly 0.0 (``mask.keep``: bool or bytes)."""
    return keep(x, mask)


def _checking() -> bool:
    """Whether to validate trees: in eager code only.

    Under ``torch.compile`` the checks would run once at trace time anyway, and dynamo cannot flatten
    a mask dict whose values are all ``None`` (e.g. a BatchNorm's ``{"scale": None, "shift": None}``),
    so traced code uses ``tree.map`` only; ``train.make_step`` validates before calling compiled code.
    """
    return not torch.compiler.is_compiling()


def apply_updates(params: Params, updates: Params) -> Params:
    """``params + updates`` leaf by leaf (a new tree; nothing is modified in place)."""
    if _checking():
        _check_tree(params, updates, "updates")
    return tree.map(torch.add, params, updates)


def _begin(
    grads: Params, opt_state: OptState, params: Params, masks: Params | None, keys: Sequence[str]
) -> Params:
    """Check the arguments of ``update`` (eagerly); return ``masks`` with ``None`` spelled out per leaf."""
    if _checking():
        _check_state(opt_state, ["count", "lr_override", "lr_override_on", *keys])
        _check_params(params)
        _check_tree(params, grads, "grads")
        for k in keys:
            _check_tree(params, opt_state[k], f"opt_state[{k!r}]")
        if masks is not None:
            validate_masks(params, masks, bytes_ok=True)
    return tree.map(lambda _: None, params) if masks is None else masks


def sgd(
    lr: float | Schedule, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0
) -> Optimizer:
    """Stochastic gradient descent as ``torch.optim.SGD`` (dampening 0, coupled weight decay).

    Per entry, with ``g`` the gradient, ``p`` the param and ``b`` the momentum buffer (zeros at init)::

        g <- g + weight_decay * p          (masked: 0 where pruned)
        b <- momentum * b + g              (masked; the first step gives b = g, as torch)
        d <- g + momentum * b  if nesterov else  b   (d = g without momentum)
        update = -lr * d                   (masked)

    ``momentum`` is in ``[0, 1)`` (at 1 or above the buffer never decays and the steps grow
    without bound); ``lr`` and ``weight_decay`` are finite and ``>= 0``.
    """
    schedule = _as_schedule(lr)
    mu = _unit_interval("momentum", momentum)
    wd = _non_negative("weight_decay", weight_decay)
    if not isinstance(nesterov, bool):
        raise TypeError(f"nesterov must be a bool, got {nesterov!r}")
    if nesterov and mu == 0.0:
        raise ValueError("nesterov=True needs momentum > 0, got momentum=0")
    keys = ["momentum"] if mu > 0 else []

    def init(params: Params) -> OptState:
        state = _lr_state(params)
        if mu > 0:
            state["momentum"] = tree.map(torch.zeros_like, params)
        return state

    def update(
        grads: Params, opt_state: OptState, params: Params, masks: Params | None = None
    ) -> tuple[Params, OptState]:
        masks = _begin(grads, opt_state, params, masks, keys)
        rate = _current_lr(schedule, opt_state)
        g = tree.map(lambda g, p, m: _keep(g + wd * p if wd else g, m), grads, params, masks)
        new_state = {**opt_state, "count": opt_state["count"] + 1}
        d = g
        if mu > 0:
            buf = tree.map(lambda b, g, m: _keep(mu * b + g, m), opt_state["momentum"], g, masks)
            d = tree.map(lambda g, b: g + mu * b, g, buf) if nesterov else buf
            new_state["momentum"] = buf
        return tree.map(lambda d, m: _keep(-rate.to(d.dtype) * d, m), d, masks), new_state

    return Optimizer(init, update, lambda opt_state: _current_lr(schedule, opt_state))


def _adam(
    lr: float | Schedule, betas: tuple[float, float], eps: float, weight_decay: float, decoupled: bool
) -> Optimizer:
    schedule = _as_schedule(lr)
    if not isinstance(betas, Sequence) or len(betas) != 2:
        raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    b1, b2 = _unit_interval("betas[0]", betas[0]), _unit_interval("betas[1]", betas[1])
    eps_ = _non_negative("eps", eps)
    wd = _non_negative("weight_decay", weight_decay)
    coupled_wd, decoupled_wd = (0.0, wd) if decoupled else (wd, 0.0)

    def init(params: Params) -> OptState:
        return {
            **_lr_state(params),
            "mu": tree.map(torch.zeros_like, params),
            "nu": tree.map(torch.zeros_like, params),
        }

    def update(
        grads: Params, opt_state: OptState, params: Params, masks: Params | None = None
    ) -> tuple[Params, OptState]:
        masks = _begin(grads, opt_state, params, masks, ["mu", "nu"])
        rate = _current_lr(schedule, opt_state).to(torch.float64)
        t = opt_state["count"].to(torch.float64) + 1.0
        step_size = rate / (1.0 - torch.pow(b1, t))
        root_bc2 = torch.sqrt(1.0 - torch.pow(b2, t))
        g = tree.map(lambda g, p, m: _keep(g + coupled_wd * p if coupled_wd else g, m), grads, params, masks)
        mus = tree.map(lambda mu, g, m: _keep(mu + (1.0 - b1) * (g - mu), m), opt_state["mu"], g, masks)
        nus = tree.map(lambda nu, g, m: _keep(b2 * nu + (1.0 - b2) * (g * g), m), opt_state["nu"], g, masks)

        def leaf_update(mu: Tensor, nu: Tensor, p: Tensor, m: Tensor | None) -> Tensor:
            u = -step_size.to(p.dtype) * (mu / (torch.sqrt(nu) / root_bc2.to(nu.dtype) + eps_))
            if decoupled_wd:
                u = u - (rate * decoupled_wd).to(p.dtype) * p
            return _keep(u, m)

        updates = tree.map(leaf_update, mus, nus, params, masks)
        return updates, {**opt_state, "count": opt_state["count"] + 1, "mu": mus, "nu": nus}

    return Optimizer(init, update, lambda opt_state: _current_lr(schedule, opt_state))


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
