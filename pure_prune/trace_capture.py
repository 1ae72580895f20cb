"""Graph capture for :func:`pure_prune.trace_groups.trace_groups`: a module's forward as one graph
of functional ATen operations.

:func:`capture_graph` traces ``functional_call(module, leaves, inputs)`` with ``make_fx`` over
``functionalize`` on real tensors (data-dependent routing traces as it runs); its first
placeholders are the module's parameters and buffers, in the order given. :func:`flat_state` gives
those leaves (``{name: detached tensor}``), :func:`output_tensors` the tensors in a forward's
output, :func:`describe` a short text for an error message; :data:`STATE_PREFIX` prefixes the
paths of buffer (state) members.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import fx, nn
from torch.func import functional_call, functionalize
from torch.fx.experimental.proxy_tensor import make_fx

__all__ = ["STATE_PREFIX", "capture_graph", "describe", "flat_state", "output_tensors"]

STATE_PREFIX = "state."


def output_tensors(out: Any) -> list[torch.Tensor]:
    """The tensors in a forward's output (tensors, mappings such as transformers' ModelOutput, sequences)."""
    found: list[torch.Tensor] = []

    def walk(o: Any) -> None:
        if isinstance(o, torch.Tensor):
            found.append(o)
        elif isinstance(o, Mapping):
            for v in o.values():
                walk(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)

    walk(out)
    return found


def capture_graph(module: nn.Module, names: list[str], leaves: list[torch.Tensor], inputs: tuple) -> fx.Graph:
    n = len(names)

    def forward(leaf_list: list[torch.Tensor], *xs: Any) -> list[torch.Tensor]:
        return output_tensors(functional_call(module, dict(zip(names, leaf_list)), xs, tie_weights=True))

    try:
        with torch.no_grad():
            gm = make_fx(functionalize(forward, remove="mutations_and_views"), tracing_mode="real")(
                list(leaves), *inputs
            )
    except Exception as err:  # the user's forward failed on these inputs
        raise ValueError(
            f"channel_groups: the module's forward failed on the example inputs "
            f"({', '.join(describe(x) for x in inputs)}): {type(err).__name__}: {err}"
        ) from err
    placeholders = [node for node in gm.graph.nodes if node.op == "placeholder"]
    if len(placeholders) < n:
        raise ValueError("channel_groups: the traced graph lost parameter inputs")
    return gm.graph


def describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"Tensor(shape={tuple(x.shape)}, dtype={x.dtype})"
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


def flat_state(module: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    params = {n: p.detach() for n, p in module.named_parameters()}
    buffers = {n: b.detach() for n, b in module.named_buffers()}
    return params, buffers
