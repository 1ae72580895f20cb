"""The run's training callback: epochs of the compiled step over the data set, for one seed or a stack.

:func:`epoch_trainer` returns the :data:`~pure_prune.algorithms.base.TrainFn` every method's rounds
call through :class:`~pure_prune.algorithms.ops.RoundOps`. One seed: ``train.fit`` over
``Experiment.train_batches(key)``; a stack of ``S`` seeds: ``seeds.fit_seeds`` over
``seeds.seed_batches`` (seed ``i`` on its own batches, ordered by ``keys[i]`` exactly as the
single-seed run with that key orders them). Epoch ``e`` is shuffled by ``data.epoch_key(key, e)``,
so epochs ``k .. E-1`` after a rewind see the data order of an uninterrupted run's epochs ``k .. E-1``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from typing import Any

from tqdm import tqdm

from pure_prune import mask, seeds, train
from pure_prune.algorithms.base import Trained, TrainFn, check_epochs
from pure_prune.app.divergence import check_epoch
from pure_prune.app.experiment import Experiment

__all__ = ["check_epochs", "epoch_trainer"]

Batch = tuple[Any, ...]


def epoch_trainer(
    exp: Experiment,
    *,
    seeds_step: seeds.SeedSteps | None = None,
    evaluate: bool = False,
    round: int | None = None,  # noqa: A002 - the run's word for it
    progress: bool = False,
    desc: str = "train",
) -> TrainFn:
    """A ``TrainFn`` over ``exp``'s training split, one epoch at a time.

    ``seeds_step=None``: one seed; ``step`` defaults to ``exp.step`` and ``key`` is an int.
    Otherwise the trees are stacked, ``key`` is a tuple of one int per seed, ``step`` defaults to
    ``seeds_step.train`` and history values are lists (one per seed). ``batch_map`` transforms every
    batch (e.g. appends teacher logits). With ``evaluate`` each epoch's entry also holds
    ``test_accuracy``/``test_loss``; ``seconds`` is the epoch's training time (a first epoch
    includes compiling a new step). The params are masked once on entry, so a step built with
    ``premasked=True`` gives the results of an unpremasked one. With ``round`` set, an epoch whose
    loss is not finite raises ``divergence.Diverged`` naming that round and epoch (checked where the
    epoch's metrics are read anyway). ``progress`` shows one tqdm bar (``desc``) over the epochs.
    """

    def train_fn(
        params: Any,
        state: Any,
        opt_state: Any,
        masks: Any,
        *,
        start: int,
        stop: int,
        key: Any,
        step: Any = None,
        batch_map: Callable[[Batch], Batch] | None = None,
    ) -> Trained:
        check_epochs(start, stop)
        if masks is not None:
            params = mask.apply(params, masks)
        if seeds_step is None:
            run, order = exp.step if step is None else step, exp.train_batches(key)
            fit, test = functools.partial(train.fit, progress=False), exp.evaluate
        else:
            ds = exp.dataset
            run, fit = seeds_step.train if step is None else step, seeds.fit_seeds

            def order(epoch: int) -> Iterator[Batch]:
                return seeds.seed_batches((ds.x_train, ds.y_train), exp.batch_size, list(key), epoch)

            def test(params: Any, state: Any, masks: Any) -> dict[str, Any]:
                return seeds.evaluate_seeds(seeds_step.eval, params, state, masks, exp.test_batches())

        history: list[dict[str, Any]] = []
        given = params
        for epoch in tqdm(range(start, stop), desc=desc, unit="epoch", disable=not progress, leave=False):

            def batches(_: int, e: int = epoch) -> Any:
                it = order(e)
                return it if batch_map is None else map(batch_map, it)

            t0 = time.perf_counter()
            res = fit(run, params, state, opt_state, masks, batches, 1)
            params, state, opt_state = res.params, res.state, res.opt_state
            entry = {"epoch": float(epoch), **res.history[0], "seconds": time.perf_counter() - t0}
            if evaluate:
                metrics = test(params, state, masks)
                entry.update(test_accuracy=metrics["accuracy"], test_loss=metrics["loss"])
            history.append(entry)
            if round is not None:
                check_epoch(round, entry, history, masks, given)
        return Trained(params, state, opt_state, history)

    return train_fn
