"""Datasets that never download: bundled, generated offline, or read from files the user already has.

``load(name, root=..., **opts) -> Dataset`` returns tensors (float32 inputs, int64 labels) that have
been validated (matching lengths, labels in ``[0, num_classes)``, finite inputs). ``batches`` cuts a
split into fixed-shape batches in an order drawn from an explicit key (``pure_prune.rng``).

    >>> ds = load("digits")                        # sklearn's bundled 8x8 digits, (N, 64) in [0, 1]
    >>> for xb, yb in batches(ds.x_train, ds.y_train, 32, key=epoch_key(0, epoch=1)):
    ...     check_batch(xb, yb, ds.meta["input_shape"], ds.num_classes)

Text (``load("text")`` / ``text_corpus``) is for language modelling: token-id streams and
``lm_batches`` windows of shape ``(batch_size, seq_len)``.

The parts live by concept in :mod:`pure_prune.app.data_checks` (the :class:`Dataset` and its
validation), :mod:`pure_prune.app.data_sets` (digits, MNIST-1D, MNIST IDX files, ``.npz``),
:mod:`pure_prune.app.data_cifar` (CIFAR-10 and its restricted unpickler),
:mod:`pure_prune.app.data_text` (tokenising, the text corpus) and
:mod:`pure_prune.batching` (batches, epoch keys, language-model windows: part of the library,
since ``pure_prune.seeds`` batches with it); this module
re-exports them and keeps the registry of names (:func:`names`, :func:`load`).
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from pathlib import Path

from pure_prune.app.data_checks import MAX_CLASSES, Dataset
from pure_prune.app.data_cifar import load_cifar10
from pure_prune.app.data_sets import load_digits, load_mnist, load_mnist1d, load_npz, read_idx
from pure_prune.app.data_text import UNK, LMCorpus, decode, encode, load_text, text_corpus, tokenize
from pure_prune.batching import (
    Batch,  # noqa: F401 - kept as data.Batch
    batches,
    check_batch,
    epoch_key,
    lm_batches,
    num_batches,
    num_lm_batches,
)

__all__ = [
    "MAX_CLASSES", "UNK", "Dataset", "LMCorpus", "batches", "check_batch", "decode", "encode", "epoch_key", "lm_batches",
    "load", "names", "num_batches", "num_lm_batches", "read_idx", "text_corpus", "tokenize",
]  # fmt: skip


# ------------------------------------------------------------------------------------------- registry

_LOADERS: types.MappingProxyType[str, Callable[..., Dataset]] = types.MappingProxyType(
    {
        "cifar10": load_cifar10,
        "digits": load_digits,
        "mnist": load_mnist,
        "mnist1d": load_mnist1d,
        "npz": load_npz,
        "text": load_text,
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
