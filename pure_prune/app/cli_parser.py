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
    OPTIMIZERS,
    SWEEP_COMPRESSIONS,
    SWEEP_CRITERIA,
    SWEEP_DEFAULTS,
)
from pure_prune.app.cli_llm_parser import add_parser as add_llm_parser
from pure_prune.app.knobs import KNOBS

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


_DEFAULTS = {
    f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
    for f in dataclasses.fields(runconfig.RunConfig)
}
_TYPES = {"int": int, "int | None": int, "float": float}


def knob_flag(p: argparse.ArgumentParser, name: str, **kw) -> None:
    """Add ``--<name>`` for a ``RunConfig`` knob: its help from :data:`~pure_prune.app.knobs.KNOBS`
    and its default from ``RunConfig`` (``kw`` overrides either, e.g. ``default=argparse.SUPPRESS``)."""
    field = next(f for f in dataclasses.fields(runconfig.RunConfig) if f.name == name)
    default = kw.pop("default", _DEFAULTS[name])
    shown = _DEFAULTS[name] if default is argparse.SUPPRESS else default
    if isinstance(shown, tuple):
        shown = ",".join(str(v) for v in shown) or "none"
    text = kw.pop("help", KNOBS[name].help)
    kw.setdefault("help", f"{text} (default: {'unset' if shown is None else shown})".replace("%", "%%"))
    if field.type in _TYPES:
        kw.setdefault("type", _TYPES[field.type])
    p.add_argument("--" + name.replace("_", "-"), dest=name, default=default, **kw)


_SHARED_KW = {
    "optimizer": {"choices": OPTIMIZERS},
    "threads": {"type": positive_int},
    "model_cfg": {"type": json_object},
}


def _shared(p: argparse.ArgumentParser, names: tuple[str, ...], defaults: dict | None = None) -> None:
    """``--<name>`` for each ``RunConfig`` knob of ``names`` that ``demo``/``train``/``sweep`` share
    with ``run`` (:func:`knob_flag`: the same help; the default ``RunConfig``'s, or ``defaults[name]``)."""
    for name in names:
        kw = dict(_SHARED_KW.get(name, {}))
        if defaults is not None and name in defaults:
            kw["default"] = defaults[name]
        knob_flag(p, name, **kw)


def _common(p: argparse.ArgumentParser) -> None:
    """The flags ``demo`` and ``train`` share with ``run`` (same knobs, help and defaults)."""
    _shared(
        p,
        (
            "model",
            "data",
            "root",
            "epochs",
            "batch_size",
            "optimizer",
            "lr",
            "momentum",
            "weight_decay",
            "seed",
        ),
    )
    p.add_argument("--eager", action="store_true", help="do not torch.compile the steps (default: compiled)")
    _shared(p, ("threads",))
    p.add_argument("--no-progress", action="store_true", help="hide progress bars (default: shown)")
    _debug(p)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pure-prune", description="Pruning as pure functions on torch.func")
    sub = ap.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train, prune 80%% (global magnitude), fine-tune; print a table")
    _common(demo)
    knob_flag(demo, "sparsity")
    knob_flag(demo, "finetune_epochs")
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


_SWITCHES = (
    ("--eager", "compile", "store_false", "no torch.compile (default: compiled)"),
    (
        "--compact",
        "compact",
        "store_true",
        "train each stage with the pruned units removed (struct channels; one_shot, gradual, imp): "
        "one compile per form, see pure_prune.compact_training (default: off)",
    ),
    ("--no-progress", "progress", "store_false", "hide progress bars (default: shown)"),
    (
        "--no-eval-every-epoch",
        "eval_every_epoch",
        "store_false",
        "evaluate only at the end of each round (default: after every epoch)",
    ),
)
"""``run``'s on/off flags: ``(flag, RunConfig knob, argparse action, help)``; each sets its knob
only when given (the TOML file and a resumed run's config keep theirs otherwise)."""


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
    special = {dest for _, dest, _, _ in _SWITCHES}
    types = {"decreasing_lr": int_list, "exclude": str_list, "model_cfg": json_object}
    for f in dataclasses.fields(runconfig.RunConfig):
        if f.name not in special:
            knob_flag(
                rp, f.name, default=argparse.SUPPRESS, **({"type": types[f.name]} if f.name in types else {})
            )
    for flag, dest, action, text in _SWITCHES:
        rp.add_argument(flag, dest=dest, action=action, default=argparse.SUPPRESS, help=text)
    _debug(rp)


def _sweep_parser(sub) -> None:
    """``pure-prune sweep``: the flags of ``grid.SweepConfig``; those it shares with ``run`` are
    ``run``'s knobs (:func:`knob_flag`) with the sweep's defaults (``cli_choices.SWEEP_DEFAULTS``)."""
    sp = sub.add_parser(
        "sweep",
        help="accuracy vs compression for many criteria over seeds (pure_prune.app.sweep); "
        "torchrun --nproc_per_node N -m pure_prune sweep ... shards the points",
    )
    _shared(sp, ("model", "data", "root", "model_cfg"), SWEEP_DEFAULTS)
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
    shared = ("seeds", "epochs", "finetune_epochs", "batch_size", "optimizer", "lr", "momentum")
    _shared(sp, (*shared, "weight_decay", "score_batches", "seed"), SWEEP_DEFAULTS)
    sp.add_argument("--save-dir", default=None, help="results folder (default: runs/sweep-<model>-<data>)")
    sp.add_argument(
        "--eager", action="store_true", help="do not torch.compile the vmapped steps (default: compiled)"
    )
    _shared(sp, ("threads",))
    sp.add_argument("--no-plots", action="store_true", help="skip sweep.png (default: drawn)")
    _debug(sp)
