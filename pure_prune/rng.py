"""Explicit randomness: a key is a plain non-negative Python ``int``.

Keys are split and folded deterministically with SplitMix64 (no global RNG is read or written).
Random tensors are drawn from a ``torch.Generator`` seeded by a key, *outside* any vmap or
compiled region, and passed in as data.

    >>> k_init, k_data = split(0, 2)
    >>> x = normal(k_init, (3, 4))          # same key -> same tensor, on every run
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch

__all__ = ["Key", "check_key", "fold_in", "generator", "normal", "rademacher", "split", "uniform"]

Key = int
_MASK64 = (1 << 64) - 1


def check_key(key: object, name: str = "key") -> int:
    """Return ``key`` as an int, or raise ``TypeError``/``ValueError`` naming the bad value."""
    if isinstance(key, bool) or not isinstance(key, numbers.Integral):
        raise TypeError(f"{name} must be a non-negative int (an explicit random key), got {key!r:.60}")
    if key < 0:
        raise ValueError(f"{name} must be a non-negative int, got {key}")
    return int(key)


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r:.60}")
    return int(value)


def _check_shape(shape: object) -> tuple[int, ...]:
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, (Sequence, torch.Size)) or isinstance(shape, (str, bytes)):
        raise TypeError(f"shape must be a tuple of ints, got {shape!r:.60}")
    dims = tuple(_check_int(f"shape[{i}]", d) for i, d in enumerate(shape))
    if any(d < 0 for d in dims):
        raise ValueError(f"shape must hold non-negative sizes, got {dims}")
    return dims


def _check_dtype(dtype: object, floating: bool) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or (floating and not dtype.is_floating_point):
        want = "a floating-point torch.dtype" if floating else "a torch.dtype"
        raise TypeError(f"dtype must be {want}, got {dtype!r}")
    return dtype


def _mix(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1  # 63 bits: always a valid torch seed


def fold_in(key: Key, data: int) -> Key:
    """A new key derived from ``key`` and the integer ``data`` (e.g. a step or seed index)."""
    return _mix(_mix(check_key(key)) ^ (_check_int("data", data) & _MASK64))


def split(key: Key, n: int = 2) -> list[Key]:
    """``n`` independent keys derived from ``key`` (``n >= 0``)."""
    check_key(key)
    if _check_int("n", n) < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return [fold_in(key, i + 1) for i in range(n)]


def generator(key: Key, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded from ``key``."""
    g = torch.Generator(device=device)
    g.manual_seed(_mix(check_key(key)))
    return g


def normal(key: Key, shape: tuple[int, ...], *, dtype: torch.dtype = torch.float32, device="cpu"):
    """Standard-normal tensor of ``shape`` drawn from ``key`` (``dtype`` floating point)."""
    shape = _check_shape(shape)
    _check_dtype(dtype, floating=True)
    return torch.randn(shape, generator=generator(key, device), dtype=dtype, device=device)


def uniform(key: Key, shape: tuple[int, ...], *, dtype: torch.dtype = torch.float32, device="cpu"):
    """Uniform ``[0, 1)`` tensor of ``shape`` drawn from ``key`` (``dtype`` floating point)."""
    shape = _check_shape(shape)
    _check_dtype(dtype, floating=True)
    return torch.rand(shape, generator=generator(key, device), dtype=dtype, device=device)


def rademacher(key: Key, shape: tuple[int, ...], *, dtype: torch.dtype = torch.float32, device="cpu"):
    """Tensor of ``shape`` with independent ±1 entries drawn from ``key`` (any signed ``dtype``)."""
    shape = _check_shape(shape)
    if _check_dtype(dtype, floating=False) in (torch.bool, torch.uint8):
        raise TypeError(f"dtype must hold -1, got {dtype}")
    bits = torch.randint(0, 2, shape, generator=generator(key, device), device=device)
    return (bits * 2 - 1).to(dtype)
