"""Channel groups of any ``nn.Module``, found by tracing one forward pass.

:func:`trace_groups` records the module's forward on example inputs as a graph of functional
ATen operations (``make_fx`` over ``functionalize``, real tensors, so data-dependent routing such
as a mixture of experts traces as it runs), then walks the graph with one rule per operation that
says which axis factors must match (:class:`pure_prune.trace_atoms.Atoms`). A class of factors
that reaches a weight is one :class:`~pure_prune.groups.ChannelGroup`; its members are every
parameter and buffer axis that holds it, with ``outer``/``inner`` from the factors around it:

* a conv or linear layer's output axis and the next layer's input axis (contracted in the product);
* BatchNorm weight, bias and running statistics (``state.`` members);
* everything joined by a residual addition (one shared group);
* a flatten into a linear layer (``inner = H * W``);
* depthwise and grouped convolutions: the group count is the unit, channels inside a group stay;
* attention heads: ``view(..., H, D)`` of the q/k/v projections, the score and value products,
  the output projection's input; grouped-query attention's ``expand``/``repeat_kv`` makes a
  query-head axis ``[kv, rep]``, so a key/value head keeps its query heads;
* gated MLPs (gate and up multiplied elementwise, consumed by down), fused ``gate_up`` weights
  split in ``chunk(2)``, stacked expert weights (one group across experts), tied embeddings
  (one leaf, both uses).

A group is *left out*, with the reason, when its factor is sliced or indexed (RoPE's
``rotate_half``, a ``select``), normalised or reduced over (LayerNorm and RMSNorm statistics,
softmax: removing a channel there changes the other channels' values, so the compacted model
would not equal the masked one), reshaped across factor boundaries, fed to an operation with no
rule here, or when ``verify`` finds that compacting it does not reproduce the masked outputs (a
module attribute the resizer cannot update, e.g. ``nn.MultiheadAttention``'s ``embed_dim`` check).

The pieces: graph capture in :mod:`pure_prune.trace_capture`, the axis union-find in
:mod:`pure_prune.trace_atoms`, the op rules in :mod:`pure_prune.trace_walker` (families of
operations) and :mod:`pure_prune.trace_op_rules` (single operations), the check of each group
in :mod:`pure_prune.trace_verify`; here, the walk and the groups it yields.

The dependency-graph idea (couple the axes that an operation forces to match, then prune a whole
coupled set) follows Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023.
"""

from __future__ import annotations

import copy
import math
from typing import Any, NamedTuple

from torch import fx, nn

from pure_prune.groups import ChannelGroup, Member
from pure_prune.trace_capture import STATE_PREFIX, capture_graph, describe, flat_state
from pure_prune.trace_op_rules import KERNEL_MARK, Walker
from pure_prune.trace_verify import verify_groups

__all__ = ["GroupReport", "LeftOut", "trace_groups"]


class LeftOut(NamedTuple):
    """A coupled set of axes that is not returned as a group, and why."""

    name: str
    size: int
    members: tuple[Member, ...]
    reason: str


class GroupReport(NamedTuple):
    """``groups``: safe channel groups; ``left_out``: the others with their reasons."""

    groups: tuple[ChannelGroup, ...]
    left_out: tuple[LeftOut, ...]


# ------------------------------------------------------------------------------------ groups
def _module_of(path: str) -> str:
    return path.rsplit(".", 1)[0] if "." in path else path


def _group_name(producers: list[str], taken: set[str]) -> str:
    mods = [_module_of(p) for p in producers]
    if len(set(mods)) == 1:
        name = mods[0]
    else:
        parts = [m.split(".") for m in mods]
        common = []
        for seg in zip(*parts):
            if len(set(seg)) > 1:
                break
            common.append(seg[0])
        name = ".".join(common) or mods[0]
    base, k = name, 2
    while name in taken:
        name, k = f"{base}#{k}", k + 1
    taken.add(name)
    return name


def _candidates(walker: Walker, leaf_nodes: dict[str, fx.Node], param_names: set[str]):
    """``{atom class: (members, reasons)}`` for every class that reaches a parameter axis."""
    atoms = walker.atoms
    found: dict[int, list[Member]] = {}
    bad: dict[int, list[str]] = {}
    for path, node in leaf_nodes.items():
        is_param = path in param_names
        key = path if is_param else STATE_PREFIX + path
        for axis, axis_atoms in enumerate(walker.d(node)):
            counts = atoms.counts_in(axis_atoms)
            for pos, a in enumerate(axis_atoms):
                outer = math.prod(atoms.size(x) for x in axis_atoms[:pos])
                inner = math.prod(atoms.size(x) for x in axis_atoms[pos + 1 :])
                ndim = len(node.meta["val"].shape)
                score = is_param and ndim >= 2 and (path, axis) not in walker.contracted
                found.setdefault(a, []).append(Member(key, axis, outer, inner, score))
                if counts[a] > 1:
                    bad.setdefault(a, []).append(f"{key!r} axis {axis} holds the same factor twice")
    out = {}
    for a, members in found.items():
        if not any(m.path in param_names for m in members):
            continue
        if any(r.startswith(KERNEL_MARK) for r in atoms.marks(a)):  # a kernel window is not a channel axis
            continue
        seen: dict[tuple[str, int], Member] = {}
        reasons = list(atoms.marks(a)) + bad.get(a, [])
        for m in members:
            if (m.path, m.axis) in seen:
                reasons.append(f"{m.path!r} axis {m.axis} holds this factor twice")
                continue
            seen[m.path, m.axis] = m
        out[a] = (tuple(seen.values()), reasons)
    return out


def _one_group_per_axis(walker: Walker, leaf_nodes: dict[str, fx.Node]) -> None:
    """Mark every factor of a leaf axis but its outermost unmarked one: compaction slices an axis
    for one group (a key/value head keeps its query heads; a head keeps its features)."""
    for path, node in leaf_nodes.items():
        for axis, axis_atoms in enumerate(walker.d(node)):
            free = [a for a in axis_atoms if not walker.atoms.marks(a)]
            for a in free[1:]:
                walker.atoms.mark([a], f"inside the units of another group on {path!r} axis {axis}")


def trace_groups(
    module: nn.Module, *example_inputs: Any, verify: bool = True, rtol: float = 1e-4
) -> GroupReport:
    """Channel groups of ``module`` found by tracing ``module(*example_inputs)`` (see module docstring).

    Member paths are ``interop.from_module``'s leaf names (state members prefixed ``"state."``);
    producer weights (axes that are not contracted) are the scored members. ``verify=True`` (the
    default) also checks each group: about 30% of its units are removed, the module is masked,
    compacted (:func:`pure_prune.compact.compact`) and resized (:func:`pure_prune.resize.resized`),
    and the outputs must agree to ``rtol`` times the largest output entry (eval mode). Groups that
    fail are left out with the reason. Returns a :class:`GroupReport`. The module is not modified
    (it is traced and checked as a deep copy in eval mode).

    Raises ``TypeError`` for a non-module, ``ValueError`` naming the inputs when the forward fails
    on them.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"channel_groups: expected an nn.Module, got {describe(module)}")
    if not example_inputs:
        raise ValueError(
            "channel_groups: give example inputs, e.g. channel_groups(model, torch.randn(2, 3, 32, 32))"
        )
    work = copy.deepcopy(module).eval()
    params, buffers = flat_state(work)
    names = [*params, *buffers]
    graph = capture_graph(work, names, [*params.values(), *buffers.values()], example_inputs)
    walker = Walker()
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    leaf_nodes = dict(zip(names, placeholders[: len(names)]))
    for node in graph.nodes:
        if node.op == "placeholder":
            walker.dims[node] = walker.fresh(node.meta.get("val"))
            if node in leaf_nodes.values():
                path = names[placeholders.index(node)]
                walker.origin[node] = {i: (path, i) for i in range(len(node.meta["val"].shape))}
        elif node.op == "call_function":
            walker.visit(node)
    for node in placeholders[len(names) :]:
        walker.mark_all(walker.dims[node], "an axis of the example inputs (the model's input features)")
    for node in graph.nodes:
        if node.op == "output":
            for x in node.args[0] if isinstance(node.args[0], (list, tuple)) else [node.args[0]]:
                if isinstance(x, fx.Node) and isinstance(walker.dims.get(x), list):
                    walker.mark_all(walker.dims[x], "an axis of the module's outputs")
    _one_group_per_axis(walker, leaf_nodes)
    candidates = _candidates(walker, leaf_nodes, set(params))
    taken: set[str] = set()
    groups: list[ChannelGroup] = []
    left: list[LeftOut] = []
    for a, (members, reasons) in candidates.items():
        size = walker.atoms.size(a)
        producers = [m.path for m in members if m.score]
        name = _group_name(
            producers or [m.path for m in members if not m.path.startswith(STATE_PREFIX)], taken
        )
        if not producers and not reasons:
            reasons = ["no weight produces these units (only consumers or per-unit vectors hold them)"]
        if reasons:
            left.append(LeftOut(name, size, members, "; ".join(reasons[:3])))
        else:
            groups.append(ChannelGroup(name, size, members))
    if verify and groups:
        if verify_groups(work, example_inputs, groups, rtol) is not None:
            checked = []
            for g in groups:
                why = verify_groups(work, example_inputs, [g], rtol)
                if why is None:
                    checked.append(g)
                else:
                    left.append(LeftOut(g.name, g.size, g.members, why))
            groups = checked
            why = verify_groups(work, example_inputs, groups, rtol) if groups else None
            if why is not None:  # each alone is fine but not all together: keep none, say so
                left.extend(
                    LeftOut(g.name, g.size, g.members, f"together with the others: {why}") for g in groups
                )
                groups = []
    return GroupReport(tuple(groups), tuple(left))
