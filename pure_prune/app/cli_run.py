"""``pure-prune run``: a pruning experiment with per-round checkpoints (:mod:`pure_prune.app.runner`).

Its first line (stdout) names the method, model, data and save directory as soon as the flags and
the TOML file are read, before torch and the runner are imported (about a second of start-up);
the runner's own log lines follow on stderr, and a last line on stdout sums the run up.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pure_prune.app import runconfig

__all__ = ["config", "first_line", "prepare", "summary"]


def _flags_and_toml(args: argparse.Namespace) -> tuple[dict, dict]:
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config", "resume", "debug")}
    return flags, (runconfig.load_toml(args.config) if args.config else {})


def config(args: argparse.Namespace) -> runconfig.RunConfig:
    """The run's config: defaults < the stored config (with ``--resume``) < the TOML file < the flags
    given. Raises ``ValueError`` for an unknown knob, a bad value or a damaged ``run.json``."""
    flags, toml = _flags_and_toml(args)
    base = runconfig.RunConfig()
    if args.resume:
        save = flags.get("save_dir") or toml.get("save_dir") or toml.get("save-dir")
        stored = Path(save) / "run.json" if save else None
        if stored is not None and stored.is_file():
            from pure_prune.app import run_dir

            base = runconfig.from_mapping(run_dir.read_info(stored)["config"])
    return runconfig.from_mapping(flags, runconfig.from_mapping(toml, base))


def first_line(args: argparse.Namespace) -> str | None:
    """``"pure-prune run: <method> on <model>/<data>, save dir <dir>"`` (with ``--resume``:
    ``"pure-prune run: resuming the run in <dir>"``), read from the flags and the TOML file alone
    (no torch). The values are not checked here (``RunConfig.check`` imports the registries, so
    torch): the run checks them next. ``None`` when the flags or the file name an unknown knob or
    a value of the wrong type, or the file cannot be read; the run then reports that error."""
    try:
        flags, toml = _flags_and_toml(args)
        if args.resume:
            save = flags.get("save_dir") or toml.get("save_dir") or toml.get("save-dir")
            return f"pure-prune run: resuming the run in {save}" if save else None
        cfg = runconfig.from_mapping(flags, runconfig.from_mapping(toml)).resolved()
    except (ValueError, TypeError, OSError):
        return None
    return f"pure-prune run: {cfg.method} on {cfg.model}/{cfg.data}, save dir {cfg.save_dir}"


def prepare(args: argparse.Namespace) -> runconfig.RunConfig:
    """Print the run's first line (from the flags and the TOML file alone, before torch is
    imported) and return its config (:func:`config`)."""
    line = first_line(args)
    if line is not None:
        print(line, flush=True)
    return config(args)


def summary(res: Any) -> int:
    """Print the last line of a finished run (``runner.RunResult``: rounds, final accuracy, kept
    share, seconds) and return the exit status 0."""
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
