"""CIFAR-10 from the python batch pickles the user already has, read by a restricted unpickler.

:func:`load_cifar10` reads ``data_batch_1..5`` and ``test_batch``: inputs ``(N, 3, 32, 32)``
float32 = pixel / 255 (optionally standardized per channel by the train split), labels ``(N,)``
int64. The unpickler resolves only numpy's array reconstruction, ``dtype`` (object dtypes refused)
and protocol 2's latin1 bytes encoding; any other global raises ``pickle.UnpicklingError`` naming
it, before anything it names is imported or called.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from einops import rearrange, reduce

from pure_prune.app.data_checks import Dataset, make_dataset

__all__ = ["load_cifar10"]


class _Refused(pickle.UnpicklingError):
    """Raised by the restricted unpickler for a global (or argument) it will not resolve."""


def _safe_dtype(*args) -> np.dtype:
    dt = np.dtype(*args)
    if dt.hasobject:
        raise _Refused(f"refusing object dtype {dt!r} (it would let the pickle build arbitrary objects)")
    return dt


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused(f"refusing _codecs.encode({type(text).__name__}, {encoding!r}); only latin1 str")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Callable]:
    """The only callables a CIFAR batch pickle may reference: numpy array reconstruction (numpy 1 and
    2 module names, protocols 2-5), ``dtype`` (object dtypes refused), and protocol 2's bytes encoding."""
    try:
        from numpy._core.multiarray import _reconstruct
        from numpy._core.numeric import _frombuffer
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
        from numpy.core.numeric import _frombuffer
    found = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _safe_dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for core in ("numpy.core", "numpy._core"):
        found[(f"{core}.multiarray", "_reconstruct")] = _reconstruct
        found[(f"{core}.numeric", "_frombuffer")] = _frombuffer
    return found


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose ``find_class`` resolves only ``_allowed_globals()``; any other global raises
    ``pickle.UnpicklingError`` naming it (before anything it names is imported or called)."""

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="bytes")
        self._path, self._allowed = path, _allowed_globals()

    def find_class(self, module: str, name: str):
        if (module, name) not in self._allowed:
            allowed = sorted(".".join(k) for k in self._allowed)
            raise _Refused(f"{self._path}: refusing global {module}.{name}; allowed: {allowed}")
        return self._allowed[(module, name)]


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (data ``(N, 3072)`` uint8, labels ``(N,)`` int64), validated."""
    try:
        with open(path, "rb") as f:
            batch = _RestrictedUnpickler(f, path).load()
    except FileNotFoundError as e:
        raise FileNotFoundError(f"CIFAR batch {path} does not exist") from e
    except _Refused as e:
        msg = str(e) if str(e).startswith(str(path)) else f"{path}: {e}"
        raise pickle.UnpicklingError(msg) from None
    except Exception as e:  # corrupt streams raise EOFError, ValueError, TypeError, ...
        raise ValueError(f"{path}: not a readable CIFAR batch pickle: {type(e).__name__}: {e}") from e
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a dict, got {type(batch).__name__}")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"{path}: missing 'data'/'labels' keys (found {sorted(map(str, batch))})")
    data, labels = batch["data"], np.asarray(batch["labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}"
        raise ValueError(f"{path}: 'data' must be uint8 (N, 3072), got {got}")
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(data):
        raise ValueError(f"{path}: 'labels' must be {len(data)} ints, got {labels.dtype} {labels.shape}")
    return data, labels.astype(np.int64)


def load_cifar10(root: Path, *, standardize: bool = False) -> Dataset:
    """CIFAR-10 from ``data_batch_1..5`` and ``test_batch`` in ``root`` or
    ``root/cifar-10-batches-py``. Inputs ``(N, 3, 32, 32)`` float32 = pixel / 255; with
    ``standardize=True`` each channel is shifted and scaled by the train split's mean and (population)
    std, recorded in ``meta``."""
    base = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    train_files = [f"data_batch_{i}" for i in range(1, 6)]
    parts = {n: _read_cifar_batch(base / n) for n in [*train_files, "test_batch"]}

    def to_images(data: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(rearrange(data.astype(np.float32) / 255.0, "n (c h w) -> n c h w", c=3, h=32))

    x_train = to_images(np.concatenate([parts[n][0] for n in train_files]))
    x_test = to_images(parts["test_batch"][0])
    meta = {"source": f"CIFAR-10 python batches in {base}", "split": "data_batch_1..5 train, test_batch test"}
    if standardize:
        mean = reduce(x_train, "n c h w -> 1 c 1 1", "mean")
        std = reduce((x_train - mean) ** 2, "n c h w -> 1 c 1 1", "mean").sqrt().clamp_min(1e-12)
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
        meta.update(mean=mean.flatten().tolist(), std=std.flatten().tolist())
    y_train = np.concatenate([parts[n][1] for n in train_files])
    splits = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": parts["test_batch"][1]}
    return make_dataset("cifar10", splits, 10, meta)
