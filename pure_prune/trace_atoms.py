"""Axis factors that must shrink together: a union-find over the factors of traced tensor axes.

Every axis of every tensor in a traced graph is a product of *atoms*, outer first: a linear layer's
output axis of ``H * D`` features that the model views as ``(H, D)`` heads is the atom list
``[h, d]``. Two atoms are *unified* when an operation requires their indices to match (the two
operands of an elementwise add, the contracted axes of a matrix product, a weight's output axis and
the activation it produces): removing index ``c`` of one means removing index ``c`` of the other.
A reshape that splits an atom *refines* it: the atom, and everything unified with it, becomes the
product of two smaller atoms, so a later ``view(H, D)`` reaches back to the weight that produced
the features. An atom class that an operation indexes, slices, normalises over or mixes in a way
no channel removal can follow is *marked* with the reason; the groups built from marked atoms are
left out.

Only sizes greater than one have atoms: a size-1 axis is the empty list.
"""

from __future__ import annotations

__all__ = ["Atoms"]


class Atoms:
    """A mutable union-find of axis atoms (internal to the tracer; not a pytree, not pure)."""

    def __init__(self) -> None:
        self._parent: list[int] = []
        self._size: list[int] = []
        self._split: dict[int, list[int]] = {}
        self._marks: dict[int, list[str]] = {}

    def new(self, size: int, mark: str | None = None) -> list[int]:
        """A fresh atom list for an axis of ``size`` (``[]`` for size 1), marked with ``mark``."""
        if size <= 1:
            return []
        a = len(self._parent)
        self._parent.append(a)
        self._size.append(size)
        if mark is not None:
            self._marks[a] = [mark]
        return [a]

    def size(self, a: int) -> int:
        return self._size[self.find(a)]

    def find(self, a: int) -> int:
        root = a
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[a] != root:
            self._parent[a], a = root, self._parent[a]
        return root

    def resolve(self, atoms: list[int]) -> list[int]:
        """``atoms`` with every refined atom replaced by its (resolved) factors, as class roots."""
        out: list[int] = []
        for a in atoms:
            r = self.find(a)
            if r in self._split:
                out.extend(self.resolve(self._split[r]))
            else:
                out.append(r)
        return out

    def marks(self, a: int) -> list[str]:
        return self._marks.get(self.find(a), [])

    def mark(self, atoms: list[int], reason: str) -> None:
        """Mark every resolved atom of ``atoms`` (and its class) with ``reason``."""
        for a in self.resolve(atoms):
            reasons = self._marks.setdefault(a, [])
            if reason not in reasons:
                reasons.append(reason)

    def _refine(self, a: int, outer: int) -> tuple[int, int]:
        """Split root ``a`` of size ``n`` into ``[outer, n // outer]``; marks carry over."""
        n = self._size[a]
        (o,) = self.new(outer)
        (i,) = self.new(n // outer)
        self._split[a] = [o, i]
        for reason in self._marks.get(a, []):
            self.mark([o, i], reason)
        return o, i

    def _union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        self._parent[rb] = ra
        for reason in self._marks.pop(rb, []):
            self.mark([ra], reason)

    def unify(self, xs: list[int], ys: list[int], reason: str) -> None:
        """Make the atom lists ``xs`` and ``ys`` (equal products) index-for-index the same.

        Atoms whose sizes do not line up are refined (``[12] ~ [3, 4]`` splits the 12); when a
        boundary cannot be matched (``[6, 2] ~ [4, 3]``) every atom of both lists is marked.
        """
        xs, ys = self.resolve(xs), self.resolve(ys)
        i = j = 0
        while i < len(xs) and j < len(ys):
            a, b = self.find(xs[i]), self.find(ys[j])
            sa, sb = self._size[a], self._size[b]
            if a in self._split or b in self._split:  # refined meanwhile (a list held the class twice)
                xs = xs[:i] + self.resolve([a]) + xs[i + 1 :]
                ys = ys[:j] + self.resolve([b]) + ys[j + 1 :]
                continue
            if sa == sb:
                self._union(a, b)
                i, j = i + 1, j + 1
            elif sa > sb and sa % sb == 0:
                o, rest = self._refine(a, sb)
                self._union(o, b)
                xs = xs[:i] + [rest] + xs[i + 1 :]
                j += 1
            elif sb > sa and sb % sa == 0:
                o, rest = self._refine(b, sa)
                self._union(a, o)
                ys = ys[:j] + [rest] + ys[j + 1 :]
                i += 1
            else:
                self.mark(xs[i:] + ys[j:], f"{reason}: axes of sizes {sa} and {sb} do not line up")
                return
        if i < len(xs) or j < len(ys):
            self.mark(xs[i:] + ys[j:], f"{reason}: axis products differ")

    def reshape(self, dims: list[list[int]], shape: list[int], reason: str) -> list[list[int]]:
        """The atom lists of a tensor with axes ``dims`` viewed as ``shape`` (same number of entries)."""
        flat = self.resolve([a for d in dims for a in d])
        out: list[list[int]] = []
        k = 0
        for n in shape:
            axis: list[int] = []
            need = n
            while need > 1:
                if k >= len(flat):
                    return self._tangled(flat, shape, reason)
                a = self.find(flat[k])
                s = self._size[a]
                if a in self._split:
                    flat = flat[:k] + self.resolve([a]) + flat[k + 1 :]
                    continue
                if need % s == 0:
                    axis.append(a)
                    need //= s
                    k += 1
                elif s % need == 0:
                    o, rest = self._refine(a, need)
                    axis.append(o)
                    flat[k] = rest
                    need = 1
                else:
                    return self._tangled(flat, shape, reason)
            out.append(axis)
        if k != len(flat):
            return self._tangled(flat, shape, reason)
        return out

    def _tangled(self, flat: list[int], shape: list[int], reason: str) -> list[list[int]]:
        why = f"{reason}: reshaped across atom boundaries"
        self.mark(flat, why)
        return [self.new(n, why) for n in shape]

    def counts_in(self, atoms: list[int]) -> dict[int, int]:
        """How often each resolved class occurs in ``atoms``."""
        out: dict[int, int] = {}
        for a in self.resolve(atoms):
            out[a] = out.get(a, 0) + 1
        return out
