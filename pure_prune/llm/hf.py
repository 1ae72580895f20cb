"""transformers' causal language models as a :class:`~pure_prune.llm.blocks.BlockModel`.

``block_model(hf_model)`` describes a ``LlamaForCausalLM``, ``Qwen2ForCausalLM`` or
``OPTForCausalLM`` (built from a config or loaded from a local checkpoint) block by block, over the
parameter tree that :func:`pure_prune.interop.from_module` gives (paths as ``named_parameters()``
names them, e.g. ``"model.layers.0.self_attn.q_proj.weight"``; a tied head is the embedding's leaf).
The one-shot methods of :mod:`pure_prune.llm` (magnitude, Wanda, SparseGPT, OWL) then run on it
through :func:`pure_prune.llm.calibrate.prune`, and :func:`pure_prune.interop.to_module` writes the
pruned tree back into a copy of the model: the same class with the same shapes, so
``save_pretrained`` / ``from_pretrained`` work as for any checkpoint.

The functions run the model's *own* submodules through ``torch.func.functional_call`` (its
embeddings, norms, linear layers, activation, rotary embedding, final norm and head), on a private
copy of the model whose parameters live on the ``meta`` device: the caller's module is neither
referenced nor modified. Only the attention product is written here, as the model computes it in
inference: causal ``softmax(q kᵀ · scale) v`` through ``scaled_dot_product_attention`` (grouped-query
attention for LLaMA/Qwen2: query head ``h`` reads key/value head ``h // (H / KV)``); LLaMA/Qwen2 apply
the rotary embedding (Su et al. 2021) in the "rotate half" pairing of transformers. ``block`` equals
the decoder layer's forward with its causal mask (``tests/test_llm_hf.py`` checks it, and the
whole model's logits, for tiny configs of the three families). Dropout is off (inference).

Taps (the input each linear reads; linears that read one tensor share a tap):

=============  ============================================================================
LLaMA, Qwen2   ``self_attn.q_proj`` (q, k, v), ``self_attn.o_proj``, ``mlp.gate_proj`` (gate, up),
               ``mlp.down_proj``
OPT            ``self_attn.q_proj`` (q, k, v), ``self_attn.out_proj``, ``fc1``, ``fc2``
=============  ============================================================================

Embeddings, norms, biases and the head stay dense (they are not linears of a block).
Refused with a ``ValueError``: sliding-window attention (Qwen2 ``use_sliding_window``), rotary
types that rewrite their tables while running (``dynamic``, ``longrope``), sequences longer than
``config.max_position_embeddings`` and token ids outside the vocabulary.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.func import functional_call

from pure_prune import tree
from pure_prune.llm.blocks import BlockModel, subtree

__all__ = ["FAMILIES", "block_model", "context", "family"]

Params = Any

FAMILIES = ("llama", "qwen2", "opt")
"""``config.model_type`` of the supported models."""

_LLAMA_LINEARS = {
    "self_attn.q_proj": "self_attn.q_proj",
    "self_attn.k_proj": "self_attn.q_proj",
    "self_attn.v_proj": "self_attn.q_proj",
    "self_attn.o_proj": "self_attn.o_proj",
    "mlp.gate_proj": "mlp.gate_proj",
    "mlp.up_proj": "mlp.gate_proj",
    "mlp.down_proj": "mlp.down_proj",
}
_LLAMA_STAGES = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ("self_attn.o_proj",),
    ("mlp.gate_proj", "mlp.up_proj"),
    ("mlp.down_proj",),
)
_OPT_LINEARS = {
    "self_attn.q_proj": "self_attn.q_proj",
    "self_attn.k_proj": "self_attn.q_proj",
    "self_attn.v_proj": "self_attn.q_proj",
    "self_attn.out_proj": "self_attn.out_proj",
    "fc1": "fc1",
    "fc2": "fc2",
}
_OPT_STAGES = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ("self_attn.out_proj",),
    ("fc1",),
    ("fc2",),
)
_UNSUPPORTED_ROPE = ("dynamic", "longrope")


# ----------------------------------------------------------------------------------------- checks
def family(model: nn.Module) -> str:
    """``"llama"``, ``"qwen2"`` or ``"opt"``: the ``config.model_type`` of a supported causal LM.

    ``TypeError`` naming the class for anything else; ``ValueError`` for a supported family in a
    configuration this module does not compute (sliding windows, self-updating rotary tables).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a transformers causal LM (nn.Module), got {type(model).__name__}")
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    layers = _layers_path(kind)
    if kind not in FAMILIES or not hasattr(model, "lm_head") or not _has(model, layers):
        raise TypeError(
            f"{type(model).__name__} (model_type {kind!r}) is not a supported causal LM: "
            f"LlamaForCausalLM, Qwen2ForCausalLM or OPTForCausalLM (model_type in {FAMILIES})"
        )
    if kind == "qwen2":
        types = getattr(config, "layer_types", None) or ()
        if getattr(config, "use_sliding_window", False) or "sliding_attention" in types:
            raise ValueError(
                "Qwen2 with sliding-window attention (config.use_sliding_window / layer_types "
                f"{list(types)}) is not supported; only full causal attention"
            )
    if kind in ("llama", "qwen2"):
        rope = getattr(config, "rope_parameters", None) or {}
        rope_type = rope.get("rope_type", "default") if isinstance(rope, Mapping) else "default"
        if rope_type in _UNSUPPORTED_ROPE:
            raise ValueError(
                f"rotary type {rope_type!r} rewrites its tables while running; supported: the others"
            )
    return kind


def context(model: nn.Module) -> int:
    """The longest sequence ``model`` takes: ``config.max_position_embeddings``."""
    family(model)
    return int(model.config.max_position_embeddings)


def _layers_path(kind: str | None) -> str:
    return "model.decoder.layers" if kind == "opt" else "model.layers"


def _has(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True


def _check_tokens(tokens: torch.Tensor, vocab: int, limit: int) -> None:
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.dtype != torch.int64:
        what = f"{tokens.dtype} {tuple(tokens.shape)}" if isinstance(tokens, torch.Tensor) else tokens
        raise TypeError(f"tokens must be int64 token ids (N, T), got {what!r}")
    if tokens.shape[1] > limit:
        raise ValueError(
            f"sequences of {tokens.shape[1]} tokens are longer than the model's context of {limit} "
            "(config.max_position_embeddings)"
        )
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
        raise ValueError(
            f"token ids must lie in [0, {vocab}) (the embedding's rows), got "
            f"[{int(tokens.min())}, {int(tokens.max())}]"
        )


# ------------------------------------------------------------------------------- private skeleton
def _meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode whose parameters are on ``meta`` (no memory); buffers are copied.

    The mode is set with ``nn.Module.train`` itself: transformers' override of ``train`` re-runs
    hub-kernel replacement (``kernels``) on models loaded with ``from_pretrained``, which refuses
    ``meta`` tensors.
    """
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False)
    skeleton = copy.deepcopy(model, memo)
    nn.Module.train(skeleton, False)
    return skeleton


def _params_of(model: nn.Module) -> Params:
    """``interop.from_module(model)``'s params: detached clones of ``named_parameters()`` (a tied
    parameter once, under its first name) nested on the dots, canonical. Built here because
    ``from_module`` also sets up a train-mode copy, which transformers' ``train`` override cannot
    take for models loaded with hub kernels (see :func:`_meta_copy`)."""
    root: dict[str, Any] = {}
    for name, p in model.named_parameters():
        *parents, leaf = name.split(".")
        node = root
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = p.detach().clone()
    return tree.canonical(root)


def _binder(module: nn.Module, paths: Mapping[str, str]) -> Callable[..., Any]:
    """``call(tree, *args)``: ``module(*args)`` with each of its parameters ``local`` read from the
    tree at ``paths[local]`` (its buffers are the module's own)."""

    def call(params: Params, *args: Any) -> Any:
        return functional_call(module, {k: subtree(params, p) for k, p in paths.items()}, args)

    return call


def _in_block(skeleton_layer: nn.Module, name: str) -> Callable[..., Any]:
    """Caller of the layer's submodule ``name`` over a block's subtree (paths relative to the layer)."""
    sub = skeleton_layer.get_submodule(name)
    return _binder(sub, {local: f"{name}.{local}" for local, _ in sub.named_parameters()})


def _top(skeleton: nn.Module, model: nn.Module, name: str) -> Callable[..., Any]:
    """Caller of the model's submodule ``name`` over the whole tree; a tied parameter is read under
    its first name (the leaf :func:`pure_prune.interop.from_module` keeps)."""
    first: dict[int, str] = {}
    for full, p in model.named_parameters(remove_duplicate=False):
        first.setdefault(id(p), full)
    original = model.get_submodule(name)
    paths = {local: first[id(p)] for local, p in original.named_parameters(remove_duplicate=False)}
    return _binder(skeleton.get_submodule(name), paths)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of ``q (N, H, T, d)`` over ``k, v (N, KV, T, d)``: ``(N, T, H·d)``."""
    a = F.scaled_dot_product_attention(
        q, k, v, is_causal=True, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )
    return rearrange(a, "n h t d -> n t (h d)")


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding, transformers' pairing of ``i`` with ``i + d/2``: ``x (N, H, T, d)``,
    ``cos``/``sin`` ``(N, T, d)`` (the halves repeated)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos[:, None] + torch.cat((-x2, x1), dim=-1) * sin[:, None]


# ----------------------------------------------------------------------------------------- models
def block_model(model: nn.Module, *, sequential: bool = False) -> tuple[BlockModel, Params]:
    """``(BlockModel, params)`` of a transformers ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` /
    ``OPTForCausalLM``.

    ``params`` is the tree ``interop.from_module(model)`` gives (detached clones, canonical, tied
    leaves once); the :class:`BlockModel`'s ``embed(params, tokens (N, T)) -> (N, T, D)``,
    ``block(block_params, h) -> (h (N, T, D), taps)``, ``head(params, h) -> logits (N, T, V)`` and
    ``block_paths(params)`` (``"model.layers.<i>"``, OPT ``"model.decoder.layers.<i>"``) are pure
    functions of the tree; ``linears`` and the taps are listed in the module docstring.
    ``sequential=True`` prunes each block in stages (q/k/v, then the attention output projection,
    then the MLP's input projection(s), then its output projection), each on the outputs of the
    already-pruned stages. ``model`` is not modified or kept.
    """
    kind = family(model)
    if not isinstance(sequential, bool):
        raise TypeError(f"sequential must be a bool, got {sequential!r}")
    skeleton = _meta_copy(model)
    layers_path = _layers_path(kind)
    n_layers = len(skeleton.get_submodule(layers_path))
    if n_layers == 0:
        raise ValueError(f"{type(model).__name__} has no decoder layers")
    layer = skeleton.get_submodule(layers_path)[0]
    names = [n for n, _ in layer.named_parameters()]
    for i, other in enumerate(skeleton.get_submodule(layers_path)):
        if type(other) is not type(layer) or [n for n, _ in other.named_parameters()] != names:
            raise ValueError(f"decoder layer {i} differs from layer 0 in its modules; all must be alike")
    params = _params_of(model)
    config = model.config
    limit = int(config.max_position_embeddings)
    vocab = model.get_input_embeddings().num_embeddings

    def block_paths(p: Params) -> list[str]:
        return [f"{layers_path}.{i}" for i in range(len(subtree(p, layers_path)))]

    builder = _llama_like if kind in ("llama", "qwen2") else _opt
    embed, block, head = builder(model, skeleton, layer)

    def checked_embed(p: Params, tokens: torch.Tensor) -> torch.Tensor:
        _check_tokens(tokens, vocab, limit)
        return embed(p, tokens)

    linears, stages = (
        (_LLAMA_LINEARS, _LLAMA_STAGES) if builder is _llama_like else (_OPT_LINEARS, _OPT_STAGES)
    )
    bm = BlockModel(
        embed=checked_embed,
        block=block,
        head=head,
        block_paths=block_paths,
        linears={name: (f"{name}.weight", tap) for name, tap in linears.items()},
        stages=stages if sequential else (),
    )
    return bm, params


def _llama_like(model: nn.Module, skeleton: nn.Module, layer: nn.Module):
    """``(embed, block, head)`` of LLaMA and Qwen2 (pre-norm RMSNorm blocks, rotary, GQA, gated MLP)."""
    embed_tokens = _top(skeleton, model, "model.embed_tokens")
    norm, lm_head = _top(skeleton, model, "model.norm"), _top(skeleton, model, "lm_head")
    rotary = skeleton.get_submodule("model.rotary_emb")
    attn, mlp = layer.self_attn, layer.mlp
    head_dim, scale = int(attn.head_dim), float(attn.scaling)
    call = {n: _in_block(layer, n) for n in ("input_layernorm", "post_attention_layernorm", *_LLAMA_LINEARS)}

    def embed(params: Params, tokens: torch.Tensor) -> torch.Tensor:
        return embed_tokens(params, tokens)

    def block(bp: Params, h: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = call["input_layernorm"](bp, h)
        q, k, v = (
            rearrange(call[f"self_attn.{n}_proj"](bp, x), "n t (h d) -> n h t d", d=head_dim) for n in "qkv"
        )
        positions = torch.arange(h.shape[1], device=h.device)[None]
        cos, sin = rotary(x, positions)
        a = _attention(_rotate(q, cos, sin), _rotate(k, cos, sin), v, scale)
        h = h + call["self_attn.o_proj"](bp, a)
        y = call["post_attention_layernorm"](bp, h)
        hidden = mlp.act_fn(call["mlp.gate_proj"](bp, y)) * call["mlp.up_proj"](bp, y)
        out = h + call["mlp.down_proj"](bp, hidden)
        taps = {"self_attn.q_proj": x, "self_attn.o_proj": a, "mlp.gate_proj": y, "mlp.down_proj": hidden}
        return out, taps

    def head(params: Params, h: torch.Tensor) -> torch.Tensor:
        return lm_head(params, norm(params, h))

    return embed, block, head


def _opt(model: nn.Module, skeleton: nn.Module, layer: nn.Module):
    """``(embed, block, head)`` of OPT (learned positions, LayerNorm before or after, ReLU MLP)."""
    decoder = "model.decoder"
    embed_tokens = _top(skeleton, model, f"{decoder}.embed_tokens")
    embed_positions = _top(skeleton, model, f"{decoder}.embed_positions")
    optional = {
        n: _top(skeleton, model, f"{decoder}.{n}")
        if getattr(skeleton.model.decoder, n, None) is not None
        else None
        for n in ("project_in", "project_out", "final_layer_norm")
    }
    lm_head = _top(skeleton, model, "lm_head")
    attn = layer.self_attn
    head_dim, scale, before = int(attn.head_dim), float(attn.scaling), bool(layer.do_layer_norm_before)
    call = {n: _in_block(layer, n) for n in ("self_attn_layer_norm", "final_layer_norm", *_OPT_LINEARS)}

    def embed(params: Params, tokens: torch.Tensor) -> torch.Tensor:
        e = embed_tokens(params, tokens)
        if optional["project_in"] is not None:
            e = optional["project_in"](params, e)
        n, t = tokens.shape
        positions = torch.arange(t, device=tokens.device).expand(n, t)
        ones = torch.ones(n, t, dtype=torch.long, device=tokens.device)
        return e + embed_positions(params, ones, 0, positions).to(e.dtype)

    def block(bp: Params, h: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = call["self_attn_layer_norm"](bp, h) if before else h
        q = call["self_attn.q_proj"](bp, x) * scale
        q, k, v = (
            rearrange(t, "n t (h d) -> n h t d", d=head_dim)
            for t in (q, call["self_attn.k_proj"](bp, x), call["self_attn.v_proj"](bp, x))
        )
        a = _attention(q, k, v, 1.0)
        h = h + call["self_attn.out_proj"](bp, a)
        if not before:
            h = call["self_attn_layer_norm"](bp, h)
        y = call["final_layer_norm"](bp, h) if before else h
        hidden = layer.activation_fn(call["fc1"](bp, y))
        out = h + call["fc2"](bp, hidden)
        if not before:
            out = call["final_layer_norm"](bp, out)
        return out, {"self_attn.q_proj": x, "self_attn.out_proj": a, "fc1": y, "fc2": hidden}

    def head(params: Params, h: torch.Tensor) -> torch.Tensor:
        for n in ("final_layer_norm", "project_out"):
            if optional[n] is not None:
                h = optional[n](params, h)
        return lm_head(params, h)

    return embed, block, head
