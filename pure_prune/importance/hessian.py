"""Second-order scores: Hessian-vector products, the Hessian diagonal, OBD, HAP and GraSP.

Conventions (``loss_fn(params, batch)``, inputs, masks, the ``fast`` linear-layer route) are those
of :mod:`pure_prune.importance.problem`; ``L`` is the loss, ``H`` its Hessian w.r.t. the scored
leaves of ``theta = W * M`` (the other leaves are held fixed). HVPs, the Hutchinson and exact
diagonals and GraSP need only ``loss_fn``; the GGN, the Monte-Carlo Fisher and the exactness check
need a :class:`~pure_prune.losses.ModelLoss` (``losses.model_loss(model_fn, output_loss)``).

Routes to ``diag(H)`` (:func:`hessian_diag`):

* ``"hutchinson"``: ``E[v * Hv]`` over ``probes`` Rademacher vectors ``v`` (unbiased; relative error
  falls like ``1/sqrt(probes)``). HVPs are forward-over-reverse (``jvp`` of ``grad``), vmapped over
  blocks of probes.
* ``"exact"``: ``(H e_i)_i`` for every basis vector ``e_i`` (vmapped blocks); for small models.
* ``"ggn"``: the generalized Gauss-Newton diagonal ``(1/N) sum_n sum_r (J_n^T s_nr)²`` where
  ``J_n = d outputs_n / d theta`` and the rows ``s_nr`` factor the Hessian of sample ``n``'s loss
  w.r.t. its outputs (:meth:`~pure_prune.losses.ModelLoss.hessian_factor`). Cross-entropy:
  ``S_n S_n^T = diag(p_n) - p_n p_n^T`` with rows ``s_nc = sqrt(p_nc) (e_c - p_n)``, ``C``
  vector-Jacobian products per sample (token-level logits ``(N, T, C)``: ``T*C`` per sequence, one
  per token and class, and the mean over tokens too); MSE: ``sqrt(2/D) I``; any other output loss:
  its Hessian from ``torch.func``, factored. ``diag(H) = diag(GGN) + diag(sum_n r_n . d² outputs_n)``
  with ``r`` the loss gradient w.r.t. the outputs, and the second term vanishes where every output
  is piecewise linear in each single weight (ReLU/max-pool MLPs and CNNs, BatchNorm in eval mode: a
  weight multiplies activations that do not depend on it). There the GGN diagonal *is* the Hessian
  diagonal.
* ``"auto"``: ``piecewise_linear=True`` trusts the caller (GGN everywhere), ``False`` takes
  Hutchinson everywhere, and ``None`` runs :func:`ggn_is_exact` (once per model function and
  shapes: memoised) and uses the GGN for the leaves where it is exact, Hutchinson for the others.
  A plain ``loss_fn`` takes Hutchinson everywhere.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable

import torch
from einops import rearrange, reduce, repeat
from torch.func import grad, jvp, vjp, vmap
from torch.fx.experimental.proxy_tensor import make_fx

from pure_prune import rng, tree
from pure_prune.importance.problem import (
    Batches,
    LinearTaps,
    LossFn,
    Problem,
    Units,
    auto_chunk,
    batch_loss,
    batch_moments,
    check_chunk,
    check_finite,
    check_result,
    check_same_tree,
    fast_layers,
    flat_rows,
    iter_batches,
    linear_grads,
    linear_taps,
    mask_leaves,
    mean_grad,
    merge,
    need_model,
    prepare,
    resolve_taps,
    split_leaves,
    to_tree,
    unit_sum,
)
from pure_prune.importance.trace_cache import TRACES

__all__ = [
    "LinearTaps",
    "fisher_diag_mc",
    "ggn_diag",
    "ggn_is_exact",
    "grasp",
    "hap",
    "hessian_diag",
    "hvp",
    "linear_taps",
    "obd",
    "unit_trace",
]

METHODS = ("auto", "hutchinson", "exact", "ggn")
_CHECK_ROWS = 16  # samples of the first batch that ggn_is_exact looks at
_CHECK_COORDS = 3  # coordinates per leaf it probes
_CHECK_RTOL = 1e-5


def _paths(problem: Problem) -> list[str]:
    return [problem.paths[i] for i in problem.scored]


def _split(problem: Problem, rows: torch.Tensor) -> list[torch.Tensor]:
    """``(k, D)`` rows over the scored leaves -> ``[(k, *leaf.shape)]``."""
    shapes = [problem.theta[i].shape for i in problem.scored]
    parts = torch.split(rows, [s.numel() for s in shapes], dim=1)
    return [p.reshape(rows.shape[0], *s) for p, s in zip(parts, shapes)]


def _width(problem: Problem) -> int:
    return sum(problem.theta[i].numel() for i in problem.scored)


def _hvp_batched(
    problem: Problem, scalar: Callable[[list[torch.Tensor]], torch.Tensor]
) -> Callable[[list[torch.Tensor]], list[torch.Tensor]]:
    """``vs -> [H vs]`` for the Hessian of ``scalar`` at the scored leaves, batched over the
    leading axis of ``vs`` (forward-over-reverse: ``jvp`` of ``grad``, vmapped).

    Some torch kernels have no forward-mode derivative of their backward (``F.mse_loss`` raises
    "ZeroTensors are immutable" under ``jvp`` of ``grad`` in torch 2.x); for a loss that uses one,
    the products fall back to reverse-over-reverse (``vjp`` of ``grad``, the pullback built once and
    vmapped over ``vs``; ``H`` is symmetric, so ``H^T v = H v``).
    """
    sub0 = [problem.theta[i] for i in problem.scored]
    g = grad(scalar)
    forward = vmap(lambda v: jvp(g, (sub0,), (v,))[1])
    pullback: list[Callable] = []

    def hvp(vs: list[torch.Tensor]) -> list[torch.Tensor]:
        if not pullback:
            try:
                return forward(vs)
            except RuntimeError as err:
                if "ZeroTensor" not in str(err):
                    raise
                pullback.append(vjp(g, sub0)[1])
        return list(vmap(pullback[0])(vs)[0])

    return hvp


def _weighted(problem: Problem, per_batch: Callable[..., list], fast: bool | LinearTaps = False) -> list:
    """``sum_b (N_b / N) per_batch(b, batch_b, taps_b)`` leaf by leaf (``taps_b`` from ``fast``)."""
    total = None
    for b, batch, taps in iter_batches(problem, fast):
        w = problem.rows[b] / problem.samples
        part = per_batch(b, batch, taps)
        part = part if w == 1.0 else [w * t for t in part]
        total = part if total is None else [a + c for a, c in zip(total, part)]
    return total


# ------------------------------------------------------------------------------------------- HVP


def hvp(
    loss_fn: LossFn,
    params: tree.Tree,
    batches: Batches,
    vs: tree.Tree,
    *,
    masks: tree.Tree | None = None,
    chunk_size: int | None = None,
) -> tree.Tree:
    """Hessian-vector products ``H v_k`` of the loss, forward-over-reverse, vmapped over ``k``.

    ``vs`` is a tree like ``params``: ``(K, *leaf.shape)`` at every scored leaf (``None`` at the
    others). Returns the tree of ``H v_k`` in the same layout. ``chunk_size`` vectors are vmapped at
    once (default: as many as fit a 2**24-float block).
    """
    problem = prepare("hvp", loss_fn, params, batches, masks)
    check_chunk(chunk_size)
    v_leaves = _check_vs("hvp", problem, vs)
    k = v_leaves[0].shape[0]
    step = auto_chunk(k, _width(problem), chunk_size)

    def per_batch(b: int, batch: object, _taps: object) -> list[torch.Tensor]:
        hv = _hvp_batched(problem, batch_loss("hessian", problem, batch))
        blocks = [hv([v[s : s + step] for v in v_leaves]) for s in range(0, k, step)]
        return [torch.cat([blk[j] for blk in blocks]) for j in range(len(v_leaves))]

    out = _weighted(problem, per_batch)
    check_result("hvp", problem, out)
    return to_tree(problem, out)


def _check_vs(where: str, problem: Problem, vs: tree.Tree) -> list[torch.Tensor]:
    """The scored leaves of ``vs``, each ``(K, *leaf.shape)`` with one ``K >= 1``; ``ValueError``
    naming the leaf otherwise."""
    params = tree.unflatten(problem.spec, problem.theta)
    tree.assert_same_structure(params, vs, ("params", "vs"))
    leaves = tree.leaves(vs)
    out, k = [], None
    scored = set(problem.scored)
    for i, (p, w, v) in enumerate(zip(problem.paths, problem.theta, leaves)):
        if i not in scored:
            if v is not None:
                raise ValueError(f"{where}: vs leaf {p!r} must be None (the leaf is not scored)")
            continue
        if not isinstance(v, torch.Tensor) or tuple(v.shape[1:]) != tuple(w.shape) or v.ndim != w.ndim + 1:
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else v
            raise ValueError(f"{where}: vs leaf {p!r} must have shape (K, *{tuple(w.shape)}), got {got}")
        if k is None:
            k = v.shape[0]
        if v.shape[0] != k or k == 0:
            raise ValueError(
                f"{where}: vs leaf {p!r} holds {v.shape[0]} vectors, other leaves {k} (need >= 1)"
            )
        out.append(v.to(w.dtype))
    return out


# ------------------------------------------------------------------------- diagonal estimators


def _rademacher_rows(key: int, start: int, stop: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    """``(stop - start, width)`` Rademacher rows, row ``k`` drawn from ``fold_in(key, start + k)``.

    Every bit of a uniform int32 is a fair coin: one ``randint`` per 32 signs, measured ~50x
    faster on CPU than a float or ``randint`` draw per sign (``rng.rademacher``). Sign ``32 w + b``
    of a row is bit ``b`` of its word ``w``. On a little-endian machine byte ``j`` of a word holds
    its bits ``8j .. 8j + 7``, so the words' bytes index a ``(256, 8)`` table of signs (one gather,
    measured ~20x faster than unpacking with shifts, the route taken on big-endian machines,
    with the same result).
    """
    words = -(-width // 32)
    drawn = torch.stack(
        [
            torch.randint(
                -(2**31), 2**31, (words,), dtype=torch.int32, generator=rng.generator(rng.fold_in(key, k))
            )
            for k in range(start, stop)
        ]
    )
    if sys.byteorder == "little":
        table = ((torch.arange(256)[:, None] >> torch.arange(8)) & 1).to(dtype).mul_(2).sub_(1)
        signs = torch.index_select(table, 0, drawn.view(torch.uint8).reshape(-1).int())
        return signs.view(stop - start, 32 * words)[:, :width]
    bits = (drawn[:, :, None] >> torch.arange(32, dtype=torch.int32)) & 1
    return rearrange(bits, "k w b -> k (w b)")[:, :width].to(dtype).mul_(2).sub_(1)


def _probe_block(problem: Problem) -> Callable[..., list[torch.Tensor]]:
    """``(theta, batch, vs) -> [sum_k v_k * (H v_k)]`` per scored leaf, ``H`` the Hessian of
    ``loss_fn(params, batch)`` at ``theta`` (every leaf, in tree order) and ``vs`` ``[(k, *shape)]``
    (forward-over-reverse HVPs, vmapped). Everything that varies is an argument (nothing closed
    over but the tree structure, the scored indices and ``loss_fn``), so a compiled block serves
    every call of its shapes."""
    spec, scored, loss_fn = problem.spec, problem.scored, problem.loss_fn

    def block(theta: list[torch.Tensor], batch: object, vs: list[torch.Tensor]) -> list[torch.Tensor]:
        def scalar(sub: list[torch.Tensor]) -> torch.Tensor:
            leaves = list(theta)
            for i, t in zip(scored, sub):
                leaves[i] = t
            return loss_fn(tree.unflatten(spec, leaves), batch)

        g = grad(scalar)
        sub = [theta[i] for i in scored]
        hv = vmap(lambda v: jvp(g, (sub,), (v,))[1])(vs)
        return [torch.linalg.vecdot(v, h, dim=0) for v, h in zip(vs, hv)]

    return block


def _compiled_block(problem: Problem, batch: object, vs: list[torch.Tensor], backend: str) -> Callable | None:
    """The compiled :func:`_probe_block` for ``batch``'s shapes and ``vs``'s number of probes, or
    ``None`` on the first call with these shapes (run eagerly then; the second call compiles) and
    where the block cannot be traced (a loss with no forward-mode derivative of its backward).

    The block is traced with ``make_fx`` (one graph of aten ops: ``torch.compile`` does not trace
    through ``torch.func`` transforms of pytree code) and the graph compiled with ``backend``.
    Memoised in :data:`TRACES` per model function (a ``ModelLoss``: with its output loss) or plain
    ``loss_fn``, and the shapes and dtypes of the params, scored leaves, batch and probes."""
    model = problem.model
    owner = problem.loss_fn if model is None else model.model_fn
    sig = (
        problem.paths,
        tuple((tuple(t.shape), t.dtype, t.device) for t in problem.theta),
        problem.scored,
        tuple((tuple(t.shape), t.dtype) for t in tree.leaves(batch)),
        None if model is None else (model.output_loss, model.keys),
        vs[0].shape[0],
        backend,
    )
    calls = TRACES.get(owner, ("hutchinson calls", sig), lambda: [0])
    calls[0] += 1
    if calls[0] < 2:
        return None

    def build() -> Callable | None:
        try:
            gm = make_fx(_probe_block(problem))(list(problem.theta), batch, vs)
        except RuntimeError as err:
            if "ZeroTensor" not in str(err):
                raise
            return None  # as _hvp_batched: such a loss takes the eager reverse-over-reverse route
        return torch.compile(gm, backend=backend, dynamic=False)

    return TRACES.get(owner, ("hutchinson compiled", sig), build)


def _hutchinson(
    problem: Problem, probes: int, key: int, chunk_size: int | None, compile_: bool | str = False
) -> list[torch.Tensor]:
    """``(1/K) sum_k v_k * H v_k`` per batch, probe ``k`` of batch ``b`` drawn from
    ``fold_in(fold_in(key, b), k)`` (so the result does not depend on ``chunk_size``).
    ``compile_`` (``True``: inductor, or a ``torch.compile`` backend name) runs the blocks of
    probes through :func:`_compiled_block` from the second call with the same shapes on."""
    width = _width(problem)
    dtype = problem.theta[problem.scored[0]].dtype
    step = auto_chunk(probes, width, chunk_size)
    backend = "inductor" if compile_ is True else compile_

    def per_batch(b: int, batch: object, _taps: object) -> list[torch.Tensor]:
        hv = None
        kb = rng.fold_in(key, b)
        acc = None
        for s in range(0, probes, step):
            vs = _split(problem, _rademacher_rows(kb, s, min(s + step, probes), width, dtype))
            block = _compiled_block(problem, batch, vs, backend) if backend else None
            if block is not None:
                part = block(list(problem.theta), batch, vs)
            else:
                hv = hv or _hvp_batched(problem, batch_loss("hessian", problem, batch))
                part = [torch.linalg.vecdot(v, h, dim=0) for v, h in zip(vs, hv(vs))]  # sum_k v_k * (H v_k)
            acc = part if acc is None else [a + c for a, c in zip(acc, part)]
        return [a / probes for a in acc]

    return _weighted(problem, per_batch)


def _exact(problem: Problem, chunk_size: int | None) -> list[torch.Tensor]:
    """``(H e_i)_i`` for every coordinate ``i`` of the scored leaves, ``chunk`` basis vectors at once."""
    width = _width(problem)
    dtype = problem.theta[problem.scored[0]].dtype
    step = auto_chunk(width, width, chunk_size)

    def per_batch(b: int, batch: object, _taps: object) -> list[torch.Tensor]:
        hv = _hvp_batched(problem, batch_loss("hessian", problem, batch))
        diag = []
        for s in range(0, width, step):
            idx = torch.arange(s, min(s + step, width))
            rows = torch.zeros(idx.numel(), width, dtype=dtype)
            rows[torch.arange(idx.numel()), idx] = 1.0
            diag.append(flat_rows(hv(_split(problem, rows)))[torch.arange(idx.numel()), idx])
        return [d[0] for d in _split(problem, torch.cat(diag)[None])]

    return _weighted(problem, per_batch)


def _rows(t: object, start: int, stop: int) -> object:
    """Rows ``start:stop`` of every leaf of ``t`` (a tensor or a pytree of them)."""
    return tree.map(lambda v: v[start:stop], t)


def _ggn_generic(
    problem: Problem,
    x: torch.Tensor,
    outputs: torch.Tensor,
    factor: Callable[[int, int], torch.Tensor],
    rows_per_sample: int,
    chunk_size: int | None,
) -> list:
    """``sum_n sum_r (J_n^T s_nr)²`` for the scored leaves: ``vmap`` over samples of ``vmap`` over
    the factor rows ``r`` (``factor(start, stop)`` gives ``(stop - start, R, *outputs.shape[1:])``,
    built chunk by chunk: ``T*C`` rows per sample for token-level logits) of a one-sample vjp, in
    chunks of samples."""
    sub0 = [problem.theta[i] for i in problem.scored]
    model_fn = problem.model.model_fn

    def one(xi: torch.Tensor, rows: torch.Tensor) -> list[torch.Tensor]:
        _, pull = vjp(lambda sub: model_fn(merge(problem, sub), tree.map(lambda t: t[None], xi))[0], sub0)
        gs = vmap(pull)(rows)[0]
        return [reduce(g * g, "c ... -> ...", "sum") for g in gs]

    per_sample = vmap(one)
    n = outputs.shape[0]
    step = auto_chunk(n, rows_per_sample * _width(problem), chunk_size)
    total = None
    for s in range(0, n, step):
        part = [
            reduce(t, "n ... -> ...", "sum") for t in per_sample(_rows(x, s, s + step), factor(s, s + step))
        ]
        total = part if total is None else [a + c for a, c in zip(total, part)]
    return total


def _ggn_batch(
    problem: Problem,
    taps: LinearTaps | None,
    batch: object,
    chunk_size: int | None,
    mc: Callable[[torch.Tensor, object], torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """The GGN diagonal of one batch's mean loss, ``(1/E) sum_n sum_r (J_n^T s_nr)²`` with the
    output-Hessian factor rows ``s_nr`` and divisor ``E`` of the ``ModelLoss``
    (:meth:`~pure_prune.losses.ModelLoss.hessian_factor`: for cross-entropy ``E = N`` labels, or
    ``N T`` token-level), one tensor per scored leaf. ``mc(outputs, targets)`` replaces the factor
    rows by Monte-Carlo ones. Traced linear layers as in :func:`ggn_diag`; the other leaves:
    :func:`_ggn_generic`."""
    model = problem.model
    pos_of = {leaf: j for j, leaf in enumerate(problem.scored)}
    out: list = [None] * len(problem.scored)
    layers = fast_layers(problem, taps)
    if layers:
        ks = [k for k, _ in layers]
        inputs, gs, entries = linear_grads("ggn_diag", problem, taps, batch, ks, mc or True)
        for (_, layer), a, g in zip(layers, inputs, gs):
            q = (g * g).sum(0)  # (N, out): sum over the R factor rows
            if layer.weight in pos_of:
                out[pos_of[layer.weight]] = layer.outer_sum(q, a * a / entries)
            if layer.bias in pos_of:
                out[pos_of[layer.bias]] = q.sum(0) / entries
    rest = [j for j, o in enumerate(out) if o is None]
    if rest:
        x, y = model.split(batch)
        outputs = model.check("ggn_diag", model.model_fn(merge(problem, []), x), y)
        if mc is None:

            def factor(s: int, e: int) -> torch.Tensor:
                return model.hessian_factor(outputs[s:e], _rows(y, s, e))

            per = outputs[0].numel()
        else:
            drawn = mc(outputs, y)

            def factor(s: int, e: int) -> torch.Tensor:
                return drawn[s:e]

            per = drawn.shape[1]
        sub = problem._replace(scored=tuple(problem.scored[j] for j in rest))
        entries = model.ggn_entries(outputs, y)
        for j, v in zip(rest, _ggn_generic(sub, x, outputs, factor, per, chunk_size)):
            out[j] = v / entries
    return out


def _ggn(problem: Problem, fast: bool | LinearTaps, chunk_size: int | None) -> list[torch.Tensor]:
    need_model("ggn_diag", problem, "the GGN diagonal")

    def per_batch(b: int, batch: object, taps: LinearTaps | None) -> list[torch.Tensor]:
        return _ggn_batch(problem, taps, batch, chunk_size)

    return _weighted(problem, per_batch, fast)


def ggn_diag(
    loss_fn: LossFn,
    params: tree.Tree,
    batches: Batches,
    *,
    masks: tree.Tree | None = None,
    fast: bool | LinearTaps = True,
    chunk_size: int | None = None,
) -> tree.Tree:
    """Exact generalized Gauss-Newton diagonal (Schraudolph 2002) of the loss (module docstring).

    ``loss_fn`` must be a :class:`~pure_prune.losses.ModelLoss` (the GGN needs the model's
    outputs): ``diag(J^T H_out J)`` averaged over samples, ``H_out`` the Hessian of a sample's loss
    w.r.t. its outputs. Equals the Hessian diagonal where the model is piecewise linear in each
    weight (check with :func:`ggn_is_exact`). ``fast=True`` uses the memoised trace of
    ``model_fn`` and reduces a linear layer as ``(sum_r G_r²)^T a² / E`` (``G_r`` ``(N, out)``: the
    vjps of the R factor rows to the layer's output, one batched backward; ``a`` its input); other
    leaves (or all, ``fast=False``) use ``vmap`` over samples and factor rows of vjps,
    ``chunk_size`` samples at once. Returns a tree like ``params`` (``None`` at unscored leaves).
    """
    problem = prepare("ggn_diag", loss_fn, params, batches, masks)
    check_chunk(chunk_size)
    out = _ggn(problem, fast, chunk_size)
    check_result("ggn_diag", problem, out)
    return to_tree(problem, out)


def fisher_diag_mc(
    loss_fn: LossFn,
    params: tree.Tree,
    batches: Batches,
    *,
    key: int,
    samples: int = 1,
    masks: tree.Tree | None = None,
    fast: bool | LinearTaps = True,
    chunk_size: int | None = None,
) -> tree.Tree:
    """Monte-Carlo Fisher (= GGN) diagonal, unbiased for :func:`ggn_diag`; ``loss_fn`` must be a
    :class:`~pure_prune.losses.ModelLoss`.

    Cross-entropy: ``(1/(N S)) sum_n sum_s g_n(ŷ_ns)²``, ``ŷ_ns`` ``samples`` labels per input drawn
    from the model's softmax (key ``fold_in(key, b)`` for batch ``b``) and ``g_n(ŷ)`` the gradient
    of ``CE(logits_n, ŷ)``: ``E[(J^T (p - e_ŷ))²] = diag(J^T (diag p - p p^T) J)``. Each batch is
    scored as one batch of ``samples * N`` rows (memory grows with ``samples``). Token-level labels
    ``(N, T)``: one label per token is drawn, ``g_n`` is the gradient of sequence ``n``'s mean loss
    and the sum is multiplied by ``T``: the cross-token terms of ``g_n²`` have zero mean, so
    ``T E[g_n²] = (1/T) sum_t diag(J_nt^T (diag p_nt - p_nt p_nt^T) J_nt)``.

    Other output losses (MSE, callables): ``(1/E) sum_n (1/S) sum_s (J_n^T S_n z_ns)²`` with the
    output-Hessian factor ``S_n`` (:meth:`~pure_prune.losses.ModelLoss.hessian_factor`) and
    standard normal ``z_ns`` (key ``fold_in(key, b)``): ``E[S z z^T S^T] = S S^T``. For MSE this is
    the gradient at targets drawn from the Gaussian the squared error is the likelihood of.
    Returns a tree like ``params`` (``None`` at unscored leaves).
    """
    rng.check_key(key)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples <= 0:
        raise ValueError(f"fisher_diag_mc: samples must be a positive int, got {samples!r}")
    problem = prepare("fisher_diag_mc", loss_fn, params, batches, masks)
    model = need_model("fisher_diag_mc", problem, "the Monte-Carlo Fisher")
    check_chunk(chunk_size)
    if not model.classes:
        out = _fisher_mc_factor(problem, key, samples, fast, chunk_size)
        check_result("fisher_diag_mc", problem, out)
        return to_tree(problem, out)
    pair = dataclasses.replace(model, keys=(0, 1))
    sampled = problem._replace(loss_fn=pair, model=pair)
    out, current = None, fast
    for b, batch in enumerate(problem.batches):
        x, y = model.split(batch)
        logits = model.check("fisher_diag_mc", model.model_fn(merge(problem, []), x), y)
        gen = rng.generator(rng.fold_in(key, b))
        probs = rearrange(logits.softmax(-1), "... c -> (...) c")
        drawn = torch.multinomial(probs, samples, replacement=True, generator=gen).reshape(*y.shape, samples)
        xs = repeat(x, "n ... -> (s n) ...", s=samples)
        taps = resolve_taps(current, sampled, xs)
        current = current if taps is None else taps
        ys = rearrange(torch.movedim(drawn, -1, 0), "s n ... -> (s n) ...")
        sums = batch_moments(sampled, taps, (xs, ys), ("sumsq",), chunk_size)
        tokens = y[0].numel()  # 1 for (N,) labels
        part = split_leaves(problem, sums["sumsq"] * (tokens / (problem.samples * samples)))
        out = part if out is None else [a + c for a, c in zip(out, part)]
    check_result("fisher_diag_mc", problem, out)
    return to_tree(problem, out)


def _fisher_mc_factor(
    problem: Problem, key: int, samples: int, fast: bool | LinearTaps, chunk_size: int | None
) -> list[torch.Tensor]:
    """The Monte-Carlo GGN of :func:`fisher_diag_mc` for output losses other than cross-entropy."""
    model = problem.model

    def per_batch(b: int, batch: object, taps: LinearTaps | None) -> list[torch.Tensor]:
        def mc(outputs: torch.Tensor, y: object) -> torch.Tensor:
            rows = model.hessian_factor(outputs, y)  # (N, R, ...)
            z = torch.randn(
                rows.shape[0],
                samples,
                rows.shape[1],
                dtype=rows.dtype,
                generator=rng.generator(rng.fold_in(key, b)),
            )
            return torch.einsum("nsr,nr...->ns...", z, rows) / math.sqrt(samples)

        return _ggn_batch(problem, taps, batch, chunk_size, mc)

    return _weighted(problem, per_batch, fast)


def ggn_is_exact(
    loss_fn: LossFn,
    params: tree.Tree,
    batches: Batches,
    *,
    masks: tree.Tree | None = None,
    coords: int = _CHECK_COORDS,
    rtol: float = _CHECK_RTOL,
) -> dict[str, bool]:
    """For each scored leaf, whether its Hessian diagonal equals its GGN diagonal.

    ``loss_fn`` must be a :class:`~pure_prune.losses.ModelLoss`. Checks ``coords`` evenly spaced
    coordinates ``i`` per leaf, on the first 16 samples of the first batch: the residual curvature
    ``R_ii = e_i^T (d²/dtheta² sum_n r_n . outputs_n) e_i`` (``r`` the loss gradient w.r.t. the
    outputs, held fixed) must satisfy ``|R_ii| <= rtol * max_j |(R e_i)_j|``. ``R_ii`` is exactly 0
    where the outputs are linear in the single weight ``i`` (piecewise-linear nets) and generically
    not otherwise (smooth activations, weight sharing). A sampled check, not a proof; it costs
    ``coords`` HVPs per leaf. Returns ``{leaf path: bool}``.
    """
    if isinstance(coords, bool) or not isinstance(coords, int) or coords <= 0:
        raise ValueError(f"ggn_is_exact: coords must be a positive int, got {coords!r}")
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not rtol >= 0:
        raise ValueError(f"ggn_is_exact: rtol must be a float >= 0, got {rtol!r}")
    problem = prepare("ggn_is_exact", loss_fn, params, batches, masks)
    need_model("ggn_is_exact", problem, "the GGN exactness check")
    return _ggn_is_exact(problem, coords, rtol)


def _ggn_is_exact_cached(problem: Problem) -> dict[str, bool]:
    """:func:`_ggn_is_exact` with the default coordinates and tolerance, memoised per model
    function, output loss, shapes and scored leaves (:data:`TRACES`): a property of the model's
    structure, checked once per model rather than per call."""
    model = problem.model
    x, y = model.split(problem.batches[0])
    sig = tuple((p, tuple(w.shape), w.dtype) for p, w in zip(problem.paths, problem.theta))
    data = tuple((tuple(t.shape), t.dtype) for t in tree.leaves((x, y)))
    key = ("ggn_is_exact", model.output_loss, sig, problem.scored, data)
    return TRACES.get(model.model_fn, key, lambda: _ggn_is_exact(problem, _CHECK_COORDS, _CHECK_RTOL))


def _ggn_is_exact(problem: Problem, coords: int, rtol: float) -> dict[str, bool]:
    model = problem.model
    x, y = (_rows(t, 0, _CHECK_ROWS) for t in model.split(problem.batches[0]))
    outputs = model.check("ggn_is_exact", model.model_fn(merge(problem, []), x), y)
    r = model.output_grad(outputs, y)

    def residual(sub: list[torch.Tensor]) -> torch.Tensor:
        return (r * model.model_fn(merge(problem, sub), x)).sum()

    width, offset, picks, owner = _width(problem), 0, [], []
    for j, i in enumerate(problem.scored):
        n = problem.theta[i].numel()
        idx = torch.linspace(0, n - 1, coords).round().long().unique()
        picks.append(idx + offset)
        owner += [j] * idx.numel()
        offset += n
    flat = torch.cat(picks)
    rows = torch.zeros(flat.numel(), width, dtype=outputs.dtype)
    rows[torch.arange(flat.numel()), flat] = 1.0
    out = flat_rows(_hvp_batched(problem, residual)(_split(problem, rows)))
    diag = out[torch.arange(flat.numel()), flat].abs()
    ok = diag <= rtol * out.abs().amax(dim=1)
    owners = torch.tensor(owner)
    return {problem.paths[i]: bool(ok[owners == j].all()) for j, i in enumerate(problem.scored)}


def hessian_diag(
    loss_fn: LossFn,
    params: tree.Tree,
    batches: Batches,
    *,
    method: str = "auto",
    probes: int = 64,
    key: int | None = None,
    masks: tree.Tree | None = None,
    piecewise_linear: bool | None = None,
    fast: bool | LinearTaps = True,
    chunk_size: int | None = None,
    max_exact: int = 65536,
    compile: bool | str = False,
) -> tree.Tree:
    """Diagonal of the Hessian of the loss w.r.t. the scored leaves (routes: module docstring).

    ``probes`` (K) and ``key`` drive Hutchinson (``key`` is needed only when Hutchinson runs);
    ``"exact"`` refuses more than ``max_exact`` scored entries; ``fast``/``chunk_size`` as in
    :func:`ggn_diag` (``chunk_size`` also bounds the probes or basis vectors vmapped at once).
    Over several batches the diagonal is of the loss averaged over all their samples. A plain
    ``loss_fn`` (no :class:`~pure_prune.losses.ModelLoss`) has no GGN: ``"auto"`` takes Hutchinson
    there (``"exact"`` is the other route it allows). The exactness check of ``"auto"`` is memoised
    per model function and shapes (a property of the model, not of the call). Returns a tree like
    ``params`` (``None`` at unscored leaves).

    ``compile=True`` (or a ``torch.compile`` backend name) compiles Hutchinson's block of HVPs
    once per loss (or model) function and shapes, memoised in
    :data:`~pure_prune.importance.trace_cache.TRACES`: the first call with new shapes runs
    eagerly, the second traces the block (``make_fx``: ``loss_fn``'s Python control flow is fixed
    at that call, so it must not branch on data) and compiles it, later ones reuse it; shapes
    that change every call never compile. The estimate equals the eager one up to float rounding
    (the same probes). Off by default because a compile pays only over many calls: on
    ``bench/importance.py``'s digits MLP (K = 64, a shared 2-core machine) the compiled block made
    a call ~1.4x faster (123 ms against 175 ms on one thread, 197 against 285 ms on two), and
    tracing and compiling took 8-16 s (2-3 s with inductor's on-disk cache warm), so it pays
    after ~50-200 calls.
    """
    if method not in METHODS:
        raise ValueError(f"hessian_diag: method must be one of {METHODS}, got {method!r}")
    if isinstance(probes, bool) or not isinstance(probes, int) or probes <= 0:
        raise ValueError(f"hessian_diag: probes must be a positive int (Hutchinson samples), got {probes!r}")
    if piecewise_linear not in (None, True, False):
        raise TypeError(f"hessian_diag: piecewise_linear must be None or a bool, got {piecewise_linear!r}")
    if key is not None:
        rng.check_key(key)
    if not isinstance(compile, (bool, str)):
        raise TypeError(
            f"hessian_diag: compile must be a bool or a torch.compile backend name, got {compile!r}"
        )
    check_chunk(chunk_size)
    problem = prepare("hessian_diag", loss_fn, params, batches, masks)
    paths = _paths(problem)

    def need_key(leaves: list[str]) -> int:
        if key is None:
            raise ValueError(
                f"hessian_diag: method={method!r} runs Hutchinson for leaves {leaves[:5]}; pass key= "
                "(an int) for its random probes"
            )
        return key

    if method == "exact":
        if _width(problem) > max_exact:
            raise ValueError(
                f"hessian_diag: method='exact' needs one HVP per scored entry: {_width(problem)} > "
                f"max_exact={max_exact}; use method='ggn' (piecewise-linear nets) or 'hutchinson'"
            )
        out = _exact(problem, chunk_size)
    elif method == "ggn" or (method == "auto" and piecewise_linear is True):
        out = _ggn(problem, fast, chunk_size)
    elif method == "hutchinson" or (
        method == "auto" and (piecewise_linear is False or problem.model is None)
    ):
        out = _hutchinson(problem, probes, need_key(paths), chunk_size, compile)
    else:
        exact = _ggn_is_exact_cached(problem)
        out = [None] * len(paths)
        for use_ggn in (True, False):
            js = [j for j, p in enumerate(paths) if exact[p] == use_ggn]
            if not js:
                continue
            sub = problem._replace(scored=tuple(problem.scored[j] for j in js))
            if use_ggn:
                part = _ggn(sub, fast, chunk_size)
            else:
                part = _hutchinson(sub, probes, need_key([paths[j] for j in js]), chunk_size, compile)
            for j, v in zip(js, part):
                out[j] = v
    check_result("hessian_diag", problem, out)
    return to_tree(problem, out)


# ------------------------------------------------------------------------------- derived scores


def _theta_and_diag(
    where: str, params: tree.Tree, diag: tree.Tree, masks: tree.Tree | None
) -> tuple[list[str], list, list, object]:
    paths, p_leaves, spec = tree.flatten_with_paths(params)
    d_leaves = check_same_tree(where, params, diag, "diag")
    check_finite(f"{where} (diag)", paths, d_leaves)
    m_leaves = mask_leaves(where, params, masks)
    theta = [w if m is None else w * m.to(w.dtype) for w, m in zip(p_leaves, m_leaves)]
    return paths, theta, d_leaves, spec


def unit_trace(diag: tree.Tree, units: Units) -> dict[str, torch.Tensor]:
    """Hessian trace per unit: the sum of ``diag`` over the entries each unit owns.

    ``units``: channel groups (``{group name: (size,)}``, members marked ``score`` whose leaf is not
    None) or an int axis (``{leaf path: (shape[axis],)}`` per non-None leaf).
    """
    return unit_sum(diag, units, "unit_trace")


def obd(params: tree.Tree, diag: tree.Tree, *, masks: tree.Tree | None = None) -> tree.Tree:
    """Optimal Brain Damage saliency ``0.5 * h * theta²`` per entry (``theta = W * M``).

    ``diag`` is a Hessian-diagonal tree like ``params`` (``None`` leaves stay ``None``).
    """
    paths, theta, d_leaves, spec = _theta_and_diag("obd", params, diag, masks)
    return tree.unflatten(spec, [None if h is None else 0.5 * h * w * w for w, h in zip(theta, d_leaves)])


def hap(
    params: tree.Tree, diag: tree.Tree, units: Units, *, masks: tree.Tree | None = None
) -> dict[str, torch.Tensor]:
    """Hessian-aware channel score (HAP): ``trace_u * ||theta_u||² / numel_u`` (Yu et al. 2022).

    For unit ``u``, ``trace_u`` sums ``diag`` over the entries ``u`` owns, ``||theta_u||²`` sums their
    squared weights and ``numel_u`` counts them (members with a non-None ``diag`` leaf).
    ``units`` as in :func:`unit_trace`. Returns ``{name: (size,)}``.
    """
    paths, theta, d_leaves, spec = _theta_and_diag("hap", params, diag, masks)
    present = [h is not None for h in d_leaves]
    sq = tree.unflatten(spec, [w * w if k else None for w, k in zip(theta, present)])
    ones = tree.unflatten(spec, [torch.ones_like(w) if k else None for w, k in zip(theta, present)])
    trace = unit_sum(diag, units, "hap")
    norm = unit_sum(sq, units, "hap")
    count = unit_sum(ones, units, "hap")
    return {k: trace[k] * norm[k] / count[k] for k in trace}


def grasp(
    loss_fn: LossFn,
    params: tree.Tree,
    batches: Batches,
    *,
    masks: tree.Tree | None = None,
) -> tree.Tree:
    """GraSP importance ``theta * (H g)`` (higher = keep).

    ``g`` is the loss gradient over all batches and ``H g`` its Hessian-vector product, both over
    the scored leaves. The GraSP paper's score is ``S = -theta * (H g)`` and prunes the *largest*
    ``S``; this returns ``-S`` so that, as for every pure_prune score, the lowest are pruned.
    Returns a tree like ``params`` (``None`` at unscored leaves).
    """
    problem = prepare("grasp", loss_fn, params, batches, masks)
    g = mean_grad(problem)
    check_result("grasp", problem, g, "gradient")

    def per_batch(b: int, batch: object, _taps: object) -> list[torch.Tensor]:
        return [
            h[0] for h in _hvp_batched(problem, batch_loss("hessian", problem, batch))([t[None] for t in g])
        ]

    hg = _weighted(problem, per_batch)
    check_result("grasp", problem, hg, "Hg")
    return to_tree(problem, [problem.theta[i] * h for i, h in zip(problem.scored, hg)])
