"""The compact printers of :mod:`pure_prune.testing`'s failure messages.

* :func:`format_value`: a scalar (number, bool, one-element tensor) as ``0.25`` / ``True``;
* :func:`format_tensor`: one line per tensor, ``dtype[shape]``, a summary, the first values;
* :func:`describe_tree`: one ``'path': <tensor>`` line per leaf;
* :func:`first_index` and :func:`leaf_label`: the ``leaf 'fc1.weight' index (3, 2)`` part of the
  invariant checks' messages (:mod:`pure_prune.testing.mask_invariants`,
  :mod:`pure_prune.testing.transform_invariants`).

Needs only torch.
"""

from __future__ import annotations

from typing import Any

import torch

from pure_prune import tree

__all__ = ["describe_tree", "first_index", "format_tensor", "format_value", "leaf_label"]


def format_value(v: Any) -> str:
    """A scalar (Python number, bool or 0-d / 1-element tensor) as a short string: ``0.25``, ``True``."""
    if isinstance(v, torch.Tensor):
        v = v.reshape(()).item() if v.numel() == 1 else v
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def format_tensor(x: Any, *, max_items: int = 6) -> str:
    """One line for a tensor: dtype, shape, a summary and the first ``max_items`` values.

    ``bool[3, 4] 7/12 True [T, F, T, T, F, T, …]``; ``float32[2, 2] min=-1 max=3 [-1, 0.5, 2, 3]``.
    ``None`` prints as ``None``; other objects by ``repr``.
    """
    if x is None:
        return "None"
    if not isinstance(x, torch.Tensor):
        return repr(x)
    head = f"{str(x.dtype).removeprefix('torch.')}[{', '.join(str(d) for d in x.shape)}]"
    if x.numel() == 0:
        return f"{head} (empty)"
    flat = x.detach().reshape(-1)
    more = ", …" if flat.numel() > max_items else ""
    if x.dtype == torch.bool:
        items = ", ".join("T" if b else "F" for b in flat[:max_items].tolist())
        return f"{head} {int(flat.sum())}/{flat.numel()} True [{items}{more}]"
    if x.is_floating_point():
        wide = flat.to(torch.float64)
        items = ", ".join(f"{v:.4g}" for v in wide[:max_items].tolist())
        finite = wide[torch.isfinite(wide)]
        stats = f" min={finite.min().item():.4g} max={finite.max().item():.4g}" if finite.numel() else ""
        n_bad = flat.numel() - finite.numel()
        bad = f" non-finite={n_bad}" if n_bad else ""
        return f"{head}{stats}{bad} [{items}{more}]"
    items = ", ".join(str(v) for v in flat[:max_items].tolist())
    return f"{head} [{items}{more}]"


def describe_tree(t: tree.Tree, *, max_items: int = 6) -> str:
    """One line per leaf: ``'path': <format_tensor(leaf)>``, in canonical leaf order."""
    names, leaves, _ = tree.flatten_with_paths(t)
    if not names:
        return "(empty tree)"
    return "\n".join(f"{p!r}: {format_tensor(x, max_items=max_items)}" for p, x in zip(names, leaves))


def first_index(bad: torch.Tensor) -> tuple[int, ...]:
    """Index of the first ``True`` of a bool tensor, in row-major order."""
    return tuple(int(i) for i in torch.nonzero(bad)[0])


def leaf_label(path: str) -> str:
    """``leaf 'path'`` for a message (``leaf <root>`` for the empty path of a bare tensor)."""
    return f"leaf {path!r}" if path else "leaf <root>"
