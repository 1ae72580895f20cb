"""VGG-11 / VGG-16 (Simonyan & Zisserman 2015, configurations A / D) with BatchNorm, for 32x32 inputs.

Five blocks of 3x3 conv -> BN -> ReLU, each block followed by a 2x2 max-pool (32 -> 1):
A ``[64] [128] [256 256] [512 512] [512 512]``, D ``[64 64] [128 128] [256 256 256] [512 512 512]
[512 512 512]``, scaled by ``width / 64``. Classifier (a CIFAR variant): ``fc1`` 512 -> 512 hidden
units -> ReLU -> dropout -> ``fc2`` -> classes.

Params: ``block<b>.<i>.conv.weight (C_out, C_in, 3, 3)`` (no bias: BN follows),
``block<b>.<i>.bn.{weight, bias}``, ``fc1``, ``fc2`` ``{"weight", "bias"}``; state:
``block<b>.<i>.bn.{running_mean, running_var}``. ``apply`` pools after every block.

Dropout is pure: the caller draws the uniform noise (:func:`draw_noise`) outside any transform and passes
it as ``apply(..., noise=...)`` with the rate ``dropout`` (default 0.5). Without noise, or in eval
mode, there is no dropout.

Init: PyTorch defaults (weights kaiming_uniform a=sqrt(5), fc biases ``U(±1/sqrt(fan_in))``);
BN weight 1, bias 0.

Groups: every conv's channels (``conv`` rows, ``bn`` params and state, next conv's input channels or
``fc1`` columns) and the hidden units of ``fc1``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from pure_prune import rng
from pure_prune.groups import ChannelGroup

from . import layers, structure
from .conv import fc_head

__all__ = ["CONFIGS", "apply", "groups", "draw_noise", "init", "noise_shapes"]

CONFIGS: Mapping[int, tuple[tuple[int, ...], ...]] = MappingProxyType(
    {
        11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
        16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    }
)


def init(
    key: int,
    *,
    depth: int = 11,
    width: int = 64,
    hidden: int = 512,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Params and BN state of VGG-``depth`` (11 or 16) with first-block width ``width``."""
    if depth not in CONFIGS:
        raise ValueError(f"depth must be one of {sorted(CONFIGS)}, got {depth!r}")
    structure.check_all_sizes(width=width, hidden=hidden, num_classes=num_classes, in_channels=in_channels)
    side = structure.check_sizes("image_size", image_size)[0] // 32
    if side == 0 or image_size % 32 != 0:
        raise ValueError(f"image_size must be a multiple of 32 (five 2x2 poolings), got {image_size}")
    cfg = [[c * width // 64 for c in block] for block in CONFIGS[depth]]
    n_convs = sum(len(b) for b in cfg)
    keys = iter(rng.split(key, n_convs + 2))
    params: dict[str, Any] = {}
    state: dict[str, Any] = {}
    c_in = in_channels
    for b, block in enumerate(cfg):
        for i, c_out in enumerate(block):
            path = f"block{b + 1}.{i}"
            bn_params, bn_state = layers.batch_norm_init(c_out)
            params[path] = {
                "conv": layers.dense_init(next(keys), (c_out, c_in, 3, 3), bias=None),
                "bn": bn_params,
            }
            state[f"{path}.bn"] = bn_state
            c_in = c_out
    params["fc1"] = layers.dense_init(next(keys), (hidden, c_in * side * side))
    params["fc2"] = layers.dense_init(next(keys), (num_classes, hidden))
    return structure.nest(params), structure.nest(state)


def _convs(params: dict[str, Any]) -> list[str]:
    """Dotted paths ``block<b>.<i>`` of every conv unit, in forward order."""
    return [f"{b}.{i}" for b in structure.numbered(params, "block") for i in structure.indexed(params[b])]


def noise_shapes(params: dict[str, Any], batch_size: int) -> dict[str, tuple[int, ...]]:
    """Shapes of the dropout noise for a batch: ``{"fc<i>": (batch_size, h_i)}`` for every hidden fc."""
    fcs = structure.numbered(params, "fc")
    return {name: (batch_size, params[name]["weight"].shape[0]) for name in fcs[:-1]}


def draw_noise(key: int, params: dict[str, Any], batch_size: int) -> dict[str, Tensor]:
    """Uniform ``[0, 1)`` dropout noise for ``apply(..., noise=...)``, drawn from ``key``."""
    return layers.draw_noise(key, noise_shapes(params, batch_size))


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
    """Logits ``(N, classes)`` of ``x (N, C, H, W)`` and the new BN state.

    Train mode uses batch statistics and returns updated running statistics; eval mode uses the
    running statistics. ``noise`` (train mode only): ``{"fc<i>": (N, h_i)}`` uniform draws from
    :func:`draw_noise`; units with ``noise < dropout`` are dropped and the rest scaled by
    ``1 / (1 - dropout)``. ``capture=True`` also returns post-ReLU activations
    ``{"block<b>.<i>.conv": (N, C, H, W), "fc<i>": (N, h_i)}`` (before pooling and dropout).
    """
    convs = _convs(params)
    w1 = structure.get_path(params, f"{convs[0]}.conv.weight")
    if x.ndim != 4 or x.shape[1] != w1.shape[1]:
        raise ValueError(
            f"input x of shape {tuple(x.shape)} must be (N, {w1.shape[1]}, H, W) for {convs[0]}.conv.weight"
        )
    if noise is not None and train:
        layers.check_noise(noise, noise_shapes(params, x.shape[0]))
    acts: dict[str, Tensor] = {}
    new_state: dict[str, Any] = {}
    h = x
    for path in convs:
        block, i = path.split(".")
        p = params[block][i]
        h, new_state[f"{path}.bn"] = layers.batch_norm(
            layers.conv2d(h, p["conv"]["weight"], padding=1), p["bn"], state[block][i]["bn"], train=train
        )
        h = torch.relu(h)
        acts[f"{path}.conv"] = h
        if i == structure.indexed(params[block])[-1]:
            h = layers.max_pool(h)
    drop = None if noise is None or not train else (lambda name, v: layers.dropout(v, noise[name], dropout))
    out, fc_acts = fc_head(params, h, tuple(x.shape), hidden=drop)
    new_state = structure.nest(new_state)
    return (out, new_state, {**acts, **fc_acts}) if capture else (out, new_state)


def groups(params: dict[str, Any]) -> tuple[ChannelGroup, ...]:
    """Prunable groups ``block<b>.<i>.conv`` (conv + BN channels) and ``fc1`` (hidden units)."""
    convs = _convs(params)
    fcs = structure.numbered(params, "fc")
    return structure.chain_groups(
        params, [f"{c}.conv" for c in convs] + fcs, [f"{c}.bn" for c in convs] + [None] * len(fcs)
    )
