"""CIFAR ResNet-20/32/56 (He et al. 2016, section 4.2), depth = 6n + 2.

3x3 conv stem (``conv1``, ``bn1``, ReLU) -> three stages ``layer1..layer3`` of ``n`` BasicBlocks at
widths ``w, 2w, 4w`` (default ``w = 16``) -> global average pool -> ``fc``. A BasicBlock is
``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``; the shortcut is a 1x1 conv + BN
(``shortcut.conv``, ``shortcut.bn``) when the shape changes, else the identity. The first block of
every stage after the first has stride 2; this and the shortcut's presence are all ``apply`` needs
(the rest is read from the param tree).

Params (convs have no bias): ``conv1.weight``, ``bn1.{weight,bias}``,
``layer<s>.<b>.{conv1,conv2}.weight``, ``layer<s>.<b>.{bn1,bn2}.{weight,bias}``,
``layer<s>.<b>.shortcut.{conv.weight, bn.weight, bn.bias}``, ``fc.{weight,bias}``. State: the
``running_mean``/``running_var`` of every BN at the same paths.

Init: convs He et al. (2015) normal ``N(0, 2 / fan_in)`` as the paper cites; BN weight 1, bias 0;
``fc`` PyTorch default (kaiming_uniform a=sqrt(5), bias ``U(±1/sqrt(fan_in))``).

Groups: each block's inner channels ``layer<s>.<b>.conv1`` (conv1 rows, bn1, conv2 input channels),
prunable; each residual stream ``layer<s>`` (the stem or shortcut that starts it, every conv2/bn2 that
adds to it, and every conv1, shortcut conv or ``fc`` that reads it), ``prunable=False``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pure_prune import rng
from pure_prune.groups import ChannelGroup

from . import layers, structure

__all__ = ["apply", "groups", "init"]


def init(
    key: int, *, depth: int = 20, width: int = 16, num_classes: int = 10, in_channels: int = 3
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Params and BN state of ResNet-``depth`` (``depth = 6n + 2``: 20, 32, 56, 110, ...)."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(f"depth must be 6n + 2 with n >= 1 (20, 32, 56, ...), got {depth!r}")
    structure.check_all_sizes(width=width, num_classes=num_classes, in_channels=in_channels)
    n = (depth - 2) // 6
    key_stem, key_fc, *key_blocks = rng.split(key, 2 + 3 * n)
    params: dict[str, Any] = {
        "conv1": {"weight": layers.kaiming_normal(key_stem, (width, in_channels, 3, 3))}
    }
    state: dict[str, Any] = {}
    params["bn1"], state["bn1"] = layers.batch_norm_init(width)
    c_in = width
    for s in range(3):
        c_out = width << s
        for b in range(n):
            path = f"layer{s + 1}.{b}"
            k1, k2, k3 = rng.split(key_blocks[s * n + b], 3)
            params[f"{path}.conv1.weight"] = layers.kaiming_normal(k1, (c_out, c_in, 3, 3))
            params[f"{path}.conv2.weight"] = layers.kaiming_normal(k2, (c_out, c_out, 3, 3))
            for bn in ("bn1", "bn2"):
                params[f"{path}.{bn}"], state[f"{path}.{bn}"] = layers.batch_norm_init(c_out)
            if c_in != c_out or (s > 0 and b == 0):
                params[f"{path}.shortcut.conv.weight"] = layers.kaiming_normal(k3, (c_out, c_in, 1, 1))
                params[f"{path}.shortcut.bn"], state[f"{path}.shortcut.bn"] = layers.batch_norm_init(c_out)
            c_in = c_out
    params["fc"] = layers.dense_init(key_fc, (num_classes, c_in))
    return structure.nest(params), structure.nest(state)


def _blocks(params: dict[str, Any]) -> list[tuple[str, int]]:
    """``(path, stride)`` of every block in forward order: ``("layer2.0", 2)``, ..."""
    out = []
    for s, stage in enumerate(structure.numbered(params, "layer")):
        for b in structure.indexed(params[stage]):
            out.append((f"{stage}.{b}", 2 if s > 0 and b == "0" else 1))
    return out


def _conv_bn(
    x: Tensor, params: dict[str, Any], state: dict[str, Any], conv: str, bn: str, *, stride: int, train: bool
) -> tuple[Tensor, dict[str, Tensor]]:
    """``bn(conv(x))`` with 'same' padding, and the BN's new state."""
    w = structure.get_path(params, f"{conv}.weight")
    y = layers.conv2d(x, w, stride=stride, padding=w.shape[-1] // 2)
    return layers.batch_norm(y, structure.get_path(params, bn), structure.get_path(state, bn), train=train)


def apply(
    params: dict[str, Any], state: dict[str, Any], x: Tensor, *, train: bool, capture: bool = False
) -> tuple[Tensor, dict[str, Any]] | tuple[Tensor, dict[str, Any], dict[str, Tensor]]:
    """Logits ``(N, classes)`` of ``x (N, C, H, W)`` and the new BN state.

    Train mode uses batch statistics and returns updated running statistics; eval mode uses the
    running statistics. ``capture=True`` also returns post-ReLU activations: ``"layer<s>.<b>.conv1"``
    ``(N, C, H, W)`` (a block's inner channels) and ``"layer<s>"`` (the stage's output, its
    residual stream).
    """
    w1 = params["conv1"]["weight"]
    if x.ndim != 4 or x.shape[1] != w1.shape[1]:
        raise ValueError(
            f"input x of shape {tuple(x.shape)} must be (N, {w1.shape[1]}, H, W) for conv1.weight"
        )
    new_state: dict[str, Any] = {}
    acts: dict[str, Tensor] = {}
    h, new_state["bn1"] = _conv_bn(x, params, state, "conv1", "bn1", stride=1, train=train)
    h = torch.relu(h)
    for path, stride in _blocks(params):
        inner, new_state[f"{path}.bn1"] = _conv_bn(
            h, params, state, f"{path}.conv1", f"{path}.bn1", stride=stride, train=train
        )
        inner = torch.relu(inner)
        acts[f"{path}.conv1"] = inner
        out, new_state[f"{path}.bn2"] = _conv_bn(
            inner, params, state, f"{path}.conv2", f"{path}.bn2", stride=1, train=train
        )
        if "shortcut" in structure.get_path(params, path):
            sc = f"{path}.shortcut"
            h, new_state[f"{sc}.bn"] = _conv_bn(
                h, params, state, f"{sc}.conv", f"{sc}.bn", stride=stride, train=train
            )
        h = torch.relu(h + out)
        acts[path.split(".")[0]] = h
    out = layers.linear(layers.global_avg_pool(h), params["fc"]["weight"], params["fc"]["bias"])
    new_state = structure.nest(new_state)
    return (out, new_state, acts) if capture else (out, new_state)


def groups(params: dict[str, Any]) -> tuple[ChannelGroup, ...]:
    """Inner groups ``layer<s>.<b>.conv1`` (prunable) and stream groups ``layer<s>`` (not prunable).

    A stream starts at the stem and at every block with a shortcut conv; it is named after the
    last stage whose blocks add to it.
    """
    inner: list[ChannelGroup] = []
    streams: list[ChannelGroup] = []
    name, size = "conv1", params["conv1"]["weight"].shape[0]
    members = structure.out_members(params, "conv1", "bn1")
    for path, _ in _blocks(params):
        block = structure.get_path(params, path)
        members.append(structure.in_member(params, f"{path}.conv1", size))
        if "shortcut" in block:  # the block reads the old stream and starts a new one
            members.append(structure.in_member(params, f"{path}.shortcut.conv", size))
            streams.append(ChannelGroup(name, size, tuple(members), prunable=False))
            size = block["shortcut"]["conv"]["weight"].shape[0]
            members = structure.out_members(params, f"{path}.shortcut.conv", f"{path}.shortcut.bn")
        width = block["conv1"]["weight"].shape[0]
        producers = structure.out_members(params, f"{path}.conv1", f"{path}.bn1")
        consumer = structure.in_member(params, f"{path}.conv2", width)
        inner.append(ChannelGroup(f"{path}.conv1", width, (*producers, consumer)))
        members += structure.out_members(params, f"{path}.conv2", f"{path}.bn2")
        name = path.split(".")[0]
    members.append(structure.in_member(params, "fc", size))
    streams.append(ChannelGroup(name, size, tuple(members), prunable=False))
    return tuple(inner) + tuple(streams)
