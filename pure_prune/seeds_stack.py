"""Stacked trees of many seeds: the seed axis, stacked inits, masks, optimizer states and batches.

A *stacked* tree holds the trees of ``S`` seeds with a leading seed axis on every tensor leaf
(``tree.stack``): params ``(S, *shape)``, BatchNorm state ``(S, C)``, optimizer state (``count``
``(S,)``, momentum ``(S, *shape)``), masks ``(S, *shape)`` bool. A ``None`` leaf (a dense leaf of a
mask tree) has no seed axis and stays ``None``.

Inside: :func:`num_seeds` (``S``, checked on every leaf), :func:`seed_slice` (seed ``i``'s tree),
:func:`init_seeds` (stacked ``(params, state)`` from one key per seed), :func:`masks_like_seeds`
(all-kept stacked masks), :func:`init_opt_seeds` (stacked optimizer state), :func:`seed_batches`
(one shuffled batch per seed, ``(x (S, B, ...), y (S, B))``), and the argument checks shared by
the other ``seeds_*`` modules (:func:`check_keys`, :func:`check_bool`). Re-exported by
:mod:`pure_prune.seeds`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from einops import rearrange, repeat
from torch import Tensor

from pure_prune import batching, mask, rng, tree
from pure_prune.optim import Optimizer, OptState

__all__ = [
    "Batch",
    "check_bool",
    "check_keys",
    "init_opt_seeds",
    "init_seeds",
    "masks_like_seeds",
    "num_seeds",
    "seed_batches",
    "seed_slice",
]

Batch = tuple[Tensor, ...]
"""A batch ``(x, y, *extra)`` of tensors: shared ``(B, ...)`` or per seed ``(S, B, ...)``."""


def check_keys(keys: Sequence[int]) -> list[int]:
    """``keys`` as a list of checked int keys, one per seed; ``ValueError`` when empty or not keys."""
    if isinstance(keys, (str, bytes)) or not isinstance(keys, Sequence) or len(keys) == 0:
        raise ValueError(f"keys must be a non-empty sequence of int keys (one per seed), got {keys!r}")
    return [rng.check_key(k, f"keys[{i}]") for i, k in enumerate(keys)]


def check_bool(name: str, value: object) -> bool:
    """``value`` when it is ``True`` or ``False``; ``TypeError`` naming ``name`` otherwise."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def num_seeds(stacked: tree.Tree, name: str = "tree") -> int:
    """The seed count ``S``: the leading size shared by every tensor leaf of ``stacked``.

    Raises ``ValueError`` naming the leaf path when a leaf is 0-d or has another leading size, or
    when the tree has no tensor leaf; ``TypeError`` for a leaf that is neither a tensor nor ``None``.
    """
    sizes = {x.shape[0] for x in tree.leaves(stacked) if isinstance(x, Tensor) and x.ndim > 0}
    if len(sizes) == 1 and all(x is None or (isinstance(x, Tensor) and x.ndim) for x in tree.leaves(stacked)):
        return sizes.pop()  # the common case, without building paths
    names, leaves, _ = tree.flatten_with_paths(stacked)
    first: tuple[str, int] | None = None
    for path, x in zip(names, leaves):
        if x is None:
            continue
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} leaf {path!r} is {type(x).__name__}, expected a tensor or None")
        if x.ndim == 0:
            raise ValueError(f"{name} leaf {path!r} is 0-d: a stacked leaf has a leading seed axis")
        if first is None:
            first = (path, x.shape[0])
        elif x.shape[0] != first[1]:
            raise ValueError(
                f"{name} leaf {path!r} has {x.shape[0]} seeds on axis 0, but {first[0]!r} has {first[1]}"
            )
    if first is None:
        raise ValueError(f"{name} has no tensor leaf, so no seed axis")
    return first[1]


def seed_slice(stacked: tree.Tree, i: int) -> tree.Tree:
    """Seed ``i`` of a stacked tree: every tensor leaf ``x`` becomes ``x[i]``; ``None`` stays.

    A tree without tensor leaves (``None``, the ``{}`` state of a model without buffers) is
    returned as it is.
    """
    if all(x is None for x in tree.leaves(stacked)):
        return stacked
    n = num_seeds(stacked)
    if isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n:
        raise ValueError(f"seed index must be an int in [-{n}, {n}), got {i!r}")
    return tree.map(lambda x: None if x is None else x[i], stacked)


def init_seeds(init: Callable[[int], tuple[Any, Any]], keys: Sequence[int]) -> tuple[Any, Any]:
    """``(params, state)`` of ``S = len(keys)`` seeds, stacked: seed ``i`` is exactly ``init(keys[i])``.

    ``init(key) -> (params, state)`` is a model's init with its config bound (e.g. the second value
    of ``experiment.setup``, or ``spec.init``). Leaves become ``(S, *shape)``; an empty state
    ``{}`` stays ``{}``.
    """
    if not callable(init):
        raise TypeError(f"init must be callable as init(key) -> (params, state), got {init!r}")
    pairs = [init(k) for k in check_keys(keys)]
    for i, pair in enumerate(pairs):
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise TypeError(f"init(keys[{i}]) must return (params, state), got {type(pair).__name__}")
    return tree.stack([p for p, _ in pairs]), tree.stack([s for _, s in pairs])


def masks_like_seeds(
    params: tree.Tree, prunable: mask.Prunable = mask.default_prunable, *, exclude_paths: Iterable[str] = ()
) -> tree.Tree:
    """All-kept masks for stacked ``params``: ``(S, *shape)`` ``True`` where prunable, ``None`` elsewhere.

    Prunability is decided on one seed's leaves (``mask.ones_like`` of seed 0), so a bias
    ``(S, out)`` is not mistaken for a matrix.
    """
    n = num_seeds(params, "params")
    one = mask.ones_like(seed_slice(params, 0), prunable, exclude_paths=exclude_paths)
    return tree.map(lambda m: None if m is None else repeat(m, "... -> s ...", s=n).contiguous(), one)


def init_opt_seeds(optimizer: Optimizer, params: tree.Tree) -> OptState:
    """Stacked optimizer state: seed ``i`` is exactly ``optimizer.init(seed i's params)``."""
    if not callable(getattr(optimizer, "init", None)):
        raise TypeError(f"optimizer must be an optim.Optimizer, got {optimizer!r}")
    return tree.stack([optimizer.init(p) for p in tree.unstack(params, num_seeds(params, "params"))])


def seed_batches(
    data: tuple[Tensor, Tensor], batch_size: int, keys: Sequence[int], epoch: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """Per-seed shuffled batches of one epoch, stacked: ``(x (S, B, ...), y (S, B))``.

    ``data``: ``(x (N, ...), y (N,))`` (a data set's training split: ``(ds.x_train, ds.y_train)``).
    Seed ``i``'s batches are exactly ``batching.batches(x, y, batch_size,
    key=batching.epoch_key(keys[i], epoch))`` (full batches only), i.e.
    ``Experiment.train_batches(keys[i])(epoch)``: the order is
    ``randperm(N, generator=rng.generator(epoch_key(keys[i], epoch)))``.
    """
    if not (isinstance(data, tuple) and len(data) == 2):
        raise TypeError(f"data must be a pair (x, y) of tensors, got {type(data).__name__}")
    x, y = data
    keys = check_keys(keys)
    batching.batches(x, y, batch_size, key=None)  # checks x, y and batch_size eagerly
    batching.epoch_key(keys[0], epoch)  # checks epoch
    n = len(x)
    count = batching.num_batches(n, batch_size)
    orders = torch.stack(
        [torch.randperm(n, generator=rng.generator(batching.epoch_key(k, epoch))) for k in keys]
    )

    per_chunk = batching.batches_per_gather(batch_size * len(keys), x, y)

    def gen() -> Iterator[tuple[Tensor, Tensor]]:
        # one flat index_select per tensor and chunk of batches, laid out (batch, seed, row) so that
        # each batch is a contiguous view: the same rows as x[idx] with idx (S, B), whose advanced
        # indexing over the strided slice measured several times slower per batch
        for first in range(0, count, per_chunk):
            k = min(per_chunk, count - first)
            idx = _chunk_rows(orders, first, k, batch_size)
            shape = (k, len(keys), batch_size)
            xs = torch.index_select(x, 0, idx).view(*shape, *x.shape[1:])
            ys = torch.index_select(y, 0, idx).view(*shape, *y.shape[1:])
            for j in range(k):
                yield xs[j], ys[j]

    return gen()


def _chunk_rows(orders: Tensor, first: int, k: int, batch_size: int) -> Tensor:
    """The rows of batches ``first .. first + k - 1`` of every seed's order ``orders (S, N)``, flat
    in (batch, seed, row) order: gathered, they view as ``(k, S, batch_size, ...)``."""
    return rearrange(orders[:, first * batch_size : (first + k) * batch_size], "s (k b) -> (k s b)", k=k)
