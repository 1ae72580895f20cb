"""Text for language modelling: tokenising, a vocabulary, and token-id streams.

* :func:`tokenize` (``"char"`` or ``"word"``), :func:`encode` / :func:`decode` against a vocabulary
  whose id 0 is :data:`UNK`;
* :func:`text_corpus`: an :class:`LMCorpus` of train/valid/test token-id streams ``(T_split,)``
  int64 (default text: Python's bundled ``pydoc_data`` topics; vocabulary from train only);
* :func:`load_text`: the corpus as a :class:`~pure_prune.app.data_checks.Dataset` of next-token
  pairs (``load("text")``).

Windows of a stream for training come from :func:`pure_prune.batching.lm_batches`.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

import torch

from pure_prune.app.data_checks import Dataset, check_labels, check_positive_int, make_dataset

__all__ = ["UNK", "LMCorpus", "decode", "encode", "load_text", "text_corpus", "tokenize"]

UNK = "<unk>"


class LMCorpus(NamedTuple):
    """Token-id streams ``(T_split,)`` int64 for language modelling; ``vocab[i]`` is token ``i``,
    ``vocab[0] == "<unk>"``; ``level`` is ``"char"`` or ``"word"``."""

    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    vocab: tuple[str, ...]
    level: str


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
    check_labels(ids, len(vocab), "ids")
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
    min_count = check_positive_int(default_min if min_count is None else min_count, "min_count")
    max_vocab = default_max if max_vocab is None else max_vocab
    if max_vocab is not None and (check_positive_int(max_vocab, "max_vocab") < 2):
        raise ValueError(f"max_vocab must be at least 2 (<unk> and one token), got {max_vocab}")
    n = len(tokens)
    n_train, n_valid = n * 9 // 10, n // 20
    if n_valid == 0 or n - n_train - n_valid == 0:
        raise ValueError(f"text has {n} {level} tokens; need at least 20 for a 90/5/5 split")
    vocab = _build_vocab(tokens[:n_train], max_vocab, min_count)
    parts = (tokens[:n_train], tokens[n_train : n_train + n_valid], tokens[n_train + n_valid :])
    return LMCorpus(*(encode(p, vocab) for p in parts), vocab=vocab, level=level)


def load_text(
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
    return make_dataset("text", splits, len(c.vocab), meta)
