"""The operations an algorithm's rounds call, for one seed or for a stack of seeds.

Every method of :mod:`pure_prune.algorithms` is written once, as rounds over a :class:`RoundOps`.
The rounds never look at whether they run one seed or ``S`` stacked seeds; they ask ``ops`` to:

- ``ops.train(params, state, opt_state, masks, start=, stop=, key=, step=, batch_map=)`` — train
  epochs ``start .. stop-1`` (a :data:`~pure_prune.algorithms.base.TrainFn`);
- ``ops.train_fresh(params, state, masks, epochs=, key=, step=, batch_map=)`` — train
  ``params ⊙ masks`` for epochs ``0 .. epochs-1`` from a fresh optimizer state (a first round, a
  fine-tuning after pruning);
- ``ops.score(params, state, masks, key)`` — scores by the configured criterion, at ``ops.level``
  (``"element"`` or ``"unit"``);
- ``ops.prune(scores, target, masks, struct=, scope=, groups=, nm=)`` — masks pruned further to
  ``target`` (:func:`pure_prune.algorithms.masking.prune_to`);
- ``ops.initialise(key)`` — fresh ``(params, state)`` (a ``reinit`` control);
- ``ops.fresh_opt_state(params, count)`` — ``optimizer.init`` with the step counter at ``count``;
- ``ops.fold(key, offset)`` — a derived key (``rng.fold_in``);
- ``ops.each(fn, *trees, key=)`` — a host-side function of one seed's trees (random controls,
  Refill's conversion, RSST's unit choice, DST's drop-and-grow), run for every seed;
- ``ops.lift(fn)`` — a pure function of one seed's tensors, mapped over the seeds (``vmap``).

**One seed** (``seeds=None``): keys are ints and trees are the model's own; ``each`` calls ``fn``
once and ``lift`` returns ``fn``. **Stacked seeds** (``seeds=S``): every tree has a leading seed
axis, a key is a tuple of ``S`` ints (seed ``i``'s key first derived as in its single-seed run),
``each`` runs ``fn`` on seed ``i``'s slices with ``key[i]`` and stacks the results, and ``lift``
is :func:`pure_prune.seeds.over_seeds`. Seed ``i`` of a stacked run therefore makes exactly the
choices of the single-seed run on ``key[i]``; ``tests/test_runner_seeds.py`` holds them equal.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch

from pure_prune import mask, rng, seeds, tree
from pure_prune.algorithms import masking
from pure_prune.algorithms.base import ScoreFn, Trained, TrainFn, fresh_opt_state
from pure_prune.groups import ChannelGroup
from pure_prune.optim import Optimizer

__all__ = ["Key", "RoundOps", "stack_results"]

Key = int | tuple[int, ...]
"""One seed's key (an int) or a stack's keys (a tuple of ints, one per seed)."""


def _same(values: Sequence[Any]) -> Any:
    first = values[0]
    for i, v in enumerate(values[1:], 1):
        if v != first:
            raise ValueError(
                f"seed {i} returned {v!r} where seed 0 returned {first!r} (not a tensor to stack)"
            )
    return first


def stack_results(results: Sequence[Any]) -> Any:
    """Per-seed results stacked: tensor leaves get a leading seed axis; other leaves (ints, bools,
    ``None``) must agree across seeds and are kept once. Returns a tree like ``results[0]``."""
    return tree.map(
        lambda *xs: torch.stack(xs) if isinstance(xs[0], torch.Tensor) else _same(xs),
        *results,
    )


@dataclasses.dataclass(frozen=True)
class RoundOps:
    """What a method's rounds call (module docstring); build one per run.

    ``optimizer``: the plain optimizer (``fresh_opt_state``); ``train``: a ``TrainFn`` over the
    same kind of trees (stacked when ``seeds`` is set); ``score``: a ``ScoreFn`` (``None`` for a
    method that never scores), returning scores at ``level``; ``init(key) -> (params, state)``
    for one seed's key (``None`` unless a ``reinit`` control needs it); ``seeds``: ``None`` for
    one seed, else the stack's seed count ``S``.
    """

    optimizer: Optimizer
    train: TrainFn
    score: ScoreFn | None = None
    level: str = "element"
    init: Callable[[int], tuple[Any, Any]] | None = None
    seeds: int | None = None

    def __post_init__(self) -> None:
        if self.level not in ("element", "unit"):
            raise ValueError(f"level must be 'element' or 'unit', got {self.level!r}")
        n = self.seeds
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"seeds must be None (one seed) or an int >= 1, got {n!r}")

    @property
    def stacked(self) -> bool:
        """Whether the trees carry a leading seed axis."""
        return self.seeds is not None

    def keys(self, key: Key) -> tuple[int, ...]:
        """``key`` as one int per seed (checked against ``seeds``)."""
        if not self.stacked:
            return (int(key),)
        if not isinstance(key, tuple) or len(key) != self.seeds:
            raise ValueError(f"a stack of {self.seeds} seeds needs a tuple of {self.seeds} keys, got {key!r}")
        return key

    def fold(self, key: Key, offset: int) -> Key:
        """``rng.fold_in(key, offset)``, per seed for a stack."""
        if not self.stacked:
            return rng.fold_in(key, offset)
        return tuple(rng.fold_in(k, offset) for k in self.keys(key))

    def each(self, fn: Callable[..., Any], *trees: Any, key: Key | None = None) -> Any:
        """``fn(*trees)`` (with ``key=`` when given) on one seed; for a stack, on every seed's slices
        with its own key, the results stacked (:func:`stack_results`)."""
        if not self.stacked:
            return fn(*trees) if key is None else fn(*trees, key=key)
        keys = None if key is None else self.keys(key)
        out = []
        for i in range(self.seeds):
            part = [seeds.seed_slice(t, i) for t in trees]
            out.append(fn(*part) if keys is None else fn(*part, key=keys[i]))
        return stack_results(out)

    def lift(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` over one seed's tensors; for a stack, ``vmap``-ed over every (stacked) argument."""
        if not self.stacked:
            return fn

        def lifted(*args: Any) -> Any:
            return seeds.over_seeds(fn, (True,) * len(args))(*args)

        return lifted

    def initialise(self, key: Key) -> tuple[Any, Any]:
        """``init(key)``: fresh ``(params, state)`` (stacked: ``seeds.init_seeds`` over the keys)."""
        if self.init is None:
            raise ValueError("this round needs fresh weights (control 'reinit'): build RoundOps with init=")
        if not self.stacked:
            return self.init(key)
        return seeds.init_seeds(self.init, list(self.keys(key)))

    def fresh_opt_state(self, params: Any, count: int = 0) -> dict[str, Any]:
        """A fresh optimizer state for ``params`` with the step counter at ``count``."""
        if not self.stacked:
            return fresh_opt_state(self.optimizer, params, count)
        return self.each(lambda p: fresh_opt_state(self.optimizer, p, count), params)

    def train_fresh(
        self, params: Any, state: Any, masks: Any, *, epochs: int, key: Key, **kw: Any
    ) -> Trained:
        """``train`` ``params ⊙ masks`` for epochs ``0 .. epochs-1`` from :meth:`fresh_opt_state`
        (step counter 0) on ``key``: a first round, or a fine-tuning after pruning. ``kw``
        (``step=``, ``batch_map=``) passes on to ``train``."""
        params = mask.apply(params, masks)
        return self.train(
            params, state, self.fresh_opt_state(params), masks, start=0, stop=epochs, key=key, **kw
        )

    def scores(self, params: Any, state: Any, masks: Any, key: Key) -> Any:
        """``score(params, state, masks, key)``; ``ValueError`` when the ops have no score."""
        if self.score is None:
            raise ValueError("this round scores weights: build RoundOps with score=")
        return self.score(params, state, masks, key)

    def prune(
        self,
        scores: Any,
        target: float,
        masks: Any,
        *,
        struct: str = "unstructured",
        scope: str = "global",
        groups: Sequence[ChannelGroup] = (),
        nm: tuple[int, int] = (2, 4),
    ) -> Any:
        """``masks`` pruned further to sparsity ``target`` by ``scores`` at ``self.level``
        (:func:`masking.prune_to`; a stack's unstructured element selection runs vmapped,
        ``seeds.select_seeds``, with the same result per seed)."""
        if self.stacked and struct == "unstructured" and self.level == "element":
            return seeds.select_seeds(scores, target, scope=scope, masks=masks)

        def one(s: Any, m: Any) -> Any:
            return masking.prune_to(
                s, target, struct=struct, masks=m, groups=groups, scope=scope, level=self.level, nm=nm
            )

        return self.each(one, scores, masks)

    def to_host(self, value: torch.Tensor | float) -> float | list[float]:
        """A metric as a float (one seed) or a list of floats (one per seed)."""
        if not self.stacked:
            return float(value)
        return [float(v) for v in value]
