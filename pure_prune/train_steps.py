"""Building the masked training and evaluation steps: :func:`make_step` and :func:`make_eval_step`.

A step minimises ``L(W ⊙ M)`` with the masks as inputs (one compiled step serves every mask); see
:mod:`pure_prune.train` for the contract. In plain eager code the training step runs over the
params' leaf list (``_leaf_step``: ``torch._foreach_*`` kernels, ``torch.autograd.grad``); under
``torch.compile``, ``torch.func.vmap`` or for params that require grad, the ``torch.func`` body.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from pure_prune import mask, stage_saved, tree
from pure_prune.losses import accuracy, class_labels, correct
from pure_prune.optim import Optimizer, OptState, apply_factors, apply_updates, mask_factors
from pure_prune.train_checks import apply_fn, check_metrics, checker, forward_masker
from pure_prune.train_types import Batch, Compiler, EvalStep, Loss, Metrics, Params, Step

__all__ = ["in_place_body", "make_eval_step", "make_step"]


def _masked(params: Params, masks: Params | None) -> Params:
    """``params ⊙ masks`` (``mask.apply``); ``masks=None`` means dense."""
    return params if masks is None else mask.apply(params, masks)


def _plain_eager() -> bool:
    """Whether a step may take :func:`_leaf_step`'s path: eager code (not traced by dynamo) and no
    ``torch.func`` transform active (a vmapped seed step)."""
    return not torch.compiler.is_compiling() and not torch._C._are_functorch_transforms_active()


def _detached(x: Any) -> Any:
    return x.detach() if isinstance(x, Tensor) else x


def _leaf_step(
    apply: Callable[..., Any], loss: Loss, optimizer: Optimizer, premasked: bool, extra: Metrics, body: Step
) -> Step:
    """:func:`make_step`'s step for plain eager code, over the leaf list of ``params``; ``body``
    (the ``torch.func`` step) for params that autograd tracks (a caller differentiating through
    the step needs ``torch.func``'s nesting).

    The same arithmetic as the ``torch.func`` body, with the Python work that does not depend on
    the batch cut out: the params are flattened once; the masks become ``0.0``/``1.0`` factors
    once (``optim.mask_factors``) and are applied with one multi-tensor multiply in the forward
    pass (``W * M``, as ``torch.nn.utils.prune`` does) and after the update; the gradient comes
    from ``torch.autograd.grad`` on detached leaves (``torch.func.grad_and_value`` costs ~0.5-0.7 ms
    of wrapping per step on the digits MLP); the optimizer runs over the lists
    (``Optimizer.update_leaves``, ``torch._foreach_*`` kernels). Equal to the ``torch.func`` body
    for finite params and gradients (a pruned entry may come out ``-0.0`` where that gives
    ``+0.0``); ``tests/test_train_eager.py`` holds them to it.
    """

    update_leaves = getattr(optimizer, "update_leaves", None)  # None: an optimizer with `update` only
    memo: list[Any] = []  # [(mask leaves, their versions, param dtypes), factors] of the last call

    def factors_of(masks: Params | None, p_leaves: list[Tensor]) -> list[Tensor | None]:
        """``optim.mask_factors``, converted again only when the mask tensors (identity and
        in-place version) or the params' dtypes change: once per stage, not once per step."""
        if masks is None:
            return [None] * len(p_leaves)
        m_leaves = tree.leaves(masks)
        try:
            key = (m_leaves, [m._version for m in m_leaves if m is not None], [p.dtype for p in p_leaves])
        except RuntimeError:  # inference tensors keep no version counter: convert every call
            return mask_factors(m_leaves, p_leaves)
        if memo and len(memo[0][0]) == len(m_leaves) and memo[0][1:] == key[1:]:
            if all(a is b for a, b in zip(memo[0][0], m_leaves)):
                return memo[1]
        memo[:] = [key, mask_factors(m_leaves, p_leaves)]
        return memo[1]

    def step(params: Params, state: Params, opt_state: OptState, masks: Params | None, batch: Batch):
        x, *targets = batch
        p_leaves, spec = tree.flatten(params)
        if any(not isinstance(p, Tensor) or p.requires_grad for p in p_leaves):
            return body(params, state, opt_state, masks, batch)  # its checks name a bad leaf
        factors = factors_of(masks, p_leaves)
        with torch.enable_grad():
            live = [p.detach().requires_grad_() for p in p_leaves]
            seen = live if premasked else apply_factors(live, factors)
            out, new_state = apply(tree.unflatten(spec, seen), state, x, train=True)
            value = loss(out, *targets)
            grads = list(torch.autograd.grad(value, live, materialize_grads=True))
        out = out.detach()
        if update_leaves is not None:  # the gradient of W * M is already masked
            updates, new_opt_state = update_leaves(
                grads, opt_state, p_leaves, factors, grads_masked=not premasked
            )
            new_leaves = list(updates)  # new tensors of this update: u + p in place, = p + u
            torch._foreach_add_(new_leaves, p_leaves)
        else:  # an optimizer with a tree update only (e.g. rsst.penalized's)
            tree_updates, new_opt_state = optimizer.update(
                tree.unflatten(spec, grads), opt_state, params, masks
            )
            new_leaves = list(torch._foreach_add(p_leaves, tree.leaves(tree_updates)))
        masked = [i for i, f in enumerate(factors) if f is not None]
        if masked:  # in place on the new leaves: the params masked again, as W * M
            torch._foreach_mul_([new_leaves[i] for i in masked], [factors[i] for i in masked])
        new_params = tree.unflatten(spec, new_leaves)
        found = {"accuracy": accuracy(out, targets[0])} if class_labels(out, targets[0]) else {}
        found["loss"] = value.detach()
        found.update({name: fn(out, *targets).detach() for name, fn in extra.items()})
        return new_params, tree.map(_detached, new_state), new_opt_state, found

    return step


def _input_masks(compiled: bool) -> Callable[[Params | None], Params | None]:
    """``as_input(masks)``: the masks as the step's body receives them: their uint8 views
    (``mask.as_bytes``, no copy, kept per stage by ``mask.bytes_views``) when the body is compiled,
    where they make faster code; the bool masks in eager mode."""
    views = mask.bytes_views()

    def as_input(masks: Params | None) -> Params | None:
        return views(masks) if compiled and masks is not None else masks

    return as_input


def _compiled(
    fn: Callable,
    compile: bool,  # noqa: A002
    backend: str | Callable,
    compiler: Compiler | None,
    cache_dir: str | os.PathLike | None,
    form: str,
) -> Callable:
    if compiler is not None:
        if not callable(compiler):
            raise TypeError(f"compiler must be callable (body -> compiled body), got {compiler!r}")
        return compiler(fn)
    if not compile:
        return fn
    return stage_saved.compile_step(fn, backend=backend, cache_dir=cache_dir, form=form)


def make_step(
    model: Any,
    loss: Loss,
    optimizer: Optimizer,
    *,
    compile: bool = True,  # noqa: A002 - the switch's natural name
    backend: str | Callable = "inductor",
    premasked: bool = False,
    compiler: Compiler | None = None,
    metrics: Metrics | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Step:
    """A masked training step.

    ``step(params, state, opt_state, masks, batch) -> (params, state, opt_state, metrics)``:

    * ``params``/``state``: the model's trees; ``state`` comes back with ``apply(..., train=True)``'s
      new buffers (BatchNorm running stats).
    * ``masks``: the structure of ``params`` (bool tensors, ``None`` for dense leaves), or ``None``
      for dense training.
    * ``metrics``: ``{"loss": float32 ()}`` on this batch, before the update, with ``"accuracy"``
      (float32 ``()``) where the targets are class labels and one entry per extra metric
      (``metrics=``: ``{name: fn(out, y, *extra)}``, each a mean over the entries of ``y``).

    With ``compile=False``, called in plain eager code, the step runs over the params' leaf list
    (:func:`_leaf_step`: masks as ``W * M`` factors, ``torch.autograd.grad``, the optimizer's
    ``update_leaves`` with ``torch._foreach_*`` kernels): the same values as the ``torch.func`` body
    that runs under ``vmap``, under ``torch.compile`` and for params that require grad, for
    finite params. A pruned weight that is ``inf``/``NaN`` on entry is ``NaN`` after ``x * 0``:
    it spoils the forward pass and stays in the params, where the body's ``where`` ignores it
    (``mask.apply`` the params first, as every step's output already is).

    With ``compile=True`` the step is ``torch.compile(fullgraph=True, backend=backend)``; masks and
    optimizer state are inputs, so changing their values never recompiles. The trees are checked
    (paths named in the error) before the compiled function is called, and so is the first batch
    of each shape and dtype the step sees (inputs in the params' float dtype, finite, class labels
    in ``[0, C)``: see ``train_checks.check_batch_values``; later batches of that shape are not read, which
    would cost a sync per step). The masks reach the
    compiled function as their uint8 views (``mask.as_bytes``: no copy, faster code on CPU).
    ``compiler`` compiles the step's body instead of ``torch.compile`` (e.g. ``lambda body:
    stage.Compiled(body, backend=...)``: one static graph per shape, counted per stage); the checks
    and the uint8 masks are as with ``compile=True``.

    A compiled step (``compile=True``, no ``compiler``) has an attribute ``in_place(params, state,
    opt_state, masks, batch) -> (state, metrics)``: the same step written into the tensors of the
    given ``params`` and ``opt_state`` (:func:`in_place_body`, compiled once more, lazily), which
    :func:`pure_prune.train.fit` runs on copies of its own; other steps have ``in_place = None``.

    ``cache_dir`` (with ``compile=True`` and ``backend="inductor"``): the compiled step is saved
    there and a later process with the same step loads it instead of tracing and compiling
    (:class:`pure_prune.stage_saved.Saved`; the same results, bit for bit). The library writes no file
    unless given a directory.

    ``premasked=True`` promises that every pruned entry of ``params`` is already ``0.0`` on entry,
    as it is after ``mask.apply(params, masks)`` and after every step of this function (which
    returns masked params). The forward pass then reads ``params`` directly instead of
    ``where(M, W, 0)``, saving one pass over the weights and its gradient; the optimizer still
    masks gradients, state and updates, so the results are those of ``premasked=False``. The
    promise is not checked (that would cost the pass it saves); if it is broken, only that step's
    forward pass sees the non-zero pruned weights, and the params it returns are masked again.
    """
    apply = apply_fn(model)
    if not callable(loss):
        raise TypeError(f"loss must be callable, got {loss!r}")
    extra = check_metrics(metrics)
    if not callable(getattr(optimizer, "update", None)):
        raise TypeError(f"optimizer must be an optim.Optimizer, got {optimizer!r}")

    forward_masks = forward_masker(premasked)

    def objective(params: Params, state: Params, masks: Params | None, x: Any, targets: list[Tensor]):
        out, new_state = apply(_masked(params, forward_masks(masks)), state, x, train=True)
        return loss(out, *targets), (out.detach(), new_state)

    grad_and_value = torch.func.grad_and_value(objective, has_aux=True)

    def body(params: Params, state: Params, opt_state: OptState, masks: Params | None, batch: Batch):
        x, *targets = batch
        grads, (value, (out, new_state)) = grad_and_value(params, state, masks, x, targets)
        updates, new_opt_state = optimizer.update(grads, opt_state, params, masks)
        new_params = _masked(apply_updates(params, updates), masks)
        found = {"accuracy": accuracy(out, targets[0])} if class_labels(out, targets[0]) else {}
        found["loss"] = value.detach()
        found.update({name: fn(out, *targets).detach() for name, fn in extra.items()})
        return new_params, new_state, new_opt_state, found

    compiled = compile or compiler is not None
    leaf_step = None if compiled else _leaf_step(apply, loss, optimizer, premasked, extra, body)

    def step(params: Params, state: Params, opt_state: OptState, masks: Params | None, batch: Batch):
        if leaf_step is not None and _plain_eager():
            return leaf_step(params, state, opt_state, masks, batch)
        return body(params, state, opt_state, masks, batch)

    run = _compiled(step, compile, backend, compiler, cache_dir, "train")
    check, as_input = checker(apply), _input_masks(compiled)

    def checked_step(params: Params, state: Params, opt_state: OptState, masks: Params | None, batch: Batch):
        check(params, state, masks, batch)
        return run(params, state, opt_state, as_input(masks), batch)

    checked_step.in_place = None  # type: ignore[attr-defined]
    if compile and compiler is None:
        run_in_place = _compiled(in_place_body(body), compile, backend, None, cache_dir, "train-in-place")

        def checked_in_place(
            params: Params, state: Params, opt_state: OptState, masks: Params | None, batch: Batch
        ) -> tuple[Params, dict[str, Tensor]]:
            check(params, state, masks, batch)
            return run_in_place(params, state, opt_state, as_input(masks), batch)

        checked_step.in_place = checked_in_place  # type: ignore[attr-defined]
    return checked_step


def in_place_body(body: Step) -> Callable[..., tuple[Params, dict[str, Tensor]]]:
    """``body`` that writes its new params and optimizer state into the tensors of the ``params`` and
    ``opt_state`` it was given, and returns ``(state, metrics)``: the same values, bit for bit (the
    same graph, with stores into the inputs' buffers in place of new outputs).

    Compiled, the last kernels store straight into those buffers: no new params or optimizer state
    are allocated per step, and a step touches one copy of them instead of two. Measured on the
    digits MLP at one thread (2 AMD EPYC cores, shared): the single step 2-3% faster
    (``bench/end_to_end.py --step-time``), the 8-seed vmapped step 8-12% (the two alternating in
    one ``run --seeds 8`` process). The caller owns the buffers: nothing else may hold them, and no
    two leaves may share memory (:func:`pure_prune.train_fit.fit` runs it on copies of its own).
    """

    def stepped_in_place(
        params: Params, state: Params, opt_state: OptState, masks: Params | None, batch: Batch
    ):
        new_params, new_state, new_opt_state, found = body(params, state, opt_state, masks, batch)
        for old, new in zip(tree.leaves(params), tree.leaves(new_params), strict=True):
            old.copy_(new)
        for old, new in zip(tree.leaves(opt_state), tree.leaves(new_opt_state), strict=True):
            old.copy_(new)
        return new_state, found

    return stepped_in_place


def make_eval_step(
    model: Any,
    loss: Loss,
    *,
    compile: bool = True,  # noqa: A002 - the switch's natural name
    backend: str | Callable = "inductor",
    premasked: bool = False,
    compiler: Compiler | None = None,
    metrics: Metrics | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> EvalStep:
    """A masked evaluation step (``apply(..., train=False)``; the state is not changed).

    ``eval_step(params, state, masks, batch) -> {"count": int64 (), "loss_sum": float32 ()}`` and,
    where the targets are class labels, ``"correct": int64 ()``; each extra metric (``metrics=``, as
    in :func:`make_step`) adds ``"<name>_sum"``. Sums over the entries of the batch's targets ``y``,
    so that they add up across batches (``loss_sum = loss * count``, as ``loss`` is a mean). See
    :func:`evaluate`. ``compile``, ``cache_dir``,
    ``compiler`` and ``premasked`` (params promised zero at pruned entries: the forward pass skips
    the masking) as in :func:`make_step`.
    """
    apply = apply_fn(model)
    if not callable(loss):
        raise TypeError(f"loss must be callable, got {loss!r}")
    extra = check_metrics(metrics)
    forward_masks = forward_masker(premasked)

    def eval_step(params: Params, state: Params, masks: Params | None, batch: Batch) -> dict[str, Tensor]:
        x, *targets = batch
        labels = targets[0]
        out, _ = apply(_masked(params, forward_masks(masks)), state, x, train=False)
        n = labels.numel()
        sums = {"correct": correct(out, labels)} if class_labels(out, labels) else {}
        sums["count"] = torch.full((), n, dtype=torch.int64, device=labels.device)
        sums["loss_sum"] = loss(out, *targets).detach() * n
        sums.update({f"{name}_sum": fn(out, *targets).detach() * n for name, fn in extra.items()})
        return sums

    run = _compiled(eval_step, compile, backend, compiler, cache_dir, "eval")
    compiled = compile or compiler is not None
    check, as_input = checker(apply), _input_masks(compiled)

    def checked_eval_step(params: Params, state: Params, masks: Params | None, batch: Batch):
        check(params, state, masks, batch)
        return run(params, state, as_input(masks), batch)

    return checked_eval_step
