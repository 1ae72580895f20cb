"""Importance scores and mask selection over stacked seeds, and per-seed summaries.

:func:`score_seeds` runs a registered importance criterion (``importance.registry``) on every seed:
once under ``torch.func.vmap``, or in a loop over seeds when the criterion draws random numbers
or cannot be traced; it returns element scores ``(S, *shape)`` or unit scores
``{group: (S, size)}``. :func:`select_seeds` is ``select.unstructured`` per seed under vmap
(stacked masks, exactly ``round(s·N)`` pruned per seed). :func:`summarize` gives ``{"mean",
"std", "n"}`` of per-seed values. Re-exported by :mod:`pure_prune.seeds`.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from pure_prune import select, tree
from pure_prune.importance.registry import Criterion, ScoreInput
from pure_prune.importance.registry import get as get_criterion
from pure_prune.seeds_stack import Batch, check_bool, check_keys, num_seeds, seed_slice
from pure_prune.seeds_steps import check_batch, check_stacked
from pure_prune.seeds_vmap import vmap_seeded

__all__ = ["score_seeds", "select_seeds", "summarize"]


class _NeedsKey(Exception):
    """A criterion read ``ScoreInput.key`` under vmap: its random draws would be shared by all seeds."""


class _VmapInput(ScoreInput):
    """The :class:`ScoreInput` a criterion sees under vmap; reading ``key`` raises :class:`_NeedsKey`."""

    __slots__ = ()

    @property
    def key(self) -> int:  # type: ignore[override]
        raise _NeedsKey


def _score_loop(crit: Criterion, apply: Any, args: tuple, keys: list[int], groups, options, per_seed: bool):
    """The criterion on each seed in turn (seed ``i`` with ``keys[i]``), results stacked."""
    params, state, masks, batches = args
    out = []
    for i, k in enumerate(keys):
        b = tuple(tuple(t[i] for t in batch) for batch in batches) if per_seed else batches
        inp = ScoreInput(
            apply, seed_slice(params, i), seed_slice(state, i), seed_slice(masks, i), b, k, groups
        )
        out.append(crit(inp, **options))
    return tree.stack(out)


def score_seeds(
    criterion: str | Criterion,
    model: Any,
    params: Any,
    state: Any,
    masks: Any,
    *,
    keys: Sequence[int],
    batches: Sequence[Batch] = (),
    per_seed_batches: bool = False,
    groups: Sequence[Any] | None = None,
    options: Mapping[str, Any] | None = None,
    vmap: bool | None = None,
) -> Any:
    """Importance scores of every seed by a registered criterion: stacked scores.

    ``criterion``: a name of ``importance.registry`` or a :class:`Criterion`. ``model``: a
    ModelSpec (``.apply``, ``.groups``) or an apply function. ``keys``: one scoring key per seed.
    ``batches``: ``(x, y)`` batches for data-driven criteria, per seed (``x (S, B, ...)``) or
    shared. ``groups``: channel groups for unit criteria (default: ``model.groups`` of seed 0).

    ``vmap=None`` (auto): the criterion runs once under ``torch.func.vmap`` over the seeds, except
    (a) a criterion that reads ``ScoreInput.key`` (it draws random numbers, which vmap would share
    between seeds) and (b) one that vmap cannot trace (e.g. Python control flow on tensor values:
    a ``RuntimeWarning`` names the error): those run in a Python loop over seeds, seed ``i`` with
    ``keys[i]``. ``vmap=True`` refuses (a) with ``ValueError``; ``vmap=False`` always loops.
    Both ways give the same scores. Returns element scores ``(S, *shape)`` shaped like ``masks``
    (``None`` where it is ``None``), or unit scores ``{group: (S, size)}``.
    """
    crit = get_criterion(criterion) if isinstance(criterion, str) else criterion
    if not isinstance(crit, Criterion):
        raise TypeError(f"criterion must be a registered name or a Criterion, got {criterion!r}")
    apply = getattr(model, "apply", model)
    if not callable(apply):
        raise TypeError(f"model must be a ModelSpec or an apply function, got {model!r}")
    keys = check_keys(keys)
    n = check_stacked(params, state, masks, {})
    if len(keys) != n:
        raise ValueError(f"got {len(keys)} keys for {n} seeds")
    per_seed = check_bool("per_seed_batches", per_seed_batches)
    batches = tuple(tuple(b) for b in batches)
    for b in batches:
        check_batch(b, per_seed, n)
    if groups is None:
        groups = tuple(model.groups(seed_slice(params, 0))) if hasattr(model, "groups") else ()
    opts = dict(options or {})
    if vmap not in (None, True, False):
        raise TypeError(f"vmap must be None (auto), True or False, got {vmap!r}")
    args = (params, state, masks, batches)
    if vmap is False:
        return _score_loop(crit, apply, args, keys, groups, opts, per_seed)

    def one(p: Any, s: Any, m: Any, b: tuple) -> Any:
        return crit(_VmapInput(apply, p, s, m, b, 0, groups), **opts)

    try:
        return vmap_seeded(one, (True, True, True, per_seed))(*args)
    except _NeedsKey:
        if vmap:
            raise ValueError(
                f"criterion {crit.name!r} reads the random key, so its draws would be shared by all "
                "seeds under vmap; use vmap=False or None"
            ) from None
    except RuntimeError as err:
        if vmap:
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        warnings.warn(
            f"criterion {crit.name!r} cannot run under vmap ({first}); scoring the seeds in a loop",
            RuntimeWarning,
            stacklevel=2,
        )
    return _score_loop(crit, apply, args, keys, groups, opts, per_seed)


def _check_finite_scores(scores: Any) -> None:
    """Raise naming the leaf, the seed and the index of the first non-finite stacked score."""
    names, leaves, _ = tree.flatten_with_paths(scores)
    for path, x in zip(names, leaves):
        if x is None:
            continue
        if not isinstance(x, Tensor) or not x.is_floating_point():
            what = x.dtype if isinstance(x, Tensor) else type(x).__name__
            raise TypeError(f"score {path!r} must be a floating-point tensor or None, got {what}")
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            idx = tuple(int(i) for i in torch.nonzero(bad)[0])
            raise ValueError(
                f"score {path!r} of seed {idx[0]} is not finite at index {idx[1:]}: {x[idx].item()}"
            )


def select_seeds(
    scores: Any,
    sparsity: float | Mapping[str, float],
    *,
    scope: str = "global",
    masks: Any = None,
) -> Any:
    """Per-seed ``select.unstructured`` under vmap: stacked masks, exactly ``round(s·N)`` pruned per seed.

    ``scores``: stacked ``(S, *shape)`` (``None`` = dense leaf); ``masks``: stacked current masks
    (already-pruned entries stay pruned) or ``None``. ``scope="global"`` ranks each seed's entries
    by one global ranking, ``"layer"`` per leaf (``sparsity`` may then map paths to fractions).
    Seed ``i`` of the result equals ``select.unstructured(seed i's scores, ...)`` exactly (same
    threshold, same tie-break). Non-finite scores raise ``ValueError`` naming path, seed and index.
    """
    n = num_seeds(scores, "scores")
    _check_finite_scores(scores)
    if masks is not None:
        tree.assert_same_structure(scores, masks, ("scores", "masks"))
        if num_seeds(masks, "masks") != n:
            raise ValueError(f"masks have {num_seeds(masks, 'masks')} seeds but scores have {n}")

    def one(s: Any, m: Any) -> Any:
        return select.unstructured(s, sparsity, scope=scope, masks=m)

    return vmap_seeded(one, (True, True))(scores, masks)


# ----------------------------------------------------------------------------------- summaries
def summarize(values: Sequence[float] | Tensor) -> dict[str, float | int]:
    """``{"mean", "std", "n"}`` of per-seed values; ``std`` is the sample standard deviation
    ``sqrt(Σ(v - mean)² / (n - 1))`` (0.0 when ``n == 1``).

    ``values``: a sequence of real numbers or a 1-D tensor. Raises ``ValueError`` when empty or
    not finite, naming the index.
    """
    if isinstance(values, Tensor):
        if values.ndim != 1:
            raise ValueError(f"summarize: values must be 1-D (one per seed), got shape {tuple(values.shape)}")
        values = values.tolist()
    vals = list(values)
    if not vals:
        raise ValueError("summarize: no values")
    for i, v in enumerate(vals):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ValueError(f"summarize: values[{i}] = {v!r} is not a finite real number")
    n = len(vals)
    mean = math.fsum(vals) / n
    var = math.fsum((v - mean) ** 2 for v in vals) / (n - 1) if n > 1 else 0.0
    return {"mean": mean, "std": math.sqrt(var), "n": n}
