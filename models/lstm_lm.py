"""LSTM language model (Zaremba et al. 2014 shape, Penn Treebank).

Tokens ``(N, T)`` -> embedding ``(N, T, E)`` -> ``L`` LSTM layers (written with torch ops, hidden and
cell state start at zero on every call) -> decoder -> logits ``(N, T, vocab)``. With
``tie_weights=True`` the decoder reuses the embedding matrix (needs ``embed == hidden`` of the last
layer) and params hold only ``decoder.bias``.

Params: ``embedding.weight (V, E)``; ``lstm.<l>.{w_ih (4H, in), w_hh (4H, H), b (4H,)}`` with gate
rows in PyTorch's order (input, forget, cell, output) and ``b`` = ``nn.LSTM``'s ``b_ih + b_hh``;
``decoder.{weight (V, H), bias (V,)}``. State ``{}``.

Dropout (Zaremba's non-recurrent dropout) is pure: the caller draws uniform noise with
:func:`draw_noise` outside any transform and passes ``apply(..., noise=..., dropout=p)``; sites are
the embedding output and every layer's output.

Init: LSTM weights and ``b`` ``U(±1/sqrt(H))`` (``nn.LSTM``'s default); embedding and decoder
weights ``U(±0.1)`` and decoder bias 0 (the usual PyTorch word-language-model choice, since
``nn.Embedding``'s ``N(0, 1)`` is far too large for a tied decoder).

Groups: ``embedding`` (embedding columns, layer 0 input columns; untied only) and ``lstm.<l>``
(unit ``j``'s four gate rows in ``w_ih``, ``w_hh``, ``b`` via ``outer=4``, column ``j`` of ``w_hh``,
and the next layer's ``w_ih`` columns or the decoder's columns; tied: the embedding columns and
layer 0's input columns too).
"""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange
from torch import Tensor

from pure_prune import rng
from pure_prune.groups import ChannelGroup, Member

from . import layers, structure

__all__ = ["apply", "draw_noise", "groups", "init", "noise_shapes"]


def init(
    key: int,
    *,
    vocab: int = 10000,
    embed: int = 200,
    hidden: int | tuple[int, ...] = 200,
    num_layers: int = 2,
    tie_weights: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Params and (empty) state; ``hidden`` is one width for all ``num_layers`` layers or one per layer."""
    structure.check_all_sizes(vocab=vocab, embed=embed, num_layers=num_layers)
    hidden = structure.check_sizes("hidden", hidden)
    hidden = hidden * num_layers if len(hidden) == 1 else hidden
    if len(hidden) != num_layers:
        raise ValueError(f"hidden must hold 1 or num_layers={num_layers} widths, got {hidden}")
    if tie_weights and hidden[-1] != embed:
        raise ValueError(f"tie_weights needs embed == hidden[-1], got embed={embed}, hidden={hidden}")
    k_emb, k_dec, *k_layers = rng.split(key, 2 + num_layers)
    params: dict[str, Any] = {"embedding.weight": layers.uniform(k_emb, (vocab, embed), 0.1)}
    widths = (embed, *hidden)
    for i, k in enumerate(k_layers):
        params[f"lstm.{i}"] = layers.lstm_init(k, widths[i], widths[i + 1])
    if not tie_weights:
        params["decoder.weight"] = layers.uniform(k_dec, (vocab, hidden[-1]), 0.1)
    params["decoder.bias"] = torch.zeros(vocab)
    return structure.nest(params), {}


def _layers(params: dict[str, Any]) -> list[str]:
    """Paths ``lstm.<l>`` of the LSTM layers in order."""
    return [f"lstm.{i}" for i in structure.indexed(params["lstm"])]


def noise_shapes(params: dict[str, Any], batch_size: int, seq_len: int) -> dict[str, tuple[int, ...]]:
    """Dropout noise shapes: ``{"embedding": (N, T, E), "lstm.<l>": (N, T, H_l)}``."""
    out = {"embedding": (batch_size, seq_len, params["embedding"]["weight"].shape[1])}
    for name in _layers(params):
        out[name] = (batch_size, seq_len, structure.get_path(params, f"{name}.w_hh").shape[1])
    return out


def draw_noise(key: int, params: dict[str, Any], batch_size: int, seq_len: int) -> dict[str, Tensor]:
    """Uniform ``[0, 1)`` dropout noise for ``apply(..., noise=...)``, drawn from ``key``."""
    return layers.draw_noise(key, noise_shapes(params, batch_size, seq_len))


def apply(
    params: dict[str, Any],
    state: dict[str, Any],
    x: Tensor,
    *,
    train: bool,
    capture: bool = False,
    noise: dict[str, Tensor] | None = None,
    dropout: float = 0.5,
) -> tuple[Tensor, dict[str, Any]] | tuple[Tensor, dict[str, Any], dict[str, Tensor]]:
    """Logits ``(N, T, vocab)`` of token ids ``x (N, T)``; ``state`` is returned unchanged.

    ``noise`` (train mode only) as :func:`noise_shapes`; a site's entries with ``noise < dropout``
    are zeroed and the rest scaled by ``1 / (1 - dropout)``. ``capture=True`` also returns each
    group's activation with units on axis 1: ``"embedding"`` ``(N, E, T)`` (untied only) and
    ``"lstm.<l>"`` ``(N, H_l, T)`` (hidden states, before dropout).
    """
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"input x must hold integer token ids, got dtype {x.dtype}")
    emb = params["embedding"]["weight"]
    if x.ndim != 2:
        raise ValueError(f"input x of shape {tuple(x.shape)} must be (N, T) token ids")
    names = _layers(params)
    drop = noise is not None and train
    if drop:
        layers.check_noise(noise, noise_shapes(params, x.shape[0], x.shape[1]))
    tied = "weight" not in params["decoder"]
    acts: dict[str, Tensor] = {}
    h = layers.embedding(x, emb)
    if not tied:
        acts["embedding"] = rearrange(h, "n t e -> n e t")
    if drop:
        h = layers.dropout(h, noise["embedding"], dropout)
    for name in names:
        h = layers.lstm_layer(h, structure.get_path(params, name))
        acts[name] = rearrange(h, "n t h -> n h t")
        if drop:
            h = layers.dropout(h, noise[name], dropout)
    out = layers.linear(h, emb if tied else params["decoder"]["weight"], params["decoder"]["bias"])
    return (out, state, acts) if capture else (out, state)


def groups(params: dict[str, Any]) -> tuple[ChannelGroup, ...]:
    """``embedding`` (untied) and ``lstm.<l>`` hidden-unit groups, all prunable."""
    names = _layers(params)
    tied = "weight" not in params["decoder"]
    into_first = [Member("embedding.weight", 1), Member(f"{names[0]}.w_ih", 1, score=False)]
    out = []
    if not tied:
        out.append(ChannelGroup("embedding", params["embedding"]["weight"].shape[1], tuple(into_first)))
    for i, name in enumerate(names):
        size = structure.get_path(params, f"{name}.w_hh").shape[1]
        members = [
            Member(f"{name}.w_ih", 0, outer=4),
            Member(f"{name}.w_hh", 0, outer=4),
            Member(f"{name}.b", 0, outer=4, score=False),
            Member(f"{name}.w_hh", 1, score=False),
        ]
        if i + 1 < len(names):
            members.append(Member(f"{names[i + 1]}.w_ih", 1, score=False))
        elif tied:
            members += [m._replace(score=False) for m in into_first]
        else:
            members.append(Member("decoder.weight", 1, score=False))
        out.append(ChannelGroup(name, size, tuple(members)))
    return tuple(out)
