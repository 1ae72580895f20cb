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

The code lives in modules of their own, all re-exported here: :mod:`models.llama_forward` (the forward
pass, block by block), :mod:`models.llama_init`, :mod:`models.llama_structure` (groups, whole blocks,
FLOPs) and :mod:`models.llama_checkpoint`.
"""

from __future__ import annotations

from .llama_checkpoint import PRETRAINED, expected_shapes, load_checkpoint, load_pretrained
from .llama_checkpoint import WEIGHTS_DIR as WEIGHTS_DIR
from .llama_forward import EPS as EPS
from .llama_forward import (
    HEAD_DIM,
    LINEARS,
    apply,
    block,
    block_names,
    embed,
    get_block,
    head,
    hidden_states,
    rms_norm,
    rope,
)
from .llama_init import init, rope_tables
from .llama_structure import drop_blocks, flops_per_token, groups

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
