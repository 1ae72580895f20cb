"""Checkpoints of the LLaMA model (:mod:`models.llama`): the shipped pretrained model and safetensors
files, checked by SHA-256 and by every shape against the config before anything is built.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from . import structure
from .llama_forward import HEAD_DIM
from .llama_init import init, rope_tables

__all__ = ["PRETRAINED", "WEIGHTS_DIR", "expected_shapes", "load_checkpoint", "load_pretrained"]

WEIGHTS_DIR = Path(__file__).parent / "weights"

# name -> (safetensors file, config file, SHA-256 of the safetensors file), in models/weights/
# ("pydoc": 820,352 params trained by bench/train_llama.py; held-out test perplexity 3.20, 1.68 bits/byte)
PRETRAINED: dict[str, tuple[str, str, str]] = {
    "pydoc": (
        "llama_pydoc.safetensors",
        "llama_pydoc.json",
        "1f36ae42ab651d1986a8e2a26a97b14ad8306c06cdd8379d2c71d38098bf40a7",
    ),
}


def expected_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """``{dotted param path: shape}`` of a dense model of ``config`` (:func:`init`'s keywords)."""
    cfg = _full_config(config)
    v, d, f = cfg["vocab"], cfg["dim"], cfg["ffn"]
    hq, hkv = cfg["n_heads"] * HEAD_DIM, cfg["n_kv_heads"] * HEAD_DIM
    out: dict[str, tuple[int, ...]] = {"embed.weight": (v, d), "norm.weight": (d,)}
    if not cfg["tie_weights"]:
        out["head.weight"] = (v, d)
    per = {"attn.q": (hq, d), "attn.k": (hkv, d), "attn.v": (hkv, d), "attn.o": (d, hq),
           "mlp.gate": (f, d), "mlp.up": (f, d), "mlp.down": (d, f)}  # fmt: skip
    for i in range(cfg["n_layers"]):
        out |= {f"blocks.{i}.{lin}.weight": shape for lin, shape in per.items()}
        out |= {f"blocks.{i}.attn_norm.weight": (d,), f"blocks.{i}.mlp_norm.weight": (d,)}
    return out


def _full_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` completed with :func:`init`'s defaults; ``ValueError``/``TypeError`` for an unknown
    key or a size that is not a positive int (the checks of :func:`init`)."""
    defaults = {
        p.name: p.default for p in inspect.signature(init).parameters.values() if p.kind is p.KEYWORD_ONLY
    }
    unknown = sorted(set(config) - set(defaults))
    if unknown:
        raise ValueError(f"llama config has unknown keys {unknown}; known: {sorted(defaults)}")
    cfg = defaults | dict(config)
    for key in ("vocab", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn", "context"):
        structure.check_sizes(key, cfg[key])
    return cfg


def load_checkpoint(
    weights_path: str | Path, config: Mapping[str, Any], *, sha256: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(params, state)`` from a safetensors file of a dense model of ``config``.

    Checks, before building anything: the file's SHA-256 equals ``sha256`` (``ValueError`` naming
    the file and both digests), and its tensors are exactly :func:`expected_shapes` of ``config``
    (``ValueError`` naming every missing, unexpected or mis-shaped path with both shapes). The
    state (rotary tables) is rebuilt from ``config``. Nothing is written.
    """
    from safetensors.torch import load as load_bytes

    path = Path(weights_path)
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise ValueError(f"{path}: SHA-256 is {digest}, expected {sha256} (corrupt or replaced file)")
    cfg = _full_config(config)
    flat = load_bytes(data)
    want = expected_shapes(cfg)
    problems = [f"missing {k} {want[k]}" for k in sorted(set(want) - set(flat))]
    problems += [f"unexpected {k} {tuple(flat[k].shape)}" for k in sorted(set(flat) - set(want))]
    problems += [
        f"{k} has shape {tuple(flat[k].shape)}, config needs {want[k]}"
        for k in sorted(set(want) & set(flat))
        if tuple(flat[k].shape) != want[k]
    ]
    problems += [
        f"{k} has dtype {flat[k].dtype}, expected float32"
        for k in sorted(flat)
        if flat[k].dtype != torch.float32
    ]
    if problems:
        raise ValueError(f"{path} does not fit its config {cfg}: " + "; ".join(problems))
    state = {"rope": rope_tables(HEAD_DIM, cfg["context"], cfg["rope_theta"])}
    return structure.nest(flat), state


def load_pretrained(name: str = "pydoc") -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``(params, state, info)`` of a shipped model (:data:`PRETRAINED`), SHA-256 and shapes checked
    (:func:`load_checkpoint`). ``info`` is its JSON record: ``info["model"]`` the :func:`init` config,
    plus the corpus, split, training settings and held-out perplexity written by
    ``bench/train_llama.py``."""
    if name not in PRETRAINED:
        raise ValueError(f"no shipped llama model {name!r}; shipped: {sorted(PRETRAINED)}")
    weights, record, sha = PRETRAINED[name]
    info = json.loads((WEIGHTS_DIR / record).read_text())
    params, state = load_checkpoint(WEIGHTS_DIR / weights, info["model"], sha256=sha)
    return params, state, info
