"""The flags of ``pure-prune llm`` (what they do: :mod:`pure_prune.app.cli_llm`), built without torch.

:func:`add_parser` registers the sub-command on ``pure-prune``'s parser; it imports neither torch
nor the LLM code, so ``pure-prune --help`` and ``pure-prune llm --help`` print at once.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pure_prune.app.cli_choices import LLM_DTYPES, LLM_METHODS

__all__ = ["DEFAULT_SEQLEN", "add_parser"]

DEFAULT_SEQLEN = 128
"""Tokens per calibration and evaluation window when ``--seqlen`` is not given (at most the context)."""


def _one_line_error(prog: str):
    """An ``ArgumentParser.error`` that prints ``prog: error: message`` alone and exits with 2."""

    def error(message: str):
        print(f"{prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)

    return error


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``llm`` on the ``pure-prune`` sub-command parsers ``sub``; returns its parser.

    Its usage errors print one line (no usage block) and exit with status 2.
    """
    p = sub.add_parser(
        "llm",
        help="one-shot pruning of a language model (magnitude, Wanda, SparseGPT, OWL); held-out perplexity",
        description="One-shot pruning of a language model (magnitude, Wanda, SparseGPT; OWL's block "
        "sparsities) and its held-out perplexity, dense and pruned, over calibration seeds.",
    )
    p.add_argument(
        "--model",
        default="shipped",
        help="'shipped' (the byte-level llama of pure_prune.models.llama) or the folder of a local "
        "transformers LlamaForCausalLM / Qwen2ForCausalLM / OPTForCausalLM checkpoint with its "
        "tokenizer (default: %(default)s)",
    )
    p.add_argument(
        "--method", default="wanda", help=f"one of: {', '.join(LLM_METHODS)} (default: %(default)s)"
    )
    p.add_argument(
        "--sparsity",
        default="0.5",
        help="share of every linear's weights pruned ('0.5', '50%%') or an N:M pattern along the inputs "
        "('2:4', '4:8') (default: %(default)s)",
    )
    p.add_argument(
        "--owl",
        action="store_true",
        help="OWL's outlier-weighed block sparsities around --sparsity (unstructured only; default: off)",
    )
    p.add_argument("--owl-m", type=float, default=5.0, help="OWL outlier threshold M (default: %(default)s)")
    p.add_argument(
        "--owl-lam",
        type=float,
        default=0.08,
        help="OWL spread λ of the block sparsities (default: %(default)s)",
    )
    p.add_argument(
        "--calib", type=int, default=32, help="calibration sequences per seed (default: %(default)s)"
    )
    p.add_argument(
        "--seqlen",
        type=int,
        default=None,
        help=f"tokens per calibration and evaluation window (default: {DEFAULT_SEQLEN}, at most the "
        "model's context)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="calibration draws (keys 0..K-1); the table shows mean ± std (default: %(default)s; "
        "magnitude without --owl reads no data and runs once)",
    )
    p.add_argument(
        "--sequential",
        action="store_true",
        help="prune each block in stages (attention inputs, attention output, MLP in, MLP out), each "
        "calibrated on the already-pruned stages (default: the whole block at once)",
    )
    p.add_argument(
        "--damp",
        type=float,
        default=0.01,
        help="SparseGPT's dampening λ of the Hessian (default: %(default)s)",
    )
    p.add_argument(
        "--batch-size", type=int, default=8, help="sequences per micro-batch (default: %(default)s)"
    )
    p.add_argument(
        "--eval-tokens",
        type=int,
        default=None,
        help="score only the first N tokens of the test split (default: all of it)",
    )
    p.add_argument(
        "--dtype",
        default="float32",
        help=f"checkpoint weights are loaded as one of: {', '.join(LLM_DTYPES)} (default: %(default)s)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="where blocks run and the model is evaluated, e.g. cuda (default: cpu)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="no progress line on stderr (default: shown)")
    p.add_argument("--out", default=None, help="write every run's record as JSON here (default: print only)")
    # Usage errors in one line with exit status 2, as for every other bad input: this parser's own
    # errors, and arguments it does not know (which argparse would leave to the top-level parser).
    p.error = _one_line_error("pure-prune llm")
    parse_known = p.parse_known_args

    def parse_known_args(args=None, namespace=None):
        namespace, extras = parse_known(args, namespace)
        if extras:
            p.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras

    p.parse_known_args = parse_known_args
    return p
