"""Hypothesis strategies for models: hand-built channel networks and batches that fit a model.

* :func:`channel_nets`: MLP-like parameter trees (optional conv stem and gated cell) with their
  :class:`~pure_prune.groups.ChannelGroup` tuple;
* :func:`batches`: ``(x, y)`` batches for a model of :mod:`pure_prune.models` in its default
  config (float inputs or token ids, labels in ``[0, num_outputs)``).

Needs ``hypothesis``; re-exported by :mod:`pure_prune.testing.strategies`.
"""

from __future__ import annotations

import zlib
from typing import Any

import torch
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from pure_prune import rng, tree
from pure_prune.groups import ChannelGroup, Member
from pure_prune.testing.tensor_strategies import keys

__all__ = ["batches", "channel_nets"]


# ------------------------------------------------------------------------------ channel networks
@st.composite
def channel_nets(
    draw: st.DrawFn,
    *,
    max_hidden: int = 3,
    max_width: int = 5,
    conv_stem: bool | None = None,
    gated: bool | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[dict[str, Any], tuple[ChannelGroup, ...]]:
    """Hand-built MLP-like parameter trees with their channel groups: ``(params, groups)``.

    ``[conv stem] -> fc0 -> ... -> fc{k-1} -> [gated cell] -> head``:

    * conv stem ``conv.weight (C, cin, 2, 2)``, ``conv.bias (C,)`` flattened from a ``(C, H, W)``
      map into ``fc0.weight (h0, C·H·W)``: group ``"conv"`` with member ``inner = H·W``;
    * hidden linears ``fc{i}.weight (h_i, h_{i-1})``, ``fc{i}.bias (h_i,)``: group ``"fc{i}"``
      (rows of fc{i}, its bias, columns of the next layer);
    * gated cell ``cell.w_ih (4H, ·)``, ``cell.w_hh (4H, H)``: group ``"cell"`` with the stacked
      gate rows as members with ``outer=4``, plus the ``w_hh`` and ``head.weight`` columns.
    """
    use_conv = draw(st.booleans()) if conv_stem is None else conv_stem
    use_gate = draw(st.booleans()) if gated is None else gated
    key = draw(keys())
    width = st.integers(1, max_width)
    params: dict[str, Any] = {}
    groups: list[ChannelGroup] = []

    def leaf(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        return rng.normal(rng.fold_in(key, zlib.crc32(name.encode())), shape).to(dtype)

    prev_members: list[Member] = []  # members of the group feeding the next layer (minus its consumer)
    prev_name, prev_size, fan_in = None, 0, draw(width)
    if use_conv:
        c, hw = draw(width), draw(st.integers(1, 4))
        params["conv"] = {"bias": leaf("conv.bias", (c,)), "weight": leaf("conv.weight", (c, fan_in, 2, 2))}
        prev_name, prev_size, fan_in = "conv", c, c * hw
        prev_members = [Member("conv.weight", 0), Member("conv.bias", 0)]
        inner = hw
    else:
        inner = 1
    n_hidden = draw(st.integers(1, max_hidden))
    for i in range(n_hidden):
        h, name = draw(width), f"fc{i}"
        params[name] = {"bias": leaf(f"{name}.bias", (h,)), "weight": leaf(f"{name}.weight", (h, fan_in))}
        if prev_name is not None:
            consumer = Member(f"{name}.weight", 1, inner=inner)
            groups.append(ChannelGroup(prev_name, prev_size, (*prev_members, consumer)))
        prev_name, prev_size, fan_in, inner = name, h, h, 1
        prev_members = [Member(f"{name}.weight", 0), Member(f"{name}.bias", 0)]
    if use_gate:
        hid = draw(width)
        params["cell"] = {
            "w_hh": leaf("cell.w_hh", (4 * hid, hid)),
            "w_ih": leaf("cell.w_ih", (4 * hid, fan_in)),
        }
        groups.append(ChannelGroup(prev_name, prev_size, (*prev_members, Member("cell.w_ih", 1))))
        prev_name, prev_size, fan_in = "cell", hid, hid
        prev_members = [
            Member("cell.w_ih", 0, outer=4),
            Member("cell.w_hh", 0, outer=4),
            Member("cell.w_hh", 1),
        ]
    out = draw(width)
    params["head"] = {"bias": leaf("head.bias", (out,)), "weight": leaf("head.weight", (out, fan_in))}
    groups.append(ChannelGroup(prev_name, prev_size, (*prev_members, Member("head.weight", 1))))
    return tree.canonical(params), tuple(groups)


# -------------------------------------------------------------------------------------- batches
_VOCAB_KEYS = ("vocab", "vocab_size", "num_tokens")


def _num_outputs(spec: Any, shape: tuple[int, ...], dtype: torch.dtype, vocab: int | None) -> int:
    """Classes of a model: ``num_classes`` in its config, its vocabulary, else read off one forward
    pass of the default model (``init(0)``, one all-zero example)."""
    cfg = spec.default_cfg
    if "num_classes" in cfg:
        return int(cfg["num_classes"])
    if vocab is not None:
        return vocab
    params, state = spec.init(0)
    out = spec.apply(params, state, torch.zeros((1, *shape), dtype=dtype), train=False)
    return int(out[0].shape[-1])


def batches(
    spec: Any,
    *,
    min_size: int = 1,
    max_size: int = 4,
    num_outputs: int | None = None,
) -> st.SearchStrategy[tuple[torch.Tensor, torch.Tensor]]:
    """``(x, y)`` batches that fit a model of :mod:`pure_prune.models` in its default config.

    ``spec`` is a ``ModelSpec`` (``.input_shape``: one example's shape; ``.default_cfg``; optional
    ``.input_dtype``, default float32). ``x`` has shape ``(B, *input_shape)``, ``min_size <= B <=
    max_size``: standard-normal floats, or, for an integer ``input_dtype``, token ids in
    ``[0, vocab)`` (``vocab`` from ``default_cfg``: ``vocab``, ``vocab_size`` or ``num_tokens``).
    ``y`` is int64 labels in ``[0, num_outputs)``: shape ``(B,)`` for float inputs, the shape of
    ``x`` (next-token targets) for token inputs. ``num_outputs`` defaults to ``default_cfg``'s
    ``num_classes``, else the vocabulary, else the last axis of the default model's output.
    """
    shape = tuple(int(d) for d in spec.input_shape)
    dtype = getattr(spec, "input_dtype", torch.float32)
    tokens = not (dtype.is_floating_point or dtype.is_complex)
    vocab = next((int(spec.default_cfg[k]) for k in _VOCAB_KEYS if k in spec.default_cfg), None)
    if tokens and vocab is None:
        raise InvalidArgument(
            f"batches: model {getattr(spec, 'name', spec)!r} takes {dtype} tokens but its default_cfg "
            f"{sorted(spec.default_cfg)} names no vocabulary ({', '.join(_VOCAB_KEYS)})"
        )
    classes = num_outputs if num_outputs is not None else _num_outputs(spec, shape, dtype, vocab)
    if not 1 <= min_size <= max_size:
        raise InvalidArgument(f"need 1 <= min_size <= max_size, got {min_size}, {max_size}")

    @st.composite
    def draw_batch(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
        b = draw(st.integers(min_size, max_size))
        key_x, key_y = rng.split(draw(keys()), 2)
        if tokens:
            x = torch.randint(0, vocab, (b, *shape), generator=rng.generator(key_x)).to(dtype)
            y = torch.randint(0, classes, (b, *shape), generator=rng.generator(key_y))
        else:
            x = rng.normal(key_x, (b, *shape)).to(dtype)
            y = torch.randint(0, classes, (b,), generator=rng.generator(key_y))
        return x, y

    return draw_batch()
