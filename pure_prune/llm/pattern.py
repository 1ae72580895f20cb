"""Sparsity patterns of the one-shot LLM methods: unstructured per layer, or N:M along the inputs.

A linear layer's weight is ``(out_features, in_features)`` (``y = x Wᵀ``). A :class:`Pattern` is
either *unstructured* — ``round(s · numel)`` entries of the layer pruned (magnitude, SparseGPT) or
``round(s · in_features)`` of every row (Wanda, which compares weights per output row) — or
*N:M* — at most ``n`` non-zero weights in every ``m`` consecutive inputs of a row (2:4 and 4:8 as
in NVIDIA's sparse tensor cores; sparsity ``1 - n/m``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Pattern", "parse"]


@dataclass(frozen=True)
class Pattern:
    """``sparsity`` in [0, 1]; ``n``/``m`` set for N:M (then ``sparsity == 1 - n/m``)."""

    sparsity: float
    n: int | None = None
    m: int | None = None

    @property
    def is_nm(self) -> bool:
        return self.m is not None

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else f"{self.sparsity:g}"

    def check_fits(self, path: str, shape: tuple[int, ...]) -> None:
        """``ValueError`` naming ``path`` unless a weight of ``shape`` can take this pattern."""
        if len(shape) != 2:
            raise ValueError(f"linear weight {path!r} must be 2-D (out, in), got shape {tuple(shape)}")
        if self.is_nm and shape[1] % self.m:
            raise ValueError(
                f"{self}: m={self.m} does not divide in_features={shape[1]} of linear weight {path!r} "
                f"(shape {tuple(shape)})"
            )


def parse(spec: float | str | Pattern) -> Pattern:
    """A :class:`Pattern` from ``0.5``, ``"0.5"``, ``"50%"``, ``"2:4"`` or a pattern.

    Raises ``ValueError`` for a sparsity outside [0, 1] or N:M without ``0 <= n <= m``, ``m >= 1``,
    ``TypeError`` for anything else.
    """
    if isinstance(spec, Pattern):
        return spec if spec.is_nm else parse(spec.sparsity)
    if isinstance(spec, bool) or not isinstance(spec, (int, float, str)):
        raise TypeError(f"a sparsity pattern is a float, '50%', 'n:m' or a Pattern, got {spec!r}")
    if isinstance(spec, str) and ":" in spec:
        try:
            n, m = (int(part) for part in spec.split(":"))
        except ValueError:
            raise ValueError(f"an N:M pattern is two integers 'n:m', got {spec!r}") from None
        if m < 1 or not 0 <= n <= m:
            raise ValueError(f"an N:M pattern needs 0 <= n <= m and m >= 1, got {spec!r}")
        return Pattern(1.0 - n / m, n, m)
    if isinstance(spec, str):
        text = spec.strip()
        try:
            value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            raise ValueError(f"cannot read a sparsity from {spec!r}") from None
    else:
        value = float(spec)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {spec!r}")
    return Pattern(value)
