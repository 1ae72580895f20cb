"""Reproduce what the pruning literature found, with pure_prune: one command, every table and figure.

    python bench/reproduce.py [--quick] [--out docs] [--work runs/reproduce] [--mnist-root DIR]
                              [--sections lottery,criteria,init,hessian,speed,llm] [--force]

Writes ``<out>/results.md`` and, under ``<out>/results/``, the raw numbers (one JSON per section,
CSVs) and the PNGs it links. Sections:

1. **lottery** — iterative magnitude pruning with rewinding to the initialisation (Frankle & Carbin
   2019) on a LeNet-300-100-style MLP (digits, MNIST-1D; MNIST with ``--mnist-root``), against
   the two controls of that paper: the same masks with a fresh initialisation (``reinit``) and
   random masks of the same per-layer sparsity (``random_masks``). All seeds as one vmapped program
   (``pure_prune.app.runner.run`` with ``seeds``).
2. **criteria** — a ShrinkBench-style grid (Blalock et al. 2020): every registered criterion pruned
   one-shot from the trained dense models to compression 2–32×, before and after fine-tuning, on
   the digits MLP and the MNIST-1D 1-D CNN (``pure_prune.app.sweep.run``).
2b. **init** — SNIP, GraSP, magnitude and random applied where SNIP and GraSP are meant to be: to
   the untrained nets of section 2, which then train with their masks fixed
   (``pure_prune.app.sweep.run_point``).
3. **hessian** — Hutchinson's diagonal against the exact one (basis-vector HVPs on a small MLP, the
   GGN diagonal, exact for ReLU nets, on the LeNet-300-100-style MLP): error and seconds per probe count.
4. **speed** — ``bench/inference.py`` rerun with a short rep count (masked vs compacted vs FLOP
   ratio; CSR vs dense), plus the recorded train-step and compile-stage benches.
5. **llm** — one-shot magnitude, Wanda, SparseGPT (50%, 2:4, 4:8, 70%) and OWL (70%) on the shipped
   LLaMA-style model, its heads / MLP channels / blocks removed at 25%, over calibration seeds
   (held-out perplexity), the calibration cost as ratios to one forward pass, and the compacted
   structured forms' tokens/s against their FLOP ratio (``bench/llm_prune.py``,
   ``bench/llm_structured.py``, ``bench/llm_calibration_cost.py``).

Each section's result is cached in ``<out>/results/<section>.json`` with its settings: a rerun
with the same settings recomputes nothing (``--force`` recomputes), so the markdown can be rebuilt
in seconds, and a killed run loses at most the section it was in (the pruning runs and sweep
points under ``--work`` resume). Every conclusion the prose states is checked against the numbers;
a conclusion a rerun contradicts is printed as ``CONTRADICTED`` and marked so in the markdown.
``--quick`` runs tiny settings (2 seeds, one epoch, eager) in well under a minute, for the test.

This file parses the arguments and runs the sections in order; each section lives in a module of
``bench/reproduce_sections/`` (settings, shared helpers, one module per section, the document).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduce_sections import MODULES, SECTIONS  # noqa: E402
from reproduce_sections.common import Context, NotCached, fmt_s  # noqa: E402
from reproduce_sections.document import document  # noqa: E402
from reproduce_sections.settings import FULL, QUICK  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="tiny settings (2 seeds, 1 epoch, eager): a smoke test"
    )
    ap.add_argument("--out", default="docs", help="folder of results.md; results go to <out>/results/")
    ap.add_argument("--work", default=None, help="checkpoints of the runs (default runs/reproduce[-quick])")
    ap.add_argument("--mnist-root", default=None, help="folder of MNIST IDX files: adds MNIST to section 1")
    ap.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma list of {', '.join(SECTIONS)}: the sections computed when their cache is missing or "
        "stale (all of them with --force); the others are read from their cache",
    )
    ap.add_argument(
        "--force",
        action="store_true",
        help="recompute the --sections from scratch (their cache and checkpoints)",
    )
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Build the wanted sections (cached or computed) in document order, then write ``results.md``."""
    args = parse_args(argv)
    t_start = time.perf_counter()
    out = Path(args.out)
    work = Path(args.work or ("runs/reproduce-quick" if args.quick else "runs/reproduce"))
    ctx = Context(
        settings=QUICK if args.quick else FULL,
        out=out,
        work=work,
        quick=args.quick,
        force=args.force,
        mnist_root=args.mnist_root,
    )
    ctx.rd.mkdir(parents=True, exist_ok=True)
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    for s in wanted:
        if s not in SECTIONS:
            raise SystemExit(f"unknown section {s!r}; known: {', '.join(SECTIONS)}")
    if args.force:
        # the checkpoints and sweep points of the forced sections, so that nothing is resumed
        for s in wanted:
            if (work / s).is_dir():
                shutil.rmtree(work / s)
    ctx.wanted = tuple(wanted)
    for name, mod in MODULES.items():  # the others come from their cache, when it has one
        try:
            ctx.results[name] = mod.build(ctx)
        except NotCached as why:
            print(f"{name}: left out ({why}; not in --sections)", flush=True)
    text = document(ctx, time.perf_counter() - t_start)
    (out / "results.md").write_text(text)
    bad = [c for c in ctx.checks.items if not c["holds"]]
    print(
        f"wrote {out / 'results.md'} and {ctx.rd}/ in {fmt_s(time.perf_counter() - t_start)}; "
        f"{len(ctx.checks.items) - len(bad)} of {len(ctx.checks.items)} conclusions hold"
        + (f"; CONTRADICTED: {len(bad)}" if bad else ""),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
