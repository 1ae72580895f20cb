"""Shared machinery of the gradient and Hessian scores: checked inputs, the loss, per-sample moments.

Every score in :mod:`pure_prune.importance.gradient` and :mod:`pure_prune.importance.hessian` takes

* ``loss_fn(params, batch) -> scalar``: the mean loss over the batch's rows, a pure function
  (twice differentiable in ``params`` for the second-order scores). A plain callable gets every
  route the loss alone allows (gradients, HVPs, exact and Hutchinson Hessian diagonals, per-sample
  statistics by ``vmap``); a :class:`~pure_prune.losses.ModelLoss` from
  ``losses.model_loss(model_fn, output_loss)`` also gets the routes that need the model's outputs
  (GGN and Monte-Carlo Fisher diagonals, the linear-layer fast path). Samples must not interact
  (BatchNorm in eval mode, state closed over by the caller).
* ``params``: a canonical dict tree of float tensors.
* ``batches``: one batch or a non-empty sequence (list, or tuple of non-tensors) of them. A batch
  is any pytree of tensors with one common leading sample axis of ``N > 0`` rows: ``(x, y)``, a
  dict for a language model, ... (a single batch whose top level holds no tensor, such as
  ``((x1, x2), y_tree)``, must be wrapped in a list). For a ``ModelLoss``, ``batch[keys[0]]`` is
  the model input and ``batch[keys[1]]`` the targets (class labels for cross-entropy).
* ``masks``: ``None`` (every leaf is scored) or a tree like ``params``: a bool tensor of the leaf's
  shape where the leaf is scored, ``None`` where it is not. Derivatives are taken at the masked
  parameters ``theta = W * M`` and with respect to ``theta``, so pruned entries get scores too.

Over several batches, batches are weighted by their row count ``N`` (the loss of all samples when
``loss_fn`` is a mean over rows). A *sample* of the per-sample statistics is one row of every
leaf of the batch, scored as a batch of one (``loss_fn(params, row[None])``): for token-level
cross-entropy one sequence, whose loss is the mean over its tokens.

Per-sample moments (:func:`batch_moments`) have two routes that give the same numbers:

* generic: ``vmap(grad)`` of the one-row loss over chunks of rows, reduced chunk by chunk;
* linear fast path (``ModelLoss`` only): a linear layer ``z = a W^T (+ b)`` has per-sample gradient
  ``g_n ⊗ a_n`` where ``g_n = dl_n/dz_n``, so ``sum_n f(g_n ⊗ a_n) = f(g)^T f(a)`` for ``f`` in
  ``x, x², |x|`` and the sign indicators (signs of products are products of signs).
  :func:`linear_taps` traces ``model_fn`` once (``make_fx``), finds such layers and builds a
  function that also returns each layer's input ``a`` and adds a zero "tap" to its output ``z``, so
  one backward pass to the taps yields every ``g``. Leaves it does not cover take the generic
  route. (The fast route calls ``torch.autograd.grad`` on the traced graph: measured,
  ``torch.func.grad`` costs ~0.4 ms more per call on the digits MLP, half a forward+backward.)

The default ``fast=True`` takes its trace from :data:`~pure_prune.importance.trace_cache.TRACES`
(per ``model_fn`` and shapes, bounded), so only a process's first call per shape traces; pass a
:class:`LinearTaps` to hold a trace yourself. The moments run eagerly on purpose: on the digits MLP
of ``bench/importance.py`` they cost 1.33x one forward+backward, against 1.36x in FLOPs (a second
matrix product per layer for ``g²``), and tracing the tapped forward, backward and products into
one ``make_fx`` graph made the whole ``gradient_snr`` call only ~3% faster; compiling that graph
with inductor made it no faster, after a compile of 13-36 s. The scores are eager functions; they also run under
``torch.compile`` (with graph breaks at the input checks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from einops import rearrange, reduce
from torch.func import grad, jvp, vmap
from torch.fx.experimental.proxy_tensor import make_fx

from pure_prune import tree
from pure_prune.groups import ChannelGroup, member_view
from pure_prune.importance.trace_cache import TRACES
from pure_prune.losses import ModelLoss

__all__ = [
    "Batch",
    "Batches",
    "LinearLayer",
    "LinearTaps",
    "LossFn",
    "Problem",
    "Units",
    "auto_chunk",
    "batch_grads",
    "batch_loss",
    "batch_moments",
    "check_chunk",
    "check_finite",
    "check_result",
    "check_same_tree",
    "cached_taps",
    "checked_outputs",
    "fast_layers",
    "flat_rows",
    "flatten_leaves",
    "iter_batches",
    "linear_grads",
    "linear_taps",
    "mask_leaves",
    "mean_grad",
    "merge",
    "need_model",
    "per_sample_chunks",
    "prepare",
    "resolve_taps",
    "rows_of",
    "split_leaves",
    "to_tree",
    "unit_sum",
]

LossFn = Callable[[tree.Tree, Any], torch.Tensor]
Batch = Any  # a pytree of tensors with a common leading sample axis
Batches = Batch | Sequence[Batch]
Units = Sequence[ChannelGroup] | int
_BLOCK = 2**24  # floats in one vmapped block when chunk_size is None (64 MiB in float32)
_aten = torch.ops.aten


class Problem(NamedTuple):
    """A checked scoring problem. ``theta`` holds every leaf of ``W * M`` (detached), in tree order;
    ``scored`` the indices of the scored leaves; ``batches`` the checked batches (int labels as
    int64 for cross-entropy), ``rows`` their row counts and ``samples`` the total; ``model`` is
    ``loss_fn`` when it is a :class:`~pure_prune.losses.ModelLoss`, else ``None``."""

    loss_fn: LossFn
    model: ModelLoss | None
    spec: Any
    paths: tuple[str, ...]
    theta: tuple[torch.Tensor, ...]
    scored: tuple[int, ...]
    batches: tuple[Batch, ...]
    rows: tuple[int, ...]
    samples: int


# ----------------------------------------------------------------------------------------- checks


def check_finite(
    where: str,
    paths: Sequence[str],
    leaves: Sequence[torch.Tensor | None],
    extra: Sequence[tuple[str, torch.Tensor]] = (),
) -> None:
    """Raise ``ValueError`` naming the first leaf of ``leaves`` (then of the ``(label, tensor)`` pairs
    in ``extra``) that holds NaN or inf.

    One sync: the sums of all tensors are finite unless one holds NaN/inf (or a sum overflows, in
    which case the tensors are inspected one by one and nothing is raised for finite values).
    """
    named = [(f"leaf {p!r}", x) for p, x in zip(paths, leaves)] + list(extra)
    tensors = [(name, x) for name, x in named if x is not None and x.numel() > 0]
    if not tensors:
        return
    if bool(torch.stack([x.sum().float() for _, x in tensors]).sum().isfinite()):
        return
    for name, x in tensors:
        bad = ~x.isfinite()
        if bool(bad.any()):
            kind = "NaN" if bool(x.isnan().any()) else "inf"
            raise ValueError(f"{where}: {name} has {int(bad.sum())} non-finite values ({kind})")


def check_result(where: str, problem: Problem, values: Sequence[torch.Tensor], what: str = "result") -> None:
    """Raise ``ValueError`` when ``values`` (one tensor per scored leaf) hold NaN or inf, naming the
    culprit: first a non-finite input (a ``params`` leaf, a float leaf of ``batches[i]``), else the
    leaf of the result. Inputs are inspected only then: a non-finite input that reaches the result
    is found at no cost to the calls where everything is finite (one sync)."""
    if bool(torch.stack([v.sum().float() for v in values]).sum().isfinite()):
        return
    keys = {} if problem.model is None else {str(problem.model.keys[0]): "x", str(problem.model.keys[1]): "y"}
    xs = [
        (f"batches[{i}].{keys[p]}" if p in keys else f"batches[{i}] leaf {p!r}", t)
        for i, b in enumerate(problem.batches)
        for p, t in zip(*tree.flatten_with_paths(b)[:2])
        if t.is_floating_point()
    ]
    check_finite(f"{where} (inputs)", problem.paths, problem.theta, xs)
    check_finite(f"{where} ({what})", [problem.paths[i] for i in problem.scored], values)


def check_chunk(chunk_size: int | None) -> None:
    """``chunk_size`` must be ``None`` or a positive int."""
    if chunk_size is None:
        return
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size}")


def check_same_tree(where: str, params: tree.Tree, other: tree.Tree, name: str) -> list[Any]:
    """Check that ``other`` has the structure of ``params`` and, at each non-None leaf, its shape.

    Returns the leaves of ``other``.
    """
    tree.assert_same_structure(params, other, ("params", name))
    paths, p_leaves, _ = tree.flatten_with_paths(params)
    o_leaves = tree.leaves(other)
    for p, w, o in zip(paths, p_leaves, o_leaves):
        if o is None:
            continue
        if not isinstance(o, torch.Tensor):
            raise TypeError(f"{where}: {name} leaf {p!r} must be a tensor or None, got {type(o).__name__}")
        if w is not None and o.shape != w.shape:
            raise ValueError(
                f"{where}: {name} leaf {p!r} has shape {tuple(o.shape)}, params has {tuple(w.shape)}"
            )
    return o_leaves


def mask_leaves(where: str, params: tree.Tree, masks: tree.Tree | None) -> list[torch.Tensor | None]:
    """The leaves of ``masks`` (all ``None`` when ``masks`` is None), checked: the structure of
    ``params``, a bool tensor of the leaf's shape or ``None`` at every leaf."""
    if masks is None:
        return [None] * len(tree.leaves(params))
    m_leaves = check_same_tree(where, params, masks, "masks")
    for p, m in zip(tree.paths(params), m_leaves):
        if m is not None and m.dtype != torch.bool:
            raise TypeError(f"{where}: masks leaf {p!r} must be a bool tensor or None, got {m.dtype}")
    return m_leaves


def _as_batches(where: str, batches: Any) -> tuple[Any, ...]:
    """One batch -> ``(batch,)``; a list, or a tuple holding no tensor at its top level, is a
    sequence of batches."""
    many = isinstance(batches, list) or (
        isinstance(batches, tuple) and not any(isinstance(b, torch.Tensor) for b in batches)
    )
    out = tuple(batches) if many else (batches,)
    if not out:
        raise TypeError(f"{where}: batches must be a batch or a non-empty sequence of batches")
    return out


def rows_of(where: str, label: str, batch: Any) -> int:
    """The common leading size ``N > 0`` of every leaf of ``batch``; ``TypeError``/``ValueError``
    naming the leaf (``label`` names the batch) otherwise."""
    if isinstance(batch, (str, bytes)) or batch is None:
        raise TypeError(f"{where}: {label} must be a pytree of tensors, got {batch!r:.80}")
    paths, leaves, _ = tree.flatten_with_paths(batch)
    if not leaves:
        raise ValueError(f"{where}: {label} holds no tensor")
    first = None
    for p, t in zip(paths, leaves):
        if not isinstance(t, torch.Tensor) or t.ndim == 0:
            got = f"a {t.dtype} scalar" if isinstance(t, torch.Tensor) else f"{t!r:.60}"
            raise TypeError(f"{where}: {label} leaf {p!r} must be a tensor with a sample axis, got {got}")
        if first is None:
            first = (p, t.shape[0])
        elif t.shape[0] != first[1]:
            raise ValueError(
                f"{where}: {label} leaf {p!r} has {t.shape[0]} rows, leaf {first[0]!r} has {first[1]} "
                "(every leaf of a batch needs one common leading sample axis)"
            )
    if first[1] == 0:
        raise ValueError(f"{where}: {label} has 0 rows (leaf {first[0]!r})")
    return first[1]


def _check_batch(where: str, i: int, batch: Any, model: ModelLoss | None) -> tuple[Any, int]:
    """A checked batch (int labels as int64 for cross-entropy) and its row count."""
    if model is not None:
        if not isinstance(batch, (tuple, list, Mapping)):
            raise TypeError(
                f"{where}: batches[{i}] must be a tuple/list or dict holding the model input and targets "
                f"at {model.keys!r}, got {type(batch).__name__}"
            )
        x, y = model.split(batch)
        label = "y" if model.keys == (0, 1) else f"targets {model.keys[1]!r}"
        y2 = model.check_targets(where, f"batches[{i}] {label}", y)
        if not isinstance(x, torch.Tensor) and not tree.leaves(x):
            raise TypeError(f"{where}: batches[{i}] x must be a tensor with a batch axis, got {x!r:.80}")
        if isinstance(x, torch.Tensor) and x.ndim == 0:
            raise TypeError(f"{where}: batches[{i}] x must be a tensor with a batch axis, got {x!r:.80}")
        if isinstance(x, torch.Tensor) and isinstance(y2, torch.Tensor) and y2.shape[0] != x.shape[0]:
            raise ValueError(
                f"{where}: batches[{i}] has {x.shape[0]} inputs and {y2.shape[0]} labels (need equal, > 0)"
            )
        if isinstance(y2, torch.Tensor) and y2.numel() == 0:
            raise ValueError(f"{where}: batches[{i}] y of shape {tuple(y2.shape)} holds no label")
        if y2 is not y:
            batch = model.join(batch, x, y2)
    return batch, rows_of(where, f"batches[{i}]", batch)


def _check_plain_loss(where: str, problem: Problem) -> None:
    """A plain ``loss_fn`` must give a float scalar that depends differentiably on the scored
    leaves (checked on the first batch, outside any transform: one forward pass)."""
    sub = [problem.theta[i].detach().requires_grad_() for i in problem.scored]
    with torch.enable_grad():
        try:
            value = problem.loss_fn(merge(problem, sub), problem.batches[0])
        except (TypeError, ValueError, AttributeError, IndexError, KeyError) as err:
            raise TypeError(
                f"{where}: loss_fn(params, batches[0]) raised {type(err).__name__}: {err}. loss_fn must "
                "be loss_fn(params, batch) -> scalar; to score a model_fn(params, x) -> outputs, pass "
                "losses.model_loss(model_fn, 'cross_entropy' | 'mse' | output_loss)"
            ) from err
    if not isinstance(value, torch.Tensor) or value.ndim != 0 or not value.is_floating_point():
        got = (
            f"a {value.dtype} tensor of shape {tuple(value.shape)}"
            if isinstance(value, torch.Tensor)
            else (f"{type(value).__name__}")
        )
        raise TypeError(
            f"{where}: loss_fn(params, batches[0]) must return a float scalar (the mean loss over the "
            f"batch's rows), got {got}; to score a model_fn(params, x) -> outputs, pass "
            "losses.model_loss(model_fn, 'cross_entropy' | 'mse' | output_loss)"
        )
    if not value.requires_grad:
        raise TypeError(
            f"{where}: loss_fn's value is not differentiable in the scored params (no autograd graph "
            f"reaches leaves {[problem.paths[i] for i in problem.scored][:5]}): was it detached or "
            "computed without grad?"
        )


def prepare(where: str, loss_fn: LossFn, params: tree.Tree, batches: Any, masks: tree.Tree | None) -> Problem:
    """Check the inputs of a scoring function named ``where`` and build its :class:`Problem`.

    Raises ``TypeError``/``ValueError`` naming the offending leaf path or batch. NaN/inf in the
    inputs are reported by :func:`check_result` when they reach a result.
    """
    if not callable(loss_fn):
        raise TypeError(f"{where}: loss_fn must be callable, got {type(loss_fn).__name__}")
    model = loss_fn if isinstance(loss_fn, ModelLoss) else None
    paths, leaves, spec = tree.flatten_with_paths(params)
    if not leaves:
        raise ValueError(f"{where}: params has no leaves")
    for p, w in zip(paths, leaves):
        if not isinstance(w, torch.Tensor) or not w.is_floating_point():
            raise TypeError(f"{where}: params leaf {p!r} must be a float tensor, got {w!r:.80}")
    m_leaves = mask_leaves(where, params, masks)
    if masks is None:
        scored = tuple(range(len(leaves)))
    else:
        scored = tuple(i for i, m in enumerate(m_leaves) if m is not None)
        if not scored:
            raise ValueError(f"{where}: masks has no scored leaf (every leaf is None)")
    first_of: dict[torch.dtype, str] = {}
    for i in scored:
        first_of.setdefault(leaves[i].dtype, paths[i])
    if len(first_of) > 1:
        seen = ", ".join(f"{d} at {p!r}" for d, p in first_of.items())
        raise TypeError(f"{where}: scored leaves must share one dtype, got {seen}")
    theta = tuple(w.detach() if m is None else w.detach() * m.to(w.dtype) for w, m in zip(leaves, m_leaves))
    checked = [_check_batch(where, i, b, model) for i, b in enumerate(_as_batches(where, batches))]
    bs, rows = tuple(b for b, _ in checked), tuple(n for _, n in checked)
    problem = Problem(loss_fn, model, spec, tuple(paths), theta, scored, bs, rows, sum(rows))
    if model is None:
        _check_plain_loss(where, problem)
    return problem


def need_model(where: str, problem: Problem, route: str) -> ModelLoss:
    """``problem.model``, or a ``TypeError`` saying that ``route`` needs the model's outputs."""
    if problem.model is None:
        raise TypeError(
            f"{where}: {route} needs the model's outputs: pass loss_fn as "
            "losses.model_loss(model_fn, output_loss), not a plain loss function"
        )
    return problem.model


def checked_outputs(where: str, problem: Problem, outputs: Any, y: Any) -> torch.Tensor:
    """Check a model output against the targets ``y`` (:meth:`ModelLoss.check`); returns it."""
    return need_model(where, problem, "this route").check(where, outputs, y)


def merge(problem: Problem, sub: Sequence[torch.Tensor]) -> tree.Tree:
    """The params tree with ``theta`` everywhere except the scored leaves, which come from ``sub``."""
    leaves = list(problem.theta)
    for i, s in zip(problem.scored, sub):
        leaves[i] = s
    return tree.unflatten(problem.spec, leaves)


def to_tree(problem: Problem, values: Sequence[torch.Tensor]) -> tree.Tree:
    """A scores tree: ``values`` (one per scored leaf) at the scored leaves, ``None`` elsewhere."""
    leaves: list[Any] = [None] * len(problem.theta)
    for i, v in zip(problem.scored, values):
        leaves[i] = v
    return tree.unflatten(problem.spec, leaves)


def flatten_leaves(values: Sequence[torch.Tensor]) -> torch.Tensor:
    """One tensor per scored leaf -> their entries concatenated, ``(D,)``."""
    return torch.cat([v.reshape(-1) for v in values])


def split_leaves(problem: Problem, flat: torch.Tensor) -> list[torch.Tensor]:
    """Inverse of :func:`flatten_leaves`: views of ``flat`` ``(D,)`` in the shapes of the scored
    leaves (which share one dtype, see :func:`prepare`)."""
    leaves = [problem.theta[i] for i in problem.scored]
    return [c.view(w.shape) for c, w in zip(torch.split(flat, [w.numel() for w in leaves]), leaves)]


def auto_chunk(count: int, width: int, chunk_size: int | None) -> int:
    """Vectors per vmapped block: ``chunk_size``, or as many ``width``-float vectors as fit ``2**24``."""
    if chunk_size is not None:
        return max(1, min(count, chunk_size))
    return max(1, min(count, _BLOCK // max(width, 1)))


def batch_loss(where: str, problem: Problem, batch: Any) -> Callable[[list[torch.Tensor]], torch.Tensor]:
    """``sub -> loss_fn(params with the scored leaves from sub, batch)``. For a ``ModelLoss`` the
    model output is checked against the targets first (one forward pass outside any transform)."""
    if problem.model is not None:
        x, y = problem.model.split(batch)
        problem.model.check(where, problem.model.model_fn(merge(problem, []), x), y)
    return lambda sub: problem.loss_fn(merge(problem, sub), batch)


def batch_grads(problem: Problem, where: str = "gradient") -> Iterator[tuple[float, list[torch.Tensor]]]:
    """For each batch: its share of the samples and the gradient of its mean loss w.r.t. the
    scored leaves of ``theta`` (one tensor per scored leaf)."""
    sub0 = [problem.theta[i] for i in problem.scored]
    model = problem.model
    for batch, n in zip(problem.batches, problem.rows):
        if model is not None:
            x, y = model.split(batch)

            def loss(sub, x=x, y=y):
                return model.loss(model.check(where, model.model_fn(merge(problem, sub), x), y), y)
        else:

            def loss(sub, batch=batch):
                return problem.loss_fn(merge(problem, sub), batch)

        yield n / problem.samples, grad(loss)(sub0)


def mean_grad(problem: Problem, where: str = "gradient") -> list[torch.Tensor]:
    """Gradient of the loss over all batches w.r.t. the scored leaves of ``theta`` (one per leaf)."""
    total = [torch.zeros_like(problem.theta[i]) for i in problem.scored]
    for w, g in batch_grads(problem, where):
        total = [t + w * gi for t, gi in zip(total, g)]
    return total


# ---------------------------------------------------------------------------------- linear taps


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


# ------------------------------------------------------------------------------ per-sample moments


def _signs(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (t > 0).to(t.dtype), (t < 0).to(t.dtype)


def _transform(stat: str, t: torch.Tensor, cache: dict[str, Any]) -> Any:
    """``f(t)`` for ``stat`` (``t``, ``t²``, ``|t|`` or the sign indicators), computed once per
    tensor: ``cache`` is a dict local to one layer of one batch."""
    key = "signs" if stat in ("pos", "neg") else stat
    if key not in cache:
        if key == "sum":
            cache[key] = t
        elif key == "sumsq":
            cache[key] = t * t
        elif key == "abs":
            cache[key] = t.abs()
        else:
            cache[key] = _signs(t)
    return cache[key]


def _layer_moments_into(
    stats: Sequence[str],
    layer: LinearLayer,
    g: torch.Tensor,
    a: torch.Tensor,
    w_out: dict[str, torch.Tensor] | None,
    b_out: dict[str, torch.Tensor] | None,
) -> None:
    """Write ``sum_n f(g_n ⊗ a_n)`` (the weight's moments) into ``w_out[stat]`` and ``sum_n f(g_n)``
    (the bias's) into ``b_out[stat]`` for one linear layer, from its output gradients ``g``
    ``(n, out)`` and inputs ``a`` ``(n, in)``; each transform of ``g`` and ``a`` is computed once.
    ``w_out``/``b_out`` are ``None`` when that leaf is not scored."""
    gc: dict[str, Any] = {}
    ac: dict[str, Any] = {}
    for stat in stats:
        gt = _transform(stat, g, gc)
        if w_out is not None:
            at, w = _transform(stat, a, ac), w_out[stat]
            if stat == "pos":
                layer.outer_sum(gt[0], at[0], out=w).add_(layer.outer_sum(gt[1], at[1]))
            elif stat == "neg":
                layer.outer_sum(gt[0], at[1], out=w).add_(layer.outer_sum(gt[1], at[0]))
            else:
                layer.outer_sum(gt, at, out=w)
        if b_out is not None:
            torch.sum(gt[0] if stat == "pos" else gt[1] if stat == "neg" else gt, 0, out=b_out[stat])


def _sample_moment(stat: str, g: torch.Tensor) -> torch.Tensor:
    """``sum_n f(g_n)`` over the leading (sample) axis of per-sample gradients ``g``.

    ``Tensor.sum(0)`` rather than ``einops.reduce``: on the small bias tensors of the fast path the
    einops call overhead measured larger than the reduction itself.
    """
    if stat == "sum":
        return g.sum(0)
    if stat == "sumsq":
        return (g * g).sum(0)
    if stat == "abs":
        return g.abs().sum(0)
    return _signs(g)[0 if stat == "pos" else 1].sum(0)


def per_sample_chunks(problem: Problem, batch: Any, chunk_size: int | None):
    """Yield per-sample gradients of the scored leaves, ``[(n, *shape) per leaf]``, chunk by chunk:
    ``vmap`` over the rows of every leaf of ``batch`` of ``grad`` of the loss of one row (a batch
    of one)."""
    sub0 = [problem.theta[i] for i in problem.scored]

    def one_loss(sub, row):
        return problem.loss_fn(merge(problem, sub), tree.map(lambda t: t[None], row))

    per_sample = vmap(grad(one_loss), in_dims=(None, 0))
    n = tree.leaves(batch)[0].shape[0]
    width = sum(s.numel() for s in sub0)
    step = auto_chunk(n, width, chunk_size)
    for start in range(0, n, step):
        yield per_sample(sub0, tree.map(lambda t, s=start: t[s : s + step], batch))


def batch_moments(
    problem: Problem,
    taps: LinearTaps | None,
    batch: Any,
    stats: Sequence[str],
    chunk_size: int | None,
) -> dict[str, torch.Tensor]:
    """Sums over the samples of one batch of functions of per-sample gradients.

    ``stats`` names them: ``"sum"`` (g), ``"sumsq"`` (g²), ``"abs"`` (|g|), ``"pos"``/``"neg"``
    (counts of g > 0 / g < 0), where g is the gradient of one sample's loss w.r.t. a scored leaf.
    Returns ``{stat: (D,)}``, flat over the scored leaves (:func:`split_leaves` gives them leaf by
    leaf): results are written in place into these fresh buffers, which saves a copy per
    statistic. Tapped linear layers are reduced with matrix products; the other leaves with
    chunked ``vmap(grad)``.
    """
    leaves = [problem.theta[i] for i in problem.scored]
    dtype = leaves[0].dtype
    out = {s: torch.empty(sum(w.numel() for w in leaves), dtype=dtype) for s in stats}
    slots = {s: split_leaves(problem, buf) for s, buf in out.items()}  # views, leaf by leaf
    pos_of = {leaf: j for j, leaf in enumerate(problem.scored)}
    done: set[int] = set()
    layers = fast_layers(problem, taps)
    where = "per-sample gradients"
    if layers:
        inputs, gs, _ = linear_grads(where, problem, taps, batch, [k for k, _ in layers], False)
        for (_, layer), a, g in zip(layers, inputs, gs):
            jw, jb = pos_of.get(layer.weight), pos_of.get(layer.bias)
            w_out = None if jw is None else {s: slots[s][jw] for s in stats}
            b_out = None if jb is None else {s: slots[s][jb] for s in stats}
            _layer_moments_into(stats, layer, g, a, w_out, b_out)
            done.update(j for j in (jw, jb) if j is not None)
    elif problem.model is not None:
        x, y = problem.model.split(batch)
        problem.model.check(where, problem.model.model_fn(merge(problem, []), x), y)
    rest = [j for j in range(len(problem.scored)) if j not in done]
    if rest:
        sub = problem._replace(scored=tuple(problem.scored[j] for j in rest))
        for c, chunk in enumerate(per_sample_chunks(sub, batch, chunk_size)):
            for s in stats:
                for j, g in zip(rest, chunk):
                    if c == 0:
                        slots[s][j].copy_(_sample_moment(s, g))
                    else:
                        slots[s][j].add_(_sample_moment(s, g))
    return out


# ------------------------------------------------------------------------------------------ units


def unit_sum(values: tree.Tree, units: Units, where: str = "unit_sum") -> dict[str, torch.Tensor]:
    """Sum the entries each unit owns.

    ``units`` is a sequence of :class:`~pure_prune.groups.ChannelGroup` (returns ``{group name:
    (size,)}``, summing the members marked ``score`` whose leaf in ``values`` is not None) or an int
    axis (returns ``{leaf path: (shape[axis],)}`` for every non-None leaf).
    """
    paths, leaves, _ = tree.flatten_with_paths(values)
    by_path = dict(zip(paths, leaves))
    if isinstance(units, bool) or not isinstance(units, (int, Sequence)):
        raise TypeError(
            f"{where}: units must be an int axis or a sequence of ChannelGroup, got {units!r:.80}"
        )
    if isinstance(units, int):
        out = {}
        for p, v in by_path.items():
            if v is None:
                continue
            if not -v.ndim <= units < v.ndim:
                raise ValueError(
                    f"{where}: axis {units} is out of range for leaf {p!r} of shape {tuple(v.shape)}"
                )
            out[p] = reduce(torch.movedim(v, units, 0), "c ... -> c", "sum")
        return out
    out = {}
    for g in units:
        if not isinstance(g, ChannelGroup):
            raise TypeError(f"{where}: units must hold ChannelGroup, got {type(g).__name__}")
        total = None
        for m in g.members:
            if not m.score:
                continue
            if m.path not in by_path:
                raise ValueError(f"{where}: group {g.name!r} member {m.path!r} is not a leaf of the tree")
            v = by_path[m.path]
            if v is None:
                continue
            part = reduce(member_view(v, m, g.size), "c r -> c", "sum")
            total = part if total is None else total + part
        if total is None:
            raise ValueError(f"{where}: group {g.name!r} has no scored member with a score (all None)")
        out[g.name] = total
    return out


def flat_rows(values: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate batched leaves ``[(k, *shape)]`` into ``(k, sum of numel)``."""
    return torch.cat([rearrange(v, "k ... -> k (...)") for v in values], dim=1)
