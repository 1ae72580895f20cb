"""Data sets that never download: sklearn's bundled digits, MNIST-1D generated offline, MNIST IDX
files and ``.npz`` archives the user already has.

Each loader returns a validated :class:`~pure_prune.app.data_checks.Dataset`:

* :func:`load_digits`: 8x8 digits, ``(N, 64)`` in [0, 1], split by a keyed permutation;
* :func:`load_mnist1d`: MNIST-1D's published defaults, ``(N, 40)``;
* :func:`load_mnist`: the four standard IDX files (read by :func:`read_idx`), ``(N, 1, H, W)`` or
  ``(N, H*W)`` in [0, 1];
* :func:`load_npz`: a user's ``.npz`` with ``x_train``, ``y_train``, ``x_test``, ``y_test``, read
  without pickle.

CIFAR-10 lives in :mod:`pure_prune.app.data_cifar`; :func:`pure_prune.app.data.load` picks the
loader by name.
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from pure_prune import rng
from pure_prune.app import extras
from pure_prune.app.data_checks import Dataset, check_label_array, check_num_classes, make_dataset

__all__ = ["bundled_digits", "load_digits", "load_mnist", "load_mnist1d", "load_npz", "read_idx"]


# ---------------------------------------------------------------------------------- bundled / generated


def load_digits(*, test_size: int = 360, key: int = 0) -> Dataset:
    """sklearn's bundled 8x8 digits (1797 images): inputs ``(N, 64)`` = pixel / 16 in [0, 1].
    Split: ``perm = torch.randperm(1797, generator=rng.generator(key))``; test = ``perm[:test_size]``,
    train = ``perm[test_size:]`` (default 1437/360), both in permutation order."""
    pixels, labels = bundled_digits()
    n = len(labels)
    if isinstance(test_size, bool) or not isinstance(test_size, int) or not 0 < test_size < n:
        raise ValueError(f"test_size must be an int in (0, {n}), got {test_size!r}")
    perm = torch.randperm(n, generator=rng.generator(key)).numpy()
    x, y = pixels / 16.0, labels
    test, train = perm[:test_size], perm[test_size:]
    split = f"randperm({n}, rng.generator({key})): first {test_size} test, other {n - test_size} train"
    meta = {"source": "sklearn.datasets.load_digits (bundled, no download)", "split": split}
    splits = {"x_train": x[train], "y_train": y[train], "x_test": x[test], "y_test": y[test]}
    return make_dataset("digits", splits, 10, meta)


def bundled_digits() -> tuple[np.ndarray, np.ndarray]:
    """The digits scikit-learn ships: pixels ``(1797, 64)`` float64 in 0..16 and labels ``(1797,)``
    int64, the arrays of ``sklearn.datasets.load_digits()``.

    Read straight from the package's ``datasets/data/digits.csv.gz`` (found with
    ``importlib.util.find_spec``, ~25 ms) instead of importing ``sklearn.datasets``, which imports
    scipy.stats and costs about a second of every run's start-up; falls back to ``load_digits()``
    where that file is not there. ``tests/test_data.py`` holds the two equal.
    """
    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        table = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if table.is_file():
            rows = np.loadtxt(table, delimiter=",", dtype=np.float64, ndmin=2)
            return rows[:, :-1], rows[:, -1].astype(np.int64)
    bunch = extras.require("sklearn.datasets", "the digits data set").load_digits()
    return bunch.data, bunch.target.astype(np.int64)


def load_mnist1d() -> Dataset:
    """MNIST-1D from ``mnist1d.data.make_dataset(get_dataset_args())`` (the published defaults:
    5000 samples, seed 42, 4000 train / 1000 test, 40 features); generated offline in about a second.
    The generator seeds numpy's and Python's global RNGs; both are restored afterwards."""
    import random
    from importlib.metadata import version

    mnist1d_data = extras.require("mnist1d.data", "the mnist1d data set")

    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = mnist1d_data.make_dataset(mnist1d_data.get_dataset_args())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    meta = {
        "source": f"mnist1d.data.make_dataset(get_dataset_args()) (mnist1d {version('mnist1d')}, offline)",
        "split": "the generator's own: first 80% of its shuffled samples train, last 20% test",
    }
    splits = {"x_train": d["x"], "y_train": d["y"], "x_test": d["x_test"], "y_test": d["y_test"]}
    return make_dataset("mnist1d", splits, 10, meta)


# -------------------------------------------------------------------------------------- IDX (MNIST)

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_MNIST_FILES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
                "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}  # fmt: skip


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped): magic ``00 00 <dtype code> <ndim>``, ``ndim``
    big-endian uint32 dims, then the data. Returns an array of those dims in native byte order.
    Raises ``ValueError`` naming the file on a bad magic, unknown dtype, or a size that does not
    match the header (truncated or trailing bytes); ``FileNotFoundError`` if missing."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except FileNotFoundError as e:
        raise FileNotFoundError(f"IDX file {path} does not exist") from e
    except (OSError, EOFError, zlib.error) as e:  # unreadable, bad or truncated gzip
        raise ValueError(f"{path}: cannot read/decompress: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: bad IDX magic {raw[:4].hex()!r} (expected 0000<dtype><ndim>)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX dtype code 0x{code:02x} (known {sorted(_IDX_DTYPES)})")
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise ValueError(f"{path}: IDX header declares {ndim} dims but the file has {len(raw)} bytes")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - header != expected:
        state = "truncated" if len(raw) - header < expected else "has trailing bytes"
        found = len(raw) - header
        raise ValueError(f"{path}: {state}: dims {dims} need {expected} data bytes, found {found}")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find(root: Path, stems: Sequence[str], what: str) -> Path:
    tried = [root / s for s in stems]
    for p in tried:
        if p.is_file():
            return p
    raise FileNotFoundError(f"{what}: none of {[str(p) for p in tried]} exists")


def load_mnist(root: Path, *, flatten: bool = False) -> Dataset:
    """MNIST (or Fashion-MNIST) from the four standard IDX files in ``root`` (``.gz`` optional).
    Inputs: pixel / 255, ``(N, 1, H, W)`` float32 or ``(N, H*W)`` with ``flatten=True``."""
    arrays, files = {}, {}
    for key, stem in _MNIST_FILES.items():
        path = _find(root, (stem, stem + ".gz"), f"MNIST {key}")
        arr = read_idx(path)
        want = 3 if key.startswith("x") else 1
        if arr.ndim != want or arr.dtype != np.uint8:
            raise ValueError(f"{path}: expected {want}-D uint8, got {arr.ndim}-D {arr.dtype}")
        arrays[key], files[key] = arr, str(path)
    for part in ("train", "test"):
        if len(arrays[f"x_{part}"]) != len(arrays[f"y_{part}"]):
            n_x, n_y = len(arrays[f"x_{part}"]), len(arrays[f"y_{part}"])
            fx, fy = files[f"x_{part}"], files[f"y_{part}"]
            raise ValueError(f"{fx} has {n_x} images but {fy} has {n_y} labels")
    pattern = "n h w -> n (h w)" if flatten else "n h w -> n 1 h w"
    for k in ("x_train", "x_test"):
        arrays[k] = rearrange(arrays[k].astype(np.float32) / 255.0, pattern)
    for k in ("y_train", "y_test"):
        arrays[k] = arrays[k].astype(np.int64)
    meta = {"source": f"IDX files in {root}", "files": files, "split": "the files' own train / t10k split"}
    return make_dataset("mnist", arrays, 10, meta)


# ------------------------------------------------------------------------------------------------ npz


def load_npz(root: Path, *, num_classes: int | None = None) -> Dataset:
    """A user's ``.npz`` (``root`` is the file) with ``x_train``, ``y_train``, ``x_test``, ``y_test``;
    loaded with ``allow_pickle=False``. Inputs: real or integer arrays -> float32; labels: integer
    arrays -> int64. ``num_classes`` defaults to ``max label + 1``."""
    try:
        f = np.load(root, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise ValueError(f"holds a single {type(f).__name__}, not an .npz archive")
        with f:
            found = sorted(f.files)
            arrays = {k: f[k] for k in _MNIST_FILES if k in found}
    except FileNotFoundError as e:
        raise FileNotFoundError(f"npz file {root} does not exist") from e
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as e:  # incl. object arrays
        raise ValueError(f"{root}: not a readable .npz without pickle: {e}") from e
    missing = sorted(set(_MNIST_FILES) - set(arrays))
    if missing:
        raise ValueError(f"{root}: missing arrays {missing} (found {found})")
    for k, a in arrays.items():
        ok = "iu" if k.startswith("y") else "fiu"
        if a.dtype.kind not in ok:
            raise TypeError(f"{root}: {k} has dtype {a.dtype}; expected numpy kind in {ok!r}")
    # every check on the raw arrays, before any float32/int64 copy is made
    top = max(check_label_array(arrays[f"y_{part}"], f"{root}: y_{part}") for part in ("train", "test"))
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if x.ndim == 0 or len(x) != len(y):
            raise ValueError(f"{root}: x_{part} has shape {x.shape} but y_{part} has shape {y.shape}")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            i = np.argwhere(~np.isfinite(x))[0]
            raise ValueError(f"{root}: x_{part}{i.tolist()} = {x[tuple(i)]} is not finite")
    if num_classes is None:
        num_classes = top + 1
    num_classes = check_num_classes(num_classes)
    for k in ("x_train", "x_test"):
        arrays[k] = arrays[k].astype(np.float32)
    for k in ("y_train", "y_test"):
        arrays[k] = arrays[k].astype(np.int64)
    meta = {"source": f"npz file {root}", "split": "the file's own x_train/x_test"}
    return make_dataset("npz", arrays, num_classes, meta)
