"""Per-unit activation statistics (the ``enhanced`` importance), accumulated batch by batch.

The activations family (0.2·frequency + 0.3·magnitude + 0.2·variance + 0.2·entropy +
0.1·range) of every unit of a channel group, from the activations a model returns with
``apply(params, state, x, train=False, capture=True) -> (out, state, acts)``, where
``acts[group] = (N, units, ...)``: units on axis 1.

**Observations.** Every entry of a unit's activation is one observation: for ``(N, U)`` the ``N``
samples, for ``(N, U, H, W)`` or an LSTM's ``(N, U, T)`` the ``N·H·W`` (``N·T``) sample-position
pairs. A unit's statistics describe the distribution of its output over all inputs and positions,
which is what a channel feeds the next layer.

With ``n`` observations ``a_k`` of a unit:

* ``frequency = #{a_k > 0} / n`` (the share of observations where the unit fires);
* ``magnitude = (1/n) sum |a_k|``;
* ``variance = (1/n) sum (a_k - mean)²`` (population variance, no Bessel correction);
* ``range = max a_k - min a_k``;
* ``entropy``: ``t_k = softsign(a_k / scale) = s / (1 + |s|)`` with ``s = a_k / scale`` maps the
  real line onto ``(-1, 1)``; ``[-1, 1]`` is cut into ``bins`` equal bins (bin ``j`` covers
  ``[-1 + 2j/bins, -1 + 2(j+1)/bins)``, the last bin also holds 1); with ``q_j`` the share of
  observations in bin ``j``, ``entropy = -sum q_j ln q_j / ln(bins)`` in ``[0, 1]``. The bins are
  fixed before any data is seen, so streaming equals one pass over all data, and the softsign keeps
  resolution near 0, where most activations are, while still counting large values.

Streaming: :func:`activation_init` / :func:`activation_update` / :func:`activation_finalize` are
pure functions over ``{group: ActivationStats}``; memory is ``O(units · bins)`` per group whatever
the number of batches. Means and variances combine batches with Chan et al.'s pairwise update of
Welford's algorithm, in float64 by default. :func:`activation_stats` runs a model over up to
``samples`` batches (``activation_samples``, default 100) and finalizes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import torch
from einops import rearrange, reduce

from pure_prune import tree

__all__ = [
    "ACTIVATION_STATISTICS",
    "ActivationStats",
    "activation_finalize",
    "activation_init",
    "activation_stats",
    "activation_update",
]

ACTIVATION_STATISTICS = ("frequency", "magnitude", "variance", "entropy", "range")


class ActivationStats(NamedTuple):
    """Running statistics of one group's ``U`` units (all tensors of the accumulation dtype).

    ``count ()``: observations per unit so far; ``mean, m2 (U,)``: running mean and sum of squared
    deviations; ``abs_sum, positive (U,)``: sums of ``|a|`` and of ``[a > 0]``; ``low, high (U,)``:
    running min and max (``+inf``/``-inf`` before any data); ``hist (U, bins)``: bin counts of
    ``softsign(a / scale)``; ``scale ()``: the histogram's activation scale.
    """

    count: torch.Tensor
    mean: torch.Tensor
    m2: torch.Tensor
    abs_sum: torch.Tensor
    positive: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    hist: torch.Tensor
    scale: torch.Tensor


Stats = dict[str, ActivationStats]


def _check_int(where: str, name: str, v: Any, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{where}: {name} must be an int >= {low}, got {v!r}")
    return v


def activation_init(
    units: Mapping[str, int],
    *,
    bins: int = 32,
    scale: float = 1.0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Stats:
    """Empty statistics for groups ``{name: number of units}``.

    ``bins`` (>= 2) histogram bins for the entropy and ``scale`` (> 0) the activation scale of the
    histogram (see the module docstring). Returns ``{name: ActivationStats}`` of zeros (``low=+inf``,
    ``high=-inf``) in ``dtype``.
    """
    where = "activation_init"
    if not isinstance(units, Mapping) or not units:
        raise ValueError(
            f"activation_init: units must be a non-empty mapping {{group: size}}, got {units!r:.80}"
        )
    _check_int(where, "bins", bins, 2)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < math.inf:
        raise ValueError(f"{where}: scale must be a finite float > 0, got {scale!r}")
    if not dtype.is_floating_point:
        raise TypeError(f"{where}: dtype must be floating, got {dtype}")
    out = {}
    for name, size in units.items():
        _check_int(where, f"units[{name!r}]", size, 1)

        def z(*shape: int) -> torch.Tensor:
            return torch.zeros(shape, dtype=dtype, device=device)

        out[name] = ActivationStats(
            count=z(),
            mean=z(size),
            m2=z(size),
            abs_sum=z(size),
            positive=z(size),
            low=torch.full((size,), math.inf, dtype=dtype, device=device),
            high=torch.full((size,), -math.inf, dtype=dtype, device=device),
            hist=z(size, bins),
            scale=torch.tensor(float(scale), dtype=dtype, device=device),
        )
    return out


def _update_one(name: str, s: ActivationStats, a: torch.Tensor) -> ActivationStats:
    size, bins = s.hist.shape
    if not isinstance(a, torch.Tensor) or a.ndim < 2 or a.shape[1] != size:
        got = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
        raise ValueError(f"activation_update: acts[{name!r}] must be (N, {size}, ...), got {got}")
    if not a.is_floating_point():
        raise TypeError(f"activation_update: acts[{name!r}] must be floating, got dtype {a.dtype}")
    obs = rearrange(a.detach().to(s.mean.dtype), "n u ... -> u (n ...)")
    if not bool(torch.isfinite(obs).all()):
        bad = obs[~torch.isfinite(obs)][0].item()
        raise ValueError(f"activation_update: acts[{name!r}] holds a non-finite value {bad}")
    m = obs.shape[1]
    if m == 0:
        return s
    b_mean = reduce(obs, "u m -> u", "mean")
    centred = obs - b_mean[:, None]
    b_m2 = reduce(centred * centred, "u m -> u", "sum")
    n = s.count + m
    delta = b_mean - s.mean
    mean = s.mean + delta * (m / n)
    m2 = s.m2 + b_m2 + delta * delta * (s.count * m / n)

    t = obs / s.scale
    t = t / (1 + t.abs())
    idx = ((t + 1) * (bins / 2)).floor().clamp(0, bins - 1).long()
    flat = idx + torch.arange(size, device=idx.device)[:, None] * bins
    counts = torch.bincount(rearrange(flat, "u m -> (u m)"), minlength=size * bins)
    hist = s.hist + rearrange(counts.to(s.hist.dtype), "(u b) -> u b", u=size)
    return ActivationStats(
        count=n,
        mean=mean,
        m2=m2,
        abs_sum=s.abs_sum + reduce(obs.abs(), "u m -> u", "sum"),
        positive=s.positive + reduce((obs > 0).to(obs.dtype), "u m -> u", "sum"),
        low=torch.minimum(s.low, reduce(obs, "u m -> u", "min")),
        high=torch.maximum(s.high, reduce(obs, "u m -> u", "max")),
        hist=hist,
        scale=s.scale,
    )


def activation_update(stats: Stats, acts: Mapping[str, torch.Tensor]) -> Stats:
    """Fold one batch of activations ``{group: (N, U, ...)}`` into ``stats``; returns new statistics.

    Every group of ``stats`` must be in ``acts`` (extra entries of ``acts`` are ignored). Raises
    ``ValueError`` naming the group on a wrong shape or a non-finite activation, before any update.
    """
    missing = [k for k in stats if k not in acts]
    if missing:
        raise ValueError(f"activation_update: acts has no entry for groups {missing}; it has {sorted(acts)}")
    return {k: _update_one(k, s, acts[k]) for k, s in stats.items()}


def activation_finalize(stats: Stats) -> dict[str, dict[str, torch.Tensor]]:
    """The activations family ``{statistic: {group: (U,)}}`` with statistics
    :data:`ACTIVATION_STATISTICS` (definitions in the module docstring), in the accumulation dtype.

    Raises ``ValueError`` naming the group when it has seen no observation.
    """
    out: dict[str, dict[str, torch.Tensor]] = {k: {} for k in ACTIVATION_STATISTICS}
    for name, s in stats.items():
        n = float(s.count)
        if n <= 0:
            raise ValueError(f"activation_finalize: group {name!r} has no observations (count {n})")
        bins = s.hist.shape[1]
        q = s.hist / n
        out["frequency"][name] = s.positive / n
        out["magnitude"][name] = s.abs_sum / n
        out["variance"][name] = s.m2 / n
        out["entropy"][name] = -reduce(torch.special.xlogy(q, q), "u b -> u", "sum") / math.log(bins)
        out["range"][name] = s.high - s.low
    return out


def activation_stats(
    apply: Callable[..., Any],
    params: tree.Tree,
    state: tree.Tree,
    batches: Iterable[Any],
    *,
    samples: int = 100,
    groups: Iterable[str] | None = None,
    bins: int = 32,
    scale: float = 1.0,
) -> dict[str, dict[str, torch.Tensor]]:
    """Activation statistics of a model over the first ``samples`` batches of ``batches``.

    ``apply(params, state, x, train=False, capture=True)`` must return ``(out, state, acts)``; each
    batch is an input ``x`` or a tuple/list whose first element is ``x`` (e.g. ``(x, y)``).
    ``samples`` is the scheme's ``activation_samples`` (default 100; 100-200 advised); fewer batches
    are used when the iterable ends sooner. ``groups`` restricts the groups (default: every key of
    the first batch's ``acts``). No gradient is recorded and ``state`` is not updated (eval mode).
    Returns ``{statistic: {group: (U,)}}`` as :func:`activation_finalize`.
    """
    where = "activation_stats"
    _check_int(where, "samples", samples, 1)
    stats: Stats | None = None
    wanted = None if groups is None else list(groups)
    with torch.no_grad():
        for batch in itertools.islice(batches, samples):
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            result = apply(params, state, x, train=False, capture=True)
            if not isinstance(result, tuple) or len(result) != 3 or not isinstance(result[2], Mapping):
                raise TypeError(f"{where}: apply(..., capture=True) must return (out, state, acts)")
            acts = result[2]
            if stats is None:
                names = list(acts) if wanted is None else wanted
                unknown = [k for k in names if k not in acts]
                if unknown:
                    raise ValueError(f"{where}: groups {unknown} are not captured; acts has {sorted(acts)}")
                units = {}
                for k in names:
                    a = acts[k]
                    if not isinstance(a, torch.Tensor) or a.ndim < 2:
                        raise ValueError(f"{where}: acts[{k!r}] must be (N, units, ...), got {a!r:.60}")
                    units[k] = a.shape[1]
                stats = activation_init(units, bins=bins, scale=scale, device=acts[names[0]].device)
            stats = activation_update(stats, acts)
    if stats is None:
        raise ValueError(f"{where}: batches is empty")
    return activation_finalize(stats)
