"""LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling, for ``(N, 1, 28, 28)`` images.

``conv1`` 6@5x5 (padding 2) -> ReLU -> 2x2 max-pool -> ``conv2`` 16@5x5 (no padding) -> ReLU ->
2x2 max-pool -> flatten (16*5*5) -> ``fc1`` 120 -> ReLU -> ``fc2`` 84 -> ReLU -> ``fc3`` 10.

Params: ``conv1``, ``conv2`` ``{"weight": (C_out, C_in, 5, 5), "bias"}``, ``fc1..fc3``
``{"weight": (out, in), "bias"}``; state ``{}``. The padding of ``conv1`` is ``k // 2``; the
spatial size is read from the input, so ``fc1``'s input size must match it.

Init: PyTorch defaults (weights kaiming_uniform a=sqrt(5), biases ``U(±1/sqrt(fan_in))``).

Groups: ``conv1`` (6 channels; ``conv2`` input channels), ``conv2`` (16 channels; ``fc1`` columns
with ``inner = 5*5``), ``fc1`` and ``fc2``.
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
    in_channels: int = 1,
    image_size: int = 28,
    channels: tuple[int, int] = (6, 16),
    hidden: tuple[int, ...] = (120, 84),
    num_classes: int = 10,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Params and (empty) state; ``image_size`` (square) fixes ``fc1``'s input size."""
    c1, c2 = structure.check_sizes("channels", channels, min_len=2)
    hidden = structure.check_sizes("hidden", hidden, min_len=0)
    structure.check_sizes("in_channels", in_channels)
    structure.check_sizes("num_classes", num_classes)
    side = (structure.check_sizes("image_size", image_size)[0] // 2 - 4) // 2
    if side <= 0:
        raise ValueError(f"image_size={image_size} is too small for LeNet-5 (needs at least 12)")
    widths = (c2 * side * side, *hidden, num_classes)
    keys = rng.split(key, 2 + len(widths) - 1)
    params = {
        "conv1": layers.dense_init(keys[0], (c1, in_channels, 5, 5)),
        "conv2": layers.dense_init(keys[1], (c2, c1, 5, 5)),
    }
    for i in range(len(widths) - 1):
        params[f"fc{i + 1}"] = layers.dense_init(keys[2 + i], (widths[i + 1], widths[i]))
    return tree.canonical(params), {}


def apply(
    params: dict[str, Any], state: dict[str, Any], x: Tensor, *, train: bool, capture: bool = False
) -> tuple[Tensor, dict[str, Any]] | tuple[Tensor, dict[str, Any], dict[str, Tensor]]:
    """Logits ``(N, classes)`` of images ``x (N, C, H, W)``; ``state`` is returned unchanged.

    ``capture=True`` also returns post-ReLU activations ``{"conv1": (N, 6, H, W), "conv2":
    (N, 16, H', W'), "fc1": (N, 120), "fc2": (N, 84)}`` (before pooling). ``train`` has no effect.
    """
    w1 = params["conv1"]["weight"]
    if x.ndim != 4 or x.shape[1] != w1.shape[1]:
        raise ValueError(
            f"input x of shape {tuple(x.shape)} must be (N, {w1.shape[1]}, H, W) for conv1.weight"
        )
    acts: dict[str, Tensor] = {}
    h = torch.relu(layers.conv2d(x, w1, params["conv1"]["bias"], padding=w1.shape[-1] // 2))
    acts["conv1"] = h
    h = torch.relu(layers.conv2d(layers.max_pool(h), params["conv2"]["weight"], params["conv2"]["bias"]))
    acts["conv2"] = h
    out, fc_acts = fc_head(params, layers.max_pool(h), tuple(x.shape))
    return (out, state, {**acts, **fc_acts}) if capture else (out, state)


def groups(params: dict[str, Any]) -> tuple[ChannelGroup, ...]:
    """Prunable groups ``conv1``, ``conv2``, ``fc1``, ... (every layer but the output)."""
    return structure.chain_groups(params, ["conv1", "conv2", *structure.numbered(params, "fc")])
