"""Pure masked train and eval steps, evaluation over batches, and a fit loop.

A step is a pure function of its inputs; masks are *inputs*, never constants, so one compiled step
serves every mask (and every learning rate set with ``optim.set_lr``) without recompiling::

    step = make_step(models.get("mlp"), losses.cross_entropy, optim.sgd(0.1, momentum=0.9))
    params, state, opt_state, metrics = step(params, state, opt_state, masks, (x, y))

Training minimises ``L(W ⊙ M)``: the forward pass sees the masked params, the
gradient flows through the masked product (so it is 0 at pruned entries), the optimizer update is
masked, and the params are re-masked after the update. Hence after every step each pruned weight is
exactly 0.0, even one that was non-zero before the step (``optim`` alone only guarantees zero
updates and zero optimizer state at pruned entries). ``premasked=True`` skips the forward pass's
masking for params that are already zero at pruned entries (same results; see :func:`make_step`).

A batch is a tuple ``(x, y, *extra)``: ``x`` goes to the model, ``loss(out, y, *extra)`` must
return the float ``()`` mean over the entries of ``y`` (any loss: ``losses.cross_entropy``,
``losses.mse`` for regression, ...). Accuracy is reported only where ``y`` holds class labels
(``losses.class_labels``: integer, of shape ``out.shape[:-1]``; decided from dtypes and shapes, so
a compiled step never branches on values); ``metrics={name: fn(out, y, *extra) -> mean}`` adds
others. Extra entries carry e.g. teacher logits for distillation:
``loss = lambda s, y, t: losses.kd_loss(s, t, y)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor
from tqdm import tqdm

from pure_prune import mask, stage, tree
from pure_prune.losses import accuracy, class_labels, correct
from pure_prune.optim import Optimizer, OptState, apply_factors, apply_updates, mask_factors

__all__ = ["FitResult", "evaluate", "fit", "make_eval_step", "make_step", "sum_metrics"]

Params = Any
Batch = tuple[Tensor, ...]
Loss = Callable[..., Tensor]
Step = Callable[[Params, Params, OptState, Params, Batch], tuple[Params, Params, OptState, dict[str, Tensor]]]
EvalStep = Callable[[Params, Params, Params, Batch], dict[str, Tensor]]
Compiler = Callable[[Callable[..., Any]], Callable[..., Any]]
"""Compiles a step's body in place of ``torch.compile``: ``compiler(body) -> callable``."""
Metrics = Mapping[str, Callable[..., Tensor]]
"""Extra metrics ``{name: fn(out, y, *extra) -> float ()}``, each a mean over the entries of ``y``."""
_RESERVED = ("accuracy", "loss", "correct", "count", "loss_sum")


def _check_metrics(metrics: Metrics | None) -> dict[str, Callable[..., Tensor]]:
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise TypeError(
            f"metrics must be a mapping {{name: fn(out, y, *extra)}}, got {type(metrics).__name__}"
        )
    for name, fn in metrics.items():
        if not isinstance(name, str) or name in _RESERVED or name.endswith("_sum"):
            raise ValueError(
                f"metrics: name {name!r} must be a str, not one of {_RESERVED} nor ending in '_sum'"
            )
        if not callable(fn):
            raise TypeError(f"metrics[{name!r}] must be callable as fn(out, y, *extra), got {fn!r:.80}")
    return dict(metrics)


def _apply_fn(model: Any) -> Callable[..., tuple[Tensor, Params]]:
    """The ``apply(params, state, x, *, train)`` of a ModelSpec (anything with ``.apply``) or a function."""
    apply = getattr(model, "apply", None)
    if callable(apply):
        return apply
    if callable(model):
        return model
    raise TypeError(f"model must be a ModelSpec (with .apply) or an apply function, got {model!r}")


def _masked(params: Params, masks: Params | None) -> Params:
    """``params ⊙ masks`` (``mask.apply``); ``masks=None`` means dense."""
    return params if masks is None else mask.apply(params, masks)


def _forward_masks(premasked: bool) -> Callable[[Params | None], Params | None]:
    """What the forward pass masks the params with: the masks, or ``None`` (no masking) when the
    params are promised to be zero at pruned entries already."""
    if not isinstance(premasked, bool):
        raise TypeError(f"premasked must be a bool, got {premasked!r}")
    return (lambda masks: None) if premasked else (lambda masks: masks)


def _check(params: Params, masks: Params | None, batch: Any) -> None:
    if masks is not None:
        mask.validate(params, masks, bytes_ok=True)
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise TypeError(f"batch must be a tuple (x, y, *extra), got {type(batch).__name__}")
    if not isinstance(batch[1], Tensor):
        raise TypeError(f"batch[1] (the labels) must be a tensor, got {batch[1]!r}")


def _unreadable(x: Any) -> bool:
    """Whether tensor values cannot be read here: while dynamo traces, or ``x`` is one sample of a
    ``torch.func.vmap`` (the seeds' steps; their batches are checked where they are stacked)."""
    return torch.compiler.is_compiling() or (
        isinstance(x, Tensor) and torch._C._functorch.is_batchedtensor(x)
    )


def _check_batch_values(apply: Callable[..., Any], params: Params, state: Params, batch: Any) -> None:
    """The checks that read the batch (and, once, the model's output width), before a step runs:

    * a floating-point ``x`` has the params' float dtype (no silent promotion, no "mat1 and mat2
      must have the same dtype" from inside the model: cast the batch with ``x.to(dtype)``);
    * every floating-point tensor of the batch is finite (a NaN input makes NaN gradients, and the
      optimizer then writes NaN into every param it touches);
    * integer ``y`` whose shape is the output's without its last axis are class labels: each in
      ``[0, C)`` where ``C`` is the output's last axis, read from the model applied (eval mode, no
      gradient) to ``x[:1]``; out of range they would reach the compiled kernel as an "index out
      of bounds" assertion.

    Raises ``TypeError``/``ValueError`` naming ``batch[i]``, the index and the value.
    """
    x, y = batch[0], batch[1]
    dtypes = {p.dtype for p in tree.leaves(params) if isinstance(p, Tensor) and p.is_floating_point()}
    if isinstance(x, Tensor) and x.is_floating_point() and dtypes and x.dtype not in dtypes:
        want = ", ".join(sorted(str(d) for d in dtypes))
        raise TypeError(
            f"batch[0] (the inputs) has dtype {x.dtype} but the params are {want}; cast the batch "
            f"(x.to({want})) or the params"
        )
    for i, t in enumerate(batch):
        if (
            isinstance(t, Tensor)
            and t.is_floating_point()
            and t.numel()
            and not bool(torch.isfinite(t).all())
        ):
            idx = tuple(int(j) for j in torch.nonzero(~torch.isfinite(t))[0])
            raise ValueError(f"batch[{i}] is not finite at index {idx}: {t[idx].item()}")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool or not isinstance(x, Tensor):
        return
    if x.ndim == 0 or len(x) == 0:
        raise ValueError(f"batch[0] (the inputs) has shape {tuple(x.shape)}: no sample")
    try:
        with torch.no_grad():
            out = apply(params, state, x[:1], train=False)[0]
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        raise ValueError(
            f"batch[0] of shape {tuple(x.shape)} and dtype {x.dtype} does not fit the model: {e}"
        ) from e
    if not isinstance(out, Tensor) or out.ndim != y.ndim + 1 or tuple(out.shape[1:-1]) != tuple(y.shape[1:]):
        return  # integer targets that are not class labels of this output
    classes = out.shape[-1]
    bad = (y < 0) | (y >= classes)
    if bool(bad.any()):
        idx = tuple(int(j) for j in torch.nonzero(bad)[0])
        raise ValueError(
            f"batch[1] (the labels) at index {idx} is {int(y[idx])}, outside [0, {classes}): the model "
            f"has {classes} classes"
        )


def _checker(apply: Callable[..., Any]) -> Callable[[Params, Params, Params | None, Any], None]:
    """``check(params, state, masks, batch)``: :func:`_check` on every call (tree structure and
    types: no tensor read), and :func:`_check_batch_values` on the first batch of each signature
    (shapes, dtypes, device of the batch's tensors) that this step sees, so once per stage.

    Reading the values of every batch would cost a device sync and ~16 µs per step (2.7% of the
    compiled digits-MLP step, 2 CPU threads); the batches of ``data.batches`` come from a
    ``data.load`` dataset whose labels and inputs were checked when it was loaded.
    """
    seen: set[tuple[Any, ...]] = set()

    def check(params: Params, state: Params, masks: Params | None, batch: Any) -> None:
        _check(params, masks, batch)
        if torch.compiler.is_compiling():
            return
        sig = tuple((t.shape, t.dtype, t.device) if isinstance(t, Tensor) else type(t) for t in batch)
        if sig in seen or any(_unreadable(t) for t in batch):
            return
        _check_batch_values(apply, params, state, batch)
        seen.add(sig)

    return check


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


def _as_input(masks: Params | None, compiled: bool) -> Params | None:
    """The masks as the step's body receives them: their uint8 views (``mask.as_bytes``, no copy)
    when the body is compiled, where they make faster code; the bool masks in eager mode."""
    return mask.as_bytes(masks) if compiled and masks is not None else masks


def _compiled(fn: Callable, compile: bool, backend: str | Callable, compiler: Compiler | None) -> Callable:  # noqa: A002
    if compiler is not None:
        if not callable(compiler):
            raise TypeError(f"compiler must be callable (body -> compiled body), got {compiler!r}")
        return compiler(fn)
    return stage.compile_fresh(fn, fullgraph=True, backend=backend) if compile else fn


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
    in ``[0, C)``: see ``_check_batch_values``; later batches of that shape are not read, which
    would cost a sync per step). The masks reach the
    compiled function as their uint8 views (``mask.as_bytes``: no copy, faster code on CPU).
    ``compiler`` compiles the step's body instead of ``torch.compile`` (e.g. ``lambda body:
    stage.Compiled(body, backend=...)``: one static graph per shape, counted per stage); the checks
    and the uint8 masks are as with ``compile=True``.

    ``premasked=True`` promises that every pruned entry of ``params`` is already ``0.0`` on entry,
    as it is after ``mask.apply(params, masks)`` and after every step of this function (which
    returns masked params). The forward pass then reads ``params`` directly instead of
    ``where(M, W, 0)``, saving one pass over the weights and its gradient; the optimizer still
    masks gradients, state and updates, so the results are those of ``premasked=False``. The
    promise is not checked (that would cost the pass it saves); if it is broken, only that step's
    forward pass sees the non-zero pruned weights, and the params it returns are masked again.
    """
    apply = _apply_fn(model)
    if not callable(loss):
        raise TypeError(f"loss must be callable, got {loss!r}")
    extra = _check_metrics(metrics)
    if not callable(getattr(optimizer, "update", None)):
        raise TypeError(f"optimizer must be an optim.Optimizer, got {optimizer!r}")

    forward_masks = _forward_masks(premasked)

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

    run = _compiled(step, compile, backend, compiler)
    check = _checker(apply)

    def checked_step(params: Params, state: Params, opt_state: OptState, masks: Params | None, batch: Batch):
        check(params, state, masks, batch)
        return run(params, state, opt_state, _as_input(masks, compiled), batch)

    return checked_step


def make_eval_step(
    model: Any,
    loss: Loss,
    *,
    compile: bool = True,  # noqa: A002 - the switch's natural name
    backend: str | Callable = "inductor",
    premasked: bool = False,
    compiler: Compiler | None = None,
    metrics: Metrics | None = None,
) -> EvalStep:
    """A masked evaluation step (``apply(..., train=False)``; the state is not changed).

    ``eval_step(params, state, masks, batch) -> {"count": int64 (), "loss_sum": float32 ()}`` and,
    where the targets are class labels, ``"correct": int64 ()``; each extra metric (``metrics=``, as
    in :func:`make_step`) adds ``"<name>_sum"``. Sums over the entries of the batch's targets ``y``,
    so that they add up across batches (``loss_sum = loss * count``, as ``loss`` is a mean). See
    :func:`evaluate`. ``compile``,
    ``compiler`` and ``premasked`` (params promised zero at pruned entries: the forward pass skips
    the masking) as in :func:`make_step`.
    """
    apply = _apply_fn(model)
    if not callable(loss):
        raise TypeError(f"loss must be callable, got {loss!r}")
    extra = _check_metrics(metrics)
    forward_masks = _forward_masks(premasked)

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

    run = _compiled(eval_step, compile, backend, compiler)
    compiled = compile or compiler is not None
    check = _checker(apply)

    def checked_eval_step(params: Params, state: Params, masks: Params | None, batch: Batch):
        check(params, state, masks, batch)
        return run(params, state, _as_input(masks, compiled), batch)

    return checked_eval_step


def sum_metrics(
    eval_step: Callable[..., dict[str, Tensor]],
    params: Params,
    state: Params,
    masks: Params | None,
    batches: Iterable[Batch],
    *,
    where: str = "sum_metrics",
) -> dict[str, Tensor]:
    """``eval_step(params, state, masks, batch)``'s metrics summed key by key over ``batches`` (any
    eval step whose metrics add up across batches: :func:`make_eval_step`'s, or a vmapped one's,
    whose tensors are ``(S,)``). Raises ``ValueError`` (prefixed ``where``) when ``batches`` is empty."""
    totals: dict[str, Tensor] | None = None
    for batch in batches:
        metrics = eval_step(params, state, masks, batch)
        totals = metrics if totals is None else {k: totals[k] + metrics[k] for k in totals}
    if totals is None:
        raise ValueError(f"{where}: batches is empty")
    return totals


def evaluate(
    eval_step: EvalStep, params: Params, state: Params, masks: Params | None, batches: Iterable[Batch]
) -> dict[str, float]:
    """Run ``eval_step`` over ``batches`` and return ``{"count", "loss"}`` over all of them, with
    ``"accuracy"`` where the eval step counts correct predictions (class labels) and each extra
    metric's mean (``"<name>_sum"`` -> ``"<name>"``).

    ``loss``, ``accuracy`` and the extra metrics are means over every target entry (not over
    batches); ``count`` is the number of target entries (an int). Raises ``ValueError`` when
    ``batches`` is empty.
    """
    totals = sum_metrics(eval_step, params, state, masks, batches, where="evaluate")
    count = int(totals["count"])
    out = {"accuracy": float(totals["correct"]) / count} if "correct" in totals else {}
    out["count"] = count
    out["loss"] = float(totals["loss_sum"]) / count
    out.update(
        {
            k[: -len("_sum")]: float(v) / count
            for k, v in totals.items()
            if k.endswith("_sum") and k != "loss_sum"
        }
    )
    return out


class FitResult(NamedTuple):
    """What :func:`fit` returns: the final trees and one dict of the step's metrics per epoch
    (``{"accuracy", "loss"}`` for class labels, ``{"loss"}`` and any extra metrics otherwise)."""

    params: Params
    state: Params
    opt_state: OptState
    history: list[dict[str, float]]


def fit(
    step: Step,
    params: Params,
    state: Params,
    opt_state: OptState,
    masks: Params | None,
    batches_fn: Callable[[int], Iterable[Batch]],
    epochs: int,
    *,
    progress: bool = True,
) -> FitResult:
    """Train for ``epochs`` epochs with a fixed ``masks``; ``batches_fn(epoch)`` yields the batches.

    Each epoch's ``history`` entry holds the step metrics averaged over the epoch, weighted by the
    number of label entries of each batch (training-mode metrics, taken before each update). The
    metrics stay tensors during an epoch (no device sync per step). ``progress`` shows a tqdm bar
    over epochs on stderr. Raises ``ValueError`` when an epoch has no batches.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
    if not callable(batches_fn):
        raise TypeError(f"batches_fn must be callable as batches_fn(epoch), got {batches_fn!r}")
    history: list[dict[str, float]] = []
    bar = tqdm(range(epochs), desc="fit", unit="epoch", disable=not progress)
    for epoch in bar:
        sums: dict[str, Tensor] = {}
        count = 0
        for batch in batches_fn(epoch):
            params, state, opt_state, metrics = step(params, state, opt_state, masks, batch)
            n = batch[1].numel()
            sums = {k: sums.get(k, 0.0) + v * n for k, v in metrics.items()}
            count += n
        if count == 0:
            raise ValueError(f"fit: batches_fn({epoch}) yielded no batches")
        history.append({k: float(v) / count for k, v in sorted(sums.items())})
        bar.set_postfix(history[-1])
    return FitResult(params, state, opt_state, history)
