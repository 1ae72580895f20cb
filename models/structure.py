"""Reading a model's architecture from its param tree, and building its channel groups.

Models keep their structure in their keys: numbered layers (``"fc1"``, ``"fc2"``, ...), indexed
blocks (``"0"``, ``"1"``, ...). These helpers list them in numeric order, look leaves up by dotted
path, build nested state from dotted paths, and write the :class:`~pure_prune.groups.Member` lists of
a unit group.

Member conventions used by every model:

* producers (the layer that computes the units): its weight on axis 0 with ``score=True``, its bias
  and its BatchNorm ``weight``/``bias`` on axis 0 with ``score=False``;
* BatchNorm running statistics live in ``state``; they are members with paths prefixed
  ``"state."`` (``"state.bn1.running_mean"``), ``score=False``;
* consumers (the next layer's input axis, ``inner = H*W`` when a map is flattened into a linear)
  have ``score=False``. A unit's structured score therefore comes from its own weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from pure_prune import tree
from pure_prune.groups import ChannelGroup, Member

__all__ = [
    "check_all_sizes",
    "check_features",
    "check_sizes",
    "chain_groups",
    "get_path",
    "in_member",
    "indexed",
    "nest",
    "numbered",
    "out_members",
]


def numbered(node: Mapping[str, Any], prefix: str) -> list[str]:
    """Keys of ``node`` spelled ``prefix`` + a decimal number, in numeric order (``fc2`` before ``fc10``)."""
    found = [k for k in node if k.startswith(prefix) and k[len(prefix) :].isdigit()]
    return sorted(found, key=lambda k: int(k[len(prefix) :]))


def indexed(node: Mapping[str, Any]) -> list[str]:
    """Keys of ``node`` that are decimal numbers (``"0"``, ``"1"``, ...), in numeric order."""
    return sorted((k for k in node if k.isdigit()), key=int)


def get_path(node: Mapping[str, Any], path: str) -> Any:
    """The entry of the nested dict ``node`` at dotted ``path``; ``KeyError`` naming the path if absent."""
    out: Any = node
    for part in path.split("."):
        if not isinstance(out, Mapping) or part not in out:
            raise KeyError(f"no entry {path!r} in the tree (missing {part!r})")
        out = out[part]
    return out


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """A canonical nested dict from ``{dotted path: value}``; ``{"a.b": v}`` becomes ``{"a": {"b": v}}``.

    Values are placed as they are (a dict value becomes a subtree). Raises ``ValueError`` when a
    path is given twice or runs through another path's value.
    """
    out: dict[str, Any] = {}
    for path, value in flat.items():
        node = out
        parts = path.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"nest: {path!r} runs through a leaf at {part!r}")
        if parts[-1] in node:
            raise ValueError(f"nest: path {path!r} clashes with an earlier path")
        node[parts[-1]] = value
    return tree.canonical(out)


def out_members(params: Mapping[str, Any], layer: str, bn: str | None = None) -> list[Member]:
    """Members that produce the units of ``layer``: its weight and bias on axis 0, and BatchNorm ``bn``.

    ``bn`` adds ``bn.weight``, ``bn.bias`` and the state members ``state.bn.running_mean``,
    ``state.bn.running_var``. Only ``layer.weight`` has ``score=True``.
    """
    node = get_path(params, layer)
    members = [Member(f"{layer}.weight", 0)]
    if "bias" in node:
        members.append(Member(f"{layer}.bias", 0, score=False))
    if bn is not None:
        get_path(params, bn)
        members += [Member(f"{bn}.{leaf}", 0, score=False) for leaf in ("weight", "bias")]
        members += [Member(f"state.{bn}.{leaf}", 0, score=False) for leaf in ("running_mean", "running_var")]
    return members


def in_member(params: Mapping[str, Any], layer: str, units: int) -> Member:
    """The input axis (1) of ``layer.weight`` as a consumer of ``units`` units.

    ``inner = in_features // units``: 1 for a conv or a linear after a vector, ``H*W`` for a linear
    fed by a flattened ``(units, H, W)`` map. ``ValueError`` when ``units`` does not divide it.
    """
    shape = tuple(get_path(params, f"{layer}.weight").shape)
    if units <= 0 or shape[1] % units != 0:
        raise ValueError(f"{layer}.weight of shape {shape} cannot consume {units} units on axis 1")
    return Member(f"{layer}.weight", 1, inner=shape[1] // units, score=False)


def chain_groups(
    params: Mapping[str, Any], layers: Sequence[str], bns: Sequence[str | None] | None = None
) -> tuple[ChannelGroup, ...]:
    """Groups of a plain chain ``layers[0] -> layers[1] -> ...``: one per layer but the last.

    Group ``layers[i]`` has ``layers[i].weight.shape[0]`` units; members are :func:`out_members` of
    ``layers[i]`` (with BatchNorm ``bns[i]`` when given) and :func:`in_member` of ``layers[i + 1]``.
    """
    bns = [None] * len(layers) if bns is None else list(bns)
    if len(bns) != len(layers):
        raise ValueError(f"chain_groups: {len(layers)} layers but {len(bns)} batch norms")
    out = []
    for i in range(len(layers) - 1):
        size = get_path(params, f"{layers[i]}.weight").shape[0]
        members = out_members(params, layers[i], bns[i]) + [in_member(params, layers[i + 1], size)]
        out.append(ChannelGroup(layers[i], size, tuple(members)))
    return tuple(out)


def check_features(
    x: torch.Tensor, expected: int, weight_path: str, weight: torch.Tensor, *, what: str = "input x"
) -> None:
    """``ValueError`` unless ``x (N, ...)`` is floating with ``prod(x.shape[1:]) == expected``.

    The message names ``what`` (the tensor checked) and ``weight_path`` with its shape, the leaf
    that fixes the expected size.
    """
    if not torch.is_floating_point(x):
        raise TypeError(f"{what} must be a floating tensor, got dtype {x.dtype}")
    got = 1
    for d in x.shape[1:]:
        got *= d
    if x.ndim < 2 or got != expected:
        raise ValueError(
            f"{what} of shape {tuple(x.shape)} has {got} values per sample, but {weight_path} of shape "
            f"{tuple(weight.shape)} expects {expected}"
        )


def check_sizes(name: str, values: Any, *, min_len: int = 1) -> tuple[int, ...]:
    """``values`` (an int or a sequence of ints) as a tuple of positive ints, or ``ValueError``/``TypeError``.

    ``name`` is the config key named in the message; at least ``min_len`` entries are required.
    """
    seq = (values,) if isinstance(values, int) else values
    if not isinstance(seq, Sequence) or isinstance(seq, str):
        raise TypeError(f"{name} must be an int or a sequence of ints, got {values!r}")
    if any(isinstance(v, bool) or not isinstance(v, int) for v in seq):
        raise TypeError(f"{name} must hold ints, got {values!r}")
    if len(seq) < min_len or any(v <= 0 for v in seq):
        raise ValueError(f"{name} must hold at least {min_len} positive ints, got {values!r}")
    return tuple(seq)


def check_all_sizes(**values: Any) -> None:
    """:func:`check_sizes` of each keyword (a config key and its int or ints), in the order given."""
    for name, v in values.items():
        check_sizes(name, v)
