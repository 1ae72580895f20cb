"""The :class:`Dataset` container and the checks every data set passes before it is returned.

* :class:`Dataset`: a train/test split, ``x_*`` ``(N, *input_shape)`` float32 (int64 token ids for
  text), ``y_*`` ``(N,)`` int64 in ``[0, num_classes)``, and ``meta``;
* :func:`make_dataset`: builds a validated :class:`Dataset` from four named arrays (matching
  lengths and row shapes, finite inputs, labels in range);
* :func:`check_positive_int`, :func:`check_num_classes` (at most :data:`MAX_CLASSES`),
  :func:`check_label_array` (a raw numpy label array, before any copy), :func:`check_labels` and
  :func:`check_finite` (tensors): each raises naming the culprit, and the first bad index and value
  (:func:`check_positive_int` and :func:`check_labels` live in :mod:`pure_prune.batching`, which
  batches with them; re-exported here).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from pure_prune.batching import check_labels, check_positive_int

__all__ = [
    "MAX_CLASSES",
    "Dataset",
    "check_finite",
    "check_label_array",
    "check_labels",
    "check_num_classes",
    "check_positive_int",
    "make_dataset",
]

MAX_CLASSES = 1 << 16
"""The most classes a dataset may have (65,536): labels are small non-negative ints. A label file
whose largest label is 2**40 (a hash, an id, a corrupted byte) would otherwise ask for a classifier
with 2**40 + 1 outputs; relabel such data to ``0..C-1`` first."""


class Dataset(NamedTuple):
    """A train/test split. ``x_*``: ``(N, *input_shape)`` float32 (int64 token ids for ``"text"``);
    ``y_*``: ``(N,)`` int64 in ``[0, num_classes)``; ``meta``: source, shapes, split, input_shape."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    name: str
    meta: dict


# ----------------------------------------------------------------------------------------- validation


def check_num_classes(value: object, name: str = "num_classes") -> int:
    n = check_positive_int(value, name)
    if n > MAX_CLASSES:
        raise ValueError(f"{name} = {n} exceeds MAX_CLASSES = {MAX_CLASSES}; relabel the data to 0..C-1")
    return n


def check_label_array(y: np.ndarray, where: str) -> int:
    """The largest label of the integer array ``y`` after checking, on the raw array before any
    copy, that it is 1-D, non-empty and holds labels in ``[0, MAX_CLASSES)``; raises naming
    ``where``, the first bad index and its value."""
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"{where} must be a non-empty 1-D label array, got shape {y.shape}")
    lo, hi = y.min(), y.max()
    if lo < 0 or hi >= MAX_CLASSES:
        i = int(np.argmax((y < 0) | (y >= MAX_CLASSES)))
        raise ValueError(
            f"{where}[{i}] = {int(y[i])} is outside [0, MAX_CLASSES = {MAX_CLASSES}): labels are "
            "small non-negative ints; relabel the data to 0..C-1"
        )
    return int(hi)


def check_finite(x: torch.Tensor, name: str) -> None:
    if x.is_floating_point():
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            idx = tuple(int(i) for i in torch.nonzero(bad)[0])
            raise ValueError(f"{name}{list(idx)} = {float(x[idx])} is not finite")


def make_dataset(name: str, splits: dict[str, np.ndarray | torch.Tensor], num_classes: int, meta: dict):
    """Build a validated ``Dataset`` from the four named arrays (inputs keep int64 if integer-typed
    token ids, otherwise become float32; labels become int64)."""
    t = {k: torch.as_tensor(v) for k, v in splits.items()}
    for k in ("x_train", "x_test"):
        t[k] = t[k] if t[k].dtype == torch.int64 else t[k].to(torch.float32)
        check_finite(t[k], k)
    for part in ("train", "test"):
        x, y = t[f"x_{part}"], t[f"y_{part}"]
        if x.ndim == 0 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"x_{part} has shape {tuple(x.shape)} but y_{part} has shape {tuple(y.shape)}")
        check_labels(y, num_classes, f"y_{part}")
    if t["x_train"].shape[1:] != t["x_test"].shape[1:]:
        rows = tuple(t["x_train"].shape[1:]), tuple(t["x_test"].shape[1:])
        raise ValueError(f"x_train rows have shape {rows[0]} but x_test rows {rows[1]}")
    shapes = {k: tuple(v.shape) for k, v in t.items()}
    meta = {**meta, "shapes": shapes, "input_shape": tuple(t["x_train"].shape[1:])}
    return Dataset(t["x_train"], t["y_train"], t["x_test"], t["y_test"], num_classes, name, meta)
