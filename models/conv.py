"""Conv-2 / Conv-4 / Conv-6 of the lottery-ticket paper (Frankle & Carbin 2019), for ``(N, 3, 32, 32)``.

Convolutions are 3x3 with 'same' padding and ReLU, in pairs, each pair followed by a 2x2 max-pool:
Conv-2 ``[64, 64, pool]``, Conv-4 ``+ [128, 128, pool]``, Conv-6 ``+ [256, 256, pool]``; then
``fc`` 256 -> 256 -> 10 with ReLU. ``width`` (default 64) scales the channel counts (w, 2w, 4w).

Params: ``conv1..conv<depth>`` ``{"weight": (C_out, C_in, 3, 3), "bias": (C_out,)}``,
``fc1..fc3`` ``{"weight": (out, in), "bias"}``; state ``{}``. ``apply`` pools after every second
convolution; the spatial size is read from the input.

Init (as the paper): Gaussian Glorot weights, ``N(0, 2 / (fan_in + fan_out))``; biases zero.

Groups: every conv (next conv's input channels, or ``fc1`` columns with ``inner = H*W``) and every
hidden fc layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from pure_prune import rng, tree
from pure_prune.groups import ChannelGroup

from . import layers, structure

__all__ = ["apply", "fc_head", "groups", "init"]


def init(
    key: int,
    *,
    depth: int = 2,
    width: int = 64,
    hidden: tuple[int, ...] = (256, 256),
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Params and (empty) state of Conv-``depth`` (2, 4 or 6); ``image_size`` fixes ``fc1``'s input size."""
    if depth not in (2, 4, 6):
        raise ValueError(f"depth must be 2, 4 or 6, got {depth!r}")
    structure.check_all_sizes(width=width, num_classes=num_classes, in_channels=in_channels)
    hidden = structure.check_sizes("hidden", hidden, min_len=0)
    side = structure.check_sizes("image_size", image_size)[0] >> (depth // 2)
    if side <= 0:
        raise ValueError(f"image_size={image_size} is too small for {depth // 2} poolings")
    channels = [in_channels] + [width << (i // 2) for i in range(depth)]
    widths = (channels[-1] * side * side, *hidden, num_classes)
    keys = rng.split(key, depth + len(widths) - 1)
    params = {
        f"conv{i + 1}": layers.dense_init(
            keys[i], (channels[i + 1], channels[i], 3, 3), weight="glorot_normal", bias="zeros"
        )
        for i in range(depth)
    }
    for i in range(len(widths) - 1):
        params[f"fc{i + 1}"] = layers.dense_init(
            keys[depth + i], (widths[i + 1], widths[i]), weight="glorot_normal", bias="zeros"
        )
    return tree.canonical(params), {}


def apply(
    params: dict[str, Any], state: dict[str, Any], x: Tensor, *, train: bool, capture: bool = False
) -> tuple[Tensor, dict[str, Any]] | tuple[Tensor, dict[str, Any], dict[str, Tensor]]:
    """Logits ``(N, classes)`` of images ``x (N, C, H, W)``; ``state`` is returned unchanged.

    ``capture=True`` also returns post-ReLU activations: ``"conv<i>"`` ``(N, C_i, H_i, W_i)``
    (before pooling) and ``"fc<i>"`` ``(N, h_i)``. ``train`` has no effect.
    """
    convs = structure.numbered(params, "conv")
    w1 = params[convs[0]]["weight"]
    if x.ndim != 4 or x.shape[1] != w1.shape[1]:
        raise ValueError(
            f"input x of shape {tuple(x.shape)} must be (N, {w1.shape[1]}, H, W) for {convs[0]}.weight"
        )
    acts: dict[str, Tensor] = {}
    h = x
    for i, name in enumerate(convs):
        p = params[name]
        h = torch.relu(layers.conv2d(h, p["weight"], p["bias"], padding=p["weight"].shape[-1] // 2))
        acts[name] = h
        if i % 2 == 1:
            h = layers.max_pool(h)
    out, fc_acts = fc_head(params, h, tuple(x.shape))
    return (out, state, {**acts, **fc_acts}) if capture else (out, state)


def fc_head(
    params: dict[str, Any],
    h: Tensor,
    x_shape: tuple[int, ...],
    *,
    hidden: Callable[[str, Tensor], Tensor] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The classifier after the convolutions: flatten ``h (N, ...)`` and run ``fc1 .. fc<k>`` (ReLU
    on every layer but the last, :func:`~models.layers.relu_stack`). ``x_shape`` (the model input's
    shape) names the input in the error raised when the flattened width does not fit ``fc1.weight``;
    ``hidden(name, h) -> h`` transforms each hidden activation after it is recorded (VGG's dropout).

    Returns the logits ``(N, classes)`` and the hidden activations ``{"fc<i>": (N, h_i)}``."""
    fcs = structure.numbered(params, "fc")
    h = layers.flatten(h)
    w_fc = params[fcs[0]]["weight"]
    structure.check_features(h, w_fc.shape[1], f"{fcs[0]}.weight", w_fc, what=f"x {x_shape} flattened")
    return layers.relu_stack(h, params, fcs, hidden=hidden)


def groups(params: dict[str, Any]) -> tuple[ChannelGroup, ...]:
    """Prunable groups ``conv1..conv<depth>``, ``fc1``, ... (every layer but the output)."""
    return structure.chain_groups(
        params, structure.numbered(params, "conv") + structure.numbered(params, "fc")
    )
