"""The walk over a traced graph that couples axes, with the rules for families of operations.

:class:`WalkerBase` visits the nodes of a graph from :mod:`pure_prune.trace_capture` in order and
fills ``dims[node]``: per axis of the node's value, a list of atoms (factors of the axis, a
:class:`~pure_prune.trace_atoms.Atoms` union-find) that the operation forces to match its inputs'.
Here are the rules shared by families of operations: views and reshapes, pointwise and same-shape
operations (broadcasting), reductions and softmax-like operations (their axes are marked), matrix
products (the contracted axis is recorded), scaled dot-product attention (grouped-query heads),
pooling/upsampling/padding, batch norm. An operation with its own rule is dispatched to a method
``r_<aten op name>`` (:class:`pure_prune.trace_op_rules.Walker`); one with no rule marks every
axis it touches. ``origin`` follows parameter axes through views, so a weight axis contracted by
a product is known (``contracted``).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import fx

from pure_prune.trace_atoms import Atoms

__all__ = ["WalkerBase", "shape_of"]

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


def shape_of(val: Any) -> list[int] | None:
    if isinstance(val, torch.Tensor):
        return [int(s) for s in val.shape]
    return None


class WalkerBase:
    """Applies the op rules to a traced graph, filling ``dims[node]`` with atom lists per axis.

    The rules of single operations (``r_<name>`` methods) are added by
    :class:`pure_prune.trace_op_rules.Walker`."""

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
                    and shape_of(b.meta.get("val"))
                ):
                    found.append(b)
        return found

    def broadcast(self, out: list[list[int]], out_shape: list[int], x: fx.Node, why: str) -> None:
        shape = shape_of(x.meta.get("val"))
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
                self.pass_origin(node, src, {i: i for i in range(len(shape_of(val) or []))})
            return
        if not isinstance(val, (torch.Tensor, list, tuple)):
            self.dims[node] = None
            return
        args = node.args
        out = self.fresh(val)
        self.dims[node] = out
        shape = shape_of(val)
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
                if args and isinstance(args[0], fx.Node) and shape_of(args[0].meta.get("val")) == shape:
                    self.pass_origin(node, args[0], {i: i for i in range(len(shape))})
            else:  # native_dropout -> (out, mask)
                for part, part_val in zip(out, val):
                    for x in self.tensor_args(node):
                        self.broadcast(part, shape_of(part_val), x, where)
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
                    if shape_of(part_val) == [int(self.dims_size(x, 1))]:
                        self.atoms.unify(part[0], self.dims[x][1], where)
        else:
            self.mark_node(node, f"no channel rule for {where}")
            self.mark_all(out, f"no channel rule for {where}")

    def spatial(self, node: fx.Node, out: Any, name: str, where: str) -> None:
        """Pooling, upsampling, padding: the leading (batch, channel) axes pass through, the last
        ``k`` (``k`` from the op name: 1d/2d/3d; padding: the padded axes) are new."""
        x = node.args[0]
        xs = shape_of(x.meta["val"])
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
            ps = shape_of(pv)
            if ps is None or len(ps) != len(xs):
                continue
            for i in range(len(xs) - k):
                if ps[i] == xs[i]:
                    self.atoms.unify(part[i], self.dims[x][i], where)
                else:
                    self.atoms.mark(self.dims[x][i] + part[i], f"resized by {where}")
        self.pass_origin(node, x, {i: i for i in range(len(xs) - k)})

    def dims_size(self, x: fx.Node, axis: int) -> int:
        return shape_of(x.meta["val"])[axis]

    def reduce(self, node: fx.Node, out: Any, name: str, where: str) -> None:
        x = node.args[0]
        xs = shape_of(x.meta["val"])
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
            ps = shape_of(pv)
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
            self.broadcast(out, shape_of(node.meta["val"]), bias, where)

    def sdpa(self, node: fx.Node, out: Any, where: str) -> None:
        q, k, v = node.args[:3]
        qd, kd, vd = self.dims[q], self.dims[k], self.dims[v]
        qs, ks = shape_of(q.meta["val"]), shape_of(k.meta["val"])
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
