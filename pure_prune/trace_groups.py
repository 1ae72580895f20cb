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

The dependency-graph idea (couple the axes that an operation forces to match, then prune a whole
coupled set) follows Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import fx, nn
from torch.func import functional_call, functionalize
from torch.fx.experimental.proxy_tensor import make_fx

from pure_prune import compact as compact_lib
from pure_prune import resize, tree
from pure_prune.groups import ChannelGroup, Member, unit_mask_to_member
from pure_prune.trace_atoms import Atoms

__all__ = ["GroupReport", "LeftOut", "trace_groups"]

_STATE = "state."
_KERNEL = "kernel window of"


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


# ----------------------------------------------------------------------------------------- tracing
def _tensors(out: Any) -> list[torch.Tensor]:
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


def _graph(module: nn.Module, names: list[str], leaves: list[torch.Tensor], inputs: tuple) -> fx.Graph:
    n = len(names)

    def forward(leaf_list: list[torch.Tensor], *xs: Any) -> list[torch.Tensor]:
        return _tensors(functional_call(module, dict(zip(names, leaf_list)), xs, tie_weights=True))

    try:
        with torch.no_grad():
            gm = make_fx(functionalize(forward, remove="mutations_and_views"), tracing_mode="real")(
                list(leaves), *inputs
            )
    except Exception as err:  # the user's forward failed on these inputs
        raise ValueError(
            f"channel_groups: the module's forward failed on the example inputs "
            f"({', '.join(_describe(x) for x in inputs)}): {type(err).__name__}: {err}"
        ) from err
    placeholders = [node for node in gm.graph.nodes if node.op == "placeholder"]
    if len(placeholders) < n:
        raise ValueError("channel_groups: the traced graph lost parameter inputs")
    return gm.graph


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"Tensor(shape={tuple(x.shape)}, dtype={x.dtype})"
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


# ------------------------------------------------------------------------------------ op rules
_SAME_SHAPE = {
    "_to_copy", "clone", "alias_copy", "detach", "detach_copy", "lift_fresh_copy", "contiguous",
    "native_dropout", "dropout", "fill", "zeros_like", "ones_like", "empty_like", "full_like",
    "rand_like", "randn_like", "bernoulli", "masked_fill", "where", "copy", "_log_softmax_backward_data",
}  # fmt: skip
_VIEWS = {"view", "view_copy", "_unsafe_view", "reshape", "_reshape_alias_copy", "unsqueeze_copy",
          "squeeze_copy", "unsqueeze", "squeeze", "flatten", "unflatten", "alias"}  # fmt: skip
_REDUCE = {"sum", "mean", "amax", "amin", "var", "std", "var_mean", "logsumexp", "norm", "linalg_vector_norm",
           "max", "min", "prod", "argmax", "argmin", "any", "all", "std_mean"}  # fmt: skip
_ALONG = {"_softmax", "_log_softmax", "cumsum", "cumprod", "softmax", "log_softmax"}
_SORT = {"topk", "sort", "argsort"}
_FRESH = {"arange", "zeros", "ones", "empty", "full", "scalar_tensor", "rand", "randn", "randint",
          "empty_strided", "new_zeros", "new_ones", "new_empty", "eye", "linspace"}  # fmt: skip
_MATMUL = {"mm", "addmm", "bmm", "baddbmm"}
_SDPA = {"_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
         "_scaled_dot_product_efficient_attention", "_scaled_dot_product_attention_math",
         "scaled_dot_product_attention", "_scaled_dot_product_cudnn_attention"}  # fmt: skip
_BATCH_NORM = {"_native_batch_norm_legit_no_training", "_native_batch_norm_legit_functional",
               "_native_batch_norm_legit", "native_batch_norm", "batch_norm"}  # fmt: skip


_SPATIAL_PREFIXES = ("avg_pool", "max_pool", "_adaptive_avg_pool", "adaptive_max_pool", "adaptive_avg_pool",
                     "upsample_", "_upsample_", "reflection_pad", "replication_pad", "constant_pad_nd",
                     "lp_pool", "fractional_max_pool")  # fmt: skip


def _spatial(name: str) -> bool:
    return name.startswith(_SPATIAL_PREFIXES)


def _name(target: Any) -> str:
    packet = getattr(target, "_overloadpacket", None)
    if packet is not None:
        return packet.__name__
    return getattr(target, "__name__", str(target))


def _is_pointwise(target: Any) -> bool:
    return torch.Tag.pointwise in getattr(target, "tags", ())


def _shape(val: Any) -> list[int] | None:
    if isinstance(val, torch.Tensor):
        return [int(s) for s in val.shape]
    return None


class _Walker:
    """Applies the op rules to a traced graph, filling ``dims[node]`` with atom lists per axis."""

    def __init__(self) -> None:
        self.atoms = Atoms()
        self.dims: dict[fx.Node, Any] = {}
        self.origin: dict[fx.Node, dict[int, tuple[str, int]]] = {}  # axis -> (leaf path, leaf axis)
        self.contracted: set[tuple[str, int]] = set()

    # --------------------------------------------------------------------------- helpers
    def fresh(self, val: Any, mark: str | None = None) -> Any:
        if isinstance(val, torch.Tensor):
            return [self.atoms.new(int(s), mark) for s in val.shape]
        if isinstance(val, (list, tuple)):
            return [self.fresh(v, mark) for v in val]
        return None

    def d(self, x: Any) -> list[list[int]]:
        return [self.atoms.resolve(a) for a in self.dims[x]]

    def tensor_args(self, node: fx.Node) -> list[fx.Node]:
        found = []
        for a in [*node.args, *node.kwargs.values()]:
            for b in a if isinstance(a, (list, tuple)) else [a]:
                if (
                    isinstance(b, fx.Node)
                    and isinstance(self.dims.get(b), list)
                    and _shape(b.meta.get("val"))
                ):
                    found.append(b)
        return found

    def broadcast(self, out: list[list[int]], out_shape: list[int], x: fx.Node, why: str) -> None:
        shape = _shape(x.meta.get("val"))
        if shape is None:
            return
        xd = self.dims[x]
        for i in range(1, len(shape) + 1):
            if i <= len(out_shape) and shape[-i] == out_shape[-i] and shape[-i] > 1:
                self.atoms.unify(out[-i], xd[-i], why)

    def mark_node(self, node: fx.Node, reason: str) -> None:
        for x in self.tensor_args(node):
            for a in self.dims[x]:
                self.atoms.mark(a, reason)

    def mark_all(self, dims: Any, reason: str) -> None:
        if (
            isinstance(dims, list)
            and dims
            and isinstance(dims[0], list)
            and (not dims[0] or isinstance(dims[0][0], int))
        ):
            for a in dims:
                self.atoms.mark(a, reason)
        elif isinstance(dims, list):
            for sub in dims:
                self.mark_all(sub, reason)

    def pass_origin(self, node: fx.Node, src: fx.Node, axis_map: dict[int, int]) -> None:
        """``node``'s axis ``i`` is ``src``'s axis ``axis_map[i]`` (for tracing weights to their uses)."""
        o = self.origin.get(src)
        if o:
            self.origin[node] = {i: o[j] for i, j in axis_map.items() if j in o}

    def contract(self, x: fx.Node, axis: int) -> None:
        o = self.origin.get(x)
        if o and axis in o:
            self.contracted.add(o[axis])

    # ------------------------------------------------------------------------------ rules
    def visit(self, node: fx.Node) -> None:
        val = node.meta.get("val")
        name = _name(node.target)
        where = f"{name} ({node.name})"
        if node.target is __import__("operator").getitem:
            src, idx = node.args
            self.dims[node] = self.dims[src][idx] if isinstance(self.dims.get(src), list) else self.fresh(val)
            if idx == 0:
                self.pass_origin(node, src, {i: i for i in range(len(_shape(val) or []))})
            return
        if not isinstance(val, (torch.Tensor, list, tuple)):
            self.dims[node] = None
            return
        args = node.args
        out = self.fresh(val)
        self.dims[node] = out
        shape = _shape(val)
        rule = getattr(self, f"r_{name}", None)
        if rule is not None:
            rule(node, out, shape, where)
        elif name in _VIEWS:
            src = args[0]
            new = self.atoms.reshape(self.dims[src], shape, where)
            for o, n in zip(out, new):
                self.atoms.unify(o, n, where)
            src_d = self.d(src)
            self.pass_origin(
                node,
                src,
                {i: j for i, a in enumerate(self.d(node)) for j, b in enumerate(src_d) if a and a == b},
            )
        elif name in _FRESH:
            pass
        elif _is_pointwise(node.target) or name in _SAME_SHAPE:
            if isinstance(val, torch.Tensor):
                for x in self.tensor_args(node):
                    self.broadcast(out, shape, x, where)
                if args and isinstance(args[0], fx.Node) and _shape(args[0].meta.get("val")) == shape:
                    self.pass_origin(node, args[0], {i: i for i in range(len(shape))})
            else:  # native_dropout -> (out, mask)
                for part, part_val in zip(out, val):
                    for x in self.tensor_args(node):
                        self.broadcast(part, _shape(part_val), x, where)
        elif name in _REDUCE or name in _ALONG or name in _SORT:
            self.reduce(node, out, name, where)
        elif name in _MATMUL:
            self.matmul(node, out, name, where)
        elif name in _SDPA:
            self.sdpa(node, out, where)
        elif _spatial(name):
            self.spatial(node, out, name, where)
        elif name in _BATCH_NORM:
            x = args[0]
            o0 = out[0] if isinstance(val, (list, tuple)) else out
            for a, b in zip(o0, self.dims[x]):
                self.atoms.unify(a, b, where)
            for p in args[1:5]:
                if isinstance(p, fx.Node) and self.dims.get(p):
                    self.atoms.unify(self.dims[p][0], self.dims[x][1], where)
            if isinstance(val, (list, tuple)):
                for part, part_val in zip(out[1:], val[1:]):
                    if _shape(part_val) == [int(self.dims_size(x, 1))]:
                        self.atoms.unify(part[0], self.dims[x][1], where)
        else:
            self.mark_node(node, f"no channel rule for {where}")
            self.mark_all(out, f"no channel rule for {where}")

    def spatial(self, node: fx.Node, out: Any, name: str, where: str) -> None:
        """Pooling, upsampling, padding: the leading (batch, channel) axes pass through, the last
        ``k`` (``k`` from the op name: 1d/2d/3d; padding: the padded axes) are new."""
        x = node.args[0]
        xs = _shape(x.meta["val"])
        if (
            name == "constant_pad_nd"
            or name.endswith("_pad1d")
            or name.endswith("_pad2d")
            or name.endswith("_pad3d")
        ):
            k = len(node.args[1]) // 2 if name == "constant_pad_nd" else int(name[-2])
        else:
            found = re.search(r"(\d)d", name)
            k = int(found.group(1)) if found else 2
        parts = out if isinstance(node.meta["val"], (list, tuple)) else [out]
        vals = node.meta["val"] if isinstance(node.meta["val"], (list, tuple)) else [node.meta["val"]]
        for part, pv in zip(parts, vals):
            ps = _shape(pv)
            if ps is None or len(ps) != len(xs):
                continue
            for i in range(len(xs) - k):
                if ps[i] == xs[i]:
                    self.atoms.unify(part[i], self.dims[x][i], where)
                else:
                    self.atoms.mark(self.dims[x][i] + part[i], f"resized by {where}")
        self.pass_origin(node, x, {i: i for i in range(len(xs) - k)})

    def dims_size(self, x: fx.Node, axis: int) -> int:
        return _shape(x.meta["val"])[axis]

    def reduce(self, node: fx.Node, out: Any, name: str, where: str) -> None:
        x = node.args[0]
        xs = _shape(x.meta["val"])
        nd = len(xs)
        if name in _ALONG or name in _SORT:
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", -1)
            axes = [dim % nd] if nd else []
            keep = True
        else:
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            if dim is None or dim == []:
                axes = list(range(nd))
            else:
                axes = [int(a) % nd for a in (dim if isinstance(dim, (list, tuple)) else [dim])]
            keep_arg = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
            keep = bool(keep_arg) if isinstance(keep_arg, bool) else False
        for a in axes:
            self.atoms.mark(self.dims[x][a], f"reduced over by {where}")
        parts = out if isinstance(node.meta["val"], (list, tuple)) else [out]
        vals = node.meta["val"] if isinstance(node.meta["val"], (list, tuple)) else [node.meta["val"]]
        for part, pv in zip(parts, vals):
            ps = _shape(pv)
            if ps is None:
                continue
            kept = [i for i in range(nd) if keep or i not in axes]
            if len(ps) == len(kept):
                for j, i in enumerate(kept):
                    if ps[j] == xs[i]:
                        self.atoms.unify(part[j], self.dims[x][i], where)

    def matmul(self, node: fx.Node, out: list, name: str, where: str) -> None:
        args = node.args
        if name in ("addmm", "baddbmm"):
            bias, a, b = args[0], args[1], args[2]
        else:
            bias, a, b = None, args[0], args[1]
        ad, bd = self.dims[a], self.dims[b]
        k = len(ad)
        if name in ("bmm", "baddbmm"):
            self.atoms.unify(out[0], ad[0], where)
            self.atoms.unify(out[0], bd[0], where)
        self.atoms.unify(out[-2], ad[-2], where)
        self.atoms.unify(out[-1], bd[-1], where)
        self.atoms.unify(ad[-1], bd[-2], where)  # the contracted axis
        self.contract(a, k - 1)
        self.contract(b, k - 2)
        if bias is not None:
            self.broadcast(out, _shape(node.meta["val"]), bias, where)

    def sdpa(self, node: fx.Node, out: Any, where: str) -> None:
        q, k, v = node.args[:3]
        qd, kd, vd = self.dims[q], self.dims[k], self.dims[v]
        qs, ks = _shape(q.meta["val"]), _shape(k.meta["val"])
        o = out[0] if isinstance(node.meta["val"], (list, tuple)) else out
        nd = len(qs)
        for i in range(nd - 3):  # batch axes
            self.atoms.unify(qd[i], kd[i], where)
        hq, hk = qs[-3], ks[-3]
        if hq == hk:
            self.atoms.unify(qd[-3], kd[-3], where)
        elif hk == 1:  # every query head reads the one key/value head: the query heads are free
            pass
        elif hq % hk == 0:
            q_heads = self.atoms.reshape([qd[-3]], [hk, hq // hk], where)
            self.atoms.unify(q_heads[0], kd[-3], where)
        else:
            self.atoms.mark(qd[-3] + kd[-3], f"{where}: {hq} query heads on {hk} key heads")
        self.atoms.unify(kd[-2], vd[-2], where)
        for i in range(nd - 3):
            self.atoms.unify(kd[i], vd[i], where)
        self.atoms.unify(kd[-3], vd[-3], where)
        self.atoms.unify(qd[-1], kd[-1], where)
        scale = node.kwargs.get("scale")
        if scale is None:
            self.atoms.mark(qd[-1], f"{where} scales by 1/sqrt(head size): removing head features changes it")
        self.atoms.mark(kd[-2], f"softmax over keys in {where}")
        for i in range(nd - 1):
            self.atoms.unify(o[i], qd[i], where)
        self.atoms.unify(o[-1], vd[-1], where)
        mask = node.kwargs.get(
            "attn_mask", node.args[3] if len(node.args) > 3 and isinstance(node.args[3], fx.Node) else None
        )
        if isinstance(mask, fx.Node) and self.dims.get(mask):
            full = [*qd[:-1], kd[-2]]
            self.broadcast(full, [*qs[:-1], ks[-2]], mask, where)

    # named rules (method names are r_<aten op packet name>)
    def r_t_copy(self, node, out, shape, where):
        src = node.args[0]
        sd = self.dims[src]
        for i, j in enumerate(reversed(range(len(sd)))):
            self.atoms.unify(out[i], sd[j], where)
        self.pass_origin(node, src, {i: j for i, j in enumerate(reversed(range(len(sd))))})

    r_t = r_t_copy

    def r_transpose_copy(self, node, out, shape, where):
        src, d0, d1 = node.args[:3]
        n = len(shape)
        perm = list(range(n))
        perm[d0 % n], perm[d1 % n] = perm[d1 % n], perm[d0 % n]
        self._permute(node, src, out, perm, where)

    r_transpose = r_transpose_copy

    def r_permute_copy(self, node, out, shape, where):
        src, perm = node.args[:2]
        self._permute(node, src, out, [p % len(shape) for p in perm], where)

    r_permute = r_permute_copy

    def _permute(self, node, src, out, perm, where):
        sd = self.dims[src]
        for i, j in enumerate(perm):
            self.atoms.unify(out[i], sd[j], where)
        self.pass_origin(node, src, dict(enumerate(perm)))

    def r_expand_copy(self, node, out, shape, where):
        src = node.args[0]
        ss = _shape(src.meta["val"])
        off = len(shape) - len(ss)
        for i, s in enumerate(ss):
            if s == shape[off + i] and s > 1:
                self.atoms.unify(out[off + i], self.dims[src][i], where)
        self.pass_origin(node, src, {off + i: i for i, s in enumerate(ss) if s == shape[off + i]})

    r_expand = r_expand_copy

    def r_select_copy(self, node, out, shape, where):
        src, dim, _ = node.args[:3]
        sd = self.dims[src]
        dim = dim % len(sd)
        self.atoms.mark(sd[dim], f"indexed by {where}")
        rest = [i for i in range(len(sd)) if i != dim]
        for o, i in zip(out, rest):
            self.atoms.unify(o, sd[i], where)
        self.pass_origin(node, src, dict(enumerate(rest)))

    r_select = r_select_copy

    def r_slice_copy(self, node, out, shape, where):
        src = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else 0
        sd = self.dims[src]
        ss = _shape(src.meta["val"])
        dim = dim % len(sd)
        for i in range(len(sd)):
            if i != dim or shape[i] == ss[i]:
                self.atoms.unify(out[i], sd[i], where)
        if shape[dim] != ss[dim]:
            self.atoms.mark(sd[dim] + out[dim], f"sliced by {where}")
        else:
            self.pass_origin(node, src, {i: i for i in range(len(sd))})

    r_slice = r_slice_copy

    def _split(self, node, out, sizes, where):
        src = node.args[0]
        dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
        sd = self.dims[src]
        ss = _shape(src.meta["val"])
        dim = dim % len(sd)
        for part in out:
            for i in range(len(sd)):
                if i != dim:
                    self.atoms.unify(part[i], sd[i], where)
        if len(set(sizes)) == 1 and len(sizes) > 1 and sizes[0] * len(sizes) == ss[dim]:
            outer, inner = self.atoms.reshape([sd[dim]], [len(sizes), sizes[0]], where)
            self.atoms.mark(outer, f"split into pieces by {where}")
            for part in out:
                self.atoms.unify(part[dim], inner, where)
        elif len(sizes) > 1:
            self.atoms.mark(sd[dim], f"split into unequal pieces by {where}")
            self.mark_all(out, f"split into unequal pieces by {where}")
        else:
            self.atoms.unify(out[0][dim], sd[dim], where)

    def r_split_copy(self, node, out, shape, where):
        ss = _shape(node.args[0].meta["val"])
        dim = node.args[2] if len(node.args) > 2 else 0
        sizes = [_shape(p)[dim] for p in node.meta["val"]]
        del ss
        self._split(node, out, sizes, where)

    r_split = r_split_copy
    r_split_with_sizes_copy = r_split_copy
    r_split_with_sizes = r_split_copy

    def r_unbind_copy(self, node, out, shape, where):
        src = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else 0
        sd = self.dims[src]
        dim = dim % len(sd)
        self.atoms.mark(sd[dim], f"unbound by {where}")
        rest = [i for i in range(len(sd)) if i != dim]
        for part in out:
            for o, i in zip(part, rest):
                self.atoms.unify(o, sd[i], where)

    r_unbind = r_unbind_copy

    def r_cat(self, node, out, shape, where):
        pieces = [p for p in node.args[0] if isinstance(p, fx.Node)]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        dim = dim % len(shape)
        pieces = [p for p in pieces if _shape(p.meta["val"]) and len(_shape(p.meta["val"])) == len(shape)]
        for p in pieces:
            for i in range(len(shape)):
                if i != dim:
                    self.atoms.unify(out[i], self.dims[p][i], where)
        widths = [_shape(p.meta["val"])[dim] for p in pieces]
        if len(pieces) > 1 and len(set(widths)) == 1 and widths[0] > 1:
            outer, inner = self.atoms.reshape([out[dim]], [len(pieces), widths[0]], where)
            self.atoms.mark(outer, f"concatenated by {where}")
            for p in pieces:
                self.atoms.unify(inner, self.dims[p][dim], where)
        elif len(pieces) == 1:
            self.atoms.unify(out[dim], self.dims[pieces[0]][dim], where)
        else:
            why = f"concatenated with pieces of other widths {widths} by {where}"
            self.atoms.mark(out[dim], why)
            for p in pieces:
                self.atoms.mark(self.dims[p][dim], why)

    def r_stack(self, node, out, shape, where):
        pieces = [p for p in node.args[0] if isinstance(p, fx.Node)]
        dim = node.args[1] if len(node.args) > 1 else 0
        dim = dim % len(shape)
        self.atoms.mark(out[dim], f"stacked by {where}")
        rest = [i for i in range(len(shape)) if i != dim]
        for p in pieces:
            for j, i in enumerate(rest):
                self.atoms.unify(out[i], self.dims[p][j], where)

    def r_convolution(self, node, out, shape, where):
        x, w, b = node.args[:3]
        transposed = node.args[6] if len(node.args) > 6 else False
        groups = node.args[8] if len(node.args) > 8 else 1
        xd, wd = self.dims[x], self.dims[w]
        self.atoms.unify(out[0], xd[0], where)
        if transposed:
            self.mark_node(node, f"transposed convolution {where} has no channel rule")
            self.mark_all(out, f"transposed convolution {where} has no channel rule")
            return
        for k in range(2, len(wd)):
            self.atoms.mark(wd[k], f"{_KERNEL} {where}")
        if groups == 1:
            self.atoms.unify(xd[1], wd[1], where)
            self.atoms.unify(out[1], wd[0], where)
            self.contract(x, 1)
            self.contract(w, 1)
        else:
            cin = _shape(x.meta["val"])[1]
            cout = shape[1]
            xg = self.atoms.reshape([xd[1]], [groups, cin // groups], where)
            og = self.atoms.reshape([out[1]], [groups, cout // groups], where)
            wg = self.atoms.reshape([wd[0]], [groups, cout // groups], where)
            self.atoms.unify(xg[0], og[0], where)
            self.atoms.unify(og[0], wg[0], where)
            self.atoms.unify(og[1], wg[1], where)
            self.atoms.unify(xg[1], wd[1], where)
            why = f"channels inside the groups of grouped convolution {where}"
            self.atoms.mark(xg[1] + og[1], why)
            self.contract(w, 1)
        if isinstance(b, fx.Node):
            self.atoms.unify(self.dims[b][0], out[1], where)

    def r_embedding(self, node, out, shape, where):
        w, idx = node.args[:2]
        wd = self.dims[w]
        self.atoms.mark(wd[0], f"rows looked up by {where}")
        for o, i in zip(out, self.dims[idx]):
            self.atoms.unify(o, i, where)
        self.atoms.unify(out[-1], wd[1], where)
        self.pass_origin(node, w, {len(shape) - 1: 1})

    def r_native_layer_norm(self, node, out, shape, where):
        x, normalized, w, b = node.args[:4]
        xd = self.dims[x]
        k = len(normalized)
        for a, c in zip(out[0], xd):
            self.atoms.unify(a, c, where)
        for p in (w, b):
            if isinstance(p, fx.Node):
                for i in range(k):
                    self.atoms.unify(self.dims[p][i], xd[len(xd) - k + i], where)
        for i in range(k):
            self.atoms.mark(
                xd[len(xd) - k + i], f"normalised over by {where} (its statistics change when channels go)"
            )

    def r_native_group_norm(self, node, out, shape, where):
        x, w, b = node.args[:3]
        xd = self.dims[x]
        for a, c in zip(out[0], xd):
            self.atoms.unify(a, c, where)
        for p in (w, b):
            if isinstance(p, fx.Node):
                self.atoms.unify(self.dims[p][0], xd[1], where)
        self.atoms.mark(xd[1], f"normalised over by {where} (its statistics change when channels go)")

    def r_index(self, node, out, shape, where):
        src, indices = node.args[:2]
        sd = self.dims[src]
        ss = _shape(src.meta["val"])
        idx_axes = [i for i, t in enumerate(indices) if t is not None]
        for i in idx_axes:
            self.atoms.mark(sd[i], f"indexed by {where}")
        rest = [i for i in range(len(ss)) if i not in idx_axes]
        tail = [i for i in rest if i > max(idx_axes, default=-1)]
        for k, i in enumerate(reversed(tail)):
            if shape[-1 - k] == ss[i]:
                self.atoms.unify(out[-1 - k], sd[i], where)
        self.pass_origin(node, src, {len(shape) - 1 - k: i for k, i in enumerate(reversed(tail))})

    def r_index_put(self, node, out, shape, where):
        src, indices, values = node.args[:3]
        sd = self.dims[src]
        for i, a in enumerate(sd):
            self.atoms.unify(out[i], a, where)
        idx_axes = [i for i, t in enumerate(indices) if t is not None]
        for i in idx_axes:
            self.atoms.mark(sd[i], f"indexed by {where}")
        tail = [i for i in range(len(sd)) if i > max(idx_axes, default=-1)]
        vs = _shape(values.meta["val"]) if isinstance(values, fx.Node) else None
        if vs:
            for k, i in enumerate(reversed(tail)):
                if k < len(vs) and vs[-1 - k] == shape[i] and shape[i] > 1:
                    self.atoms.unify(self.dims[values][-1 - k], sd[i], where)

    def r_index_add(self, node, out, shape, where):
        src, dim, _, source = node.args[:4]
        sd = self.dims[src]
        dim = dim % len(sd)
        for i, a in enumerate(sd):
            self.atoms.unify(out[i], a, where)
            if i != dim:
                self.atoms.unify(self.dims[source][i], a, where)
        self.atoms.mark(sd[dim], f"indexed by {where}")

    def r_index_select(self, node, out, shape, where):
        src, dim = node.args[:2]
        sd = self.dims[src]
        dim = dim % len(sd)
        self.atoms.mark(sd[dim], f"indexed by {where}")
        for i, a in enumerate(sd):
            if i != dim:
                self.atoms.unify(out[i], a, where)

    def r__grouped_mm(self, node, out, shape, where):
        a, b = node.args[:2]
        ad, bd = self.dims[a], self.dims[b]
        if len(ad) == 2 and len(bd) == 3:
            self.atoms.unify(out[0], ad[0], where)
            self.atoms.unify(ad[1], bd[1], where)
            self.atoms.unify(out[1], bd[2], where)
            self.atoms.mark(bd[0], f"experts routed by offsets in {where}")
            self.contract(b, 1)
        else:
            self.mark_node(node, f"no channel rule for {where} with these ranks")
            self.mark_all(out, f"no channel rule for {where} with these ranks")


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


def _candidates(walker: _Walker, leaf_nodes: dict[str, fx.Node], param_names: set[str]):
    """``{atom class: (members, reasons)}`` for every class that reaches a parameter axis."""
    atoms = walker.atoms
    found: dict[int, list[Member]] = {}
    bad: dict[int, list[str]] = {}
    for path, node in leaf_nodes.items():
        is_param = path in param_names
        key = path if is_param else _STATE + path
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
        if any(r.startswith(_KERNEL) for r in atoms.marks(a)):  # a kernel window is not a channel axis
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


def _one_group_per_axis(walker: _Walker, leaf_nodes: dict[str, fx.Node]) -> None:
    """Mark every factor of a leaf axis but its outermost unmarked one: compaction slices an axis
    for one group (a key/value head keeps its query heads; a head keeps its features)."""
    for path, node in leaf_nodes.items():
        for axis, axis_atoms in enumerate(walker.d(node)):
            free = [a for a in axis_atoms if not walker.atoms.marks(a)]
            for a in free[1:]:
                walker.atoms.mark([a], f"inside the units of another group on {path!r} axis {axis}")


def _flat_state(module: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    params = {n: p.detach() for n, p in module.named_parameters()}
    buffers = {n: b.detach() for n, b in module.named_buffers()}
    return params, buffers


def _removed_units(size: int, key: int) -> torch.Tensor:
    """A ``(size,)`` bool keep-mask that drops about 30% of the units (at least one, never all)."""
    k = min(max(1, round(0.3 * size)), size - 1)
    order = torch.randperm(size, generator=torch.Generator().manual_seed(key))
    keep = torch.ones(size, dtype=torch.bool)
    keep[order[:k]] = False
    return keep


def _first_tensor(out: Any) -> list[torch.Tensor]:
    return [t for t in _tensors(out) if t.is_floating_point()]


def _verify(module: nn.Module, inputs: tuple, groups: Sequence[ChannelGroup], rtol: float) -> str | None:
    """``None`` when removing ~30% of every group's units, compacting, and resizing the module gives
    the masked module's outputs; else why not."""
    params, buffers = _flat_state(module)
    keep = {g.name: _removed_units(g.size, i) for i, g in enumerate(groups)}
    masks_flat: dict[str, torch.Tensor] = {}
    for g in groups:
        for m in g.members:
            if m.path.startswith(_STATE):
                continue
            shape = params[m.path].shape
            unit = unit_mask_to_member(keep[g.name], m, shape)
            masks_flat[m.path] = unit if m.path not in masks_flat else masks_flat[m.path] & unit
    masked = {
        n: torch.where(masks_flat[n], p, torch.zeros((), dtype=p.dtype)) if n in masks_flat else p
        for n, p in params.items()
    }
    try:
        with torch.no_grad():
            ref = _first_tensor(functional_call(module, {**masked, **buffers}, inputs, tie_weights=True))
        p_tree, s_tree = tree.nest(params), tree.nest(buffers)
        m_tree = tree.nest({n: masks_flat.get(n) for n in params})
        kept = {g.name: torch.nonzero(keep[g.name]).reshape(-1) for g in groups}
        cp, cs, _, _ = compact_lib.compact(p_tree, s_tree, m_tree, groups, kept=kept)
        names_p, leaves_p, _ = tree.flatten_with_paths(cp)
        names_s, leaves_s, _ = tree.flatten_with_paths(cs)
        small = resize.resized(module, dict(zip(names_p, leaves_p)), dict(zip(names_s, leaves_s)))
        with torch.no_grad():
            got = _first_tensor(small(*inputs))
    except Exception as err:  # any failure means: not safe to compact this way
        return f"compacting and resizing failed: {type(err).__name__}: {str(err).splitlines()[0][:160]}"
    if len(got) != len(ref):
        return "the resized module returns a different number of outputs"
    for r, g_ in zip(ref, got):
        if r.shape != g_.shape:
            return f"the resized module's output has shape {tuple(g_.shape)}, the masked one {tuple(r.shape)}"
        scale = float(r.abs().max()) if r.numel() else 0.0
        diff = float((r - g_).abs().max()) if r.numel() else 0.0
        if not diff <= rtol * max(scale, 1e-30):
            return f"compacted output differs from the masked output by {diff / max(scale, 1e-30):.2e} of its scale"
    return None


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
        raise TypeError(f"channel_groups: expected an nn.Module, got {_describe(module)}")
    if not example_inputs:
        raise ValueError(
            "channel_groups: give example inputs, e.g. channel_groups(model, torch.randn(2, 3, 32, 32))"
        )
    work = copy.deepcopy(module).eval()
    params, buffers = _flat_state(work)
    names = [*params, *buffers]
    graph = _graph(work, names, [*params.values(), *buffers.values()], example_inputs)
    walker = _Walker()
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
        name = _group_name(producers or [m.path for m in members if not m.path.startswith(_STATE)], taken)
        if not producers and not reasons:
            reasons = ["no weight produces these units (only consumers or per-unit vectors hold them)"]
        if reasons:
            left.append(LeftOut(name, size, members, "; ".join(reasons[:3])))
        else:
            groups.append(ChannelGroup(name, size, members))
    if verify and groups:
        if _verify(work, example_inputs, groups, rtol) is not None:
            checked = []
            for g in groups:
                why = _verify(work, example_inputs, [g], rtol)
                if why is None:
                    checked.append(g)
                else:
                    left.append(LeftOut(g.name, g.size, g.members, why))
            groups = checked
            why = _verify(work, example_inputs, groups, rtol) if groups else None
            if why is not None:  # each alone is fine but not all together: keep none, say so
                left.extend(
                    LeftOut(g.name, g.size, g.members, f"together with the others: {why}") for g in groups
                )
                groups = []
    return GroupReport(tuple(groups), tuple(left))
