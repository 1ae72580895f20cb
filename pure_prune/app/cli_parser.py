"""The parser of the ``pure-prune`` command: every sub-command's flags, their help and types.

Built without torch (the choices listed in the help come from :mod:`pure_prune.app.cli_choices`), so
``pure-prune --help`` and every ``pure-prune <command> --help`` print at once; the commands
themselves are in :mod:`pure_prune.app.cli_run` (``run``), :mod:`pure_prune.app.cli_commands` (``demo``,
``train``, ``report``, ``sweep``) and :mod:`pure_prune.app.cli_llm` (``llm``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from pure_prune.app import runconfig
from pure_prune.app.cli_choices import (
    CONTROLS,
    DATA,
    DST_DISTRIBUTIONS,
    DST_KINDS,
    GROWTH,
    IMPORTANCE,
    MODELS,
    OPTIMIZERS,
    REFILL_CRITERIA,
    STRUCTS,
    SWEEP_COMPRESSIONS,
    SWEEP_CRITERIA,
    SWEEP_DEFAULTS,
    UNIT_CRITERIA,
)
from pure_prune.app.cli_llm_parser import add_parser as add_llm_parser

__all__ = ["int_list", "json_object", "parser", "positive_int", "str_list"]


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}")
    return v


def json_object(text: str) -> dict:
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


def int_list(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated ints (``--decreasing-lr 10,20``)."""
    return tuple(int(v) for v in text.split(",") if v.strip())


def str_list(text: str) -> tuple[str, ...]:
    """argparse type: comma-separated names, blanks dropped (``--exclude 'fc1.*,fc3.*'``)."""
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _debug(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--debug",
        action="store_true",
        help="show the Python traceback of an error instead of one line (default: off)",
    )


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="mlp", help=f"one of: {', '.join(MODELS)} (default: %(default)s)")
    p.add_argument("--data", default="digits", help=f"one of: {', '.join(DATA)} (default: %(default)s)")
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
        "--threads", type=positive_int, default=None, help="torch CPU threads, >= 1 (default: torch's)"
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars (default: shown)")
    _debug(p)


def parser() -> argparse.ArgumentParser:
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
    _debug(add_llm_parser(sub))
    return ap


def _run_help() -> dict[str, str]:
    """What each ``pure-prune run`` knob does, with its choices where it has a fixed set."""

    def one_of(names) -> str:
        return "one of: " + ", ".join(names)

    return {
        "model": one_of(MODELS),
        "data": one_of(DATA),
        "root": "folder (or .npz file) for data sets you already have",
        "model_cfg": "model options as a JSON object (e.g. '{\"sizes\": [64, 32, 32, 10]}')",
        "method": one_of(runconfig.METHODS),
        "importance": "criterion that scores weights: " + one_of(IMPORTANCE),
        "criteria": f"channel ranking of rsst ({', '.join(UNIT_CRITERIA)}) and refill "
        f"({', '.join(REFILL_CRITERIA)}); unset: remain",
        "struct": one_of(STRUCTS) + "; unset: channels for rsst, else unstructured",
        "scope": "one of: global, layer; unset: layer for channels, else global",
        "nm": "N:M pattern of struct nm, n of every m consecutive inputs kept",
        "exclude": "globs of leaves kept dense, comma separated (e.g. 'fc1.*'); each must match a prunable leaf",
        "rate": "share of the remaining weights pruned per round, in [0, 1)",
        "pruning_times": "number of pruning rounds",
        "rewind_epoch": "rewind to the weights of this epoch (0: the initialisation)",
        "control": "IMP's control runs: " + one_of(CONTROLS),
        "schedule": f"{', '.join(runconfig.ITERATIVE_SCHEDULES)} (iterative methods) or "
        f"{', '.join(runconfig.GRADUAL_SCHEDULES)} (gradual); unset: linear_steps for gradual, else geometric",
        "sparsity": "target share of the prunable weights pruned (one_shot, gradual, dst), in [0, 1)",
        "gradual_start": "gradual: epoch of the first pruning step",
        "gradual_every": "gradual: epochs between pruning steps",
        "gradual_steps": "gradual: number of pruning steps",
        "fillback_rate": "refill: share of the pruned channels filled back, in [0, 1]",
        "reg_granularity": "rsst: regularisation granularity",
        "rst_schedule": "rsst: growth of the penalty, " + one_of(GROWTH),
        "exponent": "rsst: exponent of the penalty growth",
        "alpha": "distill: weight of the distillation loss",
        "temperature": "distill: softmax temperature",
        "dst": "dynamic sparse training kind: " + one_of(DST_KINDS),
        "update_every": "dst: steps between mask updates",
        "drop_fraction": "dst: share of the kept weights dropped per update, in [0, 1]",
        "end_fraction": "dst: share of training after which masks stop changing, in [0, 1]",
        "distribution": "dst: sparsity per layer, " + one_of(DST_DISTRIBUTIONS),
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
    rp = sub.add_parser(
        "run", help="a pruning experiment with per-round checkpoints (see pure_prune.app.runner)"
    )
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
            kw["type"] = int_list if f.name == "decreasing_lr" else str_list
        elif f.name == "model_cfg":
            kw["type"] = json_object
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
    d = SWEEP_DEFAULTS
    sp = sub.add_parser(
        "sweep",
        help="accuracy vs compression for many criteria over seeds (pure_prune.app.sweep); "
        "torchrun --nproc_per_node N -m pure_prune sweep ... shards the points",
    )
    sp.add_argument("--model", default=d["model"], help=f"one of: {', '.join(MODELS)} (default: %(default)s)")
    sp.add_argument("--data", default=d["data"], help=f"one of: {', '.join(DATA)} (default: %(default)s)")
    sp.add_argument(
        "--root", default=None, help="folder (or .npz file) for data sets you already have (default: none)"
    )
    sp.add_argument(
        "--model-cfg", type=json_object, default={}, help="model options as a JSON object (default: {})"
    )
    sp.add_argument(
        "--criteria",
        default=None,
        help="comma list of criteria, each name or name:scope (global|layer); default: every registered "
        "one of " + ", ".join(f"{n}:{s}" for n, s, _ in SWEEP_CRITERIA) + " (default: all of them)",
    )
    sp.add_argument(
        "--compression",
        default=",".join(f"{c:g}" for c in SWEEP_COMPRESSIONS),
        help="compression ratios c >= 1, comma separated; sparsity 1 - 1/c (default: %(default)s)",
    )
    sp.add_argument("--seeds", type=int, default=d["seeds"], help="seeds per point (default: %(default)s)")
    sp.add_argument(
        "--epochs", type=int, default=d["epochs"], help="dense training epochs (default: %(default)s)"
    )
    sp.add_argument(
        "--finetune-epochs",
        type=int,
        default=d["finetune_epochs"],
        help="epochs after pruning (default: %(default)s)",
    )
    sp.add_argument(
        "--batch-size", type=int, default=d["batch_size"], help="batch size (default: %(default)s)"
    )
    sp.add_argument(
        "--optimizer",
        default=d["optimizer"],
        choices=OPTIMIZERS,
        help=f"one of: {', '.join(OPTIMIZERS)} (default: %(default)s)",
    )
    sp.add_argument("--lr", type=float, default=d["lr"], help="learning rate (default: %(default)s)")
    sp.add_argument(
        "--momentum", type=float, default=d["momentum"], help="SGD momentum (default: %(default)s)"
    )
    sp.add_argument(
        "--weight-decay", type=float, default=d["weight_decay"], help="weight decay (default: %(default)s)"
    )
    sp.add_argument(
        "--score-batches",
        type=int,
        default=d["score_batches"],
        help="batches for data-driven criteria (default: %(default)s)",
    )
    sp.add_argument(
        "--seed", type=int, default=d["seed"], help="key of the first seed (default: %(default)s)"
    )
    sp.add_argument("--save-dir", default=None, help="results folder (default: runs/sweep-<model>-<data>)")
    sp.add_argument(
        "--eager", action="store_true", help="do not torch.compile the vmapped steps (default: compiled)"
    )
    sp.add_argument(
        "--threads", type=positive_int, default=None, help="torch CPU threads, >= 1 (default: torch's)"
    )
    sp.add_argument("--no-plots", action="store_true", help="skip sweep.png (default: drawn)")
    _debug(sp)
