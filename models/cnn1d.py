"""1-D CNN for MNIST-1D (Greydanus 2020): inputs ``(N, 40)`` or ``(N, 1, 40)``.

``conv1..conv3``: 32 channels, kernel 5, stride 2, padding 2, ReLU (length 40 -> 20 -> 10 -> 5) ->
flatten (32*5) -> ``fc1`` -> 10 classes. Any number of ``conv<i>`` and ``fc<i>`` layers is read from
the param tree; every conv has stride 2 and padding ``k // 2``.

Params: ``conv<i>.{weight (C_out, C_in, k), bias}``, ``fc<i>.{weight (out, in), bias}``; state ``{}``.

Init: PyTorch defaults (weights kaiming_uniform a=sqrt(5), biases ``U(±1/sqrt(fan_in))``).

Groups: every conv's channels (next conv's input channels, or ``fc1`` columns with ``inner`` = the
final length) and every hidden fc layer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pure_prune import rng, tree
from pure_prune.groups import ChannelGroup

from . import layers, structure
from .conv import fc_head

__all__ = ["apply", "groups", "init"]


def init(
    key: int,
    *,
    channels: tuple[int, ...] = (32, 32, 32),
    kernel: int = 5,
    length: int = 40,
    hidden: tuple[int, ...] = (),
    num_classes: int = 10,
    in_channels: int = 1,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Params and (empty) state; ``length`` (the input length) fixes ``fc1``'s input size."""
    channels = structure.check_sizes("channels", channels)
    hidden = structure.check_sizes("hidden", hidden, min_len=0)
    structure.check_all_sizes(kernel=kernel, length=length, num_classes=num_classes, in_channels=in_channels)
    out_len = length
    for _ in channels:
        out_len = (out_len + 2 * (kernel // 2) - kernel) // 2 + 1
    widths = (channels[-1] * out_len, *hidden, num_classes)
    cin = (in_channels, *channels)
    keys = rng.split(key, len(channels) + len(widths) - 1)
    params = {f"conv{i + 1}": layers.dense_init(keys[i], (c, cin[i], kernel)) for i, c in enumerate(channels)}
    for i in range(len(widths) - 1):
        params[f"fc{i + 1}"] = layers.dense_init(keys[len(channels) + i], (widths[i + 1], widths[i]))
    return tree.canonical(params), {}


def apply(
    params: dict[str, Any], state: dict[str, Any], x: Tensor, *, train: bool, capture: bool = False
) -> tuple[Tensor, dict[str, Any]] | tuple[Tensor, dict[str, Any], dict[str, Tensor]]:
    """Logits ``(N, classes)`` of ``x (N, L)`` or ``(N, C, L)``; ``state`` is returned unchanged.

    ``capture=True`` also returns post-ReLU activations ``"conv<i>" (N, C_i, L_i)`` and
    ``"fc<i>" (N, h_i)`` (hidden fcs). ``train`` has no effect.
    """
    convs = structure.numbered(params, "conv")
    w1 = params[convs[0]]["weight"]
    h = x[:, None] if x.ndim == 2 else x
    if h.ndim != 3 or h.shape[1] != w1.shape[1]:
        raise ValueError(
            f"input x of shape {tuple(x.shape)} must be (N, L) or (N, {w1.shape[1]}, L) for {convs[0]}.weight"
        )
    acts: dict[str, Tensor] = {}
    for name in convs:
        w = params[name]["weight"]
        h = torch.relu(layers.conv1d(h, w, params[name]["bias"], stride=2, padding=w.shape[-1] // 2))
        acts[name] = h
    out, fc_acts = fc_head(params, h, tuple(x.shape))
    return (out, state, {**acts, **fc_acts}) if capture else (out, state)


def groups(params: dict[str, Any]) -> tuple[ChannelGroup, ...]:
    """Prunable groups ``conv<i>`` and hidden ``fc<i>`` (every layer but the output)."""
    return structure.chain_groups(
        params, structure.numbered(params, "conv") + structure.numbered(params, "fc")
    )
