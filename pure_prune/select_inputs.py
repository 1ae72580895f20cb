"""Shared argument checks and input preparation of the selectors (:mod:`pure_prune.select`).

The checks raise ``TypeError``/``ValueError`` naming the leaf path and the value; they run in eager
code and are skipped while ``torch.compile`` traces (:func:`eager`). :func:`flatten_inputs` turns a
score tree (and optional old masks) into leaf lists; :func:`live_scores` ranks already-pruned entries
at ``-inf``; :func:`prune_count` is the exact count ``round(s · n)`` every selector prunes.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence

import torch

from pure_prune import tree
from pure_prune.groups import ChannelGroup

__all__ = [
    "Sparsity",
    "check_groups",
    "check_int",
    "check_masks",
    "check_scope",
    "check_scores",
    "check_sparsity",
    "common_dtype",
    "eager",
    "flatten_inputs",
    "is_batched",
    "live_scores",
    "prune_count",
]

Sparsity = float | Mapping[str, float]
"""A sparsity in [0, 1], or ``{path or group name: sparsity}`` (per-leaf, per-group)."""


def eager() -> bool:
    """Whether the code runs eagerly (not traced by ``torch.compile``): the checks run only then."""
    return not torch.compiler.is_compiling()


def is_batched(x: torch.Tensor) -> bool:
    """Whether ``x`` is a per-sample view inside ``torch.func.vmap`` (e.g. one seed of stacked scores).

    Its values cannot be read in Python there (no ``bool(...)``, no data-dependent shapes), so the
    value checks are left to the caller (``sweep.select_seeds`` checks the stacked scores) and
    :func:`lowest_k` takes the ``torch.kthvalue`` path.
    """
    return torch._C._functorch.is_batchedtensor(x)


def check_sparsity(s: float, where: str = "") -> float:
    """``s`` as a float in [0, 1]: a real number (not a bool, a string or a tensor), not NaN."""
    if isinstance(s, bool) or not isinstance(s, numbers.Real):
        what = "a tensor" if isinstance(s, torch.Tensor) else f"{type(s).__name__} {s!r}"
        raise TypeError(f"sparsity{where} must be a real number in [0, 1], got {what}")
    v = float(s)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"sparsity{where} must be in [0, 1], got {s!r}")
    return v


def check_scope(scope: object) -> str:
    """``scope`` if it is ``"global"`` or ``"layer"``, else ``ValueError``."""
    if scope not in ("global", "layer") or not isinstance(scope, str):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    return scope


def check_int(name: str, value: object) -> int:
    """``value`` as an int (not a bool), else ``TypeError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    return int(value)


def check_groups(groups: object) -> Sequence[ChannelGroup]:
    """``groups`` if it is a sequence of ``ChannelGroup``, else ``TypeError`` naming the bad entry."""
    if isinstance(groups, (str, bytes, ChannelGroup)) or not isinstance(groups, Sequence):
        raise TypeError(f"groups must be a sequence of ChannelGroup, got {type(groups).__name__}")
    for i, g in enumerate(groups):
        if not isinstance(g, ChannelGroup):
            raise TypeError(f"groups[{i}] must be a ChannelGroup, got {type(g).__name__} {g!r:.60}")
    return groups


def check_scores(names: Sequence[str], leaves: Sequence[torch.Tensor | None]) -> None:
    """Every score leaf is ``None`` or a finite float tensor (values unread under ``vmap``)."""
    for p, x in zip(names, leaves):
        if x is None:
            continue
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"score {p!r} is {type(x).__name__}, expected a tensor or None")
        if not x.is_floating_point():
            raise TypeError(f"score {p!r} has dtype {x.dtype}, expected a floating-point tensor")
        if is_batched(x):  # under vmap: values unreadable, checked on the stacked tensor by the caller
            continue
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            idx = tuple(int(i) for i in torch.nonzero(bad)[0])
            raise ValueError(f"score {p!r} is not finite at index {idx}: {x[idx].item()}")


def check_masks(names, s_leaves, m_leaves) -> None:
    """Every mask leaf is ``None`` or a bool tensor of its score's shape."""
    for p, s, m in zip(names, s_leaves, m_leaves):
        if m is None:
            continue
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
            what = m.dtype if isinstance(m, torch.Tensor) else type(m).__name__
            raise TypeError(f"mask {p!r} must be a bool tensor or None, got {what}")
        if s is not None and m.shape != s.shape:
            raise ValueError(f"mask {p!r} has shape {tuple(m.shape)}, score has {tuple(s.shape)}")


def flatten_inputs(scores: tree.Tree, masks: tree.Tree | None):
    """``(paths, score leaves, mask leaves or Nones, spec)`` of ``scores`` and ``masks``, checked
    eagerly (structure, finite float scores, bool masks of the scores' shapes, a scored leaf)."""
    names, s_leaves, spec = tree.flatten_with_paths(scores)
    if masks is None:
        m_leaves: list[torch.Tensor | None] = [None] * len(s_leaves)
    else:
        if eager():
            tree.assert_same_structure(scores, masks, ("scores", "masks"))
        m_leaves = tree.leaves(masks)
    if eager():
        check_scores(names, s_leaves)
        check_masks(names, s_leaves, m_leaves)
        if all(s is None for s in s_leaves):
            raise ValueError("no prunable leaf: every score leaf is None")
    return names, s_leaves, m_leaves, spec


def common_dtype(leaves: Sequence[torch.Tensor]) -> torch.dtype:
    """The promoted float dtype of ``leaves``, at least float32 (the dtype scores are ranked in)."""
    dt = torch.float32
    for x in leaves:
        dt = torch.promote_types(dt, x.dtype)
    return dt


def live_scores(s: torch.Tensor, m: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """Scores as ``dtype`` with already-pruned entries at -inf (ranked lowest)."""
    s = s.to(dtype)
    if m is None:
        return s
    return torch.where(m, s, torch.full_like(s, float("-inf")))


def prune_count(s: float, n: int) -> int:
    """How many of ``n`` entries (slices, blocks, units) sparsity ``s`` prunes: ``round(s · n)``
    with Python's ``round`` (half to even, as ``torch.nn.utils.prune``)."""
    return int(round(s * n))
