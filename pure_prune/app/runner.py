"""``pure-prune run``: one pruning experiment, round by round, checkpointed and resumable.

A run is a sequence of rounds of one method (``pure_prune.algorithms``); the method's round
functions do the work, called by ``pure_prune.app.run_rounds`` on the context that
``pure_prune.app.run_context`` builds. This module holds the round loop around them: every round is
checkpointed in the save directory (``pure_prune.app.run_dir``: its layout and refusals), its metrics
row (``pure_prune.app.run_rows``) is appended to ``rounds.jsonl`` and ``summary.csv``, and its log
lines to ``run.log``.

Resuming (``resume=True``) reloads the newest checkpoint and runs the remaining rounds. Every
round is a function of the previous round's trees, the round index and the config: data order,
scores and random controls come from keys folded from ``seed`` and the round/epoch index, and the
compiled-or-eager choice is part of the config. So on CPU, with the same thread count, a killed and
resumed run ends bit-identical to an uninterrupted one.

**Several seeds** (``seeds = S > 1``; keys ``k_i = seed + i``, :meth:`RunConfig.seed_keys`). Every
method runs the ``S`` seeds as one vmapped program (the same round functions, on a stacked
``pure_prune.seeds``), and seed ``i`` is, to float tolerance, the single-seed run with
``seed = k_i``: same init, data order, scores, masks and controls, all derived from ``k_i`` as that
run derives them. Every tree is stacked with a leading seed axis, the train and eval steps (and
RSST's penalized step, distillation's step and teacher forward, STE's step, RigL's dense gradient)
are ``torch.func.vmap``-ed and compiled once, each seed's batches come from its own key, and each
seed gets its own masks (chosen seed by seed on the host where the choice is not vmapped: structured
selection, Refill, RSST's units and penalty, DST's drop-and-grow). Checkpoints hold the stacked
trees, so resuming works as for one seed; rows hold the seeds' means, ``_std`` and values
(``pure_prune.app.run_rows``).

**Compact stages** (``compact = True``; ``struct = "channels"``, methods one_shot, gradual, imp,
one seed). Each round trains the model with its pruned units removed
(:func:`pure_prune.compact_training.compacting_trainer`) and hands full-size trees back, so
scoring, rewinding and checkpoints are unchanged. The steps are :class:`pure_prune.stage.Compiled`
(one static graph per shape): a new form compiles once, and ``recompile_every`` /
``sparsity_change_threshold`` (the recompilation knobs, :func:`pure_prune.stage.should_rematerialize`)
decide when one is made; otherwise the newly removed units stay masks on the current form. Rows
carry ``form_units``, ``form_sizes``, ``form_made`` and ``form_reason``. Results equal the masked
run's up to float rounding (other GEMM shapes), so a compact run hashes differently.

**Divergence.** A loss that turns NaN or infinite stops the run: every epoch's training loss
(and test loss, with ``eval_every_epoch``) is checked where the epoch's metrics are read anyway (no
extra device sync per step), so a single-seed run stops at the end of the first non-finite epoch;
several-seed runs, whose vmapped trainer the runner does not wrap, are checked once per round
from the round's history and metrics. The runner then appends a row with ``diverged`` (naming the
metric, its value, the round and the epoch; non-finite numbers as ``null``) to ``rounds.jsonl``
and ``summary.csv``, writes no checkpoint for the round (so ``--resume`` restarts it from the
round before), and raises :class:`Diverged` (a ``ValueError``) naming the round and the epoch.

**The directory is claimed** (``pure_prune.app.run_dir.claim``) after every setting, the model/data
fit and the files were checked (``pure_prune.app.run_context.check_fit``): a run that is refused
leaves no file behind, and a second run on a directory in use is refused before it writes.

The public names of the run's modules are importable from here: :data:`FORMAT`,
:data:`SEED_METRICS`, :func:`compile_counter`, :func:`n_rounds`, :func:`setup_eager`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch

from pure_prune import compact_training, seeds
from pure_prune.algorithms.base import Carry, RoundOut
from pure_prune.app.divergence import Diverged, attaching, check_finite, diverged_row, marked
from pure_prune.app.run_context import Engine, RunCtx, build_context, compile_counter, setup_eager
from pure_prune.app.run_dir import (
    FORMAT,
    claim,
    list_checkpoints,
    load_round,
    model_info,
    prepare_dir,
    refuse_if_in_use,
    remove_partials,
    save_round,
    write_info,
    write_tables,
)
from pure_prune.app.run_rounds import ROUNDS, RoundArgs, n_rounds, round_ops
from pure_prune.app.run_rows import (
    ROUND_COLUMNS,
    SEED_METRICS,
    SUMMARY_COLUMNS,
    aggregate,
    pct_text,
    round_row,
)
from pure_prune.app.runconfig import RunConfig, config_hash
from pure_prune.app.trainer import epoch_trainer

__all__ = [
    "FORMAT",
    "Diverged",
    "SEED_METRICS",
    "VMAPPED_METHODS",
    "check_finite",
    "engine",
    "RunResult",
    "compile_counter",
    "n_rounds",
    "run",
    "setup_eager",
]

VMAPPED_METHODS = tuple(ROUNDS)
"""Methods whose seeds run as one vmapped program (the round functions of ``run_rounds``): all of them."""


class RunResult(NamedTuple):
    """The save directory, one metrics dict per round, and the final trees (stacked over the seeds,
    seed axis first, when the run has several)."""

    save_dir: Path
    rounds: list[dict[str, Any]]
    carry: Carry


def _metrics(ctx: RunCtx, r: int, out: RoundOut, timing: dict[str, Any]) -> dict[str, Any]:
    """The round's row: one seed's (``run_rows.round_row``), or for a stack every seed's single-seed
    row aggregated (``run_rows.aggregate``: means, ``_std`` and per-seed values)."""
    carry, cfg = out.carry, ctx.cfg
    if ctx.seeds is None:
        test = ctx.exp.evaluate(carry.params, carry.state, carry.masks)
        return round_row(cfg, r, carry.masks, carry.params, out.history, test, out.prune_seconds, timing)
    test = seeds.evaluate_seeds(
        ctx.steps["eval"], carry.params, carry.state, carry.masks, ctx.exp.test_batches()
    )
    rows = []
    for i in range(ctx.seeds):
        history = [{k: v[i] if isinstance(v, list) else v for k, v in h.items()} for h in out.history]
        one = {"accuracy": test["accuracy"][i], "loss": test["loss"][i]}
        masks, params = seeds.seed_slice(carry.masks, i), seeds.seed_slice(carry.params, i)
        rows.append(round_row(cfg, r, masks, params, history, one, out.prune_seconds, timing))
    return aggregate(rows, list(cfg.seed_keys()))


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the round loop


def engine(cfg: RunConfig, digest: str, total: int) -> Engine:
    """The round loop's :class:`Engine` for ``cfg``: one seed, or ``cfg.seeds`` stacked seeds run
    as one vmapped program; the same round functions (``run_rounds.run_round``) either way."""
    ctx = build_context(cfg)
    forms: dict[int, dict[str, Any]] = {}  # compact runs: the form each round trained
    memo: dict[str, Any] = {}
    all_groups = ctx.exp.model.groups(ctx.init(ctx.k_init)[0]) if cfg.compact else ()

    def round_fn(carry: Carry | None, r: int) -> RoundOut:
        train_fn = epoch_trainer(
            ctx.exp,
            seeds_step=ctx.seed_steps,
            evaluate=cfg.eval_every_epoch,
            round=r,
            progress=cfg.progress,
            desc=f"round {r}/{total - 1}",
        )
        if cfg.compact:

            def on_form(form: compact_training.Form, made: bool, reason: str) -> None:
                before = forms.get(r)  # a round may train twice (IMP's rewind epochs, then the round)
                if before is not None and before["form_made"]:
                    made, reason = True, before["form_reason"]
                forms[r] = {
                    "form_units": sum(form.sizes.values()),
                    "form_sizes": dict(form.sizes),
                    "form_made": made,
                    "form_reason": reason,
                    "form_memo": compact_training.memo_to_json(memo),
                }

            train_fn = compact_training.compacting_trainer(
                train_fn,
                all_groups,
                recompile_every=cfg.recompile_every,
                threshold=cfg.sparsity_change_threshold,
                on_form=on_form,
                memo=memo,
            )
            train_fn = attaching(train_fn)
        return ROUNDS[cfg.method](ctx, RoundArgs(carry, r, round_ops(ctx, train_fn)))

    def metrics(r: int, out: RoundOut, timing: dict[str, Any]) -> dict[str, Any]:
        return {**_metrics(ctx, r, out, timing), **forms.get(r, {})}

    def resume(rows: list[dict[str, Any]]) -> None:  # the form the last saved round trained
        if rows and "form_memo" in rows[-1]:
            memo.update(compact_training.memo_from_json(rows[-1]["form_memo"]))

    info = model_info(ctx.exp)
    header = f"run {cfg.method} on {cfg.model}/{cfg.data}: {total} rounds, config {digest[:12]}, save dir {cfg.save_dir}"
    if ctx.seeds is not None:
        keys = list(cfg.seed_keys())
        info["seeds"] = {"keys": keys, "mode": "vmap", "dirs": []}
        header = (
            f"run {cfg.method} on {cfg.model}/{cfg.data}: {total} rounds, {len(keys)} seeds (keys {keys[0]}..{keys[-1]}) "
            f"as one vmapped program, config {digest[:12]}, save dir {cfg.save_dir}"
        )
    columns = ROUND_COLUMNS if ctx.seeds is None else SUMMARY_COLUMNS
    return Engine(round_fn, metrics, ctx.stats, info, header, columns, resume)


def _timing(engine: Engine, t0: float, graphs0: float, seconds0: float, elapsed: float) -> dict[str, Any]:
    """The round's timing so far: ``t_round``, new ``graphs``, ``compile_seconds``, ``elapsed`` (run)."""
    t_round = time.perf_counter() - t0
    return {
        "t_round": t_round,
        "graphs": engine.stats["graphs"] - graphs0,
        "compile_seconds": engine.stats["seconds"] - seconds0,
        "elapsed": elapsed + t_round,
    }


def _loop(
    cfg: RunConfig, engine: Engine, digest: str, total: int, save: Path, say: Callable[[str], None]
) -> RunResult:
    """Rounds ``first .. total - 1`` (after the newest checkpoint), each checkpointed and logged."""
    carry: Carry | None = None
    rounds: list[dict[str, Any]] = []
    first = 0
    found = list_checkpoints(save)
    if not (save / "run.json").is_file():
        write_info(save, cfg, digest, engine.info, total)
        say(engine.header)
    elif found:
        last = max(found)
        carry, meta = load_round(found[last], digest, last)
        rounds, first = list(meta.get("metrics", [])), last + 1
        engine.resume(rounds)
        say(f"resume: loaded round {last} from {found[last].name}; {total - first} rounds left")
    else:
        say("resume: no checkpoint yet; starting from round 0")
    write_tables(save, rounds, engine.columns)
    elapsed = rounds[-1]["elapsed_seconds"] if rounds else 0.0
    for r in range(first, total):
        t0 = time.perf_counter()
        graphs0, seconds0 = engine.stats["graphs"], engine.stats["seconds"]
        try:
            out = engine.round(carry, r)
            timing = _timing(engine, t0, graphs0, seconds0, elapsed)
            check_finite(r, out, None)
            metrics = engine.metrics(r, out, timing)
            check_finite(r, out, metrics)
        except Diverged as d:
            row = (
                d.row
                if d.row is not None
                else diverged_row(cfg, d, _timing(engine, t0, graphs0, seconds0, elapsed))
            )
            rounds.append(marked(row, d))
            write_tables(save, rounds, (*engine.columns, "diverged"))
            say(f"round {r}/{total - 1}: stopped, {d}")
            raise
        t_round, graphs, c_seconds, elapsed = (
            timing["t_round"],
            timing["graphs"],
            timing["compile_seconds"],
            timing["elapsed"],
        )
        carry = out.carry
        rounds.append(metrics)
        save_round(save, r, total, carry, digest, cfg, rounds)
        write_tables(save, rounds, engine.columns)
        tag = f"round {r}/{total - 1}"
        if out.prune_seconds is not None:
            say(f"{tag} prune: step {r}, sparsity {pct_text(metrics, 'sparsity')}, {out.prune_seconds:.3f} s")
        if "form_units" in metrics:
            what = "new form" if metrics["form_made"] else "kept form"
            say(f"{tag} compact: {what} of {metrics['form_units']} units ({metrics['form_reason']})")
        if not cfg.compile:
            say(f"{tag} step: eager (compile off), train {metrics['train_seconds']:.2f} s")
        elif graphs:
            say(
                f"{tag} step: compiled new step ({graphs} graph{'s' * (graphs > 1)}, {c_seconds:.2f} s compiling)"
            )
        else:
            say(f"{tag} step: reused compiled step (0 new graphs), train {metrics['train_seconds']:.2f} s")
        say(
            f"{tag}: test acc {pct_text(metrics, 'test_accuracy')} (best {pct_text(metrics, 'best_test_accuracy')}), "
            f"weights kept {pct_text(metrics, 'sparsity', complement=True)}, {t_round:.2f} s"
        )
    if first >= total:
        say(f"run already complete ({total} rounds)")
    return RunResult(save, rounds, carry)


def run(cfg: RunConfig, *, resume: bool = False, log: Callable[[str], None] = _stderr) -> RunResult:
    """Run (or, with ``resume``, finish) the experiment ``cfg`` in ``cfg.save_dir``; see the module doc.

    ``log(line)`` receives the log lines (also appended to ``run.log``): one per pruning step
    (round, sparsity, seconds), one per compile decision (compiled new step / reused, seconds), one
    summary per round; with several seeds, values are ``mean ± std`` over the seeds. Returns the
    :class:`RunResult`. Raises ``ValueError`` for bad settings, a model or data that do not fit
    them, or a save directory it must not touch (in use by another run, holding another run or
    this one without ``resume``, a damaged ``run.json`` or checkpoint), all before it writes a
    byte; and :class:`Diverged` (a ``ValueError``) when the loss turns NaN or infinite (module
    docstring).
    """
    cfg = cfg.check()
    digest = config_hash(cfg)
    total = n_rounds(cfg)
    save = Path(cfg.save_dir)
    refuse_if_in_use(save)
    prepare_dir(save, cfg, digest, resume, total)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    def say(msg: str) -> None:
        log(msg)
        with (save / "run.log").open("a") as f:
            f.write(msg + "\n")

    run_engine = engine(cfg, digest, total)
    with claim(save):
        prepare_dir(save, cfg, digest, resume, total)  # again, under the lock: a run may have begun meanwhile
        for partial in remove_partials(save):
            say(f"removed {partial.relative_to(save)}: a partial write left by a run that was killed")
        return _loop(cfg, run_engine, digest, total, save, say)
