"""Second-order scores: Hessian-vector products, the Hessian diagonal, OBD, HAP and GraSP.

Conventions (``loss_fn(params, batch)``, inputs, masks, the ``fast`` linear-layer route) are those
of :mod:`pure_prune.importance.problem`; ``L`` is the loss, ``H`` its Hessian w.r.t. the scored
leaves of ``theta = W * M`` (the other leaves are held fixed). HVPs, the Hutchinson and exact
diagonals and GraSP need only ``loss_fn``; the GGN, the Monte-Carlo Fisher and the exactness check
need a :class:`~pure_prune.losses.ModelLoss` (``losses.model_loss(model_fn, output_loss)``).

Here: :func:`hessian_diag` and the routes it takes; the pieces live in
:mod:`~pure_prune.importance.hessian_hvp` (:func:`hvp`, the exact diagonal),
:mod:`~pure_prune.importance.hutchinson`, :mod:`~pure_prune.importance.ggn` (:func:`ggn_diag`,
:func:`fisher_diag_mc`, :func:`ggn_is_exact`) and :mod:`~pure_prune.importance.hessian_scores`
(:func:`obd`, :func:`hap`, :func:`unit_trace`, :func:`grasp`), all re-exported here.

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

from pure_prune import rng, tree
from pure_prune.importance.ggn import fisher_diag_mc, ggn_diag, ggn_is_exact, ggn_is_exact_cached, ggn_leaves
from pure_prune.importance.hessian_hvp import exact_diag, hvp, scored_paths, scored_width
from pure_prune.importance.hessian_scores import grasp, hap, obd, unit_trace
from pure_prune.importance.hutchinson import hutchinson_diag
from pure_prune.importance.linear_fast_path import LinearTaps, linear_taps
from pure_prune.importance.problem_inputs import Batches, LossFn, check_chunk, check_result, prepare, to_tree

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
    paths = scored_paths(problem)

    def need_key(leaves: list[str]) -> int:
        if key is None:
            raise ValueError(
                f"hessian_diag: method={method!r} runs Hutchinson for leaves {leaves[:5]}; pass key= "
                "(an int) for its random probes"
            )
        return key

    if method == "exact":
        if scored_width(problem) > max_exact:
            raise ValueError(
                f"hessian_diag: method='exact' needs one HVP per scored entry: {scored_width(problem)} > "
                f"max_exact={max_exact}; use method='ggn' (piecewise-linear nets) or 'hutchinson'"
            )
        out = exact_diag(problem, chunk_size)
    elif method == "ggn" or (method == "auto" and piecewise_linear is True):
        out = ggn_leaves(problem, fast, chunk_size)
    elif method == "hutchinson" or (
        method == "auto" and (piecewise_linear is False or problem.model is None)
    ):
        out = hutchinson_diag(problem, probes, need_key(paths), chunk_size, compile)
    else:
        exact = ggn_is_exact_cached(problem)
        out = [None] * len(paths)
        for use_ggn in (True, False):
            js = [j for j, p in enumerate(paths) if exact[p] == use_ggn]
            if not js:
                continue
            sub = problem._replace(scored=tuple(problem.scored[j] for j in js))
            if use_ggn:
                part = ggn_leaves(sub, fast, chunk_size)
            else:
                part = hutchinson_diag(sub, probes, need_key([paths[j] for j in js]), chunk_size, compile)
            for j, v in zip(js, part):
                out[j] = v
    check_result("hessian_diag", problem, out)
    return to_tree(problem, out)
