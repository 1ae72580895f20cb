"""Train the compacted form of a structurally pruned model, stage by stage.

A masked model costs what the dense one does; a model whose pruned units are physically removed
(:func:`pure_prune.compact.compact`) costs about its FLOP ratio. :func:`compacting_trainer` wraps a
:data:`~pure_prune.algorithms.base.TrainFn` so that every round of a structured run (``struct =
"channels"``) trains the compacted model and hands back full-size trees:

1. ``compact`` the params, state, masks and every params-shaped part of the optimizer state
   (SGD's ``momentum``, Adam's ``mu``/``nu``) to the kept units;
2. train the small trees with the wrapped ``train_fn`` (the same model ``apply`` runs them);
3. :func:`pure_prune.compact.expand` the results back (zeros at removed units), so scoring,
   selection, rewinding and checkpoints keep seeing the full-size model.

Training the compacted model is training the masked one: a removed unit's weights, bias and
optimizer state are zero and stay zero under the masked step, and it feeds nothing downstream. The
params and optimizer state agree up to float rounding (different GEMM shapes sum in a different
order); a test holds them together, in float64: in float32 that rounding (~1e-6 of the params after
a few steps) can move a pre-activation across a ReLU's kink, after which the two runs' gradients
differ by a share of themselves (both runs are right; neither is closer to exact). One difference:
a removed unit's model state (BatchNorm running statistics) is left as it was, where the masked
step would decay it towards the zero statistics of a dead channel; the unit's output is zero either
way (its BatchNorm scale and shift are pruned). One more: a unit left without any input (a whole
upstream layer pruned) whose bias is zero is removed by the compaction rule
(:mod:`pure_prune.compact_units`) even where its consumer's weights are still kept; those weights
come back as zero, where the masked run keeps their values. They multiply a zero output, so the
outputs agree, but a later magnitude score sees 0 instead of the kept value.

**When a new form is made.** Each new shape is a new graph for a compiled step (one compile per
stage). The recompilation knobs decide when the run re-materialises: at a compression (the masks'
sparsity changed since the last call) :func:`pure_prune.stage.should_rematerialize` is asked with
``recompile_every`` and ``threshold``. If it says no, the previous form's shapes are kept: the kept
units are the alive ones padded with removed ones up to the previous counts (exact: the padding
units are zero), so the compiled step of that form is reused with the new masks as inputs. If more
units are alive than the previous form holds (masks that grew back), a new form is made regardless.

The wrapper remembers the current form (unit counts and the sparsity it was made at) between
calls in ``memo``, as a compiled step remembers its graphs. :func:`memo_to_json` and
:func:`memo_from_json` carry it across a resume (the runner stores it in each round's row), so a
resumed run makes its forms at the rounds where the uninterrupted run makes them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from pure_prune import compact, stage, tree
from pure_prune.algorithms.base import Trained, TrainFn
from pure_prune.groups import ChannelGroup

__all__ = ["Form", "compacting_trainer", "mask_sparsity", "memo_from_json", "memo_to_json", "pad_kept"]


class Form(NamedTuple):
    """A materialised form: ``sizes`` (``{group name: kept units}``), the masks' sparsity it was
    made at, and the compressions seen so far (calls whose masks' sparsity differed from the
    previous call's; the first call counts 0)."""

    sizes: dict[str, int]
    sparsity: float
    compressions: int


def mask_sparsity(masks: Any) -> float:
    """Share of pruned entries over the leaves that carry a mask (``None`` leaves are dense and not
    counted); ``0.0`` when no leaf has a mask."""
    total = pruned = 0
    for m in tree.leaves(masks):
        if m is None:
            continue
        total += m.numel()
        pruned += m.numel() - int(m.count_nonzero())
    return pruned / total if total else 0.0


def pad_kept(alive: dict[str, torch.Tensor], sizes: dict[str, int]) -> dict[str, torch.Tensor] | None:
    """The alive units of every group padded with its lowest-index removed units up to ``sizes``.

    Args:
        alive: ``{group name: ascending int64 (k,) unit indices}`` (``compact``'s ``kept``).
        sizes: ``{group name: n}``, the unit counts of the form to reuse.

    Returns ``{group name: ascending int64 (n,) indices}``, or ``None`` when some group has more
    than ``n`` alive units (that form cannot hold them).
    """
    out = {}
    for name, units in alive.items():
        n = sizes[name]
        if units.numel() > n:
            return None
        if units.numel() == n:
            out[name] = units
            continue
        total = max(int(units.max()) + 1 if units.numel() else 0, n)
        taken = torch.zeros(total + n, dtype=torch.bool)
        taken[units] = True
        free = torch.nonzero(~taken).reshape(-1)[: n - units.numel()]
        out[name] = torch.sort(torch.cat([units, free])).values
    return out


def memo_to_json(memo: dict[str, Any]) -> dict[str, Any]:
    """A trainer's ``memo`` (its current form and what it has seen) as plain JSON, for a run's rows."""
    form = memo.get("form")
    return {
        "form": None
        if form is None
        else {"sizes": dict(form.sizes), "sparsity": form.sparsity, "compressions": form.compressions},
        "seen": memo.get("seen"),
        "compressions": memo.get("compressions", 0),
    }


def memo_from_json(data: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`memo_to_json`: a ``memo`` to pass to :func:`compacting_trainer`, so a
    resumed run makes its forms when the uninterrupted run would."""
    f = data.get("form")
    form = (
        None
        if f is None
        else Form({k: int(v) for k, v in f["sizes"].items()}, float(f["sparsity"]), int(f["compressions"]))
    )
    return {"form": form, "seen": data.get("seen"), "compressions": int(data.get("compressions", 0))}


def _params_like(opt_state: dict[str, Any], params: Any) -> list[str]:
    """Keys of ``opt_state`` whose value has the tree structure of ``params`` and floating-point
    leaves (moment buffers such as ``momentum``, ``mu``, ``nu``; not e.g. a bool tree of chosen units)."""
    spec = tree.structure(params)
    return [
        k
        for k, v in opt_state.items()
        if isinstance(v, dict)
        and tree.structure(v) == spec
        and all(x is None or (isinstance(x, torch.Tensor) and x.is_floating_point()) for x in tree.leaves(v))
    ]


def _keep_removed_state(new: Any, old: Any, indicator: Any) -> Any:
    """``new`` at the kept units (``indicator`` non-zero), ``old`` at the removed ones."""
    return tree.map(lambda n, o, i: n if n is None else torch.where(i != 0, n, o), new, old, indicator)


def _check_groups_fit(groups: Sequence[ChannelGroup], sizes: dict[str, int]) -> None:
    for g in groups:
        if g.name in sizes and not 1 <= sizes[g.name] <= g.size:
            raise ValueError(f"form size of group {g.name!r} is {sizes[g.name]}, outside [1, {g.size}]")


def compacting_trainer(
    train_fn: TrainFn,
    groups: Sequence[ChannelGroup],
    *,
    recompile_every: int = 2,
    threshold: float = 0.05,
    on_form: Callable[[Form, bool, str], None] | None = None,
    memo: dict[str, Any] | None = None,
) -> TrainFn:
    """``train_fn`` run on the compacted model (see the module docstring).

    Args:
        train_fn: the trainer of the full-size model (e.g. ``pure_prune.app.trainer.epoch_trainer(exp)``; its step
            should compile one static graph per shape, e.g. a :class:`pure_prune.stage.Compiled`).
        groups: the full-size model's channel groups (``spec.groups(params)``).
        recompile_every, threshold: the staged-recompilation knobs, passed to
            :func:`pure_prune.stage.should_rematerialize`.
        on_form: called once per training call with ``(form, made, reason)``: the form trained,
            whether it was made by this call, and why (for logs and per-round records).
        memo: the dict that keeps the current form between calls (starts empty). Trainers built
            for successive rounds of one run (e.g. one per round for its progress bar) share the
            form by sharing this dict; by default each trainer has its own.

    Returns a :data:`~pure_prune.algorithms.base.TrainFn` with ``train_fn``'s arguments. Its
    params, state and optimizer state come back at full size; a removed unit is zero in the params
    and optimizer state and keeps its model state (see the module docstring). The masks passed in must prune whole units for compaction to remove anything; other
    masks train correctly at (nearly) full size.
    """
    memo = {} if memo is None else memo
    for k, v in (("form", None), ("seen", None), ("compressions", 0)):
        memo.setdefault(k, v)

    def choose(params: Any, state: Any, masks: Any) -> tuple[dict[str, torch.Tensor], Form, bool, str]:
        alive = compact.kept_units(params, state, masks, groups)
        s = mask_sparsity(masks)
        last: Form | None = memo["form"]
        if memo["seen"] is not None and s != memo["seen"]:
            memo["compressions"] += 1
        memo["seen"] = s
        if last is None:
            made, reason = True, "no compiled form yet"
        elif s == last.sparsity:
            made, reason = False, "masks' sparsity unchanged since the form was made"
        else:
            made, reason = stage.should_rematerialize(  # sparsity moved: at least one compression
                memo["compressions"],
                s,
                last.sparsity,
                recompile_every=recompile_every,
                threshold=threshold,
            )
        kept = alive
        if not made:
            padded = pad_kept(alive, last.sizes)
            if padded is None:
                made, reason = True, "more units alive than the current form holds"
            else:
                kept = padded
        sizes = {name: int(v.numel()) for name, v in kept.items()}
        _check_groups_fit(groups, sizes)
        form = (
            Form(sizes, s, memo["compressions"]) if made else last._replace(compressions=memo["compressions"])
        )
        memo["form"] = form
        return kept, form, made, reason

    def fn(
        params: Any,
        state: Any,
        opt_state: Any,
        masks: Any,
        *,
        start: int,
        stop: int,
        key: int,
        step: Any = None,
        batch_map: Any = None,
    ) -> Trained:
        kept, form, made, reason = choose(params, state, masks)
        p, s, m, _ = compact.compact(params, state, masks, groups, kept=kept)
        moments = _params_like(opt_state, params)
        o = dict(opt_state)
        for k in moments:
            o[k] = compact.compact(opt_state[k], state, masks, groups, kept=kept)[0]
        if on_form is not None:
            on_form(form, made, reason)
        res = train_fn(p, s, o, m, start=start, stop=stop, key=key, step=step, batch_map=batch_map)
        p_full, s_full, _ = compact.expand(res.params, res.state, m, kept, groups)
        if tree.leaves(state):  # removed units keep their state (expand would zero it)
            ones = tree.map(lambda x: None if x is None else torch.ones_like(x), res.state)
            _, at_kept, _ = compact.expand(res.params, ones, m, kept, groups)
            s_full = _keep_removed_state(s_full, state, at_kept)
        o_full = dict(res.opt_state)
        for k in moments:
            o_full[k] = compact.expand(res.opt_state[k], res.state, m, kept, groups)[0]
        return Trained(p_full, s_full, o_full, res.history)

    return fn
