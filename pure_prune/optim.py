"""Pure, mask-aware optimizers over parameter pytrees (optax-like), and learning-rate schedules.

An :class:`Optimizer` is a NamedTuple of pure functions::

    opt = sgd(0.1, momentum=0.9, weight_decay=5e-4)
    opt_state = opt.init(params)
    updates, opt_state = opt.update(grads, opt_state, params, masks)
    params = apply_updates(params, updates)

``sgd``, ``adam`` and ``adamw`` follow ``torch.optim.SGD`` (dampening 0), ``torch.optim.Adam`` and
``torch.optim.AdamW`` (no amsgrad) step for step, with one parameter group.

**Who guarantees what.** With ``masks`` (the structure of ``params``; bool tensors or their
``mask.as_bytes`` views, ``None`` for dense leaves), ``update`` makes the gradient, the
weight-decay term, the momentum buffer or Adam moments, and the update of every pruned entry
``0.0`` — also when the masks became sparser since the last update (stale state at newly pruned
entries is zeroed). Masking is a product with the mask as ``0.0``/``1.0`` factors
(:func:`mask_factors`, one multi-tensor op per list), so a pruned entry is ``x * 0.0``: ``0.0``
or ``-0.0`` (equal to ``0.0``) for finite ``x``; a gradient, param or state that is
``inf``/``NaN`` at a pruned entry stays ``NaN`` there (``mask.keep`` selects instead, at about
5x the cost on CPU). So :func:`apply_updates`
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
    "mask_factors",
    "apply_factors",
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


# ----------------------------------------------------------------------------- leaf lists


def _foreach() -> bool:
    """Whether list ops may use torch's multi-tensor ``_foreach_*`` kernels: in plain eager code.

    ``torch.func.vmap`` has no batching rule for them (the seeds' steps run the optimizer under
    vmap), and traced code gains nothing (inductor fuses the per-leaf ops anyway), so there the
    same arithmetic runs leaf by leaf. On CPU a ``_foreach_*`` op runs the per-tensor kernel on
    each leaf, so both give bit-identical results; the saving is one dispatch per list.
    """
    return not torch.compiler.is_compiling() and not torch._C._are_functorch_transforms_active()


def _mul(xs: list[Tensor], ys: list[Tensor] | float | Tensor) -> list[Tensor]:
    """``[x * y]`` over a list, ``y`` a list or one scalar (float or 0-dim tensor)."""
    if _foreach():
        return list(torch._foreach_mul(xs, ys))
    if isinstance(ys, list):
        return [x * y for x, y in zip(xs, ys)]
    return [x * ys for x in xs]


def _add(xs: list[Tensor], ys: list[Tensor]) -> list[Tensor]:
    return list(torch._foreach_add(xs, ys)) if _foreach() else [x + y for x, y in zip(xs, ys)]


def _sub(xs: list[Tensor], ys: list[Tensor]) -> list[Tensor]:
    return list(torch._foreach_sub(xs, ys)) if _foreach() else [x - y for x, y in zip(xs, ys)]


def _div(xs: list[Tensor], ys: list[Tensor] | Tensor) -> list[Tensor]:
    if _foreach():
        return list(torch._foreach_div(xs, ys))
    if isinstance(ys, list):
        return [x / y for x, y in zip(xs, ys)]
    return [x / ys for x in xs]


def _add_scalar(xs: list[Tensor], value: float) -> list[Tensor]:
    return list(torch._foreach_add(xs, value)) if _foreach() else [x + value for x in xs]


def _sqrt(xs: list[Tensor]) -> list[Tensor]:
    return list(torch._foreach_sqrt(xs)) if _foreach() else [torch.sqrt(x) for x in xs]


def _iadd(own: list[Tensor], ys: list[Tensor]) -> list[Tensor]:
    """``[x + y]`` computed into ``own`` in eager code: ``own`` must be tensors this update made
    (nothing the caller passed in or gets back elsewhere), so no input is modified."""
    if _foreach():
        torch._foreach_add_(own, ys)
        return own
    return [x + y for x, y in zip(own, ys)]


def _imask(own: list[Tensor], factors: Sequence[Tensor | None]) -> list[Tensor]:
    """:func:`apply_factors` computed into ``own`` (tensors this update made) in eager code."""
    idx = [i for i, f in enumerate(factors) if f is not None]
    if not idx or not _foreach():
        return apply_factors(own, factors)
    torch._foreach_mul_([own[i] for i in idx], [factors[i] for i in idx])  # type: ignore[misc]
    return own


def mask_factors(masks: Sequence[Tensor | None], params: Sequence[Tensor]) -> list[Tensor | None]:
    """The masks as multiplicative factors: ``1.0`` kept, ``0.0`` pruned, in each param's dtype.

    ``masks`` and ``params`` are leaf lists in the same order (``tree.leaves``); a mask is a bool
    tensor or its ``mask.as_bytes`` view (``None``: dense leaf, ``None`` factor). In eager code a
    bool mask is read through its uint8 view, whose conversion is vectorised (about 5x faster on
    CPU than the bool load); while dynamo traces it is converted directly (the view costs a
    vmapped compiled step ~2x: pass ``mask.as_bytes`` views into compiled code instead). Returns a
    list of float tensors of the params' shapes (or ``None``). Not checked: call it on masks that
    ``mask.validate(..., bytes_ok=True)`` accepts.
    """
    traced = torch.compiler.is_compiling()
    out: list[Tensor | None] = []
    for m, p in zip(masks, params):
        if m is None:
            out.append(None)
        elif m.dtype == torch.uint8 or traced:
            out.append(m.to(p.dtype))
        else:
            out.append(m.view(torch.uint8).to(p.dtype))
    return out


def apply_factors(xs: Sequence[Tensor], factors: Sequence[Tensor | None]) -> list[Tensor]:
    """``W ⊙ M`` over a leaf list: each ``x`` times its factor (:func:`mask_factors`) where one is
    given, unchanged where it is ``None``; one multi-tensor multiply in eager code.

    Returns a new list of tensors of the shapes of ``xs``. A pruned entry becomes ``x * 0.0``:
    ``0.0`` (or ``-0.0``, equal to it) for finite ``x``, ``NaN`` for ``inf``/``NaN`` (``mask.keep``
    gives ``0.0`` there); a kept entry is ``x * 1.0 = x`` exactly.
    """
    idx = [i for i, f in enumerate(factors) if f is not None]
    if not idx:
        return list(xs)
    masked = _mul([xs[i] for i in idx], [factors[i] for i in idx])  # type: ignore[misc]
    out = list(xs)
    for i, x in zip(idx, masked):
        out[i] = x
    return out


# ----------------------------------------------------------------------------- optimizers


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
        _check_tree(params, updates, "updates")
    p_leaves, spec = tree.flatten(params)
    return tree.unflatten(spec, _add(p_leaves, tree.leaves(updates)))


def _begin(
    grads: Params, opt_state: OptState, params: Params, masks: Params | None, keys: Sequence[str]
) -> None:
    """Check the arguments of ``update`` (eagerly), naming the offending leaf path."""
    if _checking():
        _check_state(opt_state, ["count", "lr_override", "lr_override_on", *keys])
        _check_params(params)
        _check_tree(params, grads, "grads")
        for k in keys:
            _check_tree(params, opt_state[k], f"opt_state[{k!r}]")
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

    def update_leaves(
        grads: list[Tensor],
        opt_state: OptState,
        params: list[Tensor],
        factors: Sequence[Tensor | None],
        grads_masked: bool = False,
    ) -> tuple[list[Tensor], OptState]:
        if _checking():
            _check_state(opt_state, ["count", "lr_override", "lr_override_on", *keys])
        rate = _current_lr(schedule, opt_state)
        if wd:
            g = _imask(_add(grads, _mul(params, wd)), factors)
        else:
            g = grads if grads_masked else apply_factors(grads, factors)
        new_state = {**opt_state, "count": opt_state["count"] + 1}
        d = g
        if mu > 0:
            bufs, spec = _state_leaves(opt_state, "momentum", params)
            buf = _imask(_iadd(_mul(bufs, mu), g), factors)
            d = _iadd(_mul(buf, mu), g) if nesterov else buf  # mu * b + g == g + mu * b exactly
            new_state["momentum"] = tree.unflatten(spec, buf)
        dtypes = {x.dtype for x in d}
        if len(dtypes) == 1:
            return _mul(d, -rate.to(d[0].dtype)), new_state
        return [-rate.to(x.dtype) * x for x in d], new_state

    return Optimizer(
        init,
        _tree_update(keys, update_leaves),
        lambda opt_state: _current_lr(schedule, opt_state),
        update_leaves,
    )


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

    def update_leaves(
        grads: list[Tensor],
        opt_state: OptState,
        params: list[Tensor],
        factors: Sequence[Tensor | None],
        grads_masked: bool = False,
    ) -> tuple[list[Tensor], OptState]:
        if _checking():
            _check_state(opt_state, ["count", "lr_override", "lr_override_on", "mu", "nu"])
        rate = _current_lr(schedule, opt_state).to(torch.float64)
        t = opt_state["count"].to(torch.float64) + 1.0
        step_size = rate / (1.0 - torch.pow(b1, t))
        root_bc2 = torch.sqrt(1.0 - torch.pow(b2, t))
        mu_old, spec = _state_leaves(opt_state, "mu", params)
        nu_old, nu_spec = _state_leaves(opt_state, "nu", params)
        if coupled_wd:
            g = _imask(_add(grads, _mul(params, coupled_wd)), factors)
        else:
            g = grads if grads_masked else apply_factors(grads, factors)
        # mu + (1 - b1) * (g - mu) and b2 * nu + (1 - b2) * g**2, each product and sum as before
        mus = _imask(_iadd(_mul(_sub(g, mu_old), 1.0 - b1), mu_old), factors)
        nus = _imask(_iadd(_mul(nu_old, b2), _mul(_mul(g, g), 1.0 - b2)), factors)
        if len({p.dtype for p in params}) == 1:
            dtype = params[0].dtype
            denom = _add_scalar(_div(_sqrt(nus), root_bc2.to(dtype)), eps_)
            u = _mul(_div(mus, denom), -step_size.to(dtype))
            if decoupled_wd:
                u = _sub(u, _mul(params, (rate * decoupled_wd).to(dtype)))
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
        lambda opt_state: _current_lr(schedule, opt_state),
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
