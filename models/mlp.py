"""Multi-layer perceptron with ReLU: ``sizes = (in, h1, ..., hk, out)``.

Params: ``{"fc1": {"weight": (h1, in), "bias": (h1,)}, ..., "fc<k+1>": {"weight": (out, hk), ...}}``;
state ``{}``. Inputs of any shape ``(N, ...)`` are flattened to ``(N, in)``. Registered presets:
``"mlp"`` (64-256-256-10, sklearn digits) and ``"lenet300"`` (LeNet-300-100, 784-300-100-10).

Init: PyTorch's ``nn.Linear`` default, weights ``U(±1/sqrt(fan_in))`` (kaiming_uniform, a=sqrt(5))
and biases ``U(±1/sqrt(fan_in))``.

Groups: the units of every hidden layer ``fc<i>`` (rows of ``fc<i>``, columns of ``fc<i+1>``);
the output layer is not a group.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from pure_prune import rng, tree
from pure_prune.groups import ChannelGroup

from . import layers, structure

__all__ = ["apply", "groups", "init"]


def init(key: int, *, sizes: tuple[int, ...] = (64, 256, 256, 10)) -> tuple[dict[str, Any], dict[str, Any]]:
    """Params and (empty) state of an MLP with layer widths ``sizes`` (at least input and output)."""
    sizes = structure.check_sizes("sizes", sizes, min_len=2)
    keys = rng.split(key, len(sizes) - 1)
    params = {f"fc{i + 1}": layers.dense_init(k, (sizes[i + 1], sizes[i])) for i, k in enumerate(keys)}
    return tree.canonical(params), {}


def apply(
    params: dict[str, Any], state: dict[str, Any], x: Tensor, *, train: bool, capture: bool = False
) -> tuple[Tensor, dict[str, Any]] | tuple[Tensor, dict[str, Any], dict[str, Tensor]]:
    """Logits ``(N, out)`` of ``x (N, ...)``; ``state`` is returned unchanged (no buffers).

    ``capture=True`` also returns ``{"fc<i>": (N, h_i)}``, the post-ReLU hidden activations.
    ``train`` has no effect (no dropout or BatchNorm).
    """
    names = structure.numbered(params, "fc")
    first = params[names[0]]["weight"]
    structure.check_features(x, first.shape[1], f"{names[0]}.weight", first)
    out, acts = layers.relu_stack(layers.flatten(x), params, names)
    return (out, state, acts) if capture else (out, state)


def groups(params: dict[str, Any]) -> tuple[ChannelGroup, ...]:
    """One prunable group per hidden layer ``fc<i>``: ``fc<i>.weight`` rows, ``fc<i>.bias``, ``fc<i+1>`` columns."""
    return structure.chain_groups(params, structure.numbered(params, "fc"))
