"""Many seeds as one program: ``torch.func.vmap`` over stacked trees, compiled once.

A *stacked* tree holds the trees of ``S`` seeds with a leading seed axis on every tensor leaf
(:func:`stack`): params ``(S, *shape)``, BatchNorm state ``(S, C)``, optimizer state (``count``
``(S,)``, momentum ``(S, *shape)``), masks ``(S, *shape)`` bool. A ``None`` leaf (a dense leaf of a
mask tree) has no seed axis and stays ``None``. Seed ``i`` of every result equals the single-seed
computation on seed ``i``'s slice, to float tolerance (``tests/test_sweep.py`` checks it with
BatchNorm and a pruning step in between).

Data is either shared by all seeds (a batch ``x (B, ...)``, vmapped with ``in_dims=None``) or one
batch per seed (``x (S, B, ...)``, ``in_dims=0``, e.g. from :func:`seed_batches`). The choice is
explicit: ``per_seed_batches`` has no default.

Memory: a :class:`SeedFn` runs its seeds in chunks of ``chunk_size`` seeds (``None``: all at once)
and concatenates the chunks, so its result does not depend on the chunk. When a chunk runs out of
memory (``torch.OutOfMemoryError``, or a ``RuntimeError`` saying "can't allocate") the chunk is
halved with a ``RuntimeWarning`` and retried; the smaller chunk is kept for later calls.

Randomness is explicit: every seed has its own key (``rng``); its init, data order and scoring key
derive from it. Whole pipelines over stacked seeds are the application's round loop
(``pure-prune run --seeds S``, ``pure-prune sweep``), which calls these functions through
``pure_prune.algorithms.ops.RoundOps``; :func:`fit_seeds` is the plain training loop::

    params, state = init_seeds(init, keys)
    steps = make_seed_steps(model, losses.cross_entropy, optimizer)
    fit = fit_seeds(steps.train, params, state, init_opt_seeds(optimizer, params),
                    masks_like_seeds(params), lambda e: seed_batches((x, y), 64, keys, e), epochs)

The layer is split by concept; this module re-exports every public name of:
:mod:`pure_prune.seeds_stack` (stacked trees: :func:`num_seeds`, :func:`seed_slice`,
:func:`init_seeds`, :func:`masks_like_seeds`, :func:`init_opt_seeds`, :func:`seed_batches`),
:mod:`pure_prune.seeds_vmap` (:class:`SeedFn`, :func:`over_seeds`, :func:`run_chunked`),
:mod:`pure_prune.seeds_steps` (:class:`SeedStep`, :func:`make_seed_step`, :func:`seed_step_of`,
:func:`make_seed_eval_step`, :func:`evaluate_seeds`, :func:`fit_seeds`, :func:`make_seed_steps`)
and :mod:`pure_prune.seeds_scores` (:func:`score_seeds`, :func:`select_seeds`, :func:`summarize`).
"""

from __future__ import annotations

from pure_prune.seeds_scores import score_seeds, select_seeds, summarize
from pure_prune.seeds_stack import (
    init_opt_seeds,
    init_seeds,
    masks_like_seeds,
    num_seeds,
    seed_batches,
    seed_slice,
)
from pure_prune.seeds_steps import (
    SeedFitResult,
    SeedStep,
    SeedSteps,
    evaluate_seeds,
    fit_seeds,
    make_seed_eval_step,
    make_seed_step,
    make_seed_steps,
    seed_step_of,
)
from pure_prune.seeds_vmap import SeedFn, over_seeds, run_chunked
from pure_prune.tree import stack, unstack

__all__ = [
    "SeedFitResult",
    "SeedFn",
    "SeedStep",
    "SeedSteps",
    "evaluate_seeds",
    "fit_seeds",
    "init_opt_seeds",
    "init_seeds",
    "make_seed_eval_step",
    "make_seed_step",
    "make_seed_steps",
    "masks_like_seeds",
    "num_seeds",
    "over_seeds",
    "run_chunked",
    "score_seeds",
    "seed_batches",
    "seed_slice",
    "seed_step_of",
    "select_seeds",
    "stack",
    "summarize",
    "unstack",
]
