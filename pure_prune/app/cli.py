"""The ``pure-prune`` command (also ``python -m pure_prune``).

pure-prune demo                       dense training, one-shot 80% global magnitude pruning and
                                      fine-tuning on sklearn's digits; prints a before/after table
pure-prune train --model mlp --data digits [--epochs 30 --lr 0.05 ...]
pure-prune run [--config run.toml] --method imp --rate 0.2 --pruning-times 20 ... [--resume]
                                      a pruning experiment, checkpointed per round (pure_prune.app.runner);
                                      --seeds N runs N seeds and reports mean ± std
pure-prune sweep --model mlp --data digits --criteria magnitude,random --compression 2,4,8 --seeds 5
                                      accuracy vs compression ratio for many criteria, each point over
                                      all seeds (pure_prune.app.sweep); also under torchrun
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
``EOFError`` (a damaged ``.npz``) and :class:`~pure_prune.app.extras.MissingExtraError`. Anything else
(``AssertionError``, ``RuntimeError``, ``KeyError``, ``IndexError``, ...) is a bug of pure_prune,
or of torch, and keeps its traceback. ``--debug`` (on every subcommand) shows the traceback of an
input mistake too.

Start-up. The parser (:mod:`pure_prune.app.cli_parser`) imports neither torch nor the application, so
``--help`` prints at once; each command imports what it uses when it runs: ``run`` in
:mod:`pure_prune.app.cli_run` (which prints its first line before importing torch), ``demo``,
``train``, ``report`` and ``sweep`` in :mod:`pure_prune.app.cli_commands`, ``llm`` in
:mod:`pure_prune.app.cli_llm`.
"""

from __future__ import annotations

import gc
import pickle
import sys
import traceback
import zipfile
from collections.abc import Sequence

from pure_prune.app import extras
from pure_prune.app.cli_parser import parser
from pure_prune.app.cli_run import config as _run_config  # noqa: F401  (the name tests/test_runner.py uses)

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

_parser = parser  # the name tests/test_runner.py uses


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
    args = parser().parse_args(argv)
    try:  # each command imports only its own module (and what that uses)
        if args.command == "run":
            from pure_prune.app import cli_run

            cfg = cli_run.prepare(args)  # its first line is out before torch is imported
            from pure_prune.app import runner

            return cli_run.summary(runner.run(cfg, resume=args.resume))
        if args.command == "llm":
            from pure_prune.app import cli_llm

            return cli_llm.run(args)
        from pure_prune.app import cli_commands

        return cli_commands.COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("pure-prune: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"pure-prune: error: {_one_line(e)}", file=sys.stderr)
        return 2


def entry() -> int:
    """The ``pure-prune`` console script and ``python -m pure_prune``: :func:`main`, then
    ``gc.freeze()`` so that the interpreter's last collection skips the objects the run left
    (dynamo's and inductor's modules hold many cycles: exiting a compiled run took ~1.3 s of
    collection on this project's 2-core AMD EPYC, ~0.2 s frozen). Files are closed by then."""
    code = main()
    gc.freeze()
    return code


if __name__ == "__main__":
    raise SystemExit(entry())
