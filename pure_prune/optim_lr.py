"""Learning rates: schedules as pure tensor functions of the step, and the override in ``opt_state``.

A :data:`Schedule` maps the int64 step tensor (``opt_state["count"]``) to a float32 rate:
:func:`constant`, :func:`multistep` (``MultiStepLR``), :func:`cosine` (``CosineAnnealingLR``),
:func:`warmup` (linear). :func:`set_lr`/:func:`clear_lr` set and clear an override kept in
``opt_state`` (data, so a compiled step never recompiles); :func:`current_lr` reads the rate an
update uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from pure_prune.optim_checks import (
    OptState,
    Params,
    check_count,
    check_non_negative,
    check_number,
    check_params,
    check_state,
)

__all__ = [
    "Schedule",
    "as_schedule",
    "clear_lr",
    "constant",
    "cosine",
    "current_lr",
    "lr_state",
    "multistep",
    "set_lr",
    "warmup",
]

Schedule = Callable[[Tensor], Tensor]
"""A learning rate as a pure tensor function of the step: int64 ``S`` -> float32 ``S``."""


def _step(step: Tensor | int) -> Tensor:
    return torch.as_tensor(step).to(torch.float32)


def constant(lr: float) -> Schedule:
    """``lr`` at every step. Returns a :data:`Schedule` (float32 of the step's shape)."""
    value = check_non_negative("lr", lr)

    def schedule(step: Tensor) -> Tensor:
        return torch.full_like(_step(step), value)

    return schedule


def multistep(lr: float, milestones: Sequence[int], gamma: float = 0.1) -> Schedule:
    """``lr * gamma ** k`` where ``k`` counts the milestones ``<= step`` (``torch.optim.lr_scheduler.MultiStepLR``).

    This is the lottery-ticket code's ``--decreasing_lr 91,136``. Milestones are in optimizer steps (multiply
    epochs by the steps per epoch), strictly increasing, ``>= 0``.
    """
    value = check_non_negative("lr", lr)
    factor = check_number("gamma", gamma)
    if factor <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma!r}")
    if isinstance(milestones, (str, bytes)) or not isinstance(milestones, Sequence):
        raise TypeError(f"milestones must be a sequence of ints, got {milestones!r}")
    marks = [check_count(f"milestones[{i}]", m, 0) for i, m in enumerate(milestones)]
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
    hi = check_non_negative("lr", lr)
    lo = check_non_negative("final", final)
    total = check_count("total_steps", total_steps, 1)

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
    inner = as_schedule(schedule)
    steps = check_count("warmup_steps", warmup_steps, 0)
    if steps == 0:
        return inner

    def warmed(step: Tensor) -> Tensor:
        ramp = torch.clamp((_step(step) + 1.0) / steps, max=1.0)
        return inner(step) * ramp

    return warmed


def as_schedule(lr: float | Schedule) -> Schedule:
    """``lr`` itself if it is a schedule (callable), else :func:`constant` of it."""
    if callable(lr) and not isinstance(lr, Tensor):
        return lr
    return constant(lr)


# -------------------------------------------------------------------------------- learning-rate state


def lr_state(params: Params) -> OptState:
    """The learning-rate entries of a new ``opt_state`` on the params' device: ``count`` (int64 0)
    and the cleared override ``lr_override``/``lr_override_on``."""
    device = check_params(params)[0].device
    return {
        "count": torch.zeros((), dtype=torch.int64, device=device),
        "lr_override": torch.zeros((), dtype=torch.float32, device=device),
        "lr_override_on": torch.zeros((), dtype=torch.bool, device=device),
    }


def current_lr(schedule: Schedule, opt_state: OptState) -> Tensor:
    """The float32 rate of the next update: the override if set, else ``schedule(count)``."""
    return torch.where(opt_state["lr_override_on"], opt_state["lr_override"], schedule(opt_state["count"]))


def set_lr(opt_state: OptState, value: float | Tensor) -> OptState:
    """A new ``opt_state`` whose updates use ``value`` as the learning rate, whatever the schedule.

    ``value`` is a float or a tensor broadcastable to ``opt_state["lr_override"]`` (shape ``()``,
    or ``(S,)`` for states stacked over seeds). The schedule's step keeps counting; the override
    stays until :func:`clear_lr`. Changing it does not recompile a compiled step (it is data).
    Call it between steps, outside compiled code (a tensor ``value`` is checked eagerly).
    """
    check_state(opt_state, ["lr_override", "lr_override_on"])
    old = opt_state["lr_override"]
    if isinstance(value, Tensor):
        if not value.is_floating_point() or not bool(torch.isfinite(value).all()) or bool((value < 0).any()):
            raise ValueError(f"set_lr: value must be finite, >= 0 and floating point, got {value!r}")
        new = torch.broadcast_to(value.to(device=old.device, dtype=old.dtype), old.shape).clone()
    else:
        new = torch.full_like(old, check_non_negative("lr", value))
    return {**opt_state, "lr_override": new, "lr_override_on": torch.ones_like(opt_state["lr_override_on"])}


def clear_lr(opt_state: OptState) -> OptState:
    """A new ``opt_state`` whose updates follow the optimizer's schedule again (undoes :func:`set_lr`)."""
    check_state(opt_state, ["lr_override", "lr_override_on"])
    return {**opt_state, "lr_override_on": torch.zeros_like(opt_state["lr_override_on"])}
