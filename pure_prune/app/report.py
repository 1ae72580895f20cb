"""``pure-prune report DIR...``: the table of experiments and their plots, from run directories.

Each ``DIR`` is a ``pure-prune run`` save directory (``run.json``, ``rounds.jsonl``, checkpoints).
One row per run:

* ``best_accuracy`` / ``final_accuracy``: the highest test accuracy measured during the last round
  (over its epochs and at its end) and the one at its end — both at the final sparsity;
* ``sparsity``: pruned share of the prunable weights; ``params_kept``/``params_total`` over all
  parameters (dense leaves count as kept);
* ``flops_kept``/``flops_total``: multiply-adds ×2 of the linear and conv layers for one sample, at
  the final masks: a layer whose weight ``W`` computes ``P`` output positions (1 for a linear layer,
  ``H_out·W_out`` for a conv, the sequence length for a recurrent matrix) costs ``2·numel(W)·P``
  dense and ``2·nnz(W ⊙ M)·P`` kept (the usual unstructured count; for whole removed rows and
  columns this equals its structured ``2·rows·cols·(1 − ratio)``). Positions are read off the
  model's own forward pass on a zero input (:func:`count_flops`).

The table is printed and written as ``report.csv`` and ``report.md``, with footnotes
(:data:`TABLE_NOTES`) saying what each share counts. The plots need matplotlib (the ``plots``
extra; imported inside the plotting functions, so the table works without it, and ``report``
refuses with one line naming the extra rather than silently leaving the pictures out): the
report directory also gets ``rounds.png`` (sparsity and accuracy across rounds),
``accuracy_vs_weights.png`` (accuracy against remaining weights, log x axis labelled in %, one line
per run, coloured by method), ``accuracy_bars.png`` (best and final accuracy per run, on an axis
that spans the values), and per run ``masks_<run>.png`` (the final mask of every prunable layer,
with a kept/pruned legend, output and input axes, each layer's sparsity) and ``mask_kinds_<run>.png``
(unstructured, row, column and 2:4 masks of one layer at the run's sparsity, side by side).

**Runs of several seeds** (``pure-prune run --seeds N``): the row shows the accuracies as
``mean ± std`` over the seeds (``best_accuracy_std``, ``final_accuracy_std``; sample std), and
``sparsity``, ``params_kept`` and the FLOPs are means over the seeds (every seed's FLOPs are
counted on its own final masks). The curves of ``rounds.png`` and ``accuracy_vs_weights.png``
carry ``mean ± std`` bands (``fill_between``), the bars ``± std`` error bars (only these runs); the mask pictures show seed 0.
:attr:`Run.final` then holds the seeds' final trees stacked (seed axis first), read from the run's
own checkpoints (vmapped seeds) or from its seed directories (sequential seeds, as saved before every method ran its seeds vmapped).

The parts live by concept in :mod:`pure_prune.app.report_runs` (run directories read back),
:mod:`pure_prune.app.report_table` (rows, FLOPs, the table's text forms),
:mod:`pure_prune.app.report_plots` (curves and bars) and :mod:`pure_prune.app.report_masks` (mask
pictures); this module re-exports them and runs the command (:func:`report`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pure_prune.app import extras
from pure_prune.app.report_masks import mask_kinds, plot_mask_kinds, plot_masks, plot_run_masks
from pure_prune.app.report_plots import (
    mean_std_band,
    plain_log_axis,
    plot_accuracy_bars,
    plot_accuracy_vs_weights,
    plot_rounds,
)
from pure_prune.app.report_runs import Run, load_run, n_seeds
from pure_prune.app.report_table import (
    COLUMNS,
    TABLE_NOTES,
    count_flops,
    csv_text,
    format_table,
    markdown_table,
    summarize,
)

__all__ = [
    "COLUMNS",
    "TABLE_NOTES",
    "Run",
    "n_seeds",
    "count_flops",
    "format_table",
    "load_run",
    "markdown_table",
    "mask_kinds",
    "mean_std_band",
    "plain_log_axis",
    "plot_accuracy_bars",
    "plot_accuracy_vs_weights",
    "plot_mask_kinds",
    "plot_masks",
    "plot_rounds",
    "report",
    "summarize",
]


# ----------------------------------------------------------------------------- the command


def report(
    dirs: Sequence[str | Path], out: str | Path, *, plots: bool = True
) -> tuple[list[dict[str, Any]], list[Path]]:
    """Read the run directories ``dirs``, write ``report.csv``/``report.md`` (and, with ``plots``, the
    PNGs) into ``out``. Returns the rows and the files written.

    Raises ``ValueError`` for an empty ``dirs`` and :class:`pure_prune.app.extras.MissingExtraError`
    (naming the ``plots`` extra) when ``plots`` is set and matplotlib is not installed, both before
    anything is read or written."""
    if not dirs:
        raise ValueError("report: pass at least one run directory")
    if plots:
        extras.pyplot("the report's plots (plots=False writes the table only)")
    runs = [load_run(d) for d in dirs]
    rows = [summarize(r) for r in runs]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.csv").write_text(csv_text(rows))
    (out / "report.md").write_text(markdown_table(rows))
    files = [out / "report.csv", out / "report.md"]
    if plots:
        plotted = [r for r in runs if r.rounds]
        if plotted:
            files += [
                plot_rounds(plotted, out / "rounds.png"),
                plot_accuracy_vs_weights(plotted, out / "accuracy_vs_weights.png"),
            ]
            files.append(plot_accuracy_bars(rows, out / "accuracy_bars.png"))
        for r in runs:
            files += plot_run_masks(r, out)
    return rows, files
