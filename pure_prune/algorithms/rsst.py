"""RSST: regularised structured sparse training (growing regularisation, Wang et al. 2021, per IMP round).

Each round chooses whole units (channels) to remove, drives their weights towards zero with a
growing penalty while training, and only then removes them — so the network has learnt to do
without them before the structural cut. Round ``k = 1 .. rounds``:

1. remove the units chosen in round ``k − 1`` (``select.units`` masks: every member of the unit);
2. choose the units to remove next: rank units by ``criterion`` (:mod:`.unit_criteria`; ``remain``
   counts the entries an unstructured magnitude pruning at the same target would keep) and pick
   the lowest ones so that ``target(k)`` of the units of each group (``scope="layer"``) or of all
   groups (``"global"``) are gone — ``target`` as in IMP (``1 − (1 − r)^k``);
3. train ``epochs`` epochs on ``loss + λ_t · Σ_{chosen} w²``, where the sum runs over every entry
   of the chosen units and ``λ_t = schedule.penalty_growth(growth, granularity, T)(t)`` rises from
   0 to ``granularity`` over the round's ``T`` optimizer steps (``x``, ``x^2``, ``exp``,
   ``exp_custom`` with ``exponent`` 2/4/6). The optimizer state is fresh each round.

A last round ``rounds + 1`` removes the units chosen in round ``rounds`` and fine-tunes
``finetune_epochs`` epochs without penalty.

The penalty enters the update as its gradient ``2 λ_t w`` on the chosen entries
(:func:`penalized` wraps any optimizer), with ``λ_t`` looked up from a table in the optimizer state
by the step counter: no host work per step, and a compiled step never recompiles as ``λ_t`` grows.
:func:`penalty` is the same term as a function of the params (``∇ penalty`` equals what
:func:`penalized` adds).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from pure_prune import mask, select, tree
from pure_prune import schedule as schedules
from pure_prune.algorithms import imp, unit_criteria
from pure_prune.algorithms.base import Carry, RoundOut, carry_out, fresh_opt_state
from pure_prune.algorithms.ops import Key, RoundOps
from pure_prune.groups import ChannelGroup
from pure_prune.importance import magnitude
from pure_prune.optim import Optimizer
from pure_prune.train import Step

__all__ = [
    "GROWTH",
    "Plan",
    "Settings",
    "choose",
    "chosen_entries",
    "coefficient",
    "first_round",
    "next_round",
    "penalized",
    "penalty",
    "plan_round",
    "run",
    "set_penalty",
]

GROWTH = ("x", "x^2", "exp", "exp_custom")
_KEYS = ("rsst_chosen", "rsst_start", "rsst_table")
_TRAIN, _SCORE = 0, 1 << 20


class Settings(NamedTuple):
    """RSST's knobs (the lottery-ticket code's names in brackets): ``rate``/``rounds`` [pruning_times] as in
    IMP but counted in units; ``criterion`` [criteria]; ``growth`` [RST_schedule]; ``granularity``
    [reg_granularity_prune]; ``exponent`` of ``exp_custom``; ``epochs`` per round;
    ``finetune_epochs`` after the last removal; ``scope`` of the unit ranking."""

    rate: float = 0.2
    rounds: int = 1
    epochs: int = 1
    finetune_epochs: int = 1
    criterion: str = "l1"
    growth: str = "x^2"
    granularity: float = 1.0
    exponent: float = 2.0
    scope: str = "layer"
    schedule: str = "geometric"

    def check(self) -> Settings:
        """Return ``self`` or raise ``ValueError`` naming the bad knob and value."""
        imp.Settings(rate=self.rate, rounds=self.rounds, epochs=self.epochs, schedule=self.schedule).check()
        if (
            isinstance(self.finetune_epochs, bool)
            or not isinstance(self.finetune_epochs, int)
            or self.finetune_epochs < 0
        ):
            raise ValueError(f"finetune_epochs must be an int >= 0, got {self.finetune_epochs!r}")
        if self.criterion not in unit_criteria.CRITERIA:
            raise ValueError(
                f"unknown criteria {self.criterion!r}; known: {', '.join(unit_criteria.CRITERIA)}"
            )
        if self.growth not in GROWTH:
            raise ValueError(f"unknown penalty growth {self.growth!r}; known: {', '.join(GROWTH)}")
        if not float(self.granularity) >= 0:
            raise ValueError(f"granularity must be >= 0, got {self.granularity!r}")
        if self.scope not in ("global", "layer"):
            raise ValueError(f"scope must be 'global' or 'layer', got {self.scope!r}")
        return self


# --------------------------------------------------------------------------------- the penalty


def penalty(params: Any, chosen: Any, coef: float | torch.Tensor) -> torch.Tensor:
    """``coef · Σ_leaves Σ w²`` over the entries where ``chosen`` (a bool tree like ``params``) is
    True. Returns a float ``()`` tensor; its gradient is ``2 · coef · w`` on chosen entries, 0 elsewhere."""
    terms = [
        torch.where(c, w * w, 0.0).sum()
        for w, c in zip(tree.leaves(params), tree.leaves(chosen))
        if c is not None
    ]
    total = torch.stack(terms).sum() if terms else torch.zeros(())
    return coef * total


def coefficient(opt_state: dict[str, Any]) -> torch.Tensor:
    """``λ_t``: the penalty coefficient the next update of a :func:`penalized` optimizer uses
    (float32 ``()``): ``table[clamp(count − start, 0, T)]``."""
    table = opt_state["rsst_table"]
    idx = torch.clamp(opt_state["count"] - opt_state["rsst_start"], 0, table.shape[0] - 1)
    # index_select, not table[idx]: a compiled (fullgraph) step cannot index by a 0-d tensor's value
    return table.index_select(0, idx.reshape(1)).reshape(())


def penalized(optimizer: Optimizer) -> Optimizer:
    """``optimizer`` with RSST's penalty gradient ``2 λ_t w`` added to the gradient of chosen entries.

    Its ``opt_state`` is the inner one plus ``rsst_chosen`` (a bool tree like the params, all False
    at init: no penalty), ``rsst_table`` (float32 ``(T+1,)``, ``λ_t`` for ``t = 0..T``) and
    ``rsst_start`` (int64 ``()``, the step at which ``t = 0``); set them with :func:`set_penalty`.
    """

    def init(params: Any) -> dict[str, Any]:
        st = optimizer.init(params)
        return {
            **st,
            "rsst_chosen": tree.map(lambda p: torch.zeros_like(p, dtype=torch.bool), params),
            "rsst_start": torch.zeros_like(st["count"]),
            "rsst_table": torch.zeros(1, dtype=torch.float32, device=st["count"].device),
        }

    def update(grads: Any, opt_state: dict[str, Any], params: Any, masks: Any = None):
        coef = coefficient(opt_state)
        grads = tree.map(
            lambda g, w, c: torch.where(c, g + (2.0 * coef).to(w.dtype) * w, g),
            grads,
            params,
            opt_state["rsst_chosen"],
        )
        inner = {k: v for k, v in opt_state.items() if k not in _KEYS}
        updates, new_inner = optimizer.update(grads, inner, params, masks)
        return updates, {**new_inner, **{k: opt_state[k] for k in _KEYS}}

    def current_lr(opt_state: dict[str, Any]) -> torch.Tensor:
        return optimizer.current_lr({k: v for k, v in opt_state.items() if k not in _KEYS})

    return Optimizer(init, update, current_lr)


def set_penalty(
    opt_state: dict[str, Any],
    chosen: Any,
    growth: schedules.Schedule,
    steps: int,
    *,
    start: int | None = None,
) -> dict[str, Any]:
    """A new :func:`penalized` state that penalises ``chosen`` with ``λ_t = growth(t)``, ``t = 0..steps``
    counted from step ``start`` (default: the state's current step); held at ``growth(steps)`` after."""
    if "rsst_table" not in opt_state:
        raise ValueError("set_penalty: opt_state was not made by rsst.penalized(...).init")
    tree.assert_same_structure(opt_state["rsst_chosen"], chosen, ("params", "chosen"))
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"set_penalty: steps must be an int >= 1, got {steps!r}")
    count = opt_state["count"]
    table = torch.tensor([growth(t) for t in range(steps + 1)], dtype=torch.float32, device=count.device)
    first = count.clone() if start is None else torch.full_like(count, start)
    full = tree.map(
        lambda old, c: torch.zeros_like(old) if c is None else c.clone(), opt_state["rsst_chosen"], chosen
    )
    return {**opt_state, "rsst_chosen": full, "rsst_start": first, "rsst_table": table}


# --------------------------------------------------------------------------------- choosing units


def choose(
    unit_scores: dict[str, torch.Tensor],
    sparsity: float,
    groups: Sequence[ChannelGroup],
    masks: Any,
    *,
    scope: str = "layer",
) -> Any:
    """The masks after removing the lowest-scoring units until ``sparsity`` of the units are gone
    (units already removed in ``masks`` count). ``masks`` must hold tensors at every member leaf
    (``masking.initial(..., "channels", groups)``). Returns masks like ``masks``."""
    return select.units(unit_scores, sparsity, groups, masks, scope=scope, masks=masks)


def chosen_entries(masks: Any, target: Any) -> Any:
    """Bool tree: entries kept by ``masks`` but not by ``target`` (the weights to drive to zero);
    ``None`` where both masks are ``None``."""
    return mask.difference(masks, target)


def first_round(
    params: Any, state: Any, masks: Any, settings: Settings, *, ops: RoundOps, key: Key
) -> RoundOut:
    """Round 0: dense training (``masks`` all kept) for ``settings.epochs`` epochs."""
    s = settings.check()
    out = ops.train_fresh(params, state, masks, epochs=s.epochs, key=ops.fold(key, _TRAIN))
    return carry_out(out, masks, extra={"target": None})


class Plan(NamedTuple):
    """What round ``k >= 1`` trains, decided on the host before training (:func:`plan_round`).

    ``masks``: the masks the round trains under (the units chosen in round ``k − 1`` removed);
    ``params``: the carry's params masked by them; ``opt_state``: fresh — of the penalized optimizer
    with the penalty on the units chosen now when ``penalized``, of the plain optimizer at the final
    round; ``epochs``: epochs to train (``epochs``, or ``finetune_epochs`` at the final round);
    ``target``: the masks once the chosen units are gone (``None`` after the final cut, no penalty);
    ``seconds``: host time spent choosing."""

    params: Any
    masks: Any
    opt_state: Any
    penalized: bool
    epochs: int
    target: Any
    seconds: float


def plan_round(
    carry: Carry,
    round: int,  # noqa: A002
    settings: Settings,
    *,
    optimizer: Optimizer,
    penalized_optimizer: Optimizer,
    groups: Sequence[ChannelGroup],
    model_fn: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]] = (),
    steps_per_epoch: int = 1,
) -> Plan:
    """Steps 1–2 of round ``round`` (``1 .. rounds + 1``, module docstring): remove the pending
    units, choose the next ones and set up the penalty. Returns the :class:`Plan`; training it with
    key ``fold_in(key, round)`` (the penalized step when ``plan.penalized``) completes the round,
    as :func:`next_round` does. ``model_fn``/``batches`` feed ``saliency``."""
    s = settings.check()
    if isinstance(round, bool) or not isinstance(round, int) or not 1 <= round <= s.rounds + 1:
        raise ValueError(f"rsst: round must be an int in [1, {s.rounds + 1}], got {round!r}")
    t0 = time.perf_counter()
    pending = (carry.extra or {}).get("target")
    masks = carry.masks if pending is None else pending
    params = mask.apply(carry.params, masks)
    if round == s.rounds + 1:  # the final cut, then fine-tuning without penalty
        opt_state = fresh_opt_state(optimizer, params)
        return Plan(params, masks, opt_state, False, s.finetune_epochs, None, time.perf_counter() - t0)
    goal = imp.target(round, s.rate, s.schedule)
    reference = None
    if s.criterion == "remain":
        scores = magnitude.magnitude(params, masks)
        reference = select.unstructured(_weights_only(scores), goal, scope=s.scope, masks=masks)
    units = unit_criteria.unit_scores(
        s.criterion, params, masks, groups, reference=reference, model_fn=model_fn, batches=batches
    )
    target = choose(units, goal, groups, masks, scope=s.scope)
    chosen = chosen_entries(masks, target)
    steps = max(1, s.epochs * steps_per_epoch)
    growth = schedules.penalty_growth(s.growth, s.granularity, steps, exponent=s.exponent)
    opt_state = set_penalty(fresh_opt_state(penalized_optimizer, params), chosen, growth, steps)
    return Plan(params, masks, opt_state, True, s.epochs, target, time.perf_counter() - t0)


def next_round(
    carry: Carry,
    round: int,  # noqa: A002
    settings: Settings,
    *,
    penalized_optimizer: Optimizer,
    penalty_step: Step,
    ops: RoundOps,
    key: Key,
    groups: Sequence[ChannelGroup],
    apply: Callable[..., Any] | None = None,
    batches: Any = (),
    steps_per_epoch: int = 1,
) -> RoundOut:
    """Round ``1 .. rounds + 1`` (module docstring): :func:`plan_round` for every seed (its own
    units, by its own weights and ``batches``), then training on key ``fold_in(key, round)``.

    ``penalized_optimizer = penalized(ops.optimizer)`` and ``penalty_step`` a train step made with
    it (a seed step for stacked seeds); ``apply`` (the model's) and ``batches`` (stacked per seed
    for a stack) feed ``saliency``."""

    def plan(one: Carry, seed_batches: Any) -> Plan:
        model_fn = None if apply is None else (lambda p, x: apply(p, one.state, x, train=False)[0])
        return plan_round(
            one,
            round,
            settings,
            optimizer=ops.optimizer,
            penalized_optimizer=penalized_optimizer,
            groups=groups,
            model_fn=model_fn,
            batches=seed_batches,
            steps_per_epoch=steps_per_epoch,
        )._replace(seconds=0.0)

    t0 = time.perf_counter()
    p = ops.each(plan, carry, batches)
    seconds = time.perf_counter() - t0
    out = ops.train(
        p.params,
        carry.state,
        p.opt_state,
        p.masks,
        start=0,
        stop=p.epochs,
        key=ops.fold(key, _TRAIN + round),
        step=penalty_step if p.penalized else None,
    )
    return carry_out(out, p.masks, extra={"target": p.target}, seconds=seconds)


def _weights_only(scores: Any) -> Any:
    """Scores on ``ndim >= 2`` leaves only (the unstructured reference prunes weights, not biases)."""
    return tree.map(lambda x: x if x is not None and x.ndim >= 2 else None, scores)


def run(
    params: Any,
    state: Any,
    masks: Any,
    settings: Settings,
    *,
    penalty_step_fn: Callable[[Optimizer], Step],
    ops: RoundOps,
    groups: Sequence[ChannelGroup],
    key: Key,
    apply: Callable[..., Any] | None = None,
    batches: Any = (),
    steps_per_epoch: int = 1,
) -> tuple[Carry, list[Any]]:
    """All rounds ``0 .. rounds + 1``. ``penalty_step_fn(opt)`` makes a train step for optimizer
    ``opt`` (e.g. ``lambda o: train.make_step(model, loss, o, compile=False)``). Returns the final
    carry and the masks after every round."""
    pen = penalized(ops.optimizer)
    step = penalty_step_fn(pen)
    out = first_round(params, state, masks, settings, ops=ops, key=key)
    history = [out.carry.masks]
    for k in range(1, settings.rounds + 2):
        out = next_round(
            out.carry,
            k,
            settings,
            penalized_optimizer=pen,
            penalty_step=step,
            ops=ops,
            key=key,
            groups=groups,
            apply=apply,
            batches=batches,
            steps_per_epoch=steps_per_epoch,
        )
        history.append(out.carry.masks)
    return out.carry, history
