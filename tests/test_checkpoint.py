"""Tests for pure_prune.app.checkpoint: exact round trips, atomic writes, corruption, resume lookup."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import pytest
import safetensors.torch
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from pure_prune import tree
from pure_prune.app import checkpoint

_DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.bool, torch.int64]


@st.composite
def _tensors(draw) -> torch.Tensor:
    """A tensor of random dtype and shape (0-d and empty included) whose bytes are arbitrary.

    Float bit patterns cover NaN payloads, -0.0, infinities and subnormals.
    """
    dtype = draw(st.sampled_from(_DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
    n = math.prod(shape)
    if dtype == torch.bool:
        return torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=torch.bool).reshape(
            shape
        )
    size = torch.empty((), dtype=dtype).element_size()
    raw = draw(st.binary(min_size=n * size, max_size=n * size))
    if n == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).reshape(shape).clone()


_KEYS = st.text(alphabet="abcxyz_019", max_size=4)
_TREES = st.recursive(
    st.none() | _tensors(),
    lambda children: (
        st.dictionaries(_KEYS, children, max_size=3)
        | st.lists(children, max_size=3)
        | st.lists(children, max_size=3).map(tuple)
    ),
    max_leaves=8,
)
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**60), 2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=6,
)


def _assert_identical(a, b, path: str = "") -> None:
    """Same container types, dict key order, None leaves, dtypes, shapes and bytes."""
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            _assert_identical(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{path}.{i}")
    elif a is not None:
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)), path


_EDGE_TREE = {
    "z": {"scalar": torch.tensor(1.5, dtype=torch.bfloat16), "empty": torch.empty(0, 3, dtype=torch.int64)},
    "a": [
        None,
        torch.tensor([True, False]),
        (torch.tensor([float("nan"), -0.0, float("inf")], dtype=torch.float64),),
    ],
    "": None,
}


@settings(max_examples=30, deadline=None)
@example(trees={"p": _EDGE_TREE, "q": {}, "r": None, "s": torch.zeros(())}, meta={"lr": 0.1, "tags": ["a"]})
@given(
    trees=st.dictionaries(st.text(alphabet="abpq_", min_size=1, max_size=4), _TREES, max_size=3), meta=_JSON
)
def test_round_trip_is_bit_exact(trees, meta):
    metadata = {"user": meta}
    with tempfile.TemporaryDirectory() as d:
        path = checkpoint.save(Path(d) / "ck.safetensors", trees, metadata)
        loaded, loaded_meta = checkpoint.load(path)
    assert list(loaded) == list(trees)
    for name in trees:
        _assert_identical(loaded[name], tree.canonical(trees[name]), name)
    assert loaded_meta == metadata


def _example_trees() -> dict:
    params = {"fc": {"weight": torch.randn(3, 2), "bias": torch.zeros(3)}, "bn": {"n": torch.tensor(4)}}
    masks = {"fc": {"weight": torch.tensor([[True, False]] * 3), "bias": None}, "bn": {"n": None}}
    return {"params": params, "masks": masks, "opt": (torch.ones(()), [None, torch.arange(2)])}


def test_file_layout(tmp_path):
    trees = _example_trees()
    path = checkpoint.save(tmp_path / "a.safetensors", trees, {"step": 7, "cfg": {"lr": 0.1}})
    assert path == tmp_path / "a.safetensors"
    with safe_open(path, framework="pt") as f:
        keys = sorted(f.keys())
        header = f.metadata()
        assert f.get_tensor("masks/fc.weight").dtype == torch.bool
    assert keys == [
        "masks/fc.weight",
        "opt/0",
        "opt/1.1",
        "params/bn.n",
        "params/fc.bias",
        "params/fc.weight",
    ]
    payload = json.loads(header["pure_prune"])
    assert payload["format"] == checkpoint.FORMAT
    assert payload["metadata"] == {"step": 7, "cfg": {"lr": 0.1}}
    assert payload["trees"]["masks"] == {
        "dict": {
            "bn": {"dict": {"n": None}},
            "fc": {"dict": {"bias": None, "weight": {"tensor": "masks/fc.weight"}}},
        }
    }
    assert payload["trees"]["opt"] == {
        "tuple": [{"tensor": "opt/0"}, {"list": [None, {"tensor": "opt/1.1"}]}]
    }
    assert len(header["pure_prune.sha256"]) == 64


def test_round_trip_example_and_directory_path(tmp_path):
    trees = _example_trees()
    trees["params"]["fc"]["weight"].requires_grad_(True)
    path = checkpoint.save(tmp_path, trees)  # an existing directory: <dir>/checkpoint.safetensors
    assert path == tmp_path / checkpoint.DEFAULT_NAME
    loaded, metadata = checkpoint.load(tmp_path)
    assert metadata == {}
    assert list(loaded["params"]) == ["bn", "fc"] and list(loaded["params"]["fc"]) == ["bias", "weight"]
    assert loaded["masks"]["fc"]["bias"] is None
    assert torch.equal(loaded["masks"]["fc"]["weight"], trees["masks"]["fc"]["weight"])
    assert loaded["params"]["bn"]["n"].shape == () and loaded["params"]["bn"]["n"].dtype == torch.int64
    assert not loaded["params"]["fc"]["weight"].requires_grad
    assert torch.equal(loaded["params"]["fc"]["weight"], trees["params"]["fc"]["weight"].detach())
    assert isinstance(loaded["opt"], tuple) and isinstance(loaded["opt"][1], list)

    nested = checkpoint.save(tmp_path / "run" / "sub" / "x.safetensors", {"t": torch.ones(2)})
    assert checkpoint.load(nested)[0]["t"].tolist() == [1.0, 1.0]  # parents created


def test_save_shares_no_memory_with_inputs(tmp_path):
    w = torch.randn(4)
    trees = {"a": {"w": w, "view": w[1:3]}, "b": w.reshape(2, 2).t()}  # views and non-contiguous
    loaded, _ = checkpoint.load(checkpoint.save(tmp_path / "v.safetensors", trees))
    assert torch.equal(loaded["a"]["view"], w[1:3]) and torch.equal(loaded["b"], w.reshape(2, 2).t())


@pytest.mark.parametrize(
    "trees, metadata, error, message",
    [
        ({"p": {"w": 1.5}}, {}, TypeError, r"tree 'p' leaf 'w' is float \(1.5\)"),
        ({"p": {1: torch.ones(1)}}, {}, TypeError, r"tree 'p' leaf '' has key 1 of type int"),
        ({"p": {"a.b": torch.ones(1)}}, {}, ValueError, r"key 'a.b'; dict keys must not contain '.'"),
        (
            {"p": {"z": torch.ones(1, dtype=torch.complex64)}},
            {},
            TypeError,
            r"leaf 'z' has dtype torch.complex64",
        ),
        (
            {"p": torch.empty(2, device="meta")},
            {},
            TypeError,
            r"tree 'p' leaf '' is a torch.strided tensor on meta",
        ),
        ({"p": torch.ones(2).to_sparse()}, {}, TypeError, r"tree 'p' leaf '' is a torch.sparse_coo tensor"),
        ({"a/b": torch.ones(1)}, {}, ValueError, r"tree name 'a/b' must be a non-empty str without '/'"),
        ({"": torch.ones(1)}, {}, ValueError, r"tree name '' must be"),
        ({"p": torch.ones(1)}, {"loss": float("nan")}, ValueError, r"metadata\['loss'\] is nan"),
        ({"p": torch.ones(1)}, {"ids": {1, 2}}, TypeError, r"metadata\['ids'\] is set"),
        ({"p": torch.ones(1)}, {"cfg": {3: "x"}}, TypeError, r"metadata\['cfg'\] has key 3 of type int"),
        ({"p": torch.ones(1)}, ["not", "a", "dict"], TypeError, r"metadata must be a dict, got list"),
        ([torch.ones(1)], {}, TypeError, r"trees must be a dict of name -> tree, got list"),
    ],
)
def test_save_rejects_bad_input_before_writing(tmp_path, trees, metadata, error, message):
    path = tmp_path / "ck.safetensors"
    checkpoint.save(path, {"old": torch.arange(3)}, {"v": 1})
    before = path.read_bytes()
    with pytest.raises(error, match=message):
        checkpoint.save(path, trees, metadata)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ck.safetensors"]


def test_namedtuple_leaf_rejected(tmp_path):
    from collections import namedtuple

    pair = namedtuple("Pair", "a b")
    with pytest.raises(TypeError, match=r"tree 'opt' leaf '' is Pair"):
        checkpoint.save(tmp_path / "n.safetensors", {"opt": pair(torch.ones(1), None)})


# --------------------------------------------------------------------------- atomicity


class _HalfWriter:
    """A file object whose ``write`` writes half the bytes and then fails as a full disk would."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        self._f.write(data[: len(data) // 2])
        self._f.flush()
        raise OSError(28, "No space left on device")

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def _fail_half_write(monkeypatch):
    real = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, mode: _HalfWriter(real(fd, mode)))
    return OSError


def _fail_fsync(monkeypatch):
    def boom(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", boom)
    return OSError


def _fail_replace(monkeypatch):
    def boom(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", boom)
    return PermissionError


def _interrupt_write(monkeypatch):
    real = os.fdopen

    class Interrupted(_HalfWriter):
        def write(self, data):
            self._f.write(data[:10])
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: Interrupted(real(fd, mode)))
    return KeyboardInterrupt


_FAILURES = [_fail_half_write, _fail_fsync, _fail_replace, _interrupt_write]


@pytest.mark.parametrize("fail", _FAILURES, ids=lambda f: f.__name__)
def test_failed_save_leaves_old_file_and_no_temp(tmp_path, monkeypatch, fail):
    path = tmp_path / "ck.safetensors"
    checkpoint.save(path, {"params": {"w": torch.arange(4.0)}}, {"step": 1})
    before = path.read_bytes()
    with monkeypatch.context() as mp:
        error = fail(mp)
        with pytest.raises(error):
            checkpoint.save(path, {"params": {"w": torch.randn(1000)}}, {"step": 2})
    assert os.listdir(tmp_path) == ["ck.safetensors"]
    assert path.read_bytes() == before
    trees, metadata = checkpoint.load(path)
    assert metadata == {"step": 1} and torch.equal(trees["params"]["w"], torch.arange(4.0))


@pytest.mark.parametrize("fail", _FAILURES, ids=lambda f: f.__name__)
def test_failed_first_save_leaves_nothing(tmp_path, monkeypatch, fail):
    with monkeypatch.context() as mp:
        error = fail(mp)
        with pytest.raises(error):
            checkpoint.save(tmp_path / "new.safetensors", {"t": torch.ones(3)})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("fail", _FAILURES, ids=lambda f: f.__name__)
def test_failed_json_save_keeps_old_json(tmp_path, monkeypatch, fail):
    path = checkpoint.save_json_atomic(tmp_path / "state.json", {"epoch": 1})
    with monkeypatch.context() as mp:
        error = fail(mp)
        with pytest.raises(error):
            checkpoint.save_json_atomic(path, {"epoch": 2, "pad": "x" * 1000})
    assert os.listdir(tmp_path) == ["state.json"]
    assert json.loads(path.read_text()) == {"epoch": 1}


def test_save_replaces_and_is_readable(tmp_path):
    path = tmp_path / "ck.safetensors"
    checkpoint.save(path, {"t": torch.zeros(2)}, {"step": 1})
    checkpoint.save(path, {"t": torch.ones(2)}, {"step": 2})
    trees, metadata = checkpoint.load(path)
    assert metadata == {"step": 2} and trees["t"].tolist() == [1.0, 1.0]
    assert os.listdir(tmp_path) == ["ck.safetensors"]
    assert os.stat(path).st_mode & 0o777 == 0o644


# --------------------------------------------------------------------------- corruption


@pytest.fixture
def small_checkpoint(tmp_path) -> Path:
    trees = {
        "params": {"w": torch.tensor([[1.0, -2.0]]), "b": None},
        "masks": {"w": torch.tensor([[True, False]])},
    }
    return checkpoint.save(tmp_path / "small.safetensors", trees, {"step": 3, "note": "ok"})


def test_truncated_file_rejected(small_checkpoint):
    data = small_checkpoint.read_bytes()
    for n in [0, 3, 8, 20, len(data) // 2, len(data) - 1]:
        small_checkpoint.write_bytes(data[:n])
        with pytest.raises(checkpoint.CorruptCheckpointError, match="small.safetensors"):
            checkpoint.load(small_checkpoint)


def test_every_flipped_byte_is_rejected(small_checkpoint):
    data = small_checkpoint.read_bytes()
    for i in range(len(data)):
        damaged = bytearray(data)
        damaged[i] ^= 0xFF
        small_checkpoint.write_bytes(bytes(damaged))
        with pytest.raises(
            checkpoint.CorruptCheckpointError, match="small.safetensors.*corrupt or incomplete"
        ):
            checkpoint.load(small_checkpoint)


def test_plausible_header_edits_are_rejected(small_checkpoint):
    """Edits that keep the header valid JSON are caught by the SHA-256 over header and data."""
    data = small_checkpoint.read_bytes()
    for old, new in [(b'\\"step\\": 3', b'\\"step\\": 4'), (b'"dtype":"F32"', b'"dtype":"I32"')]:
        assert data.count(old) == 1, old
        small_checkpoint.write_bytes(data.replace(old, new))
        with pytest.raises(checkpoint.CorruptCheckpointError, match="SHA-256 mismatch"):
            checkpoint.load(small_checkpoint)


def test_foreign_and_missing_files(tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    safetensors.torch.save_file({"w": torch.ones(2)}, foreign)
    with pytest.raises(
        checkpoint.CorruptCheckpointError, match="foreign.safetensors.*not written by pure_prune"
    ):
        checkpoint.load(foreign)
    (tmp_path / "text.safetensors").write_text("hello, not a checkpoint")
    with pytest.raises(checkpoint.CorruptCheckpointError, match="text.safetensors"):
        checkpoint.load(tmp_path / "text.safetensors")
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        checkpoint.load(tmp_path / "nope.safetensors")


# --------------------------------------------------------------------------- save_json_atomic, latest


def test_save_json_atomic(tmp_path):
    obj = {"epoch": 3, "acc": [0.5, 0.75], "cfg": {"name": "mlp", "dims": (4, 8)}, "done": False, "x": None}
    path = checkpoint.save_json_atomic(tmp_path / "logs" / "state.json", obj)
    assert path == tmp_path / "logs" / "state.json"
    assert json.loads(path.read_text()) == {**obj, "cfg": {"name": "mlp", "dims": [4, 8]}}  # tuples -> lists
    assert path.read_text().endswith("}\n")
    with pytest.raises(ValueError, match=r"obj\['acc'\]\[1\] is inf"):
        checkpoint.save_json_atomic(path, {"acc": [0.5, float("inf")]})
    with pytest.raises(TypeError, match=r"obj\['t'\] is Tensor"):
        checkpoint.save_json_atomic(path, {"t": torch.ones(1)})
    assert json.loads(path.read_text())["epoch"] == 3


def test_latest_picks_newest_complete_checkpoint(tmp_path):
    assert checkpoint.latest(tmp_path / "missing") is None
    assert checkpoint.latest(tmp_path) is None
    for step in [2, 9, 10, 100]:
        checkpoint.save(tmp_path / f"step_{step}.safetensors", {"t": torch.tensor(step)}, {"step": step})
    assert checkpoint.latest(tmp_path) == tmp_path / "step_100.safetensors"  # 100 > 10 > 9 as numbers

    data = (tmp_path / "step_100.safetensors").read_bytes()
    (tmp_path / "step_100.safetensors").write_bytes(data[: len(data) // 2])  # killed before atomic saves
    (tmp_path / ".step_200.safetensors.k3j9.tmp").write_bytes(data[:10])  # leftover of a killed write
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.warns(UserWarning, match="skipping .*step_100.safetensors"):
        found = checkpoint.latest(tmp_path)
    assert found == tmp_path / "step_10.safetensors"
    assert checkpoint.load(found)[1] == {"step": 10}
    with pytest.warns(UserWarning):
        assert checkpoint.latest(tmp_path, pattern="*") == tmp_path / "step_10.safetensors"
    assert checkpoint.latest(tmp_path, pattern="step_9.*") == tmp_path / "step_9.safetensors"
