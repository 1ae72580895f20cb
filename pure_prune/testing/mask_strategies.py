"""Hypothesis strategies for masks and scores of a given tree.

* :func:`masks`: random masks for a parameter tree, exact by construction for each kind of
  :data:`MASK_KINDS` (``round(s · N)`` entries, slices or blocks pruned; ``n`` of every ``m`` kept);
* :func:`scores`: a score tree shaped like a given tree, tie-free or full of ties.

Needs ``hypothesis``; re-exported by :mod:`pure_prune.testing.strategies`.
"""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from pure_prune import mask, rng, tree
from pure_prune.testing.tensor_strategies import FLOAT_DTYPES, dtypes, keys, sparsities

__all__ = ["MASK_KINDS", "masks", "scores"]

MASK_KINDS = ("unstructured", "layer", "rows", "n_of_m", "block")


# ---------------------------------------------------------------------------------------- masks
def _prune_entries(mask_: torch.Tensor, flat_idx: torch.Tensor) -> torch.Tensor:
    out = mask_.clone().reshape(-1)
    out[flat_idx] = False
    return out.reshape(mask_.shape)


def _unstructured(
    base: list[torch.Tensor | None], s: float, key: int, scope: str
) -> list[torch.Tensor | None]:
    live = [m for m in base if m is not None]
    if scope == "layer":
        out = []
        for i, m in enumerate(base):
            if m is None:
                out.append(None)
                continue
            k = int(round(s * m.numel()))
            perm = torch.randperm(m.numel(), generator=rng.generator(rng.fold_in(key, i)))
            out.append(_prune_entries(m, perm[:k]))
        return out
    total = sum(m.numel() for m in live)
    k = int(round(s * total))
    chosen = torch.zeros(total, dtype=torch.bool)
    chosen[torch.randperm(total, generator=rng.generator(key))[:k]] = True
    out, offset = [], 0
    for m in base:
        if m is None:
            out.append(None)
            continue
        out.append(~chosen[offset : offset + m.numel()].reshape(m.shape))
        offset += m.numel()
    return out


def _rows(m: torch.Tensor, s: float, key: int, axis: int) -> torch.Tensor:
    size = m.shape[axis]
    gone = torch.randperm(size, generator=rng.generator(key))[: int(round(s * size))]
    keep = torch.ones(size, dtype=torch.bool)
    keep[gone] = False
    shape = [1] * m.ndim
    shape[axis] = size
    return keep.reshape(shape).expand(m.shape).clone()


def _n_of_m(mk: torch.Tensor, n: int, m: int, key: int, axis: int) -> torch.Tensor:
    moved = torch.movedim(mk, axis, -1)
    groups = moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)
    noise = torch.rand(groups.shape, generator=rng.generator(key))
    rank = torch.argsort(torch.argsort(noise, dim=-1), dim=-1)
    keep = (rank < n).reshape(moved.shape)
    return torch.movedim(keep, -1, axis).contiguous()


def _blocks(
    base: list[torch.Tensor | None], s: float, key: int, block_shape: tuple[int, int]
) -> list[torch.Tensor | None]:
    """``round(s · B)`` of all ``B`` blocks of the leaves pruned, chosen at random across leaves."""
    bh, bw = block_shape
    grids = [None if m is None else (m.shape[0] // bh, m.shape[1] // bw) for m in base]
    total = sum(r * c for g in grids if g is not None for r, c in [g])
    keep = torch.ones(total, dtype=torch.bool)
    keep[torch.randperm(total, generator=rng.generator(key))[: int(round(s * total))]] = False
    out, offset = [], 0
    for m, g in zip(base, grids):
        if m is None:
            out.append(None)
            continue
        r, c = g
        part = keep[offset : offset + r * c].reshape(r, c).repeat_interleave(bh, 0).repeat_interleave(bw, 1)
        offset += r * c
        out.append(part.reshape(*part.shape, *([1] * (m.ndim - 2))).expand(m.shape).clone())
    return out


@st.composite
def masks(
    draw: st.DrawFn,
    params: Any,
    sparsity: float | st.SearchStrategy[float] | None = None,
    *,
    kind: str | None = None,
    prunable: mask.Prunable = mask.default_prunable,
    axis: int | None = None,
    n_m: tuple[int, int] = (2, 4),
    block_shape: tuple[int, int] = (2, 2),
) -> Any:
    """Random masks for ``params`` (prunable leaves chosen by ``prunable``), exact by construction.

    ``kind`` (drawn from the kinds the leaves allow when ``None``):

    * ``"unstructured"``: exactly ``round(s · N)`` of all ``N`` prunable entries pruned;
    * ``"layer"``: ``round(s · N_l)`` pruned in every leaf;
    * ``"rows"``: ``round(s · size)`` whole slices along ``axis`` (default 0) in every leaf;
    * ``"n_of_m"``: ``n`` of every ``m`` consecutive entries along ``axis`` (default -1) kept
      (``n_m = (n, m)``; ``sparsity`` is ignored; needs ``m`` to divide that axis);
    * ``"block"``: ``round(s · B)`` of all ``B`` ``block_shape`` blocks of the first two axes pruned.

    ``sparsity`` defaults to :func:`sparsities`. Pruned positions are random (from a drawn key),
    independent of any score, so tests of ``pure_prune.select`` do not check it against itself.
    ``params`` needs a prunable leaf (``params_trees(min_prunable=1)``): ``mask.ones_like`` raises
    ``ValueError`` otherwise.
    """
    ones = mask.ones_like(params, prunable)
    base = tree.leaves(ones)
    live = [m for m in base if m is not None]
    row_axis = 0 if axis is None else axis
    nm_axis = -1 if axis is None else axis
    if kind is None:
        allowed = ["unstructured", "layer"]
        if all(-m.ndim <= row_axis < m.ndim for m in live):
            allowed.append("rows")
        mm = n_m[1]
        if all(-m.ndim <= nm_axis < m.ndim and m.shape[nm_axis] % mm == 0 for m in live):
            allowed.append("n_of_m")
        bh, bw = block_shape
        if all(m.ndim >= 2 and m.shape[0] % bh == 0 and m.shape[1] % bw == 0 for m in live):
            allowed.append("block")
        kind = draw(st.sampled_from(allowed))
    if kind not in MASK_KINDS:
        raise InvalidArgument(f"kind must be one of {MASK_KINDS}, got {kind!r}")
    if sparsity is None:
        s = draw(sparsities())
    else:
        s = draw(sparsity) if isinstance(sparsity, st.SearchStrategy) else float(sparsity)
    key = draw(keys())
    if kind in ("unstructured", "layer"):
        out = _unstructured(base, s, key, "global" if kind == "unstructured" else "layer")
    elif kind == "block":
        out = _blocks(base, s, key, block_shape)
    else:
        out = []
        for i, m in enumerate(base):
            k = rng.fold_in(key, i)
            if m is None:
                out.append(None)
            elif kind == "rows":
                out.append(_rows(m, s, k, row_axis % m.ndim))
            else:
                out.append(_n_of_m(m, n_m[0], n_m[1], k, nm_axis % m.ndim))
    return tree.unflatten(tree.structure(ones), out)


# --------------------------------------------------------------------------------------- scores
@st.composite
def scores(
    draw: st.DrawFn,
    like: Any,
    *,
    ties: bool = False,
    dtype: torch.dtype | st.SearchStrategy[torch.dtype] | None = None,
) -> Any:
    """A score tree for ``like`` (a mask tree, or any tree): a float tensor of the leaf's shape
    wherever ``like`` has a tensor, ``None`` elsewhere.

    ``ties=False``: all values distinct across the whole tree (a random permutation of
    ``arange(N)``, shifted by a drawn offset so some are negative), so every ranking is unique.
    ``ties=True``: values from three levels, so ties abound. ``dtype`` defaults to float32 or
    float64 (tie-free) and any of :data:`FLOAT_DTYPES` (with ties).
    """
    names, leaves, spec = tree.flatten_with_paths(like)
    if dtype is None:
        dt = draw(dtypes((torch.float32, torch.float64) if not ties else FLOAT_DTYPES))
    else:
        dt = draw(dtype) if isinstance(dtype, st.SearchStrategy) else dtype
    key = draw(keys())
    sizes = [x.numel() if isinstance(x, torch.Tensor) else 0 for x in leaves]
    total = sum(sizes)
    if ties:
        flat = torch.randint(0, 3, (total,), generator=rng.generator(key)).to(dt)
    else:
        if dt == torch.bfloat16 and total > 256:
            raise InvalidArgument(f"bfloat16 cannot hold {total} distinct integers exactly; use float32")
        offset = draw(st.integers(0, max(0, total)))
        flat = (torch.randperm(total, generator=rng.generator(key)) - offset).to(dt)
    out, start = [], 0
    for x, size in zip(leaves, sizes):
        if not isinstance(x, torch.Tensor):
            out.append(None)
            continue
        out.append(flat[start : start + size].reshape(x.shape).clone())
        start += size
    return tree.unflatten(spec, out)
