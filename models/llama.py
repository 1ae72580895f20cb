"""A small LLaMA-style decoder-only language model (Touvron et al. 2023, "LLaMA").

Token ids ``(N, T)`` int64 -> embedding ``(N, T, D)`` -> ``L`` pre-norm residual blocks -> RMSNorm ->
head -> logits ``(N, T, V)``. Each block is

    h = h + attn.o(Attention(RoPE(attn.q(x)), RoPE(attn.k(x)), attn.v(x)))     x = RMSNorm(h) * attn_norm
    h = h + mlp.down(silu(mlp.gate(y)) * mlp.up(y))                             y = RMSNorm(h) * mlp_norm

with RMSNorm (Zhang & Sennrich 2019, ``x / sqrt(mean(x²) + 1e-5)``), rotary position embeddings
(Su et al. 2021, the "rotate half" pairing of dimension ``i`` with ``i + hd/2``), the SwiGLU MLP
(Shazeer 2020) and grouped-query attention (Ainslie et al. 2023: ``H`` query heads share ``KV``
key/value heads, query head ``h`` reads KV head ``h // (H / KV)``), causal through
``scaled_dot_product_attention(is_causal=True)``. No biases anywhere. With ``tie_weights=True`` the
head reuses ``embed.weight``.

Params (canonical nested dict; ``F`` = MLP width; ``hd`` = :data:`HEAD_DIM` = 32, fixed for the
model family so that ``apply`` and ``groups`` read the number of heads of every block from its
param shapes, as ``docs/conventions.md`` asks, also after heads were removed)::

    embed.weight                 (V, D)
    blocks.<i>.attn_norm.weight  (D,)
    blocks.<i>.attn.q.weight     (H*hd, D)      rows: query head h owns rows [h*hd, (h+1)*hd)
    blocks.<i>.attn.k.weight     (KV*hd, D)
    blocks.<i>.attn.v.weight     (KV*hd, D)
    blocks.<i>.attn.o.weight     (D, H*hd)
    blocks.<i>.mlp_norm.weight   (D,)
    blocks.<i>.mlp.gate.weight   (F, D)
    blocks.<i>.mlp.up.weight     (F, D)
    blocks.<i>.mlp.down.weight   (D, F)
    norm.weight                  (D,)
    head.weight                  (V, D)         untied only

State: ``{"rope": {"cos": (C, hd/2), "sin": (C, hd/2)}}``, the rotary tables of the ``C`` positions
of the context (buffers, never trained, rebuilt from the config by the loader). They fix the
context: a sequence longer than ``C`` is refused with a ``ValueError``. ``apply`` reads everything else from the param shapes,
so blocks may hold different numbers of heads and MLP channels (after structured compaction).

**Per-block interface** (for block-by-block calibration; every function is pure)::

    cos_sin = rope(state, T)                   # (cos, sin), each (T, hd/2); ValueError if T > C
    h = embed(params, tokens)                  # (N, T, D)
    for name in block_names(params):           # "blocks.0", "blocks.1", ...
        h = block(get_block(params, name), h, cos_sin)           # (N, T, D)
        # or: h, inputs = block(..., capture=True): inputs[lin] is the input of linear ``lin``
    logits = head(params, h)                   # (N, T, V): final RMSNorm, then the head

``LINEARS = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down")`` are the
linear layers of a block: the leaf ``blocks.<i>.<lin>.weight`` of shape ``(out, in)`` computes
``x @ W.T`` and ``inputs[lin]`` has shape ``(N, T, in)`` (q, k, v share one tensor, as do gate and
up). Running the blocks in order equals ``apply``.

Groups (``groups(params)``), all prunable: ``blocks.<i>.attn`` has one unit per KV head, owning its
k and v rows, the rows of its ``H/KV`` query heads and the matching columns of ``attn.o`` (so
removing a unit keeps GQA consistent), and ``blocks.<i>.mlp`` one unit per MLP channel (gate and up
rows, down column). Scored members are q, k, v and gate, up (the producers); o and down columns are
consumers (``score=False``). The residual stream is not a group: RMSNorm divides by the mean over
all ``D`` channels, so removing a residual channel is not the same as zeroing it.

Whole blocks: a block whose ``attn.o`` and ``mlp.down`` weights are zero adds nothing to the
residual stream, so masking all of a block's linear weights equals :func:`drop_blocks` removing it.

Init: linear and embedding weights ``N(0, 0.02²)``, ``attn.o`` and ``mlp.down`` ``N(0, 0.02²/(2L))``
(GPT-2's residual scaling), norm weights 1.

Checkpoints: :func:`load_pretrained` loads the model that ``bench/train_llama.py`` trained on
Python's pydoc topics at byte level and ships in ``models/weights/`` (safetensors), after checking
its SHA-256 and every shape against its config.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from pure_prune import rng, tree
from pure_prune.groups import ChannelGroup, Member

from . import structure

__all__ = [
    "HEAD_DIM",
    "LINEARS",
    "PRETRAINED",
    "apply",
    "block",
    "block_names",
    "drop_blocks",
    "embed",
    "expected_shapes",
    "flops_per_token",
    "get_block",
    "groups",
    "head",
    "hidden_states",
    "init",
    "load_checkpoint",
    "load_pretrained",
    "rms_norm",
    "rope",
    "rope_tables",
]

LINEARS = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down")
HEAD_DIM = 32
EPS = 1e-5
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


# ------------------------------------------------------------------------------------------- init
def init(
    key: int,
    *,
    vocab: int = 256,
    dim: int = 128,
    n_layers: int = 4,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    ffn: int = 384,
    context: int = 128,
    rope_theta: float = 10000.0,
    tie_weights: bool = True,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Params and state (the rotary tables) of the architecture in the module docstring.

    Every head has :data:`HEAD_DIM` dims (``n_heads * HEAD_DIM`` need not equal ``dim``);
    ``n_heads`` must be a multiple of ``n_kv_heads``. ``ValueError``/``TypeError`` naming the config
    key otherwise.
    """
    for name, value in (("vocab", vocab), ("dim", dim), ("n_layers", n_layers), ("n_heads", n_heads),
                        ("n_kv_heads", n_kv_heads), ("ffn", ffn), ("context", context)):  # fmt: skip
        structure.check_sizes(name, value)
    if n_heads % n_kv_heads:
        raise ValueError(f"n_heads={n_heads} must be a multiple of n_kv_heads={n_kv_heads}")
    if isinstance(rope_theta, bool) or not isinstance(rope_theta, (int, float)) or rope_theta <= 1:
        raise ValueError(f"rope_theta must be a number > 1, got {rope_theta!r}")
    hd = HEAD_DIM
    k_emb, k_head, *k_blocks = rng.split(key, 2 + n_layers)
    std, std_out = 0.02, 0.02 / math.sqrt(2 * n_layers)
    flat: dict[str, Any] = {
        "embed.weight": rng.normal(k_emb, (vocab, dim)) * std,
        "norm.weight": torch.ones(dim),
    }
    if not tie_weights:
        flat["head.weight"] = rng.normal(k_head, (vocab, dim)) * std
    shapes = {
        "attn.q": ((n_heads * hd, dim), std),
        "attn.k": ((n_kv_heads * hd, dim), std),
        "attn.v": ((n_kv_heads * hd, dim), std),
        "attn.o": ((dim, n_heads * hd), std_out),
        "mlp.gate": ((ffn, dim), std),
        "mlp.up": ((ffn, dim), std),
        "mlp.down": ((dim, ffn), std_out),
    }
    for i, kb in enumerate(k_blocks):
        for lin, kl in zip(LINEARS, rng.split(kb, len(LINEARS))):
            shape, s = shapes[lin]
            flat[f"blocks.{i}.{lin}.weight"] = rng.normal(kl, shape) * s
        flat[f"blocks.{i}.attn_norm.weight"] = torch.ones(dim)
        flat[f"blocks.{i}.mlp_norm.weight"] = torch.ones(dim)
    return structure.nest(flat), {"rope": rope_tables(hd, context, rope_theta)}


def rope_tables(head_dim: int, context: int, theta: float = 10000.0) -> dict[str, Tensor]:
    """``{"cos", "sin"}``, each ``(context, head_dim // 2)`` float32: angle ``t * theta^(-2j/head_dim)``."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(context, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return {"cos": angles.cos().float(), "sin": angles.sin().float()}


# ------------------------------------------------------------------------------- per-block pieces
def block_names(params: Mapping[str, Any]) -> list[str]:
    """Paths ``"blocks.<i>"`` of the blocks in order (``[]`` for a model with no blocks left)."""
    return [f"blocks.{i}" for i in structure.indexed(params.get("blocks", {}))]


def get_block(params: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The subtree of block ``name`` (``"blocks.<i>"``); ``KeyError`` naming it if absent."""
    return structure.get_path(params, name)


def rope(state: Mapping[str, Any], seq_len: int) -> tuple[Tensor, Tensor]:
    """``(cos, sin)``, each ``(seq_len, hd/2)``, the first ``seq_len`` rows of the state's tables.

    ``ValueError`` when ``seq_len`` exceeds the context ``C`` (the tables' length).
    """
    try:
        cos, sin = state["rope"]["cos"], state["rope"]["sin"]
    except (KeyError, TypeError) as err:
        raise ValueError("llama state must hold the rotary tables state['rope']['cos'/'sin']") from err
    if seq_len > cos.shape[0]:
        raise ValueError(
            f"sequence of {seq_len} tokens is longer than the model's context of {cos.shape[0]} "
            f"(state.rope.cos has shape {tuple(cos.shape)})"
        )
    return cos[:seq_len], sin[:seq_len]


def rms_norm(x: Tensor, weight: Tensor) -> Tensor:
    """``x / sqrt(mean(x², -1) + 1e-5) * weight``; ``x (..., D)``, ``weight (D,)``."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * weight


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding of ``x (N, heads, T, hd)``: pairs ``(i, i + hd/2)`` turned by the angle of ``t``."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def embed(params: Mapping[str, Any], tokens: Tensor) -> Tensor:
    """Embeddings ``(N, T, D)`` of token ids ``tokens (N, T)`` (integer dtype)."""
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise TypeError(f"tokens must hold integer token ids, got dtype {tokens.dtype}")
    if tokens.ndim != 2:
        raise ValueError(f"tokens of shape {tuple(tokens.shape)} must be (N, T) token ids")
    return F.embedding(tokens, params["embed"]["weight"])


def head(params: Mapping[str, Any], h: Tensor) -> Tensor:
    """Logits ``(N, T, V)`` of the last hidden state ``h (N, T, D)``: final RMSNorm, then the head
    (``head.weight``, or ``embed.weight`` when tied)."""
    w = params["head"]["weight"] if "head" in params else params["embed"]["weight"]
    return F.linear(rms_norm(h, params["norm"]["weight"]), w)


def _head_counts(p: Mapping[str, Any], hd: int) -> tuple[int, int]:
    """``(H, KV)`` of a block from its q and k rows; ``ValueError`` when the shapes do not fit."""
    q, k = p["attn"]["q"]["weight"], p["attn"]["k"]["weight"]
    if q.shape[0] % hd or k.shape[0] % hd or k.shape[0] == 0 or (q.shape[0] // hd) % (k.shape[0] // hd):
        raise ValueError(
            f"attn.q.weight {tuple(q.shape)} and attn.k.weight {tuple(k.shape)} do not split into "
            f"head_dim={hd} heads with a whole number of query heads per KV head"
        )
    return q.shape[0] // hd, k.shape[0] // hd


def block(
    params_block: Mapping[str, Any],
    h: Tensor,
    cos_sin: tuple[Tensor, Tensor],
    *,
    capture: bool = False,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """One residual block: ``h (N, T, D)`` -> ``(N, T, D)``; ``cos_sin = rope(state, T)``.

    ``capture=True`` also returns ``{lin: input of lin}`` for every name in :data:`LINEARS`, each
    ``(N, T, in_features of lin)``, plus ``"attn.heads"``: the attention output per KV unit
    ``(N, KV, T, (H/KV)*hd)`` and ``"mlp.hidden"`` = ``inputs["mlp.down"]`` (the units of the
    block's two channel groups).
    """
    cos, sin = cos_sin
    hd = HEAD_DIM
    if cos.shape[-1] * 2 != hd:
        raise ValueError(f"rotary tables of shape {tuple(cos.shape)} do not fit head_dim={hd}")
    n_heads, n_kv = _head_counts(params_block, hd)
    attn, mlp = params_block["attn"], params_block["mlp"]
    x = rms_norm(h, params_block["attn_norm"]["weight"])
    q = rearrange(F.linear(x, attn["q"]["weight"]), "n t (h d) -> n h t d", d=hd)
    k = rearrange(F.linear(x, attn["k"]["weight"]), "n t (h d) -> n h t d", d=hd)
    v = rearrange(F.linear(x, attn["v"]["weight"]), "n t (h d) -> n h t d", d=hd)
    a = F.scaled_dot_product_attention(
        _rotate(q, cos, sin), _rotate(k, cos, sin), v, is_causal=True, enable_gqa=n_heads != n_kv
    )
    a_flat = rearrange(a, "n h t d -> n t (h d)")
    h = h + F.linear(a_flat, attn["o"]["weight"])
    y = rms_norm(h, params_block["mlp_norm"]["weight"])
    hidden = F.silu(F.linear(y, mlp["gate"]["weight"])) * F.linear(y, mlp["up"]["weight"])
    out = h + F.linear(hidden, mlp["down"]["weight"])
    if not capture:
        return out
    inputs = {"attn.q": x, "attn.k": x, "attn.v": x, "attn.o": a_flat, "mlp.gate": y, "mlp.up": y}
    inputs["mlp.down"] = hidden
    inputs["attn.heads"] = rearrange(a, "n (kv g) t d -> n kv t (g d)", kv=n_kv)
    inputs["mlp.hidden"] = hidden
    return out, inputs


def hidden_states(params: Mapping[str, Any], state: Mapping[str, Any], tokens: Tensor) -> list[Tensor]:
    """The residual stream ``[embed(tokens), after block 0, ..., after block L-1]``: ``L + 1`` tensors
    ``(N, T, D)`` (what ShortGPT's block influence compares)."""
    cos_sin = rope(state, tokens.shape[1])
    hs = [embed(params, tokens)]
    for name in block_names(params):
        hs.append(block(get_block(params, name), hs[-1], cos_sin))
    return hs


# ------------------------------------------------------------------------------------------ apply
def apply(
    params: dict[str, Any],
    state: dict[str, Any],
    x: Tensor,
    *,
    train: bool,
    capture: bool = False,
) -> tuple[Tensor, dict[str, Any]] | tuple[Tensor, dict[str, Any], dict[str, Tensor]]:
    """Logits ``(N, T, V)`` of token ids ``x (N, T)``; ``state`` is returned unchanged (no dropout,
    so ``train`` changes nothing).

    ``capture=True`` also returns each group's units on axis 1: ``"blocks.<i>.attn"``
    ``(N, KV, T, (H/KV)*hd)`` (the attention output of each KV unit's query heads) and
    ``"blocks.<i>.mlp"`` ``(N, F, T)`` (the SwiGLU hidden). ``ValueError`` for ``T`` > context.
    """
    cos_sin = rope(state, x.shape[1] if x.ndim == 2 else 0)
    h = embed(params, x)
    acts: dict[str, Tensor] = {}
    for name in block_names(params):
        if capture:
            h, inputs = block(get_block(params, name), h, cos_sin, capture=True)
            acts[f"{name}.attn"] = inputs["attn.heads"]
            acts[f"{name}.mlp"] = rearrange(inputs["mlp.hidden"], "n t f -> n f t")
        else:
            h = block(get_block(params, name), h, cos_sin)
    out = head(params, h)
    return (out, state, acts) if capture else (out, state)


# ----------------------------------------------------------------------------------------- groups
def groups(params: Mapping[str, Any]) -> tuple[ChannelGroup, ...]:
    """``blocks.<i>.attn`` (one unit per KV head with its query heads) and ``blocks.<i>.mlp`` (one per
    MLP channel) for every block, in block order (see the module docstring)."""
    out = []
    for name in block_names(params):
        p = get_block(params, name)
        hd = HEAD_DIM
        n_heads, n_kv = _head_counts(p, hd)
        g = n_heads // n_kv
        attn = (
            Member(f"{name}.attn.q.weight", 0, inner=g * hd),
            Member(f"{name}.attn.k.weight", 0, inner=hd),
            Member(f"{name}.attn.v.weight", 0, inner=hd),
            Member(f"{name}.attn.o.weight", 1, inner=g * hd, score=False),
        )
        ffn = p["mlp"]["gate"]["weight"].shape[0]
        mlp = (
            Member(f"{name}.mlp.gate.weight", 0),
            Member(f"{name}.mlp.up.weight", 0),
            Member(f"{name}.mlp.down.weight", 1, score=False),
        )
        out += [ChannelGroup(f"{name}.attn", n_kv, attn), ChannelGroup(f"{name}.mlp", ffn, mlp)]
    return tuple(out)


# ----------------------------------------------------------------------------------- whole blocks
def drop_blocks(t: Mapping[str, Any], drop: Sequence[int]) -> dict[str, Any]:
    """``t`` (params, masks or scores: any tree with a ``"blocks"`` subtree) without the blocks whose
    indices are in ``drop``; the remaining blocks keep their order and are renumbered ``0, 1, ...``.

    With a residual block removed the stream passes unchanged, which is what the masked model
    computes when all of the block's linear weights are pruned (the module docstring). ``ValueError``
    for an index that is not a block or is given twice. Leaves are shared, not copied.
    """
    names = structure.indexed(t.get("blocks", {}))
    drop = list(drop)
    if any(isinstance(i, bool) or not isinstance(i, int) for i in drop):
        raise TypeError(f"drop must hold int block indices, got {drop!r}")
    bad = [i for i in drop if not 0 <= i < len(names)]
    if bad or len(set(drop)) != len(drop):
        raise ValueError(f"drop={drop} must name distinct blocks in [0, {len(names)})")
    kept = [t["blocks"][k] for k in names if int(k) not in set(drop)]
    out = {k: v for k, v in t.items() if k != "blocks"}
    out["blocks"] = {str(i): b for i, b in enumerate(kept)}
    return tree.canonical(out)


# ------------------------------------------------------------------------------------------ FLOPs
def flops_per_token(params: Mapping[str, Any], seq_len: int) -> float:
    """Forward FLOPs per token (2 per multiply-add) of a ``seq_len``-token sequence: every linear
    layer (head included), plus causal attention's ``QKᵀ`` and ``AV`` over on average
    ``(seq_len + 1) / 2`` keys. Norms, RoPE, softmax and SwiGLU's elementwise work are left out."""
    total = 0.0
    for name in block_names(params):
        p = get_block(params, name)
        for lin in LINEARS:
            total += 2.0 * structure.get_path(p, f"{lin}.weight").numel()
        total += 2 * 2.0 * p["attn"]["q"]["weight"].shape[0] * (seq_len + 1) / 2
    w = params["head"]["weight"] if "head" in params else params["embed"]["weight"]
    return total + 2.0 * w.numel()


# ------------------------------------------------------------------------------------ checkpoints
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
