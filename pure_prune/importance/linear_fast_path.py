"""The linear fast path: ``model_fn`` traced once, its linear layers found and tapped.

A linear layer ``z = a W^T (+ b)`` has per-sample gradient ``g_n ⊗ a_n`` with ``g_n = dl_n/dz_n``.
:func:`linear_taps` traces ``model_fn`` (``make_fx``), finds such layers (:class:`LinearLayer`) and
builds a function that also returns each layer's input ``a`` ``(N, in)`` and adds a zero tap
``(N, out)`` to its output ``z``, so one backward pass to the taps yields every ``g``
(:func:`linear_grads`; with ``factor``, the vjps of the output-Hessian factor rows used by the
GGN). :func:`cached_taps` memoises traces per ``model_fn`` and shapes in
:data:`~pure_prune.importance.trace_cache.TRACES`; :func:`resolve_taps` / :func:`iter_batches`
pick the trace for each batch. Rationale and measurements: :mod:`pure_prune.importance.problem`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from einops import rearrange
from torch.func import jvp
from torch.fx.experimental.proxy_tensor import make_fx

from pure_prune import tree
from pure_prune.importance.problem_inputs import Problem
from pure_prune.importance.trace_cache import TRACES
from pure_prune.losses import ModelLoss

__all__ = [
    "LinearLayer",
    "LinearTaps",
    "cached_taps",
    "fast_layers",
    "iter_batches",
    "linear_grads",
    "linear_taps",
    "resolve_taps",
]

_aten = torch.ops.aten


class LinearLayer(NamedTuple):
    """A linear layer found by :func:`linear_taps`: leaf indices of its weight and bias (or None),
    whether the weight is stored ``(out, in)`` (used transposed, ``z = a W^T``) or ``(in, out)``
    (``z = a W``), and ``out``, the width of its output ``z``."""

    weight: int
    bias: int | None
    out_in: bool
    out: int

    def outer_sum(self, g: torch.Tensor, a: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``sum_n g_n ⊗ a_n`` in the weight's layout from ``g`` ``(n, out)`` and ``a`` ``(n, in)``:
        one ``mm`` (measured ~15% faster than ``torch.einsum`` here, ~35% than ``einops.einsum``),
        written into ``out`` when given."""
        return torch.mm(g.t(), a, out=out) if self.out_in else torch.mm(a.t(), g, out=out)


class LinearTaps(NamedTuple):
    """``model_fn`` traced once: ``fn(*leaves, x, *taps) -> (logits, *inputs)``.

    ``taps[k]`` ``(N, layers[k].out)`` is added to the output ``z`` (bias included) of linear layer
    ``k`` and ``inputs[k]`` ``(N, in_k)`` is that layer's input ``a``: with zero taps ``fn`` computes
    the model, and the gradient w.r.t. ``taps[k]`` is the gradient w.r.t. ``z``. ``signature``
    identifies the shapes and dtypes traced (a batch of another shape is traced again); ``layers``
    is empty when no linear layer with one sample per row was found.
    """

    fn: Callable[..., tuple[torch.Tensor, ...]]
    layers: tuple[LinearLayer, ...]
    signature: tuple[Any, ...]


def _signature(paths: Sequence[str], leaves: Sequence[torch.Tensor], x: torch.Tensor) -> tuple[Any, ...]:
    return (
        tuple(paths),
        tuple((tuple(w.shape), w.dtype, w.device) for w in leaves),
        tuple(x.shape),
        x.dtype,
        x.device,
    )


def _is_transpose2d(node: torch.fx.Node) -> bool:
    if node.target is _aten.t.default:
        return True
    if node.target is _aten.transpose.int:
        return {int(node.args[1]) % 2, int(node.args[2]) % 2} == {0, 1}
    if node.target is _aten.permute.default:
        return [int(d) % 2 for d in node.args[1]] == [1, 0]
    return False


def _weight_leaf(node: Any, leaf_of: dict[Any, int]) -> tuple[int, bool] | None:
    """``(leaf index, transposed)`` if ``node`` is a 2-D param leaf or a single-use transpose chain of one."""
    transposed = False
    while node not in leaf_of:
        if not isinstance(node, torch.fx.Node) or node.op != "call_function" or len(node.users) != 1:
            return None
        if not _is_transpose2d(node):
            return None
        transposed, node = not transposed, node.args[0]
    if len(node.users) != 1 or len(node.meta["val"].shape) != 2:
        return None
    return leaf_of[node], transposed


def _bias_leaf(node: Any, leaf_of: dict[Any, int], out: int) -> int | None:
    if node in leaf_of and len(node.users) == 1 and tuple(node.meta["val"].shape) == (out,):
        return leaf_of[node]
    return None


def _match_linear(graph: torch.fx.Graph, leaf_of: dict[Any, int], rows: int) -> list[tuple]:
    """Linear layers in ``graph``: ``(LinearLayer, input node, output node)`` per match."""
    found = []
    for node in graph.nodes:
        if node.op != "call_function" or node.target not in (_aten.mm.default, _aten.addmm.default):
            continue
        if node.target is _aten.addmm.default:
            if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1:
                continue
            bias_node, a_node, w_node = node.args
        else:
            bias_node, (a_node, w_node) = None, node.args
        w = _weight_leaf(w_node, leaf_of)
        a_shape, z_shape = tuple(a_node.meta["val"].shape), tuple(node.meta["val"].shape)
        if w is None or len(a_shape) != 2 or a_shape[0] != rows or z_shape[0] != rows:
            continue
        out_node, out = node, z_shape[1]
        bias = None if bias_node is None else _bias_leaf(bias_node, leaf_of, out)
        users = list(node.users)
        if bias_node is None and len(users) == 1 and users[0].target is _aten.add.Tensor:
            add = users[0]
            other = add.args[1] if add.args[0] is node else add.args[0]
            bias = _bias_leaf(other, leaf_of, out) if add.kwargs.get("alpha", 1) == 1 else None
            if bias is not None:
                out_node = add
        found.append((LinearLayer(w[0], bias, w[1], out), a_node, out_node))
    return found


def _rows_independent(
    fn: Callable, leaves: Sequence[torch.Tensor], x: torch.Tensor, taps: Sequence[torch.Tensor]
) -> bool:
    """True when perturbing row 0 (or the last row) of ``x`` (when float) and of every tap moves no
    other row of any output of ``fn``: the traced rows are samples."""
    wrt = [*taps, x] if x.is_floating_point() else list(taps)

    def run(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return fn(*leaves, *(args[-1:] if x.is_floating_point() else (x,)), *args[: len(taps)])

    for row in {0, x.shape[0] - 1}:
        tangents = []
        for t in wrt:
            d = torch.zeros_like(t)
            d[row] = 1.0
            tangents.append(d)
        _, moved = jvp(run, tuple(wrt), tuple(tangents))
        for d in moved:
            if bool((torch.cat([d[:row], d[row + 1 :]]) != 0).any()):
                return False
    return True


def linear_taps(
    model_fn: Callable[[tree.Tree, torch.Tensor], torch.Tensor] | ModelLoss,
    params: tree.Tree,
    x: torch.Tensor,
) -> LinearTaps:
    """Trace ``model_fn(params, x)`` once and find its linear layers (the fast path of the scores).

    ``model_fn`` is a model function ``(params, x) -> outputs`` or a ``ModelLoss`` (its model is
    traced). A layer qualifies when its weight is a 2-D leaf used once (directly or transposed) as
    the right operand of a matrix product whose left operand has one row per sample, optionally
    with a 1-D bias leaf added. The trace (``make_fx``, ~40 ms) fixes shapes and Python control
    flow; this function always traces afresh (the scores' default ``fast=True`` memoises its
    traces per function and shapes), and its result passed as ``fast=`` scores many batches of one
    shape without tracing again.

    Returns a :class:`LinearTaps`; ``layers`` is empty when nothing qualifies, when the outputs are
    token-level (``(N, T, C)``: a sample's gradient sums over tokens and is no single outer product)
    or when rows of the model's outputs mix samples (then every leaf takes the generic route).
    Mixing is found with a forward-mode perturbation of one row of ``x`` and of the taps; for
    integer ``x`` (token ids) only of the taps, so mixing before the first linear layer goes unseen
    there (``model_fn`` must keep samples apart in any case: per-sample statistics mean nothing
    otherwise).
    """
    model_fn = model_fn.model_fn if isinstance(model_fn, ModelLoss) else model_fn
    if not callable(model_fn):
        raise TypeError(f"linear_taps: model_fn must be callable, got {type(model_fn).__name__}")
    if not isinstance(x, torch.Tensor) or x.ndim == 0:
        raise TypeError(f"linear_taps: x must be a tensor with a sample axis, got {x!r:.80}")
    paths, leaves, spec = tree.flatten_with_paths(params)
    leaves = [w.detach() for w in leaves]
    n_leaves = len(leaves)

    def flat(*args):
        return model_fn(tree.unflatten(spec, list(args[:n_leaves])), args[n_leaves])

    gm = make_fx(flat)(*leaves, x)
    graph = gm.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    output = next(n for n in graph.nodes if n.op == "output")
    if not isinstance(output.args[0], torch.fx.Node):
        raise TypeError("linear_taps: model_fn must return one output tensor (N, ...)")
    leaf_of = {node: i for i, node in enumerate(placeholders[:n_leaves])}
    # the fast formulas need one output row per sample: token-level outputs take the generic route
    per_row = output.args[0].meta["val"].ndim in (1, 2)
    found = _match_linear(graph, leaf_of, x.shape[0]) if per_row else []
    last = placeholders[-1]
    for k, (_, _, z) in enumerate(found):
        with graph.inserting_after(last):
            last = graph.placeholder(f"tap_{k}")
        with graph.inserting_after(z):
            tapped = graph.call_function(_aten.add.Tensor, (z, last))
        z.replace_all_uses_with(tapped, delete_user_cb=lambda user, t=tapped: user is not t)
    output.args = ((output.args[0], *(a for _, a, _ in found)),)
    graph._codegen = torch.fx.graph.CodeGen()
    graph.lint()
    gm.recompile()
    layers = tuple(layer for layer, _, _ in found)
    zeros = [x.new_zeros((x.shape[0], layer.out), dtype=leaves[layer.weight].dtype) for layer in layers]
    if layers and not _rows_independent(gm.forward, leaves, x, zeros):
        layers = ()
    return LinearTaps(
        gm.forward, layers, _signature(paths, leaves, x)
    )  # forward: no Module.__call__ overhead


def cached_taps(
    model_fn: Callable[[tree.Tree, torch.Tensor], torch.Tensor], params: tree.Tree, x: torch.Tensor
) -> LinearTaps:
    """:func:`linear_taps` memoised per ``model_fn`` and shapes in :data:`TRACES`."""
    paths, leaves, _ = tree.flatten_with_paths(params)
    key = ("linear_taps", _signature(paths, leaves, x))
    return TRACES.get(model_fn, key, lambda: linear_taps(model_fn, params, x))


def resolve_taps(fast: bool | LinearTaps, problem: Problem, x: Any) -> LinearTaps | None:
    """The taps to use for a batch with model input ``x``: ``None`` (generic route: ``fast=False``,
    a plain loss, or an input that is no tensor), ``fast`` itself when it was traced for these
    shapes, or the memoised trace (:func:`cached_taps`)."""
    if fast is False:
        return None
    if not (fast is True or isinstance(fast, LinearTaps)):
        raise TypeError(f"fast must be True, False or a LinearTaps from linear_taps(), got {fast!r:.80}")
    if problem.model is None:
        if isinstance(fast, LinearTaps):
            raise TypeError(
                "fast=LinearTaps needs loss_fn = losses.model_loss(model_fn, output_loss): a plain loss "
                "has no model to tap"
            )
        return None
    if not isinstance(x, torch.Tensor):
        return None
    if isinstance(fast, LinearTaps) and fast.signature == _signature(problem.paths, problem.theta, x):
        return fast
    return cached_taps(problem.model.model_fn, tree.unflatten(problem.spec, problem.theta), x)


def iter_batches(problem: Problem, fast: bool | LinearTaps = False):
    """Yield ``(b, batch, taps)`` per batch; a trace made for one batch serves the next of equal shape."""
    current = fast
    for b, batch in enumerate(problem.batches):
        x = problem.model.split(batch)[0] if problem.model is not None else None
        taps = resolve_taps(current, problem, x)
        current = current if taps is None else taps
        yield b, batch, taps


def linear_grads(
    where: str,
    problem: Problem,
    taps: LinearTaps,
    batch: Any,
    ks: Sequence[int],
    factor: bool | Callable[[torch.Tensor, Any], torch.Tensor],
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...], int]:
    """Inputs ``a_k`` ``(N, in_k)`` and output gradients of the traced linear layers ``ks``, and
    the divisor ``entries`` of the GGN (see :meth:`ModelLoss.hessian_factor`; ``N`` when unused).

    ``factor=False``: ``g_k`` ``(N, out_k)``, row ``n`` the gradient of sample ``n``'s loss w.r.t.
    its layer output. ``factor=True`` (the output-Hessian factor of the ``ModelLoss``) or a callable
    ``(outputs, targets) -> rows`` ``(N, R, *outputs.shape[1:])``: ``G_k`` ``(R, N, out_k)``, the vjps of the ``R``
    factor rows (one batched backward): gradients w.r.t. zero taps, the only tensors that require
    grad, so the backward computes no weight gradients (with the weights requiring grad instead,
    the batched backward measured 3x slower: it forms them).
    """
    model = problem.model
    x, y = model.split(batch)
    zeros = [
        torch.zeros(x.shape[0], layer.out, dtype=problem.theta[layer.weight].dtype, requires_grad=True)
        for layer in taps.layers
    ]
    entries = x.shape[0]
    with torch.enable_grad():
        outs = taps.fn(*problem.theta, x, *zeros)
        out, wrt = outs[0], [zeros[k] for k in ks]
        model.check(where, out, y)
        if factor is not False:
            rows = (model.hessian_factor if factor is True else factor)(out, y)
            entries = model.ggn_entries(out, y)
            cot = rearrange(rows, "n r ... -> r n ...")
            gs = torch.autograd.grad(out, wrt, cot, is_grads_batched=True)
        else:
            gs = torch.autograd.grad(model.loss(out, y, reduction="sum"), wrt)
    return tuple(outs[1 + k].detach() for k in ks), gs, entries


def fast_layers(problem: Problem, taps: LinearTaps | None) -> list[tuple[int, LinearLayer]]:
    """``(k, layer)`` for the tapped layers with a scored weight or bias."""
    if taps is None:
        return []
    scored = set(problem.scored)
    return [(k, lay) for k, lay in enumerate(taps.layers) if lay.weight in scored or lay.bias in scored]
