"""Tests for pure_prune.app.data: offline datasets, file formats, the restricted unpickler, batching."""

from __future__ import annotations

import codecs
import gzip
import os
import pickle
import random
import re
import struct
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pure_prune import batching, rng
from pure_prune.app import data

# ------------------------------------------------------------------------------------------ helpers


def write_idx(path, arr: np.ndarray, code: int) -> None:
    """Write ``arr`` in IDX format (written here independently of ``read_idx``)."""
    big = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = header + arr.astype(big).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)


def write_mnist(root, n_train=6, n_test=3, hw=(4, 5), gz=("t10k-images-idx3-ubyte",)):
    """Synthetic MNIST-format files in ``root``; returns the arrays written."""
    g = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": g.integers(0, 256, (n_train, *hw), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": g.integers(0, 256, (n_test, *hw), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test, dtype=np.uint8) * 3) % 10,
    }
    for stem, arr in arrays.items():
        write_idx(root / (stem + ".gz" if stem in gz else stem), arr, 0x08)
    return arrays


def write_cifar(base, n=4, n_test=3, protocol=4, bytes_keys=True):
    """Synthetic CIFAR-10 python batches (the real dict layout) in ``base``; returns (data, labels)."""
    base.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(1)
    out = {}
    for i, name in enumerate([*(f"data_batch_{j}" for j in range(1, 6)), "test_batch"]):
        m = n_test if name == "test_batch" else n
        d = g.integers(0, 256, (m, 3072), dtype=np.uint8)
        labels = [(i + k) % 10 for k in range(m)]
        batch = {
            "batch_label": f"batch {i}",
            "labels": labels,
            "data": d,
            "filenames": [f"f{k}.png" for k in range(m)],
        }
        if bytes_keys:
            batch = {k.encode(): v for k, v in batch.items()}
        with open(base / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
        out[name] = (d, labels)
    return out


class Evil:
    """Pickles as ``os.system(command)``: unpickled by a plain ``pickle.load`` it would run."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


@pytest.fixture(scope="module")
def mnist1d():
    return data.load("mnist1d")


# --------------------------------------------------------------------------------- registry and load


def test_names_and_unknown_name():
    assert data.names() == ("cifar10", "digits", "mnist", "mnist1d", "npz", "text")
    with pytest.raises(ValueError, match=r"unknown dataset 'imagenet'; known: \['cifar10', 'digits'"):
        data.load("imagenet")


def test_load_option_and_root_errors(tmp_path):
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['flatten'\]"):
        data.load("digits", flatten=True)
    with pytest.raises(ValueError, match="reads no files; root must be None"):
        data.load("digits", root=tmp_path)
    with pytest.raises(ValueError, match="pass root="):
        data.load("mnist")


# --------------------------------------------------------------------------------------------- digits


def test_digits_shapes_values_and_split(digits):
    from sklearn.datasets import load_digits

    assert digits.name == "digits" and digits.num_classes == 10
    assert digits.x_train.shape == (1437, 64) and digits.x_test.shape == (360, 64)
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    assert float(digits.x_train.min()) == 0.0 and float(digits.x_train.max()) == 1.0
    # the documented split, reproduced by hand
    perm = torch.randperm(1797, generator=rng.generator(0)).numpy()
    b = load_digits()
    np.testing.assert_array_equal(digits.x_test[5].numpy(), (b.data[perm[5]] / 16).astype(np.float32))
    np.testing.assert_array_equal(digits.y_train.numpy(), b.target[perm[360:]])
    assert digits.meta["input_shape"] == (64,) and digits.meta["shapes"]["x_test"] == (360, 64)
    assert "randperm(1797" in digits.meta["split"]


def test_digits_identical_across_loads_and_options(digits):
    again = data.load("digits")
    for a, b in zip(digits[:4], again[:4]):
        assert torch.equal(a, b)
    small = data.load("digits", test_size=100, key=3)
    assert small.x_test.shape == (100, 64) and not torch.equal(small.y_train[:100], digits.y_train[:100])
    with pytest.raises(ValueError, match="test_size must be an int in"):
        data.load("digits", test_size=1797)


def test_bundled_digits_equal_sklearns_load_digits_without_importing_it(monkeypatch):
    from sklearn.datasets import load_digits

    from pure_prune.app import data_sets

    expected = load_digits()
    pixels, labels = data_sets.bundled_digits()
    np.testing.assert_array_equal(pixels, expected.data)
    np.testing.assert_array_equal(labels, expected.target)
    assert pixels.dtype == np.float64 and labels.dtype == np.int64
    # where the bundled file is not found, the same arrays come from sklearn's loader
    monkeypatch.setattr(data_sets.importlib.util, "find_spec", lambda name: None)
    fallback = data_sets.bundled_digits()
    np.testing.assert_array_equal(fallback[0], expected.data)
    np.testing.assert_array_equal(fallback[1], expected.target)
    # a fresh process loads digits without importing sklearn (its import costs about a second)
    code = "import sys; from pure_prune.app import data; data.load('digits'); print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# -------------------------------------------------------------------------------------------- mnist1d


def test_mnist1d_shapes_and_repeatable(mnist1d):
    assert mnist1d.x_train.shape == (4000, 40) and mnist1d.x_test.shape == (1000, 40)
    assert mnist1d.y_train.shape == (4000,) and mnist1d.num_classes == 10
    assert mnist1d.x_train.dtype == torch.float32 and mnist1d.y_test.dtype == torch.int64
    assert set(mnist1d.y_train.tolist()) == set(range(10))
    np_state, py_state = np.random.get_state(), random.getstate()
    again = data.load("mnist1d")
    # the generator reseeds numpy's and Python's global RNGs; load() restores them
    assert random.getstate() == py_state
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]
    for a, b in zip(mnist1d[:4], again[:4]):
        assert torch.equal(a, b)


def test_mnist1d_matches_generator_defaults(mnist1d):
    from mnist1d.data import get_dataset_args, make_dataset

    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        ref = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    for i in (0, 1234, 3999):
        np.testing.assert_array_equal(mnist1d.x_train[i].numpy(), ref["x"][i].astype(np.float32))
    np.testing.assert_array_equal(mnist1d.x_test[-1].numpy(), ref["x_test"][-1].astype(np.float32))
    np.testing.assert_array_equal(mnist1d.y_train.numpy(), ref["y"])
    np.testing.assert_array_equal(mnist1d.y_test.numpy(), ref["y_test"])


# ----------------------------------------------------------------------------------------------- text


def test_tokenize_by_hand():
    assert data.tokenize("Hello, World_x 42!\nÉté", "word") == ["hello", "world", "x", "42", "été"]
    assert data.tokenize("ab c", "char") == ["a", "b", " ", "c"]
    with pytest.raises(ValueError, match="level must be 'char' or 'word', got 'byte'"):
        data.tokenize("ab", "byte")


def test_word_corpus_vocab_split_and_unk_by_hand():
    text = "x y x z x Y. " * 4  # 24 word tokens: train = first 21, valid = 1, test = 2
    c = data.text_corpus("word", text=text)
    # train counts: x 11, y 7, z 3 -> most frequent first after <unk>
    assert c.vocab == ("<unk>", "x", "y", "z") and c.level == "word"
    assert c.train[:6].tolist() == [1, 2, 1, 3, 1, 2] and len(c.train) == 21
    assert c.valid.tolist() == [3] and c.test.tolist() == [1, 2]
    capped = data.text_corpus("word", text=text, max_vocab=3)
    assert capped.vocab == ("<unk>", "x", "y") and capped.valid.tolist() == [0]
    rare = data.text_corpus("word", text=text, min_count=4)
    assert rare.vocab == ("<unk>", "x", "y")
    assert data.decode(c.train[:6], c.vocab, "word") == "x y x z x y"
    assert data.decode(capped.valid, capped.vocab, "word") == "<unk>"


def test_char_corpus_unseen_char_is_unk():
    text = "abab" * 9 + "abcd"  # 40 chars; 'c' and 'd' occur only in the last 5%
    c = data.text_corpus("char", text=text)
    assert c.vocab == ("<unk>", "a", "b")
    assert c.test.tolist() == [1, 2, 0, 0][-len(c.test) :]


def test_text_corpus_argument_errors():
    with pytest.raises(ValueError, match="need at least 20"):
        data.text_corpus("word", text="only five words in here")
    with pytest.raises(ValueError, match="max_vocab must be at least 2"):
        data.text_corpus("char", text="a" * 40, max_vocab=1)
    with pytest.raises(ValueError, match="min_count must be a positive int, got 0"):
        data.text_corpus("char", text="a" * 40, min_count=0)
    with pytest.raises(TypeError, match="text must be a str"):
        data.text_corpus("char", text=b"abc" * 10)


def test_encode_decode_round_trip_and_errors():
    vocab = ("<unk>", "a", "b")
    ids = data.encode(list("abzb"), vocab)
    assert ids.dtype == torch.int64 and ids.tolist() == [1, 2, 0, 2]
    assert data.decode(ids, vocab, "char") == "ab<unk>b"
    with pytest.raises(ValueError, match=r"ids\[1\] = 3 is outside \[0, 3\)"):
        data.decode(torch.tensor([1, 3]), vocab, "char")
    with pytest.raises(ValueError, match="level must be"):
        data.decode(ids, vocab, "byte")


def test_pydoc_char_corpus_round_trip_and_fixed_split():
    from pydoc_data.topics import topics

    text = "".join(topics[k] for k in sorted(topics))
    c = data.text_corpus("char")
    n = len(text)
    assert (len(c.train), len(c.valid), len(c.test)) == (n * 9 // 10, n // 20, n - n * 9 // 10 - n // 20)
    assert data.decode(c.train, c.vocab, "char") == text[: n * 9 // 10]
    assert set(c.vocab[1:]) == set(text[: n * 9 // 10])


def test_load_text_word_level_next_token_targets():
    ds = data.load("text", level="word")
    again = data.load("text", level="word")
    assert all(torch.equal(a, b) for a, b in zip(ds[:4], again[:4]))
    vocab = ds.meta["vocab"]
    assert ds.num_classes == len(vocab) <= 10000 and vocab[0] == "<unk>"
    assert ds.x_train.dtype == torch.int64 and ds.x_train.ndim == 1
    assert torch.equal(ds.y_train[:-1], ds.x_train[1:]) and torch.equal(ds.y_test[:-1], ds.x_test[1:])
    words = data.tokenize(data.decode(ds.x_train[:50], vocab, "word"), "word")
    assert torch.equal(data.encode(words, vocab), ds.x_train[:50])  # in-vocabulary round trip
    valid = data.load("text", level="word", eval_split="valid")
    assert len(valid.x_test) == ds.meta["tokens"]["valid"] - 1
    with pytest.raises(ValueError, match="eval_split must be 'test' or 'valid'"):
        data.load("text", eval_split="train")


def test_lm_batches_by_hand():
    ids = torch.arange(23)
    assert data.num_lm_batches(23, 2, 5) == 2
    got = list(data.lm_batches(ids, 2, 5))
    assert len(got) == 2
    (x0, y0), (x1, y1) = got
    assert x0.tolist() == [[0, 1, 2, 3, 4], [11, 12, 13, 14, 15]]
    assert y0.tolist() == [[1, 2, 3, 4, 5], [12, 13, 14, 15, 16]]
    assert x1.tolist() == [[5, 6, 7, 8, 9], [16, 17, 18, 19, 20]]
    assert y1.tolist() == [[6, 7, 8, 9, 10], [17, 18, 19, 20, 21]]
    with pytest.raises(ValueError, match="ids has 10 tokens"):
        data.lm_batches(torch.arange(10), 2, 5)
    with pytest.raises(ValueError, match="1-D int64"):
        data.lm_batches(torch.arange(30.0), 2, 5)
    with pytest.raises(ValueError, match="seq_len must be a positive int"):
        data.lm_batches(ids, 2, 0)


# ------------------------------------------------------------------------------------------------ IDX


@pytest.mark.parametrize(
    ("code", "arr"),
    [
        (0x08, np.arange(24, dtype=np.uint8).reshape(2, 3, 4)),
        (0x0B, np.array([-300, 5, 1000], dtype=np.int16)),
        (0x0D, np.array([[1.5, -2.25], [3e5, 0.0]], dtype=np.float32)),
    ],
)
def test_read_idx_round_trip(tmp_path, code, arr):
    for name in ("a.idx", "a.idx.gz"):
        write_idx(tmp_path / name, arr, code)
        got = data.read_idx(tmp_path / name)
        assert got.dtype.isnative and got.dtype.kind == arr.dtype.kind and got.shape == arr.shape
        np.testing.assert_array_equal(got, arr)


def test_read_idx_errors_name_the_file(tmp_path):
    p = tmp_path / "x.idx"
    write_idx(p, np.zeros((3, 4), np.uint8), 0x08)
    raw = p.read_bytes()
    p.write_bytes(raw[:-1])
    with pytest.raises(
        ValueError, match=re.escape(f"{p}: truncated: dims (3, 4) need 12 data bytes, found 11")
    ):
        data.read_idx(p)
    p.write_bytes(raw + b"\0")
    with pytest.raises(ValueError, match=re.escape(f"{p}: has trailing bytes")):
        data.read_idx(p)
    p.write_bytes(b"\x01" + raw[1:])
    with pytest.raises(ValueError, match=re.escape(f"{p}: bad IDX magic '01000802'")):
        data.read_idx(p)
    p.write_bytes(raw[:2] + b"\x07" + raw[3:])
    with pytest.raises(ValueError, match=re.escape(f"{p}: unknown IDX dtype code 0x07")):
        data.read_idx(p)
    p.write_bytes(raw[:6])
    with pytest.raises(ValueError, match="declares 2 dims but the file has 6 bytes"):
        data.read_idx(p)
    gz = tmp_path / "x.idx.gz"
    gz.write_bytes(gzip.compress(raw)[:-6])
    with pytest.raises(ValueError, match=re.escape(f"{gz}: cannot read/decompress")):
        data.read_idx(gz)
    with pytest.raises(FileNotFoundError, match="missing.idx does not exist"):
        data.read_idx(tmp_path / "missing.idx")


def test_load_mnist_from_idx_files(tmp_path):
    arrays = write_mnist(tmp_path)
    ds = data.load("mnist", root=tmp_path)
    assert ds.x_train.shape == (6, 1, 4, 5) and ds.x_test.shape == (3, 1, 4, 5) and ds.num_classes == 10
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert float(ds.x_test[2, 0, 3, 4]) == pytest.approx(arrays["t10k-images-idx3-ubyte"][2, 3, 4] / 255)
    assert ds.y_test.tolist() == [0, 3, 6]
    flat = data.load("mnist", root=tmp_path, flatten=True)
    assert flat.x_train.shape == (6, 20) and torch.equal(flat.x_train[1], ds.x_train[1].flatten())


def test_load_mnist_errors(tmp_path):
    write_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([0, 1, 2, 10, 4, 5], np.uint8), 0x08)
    with pytest.raises(ValueError, match=re.escape("y_train[3] = 10 is outside [0, 10)")):
        data.load("mnist", root=tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(5, np.uint8), 0x08)
    with pytest.raises(
        ValueError, match="train-images-idx3-ubyte has 6 images but .*train-labels-idx1-ubyte has 5"
    ):
        data.load("mnist", root=tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros((6, 1), np.uint8), 0x08)
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte: expected 1-D uint8, got 2-D"):
        data.load("mnist", root=tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="train-labels-idx1-ubyte.gz'] exists"):
        data.load("mnist", root=tmp_path)


# ------------------------------------------------------------------------------------- CIFAR pickles


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_load_cifar10_batches(tmp_path, protocol):
    written = write_cifar(tmp_path / "cifar-10-batches-py", protocol=protocol)
    ds = data.load("cifar10", root=tmp_path)  # finds the cifar-10-batches-py sub-folder
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    assert ds.x_train.dtype == torch.float32 and ds.num_classes == 10
    d2 = written["data_batch_2"][0]
    # row 1 of batch 2 is train sample 5; channel c, pixel (h, w) is column c*1024 + h*32 + w
    assert float(ds.x_train[5, 2, 7, 9]) == pytest.approx(d2[1, 2 * 1024 + 7 * 32 + 9] / 255)
    labels = [lab for k in range(1, 6) for lab in written[f"data_batch_{k}"][1]]
    assert ds.y_train.tolist() == labels and ds.y_test.tolist() == written["test_batch"][1]


def test_load_cifar10_str_keys_and_standardize(tmp_path):
    write_cifar(tmp_path, protocol=4, bytes_keys=False)
    plain = data.load("cifar10", root=tmp_path)
    std = data.load("cifar10", root=tmp_path, standardize=True)
    mean = plain.x_train[:, 1].mean()
    sd = ((plain.x_train[:, 1] - mean) ** 2).mean().sqrt()
    assert std.meta["mean"][1] == pytest.approx(float(mean)) and std.meta["std"][1] == pytest.approx(
        float(sd)
    )
    torch.testing.assert_close(std.x_test[:, 1], (plain.x_test[:, 1] - mean) / sd)
    torch.testing.assert_close(std.x_train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)


@pytest.mark.parametrize("where", ["top", "nested"])
def test_cifar_refuses_malicious_global_without_running_it(tmp_path, where):
    write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    evil = Evil(f"touch {marker}")
    payload = evil if where == "top" else {b"data": np.zeros((1, 3072), np.uint8), b"labels": [evil]}
    with open(tmp_path / "data_batch_3", "wb") as f:
        pickle.dump(payload, f)
    with pytest.raises(pickle.UnpicklingError, match=r"data_batch_3: refusing global (posix|os|nt)\.system"):
        data.load("cifar10", root=tmp_path)
    assert not marker.exists()


def test_cifar_refuses_object_dtype_and_codecs_tricks(tmp_path):
    write_cifar(tmp_path)
    with open(tmp_path / "data_batch_1", "wb") as f:
        pickle.dump({b"data": np.array([1, "a"], dtype=object), b"labels": [0, 1]}, f)
    with pytest.raises(pickle.UnpicklingError, match="data_batch_1: refusing object dtype"):
        data.load("cifar10", root=tmp_path)

    class Rot13:
        def __reduce__(self):
            return (codecs.encode, ("abc", "rot_13"))

    with open(tmp_path / "data_batch_1", "wb") as f:
        pickle.dump({b"data": Rot13(), b"labels": []}, f, protocol=2)
    with pytest.raises(
        pickle.UnpicklingError, match=r"data_batch_1: refusing _codecs\.encode\(str, 'rot_13'\)"
    ):
        data.load("cifar10", root=tmp_path)


def test_cifar_malformed_batches(tmp_path):
    write_cifar(tmp_path)
    raw = (tmp_path / "data_batch_4").read_bytes()
    (tmp_path / "data_batch_4").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="data_batch_4: not a readable CIFAR batch pickle"):
        data.load("cifar10", root=tmp_path)
    with open(tmp_path / "data_batch_4", "wb") as f:
        pickle.dump([1, 2], f)
    with pytest.raises(ValueError, match="data_batch_4: expected a dict, got list"):
        data.load("cifar10", root=tmp_path)
    with open(tmp_path / "data_batch_4", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(
        ValueError, match=r"data_batch_4: 'data' must be uint8 \(N, 3072\), got uint8 \(2, 100\)"
    ):
        data.load("cifar10", root=tmp_path)
    with open(tmp_path / "data_batch_4", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, f)
    with pytest.raises(ValueError, match="data_batch_4: 'labels' must be 2 ints"):
        data.load("cifar10", root=tmp_path)
    with open(tmp_path / "data_batch_4", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]}, f)
    with pytest.raises(ValueError, match=re.escape("y_train[13] = 12 is outside [0, 10)")):
        data.load("cifar10", root=tmp_path)
    (tmp_path / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="test_batch does not exist"):
        data.load("cifar10", root=tmp_path)


# ------------------------------------------------------------------------------------------------ npz


def npz_arrays():
    return {
        "x_train": np.arange(30, dtype=np.float64).reshape(5, 2, 3),
        "y_train": np.array([0, 1, 2, 1, 0], np.int32),
        "x_test": np.ones((2, 2, 3), np.uint8),
        "y_test": np.array([3, 0], np.int64),
    }


def test_load_npz(tmp_path):
    np.savez(tmp_path / "d.npz", **npz_arrays())
    ds = data.load("npz", root=tmp_path / "d.npz")
    assert ds.num_classes == 4 and ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.x_train.shape == (5, 2, 3) and float(ds.x_train[4, 1, 2]) == 29.0
    assert ds.y_test.tolist() == [3, 0] and ds.meta["input_shape"] == (2, 3)
    assert data.load("npz", root=tmp_path / "d.npz", num_classes=7).num_classes == 7
    with pytest.raises(ValueError, match=re.escape("y_test[0] = 3 is outside [0, 3)")):
        data.load("npz", root=tmp_path / "d.npz", num_classes=3)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"y_test": None}, ValueError, r"missing arrays \['y_test'\]"),
        ({"y_train": np.zeros(5, np.float32)}, TypeError, "y_train has dtype float32"),
        ({"x_test": np.ones((2, 2, 3), bool)}, TypeError, "x_test has dtype bool"),
        ({"y_train": np.zeros(4, np.int64)}, ValueError, r"x_train has shape \(5, 2, 3\) but y_train has shape \(4,\)"),
        ({"x_test": np.ones((2, 3, 2))}, ValueError, r"x_train rows have shape \(2, 3\) but x_test rows \(3, 2\)"),
        ({"x_test": np.array([[[0, 0, 0], [0, 0, 0]], [[0, 0, 0], [np.nan, 0, 0]]])}, ValueError,
         re.escape("x_test[1, 1, 0] = nan is not finite")),
        ({"y_train": np.array([0, 1, -1, 1, 0])}, ValueError, re.escape("y_train[2] = -1 is outside [0, MAX_CLASSES = 65536)")),
    ],
)  # fmt: skip
def test_npz_validation_errors(tmp_path, change, error, message):
    arrays = {**npz_arrays(), **change}
    np.savez(tmp_path / "d.npz", **{k: v for k, v in arrays.items() if v is not None})
    with pytest.raises(error, match=message):
        data.load("npz", root=tmp_path / "d.npz")


def test_npz_unreadable_files(tmp_path):
    np.savez(tmp_path / "obj.npz", **{**npz_arrays(), "x_train": np.array([None, 1], dtype=object)})
    with pytest.raises(ValueError, match="obj.npz: not a readable .npz without pickle"):
        data.load("npz", root=tmp_path / "obj.npz")
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(ValueError, match="one.npy: .*not an .npz archive"):
        data.load("npz", root=tmp_path / "one.npy")
    with pytest.raises(FileNotFoundError, match="nope.npz does not exist"):
        data.load("npz", root=tmp_path / "nope.npz")


# -------------------------------------------------------------------------------------------- batches


def test_num_batches_and_epoch_key_by_hand():
    assert data.num_batches(10, 3) == 3 and data.num_batches(10, 3, drop_last=False) == 4
    assert data.num_batches(9, 3, drop_last=False) == 3
    assert data.epoch_key(7, 2) == rng.fold_in(7, 2) and data.epoch_key(7, 2) != data.epoch_key(7, 3)
    with pytest.raises(ValueError, match="epoch must be a non-negative int, got -1"):
        data.epoch_key(7, -1)
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        data.num_batches(10, 0)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 60), batch_size=st.integers(1, 20), key=st.integers(0, 2**40), extra=st.booleans())
def test_batches_properties(n, batch_size, key, extra):
    if batch_size > n:
        batch_size = n
    x = (
        torch.arange(n, dtype=torch.float32).repeat_interleave(6).reshape(n, 3, 2)
        if extra
        else torch.arange(n)
    )
    y = torch.arange(n)
    got = list(data.batches(x, y, batch_size, key=key))
    assert len(got) == data.num_batches(n, batch_size)
    seen = torch.cat([yb for _, yb in got])
    assert len(seen) == len(got) * batch_size and len(set(seen.tolist())) == len(seen)  # at most once
    for xb, yb in got:
        assert xb.shape == (batch_size, *x.shape[1:]) and yb.shape == (batch_size,)
        assert torch.equal(xb.reshape(batch_size, -1)[:, 0].long(), yb)  # rows stay paired
    again = torch.cat([yb for _, yb in data.batches(x, y, batch_size, key=key)])
    assert torch.equal(seen, again)
    full = torch.cat([yb for _, yb in data.batches(x, y, batch_size, key=key, drop_last=False)])
    assert sorted(full.tolist()) == list(range(n)) and torch.equal(full[: len(seen)], seen)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 40),
    batch_size=st.integers(1, 12),
    row=st.integers(1, 5),
    gather_rows=st.integers(1, 30),
    key=st.integers(0, 2**40),
    drop_last=st.booleans(),
)
def test_batches_gathered_in_chunks_equal_indexing_each_batch(
    n, batch_size, row, gather_rows, key, drop_last
):
    """Gathering several batches at once (``GATHER_BYTES`` shrunk so that a chunk holds
    ``gather_rows`` rows' worth) yields exactly ``x[order[i*B:(i+1)*B]]`` per batch, as contiguous
    tensors, with no partial batch unless ``drop_last=False``: the bug it names is a chunk that
    runs past the last full batch or skips rows at a chunk boundary."""
    batch_size = min(batch_size, n)
    x = torch.randn(n, row)
    y = torch.arange(n)
    order = torch.randperm(n, generator=rng.generator(key))
    count = data.num_batches(n, batch_size, drop_last=drop_last)
    want = [order[i * batch_size : (i + 1) * batch_size] for i in range(count)]
    with mock.patch.object(batching, "GATHER_BYTES", gather_rows * (row * 4 + 8)):
        got = list(data.batches(x, y, batch_size, key=key, drop_last=drop_last))
    assert len(got) == len(want)
    for (xb, yb), idx in zip(got, want):
        assert torch.equal(xb, x[idx]) and torch.equal(yb, y[idx])
        assert xb.is_contiguous() and yb.is_contiguous()


def test_batches_per_gather_by_hand():
    x, y = torch.zeros(10, 3), torch.zeros(10, dtype=torch.int64)  # 12 + 8 bytes a row
    assert batching.batches_per_gather(4, x, y) == batching.GATHER_BYTES // 80
    huge = torch.zeros(2, batching.GATHER_BYTES // 4 + 1)
    assert batching.batches_per_gather(1, huge) == 1  # a batch larger than the budget: one a gather


@settings(max_examples=25, deadline=None)
@given(k1=st.integers(0, 2**40), k2=st.integers(0, 2**40))
def test_batches_different_keys_give_different_orders(k1, k2):
    if k1 == k2:
        k2 = k1 + 1
    y = torch.arange(50)
    first = torch.cat([yb for _, yb in data.batches(y, y, 10, key=k1)])
    second = torch.cat([yb for _, yb in data.batches(y, y, 10, key=k2)])
    assert not torch.equal(first, second)  # equal with probability 1/50!


def test_batches_unshuffled_and_errors():
    x, y = torch.arange(7.0), torch.arange(7)
    got = [yb.tolist() for _, yb in data.batches(x, y, 3, key=None)]
    assert got == [[0, 1, 2], [3, 4, 5]]
    assert [yb.tolist() for _, yb in data.batches(x, y, 3, key=None, drop_last=False)][-1] == [6]
    with pytest.raises(ValueError, match=r"x has shape \(7,\) but y has shape \(6,\)"):
        data.batches(x, y[:6], 3, key=0)
    with pytest.raises(ValueError, match="fewer than batch_size=8"):
        data.batches(x, y, 8, key=0)
    with pytest.raises(ValueError, match="key must be a non-negative int"):
        data.batches(x, y, 3, key=-1)
    with pytest.raises(TypeError, match="x and y must be tensors"):
        data.batches(x.numpy(), y, 3, key=0)


def test_check_batch():
    x, y = torch.zeros(4, 64), torch.tensor([0, 9, 3, 1])
    data.check_batch(x, y, (64,), 10)
    data.check_batch(
        torch.zeros(2, 5, dtype=torch.int64), torch.ones(2, 5, dtype=torch.int64), (), 3, dtype=torch.int64
    )
    with pytest.raises(ValueError, match=r"x has shape \(4, 63\); expected \(batch, \*\(64,\)\)"):
        data.check_batch(torch.zeros(4, 63), y, (64,), 10)
    with pytest.raises(TypeError, match="x has dtype torch.float64, expected torch.float32"):
        data.check_batch(x.double(), y, (64,), 10)
    with pytest.raises(ValueError, match=r"y has shape \(3,\); expected \(4,\)"):
        data.check_batch(x, y[:3], (64,), 10)
    with pytest.raises(TypeError, match="y must be int64 labels, got dtype torch.int32"):
        data.check_batch(x, y.int(), (64,), 10)
    with pytest.raises(ValueError, match=re.escape("y[1] = 9 is outside [0, 5)")):
        data.check_batch(x, y, (64,), 5)
    with pytest.raises(TypeError, match="x and y must be tensors"):
        data.check_batch(x, [0, 1, 2, 3], (64,), 10)
