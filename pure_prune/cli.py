"""The ``pure-prune`` command (also ``python -m pure_prune``).

pure-prune demo                       dense training, one-shot 80% global magnitude pruning and
                                      fine-tuning on sklearn's digits; prints a before/after table
pure-prune train --model mlp --data digits [--epochs 30 --lr 0.05 ...]
pure-prune run [--config run.toml] --method imp --rate 0.2 --pruning-times 20 ... [--resume]
                                      a pruning experiment, checkpointed per round (pure_prune.runner);
                                      --seeds N runs N seeds and reports mean ± std
pure-prune sweep --model mlp --data digits --criteria magnitude,random --compression 2,4,8 --seeds 5
                                      accuracy vs compression ratio for many criteria, each point over
                                      all seeds (pure_prune.grid); also under torchrun
pure-prune report DIR... [--out report]
                                      table and plots of finished or running experiments
pure-prune llm --model shipped --method wanda --sparsity 0.5|2:4 [--owl] [--calib 32 --seeds 5]
                                      one-shot pruning of a language model (shipped llama or a
                                      local transformers checkpoint), held-out perplexity table
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from pure_prune import checkpoint, cli_llm, data, extras, mask, rng, runconfig
from pure_prune import models as model_registry
from pure_prune.algorithms import one_shot
from pure_prune.experiment import OPTIMIZERS, setup
from pure_prune.importance import magnitude

__all__ = ["main"]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="mlp", help=f"one of: {', '.join(model_registry.names())}")
    p.add_argument("--data", default="digits", help=f"one of: {', '.join(data.names())}")
    p.add_argument("--root", default=None, help="folder (or .npz file) for data sets you already have")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--optimizer", default="sgd", choices=OPTIMIZERS)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0, help="the explicit random key of the run")
    p.add_argument("--eager", action="store_true", help="do not torch.compile the steps")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pure-prune", description="Pruning as pure functions on torch.func")
    sub = ap.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train, prune 80%% (global magnitude), fine-tune; print a table")
    _common(demo)
    demo.add_argument("--sparsity", type=float, default=0.8)
    demo.add_argument("--finetune-epochs", type=int, default=10)
    demo.add_argument("--out", default=None, help="write the table as JSON here")
    tr = sub.add_parser("train", help="train a model densely and evaluate it")
    _common(tr)
    tr.add_argument("--out", default=None, help="results JSON (default: print only)")
    _run_parser(sub)
    rep = sub.add_parser("report", help="table and plots of pure-prune run directories")
    rep.add_argument("dirs", nargs="+", metavar="DIR", help="save directories of pure-prune run")
    rep.add_argument(
        "--out", default="report", help="folder for report.csv/.md and the PNGs (default: report)"
    )
    rep.add_argument("--no-plots", action="store_true", help="write the table only")
    _sweep_parser(sub)
    cli_llm.add_parser(sub)
    return ap


_RUN_HELP = {
    "method": "one of: " + ", ".join(runconfig.METHODS),
    "importance": "criterion that scores weights (pure_prune.importance names)",
    "criteria": "channel ranking of rsst (remain, magnitude, l1, l2, saliency) and refill (remain, l1)",
    "struct": "unstructured | rows | channels | nm",
    "rate": "share of the remaining weights pruned per round",
    "pruning_times": "number of pruning rounds",
    "rewind_epoch": "rewind to the weights of this epoch (0: the initialisation)",
    "schedule": "geometric | progressive (iterative methods); linear_steps | linear | polynomial (gradual)",
    "decreasing_lr": "learning-rate milestones in epochs, comma separated (lr x gamma at each)",
    "exclude": "globs of leaves kept dense, comma separated (e.g. 'conv1.*')",
    "model_cfg": "model options as JSON (e.g. '{\"sizes\": [64, 32, 32, 10]}')",
    "recompile_every": "with --compact: make a new form at every N-th compression (docs/methods.md)",
    "sparsity_change_threshold": "with --compact: make a new form when sparsity moved by more than this",
    "save_dir": "the run's folder (default runs/<method>-<model>-<data>-seed<seed>)",
    "seeds": "number of seeds, keys seed..seed+N-1, run as one vmapped program (every method); "
    "metrics are reported as mean ± std",
}


def _run_parser(sub) -> None:
    """``pure-prune run``: one flag per RunConfig knob (dashes for underscores), none with a default
    here, so that only the flags given override the TOML file and the stored config."""
    rp = sub.add_parser("run", help="a pruning experiment with per-round checkpoints (see pure_prune.runner)")
    rp.add_argument("--config", default=None, help="TOML file of knobs (flags override it)")
    rp.add_argument(
        "--resume", action="store_true", help="finish the run in --save-dir from its last checkpoint"
    )
    special = {"compile", "progress", "eval_every_epoch", "compact"}
    for f in dataclasses.fields(runconfig.RunConfig):
        if f.name in special:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else "{}"
        kw = {
            "dest": f.name,
            "default": argparse.SUPPRESS,
            "help": f"{_RUN_HELP.get(f.name, '')} (default: {default})",
        }
        if f.name in ("decreasing_lr", "exclude"):
            kw["type"] = _int_list if f.name == "decreasing_lr" else _str_list
        elif f.name == "model_cfg":
            kw["type"] = json.loads
        elif f.type in ("int", "int | None"):
            kw["type"] = int
        elif f.type == "float":
            kw["type"] = float
        rp.add_argument(flag, **kw)
    rp.add_argument(
        "--eager", dest="compile", action="store_false", default=argparse.SUPPRESS, help="no torch.compile"
    )
    rp.add_argument(
        "--compact",
        dest="compact",
        action="store_true",
        default=argparse.SUPPRESS,
        help="train each stage with the pruned units removed (struct channels; one_shot, gradual, imp): "
        "one compile per form, see pure_prune.compact_training",
    )
    rp.add_argument("--no-progress", dest="progress", action="store_false", default=argparse.SUPPRESS)
    rp.add_argument(
        "--no-eval-every-epoch",
        dest="eval_every_epoch",
        action="store_false",
        default=argparse.SUPPRESS,
        help="evaluate only at the end of each round",
    )


def _sweep_parser(sub) -> None:
    """``pure-prune sweep``: the flags of ``grid.SweepConfig``."""
    from pure_prune import grid

    d = grid.SweepConfig()
    sp = sub.add_parser(
        "sweep",
        help="accuracy vs compression for many criteria over seeds (pure_prune.grid); "
        "torchrun --nproc_per_node N -m pure_prune sweep ... shards the points",
    )
    sp.add_argument("--model", default=d.model, help=f"one of: {', '.join(model_registry.names())}")
    sp.add_argument("--data", default=d.data, help=f"one of: {', '.join(data.names())}")
    sp.add_argument("--root", default=None, help="folder (or .npz file) for data sets you already have")
    sp.add_argument("--model-cfg", type=json.loads, default={}, help="model options as JSON")
    sp.add_argument(
        "--criteria",
        default=None,
        help="comma list of criteria, each name or name:scope (global|layer); default: every registered "
        "one of " + ", ".join(f"{n}:{s}" for n, s, _ in grid.DEFAULT_CRITERIA),
    )
    sp.add_argument(
        "--compression",
        default=",".join(f"{c:g}" for c in grid.COMPRESSIONS),
        help="compression ratios c >= 1, comma separated; sparsity 1 - 1/c (default: %(default)s)",
    )
    sp.add_argument("--seeds", type=int, default=d.seeds, help="seeds per point (default: %(default)s)")
    sp.add_argument(
        "--epochs", type=int, default=d.epochs, help="dense training epochs (default: %(default)s)"
    )
    sp.add_argument(
        "--finetune-epochs", type=int, default=d.finetune_epochs, help="after pruning (default: %(default)s)"
    )
    sp.add_argument("--batch-size", type=int, default=d.batch_size)
    sp.add_argument("--optimizer", default=d.optimizer, choices=OPTIMIZERS)
    sp.add_argument("--lr", type=float, default=d.lr)
    sp.add_argument("--momentum", type=float, default=d.momentum)
    sp.add_argument("--weight-decay", type=float, default=d.weight_decay)
    sp.add_argument(
        "--score-batches", type=int, default=d.score_batches, help="batches for data-driven criteria"
    )
    sp.add_argument("--seed", type=int, default=d.seed, help="key of the first seed (default: %(default)s)")
    sp.add_argument("--save-dir", default=None, help="results folder (default runs/sweep-<model>-<data>)")
    sp.add_argument("--eager", action="store_true", help="do not torch.compile the vmapped steps")
    sp.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    sp.add_argument("--no-plots", action="store_true", help="skip sweep.png")


def _float_list(text: str, name: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--{name} must be comma-separated numbers, got {text!r}") from None


def _sweep(args) -> int:
    from pure_prune import grid

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
    t0 = time.perf_counter()
    res = grid.run(cfg, plots=not args.no_plots)
    if res is not None:  # rank 0 (or the only process)
        print(res.markdown)
        print(f"{res.computed} points computed, wall time {time.perf_counter() - t0:.1f} s")
    return 0


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def _str_list(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _run_config(args) -> runconfig.RunConfig:
    """Defaults < the stored config (with --resume) < the TOML file < the flags given."""
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config", "resume")}
    toml = runconfig.load_toml(args.config) if args.config else {}
    base = runconfig.RunConfig()
    if args.resume:
        save = flags.get("save_dir") or toml.get("save_dir") or toml.get("save-dir")
        stored = Path(save) / "run.json" if save else None
        if stored is not None and stored.is_file():
            base = runconfig.from_mapping(json.loads(stored.read_text())["config"])
    return runconfig.from_mapping(flags, runconfig.from_mapping(toml, base))


def _run(args) -> int:
    from pure_prune import runner

    res = runner.run(_run_config(args), resume=args.resume)
    if res.rounds:
        last = res.rounds[-1]
        std = last.get("test_accuracy_std")
        seeds = "" if std is None else f" ± {100 * std:.2f}% (mean ± std over {last['seeds']} seeds)"
        params = ""
        if last.get("params_kept") is not None:
            params = f" ({round(last['params_kept']):,} of all {last['params_total']:,} params kept, biases included)"
        print(
            f"{res.save_dir}: {len(res.rounds)} rounds, final test accuracy {100 * last['test_accuracy']:.2f}%"
            f"{seeds} at {100 * (1 - last['sparsity']):.2f}% of the prunable weights{params}, "
            f"{last['elapsed_seconds']:.1f} s"
        )
    return 0


def _report(args) -> int:
    from pure_prune import report

    if not args.no_plots:
        extras.pyplot("pure-prune report's plots (--no-plots writes the table only)")
    rows, files = report.report(args.dirs, args.out, plots=not args.no_plots)
    print(report.format_table(rows))
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
    return f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".strip()


def _experiment(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    return setup(
        args.model,
        args.data,
        root=args.root,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        compile=not args.eager,
    )


def _train(args) -> list[dict]:
    from pure_prune import train

    t0 = time.perf_counter()
    exp, init = _experiment(args)
    k_init, k_data = rng.split(args.seed, 2)
    params, state = init(k_init)
    res = train.fit(
        exp.step,
        params,
        state,
        exp.optimizer.init(params),
        None,
        exp.train_batches(k_data),
        args.epochs,
        progress=not args.no_progress,
    )
    rows = [
        _row("dense", exp.evaluate(res.params, res.state, None), None, res.params, time.perf_counter() - t0)
    ]
    return rows


def _demo(args) -> list[dict]:
    from pure_prune import train

    t0 = time.perf_counter()
    exp, init = _experiment(args)
    k_init, k_data, k_tune = rng.split(args.seed, 3)
    params, state = init(k_init)
    all_kept = mask.ones_like(params)  # same tree form as the pruned phase: the steps compile once
    dense = train.fit(
        exp.step,
        params,
        state,
        exp.optimizer.init(params),
        all_kept,
        exp.train_batches(k_data),
        args.epochs,
        progress=not args.no_progress,
    )
    dense_metrics = exp.evaluate(dense.params, dense.state, all_kept)
    rows = [_row("dense", dense_metrics, None, dense.params, time.perf_counter() - t0)]
    t1 = time.perf_counter()
    masks = mask.ones_like(dense.params)
    scores = magnitude.magnitude(dense.params, masks)
    pruned_params, masks = one_shot.prune(dense.params, masks, scores, args.sparsity)
    label = f"pruned {100 * args.sparsity:g}% (global |w|)"
    rows.append(
        _row(
            label,
            exp.evaluate(pruned_params, dense.state, masks),
            masks,
            pruned_params,
            time.perf_counter() - t1,
        )
    )
    t2 = time.perf_counter()
    tuned = one_shot.run(
        exp,
        pruned_params,
        dense.state,
        masks,
        scores,
        args.sparsity,
        finetune_epochs=args.finetune_epochs,
        key=k_tune,
        progress=not args.no_progress,
    )
    rows.append(
        _row(
            f"fine-tuned {args.finetune_epochs} epochs",
            exp.evaluate(tuned.params, tuned.state, tuned.masks),
            tuned.masks,
            tuned.params,
            time.perf_counter() - t2,
        )
    )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = _parser().parse_args(argv)
    if args.command in ("run", "report", "sweep", "llm"):
        try:
            return {"run": _run, "report": _report, "sweep": _sweep, "llm": cli_llm.run}[args.command](args)
        except (ValueError, TypeError, FileNotFoundError, extras.MissingExtraError) as e:
            print(f"pure-prune: error: {e}", file=sys.stderr)
            return 2
    t0 = time.perf_counter()
    try:
        rows = {"demo": _demo, "train": _train}[args.command](args)
    except (ValueError, TypeError, FileNotFoundError, extras.MissingExtraError) as e:
        print(f"pure-prune: error: {e}", file=sys.stderr)
        return 2
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


if __name__ == "__main__":
    raise SystemExit(main())
