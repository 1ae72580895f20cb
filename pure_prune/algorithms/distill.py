"""Fine-tuning a pruned student from its dense teacher by knowledge distillation (Hinton et al. 2015).

The loss is ``losses.kd_loss`` (``alpha · KL(p_t ‖ p_s) · T² + (1 − alpha) · CE``; defaults
``alpha = 0.5``, ``T = 3``). The teacher's logits are computed per batch on the host side — eval
mode, no autograd graph — and appended to the batch, which ``train.make_step`` hands to the loss as
an extra entry: ``loss(student_logits, y, teacher_logits)``. The student's step stays the ordinary
masked step (compiled once, like any other).

Round 0 trains the dense model; it becomes the teacher. Round ``k = 1 .. rounds`` prunes the current
student to the IMP target ``1 − (1 − rate)^k`` (nested, no rewind) and fine-tunes it
``finetune_epochs`` epochs with a fresh optimizer state on the distillation loss.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from pure_prune import losses, mask, train
from pure_prune.algorithms import imp
from pure_prune.algorithms.base import Carry, RoundOut, carry_out
from pure_prune.algorithms.ops import Key, RoundOps
from pure_prune.groups import ChannelGroup
from pure_prune.optim import Optimizer

__all__ = ["Settings", "first_round", "kd", "make_step", "next_round", "run", "teacher_fn", "with_teacher"]

Batch = tuple[torch.Tensor, ...]
_TRAIN = 0  # round k trains on fold_in(key, _TRAIN + k); imp.score_and_prune keys the scoring


class Settings(NamedTuple):
    """``rate``/``rounds``/``schedule``/``scope``/``struct`` choose the masks as in IMP; ``epochs``
    trains the teacher (round 0); ``finetune_epochs`` per pruning round; ``alpha``/``T`` of the loss."""

    rate: float = 0.5
    rounds: int = 1
    epochs: int = 1
    finetune_epochs: int = 1
    alpha: float = 0.5
    T: float = 3.0
    schedule: str = "geometric"
    scope: str = "global"
    struct: str = "unstructured"

    def check(self) -> Settings:
        """Return ``self`` or raise ``ValueError`` naming the bad knob and value."""
        imp.Settings(
            rate=self.rate,
            rounds=self.rounds,
            epochs=self.epochs,
            schedule=self.schedule,
            scope=self.scope,
            struct=self.struct,
        ).check()
        if (
            isinstance(self.finetune_epochs, bool)
            or not isinstance(self.finetune_epochs, int)
            or self.finetune_epochs < 0
        ):
            raise ValueError(f"finetune_epochs must be an int >= 0, got {self.finetune_epochs!r}")
        kd(self.alpha, self.T)
        return self


def kd(
    alpha: float = 0.5, T: float = 3.0
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """``loss(student_logits, y, teacher_logits)`` = ``losses.kd_loss(student, teacher, y, alpha=, T=)``.

    ``alpha`` and ``T`` are checked now (``ValueError`` naming the value)."""
    probe = torch.zeros(1, 2)
    losses.kd_loss(probe, probe, torch.zeros(1, dtype=torch.long), alpha=alpha, T=T)
    return lambda s, y, t: losses.kd_loss(s, t, y, alpha=alpha, T=T)


def teacher_fn(apply: Callable[..., Any], params: Any, state: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """``f(x) -> logits`` of the teacher: ``apply(params, state, x, train=False)`` under ``torch.no_grad``
    (the result carries no graph; the teacher's state is not updated)."""

    def f(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return apply(params, state, x, train=False)[0].detach()

    return f


def with_teacher(teacher: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[Batch], Batch]:
    """A ``batch_map``: ``(x, y) -> (x, y, teacher(x))`` (extra entries beyond ``y`` are replaced)."""
    return lambda batch: (batch[0], batch[1], teacher(batch[0]))


def make_step(
    model: Any,
    optimizer: Optimizer,
    *,
    alpha: float = 0.5,
    T: float = 3.0,
    compile: bool = True,
    backend: str | Callable = "inductor",
) -> train.Step:
    """The masked train step on the distillation loss (batches ``(x, y, teacher_logits)``)."""
    return train.make_step(model, kd(alpha, T), optimizer, compile=compile, backend=backend)


def first_round(
    params: Any, state: Any, masks: Any, settings: Settings, *, ops: RoundOps, key: Key
) -> RoundOut:
    """Round 0: train the dense teacher; the carry's ``extra["teacher"]`` holds its trees."""
    s = settings.check()
    out = ops.train_fresh(params, state, masks, epochs=s.epochs, key=ops.fold(key, _TRAIN))
    return carry_out(out, masks, extra={"teacher": {"params": out.params, "state": out.state}})


def next_round(
    carry: Carry,
    round: int,  # noqa: A002
    settings: Settings,
    *,
    apply: Callable[..., Any],
    kd_step: train.Step,
    ops: RoundOps,
    key: Key,
    groups: Sequence[ChannelGroup] = (),
) -> RoundOut:
    """Round ``round >= 1``: prune to the IMP target, then distil for ``finetune_epochs`` epochs.

    ``apply`` is the model's (the teacher's logits come from ``ops.lift`` of its eval-mode forward,
    without autograd); ``kd_step`` a :func:`make_step` result (for stacked seeds, the seed step of
    the same loss)."""
    s = settings.check()
    teacher = (carry.extra or {}).get("teacher")
    if teacher is None:
        raise ValueError("distill: the carry holds no teacher (run first_round first)")
    t0 = time.perf_counter()
    masks = imp.score_and_prune(carry, round, s, ops=ops, key=key, groups=groups)
    params = mask.apply(carry.params, masks)
    seconds = time.perf_counter() - t0
    forward = ops.lift(lambda p, st, x: apply(p, st, x, train=False)[0])

    def logits(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return forward(teacher["params"], teacher["state"], x).detach()

    out = ops.train_fresh(
        params,
        carry.state,
        masks,
        epochs=s.finetune_epochs,
        key=ops.fold(key, _TRAIN + round),
        step=kd_step,
        batch_map=with_teacher(logits),
    )
    return carry_out(out, masks, extra=carry.extra, seconds=seconds)


def run(
    params: Any,
    state: Any,
    masks: Any,
    settings: Settings,
    *,
    apply: Callable[..., Any],
    kd_step: train.Step,
    ops: RoundOps,
    key: Key,
    groups: Sequence[ChannelGroup] = (),
) -> tuple[Carry, list[list[dict[str, float]]]]:
    """Rounds ``0 .. rounds``; returns the final carry and each round's history."""
    out = first_round(params, state, masks, settings, ops=ops, key=key)
    histories = [out.history]
    for k in range(1, settings.rounds + 1):
        out = next_round(
            out.carry, k, settings, apply=apply, kd_step=kd_step, ops=ops, key=key, groups=groups
        )
        histories.append(out.history)
    return out.carry, histories
