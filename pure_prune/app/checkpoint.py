"""Atomic, pickle-free checkpoints of named pytrees (safetensors), atomic JSON, and resume lookup.

One checkpoint is one safetensors file. Every tensor leaf of tree ``name`` is stored under the key
``"<name>/<dotted path>"`` (``"params/layer1.0.conv1.weight"``). The safetensors header metadata
(a ``str -> str`` map) holds two entries:

* ``"pure_prune"``: a JSON string ``{"format": ..., "trees": {name: node}, "metadata": {...}}``
  where a node is ``null`` (a ``None`` leaf), ``{"tensor": key}``, ``{"dict": {key: node}}``,
  ``{"list": [node, ...]}`` or ``{"tuple": [node, ...]}``, and ``metadata`` is the user's;
* ``"pure_prune.sha256"``: the SHA-256 of that JSON string and of every tensor's key, dtype, shape
  and bytes, so a damaged header, payload or tensor is reported instead of loaded.

Files are written atomically: into a temporary file ``.<name>.<random>.tmp`` in the target's
directory, flushed and fsynced, then renamed over the target with ``os.replace`` (and the directory
fsynced). A reader sees the old file or the new one, never a half-written one; a failed write
removes its temporary file. A process killed mid-write can leave a temporary file behind, which
:func:`latest` ignores. Loading uses safetensors only: no pickle, no code execution.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from pure_prune import tree as tree_lib

__all__ = ["FORMAT", "DEFAULT_NAME", "CorruptCheckpointError", "latest", "load", "save", "save_json_atomic"]

FORMAT = "pure_prune.app.checkpoint/1"
DEFAULT_NAME = "checkpoint.safetensors"
_PAYLOAD_KEY = "pure_prune"
_DIGEST_KEY = "pure_prune.sha256"
_TMP_SUFFIX = ".tmp"
_DTYPES = frozenset(
    {
        torch.float64,
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
        torch.float8_e4m3fn,
        torch.float8_e5m2,
    }
)


class CorruptCheckpointError(ValueError):
    """A checkpoint file that is truncated, damaged or not a pure_prune checkpoint."""


def _describe(x: object) -> str:
    text = repr(x)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_json(obj: Any, where: str) -> None:
    """Raise ``TypeError``/``ValueError`` naming the first value of ``obj`` that is not plain JSON.

    Plain JSON: ``dict`` with ``str`` keys, ``list``/``tuple`` (tuples load back as lists), ``str``,
    ``int``, finite ``float``, ``bool``, ``None``.
    """
    if obj is None or isinstance(obj, (str, bool, int)):
        return
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError(f"{where} is {obj}; JSON has no NaN or infinity (store a string or None)")
        return
    if isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            _check_json(item, f"{where}[{i}]")
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has key {key!r} of type {type(key).__name__}; JSON keys are str")
            _check_json(value, f"{where}[{key!r}]")
        return
    raise TypeError(f"{where} is {type(obj).__name__} ({_describe(obj)}), which is not JSON")


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a fsynced temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "wb") as f:
            fd = -1  # the file object owns it now
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if fd != -1:
            os.close(fd)
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def save_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically; returns the path.

    ``obj`` must be plain JSON (see the module doc); ``TypeError``/``ValueError`` name the offending
    value before anything is written. Parent directories are created.
    """
    path = _check_path(path)
    _check_json(obj, "obj")
    _write_atomic(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode())
    return path


def _check_path(path: object, name: str = "path") -> Path:
    if not isinstance(path, (str, os.PathLike)) or path == "":
        raise TypeError(
            f"{name} must be a non-empty str or os.PathLike, got {type(path).__name__} {path!r:.60}"
        )
    return Path(path)


def _resolve(path: str | os.PathLike) -> Path:
    path = _check_path(path)
    return path / DEFAULT_NAME if path.is_dir() else path


def _encode(node: Any, name: str, keys: list[Any], tensors: dict[str, torch.Tensor]) -> Any:
    """The JSON node for ``node``; its tensor leaves are added to ``tensors`` as CPU copies."""
    where = f"tree {name!r} leaf {tree_lib.path_str(keys)!r}"
    if node is None:
        return None
    if isinstance(node, torch.Tensor):
        if node.layout != torch.strided or node.is_meta:
            raise TypeError(f"{where} is a {node.layout} tensor on {node.device}; only dense data is saved")
        if node.dtype not in _DTYPES:
            raise TypeError(f"{where} has dtype {node.dtype}, which safetensors cannot store")
        key = f"{name}/{tree_lib.path_str(keys)}"
        tensors[key] = node.detach().to("cpu").clone(memory_format=torch.contiguous_format)
        return {"tensor": key}
    if type(node) is dict:
        for k in node:
            if not isinstance(k, str):
                raise TypeError(f"{where} has key {k!r} of type {type(k).__name__}; dict keys must be str")
            if "." in k:
                raise ValueError(
                    f"{where} has key {k!r}; dict keys must not contain '.' (the path separator)"
                )
        return {"dict": {k: _encode(node[k], name, [*keys, k], tensors) for k in sorted(node)}}
    if type(node) in (list, tuple):
        kind = type(node).__name__
        return {kind: [_encode(v, name, [*keys, i], tensors) for i, v in enumerate(node)]}
    raise TypeError(
        f"{where} is {type(node).__name__} ({_describe(node)}); checkpoints hold dict/list/tuple "
        "trees of tensors and None"
    )


def _digest(payload: str, tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the payload JSON and each tensor's key, dtype, shape and raw bytes."""
    h = hashlib.sha256(payload.encode())
    for key in sorted(tensors):
        t = tensors[key]
        h.update(json.dumps([key, str(t.dtype), list(t.shape)]).encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def save(
    path: str | os.PathLike,
    trees: dict[str, tree_lib.Tree],
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``trees`` and ``metadata`` to one safetensors file, atomically; returns the file's path.

    ``path``: a file path, or an existing directory (the file is ``<dir>/checkpoint.safetensors``);
    parent directories are created. ``trees``: ``{name: tree}`` where a name is a non-empty ``str``
    without ``'/'`` and a tree is nested ``dict`` (``str`` keys without ``'.'``), ``list`` and
    ``tuple`` with tensor or ``None`` leaves (any shape, 0-d and empty included; float64/32/16,
    bfloat16, float8, int8-64, uint8, bool). Tensors are stored from CPU copies; ``requires_grad`` and
    the device are not kept. ``metadata``: plain JSON (see the module doc), ``{}`` when ``None``.
    Everything is checked before the file is touched; ``TypeError``/``ValueError`` name the tree,
    leaf path or metadata entry at fault.
    """
    _check_path(path)
    if type(trees) is not dict:
        raise TypeError(f"trees must be a dict of name -> tree, got {type(trees).__name__}")
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    _check_json(metadata, "metadata")
    tensors: dict[str, torch.Tensor] = {}
    nodes = {}
    for name, tree in trees.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"tree name {name!r} must be a non-empty str without '/'")
        nodes[name] = _encode(tree, name, [], tensors)
    payload = json.dumps({"format": FORMAT, "trees": nodes, "metadata": metadata}, allow_nan=False)
    header = {_PAYLOAD_KEY: payload, _DIGEST_KEY: _digest(payload, tensors)}
    target = _resolve(path)
    _write_atomic(target, safetensors_bytes(tensors, metadata=header))
    return target


def _decode(node: Any, tensors: dict[str, torch.Tensor], used: set[str]) -> Any:
    if node is None:
        return None
    if isinstance(node, dict) and len(node) == 1:
        ((kind, body),) = node.items()
        if kind == "tensor" and isinstance(body, str) and body in tensors and body not in used:
            used.add(body)
            return tensors[body]
        if kind == "dict" and isinstance(body, dict):
            return {k: _decode(body[k], tensors, used) for k in sorted(body)}
        if kind in ("list", "tuple") and isinstance(body, list):
            items = [_decode(v, tensors, used) for v in body]
            return items if kind == "list" else tuple(items)
    raise ValueError(f"bad tree node {_describe(node)}")


def load(path: str | os.PathLike) -> tuple[dict[str, tree_lib.Tree], dict[str, Any]]:
    """``(trees, metadata)`` read back from a file written by :func:`save`.

    ``path``: the file, or a directory holding ``checkpoint.safetensors``. Trees come back exactly:
    the same leaves bit for bit (CPU tensors, same dtypes and shapes), ``None`` leaves, tuples and
    lists, dicts with keys in sorted (canonical) order; tree names in the order they were saved.
    Raises ``FileNotFoundError`` for a missing file and :class:`CorruptCheckpointError` (a
    ``ValueError``) naming the file when it is truncated, damaged or not a pure_prune checkpoint.
    """
    path = _resolve(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")

    def corrupt(reason: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(f"checkpoint {str(path)!r} is corrupt or incomplete: {reason}")

    try:
        with safe_open(path, framework="pt") as f:
            header = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, ValueError, RuntimeError, OverflowError, UnicodeError) as e:
        raise corrupt(f"unreadable safetensors data ({e})") from e
    payload, digest = header.get(_PAYLOAD_KEY), header.get(_DIGEST_KEY)
    if payload is None or digest is None:
        raise corrupt(f"no {_PAYLOAD_KEY!r} metadata (not written by pure_prune.app.checkpoint.save)")
    if _digest(payload, tensors) != digest:
        raise corrupt("SHA-256 mismatch: the header or tensor data changed after it was written")
    try:
        content = json.loads(payload)
        if content.get("format") != FORMAT:
            raise ValueError(f"format {content.get('format')!r}, expected {FORMAT!r}")
        used: set[str] = set()
        trees = {name: _decode(node, tensors, used) for name, node in content["trees"].items()}
        if used != set(tensors):
            raise ValueError(f"tensors not in any tree: {sorted(set(tensors) - used)[:5]}")
        metadata = content["metadata"]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise corrupt(str(e)) from e
    return trees, metadata


def _natural_key(path: Path) -> list[Any]:
    """``step_9`` < ``step_10``: digit runs compare as numbers (text and digits alternate)."""
    return [int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", path.name))]


def latest(directory: str | os.PathLike, pattern: str = "*.safetensors") -> Path | None:
    """The newest complete checkpoint in ``directory`` matching the glob ``pattern``, or ``None``.

    Newest = greatest file name in natural order (digit runs compared as numbers, so name
    checkpoints by step: ``step_9`` < ``step_10``). Complete = :func:`load` succeeds; temporary files
    of interrupted writes are skipped, and corrupt files are skipped with a ``UserWarning``. A missing
    directory gives ``None`` (a run that has not saved yet).
    """
    directory = _check_path(directory, "directory")
    if not isinstance(pattern, str) or not pattern:
        raise TypeError(f"pattern must be a non-empty str glob, got {pattern!r:.60}")
    if not directory.is_dir():
        return None
    candidates = [
        p
        for p in directory.glob(pattern)
        if p.is_file() and not (p.name.startswith(".") and p.name.endswith(_TMP_SUFFIX))
    ]
    for candidate in sorted(candidates, key=_natural_key, reverse=True):
        try:
            load(candidate)
        except CorruptCheckpointError as e:
            warnings.warn(f"latest: skipping {e}", UserWarning, stacklevel=2)
            continue
        return candidate
    return None
