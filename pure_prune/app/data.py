"""Datasets that never download: bundled, generated offline, or read from files the user already has.

``load(name, root=..., **opts) -> Dataset`` returns tensors (float32 inputs, int64 labels) that have
been validated (matching lengths, labels in ``[0, num_classes)``, finite inputs). ``batches`` cuts a
split into fixed-shape batches in an order drawn from an explicit key (``pure_prune.rng``).

    >>> ds = load("digits")                        # sklearn's bundled 8x8 digits, (N, 64) in [0, 1]
    >>> for xb, yb in batches(ds.x_train, ds.y_train, 32, key=epoch_key(0, epoch=1)):
    ...     check_batch(xb, yb, ds.meta["input_shape"], ds.num_classes)

Text (``load("text")`` / ``text_corpus``) is for language modelling: token-id streams and
``lm_batches`` windows of shape ``(batch_size, seq_len)``.
"""

from __future__ import annotations

import gzip
import hashlib
import inspect
import math
import pickle
import re
import sys
import types
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from einops import rearrange, reduce

from pure_prune import rng
from pure_prune.app import extras

__all__ = [
    "MAX_CLASSES", "UNK", "Dataset", "LMCorpus", "batches", "check_batch", "decode", "encode", "epoch_key", "lm_batches",
    "load", "names", "num_batches", "num_lm_batches", "read_idx", "text_corpus", "tokenize",
]  # fmt: skip

UNK = "<unk>"
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


class LMCorpus(NamedTuple):
    """Token-id streams ``(T_split,)`` int64 for language modelling; ``vocab[i]`` is token ``i``,
    ``vocab[0] == "<unk>"``; ``level`` is ``"char"`` or ``"word"``."""

    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    vocab: tuple[str, ...]
    level: str


# ----------------------------------------------------------------------------------------- validation


def _check_positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_num_classes(value: object, name: str = "num_classes") -> int:
    n = _check_positive_int(value, name)
    if n > MAX_CLASSES:
        raise ValueError(f"{name} = {n} exceeds MAX_CLASSES = {MAX_CLASSES}; relabel the data to 0..C-1")
    return n


def _check_label_array(y: np.ndarray, where: str) -> int:
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


def _check_labels(y: torch.Tensor, num_classes: int, name: str) -> None:
    """Raise ``TypeError``/``ValueError`` naming ``name``, the first bad index and its value."""
    if y.dtype != torch.int64:
        raise TypeError(f"{name} must be int64 labels, got dtype {y.dtype}")
    bad = (y < 0) | (y >= num_classes)
    if bool(bad.any()):
        idx = tuple(int(i) for i in torch.nonzero(bad)[0])
        raise ValueError(f"{name}{list(idx)} = {int(y[idx])} is outside [0, {num_classes})")


def _check_finite(x: torch.Tensor, name: str) -> None:
    if x.is_floating_point():
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            idx = tuple(int(i) for i in torch.nonzero(bad)[0])
            raise ValueError(f"{name}{list(idx)} = {float(x[idx])} is not finite")


def _dataset(name: str, splits: dict[str, np.ndarray | torch.Tensor], num_classes: int, meta: dict):
    """Build a validated ``Dataset`` from the four named arrays (inputs keep int64 if integer-typed
    token ids, otherwise become float32; labels become int64)."""
    t = {k: torch.as_tensor(v) for k, v in splits.items()}
    for k in ("x_train", "x_test"):
        t[k] = t[k] if t[k].dtype == torch.int64 else t[k].to(torch.float32)
        _check_finite(t[k], k)
    for part in ("train", "test"):
        x, y = t[f"x_{part}"], t[f"y_{part}"]
        if x.ndim == 0 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"x_{part} has shape {tuple(x.shape)} but y_{part} has shape {tuple(y.shape)}")
        _check_labels(y, num_classes, f"y_{part}")
    if t["x_train"].shape[1:] != t["x_test"].shape[1:]:
        rows = tuple(t["x_train"].shape[1:]), tuple(t["x_test"].shape[1:])
        raise ValueError(f"x_train rows have shape {rows[0]} but x_test rows {rows[1]}")
    shapes = {k: tuple(v.shape) for k, v in t.items()}
    meta = {**meta, "shapes": shapes, "input_shape": tuple(t["x_train"].shape[1:])}
    return Dataset(t["x_train"], t["y_train"], t["x_test"], t["y_test"], num_classes, name, meta)


# ---------------------------------------------------------------------------------- bundled / generated


def _load_digits(*, test_size: int = 360, key: int = 0) -> Dataset:
    """sklearn's bundled 8x8 digits (1797 images): inputs ``(N, 64)`` = pixel / 16 in [0, 1].
    Split: ``perm = torch.randperm(1797, generator=rng.generator(key))``; test = ``perm[:test_size]``,
    train = ``perm[test_size:]`` (default 1437/360), both in permutation order."""
    bunch = extras.require("sklearn.datasets", "the digits data set").load_digits()
    n = len(bunch.target)
    if isinstance(test_size, bool) or not isinstance(test_size, int) or not 0 < test_size < n:
        raise ValueError(f"test_size must be an int in (0, {n}), got {test_size!r}")
    perm = torch.randperm(n, generator=rng.generator(key)).numpy()
    x, y = bunch.data / 16.0, bunch.target.astype(np.int64)
    test, train = perm[:test_size], perm[test_size:]
    split = f"randperm({n}, rng.generator({key})): first {test_size} test, other {n - test_size} train"
    meta = {"source": "sklearn.datasets.load_digits (bundled, no download)", "split": split}
    splits = {"x_train": x[train], "y_train": y[train], "x_test": x[test], "y_test": y[test]}
    return _dataset("digits", splits, 10, meta)


def _load_mnist1d() -> Dataset:
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
    return _dataset("mnist1d", splits, 10, meta)


# ----------------------------------------------------------------------------------------------- text


def tokenize(text: str, level: str) -> list[str]:
    """``"char"``: one token per character. ``"word"``: lowercase, split on anything that is not a
    letter or digit (``_`` included), empty pieces dropped."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if level == "char":
        return list(text)
    if level == "word":
        return re.findall(r"[^\W_]+", text.lower())
    raise ValueError(f"level must be 'char' or 'word', got {level!r}")


def _build_vocab(tokens: Sequence[str], max_vocab: int | None, min_count: int) -> tuple[str, ...]:
    """``("<unk>", *kept)``: tokens seen at least ``min_count`` times, most frequent first (ties by
    token), at most ``max_vocab`` entries counting ``<unk>``."""
    counts = Counter(tokens)
    kept = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
    limit = None if max_vocab is None else max_vocab - 1
    return (UNK, *kept[:limit])


def encode(tokens: Sequence[str], vocab: Sequence[str]) -> torch.Tensor:
    """Token ids ``(len(tokens),)`` int64; tokens missing from ``vocab`` map to 0 (``<unk>``)."""
    index = {t: i for i, t in enumerate(vocab)}
    return torch.tensor([index.get(t, 0) for t in tokens], dtype=torch.int64)


def decode(ids: torch.Tensor, vocab: Sequence[str], level: str) -> str:
    """Inverse of ``encode``: ids ``(T,)`` -> text (chars joined by ``""``, words by ``" "``)."""
    if ids.ndim != 1 or ids.dtype != torch.int64:
        raise ValueError(f"ids must be a 1-D int64 tensor, got shape {tuple(ids.shape)} dtype {ids.dtype}")
    _check_labels(ids, len(vocab), "ids")
    sep = {"char": "", "word": " "}.get(level)
    if sep is None:
        raise ValueError(f"level must be 'char' or 'word', got {level!r}")
    return sep.join(vocab[i] for i in ids.tolist())


def _pydoc_text() -> str:
    from pydoc_data.topics import topics

    return "".join(topics[k] for k in sorted(topics))


def text_corpus(
    level: str = "char",
    *,
    text: str | None = None,
    max_vocab: int | None = None,
    min_count: int | None = None,
) -> LMCorpus:
    """Tokenise ``text`` (default: Python's bundled ``pydoc_data.topics.topics`` values joined in
    sorted key order) and split the token sequence of length T by position: train = first
    ``T*9//10``, valid = next ``T//20``, test = the rest. The vocabulary comes from train only
    (``min_count`` default 1 for chars, 2 for words; ``max_vocab`` default unlimited for chars, 10000
    for words); other tokens become ``<unk>`` (id 0)."""
    if text is not None and not isinstance(text, str):
        raise TypeError(f"text must be a str or None, got {type(text).__name__}")
    tokens = tokenize(_pydoc_text() if text is None else text, level)
    default_min, default_max = (1, None) if level == "char" else (2, 10000)
    min_count = _check_positive_int(default_min if min_count is None else min_count, "min_count")
    max_vocab = default_max if max_vocab is None else max_vocab
    if max_vocab is not None and (_check_positive_int(max_vocab, "max_vocab") < 2):
        raise ValueError(f"max_vocab must be at least 2 (<unk> and one token), got {max_vocab}")
    n = len(tokens)
    n_train, n_valid = n * 9 // 10, n // 20
    if n_valid == 0 or n - n_train - n_valid == 0:
        raise ValueError(f"text has {n} {level} tokens; need at least 20 for a 90/5/5 split")
    vocab = _build_vocab(tokens[:n_train], max_vocab, min_count)
    parts = (tokens[:n_train], tokens[n_train : n_train + n_valid], tokens[n_train + n_valid :])
    return LMCorpus(*(encode(p, vocab) for p in parts), vocab=vocab, level=level)


def _load_text(
    *,
    level: str = "char",
    eval_split: str = "test",
    max_vocab: int | None = None,
    min_count: int | None = None,
) -> Dataset:
    """``text_corpus(level)`` as a Dataset: ``x_train`` = train stream minus its last token,
    ``y_train[t] = x_train[t + 1]`` (next-token targets); ``x_test``/``y_test`` the same for
    ``eval_split`` ("test" or "valid"). ``num_classes`` = vocabulary size; ``meta["vocab"]``."""
    if eval_split not in ("test", "valid"):
        raise ValueError(f"eval_split must be 'test' or 'valid', got {eval_split!r}")
    c = text_corpus(level, max_vocab=max_vocab, min_count=min_count)
    ev = getattr(c, eval_split)
    digest = hashlib.sha256(_pydoc_text().encode()).hexdigest()[:16]
    meta = {
        "source": f"pydoc_data.topics (Python {sys.version.split()[0]}, sha256 {digest}...)",
        "split": f"tokens by position 90/5/5 train/valid/test; x_test is '{eval_split}'",
        "vocab": c.vocab,
        "level": level,
        "tokens": {k: len(getattr(c, k)) for k in ("train", "valid", "test")},
    }
    splits = {"x_train": c.train[:-1], "y_train": c.train[1:].clone()}
    splits.update(x_test=ev[:-1], y_test=ev[1:].clone())
    return _dataset("text", splits, len(c.vocab), meta)


def num_lm_batches(n_tokens: int, batch_size: int, seq_len: int) -> int:
    """Number of ``(batch_size, seq_len)`` windows ``lm_batches`` yields from ``n_tokens`` ids."""
    _check_positive_int(batch_size, "batch_size")
    _check_positive_int(seq_len, "seq_len")
    return max(n_tokens - 1, 0) // batch_size // seq_len


Batch = tuple[torch.Tensor, torch.Tensor]


def lm_batches(ids: torch.Tensor, batch_size: int, seq_len: int) -> Iterator[Batch]:
    """Language-model batches from a stream ``ids`` ``(T,)``: the first ``batch_size * n`` ids
    (``n = (T-1) // batch_size``) are laid out as ``batch_size`` contiguous rows, and consecutive
    windows of ``seq_len`` columns are yielded as ``x`` ``(batch_size, seq_len)`` with
    ``y = `` the same window one token later. The partial last window is dropped (fixed shapes)."""
    if not isinstance(ids, torch.Tensor) or ids.ndim != 1 or ids.dtype != torch.int64:
        raise ValueError(f"ids must be a 1-D int64 tensor, got {getattr(ids, 'shape', type(ids))}")
    count = num_lm_batches(len(ids), batch_size, seq_len)
    if count == 0:
        raise ValueError(f"ids has {len(ids)} tokens; need > batch_size*seq_len = {batch_size * seq_len}")
    n = (len(ids) - 1) // batch_size
    xs = rearrange(ids[: batch_size * n], "(b t) -> b t", b=batch_size)
    ys = rearrange(ids[1 : batch_size * n + 1], "(b t) -> b t", b=batch_size)

    def gen():
        for i in range(count):
            window = slice(i * seq_len, (i + 1) * seq_len)
            yield xs[:, window].contiguous(), ys[:, window].contiguous()

    return gen()


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


def _load_mnist(root: Path, *, flatten: bool = False) -> Dataset:
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
    return _dataset("mnist", arrays, 10, meta)


# ------------------------------------------------------------------------------------ CIFAR-10 pickles


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


def _load_cifar10(root: Path, *, standardize: bool = False) -> Dataset:
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
    return _dataset("cifar10", splits, 10, meta)


# ------------------------------------------------------------------------------------------------ npz


def _load_npz(root: Path, *, num_classes: int | None = None) -> Dataset:
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
    top = max(_check_label_array(arrays[f"y_{part}"], f"{root}: y_{part}") for part in ("train", "test"))
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if x.ndim == 0 or len(x) != len(y):
            raise ValueError(f"{root}: x_{part} has shape {x.shape} but y_{part} has shape {y.shape}")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            i = np.argwhere(~np.isfinite(x))[0]
            raise ValueError(f"{root}: x_{part}{i.tolist()} = {x[tuple(i)]} is not finite")
    if num_classes is None:
        num_classes = top + 1
    num_classes = _check_num_classes(num_classes)
    for k in ("x_train", "x_test"):
        arrays[k] = arrays[k].astype(np.float32)
    for k in ("y_train", "y_test"):
        arrays[k] = arrays[k].astype(np.int64)
    meta = {"source": f"npz file {root}", "split": "the file's own x_train/x_test"}
    return _dataset("npz", arrays, num_classes, meta)


# ------------------------------------------------------------------------------------------- registry

_LOADERS: types.MappingProxyType[str, Callable[..., Dataset]] = types.MappingProxyType(
    {
        "cifar10": _load_cifar10,
        "digits": _load_digits,
        "mnist": _load_mnist,
        "mnist1d": _load_mnist1d,
        "npz": _load_npz,
        "text": _load_text,
    }  # fmt: skip
)


def names() -> tuple[str, ...]:
    """The dataset names ``load`` knows, sorted."""
    return tuple(sorted(_LOADERS))


def load(name: str, *, root: str | Path | None = None, **opts) -> Dataset:
    """Load dataset ``name`` (see ``names()``); nothing is ever downloaded.

    ``root`` is required by the file-reading datasets ("mnist": directory of IDX files; "cifar10":
    directory of python batches; "npz": the file) and refused by the others. ``opts`` are the
    dataset's options: digits(test_size=360, key=0); mnist1d(); text(level="char", eval_split="test",
    max_vocab=None, min_count=None); mnist(flatten=False); cifar10(standardize=False);
    npz(num_classes=None). Unknown names raise ``ValueError``, unknown options ``TypeError``."""
    if not isinstance(name, str) or name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; known: {list(names())}")
    if root is not None and not isinstance(root, (str, Path)):
        raise TypeError(f"root must be a str or Path, got {type(root).__name__} {root!r:.60}")
    fn = _LOADERS[name]
    params = inspect.signature(fn).parameters
    accepted = [p for p in params if params[p].kind == inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(opts) - set(accepted))
    if unknown:
        raise TypeError(f"load({name!r}) got unknown option(s) {unknown}; accepted: {accepted}")
    if "root" in params:
        if root is None:
            raise ValueError(f"load({name!r}) reads files you already have: pass root=<path>")
        return fn(Path(root).expanduser(), **opts)
    if root is not None:
        raise ValueError(f"load({name!r}) reads no files; root must be None, got {root!r}")
    return fn(**opts)


# -------------------------------------------------------------------------------------------- batches


def num_batches(n: int, batch_size: int, *, drop_last: bool = True) -> int:
    """Batches per epoch for ``n`` samples: ``n // batch_size`` (``ceil`` when ``drop_last=False``)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    _check_positive_int(batch_size, "batch_size")
    if not isinstance(drop_last, bool):
        raise TypeError(f"drop_last must be a bool, got {drop_last!r}")
    return n // batch_size if drop_last else -(-n // batch_size)


def epoch_key(key: int, epoch: int) -> int:
    """The shuffle key of ``epoch``: ``rng.fold_in(key, epoch)``."""
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
    return rng.fold_in(key, epoch)


def batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, *, key: int | None, drop_last: bool = True
) -> Iterator[Batch]:
    """Yield ``(x[idx], y[idx])`` with ``idx`` consecutive slices of ``batch_size`` of an order that
    is ``torch.randperm(N, generator=rng.generator(key))`` (``key=None``: ``0..N-1``). Every batch
    has ``batch_size`` rows unless ``drop_last=False``, which adds the partial remainder. Arguments
    are checked on the call, before iteration."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"x and y must be tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
        raise ValueError(f"x has shape {tuple(x.shape)} but y has shape {tuple(y.shape)}; lengths differ")
    if key is not None:
        rng.check_key(key)
    n = len(x)
    count = num_batches(n, batch_size, drop_last=drop_last)
    if count == 0:
        raise ValueError(f"x has {n} samples, fewer than batch_size={batch_size}: no full batch")
    order = torch.arange(n) if key is None else torch.randperm(n, generator=rng.generator(key))

    def gen():
        for i in range(count):
            idx = order[i * batch_size : (i + 1) * batch_size]
            yield x[idx], y[idx]

    return gen()


def check_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    dtype: torch.dtype = torch.float32,
) -> None:
    """Check a batch for a model: ``x`` ``(*batch, *input_shape)`` of ``dtype`` (int64 for token
    ids), ``y`` int64 of shape ``batch`` (``(B,)`` for classification; ``(B, L)`` for language
    modelling with ``input_shape=()``) with values in ``[0, num_classes)``. Raises ``TypeError``
    (not a tensor, wrong dtype) or ``ValueError`` (shape, label value and index) naming the culprit."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"x and y must be tensors, got {type(x).__name__} and {type(y).__name__}")
    _check_positive_int(num_classes, "num_classes")
    if x.dtype != dtype:
        raise TypeError(f"x has dtype {x.dtype}, expected {dtype}")
    input_shape = tuple(input_shape)
    n_batch = x.ndim - len(input_shape)
    if n_batch < 1 or tuple(x.shape[n_batch:]) != input_shape:
        raise ValueError(f"x has shape {tuple(x.shape)}; expected (batch, *{input_shape})")
    if tuple(y.shape) != tuple(x.shape[:n_batch]):
        raise ValueError(f"y has shape {tuple(y.shape)}; expected {tuple(x.shape[:n_batch])} to match x")
    _check_labels(y, num_classes, "y")
