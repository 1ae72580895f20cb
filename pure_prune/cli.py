"""The ``pure-prune`` command (also ``python -m pure_prune``).

pure-prune demo                       dense training, one-shot 80% global magnitude pruning and
                                      fine-tuning on sklearn's digits; prints a before/after table
pure-prune train --model mlp --data digits [--epochs 30 --lr 0.05 ...]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from pure_prune import checkpoint, data, mask, rng
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
    return ap


def _row(stage: str, metrics: dict, masks, params, seconds: float) -> dict:
    kept, total = mask.count(masks, params) if masks is not None else (None, None)
    if masks is None:
        n = sum(p.numel() for p in _leaves(params))
        kept, total = n, n
    return {
        "stage": stage,
        "test_accuracy": metrics["accuracy"],
        "test_loss": metrics["loss"],
        "sparsity": 0.0 if masks is None else mask.sparsity(masks),
        "params_kept": kept,
        "params_total": total,
        "seconds": seconds,
    }


def _leaves(params):
    from pure_prune import tree

    return [x for x in tree.leaves(params) if x is not None]


def _print_table(rows: list[dict]) -> None:
    head = f"{'stage':<28}{'test acc':>10}{'sparsity':>10}{'params kept':>22}{'seconds':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        kept = f"{r['params_kept']:,}/{r['params_total']:,}"
        print(
            f"{r['stage']:<28}{100 * r['test_accuracy']:>9.2f}%{100 * r['sparsity']:>9.1f}%"
            f"{kept:>22}{r['seconds']:>9.1f}"
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
    t0 = time.perf_counter()
    try:
        rows = {"demo": _demo, "train": _train}[args.command](args)
    except (ValueError, TypeError, FileNotFoundError) as e:
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
