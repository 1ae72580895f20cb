"""Gradual pruning: the masks tighten on a schedule during one continuous training run.

``schedule(epoch) -> target sparsity`` (``pure_prune.schedule``: ``polynomial`` (Zhu & Gupta),
``linear`` (power 1), ``linear_steps`` (equal steps: 5 steps every 15 epochs from epoch 30,
8% → 40%)). Training epochs ``0 .. epochs − 1`` are cut into *segments*, the maximal runs of epochs
with the same target. At the start of each segment whose target is above 0 the weights are scored
and pruned to the target (nested: pruned entries stay pruned), then the segment is trained. The
optimizer state carries on across segments (the masked optimizer zeroes the state of newly pruned
entries); the data order of epoch ``e`` is the same as in an unpruned run. Masks are inputs of the
train step, so a compiled step serves every segment without recompiling. The rounds run on one seed
or on stacked seeds alike (:class:`~pure_prune.algorithms.ops.RoundOps`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from pure_prune import mask
from pure_prune.algorithms.base import Carry, RoundOut, carry_out
from pure_prune.algorithms.ops import Key, RoundOps
from pure_prune.groups import ChannelGroup

__all__ = ["first_round", "next_round", "run", "segments"]

_TRAIN, _SCORE = 0, 1 << 20


def segments(schedule: Callable[[int], float], epochs: int) -> list[tuple[int, int, float]]:
    """``[(start, stop, target), ...]``: epochs ``start .. stop − 1`` share ``target = schedule(start)``.

    The segments cover ``0 .. epochs − 1`` in order; consecutive targets differ. Raises
    ``ValueError`` when ``epochs < 1`` or a target leaves ``[0, 1]`` or decreases (masks only tighten).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    out: list[tuple[int, int, float]] = []
    for e in range(epochs):
        s = float(schedule(e))
        if not 0.0 <= s <= 1.0:
            raise ValueError(f"schedule({e}) = {s!r} is not a sparsity in [0, 1]")
        if out and s < out[-1][2]:
            raise ValueError(
                f"schedule({e}) = {s} is below the previous target {out[-1][2]}; masks only tighten"
            )
        if out and s == out[-1][2]:
            out[-1] = (out[-1][0], e + 1, s)
        else:
            out.append((e, e + 1, s))
    return out


def _segment(
    carry: Carry,
    seg: tuple[int, int, float],
    index: int,
    *,
    ops: RoundOps,
    key: Key,
    struct: str,
    scope: str,
    groups: Sequence[ChannelGroup],
) -> RoundOut:
    start, stop, target = seg
    seconds = None
    masks, params = carry.masks, carry.params
    if target > 0.0:
        t0 = time.perf_counter()
        scores = ops.scores(params, carry.state, masks, ops.fold(key, _SCORE + index))
        masks = ops.prune(scores, target, masks, struct=struct, scope=scope, groups=groups)
        params = mask.apply(params, masks)
        seconds = time.perf_counter() - t0
    out = ops.train(
        params, carry.state, carry.opt_state, masks, start=start, stop=stop, key=ops.fold(key, _TRAIN)
    )
    return carry_out(out, masks, extra=carry.extra, seconds=seconds)


def first_round(
    params: Any,
    state: Any,
    masks: Any,
    segs: Sequence[tuple[int, int, float]],
    *,
    ops: RoundOps,
    key: Key,
    struct: str = "unstructured",
    scope: str = "global",
    groups: Sequence[ChannelGroup] = (),
) -> RoundOut:
    """Segment 0 from the initial trees (a fresh optimizer state)."""
    params = mask.apply(params, masks)
    carry = Carry(params, state, ops.fresh_opt_state(params), masks, None, {})
    return _segment(carry, segs[0], 0, ops=ops, key=key, struct=struct, scope=scope, groups=groups)


def next_round(
    carry: Carry,
    index: int,
    segs: Sequence[tuple[int, int, float]],
    *,
    ops: RoundOps,
    key: Key,
    struct: str = "unstructured",
    scope: str = "global",
    groups: Sequence[ChannelGroup] = (),
) -> RoundOut:
    """Segment ``index >= 1``: prune to its target, then train its epochs with the carried optimizer state."""
    if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index < len(segs):
        raise ValueError(f"gradual: segment index must be in [1, {len(segs) - 1}], got {index!r}")
    return _segment(carry, segs[index], index, ops=ops, key=key, struct=struct, scope=scope, groups=groups)


def run(
    params: Any,
    state: Any,
    masks: Any,
    schedule: Callable[[int], float],
    epochs: int,
    *,
    ops: RoundOps,
    key: Key,
    struct: str = "unstructured",
    scope: str = "global",
    groups: Sequence[ChannelGroup] = (),
) -> tuple[Carry, list[Any], list[list[dict[str, float]]]]:
    """Train ``epochs`` epochs, pruning on ``schedule``. Returns the final carry, the masks after each
    segment and each segment's history."""
    segs = segments(schedule, epochs)
    kw = dict(ops=ops, key=key, struct=struct, scope=scope, groups=groups)
    out = first_round(params, state, masks, segs, **kw)
    all_masks, histories = [out.carry.masks], [out.history]
    for i in range(1, len(segs)):
        out = next_round(out.carry, i, segs, **kw)
        all_masks.append(out.carry.masks)
        histories.append(out.history)
    return out.carry, all_masks, histories
