"""Axis rules of single ATen operations, as methods ``r_<op packet name>`` of :class:`Walker`.

Transposes and permutes (axes move), ``expand``, ``select``/``slice`` (the axis is marked: indexed
or sliced), ``split``/``chunk`` into equal pieces (the axis becomes ``[pieces, width]``, as a
fused ``gate_up`` weight), ``unbind``, ``cat``/``stack``, convolutions (grouped and depthwise:
the group count is the unit; kernel axes are marked :data:`KERNEL_MARK`), embeddings, layer and
group norm (normalised axes are marked), indexing, and ``_grouped_mm`` (stacked experts).
"""

from __future__ import annotations

from torch import fx

from pure_prune.trace_walker import WalkerBase, shape_of

__all__ = ["KERNEL_MARK", "Walker"]

KERNEL_MARK = "kernel window of"


class Walker(WalkerBase):
    """:class:`~pure_prune.trace_walker.WalkerBase` with the rules of single operations: the walker
    :func:`pure_prune.trace_groups.trace_groups` runs."""

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
        ss = shape_of(src.meta["val"])
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
        ss = shape_of(src.meta["val"])
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
        ss = shape_of(src.meta["val"])
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
        ss = shape_of(node.args[0].meta["val"])
        dim = node.args[2] if len(node.args) > 2 else 0
        sizes = [shape_of(p)[dim] for p in node.meta["val"]]
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
        pieces = [p for p in pieces if shape_of(p.meta["val"]) and len(shape_of(p.meta["val"])) == len(shape)]
        for p in pieces:
            for i in range(len(shape)):
                if i != dim:
                    self.atoms.unify(out[i], self.dims[p][i], where)
        widths = [shape_of(p.meta["val"])[dim] for p in pieces]
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
            self.atoms.mark(wd[k], f"{KERNEL_MARK} {where}")
        if groups == 1:
            self.atoms.unify(xd[1], wd[1], where)
            self.atoms.unify(out[1], wd[0], where)
            self.contract(x, 1)
            self.contract(w, 1)
        else:
            cin = shape_of(x.meta["val"])[1]
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
        ss = shape_of(src.meta["val"])
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
        vs = shape_of(values.meta["val"]) if isinstance(values, fx.Node) else None
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
