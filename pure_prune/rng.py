"""Explicit randomness: a key is a plain non-negative Python ``int``.

Keys are split and folded deterministically with SplitMix64 (no global RNG is read or written).
Random tensors are drawn from a ``torch.Generator`` seeded by a key, *outside* any vmap or
compiled region, and passed in as data.

    >>> k_init, k_data = split(0, 2)
    >>> x = normal(k_init, (3, 4))          # same key -> same tensor, on every run
"""

from __future__ import annotations

import torch

__all__ = ["Key", "check_key", "fold_in", "generator", "normal", "rademacher", "split", "uniform"]

Key = int
_MASK64 = (1 << 64) - 1


def check_key(key: object, name: str = "key") -> int:
    """Return ``key`` as an int, or raise ``TypeError``/``ValueError`` naming the bad value."""
    if isinstance(key, bool) or not isinstance(key, int):
        raise TypeError(f"{name} must be a non-negative int (an explicit random key), got {key!r}")
    if key < 0:
        raise ValueError(f"{name} must be a non-negative int, got {key}")
    return key


def _mix(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1  # 63 bits: always a valid torch seed


def fold_in(key: Key, data: int) -> Key:
    """A new key derived from ``key`` and the integer ``data`` (e.g. a step or seed index)."""
    return _mix(_mix(check_key(key)) ^ (int(data) & _MASK64))


def split(key: Key, n: int = 2) -> list[Key]:
    """``n`` independent keys derived from ``key``."""
    check_key(key)
    return [fold_in(key, i + 1) for i in range(n)]


def generator(key: Key, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded from ``key``."""
    g = torch.Generator(device=device)
    g.manual_seed(_mix(check_key(key)))
    return g


def normal(key: Key, shape: tuple[int, ...], *, dtype: torch.dtype = torch.float32, device="cpu"):
    """Standard-normal tensor of ``shape`` drawn from ``key``."""
    return torch.randn(shape, generator=generator(key, device), dtype=dtype, device=device)


def uniform(key: Key, shape: tuple[int, ...], *, dtype: torch.dtype = torch.float32, device="cpu"):
    """Uniform ``[0, 1)`` tensor of ``shape`` drawn from ``key``."""
    return torch.rand(shape, generator=generator(key, device), dtype=dtype, device=device)


def rademacher(key: Key, shape: tuple[int, ...], *, dtype: torch.dtype = torch.float32, device="cpu"):
    """Tensor of ``shape`` with independent ±1 entries drawn from ``key``."""
    bits = torch.randint(0, 2, shape, generator=generator(key, device), device=device)
    return (bits * 2 - 1).to(dtype)
