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

Errors. A mistake in the input (a flag value, a config or data file, a save directory, a missing
extra) ends the command with one line, ``pure-prune: error: <what and where>``, and exit status 2;
Ctrl-C ends it with status 130 and one line. The exception classes taken as input mistakes
(:data:`USER_ERRORS`) are those the checks raise: ``ValueError`` (``json``/TOML decode errors and
a diverged run included), ``TypeError``, ``OSError`` (a file that is missing, exists, or cannot be
written), ``pickle.UnpicklingError`` (a refused data pickle), ``zipfile.BadZipFile`` and
``EOFError`` (a damaged ``.npz``) and :class:`~pure_prune.extras.MissingExtraError`. Anything else
(``AssertionError``, ``RuntimeError``, ``KeyError``, ``IndexError``, ...) is a bug of pure_prune,
or of torch, and keeps its traceback. ``--debug`` (on every subcommand) shows the traceback of an
input mistake too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
import platform
import sys
import time
import traceback
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch

from pure_prune import (
    checkpoint,
    cli_llm,
    data,
    extras,
    importance,
    mask,
    rng,
    run_context,
    run_dir,
    runconfig,
)
from pure_prune import models as model_registry
from pure_prune.algorithms import dst, imp, masking, one_shot, refill, rsst, unit_criteria
from pure_prune.experiment import OPTIMIZERS, setup
from pure_prune.importance import magnitude

__all__ = ["USER_ERRORS", "main"]

USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    OSError,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
    EOFError,
    extras.MissingExtraError,
)
"""The exception classes that a mistake in the input raises: one line and exit status 2 (module doc)."""


def _positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}")
    return v


def _json_object(text: str) -> dict:
    """argparse type: a JSON object (``--model-cfg``)."""
    try:
        v = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e}): {text!r}") from None
    if not isinstance(v, dict):
        raise argparse.ArgumentTypeError(
            f"expected a JSON object like '{{\"sizes\": [64, 32, 10]}}', got {text!r}"
        )
    return v


def _debug(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--debug",
        action="store_true",
        help="show the Python traceback of an error instead of one line (default: off)",
    )


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default="mlp", help=f"one of: {', '.join(model_registry.names())} (default: %(default)s)"
    )
    p.add_argument(
        "--data", default="digits", help=f"one of: {', '.join(data.names())} (default: %(default)s)"
    )
    p.add_argument(
        "--root", default=None, help="folder (or .npz file) for data sets you already have (default: none)"
    )
    p.add_argument("--epochs", type=int, default=30, help="training epochs (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="training batch size (default: %(default)s)")
    p.add_argument(
        "--optimizer",
        default="sgd",
        choices=OPTIMIZERS,
        help=f"one of: {', '.join(OPTIMIZERS)} (default: %(default)s)",
    )
    p.add_argument("--lr", type=float, default=0.05, help="learning rate (default: %(default)s)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: %(default)s)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="weight decay (default: %(default)s)")
    p.add_argument(
        "--seed", type=int, default=0, help="the explicit random key of the run (default: %(default)s)"
    )
    p.add_argument("--eager", action="store_true", help="do not torch.compile the steps (default: compiled)")
    p.add_argument(
        "--threads", type=_positive_int, default=None, help="torch CPU threads, >= 1 (default: torch's)"
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars (default: shown)")
    _debug(p)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pure-prune", description="Pruning as pure functions on torch.func")
    sub = ap.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train, prune 80%% (global magnitude), fine-tune; print a table")
    _common(demo)
    demo.add_argument(
        "--sparsity",
        type=float,
        default=0.8,
        help="share of the weights pruned, in [0, 1) (default: %(default)s)",
    )
    demo.add_argument(
        "--finetune-epochs", type=int, default=10, help="epochs after pruning (default: %(default)s)"
    )
    demo.add_argument("--out", default=None, help="write the table as JSON here (default: print only)")
    tr = sub.add_parser("train", help="train a model densely and evaluate it")
    _common(tr)
    tr.add_argument("--out", default=None, help="results JSON (default: print only)")
    _run_parser(sub)
    rep = sub.add_parser("report", help="table and plots of pure-prune run directories")
    rep.add_argument("dirs", nargs="+", metavar="DIR", help="save directories of pure-prune run")
    rep.add_argument(
        "--out", default="report", help="folder for report.csv/.md and the PNGs (default: %(default)s)"
    )
    rep.add_argument("--no-plots", action="store_true", help="write the table only (default: plots too)")
    _debug(rep)
    _sweep_parser(sub)
    _debug(cli_llm.add_parser(sub))
    return ap


def _run_help() -> dict[str, str]:
    """What each ``pure-prune run`` knob does, with its choices where it has a fixed set."""

    def one_of(names) -> str:
        return "one of: " + ", ".join(names)

    return {
        "model": one_of(model_registry.names()),
        "data": one_of(data.names()),
        "root": "folder (or .npz file) for data sets you already have",
        "model_cfg": "model options as a JSON object (e.g. '{\"sizes\": [64, 32, 32, 10]}')",
        "method": one_of(runconfig.METHODS),
        "importance": "criterion that scores weights: " + one_of(importance.names()),
        "criteria": f"channel ranking of rsst ({', '.join(unit_criteria.CRITERIA)}) and refill "
        f"({', '.join(refill.CRITERIA)}); unset: remain",
        "struct": one_of(masking.STRUCTS) + "; unset: channels for rsst, else unstructured",
        "scope": "one of: global, layer; unset: layer for channels, else global",
        "nm": "N:M pattern of struct nm, n of every m consecutive inputs kept",
        "exclude": "globs of leaves kept dense, comma separated (e.g. 'fc1.*'); each must match a prunable leaf",
        "rate": "share of the remaining weights pruned per round, in [0, 1)",
        "pruning_times": "number of pruning rounds",
        "rewind_epoch": "rewind to the weights of this epoch (0: the initialisation)",
        "control": "IMP's control runs: " + one_of(imp.CONTROLS),
        "schedule": f"{', '.join(runconfig.ITERATIVE_SCHEDULES)} (iterative methods) or "
        f"{', '.join(runconfig.GRADUAL_SCHEDULES)} (gradual); unset: linear_steps for gradual, else geometric",
        "sparsity": "target share of the prunable weights pruned (one_shot, gradual, dst), in [0, 1)",
        "gradual_start": "gradual: epoch of the first pruning step",
        "gradual_every": "gradual: epochs between pruning steps",
        "gradual_steps": "gradual: number of pruning steps",
        "fillback_rate": "refill: share of the pruned channels filled back, in [0, 1]",
        "reg_granularity": "rsst: regularisation granularity",
        "rst_schedule": "rsst: growth of the penalty, " + one_of(rsst.GROWTH),
        "exponent": "rsst: exponent of the penalty growth",
        "alpha": "distill: weight of the distillation loss",
        "temperature": "distill: softmax temperature",
        "dst": "dynamic sparse training kind: " + one_of(dst.KINDS),
        "update_every": "dst: steps between mask updates",
        "drop_fraction": "dst: share of the kept weights dropped per update, in [0, 1]",
        "end_fraction": "dst: share of training after which masks stop changing, in [0, 1]",
        "distribution": "dst: sparsity per layer, " + one_of(dst.DISTRIBUTIONS),
        "recompile_every": "with --compact: make a new form at every N-th compression",
        "sparsity_change_threshold": "with --compact: make a new form when sparsity moved by more than this",
        "epochs": "training epochs per round",
        "finetune_epochs": "fine-tuning epochs after pruning (one_shot, rsst, distill)",
        "optimizer": one_of(OPTIMIZERS),
        "lr": "learning rate",
        "momentum": "SGD momentum",
        "weight_decay": "weight decay",
        "decreasing_lr": "learning-rate milestones in epochs, comma separated (lr x gamma at each)",
        "gamma": "learning-rate factor at each milestone of --decreasing-lr",
        "batch_size": "training batch size",
        "score_batches": "batches that data-driven criteria score on",
        "seed": "the explicit random key of the run",
        "seeds": "number of seeds, keys seed..seed+N-1, run as one vmapped program (every method); "
        "metrics are reported as mean ± std",
        "backend": "torch.compile backend: " + one_of(runconfig.BACKENDS),
        "threads": "torch CPU threads, >= 1 (unset: torch's)",
        "save_dir": "the run's folder (unset: runs/<method>-<model>-<data>-seed<seed>)",
    }


def _run_parser(sub) -> None:
    """``pure-prune run``: one flag per RunConfig knob (dashes for underscores), none with a default
    here, so that only the flags given override the TOML file and the stored config; the help of
    each states the knob's default."""
    rp = sub.add_parser("run", help="a pruning experiment with per-round checkpoints (see pure_prune.runner)")
    rp.add_argument("--config", default=None, help="TOML file of knobs, flags override it (default: none)")
    rp.add_argument(
        "--resume",
        action="store_true",
        help="finish the run in --save-dir from its last checkpoint (default: start a new run)",
    )
    special = {"compile", "progress", "eval_every_epoch", "compact"}
    helps = _run_help()
    for f in dataclasses.fields(runconfig.RunConfig):
        if f.name in special:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else "{}"
        if isinstance(default, tuple):
            default = ",".join(str(v) for v in default) or "none"
        kw = {
            "dest": f.name,
            "default": argparse.SUPPRESS,
            "help": f"{helps[f.name]} (default: {'unset' if default is None else default})".replace(
                "%", "%%"
            ),
        }
        if f.name in ("decreasing_lr", "exclude"):
            kw["type"] = _int_list if f.name == "decreasing_lr" else _str_list
        elif f.name == "model_cfg":
            kw["type"] = _json_object
        elif f.type in ("int", "int | None"):
            kw["type"] = int
        elif f.type == "float":
            kw["type"] = float
        rp.add_argument(flag, **kw)
    rp.add_argument(
        "--eager",
        dest="compile",
        action="store_false",
        default=argparse.SUPPRESS,
        help="no torch.compile (default: compiled)",
    )
    rp.add_argument(
        "--compact",
        dest="compact",
        action="store_true",
        default=argparse.SUPPRESS,
        help="train each stage with the pruned units removed (struct channels; one_shot, gradual, imp): "
        "one compile per form, see pure_prune.compact_training (default: off)",
    )
    rp.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=argparse.SUPPRESS,
        help="hide progress bars (default: shown)",
    )
    rp.add_argument(
        "--no-eval-every-epoch",
        dest="eval_every_epoch",
        action="store_false",
        default=argparse.SUPPRESS,
        help="evaluate only at the end of each round (default: after every epoch)",
    )
    _debug(rp)


def _sweep_parser(sub) -> None:
    """``pure-prune sweep``: the flags of ``grid.SweepConfig``."""
    from pure_prune import grid

    d = grid.SweepConfig()
    sp = sub.add_parser(
        "sweep",
        help="accuracy vs compression for many criteria over seeds (pure_prune.grid); "
        "torchrun --nproc_per_node N -m pure_prune sweep ... shards the points",
    )
    sp.add_argument(
        "--model", default=d.model, help=f"one of: {', '.join(model_registry.names())} (default: %(default)s)"
    )
    sp.add_argument(
        "--data", default=d.data, help=f"one of: {', '.join(data.names())} (default: %(default)s)"
    )
    sp.add_argument(
        "--root", default=None, help="folder (or .npz file) for data sets you already have (default: none)"
    )
    sp.add_argument(
        "--model-cfg", type=_json_object, default={}, help="model options as a JSON object (default: {})"
    )
    sp.add_argument(
        "--criteria",
        default=None,
        help="comma list of criteria, each name or name:scope (global|layer); default: every registered "
        "one of " + ", ".join(f"{n}:{s}" for n, s, _ in grid.DEFAULT_CRITERIA) + " (default: all of them)",
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
        "--finetune-epochs",
        type=int,
        default=d.finetune_epochs,
        help="epochs after pruning (default: %(default)s)",
    )
    sp.add_argument("--batch-size", type=int, default=d.batch_size, help="batch size (default: %(default)s)")
    sp.add_argument(
        "--optimizer",
        default=d.optimizer,
        choices=OPTIMIZERS,
        help=f"one of: {', '.join(OPTIMIZERS)} (default: %(default)s)",
    )
    sp.add_argument("--lr", type=float, default=d.lr, help="learning rate (default: %(default)s)")
    sp.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum (default: %(default)s)")
    sp.add_argument(
        "--weight-decay", type=float, default=d.weight_decay, help="weight decay (default: %(default)s)"
    )
    sp.add_argument(
        "--score-batches",
        type=int,
        default=d.score_batches,
        help="batches for data-driven criteria (default: %(default)s)",
    )
    sp.add_argument("--seed", type=int, default=d.seed, help="key of the first seed (default: %(default)s)")
    sp.add_argument("--save-dir", default=None, help="results folder (default: runs/sweep-<model>-<data>)")
    sp.add_argument(
        "--eager", action="store_true", help="do not torch.compile the vmapped steps (default: compiled)"
    )
    sp.add_argument(
        "--threads", type=_positive_int, default=None, help="torch CPU threads, >= 1 (default: torch's)"
    )
    sp.add_argument("--no-plots", action="store_true", help="skip sweep.png (default: drawn)")
    _debug(sp)


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
    # the sweep's settings, then the model/data fit checks of pure-prune run, before it trains or writes
    cfg.check()
    fit = runconfig.RunConfig(
        model=cfg.model, data=cfg.data, root=cfg.root, model_cfg=dict(cfg.model_cfg), seed=cfg.seed
    )
    run_context.check_fit(fit, *run_context.setup_eager(fit))
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
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config", "resume", "debug")}
    toml = runconfig.load_toml(args.config) if args.config else {}
    base = runconfig.RunConfig()
    if args.resume:
        save = flags.get("save_dir") or toml.get("save_dir") or toml.get("save-dir")
        stored = Path(save) / "run.json" if save else None
        if stored is not None and stored.is_file():
            base = runconfig.from_mapping(run_dir.read_info(stored)["config"])
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

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {str(out)!r} exists and is not a folder; choose another --out")
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


def _one_line(e: BaseException) -> str:
    """``e`` as one line: its message with the lines joined (an ``OSError`` as "reason: 'path'")."""
    if isinstance(e, OSError) and e.strerror and not isinstance(e, extras.MissingExtraError):
        text = e.strerror + (f": {e.filename!r}" if e.filename is not None else "")
    else:
        text = str(e) or type(e).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code: 0, 2 for a mistake in the input (one line on
    stderr; with ``--debug`` the traceback), 130 when interrupted (module docstring)."""
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print("pure-prune: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"pure-prune: error: {_one_line(e)}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command in ("run", "report", "sweep", "llm"):
        return {"run": _run, "report": _report, "sweep": _sweep, "llm": cli_llm.run}[args.command](args)
    t0 = time.perf_counter()
    rows = {"demo": _demo, "train": _train}[args.command](args)
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
