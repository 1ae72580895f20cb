"""Functional layers and initialisers shared by the models: pure functions of tensors and dicts.

Layers take their parameters as tensors or small dicts (``{"weight", "bias"}``) and never update
anything in place. BatchNorm returns its new running statistics instead of writing them.

Initialisers draw from an explicit ``pure_prune.rng`` key; same key, same tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import reduce
from torch import Tensor

from pure_prune import rng

__all__ = [
    "batch_norm",
    "batch_norm_init",
    "check_noise",
    "conv1d",
    "conv2d",
    "dense_init",
    "draw_noise",
    "dropout",
    "embedding",
    "fans",
    "flatten",
    "global_avg_pool",
    "glorot_normal",
    "init_weight",
    "kaiming_normal",
    "kaiming_uniform",
    "linear",
    "lstm_cell",
    "lstm_init",
    "lstm_layer",
    "max_pool",
    "relu_stack",
    "uniform",
]

# ---------------------------------------------------------------------------------------------
# Initialisers
# ---------------------------------------------------------------------------------------------


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight of ``shape = (out, in, *kernel)``.

    ``fan_in = in * prod(kernel)``, ``fan_out = out * prod(kernel)`` (as ``torch.nn.init``).
    """
    if len(shape) < 2:
        raise ValueError(f"fans: a weight needs at least 2 dimensions (out, in, ...), got shape {shape}")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def uniform(key: int, shape: tuple[int, ...], bound: float) -> Tensor:
    """Float32 tensor of ``shape`` drawn from ``U(-bound, bound)``."""
    return (rng.uniform(key, shape) * 2.0 - 1.0) * bound


def kaiming_uniform(key: int, shape: tuple[int, ...], a: float = math.sqrt(5.0)) -> Tensor:
    """``U(-b, b)`` with ``b = sqrt(2 / (1 + a²)) * sqrt(3 / fan_in)``.

    With the default ``a = sqrt(5)`` this is PyTorch's default for ``nn.Linear``/``nn.Conv*``
    weights, ``b = 1 / sqrt(fan_in)``.
    """
    fan_in, _ = fans(shape)
    gain = math.sqrt(2.0 / (1.0 + a * a))
    return uniform(key, shape, gain * math.sqrt(3.0 / fan_in))


def kaiming_normal(key: int, shape: tuple[int, ...]) -> Tensor:
    """``N(0, 2 / fan_in)``: He et al. (2015) initialisation for ReLU networks (forward case)."""
    fan_in, _ = fans(shape)
    return rng.normal(key, shape) * math.sqrt(2.0 / fan_in)


def glorot_normal(key: int, shape: tuple[int, ...]) -> Tensor:
    """``N(0, 2 / (fan_in + fan_out))``: Gaussian Glorot (Xavier) initialisation."""
    fan_in, fan_out = fans(shape)
    return rng.normal(key, shape) * math.sqrt(2.0 / (fan_in + fan_out))


def init_weight(key: int, shape: tuple[int, ...], scheme: str = "default") -> Tensor:
    """A weight of ``shape`` by ``scheme``.

    ``"default"`` (:func:`kaiming_uniform`, PyTorch's default), ``"kaiming_normal"`` or
    ``"glorot_normal"``; anything else raises ``ValueError``.
    """
    if scheme == "default":
        return kaiming_uniform(key, shape)
    if scheme == "kaiming_normal":
        return kaiming_normal(key, shape)
    if scheme == "glorot_normal":
        return glorot_normal(key, shape)
    raise ValueError(
        f"unknown weight init scheme {scheme!r}; use 'default', 'kaiming_normal' or 'glorot_normal'"
    )


def dense_init(
    key: int, shape: tuple[int, ...], *, weight: str = "default", bias: str | None = "default"
) -> dict[str, Tensor]:
    """``{"weight": (out, in, *kernel), "bias": (out,)}`` for a linear or conv layer.

    ``weight`` is a scheme of :func:`init_weight`. ``bias``: ``"default"`` draws
    ``U(±1/sqrt(fan_in))`` (PyTorch's default), ``"zeros"`` gives zeros, ``None`` leaves it out.
    """
    k_w, k_b = rng.split(key, 2)
    out: dict[str, Tensor] = {"weight": init_weight(k_w, shape, weight)}
    if bias == "default":
        out["bias"] = uniform(k_b, (shape[0],), 1.0 / math.sqrt(fans(shape)[0]))
    elif bias == "zeros":
        out["bias"] = torch.zeros(shape[0])
    elif bias is not None:
        raise ValueError(f"unknown bias init {bias!r}; use 'default', 'zeros' or None")
    return out


def batch_norm_init(channels: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """BatchNorm ``(params, state)``: weight 1, bias 0; running_mean 0, running_var 1; all ``(C,)``."""
    params = {"bias": torch.zeros(channels), "weight": torch.ones(channels)}
    state = {"running_mean": torch.zeros(channels), "running_var": torch.ones(channels)}
    return params, state


def lstm_init(key: int, input_size: int, hidden: int) -> dict[str, Tensor]:
    """One LSTM layer: ``{"w_ih": (4H, I), "w_hh": (4H, H), "b": (4H,)}``, all ``U(±1/sqrt(H))``.

    Gate rows are stacked in PyTorch's order (input, forget, cell, output). ``b`` plays the role of
    ``nn.LSTM``'s ``b_ih + b_hh``.
    """
    k_ih, k_hh, k_b = rng.split(key, 3)
    bound = 1.0 / math.sqrt(hidden)
    return {
        "b": uniform(k_b, (4 * hidden,), bound),
        "w_hh": uniform(k_hh, (4 * hidden, hidden), bound),
        "w_ih": uniform(k_ih, (4 * hidden, input_size), bound),
    }


def check_noise(noise: Mapping[str, Tensor], shapes: Mapping[str, tuple[int, ...]]) -> None:
    """``ValueError`` naming the site unless ``noise[site]`` exists with shape ``shapes[site]`` for every site."""
    for name, shape in shapes.items():
        got = tuple(noise[name].shape) if name in noise else None
        if got != tuple(shape):
            raise ValueError(f"noise[{name!r}] must have shape {tuple(shape)}, got {got}")


def draw_noise(key: int, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Tensor]:
    """``U[0, 1)`` tensors for :func:`dropout`, one per named site, each from its own folded key."""
    return {
        name: rng.uniform(rng.fold_in(key, i), tuple(shape)) for i, (name, shape) in enumerate(shapes.items())
    }


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------


def embedding(x: Tensor, weight: Tensor) -> Tensor:
    """Rows of ``weight (V, E)`` at the integer ids ``x (N, ...)``: returns ``(N, ..., E)``."""
    return F.embedding(x, weight)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight.T + bias``: ``(N, ..., in) -> (N, ..., out)`` with ``weight (out, in)``."""
    return F.linear(x, weight, bias)


def relu_stack(
    h: Tensor,
    params: Mapping[str, Any],
    names: Sequence[str],
    *,
    hidden: Callable[[str, Tensor], Tensor] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The linear layers ``params[name]`` of ``names`` in order on ``h (N, in)``, ReLU after every one
    but the last. Returns the last layer's output and the post-ReLU activations ``{name: (N, h_i)}``;
    ``hidden(name, h) -> h`` (e.g. dropout) transforms each hidden output after it is recorded."""
    acts: dict[str, Tensor] = {}
    for name in names[:-1]:
        h = torch.relu(linear(h, params[name]["weight"], params[name]["bias"]))
        acts[name] = h
        if hidden is not None:
            h = hidden(name, h)
    return linear(h, params[names[-1]]["weight"], params[names[-1]]["bias"]), acts


def conv2d(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, *, stride: int = 1, padding: int = 0
) -> Tensor:
    """2-D convolution: ``(N, C_in, H, W) -> (N, C_out, H', W')`` with ``weight (C_out, C_in, k, k)``."""
    return F.conv2d(x, weight, bias, stride=stride, padding=padding)


def conv1d(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, *, stride: int = 1, padding: int = 0
) -> Tensor:
    """1-D convolution: ``(N, C_in, L) -> (N, C_out, L')`` with ``weight (C_out, C_in, k)``."""
    return F.conv1d(x, weight, bias, stride=stride, padding=padding)


def max_pool(x: Tensor, size: int = 2) -> Tensor:
    """Max pooling with window and stride ``size`` over the spatial axes of ``(N, C, H, W)``."""
    return F.max_pool2d(x, size)


def global_avg_pool(x: Tensor) -> Tensor:
    """Mean over every axis after the channel axis: ``(N, C, ...) -> (N, C)``."""
    return reduce(x, "n c ... -> n c", "mean")


def flatten(x: Tensor) -> Tensor:
    """``(N, ...) -> (N, prod(...))`` in C order (a ``(C, H, W)`` map becomes ``c*H*W + h*W + w``).

    A plain reshape, not einops: it runs inside compiled steps, where Dynamo would trace einops'
    pattern parsing on every compile (``bench/compile_latency.py``)."""
    return x.reshape(x.shape[0], -1)


def _per_channel(v: Tensor, ndim: int) -> Tensor:
    """``(C,)`` viewed to broadcast against ``(N, C, ...)`` of ``ndim`` dimensions."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def batch_norm(
    x: Tensor,
    params: Mapping[str, Tensor],
    state: Mapping[str, Tensor],
    *,
    train: bool,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> tuple[Tensor, dict[str, Tensor]]:
    """BatchNorm over axis 1 of ``x (N, C, ...)``, as ``nn.BatchNorm{1,2}d``.

    ``params``: ``weight``, ``bias`` ``(C,)``; ``state``: ``running_mean``, ``running_var`` ``(C,)``.
    Train mode normalises by the batch mean and biased variance over ``N`` and the spatial axes, and
    returns ``running = (1 - momentum) * running + momentum * batch`` (the unbiased variance
    ``var * n / (n - 1)``, ``n = numel / C``; statistics are detached). Eval mode normalises by the
    running statistics and returns ``state`` unchanged.

    Returns ``(y, new_state)`` with ``y`` of ``x``'s shape.
    """
    if train:
        n = x.numel() // x.shape[1]
        if n < 2:
            raise ValueError(
                f"batch_norm: train mode needs more than one value per channel, got input of shape {tuple(x.shape)}"
            )
        mean = reduce(x, "n c ... -> c", "mean")
        centred = x - _per_channel(mean, x.ndim)
        var = reduce(centred * centred, "n c ... -> c", "mean")
        new_state = {
            "running_mean": (1.0 - momentum) * state["running_mean"] + momentum * mean.detach(),
            "running_var": (1.0 - momentum) * state["running_var"] + momentum * var.detach() * (n / (n - 1)),
        }
    else:
        mean, var = state["running_mean"], state["running_var"]
        centred = x - _per_channel(mean, x.ndim)
        new_state = dict(state)
    scale = params["weight"] * torch.rsqrt(var + eps)
    return centred * _per_channel(scale, x.ndim) + _per_channel(params["bias"], x.ndim), new_state


def dropout(x: Tensor, noise: Tensor, p: float) -> Tensor:
    """Inverted dropout driven by caller-drawn noise: ``x * (noise >= p) / (1 - p)``.

    ``noise`` holds ``U[0, 1)`` draws of ``x``'s shape (see :func:`draw_noise`), so each entry is
    kept with probability ``1 - p``. ``p`` must lie in ``[0, 1)``.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must lie in [0, 1), got {p!r}")
    if noise.shape != x.shape:
        raise ValueError(f"dropout: noise has shape {tuple(noise.shape)}, expected {tuple(x.shape)}")
    return x * (noise >= p).to(x.dtype) / (1.0 - p)


def lstm_cell(gates_x: Tensor, h: Tensor, c: Tensor, w_hh: Tensor) -> tuple[Tensor, Tensor]:
    """One LSTM step. ``gates_x (N, 4H)`` is ``x_t @ w_ih.T + b``; ``h, c (N, H)``; ``w_hh (4H, H)``.

    ``i, f, g, o = split(gates_x + h @ w_hh.T)``; ``c' = σ(f) c + σ(i) tanh(g)``;
    ``h' = σ(o) tanh(c')``. Returns ``(h', c')``.
    """
    gates = gates_x + F.linear(h, w_hh)
    i, f, g, o = torch.chunk(gates, 4, dim=-1)
    c_next = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c_next), c_next


def lstm_layer(x: Tensor, params: Mapping[str, Tensor]) -> Tensor:
    """An LSTM layer over a sequence, from zero hidden and cell state.

    ``x (N, T, I)``; ``params`` as :func:`lstm_init`. Returns the hidden states ``(N, T, H)``.
    """
    w_hh = params["w_hh"]
    gates_x = F.linear(x, params["w_ih"], params["b"])
    h = torch.zeros(x.shape[0], w_hh.shape[1], dtype=x.dtype, device=x.device)
    c = h
    outs = []
    for t in range(x.shape[1]):
        h, c = lstm_cell(gates_x[:, t], h, c, w_hh)
        outs.append(h)
    return torch.stack(outs, dim=1)
