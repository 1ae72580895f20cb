"""Iterative magnitude pruning with rewinding: lottery tickets (Frankle & Carbin 2019).

Round 0 trains the dense model for ``epochs`` epochs and keeps the weights of epoch
``rewind_epoch`` (``0``: the initialisation). Round ``k = 1 .. rounds``:

1. score the trained weights (``ops.score``, usually ``|w|``) and prune to the target of round ``k``
   — ``schedule="geometric"``: ``1 − (1 − r)^k``; ``"progressive"``: a decaying
   rate, ``1 − Π_{j<k} (1 − r_j)`` with ``r_j = r × 1.0 / 0.8 / 0.6 / 0.4`` (``schedule.progressive``);
2. rewind the surviving weights to the kept ones (``W_rewind ⊙ M``), masks kept, a fresh optimizer
   state whose step counter sits at ``rewind_epoch · steps_per_epoch`` (so a learning-rate schedule
   resumes where the rewind point was);
3. train epochs ``rewind_epoch .. epochs − 1``.

**Rounding rule.** Pruning is nested (pruned entries stay pruned; a round ranks only the live
ones) and exact: after ``k`` rounds at rate ``r`` each prunable scope of ``N`` entries — all
prunable entries together for ``scope="global"``, each leaf for ``scope="layer"`` — keeps exactly
``N − round((1 − (1 − r)^k) · N)`` entries (Python ``round``, half to even). 20 rounds at 0.2 keep
``0.8^20 ≈ 1.15%``.

Controls (``control``): ``"reinit"`` rewinds to a fresh initialisation from another key instead of
the stored weights (same masks); ``"random_masks"`` replaces each round's masks by random ones with
the same kept count per leaf, nested in the previous round's (random positions, same per-layer
sparsity).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from pure_prune import mask, select
from pure_prune import schedule as schedules
from pure_prune.algorithms import masking
from pure_prune.algorithms.base import Carry, RoundOut, carry_out
from pure_prune.algorithms.ops import Key, RoundOps
from pure_prune.groups import ChannelGroup
from pure_prune.importance import magnitude

__all__ = [
    "CONTROLS",
    "SCHEDULES",
    "ImpResult",
    "Settings",
    "first_round",
    "next_round",
    "prune_round",
    "random_masks_like",
    "run",
    "score_and_prune",
    "target",
]

SCHEDULES = ("geometric", "progressive")
CONTROLS = ("none", "reinit", "random_masks")

# keys: fold_in(key, _TRAIN + k) shuffles round k's data, _SCORE + k scores it, _CONTROL + k draws
# its control (fresh init or random masks)
_TRAIN, _SCORE, _CONTROL = 0, 1 << 20, 2 << 20


class Settings(NamedTuple):
    """The knobs of a lottery-ticket run (the names of Chen et al. 2022's code in brackets).

    ``rate`` [rate]: share of the remaining weights pruned per round; ``rounds`` [pruning_times];
    ``epochs``: training epochs per round; ``rewind_epoch`` [rewind_epoch]; ``steps_per_epoch``
    positions the learning-rate schedule at the rewind point; ``schedule``/``scope``/``struct``/
    ``control`` as in the module docstring and :mod:`~pure_prune.algorithms.masking`.
    """

    rate: float = 0.2
    rounds: int = 1
    epochs: int = 1
    rewind_epoch: int = 0
    steps_per_epoch: int = 1
    schedule: str = "geometric"
    scope: str = "global"
    struct: str = "unstructured"
    control: str = "none"

    def check(self) -> Settings:
        """Return ``self`` or raise ``ValueError`` naming the bad knob and value."""
        if not 0.0 <= float(self.rate) < 1.0:
            raise ValueError(f"rate must be in [0, 1) (a share of the remaining weights), got {self.rate!r}")
        for name in ("rounds", "epochs", "rewind_epoch", "steps_per_epoch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "steps_per_epoch" else 0):
                raise ValueError(f"{name} must be a non-negative int, got {v!r}")
        if self.rewind_epoch > self.epochs:
            raise ValueError(
                f"rewind_epoch {self.rewind_epoch} is past the end of training ({self.epochs} epochs)"
            )
        for name, known in (("schedule", SCHEDULES), ("control", CONTROLS), ("struct", masking.STRUCTS)):
            if getattr(self, name) not in known:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; known: {', '.join(known)}")
        if self.struct == "nm":
            raise ValueError("struct 'nm' has a fixed sparsity 1 - n/m; iterative rounds cannot raise it")
        if self.scope not in ("global", "layer"):
            raise ValueError(f"scope must be 'global' or 'layer', got {self.scope!r}")
        return self


class ImpResult(NamedTuple):
    """The final carry, the masks after every round (``masks[0]`` all kept) and each round's history."""

    carry: Carry
    masks: list[Any]
    histories: list[list[dict[str, float]]]


def target(round: int, rate: float, schedule: str = "geometric") -> float:  # noqa: A002
    """Sparsity after ``round`` pruning rounds (``round = 0``: dense, 0.0)."""
    if schedule == "geometric":
        return schedules.geometric(rate)(round)
    if schedule == "progressive":
        return schedules.progressive(rate)(round)
    raise ValueError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")


def prune_round(
    masks: Any,
    scores: Any,
    round: int,  # noqa: A002
    rate: float,
    *,
    schedule: str = "geometric",
    scope: str = "global",
    struct: str = "unstructured",
    groups: Sequence[ChannelGroup] = (),
    level: str = "element",
) -> Any:
    """Masks of round ``round``: ``masks`` pruned further to :func:`target` by ``scores`` (nested).

    ``struct="unstructured"`` keeps exactly ``N − round(target · N)`` entries per scope (module
    docstring); ``"rows"``/``"channels"`` apply the same rule to rows/units.
    """
    return masking.prune_to(
        scores,
        target(round, rate, schedule),
        struct=struct,
        masks=masks,
        groups=groups,
        scope=scope,
        level=level,
    )


def score_and_prune(
    carry: Carry,
    round: int,  # noqa: A002
    settings: Any,
    *,
    ops: RoundOps,
    key: Key,
    groups: Sequence[ChannelGroup] = (),
) -> Any:
    """Score ``carry``'s trained weights with key ``fold_in(key, 2**20 + round)`` and return its masks
    pruned further to round ``round``'s :func:`target` (nested; rule of the module docstring).

    ``settings`` is any settings tuple with ``rate``/``schedule``/``scope``/``struct`` (:class:`Settings`,
    ``distill.Settings``). Returns a masks tree like ``carry.masks``."""
    scores = ops.scores(carry.params, carry.state, carry.masks, ops.fold(key, _SCORE + round))
    goal = target(round, settings.rate, settings.schedule)
    return ops.prune(scores, goal, carry.masks, struct=settings.struct, scope=settings.scope, groups=groups)


def random_masks_like(masks: Any, previous: Any, key: int) -> Any:
    """Random masks with the kept count of ``masks`` in every leaf, nested in ``previous``.

    Positions are drawn uniformly from ``key`` among the entries ``previous`` keeps; leaves where
    ``masks`` is ``None`` stay ``None``. Returns a tree like ``masks``.
    """
    per_leaf = mask.layer_sparsity(masks)
    return select.unstructured(magnitude.random(previous, key), per_leaf, scope="layer", masks=previous)


def first_round(
    params: Any, state: Any, masks: Any, settings: Settings, *, ops: RoundOps, key: Key
) -> RoundOut:
    """Round 0: train ``params`` (masked by ``masks``, usually all kept) for ``settings.epochs``
    epochs, storing the weights of epoch ``rewind_epoch`` as the rewind point."""
    s = settings.check()
    params = mask.apply(params, masks)
    opt_state = ops.fresh_opt_state(params)
    k_train = ops.fold(key, _TRAIN)
    history: list[dict[str, Any]] = []
    if s.rewind_epoch > 0:
        early = ops.train(params, state, opt_state, masks, start=0, stop=s.rewind_epoch, key=k_train)
        params, state, opt_state, history = early.params, early.state, early.opt_state, list(early.history)
    rewind = {"params": params, "state": state}
    out = ops.train(params, state, opt_state, masks, start=s.rewind_epoch, stop=s.epochs, key=k_train)
    carry = Carry(out.params, out.state, out.opt_state, masks, rewind, {})
    return RoundOut(carry, history + list(out.history), None)


def next_round(
    carry: Carry,
    round: int,  # noqa: A002
    settings: Settings,
    *,
    ops: RoundOps,
    key: Key,
    groups: Sequence[ChannelGroup] = (),
    mask_fn: Callable[[Any, Any, Any], Any] | None = None,
) -> RoundOut:
    """Round ``round >= 1``: prune, rewind, retrain (module docstring).

    ``ops.score`` scores the trained weights of the previous round; ``ops.init`` gives the fresh
    weights of ``control="reinit"``. ``mask_fn(new_masks, old_masks, params) -> masks`` transforms
    each seed's selected masks before rewinding (Refill uses it).
    """
    s = settings.check()
    if isinstance(round, bool) or not isinstance(round, int) or round < 1:
        raise ValueError(f"next_round: round must be an int >= 1, got {round!r}")
    if carry.rewind is None:
        raise ValueError("next_round: the carry has no rewind point (run first_round first)")
    t0 = time.perf_counter()
    masks = score_and_prune(carry, round, s, ops=ops, key=key, groups=groups)
    if s.control == "random_masks":
        masks = ops.each(random_masks_like, masks, carry.masks, key=ops.fold(key, _CONTROL + round))
    if mask_fn is not None:
        masks = ops.each(mask_fn, masks, carry.masks, carry.params)
    if s.control == "reinit":
        base_params, base_state = ops.initialise(ops.fold(key, _CONTROL + round))
    else:
        base_params, base_state = carry.rewind["params"], carry.rewind["state"]
    params = mask.apply(base_params, masks)
    prune_seconds = time.perf_counter() - t0
    opt_state = ops.fresh_opt_state(params, s.rewind_epoch * s.steps_per_epoch)
    out = ops.train(
        params,
        base_state,
        opt_state,
        masks,
        start=s.rewind_epoch,
        stop=s.epochs,
        key=ops.fold(key, _TRAIN + round),
    )
    return carry_out(out, masks, rewind=carry.rewind, extra=carry.extra, seconds=prune_seconds)


def run(
    params: Any,
    state: Any,
    masks: Any,
    settings: Settings,
    *,
    ops: RoundOps,
    key: Key,
    groups: Sequence[ChannelGroup] = (),
    mask_fn: Callable[[Any, Any, Any], Any] | None = None,
) -> ImpResult:
    """All ``settings.rounds + 1`` rounds: :func:`first_round` then :func:`next_round` for ``k = 1..rounds``."""
    out = first_round(params, state, masks, settings, ops=ops, key=key)
    all_masks, histories = [out.carry.masks], [out.history]
    for k in range(1, settings.rounds + 1):
        out = next_round(out.carry, k, settings, ops=ops, key=key, groups=groups, mask_fn=mask_fn)
        all_masks.append(out.carry.masks)
        histories.append(out.history)
    return ImpResult(out.carry, all_masks, histories)
