"""Dynamic sparse training: the masks move during training at a constant number of kept weights.

Training starts sparse (random masks at ``sparsity``, the same fraction in every leaf —
``distribution="uniform"`` — or Erdős–Rényi-Kernel fractions, ``"erk"``). Every ``update_every``
optimizer steps, until ``end_fraction`` of all steps, the masks change:

==========  ==========================================================================================
``"set"``   (Mocanu et al. 2018) per leaf drop the ``round(f · alive)`` live weights of lowest
            ``|w|``, regrow as many at random among the entries not kept after the drop
``"rigl"``  (Evci et al. 2020) the same drop; regrow the entries of highest ``|∂L/∂(W ⊙ M)|``
            — the dense gradient at the masked weights, on the step's batch
``"ste"``   straight-through estimation: the forward pass uses ``W ⊙ M`` but the gradient (and the
            update) reaches every dense weight; the masks are recomputed as the top ``|w|`` of the
            dense weights, at the same count per leaf (``scope="layer"``) or over all (``"global"``)
            (Bengio et al. 2013's estimator; dynamic pruning with feedback, Lin et al. 2020)
==========  ==========================================================================================

``f`` decays by a cosine: ``f_t = drop_fraction / 2 · (1 + cos(π t / t_end))`` with
``t_end = end_fraction · total_steps``. SET and RigL keep each leaf's kept count exactly; their
regrown weights start at exactly 0 (with zero optimizer state, as every pruned entry has), dropped
weights become 0. STE keeps the dense values (a regrown weight comes back with its dense value).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch
from einops import rearrange

from pure_prune import allocate, mask, rng, select, stage, train, tree
from pure_prune.algorithms.base import Carry, RoundOut
from pure_prune.algorithms.ops import Key, RoundOps
from pure_prune.importance import magnitude
from pure_prune.losses import accuracy
from pure_prune.optim import Optimizer, apply_updates

__all__ = [
    "DISTRIBUTIONS",
    "KINDS",
    "Settings",
    "dense_grad",
    "drop_and_grow",
    "drop_fraction",
    "initial_masks",
    "make_ste_step",
    "rigl_update",
    "run",
    "set_update",
    "start",
    "ste_update",
    "train_epoch",
    "update_due",
    "update_masks",
]

KINDS = ("set", "rigl", "ste")
DISTRIBUTIONS = ("uniform", "erk")
Batch = tuple[torch.Tensor, ...]
_INIT, _GROW = 0, 1 << 20


class Settings(NamedTuple):
    """``kind`` (module table), target ``sparsity``, ``epochs``, ``steps_per_epoch``; masks change every
    ``update_every`` steps while ``t < end_fraction · epochs · steps_per_epoch``, dropping a cosine-decayed
    share starting at ``drop_fraction``; ``distribution`` of the initial masks; ``scope`` of STE."""

    kind: str = "rigl"
    sparsity: float = 0.9
    epochs: int = 1
    steps_per_epoch: int = 1
    update_every: int = 100
    drop_fraction: float = 0.3
    end_fraction: float = 0.75
    distribution: str = "uniform"
    scope: str = "layer"

    def check(self) -> Settings:
        """Return ``self`` or raise ``ValueError`` naming the bad knob and value."""
        for name, known in (("kind", KINDS), ("distribution", DISTRIBUTIONS), ("scope", ("global", "layer"))):
            if getattr(self, name) not in known:
                raise ValueError(f"unknown dst {name} {getattr(self, name)!r}; known: {', '.join(known)}")
        for name in ("epochs", "steps_per_epoch", "update_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        for name in ("sparsity", "drop_fraction", "end_fraction"):
            v = float(getattr(self, name))
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if not float(self.sparsity) < 1.0:
            raise ValueError(f"sparsity must be below 1 (something must stay), got {self.sparsity!r}")
        return self

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


def drop_fraction(t: int, alpha: float, t_end: float) -> float:
    """Cosine-decayed drop share at step ``t``: ``alpha/2 · (1 + cos(π t / t_end))``; 0 from ``t_end`` on."""
    if t >= t_end or t_end <= 0:
        return 0.0
    return alpha / 2.0 * (1.0 + math.cos(math.pi * t / t_end))


def initial_masks(masks: Any, sparsity: float, key: int, distribution: str = "uniform") -> Any:
    """Random masks nested in ``masks`` (usually all kept) with exactly ``round(s_l · N_l)`` pruned in
    leaf ``l``: ``s_l = sparsity`` (``"uniform"``) or ``allocate.erk`` fractions (``"erk"``)."""
    if distribution == "uniform":
        per_leaf = allocate.uniform(masks, sparsity)
    elif distribution == "erk":
        per_leaf = allocate.erk(masks, sparsity)
    else:
        raise ValueError(f"unknown distribution {distribution!r}; known: {', '.join(DISTRIBUTIONS)}")
    return select.unstructured(magnitude.random(masks, key), per_leaf, scope="layer", masks=masks)


def drop_and_grow(params: Any, masks: Any, fraction: float, grow_scores: Any) -> Any:
    """Per masked leaf: drop ``k = round(fraction · kept)`` kept entries of lowest ``|w|``, then keep
    the ``k`` entries of highest ``grow_scores`` among those not kept after the drop (a just-dropped
    entry may come back). Ties: the earlier entry is dropped first and grown first. Every leaf keeps
    exactly its count. Returns masks like ``masks``."""
    if not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")

    def one(path: str, w: Any, m: Any, g: Any) -> Any:
        if m is None:
            return None
        if g is None or g.shape != m.shape:
            raise ValueError(f"grow score at {path!r} must be a tensor of shape {tuple(m.shape)}, got {g!r}")
        flat_m = rearrange(m, "... -> (...)")
        k = int(round(float(fraction) * int(flat_m.sum())))
        if k == 0:
            return m.clone()
        w_abs = rearrange(w.detach().abs().to(torch.float64), "... -> (...)")
        drop = select.lowest_k([torch.where(flat_m, w_abs, math.inf)], k)[0]
        alive = flat_m & ~drop
        grow_score = rearrange(g.detach().to(torch.float64), "... -> (...)")
        grow = select.lowest_k([torch.where(alive, math.inf, -grow_score)], k)[0]
        return (alive | grow).reshape(m.shape)

    return tree.map_with_path(one, params, masks, grow_scores)


def set_update(params: Any, masks: Any, fraction: float, key: int) -> Any:
    """SET: :func:`drop_and_grow` with uniform random grow scores drawn from ``key``."""
    return drop_and_grow(params, masks, fraction, magnitude.random(masks, key))


def rigl_update(params: Any, masks: Any, fraction: float, dense_grads: Any) -> Any:
    """RigL: :func:`drop_and_grow` growing where ``|dense_grads|`` is largest."""
    return drop_and_grow(
        params, masks, fraction, tree.map(lambda g, m: None if m is None else g.abs(), dense_grads, masks)
    )


def ste_update(params: Any, masks: Any, *, scope: str = "layer") -> Any:
    """STE: the top ``|w|`` of the dense ``params`` at each leaf's current kept count (``"layer"``)
    or at the current total count (``"global"``); not nested in ``masks``."""
    full = tree.map(lambda m: None if m is None else torch.ones_like(m), masks)
    scores = magnitude.magnitude(params, masks)
    if scope == "layer":
        return select.unstructured(scores, mask.layer_sparsity(masks), scope="layer", masks=full)
    return select.unstructured(scores, mask.sparsity(masks), scope="global", masks=full)


def dense_grad(
    apply: Callable[..., Any],
    loss: Callable[..., torch.Tensor],
    params: Any,
    state: Any,
    masks: Any,
    batch: Batch,
) -> Any:
    """``∂L/∂θ`` at ``θ = W ⊙ M`` on ``batch`` — non-zero at pruned entries too (RigL's grow signal).
    A tree like ``params``; the model runs in train mode, its new state is discarded."""
    x, *targets = batch

    def objective(theta: Any) -> torch.Tensor:
        return loss(apply(theta, state, x, train=True)[0], *targets)

    return torch.func.grad(objective)(mask.apply(params, masks))


def make_ste_step(
    model: Any,
    loss: Callable[..., torch.Tensor],
    optimizer: Optimizer,
    *,
    compile: bool = True,
    backend: str | Callable = "inductor",
) -> train.Step:
    """A straight-through step: ``step(params, state, opt_state, masks, batch)`` as ``train.make_step``'s,
    but the forward pass sees ``W + stopgrad(W ⊙ M − W)`` (value ``W ⊙ M``, gradient identity), so
    every dense weight gets the gradient and is updated (unmasked update; params stay dense)."""
    apply = getattr(model, "apply", model)

    def objective(params: Any, state: Any, masks: Any, x: Any, targets: list[torch.Tensor]):
        p = tree.map(
            lambda w, m: w if m is None else w + (torch.where(m, w, 0.0) - w).detach(), params, masks
        )
        out, new_state = apply(p, state, x, train=True)
        return loss(out, *targets), (out.detach(), new_state)

    grad_and_value = torch.func.grad_and_value(objective, has_aux=True)

    def step(params: Any, state: Any, opt_state: Any, masks: Any, batch: Batch):
        x, *targets = batch
        grads, (value, (out, new_state)) = grad_and_value(params, state, masks, x, targets)
        updates, new_opt_state = optimizer.update(grads, opt_state, params, None)
        metrics = {"accuracy": accuracy(out, targets[0]), "loss": value.detach()}
        return apply_updates(params, updates), new_state, new_opt_state, metrics

    run = stage.compile_fresh(step, fullgraph=True, backend=backend) if compile else step

    def checked(params: Any, state: Any, opt_state: Any, masks: Any, batch: Batch):
        mask.validate(params, masks)
        return run(params, state, opt_state, masks, batch)

    return checked


def update_due(settings: Settings, t: int) -> bool:
    """Whether a mask update is due after step ``t`` (1-based): ``t`` is a multiple of
    ``update_every`` and below ``end_fraction · total_steps``."""
    return t % settings.update_every == 0 and t < settings.end_fraction * settings.total_steps


def update_masks(
    settings: Settings,
    t: int,
    params: Any,
    masks: Any,
    *,
    key: int,
    grads_fn: Callable[[], Any] | None = None,
) -> tuple[Any, Any]:
    """The mask update due after step ``t`` (1-based), if any: ``(params, masks)``.

    Nothing changes unless ``t`` is a multiple of ``update_every`` below ``end_fraction · total``.
    SET/RigL: the new masks, params re-masked (dropped and regrown entries exactly 0). STE: the
    masks by magnitude of the dense params, params unchanged. ``grads_fn()`` gives RigL's dense
    gradients (called only when RigL updates)."""
    s = settings
    t_end = s.end_fraction * s.total_steps
    if not update_due(s, t):
        return params, masks
    if s.kind == "ste":
        return params, ste_update(params, masks, scope=s.scope)
    f = drop_fraction(t, s.drop_fraction, t_end)
    if s.kind == "set":
        new = set_update(params, masks, f, rng.fold_in(key, _GROW + t))
    else:
        if grads_fn is None:
            raise ValueError("rigl needs grads_fn() -> dense gradients")
        new = rigl_update(params, masks, f, grads_fn())
    return mask.apply(mask.apply(params, masks), new), new


def train_epoch(
    carry: Carry,
    epoch: int,
    settings: Settings,
    batches: Iterable[Batch],
    *,
    step: train.Step,
    ops: RoundOps,
    key: Key,
    apply: Callable[..., Any] | None = None,
    loss: Callable[..., torch.Tensor] | None = None,
) -> RoundOut:
    """One epoch of dynamic sparse training from ``carry`` (a DST round), on one seed or a stack.

    ``step`` is ``train.make_step``'s masked step (SET/RigL) or :func:`make_ste_step`'s (STE), a
    seed step for stacked seeds (each seed on its own batch); ``apply``/``loss`` compute RigL's
    dense gradient on the step's batch (``ops.lift``-ed: one vmapped call for a stack). Step ``t``
    counts from ``epoch · steps_per_epoch``; a due update runs :func:`update_masks` for every seed
    with its own key (``ops.each``). Returns the new carry, a one-entry history (training metrics
    averaged over the epoch, a list per seed for a stack; ``mask_updates``) and the seconds spent
    updating masks.
    """
    s = settings.check()
    if s.kind == "rigl" and (apply is None or loss is None):
        raise ValueError("dst kind 'rigl' needs apply and loss for the dense gradient")
    params, state, opt_state, masks = carry.params, carry.state, carry.opt_state, carry.masks
    grad_fn = ops.lift(lambda p, st, m, b: dense_grad(apply, loss, p, st, m, b))
    t = epoch * s.steps_per_epoch
    sums: dict[str, torch.Tensor] = {}
    count, updates, seconds = 0, 0, 0.0
    for batch in batches:
        params, state, opt_state, metrics = step(params, state, opt_state, masks, batch)
        n = batch[1].numel() // (ops.seeds or 1)
        sums = {k: sums.get(k, 0.0) + v * n for k, v in metrics.items()}
        count += n
        t += 1
        if not update_due(s, t):
            continue
        t0 = time.perf_counter()
        grads = grad_fn(params, state, masks, batch) if s.kind == "rigl" else None

        def update(p: Any, m: Any, g: Any, key: int, t: int = t) -> tuple[Any, Any]:
            return update_masks(s, t, p, m, key=key, grads_fn=lambda: g)

        params, masks = ops.each(update, params, masks, grads, key=key)
        updates += 1
        seconds += time.perf_counter() - t0
    if count == 0:
        raise ValueError(f"dst: epoch {epoch} has no batches")
    means = {k: ops.to_host(v) for k, v in sorted(sums.items())}
    entry = {
        "epoch": float(epoch),
        **{k: [x / count for x in v] if isinstance(v, list) else v / count for k, v in means.items()},
        "mask_updates": float(updates),
    }
    return RoundOut(
        Carry(params, state, opt_state, masks, None, carry.extra), [entry], seconds if updates else None
    )


def start(params: Any, state: Any, masks: Any, settings: Settings, *, ops: RoundOps, key: Key) -> Carry:
    """The carry before epoch 0: each seed's :func:`initial_masks` (from ``fold_in(key, 0)``) nested
    in ``masks``, a fresh optimizer state, and the params masked by them (STE keeps its dense params)."""
    s = settings.check()

    def one(p: Any, st: Any, m: Any, key: int) -> Carry:
        new = initial_masks(m, s.sparsity, rng.fold_in(key, _INIT), s.distribution)
        p = p if s.kind == "ste" else mask.apply(p, new)
        return Carry(p, st, ops.optimizer.init(p), new, None, {})

    return ops.each(one, params, state, masks, key=key)


def run(
    params: Any,
    state: Any,
    masks: Any,
    settings: Settings,
    batches_fn: Callable[[int], Iterable[Batch]],
    *,
    step: train.Step,
    ops: RoundOps,
    key: Key,
    apply: Callable[..., Any] | None = None,
    loss: Callable[..., torch.Tensor] | None = None,
) -> tuple[Carry, list[dict[str, Any]]]:
    """:func:`start` then :func:`train_epoch` for every epoch (``batches_fn(epoch)`` yields its batches).
    Returns the final carry and one history entry per epoch."""
    carry = start(params, state, masks, settings, ops=ops, key=key)
    history: list[dict[str, Any]] = []
    for epoch in range(settings.epochs):
        out = train_epoch(
            carry, epoch, settings, batches_fn(epoch), step=step, ops=ops, key=key, apply=apply, loss=loss
        )
        carry = out.carry
        history += out.history
    return carry, history
