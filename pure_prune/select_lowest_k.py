"""The selection kernel: mark exactly ``k`` lowest entries across a list of 1-D tensors.

:func:`lowest_k` is what every selector of :mod:`pure_prune.select` ranks with: a radix select
(:func:`pure_prune.kth.kth_smallest`, no concatenation and no sort) for the threshold in eager code,
``torch.kthvalue`` of the concatenation under ``torch.compile`` and ``torch.func.vmap``; ties are
broken by position (earliest first).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pure_prune.kth import kth_smallest
from pure_prune.select_inputs import check_int, eager, is_batched

__all__ = ["lowest_k"]


def lowest_k(flat: Sequence[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Mark exactly ``k`` lowest entries across the 1-D tensors ``flat`` (ties: earliest first).

    ``flat`` share one float dtype. Returns one bool tensor per input, shaped like it, ``True``
    where the entry is among the ``k`` lowest. Eagerly the threshold comes from a radix select
    (:func:`pure_prune.kth.kth_smallest`: no concatenation, no sort); under ``torch.compile`` and
    under ``torch.func.vmap`` (batched inputs: the radix select's histograms of a varying subset
    cannot be vmapped) from ``torch.kthvalue`` of the concatenation. Both give the same exact
    value, so the same masks. Raises ``TypeError``/``ValueError`` (eagerly) for ``k`` that is not an
    int, no tensors, tensors that are not 1-D or differ in dtype, or NaN (which has no rank; one
    NaN-propagating ``amax`` per tensor, ~3% of a 10M-entry selection, here or in ``kth_smallest``).
    """
    k = check_int("lowest_k: k", k)
    if eager():
        if isinstance(flat, torch.Tensor) or not isinstance(flat, Sequence) or not flat:
            raise TypeError(
                f"lowest_k: flat must be a non-empty sequence of 1-D tensors, got {type(flat).__name__}"
            )
        for i, x in enumerate(flat):
            if not isinstance(x, torch.Tensor) or x.ndim != 1 or x.dtype != flat[0].dtype:
                what = (
                    f"{x.dtype} of shape {tuple(x.shape)}"
                    if isinstance(x, torch.Tensor)
                    else type(x).__name__
                )
                raise TypeError(
                    f"lowest_k: flat[{i}] is {what}; expected 1-D tensors of one dtype ({getattr(flat[0], 'dtype', None)})"
                )
            radix = x.dtype in (torch.float32, torch.float64)  # kth_smallest checks those for NaN
            if (
                x.is_floating_point()
                and not radix
                and not is_batched(x)
                and x.numel()
                and bool(torch.isnan(x.amax()))
            ):
                raise ValueError(f"lowest_k: flat[{i}] holds NaN, which has no rank")
    total = sum(x.numel() for x in flat)
    if k <= 0:
        return [torch.zeros_like(x, dtype=torch.bool) for x in flat]
    if k >= total:
        return [torch.ones_like(x, dtype=torch.bool) for x in flat]
    if eager() and flat[0].dtype in (torch.float32, torch.float64) and not any(is_batched(x) for x in flat):
        threshold = kth_smallest(flat, k)
    else:
        joined = flat[0] if len(flat) == 1 else torch.cat(list(flat))
        threshold = torch.kthvalue(joined, k).values
        del joined
    below = [x < threshold for x in flat]
    n_below = sum(b.sum() for b in below)
    need = k - n_below  # how many entries equal to the threshold are pruned, earliest first
    out = []
    offset = torch.zeros((), dtype=torch.int64, device=flat[0].device)
    for x, b in zip(flat, below):
        eq = x == threshold
        rank = torch.cumsum(eq, 0) + offset
        out.append(b | (eq & (rank <= need)))
        offset = offset + eq.sum()
    return out
