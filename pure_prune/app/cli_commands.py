"""The ``demo``, ``train``, ``report`` and ``sweep`` commands of ``pure-prune`` (its parser:
:mod:`pure_prune.app.cli_parser`). Imported only once one of them runs, since it imports torch.

``demo`` trains densely, prunes 80% by global magnitude and fine-tunes; ``train`` trains densely.
Both are presets of ``pure-prune run`` (:func:`preset`): the same round loop, keys and numbers as
``run`` with those settings, in a temporary run directory. Both print a table whose sparsity and "weights kept" count the prunable weights and whose "params
kept" counts every parameter. ``report`` tabulates (and plots) run directories; ``sweep`` runs the
accuracy-vs-compression grid of :mod:`pure_prune.app.sweep`.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from pure_prune import mask
from pure_prune.app import checkpoint, extras, run_context
from pure_prune.app.runconfig import RunConfig, config_hash

__all__ = ["COMMANDS", "preset", "report", "sweep", "table"]


def _float_list(text: str, name: str) -> tuple[float, ...]:
    """``text`` as comma-separated floats; ``ValueError`` naming ``--name`` otherwise."""
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--{name} must be comma-separated numbers, got {text!r}") from None


def sweep(args: argparse.Namespace) -> int:
    """``pure-prune sweep``: settings and model/data fit checked, then the grid of points; prints its table."""
    from pure_prune.app import sweep as grid

    if not args.no_plots:
        extras.pyplot("pure-prune sweep's plot (--no-plots leaves it out)")
    cfg = grid.SweepConfig(
        model=args.model,
        data=args.data,
        root=args.root,
        model_cfg=args.model_cfg,
        criteria=tuple(grid.parse_criteria(args.criteria)) if args.criteria is not None else (),
        compression=_float_list(args.compression, "compression"),
        seeds=args.seeds,
        epochs=args.epochs,
        finetune_epochs=args.finetune_epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        score_batches=args.score_batches,
        seed=args.seed,
        eager=args.eager,
        threads=args.threads,
        save_dir=args.save_dir,
    )
    # the sweep's settings, then the model/data fit checks of its pure-prune run config (one_shot,
    # the sweep's seeds), before it trains or writes
    fit = cfg.check().run_config()
    run_context.check_fit(fit, *run_context.setup_eager(fit))
    t0 = time.perf_counter()
    res = grid.run(cfg, plots=not args.no_plots)
    if res is not None:  # rank 0 (or the only process)
        print(res.markdown)
        print(f"{res.computed} points computed, wall time {time.perf_counter() - t0:.1f} s")
    return 0


def report(args: argparse.Namespace) -> int:
    """``pure-prune report``: the table (and plots) of run directories."""
    from pure_prune.app import report as reports

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {str(out)!r} exists and is not a folder; choose another --out")
    if not args.no_plots:
        extras.pyplot("pure-prune report's plots (--no-plots writes the table only)")
    rows, files = reports.report(args.dirs, args.out, plots=not args.no_plots)
    print(reports.format_table(rows))
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


def _row(stage: str, metrics: dict, masks, params, seconds: float) -> dict:
    """One table row. ``sparsity`` and ``weights_kept``/``weights_total`` count the prunable weights
    (the leaves ``mask.ones_like`` masks); ``params_kept``/``params_total`` every parameter, dense
    leaves (biases) as kept. ``masks=None``: a dense model."""
    masks = mask.ones_like(params) if masks is None else masks
    weights_kept, weights_total = mask.count(masks)
    kept, total = mask.count(masks, params)
    return {
        "stage": stage,
        "test_accuracy": metrics["accuracy"],
        "test_loss": metrics["loss"],
        "sparsity": mask.sparsity(masks),
        "weights_kept": weights_kept,
        "weights_total": weights_total,
        "params_kept": kept,
        "params_total": total,
        "seconds": seconds,
    }


def _print_table(rows: list[dict]) -> None:
    """The rows, then a footnote saying what the sparsity and the kept counts are taken over."""
    head = (
        f"{'stage':<28}{'test acc':>10}{'sparsity':>10}{'weights kept':>18}{'params kept':>18}{'seconds':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        weights = f"{r['weights_kept']:,}/{r['weights_total']:,}"
        params = f"{r['params_kept']:,}/{r['params_total']:,}"
        print(
            f"{r['stage']:<28}{100 * r['test_accuracy']:>9.2f}%{100 * r['sparsity']:>9.1f}%"
            f"{weights:>18}{params:>18}{r['seconds']:>9.1f}"
        )
    weights, params = rows[0]["weights_total"], rows[0]["params_total"]
    print(
        f"sparsity, weights kept: of the {weights:,} prunable weights (weight matrices and conv kernels); "
        f"params kept: of all {params:,} parameters, the {params - weights:,} biases and other dense "
        "ones included (never pruned)"
    )


def _machine() -> str:
    """The machine type, the processor and torch's CPU threads."""
    return f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".strip()


def preset(args: argparse.Namespace, save_dir: str) -> RunConfig:
    """The ``pure-prune run`` config that ``demo`` (one-shot global magnitude pruning to
    ``--sparsity``, then ``--finetune-epochs`` of fine-tuning) and ``train`` (dense training only: IMP
    with no pruning round) stand for: the same loop, keys and numbers as ``run`` with these flags."""
    common = dict(
        model=args.model,
        data=args.data,
        root=args.root,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        seed=args.seed,
        compile=not args.eager,
        threads=args.threads,
        progress=not args.no_progress,
        save_dir=save_dir,
    )
    if args.command == "train":
        return RunConfig(method="imp", pruning_times=0, **common)
    return RunConfig(
        method="one_shot",
        importance="magnitude",
        scope="global",
        struct="unstructured",
        sparsity=args.sparsity,
        finetune_epochs=args.finetune_epochs,
        **common,
    )


def _rows(args: argparse.Namespace, save: str) -> list[dict]:
    """Run the preset in ``save`` and read its rows: dense (round 0), then for ``demo`` the pruned
    model before fine-tuning (round 0's trees under round 1's masks, evaluated) and after it (round 1)."""
    from pure_prune.app import run_dir, runner

    cfg = preset(args, save)
    res = runner.run(cfg, log=lambda msg: None if args.no_progress else print(msg, file=sys.stderr))
    found = run_dir.list_checkpoints(Path(save))
    dense, _ = run_dir.load_round(found[0], config_hash(cfg), 0)
    first = res.rounds[0]
    rows = [_row("dense", _test(first), None, dense.params, first["round_seconds"])]
    if args.command == "train":
        return rows
    exp, _ = run_context.setup_eager(cfg)
    masks = res.carry.masks
    pruned = mask.apply(dense.params, masks)
    label = f"pruned {100 * args.sparsity:g}% (global |w|)"
    seconds = res.rounds[1]["prune_seconds"] or 0.0
    rows.append(_row(label, exp.evaluate(pruned, dense.state, masks), masks, pruned, seconds))
    last = res.rounds[1]
    rows.append(
        _row(
            f"fine-tuned {args.finetune_epochs} epochs",
            _test(last),
            masks,
            res.carry.params,
            last["round_seconds"] - seconds,
        )
    )
    return rows


def _test(row: dict) -> dict:
    return {"accuracy": row["test_accuracy"], "loss": row["test_loss"]}


def table(args: argparse.Namespace) -> int:
    """``pure-prune demo`` and ``pure-prune train``: their rows as a table (and as JSON with ``--out``)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"pure-prune-{args.command}-") as save:
        rows = _rows(args, save)
    wall = time.perf_counter() - t0
    print(f"\n{args.command}: model {args.model}, data {args.data}, seed {args.seed}, machine: {_machine()}")
    _print_table(rows)
    print(f"wall time {wall:.1f} s")
    if args.out:
        out = Path(args.out)
        checkpoint.save_json_atomic(
            out, {"command": args.command, "args": vars(args), "rows": rows, "wall_seconds": wall}
        )
        print(f"wrote {out}")
    return 0


COMMANDS = {"demo": table, "train": table, "report": report, "sweep": sweep}
"""The sub-commands of this module by name: each takes the parsed flags, returns the exit status."""
