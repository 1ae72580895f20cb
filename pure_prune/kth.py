"""The exact k-th smallest value over many tensors, without concatenating or sorting them.

First a bracket from a strided sample: the sample's quantiles around ``k / N`` give ``lo <= hi``;
one pass counts the entries below ``lo`` and gathers the few in ``[lo, hi]``, and the answer is
their ``(k - below)``-th smallest. When the bracket misses (adversarial layouts), a radix select on order-preserving integer keys of the float bits: 16 bits per pass, one
65,536-bin histogram per pass summed over the tensors, so the extra memory is a few temporaries of
the largest single tensor rather than a copy (plus sort indices) of all of them. Two passes for
float32, four for float64. Used by ``select`` outside ``torch.compile`` (histograms of a varying
subset are data-dependent shapes); under compile ``torch.kthvalue`` of the concatenation is used,
which gives the same value.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch

__all__ = ["kth_smallest", "order_keys"]

_BITS = {torch.float32: (torch.int32, 32), torch.float64: (torch.int64, 64)}
_DIGIT = 16
_BINS = 1 << _DIGIT


def order_keys(x: torch.Tensor) -> torch.Tensor:
    """Signed integer keys whose order is the float order of ``x`` (float32 -> int32, float64 -> int64).

    ``-0.0`` is mapped to ``+0.0`` first so that equal floats have equal keys. ``x`` must not hold
    NaN (``ValueError``; NaN has no place in the order).
    """
    if not isinstance(x, torch.Tensor) or x.dtype not in _BITS:
        what = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"order_keys supports float32 and float64 tensors, got {what}")
    _check_no_nan(x, "order_keys: x")
    return _keys(x)


def _check_no_nan(x: torch.Tensor, name: str) -> None:
    """One NaN-propagating ``amax`` (about 3% of a selection's time) instead of an ``isnan`` pass."""
    if x.numel() and bool(torch.isnan(x.amax())):
        idx = int(torch.nonzero(torch.isnan(x))[0, 0])
        raise ValueError(f"{name} holds NaN at index {idx}; NaN has no rank")


def _keys(x: torch.Tensor) -> torch.Tensor:
    int_dtype, nbits = _BITS[x.dtype]
    bits = (x + 0.0).view(int_dtype)  # + 0.0 turns -0.0 into +0.0
    flip = torch.tensor((1 << (nbits - 1)) - 1, dtype=int_dtype)
    return torch.where(bits < 0, bits ^ flip, bits)


def _digit(keys: torch.Tensor, shift: int, top: bool) -> torch.Tensor:
    d = keys >> shift
    return (d + (_BINS // 2)).long() if top else (d & (_BINS - 1)).long()


def _bracketed(flat: Sequence[torch.Tensor], k: int, total: int, sample_size: int) -> torch.Tensor | None:
    """The k-th smallest via a sampled bracket, or ``None`` when the bracket misses it."""
    stride = max(1, total // sample_size)
    sample = torch.cat([x[::stride] for x in flat])
    n = sample.numel()
    q = k / total
    margin = 6.0 * (q * (1 - q) / n) ** 0.5 + 2.0 / n  # six binomial standard errors
    lo_i = max(1, int((q - margin) * n))
    hi_i = min(n, int((q + margin) * n) + 1)
    lo = torch.kthvalue(sample, lo_i).values
    hi = torch.kthvalue(sample, hi_i).values
    below = 0
    inside = []
    for x in flat:
        below += int((x < lo).sum())
        inside.append(x[(x >= lo) & (x <= hi)])
    cand = torch.cat(inside)
    if not below < k <= below + cand.numel():
        return None
    return torch.kthvalue(cand, k - below).values


def kth_smallest(
    flat: Sequence[torch.Tensor], k: int, *, sample_size: int = 1 << 18, small: int = 1 << 16
) -> torch.Tensor:
    """The ``k``-th smallest value (1-indexed) among all entries of the 1-D tensors ``flat``.

    All tensors share one dtype (float32 or float64) and device. Returns a 0-d tensor of that dtype.
    Up to ``small`` entries in all, ``torch.kthvalue`` of the concatenation is used directly.
    Raises ``TypeError`` naming ``flat[i]`` for a non-tensor, a tensor that is not 1-D, or one
    whose dtype or device differs from ``flat[0]``'s, and for a ``k`` that is not an int;
    ``ValueError`` unless ``1 <= k <= total entries`` or when an entry is NaN.
    """
    if isinstance(flat, torch.Tensor) or not isinstance(flat, Sequence) or not flat:
        raise TypeError(f"flat must be a non-empty sequence of 1-D tensors, got {type(flat).__name__}")
    for i, x in enumerate(flat):
        if not isinstance(x, torch.Tensor) or x.dtype not in _BITS or x.ndim != 1:
            what = f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise TypeError(f"flat[{i}] is {what}; expected a 1-D float32 or float64 tensor")
        if x.dtype != flat[0].dtype or x.device != flat[0].device:
            raise TypeError(
                f"flat[{i}] is {x.dtype} on {x.device} but flat[0] is {flat[0].dtype} on {flat[0].device}"
            )
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an int, got {type(k).__name__} {k!r}")
    total = sum(x.numel() for x in flat)
    if not 1 <= k <= total:
        raise ValueError(f"k must be in [1, {total}], got {k}")
    for i, x in enumerate(flat):
        _check_no_nan(x, f"flat[{i}]")
    dtype = flat[0].dtype
    int_dtype, nbits = _BITS[dtype]
    if total <= small:  # a copy this small costs less than the histograms
        return torch.kthvalue(torch.cat(list(flat)) if len(flat) > 1 else flat[0], k).values
    if total > 4 * sample_size:
        found = _bracketed(flat, k, total, sample_size)
        if found is not None:
            return found
    return _radix(flat, k, dtype, int_dtype, nbits)


def _radix(flat, k, dtype, int_dtype, nbits) -> torch.Tensor:
    keys = [_keys(x) for x in flat]
    prefix = None  # the key bits fixed so far, as a Python int of the high bits
    remaining = k
    for shift in range(nbits - _DIGIT, -1, -_DIGIT):
        hist = torch.zeros(_BINS, dtype=torch.int64, device=flat[0].device)
        for key in keys:
            if prefix is not None:
                key = key[(key >> (shift + _DIGIT)) == prefix]
            if key.numel():
                hist += torch.bincount(_digit(key, shift, prefix is None), minlength=_BINS)
        cum = torch.cumsum(hist, 0)
        b = int(torch.searchsorted(cum, torch.tensor(remaining, device=cum.device)))
        remaining -= int(cum[b - 1]) if b > 0 else 0
        digit = b - _BINS // 2 if prefix is None else b
        prefix = digit if prefix is None else (prefix << _DIGIT) | digit
    key_value = torch.tensor(prefix, dtype=int_dtype)
    flip = torch.tensor((1 << (nbits - 1)) - 1, dtype=int_dtype)
    bits = torch.where(key_value < 0, key_value ^ flip, key_value)
    return bits.view(dtype).to(flat[0].device)
