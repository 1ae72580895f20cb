"""The outputs of ``pure-prune sweep``: its CSV rows, Markdown table and plot.

* :func:`table`: the CSV rows (:data:`~pure_prune.app.sweep_config.CSV_COLUMNS`): a ``dense`` row,
  then per point one row before fine-tuning and one after, ``mean ± std`` over the seeds;
* :func:`markdown`: one line per criterion, scope and fine-tuning state, one column per ratio;
* :func:`plot`: accuracy against the compression ratio (log₂ axis), before and after fine-tuning.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pure_prune.app import extras
from pure_prune.app.sweep_config import sparsity_of

__all__ = ["markdown", "plot", "table"]


def table(points: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The CSV rows (:data:`CSV_COLUMNS`): first the dense models (``criterion="dense"``, compression 1),
    then per point one row without fine-tuning (``pruned_accuracy``) and one after it
    (``accuracy``); accuracies as fractions, ``accuracy_std`` the sample std over the seeds."""
    if not points or len(points) != len(results):
        raise ValueError(
            f"table: need one result per point, got {len(points)} points, {len(results)} results"
        )
    d = results[0]["summary"]["dense_accuracy"]
    out = [
        {
            "criterion": "dense",
            "scope": "-",
            "compression": 1.0,
            "sparsity": 0.0,
            "finetuned": False,
            "accuracy_mean": d["mean"],
            "accuracy_std": d["std"],
            "n": d["n"],
            "level": "-",
            "achieved_sparsity": 0.0,
        }
    ]
    for p, res in zip(points, results):
        for finetuned, key in ((False, "pruned_accuracy"), (True, "accuracy")):
            s = res["summary"][key]
            out.append(
                {
                    "criterion": p["criterion"],
                    "scope": p["scope"],
                    "compression": p["compression"],
                    "sparsity": sparsity_of(p["compression"]),
                    "finetuned": finetuned,
                    "accuracy_mean": s["mean"],
                    "accuracy_std": s["std"],
                    "n": s["n"],
                    "level": p["level"],
                    "achieved_sparsity": res["summary"]["sparsity"]["mean"],
                }
            )
    return out


def _pm(row: dict[str, Any]) -> str:
    return f"{100 * row['accuracy_mean']:.2f} ± {100 * row['accuracy_std']:.2f}"


def _lines(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The non-dense rows grouped by ``(criterion, scope)``, in first-seen order."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r["criterion"] != "dense":
            out.setdefault((r["criterion"], r["scope"]), []).append(r)
    return out


def markdown(rows: Sequence[dict[str, Any]], *, title: str = "") -> str:
    """The rows as a Markdown table: one line per criterion, scope and fine-tuning state, one column
    per compression ratio (``×c (sparsity)``), cells ``mean ± std`` test accuracy in %; the dense
    accuracy and the seed count on the line above the table."""
    dense = next(r for r in rows if r["criterion"] == "dense")
    comps = sorted({r["compression"] for r in rows if r["criterion"] != "dense"})
    head = ["criterion", "scope", "fine-tuned", *(f"×{c:g} ({100 * sparsity_of(c):.1f}%)" for c in comps)]
    lines = [
        f"{title + ': ' if title else ''}test accuracy (%), mean ± std over {dense['n']} seeds; "
        f"dense {_pm(dense)}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] * 3 + ["---:"] * len(comps)) + "|",
    ]
    for (name, scope), group in _lines(rows).items():
        for finetuned in (False, True):
            cells = {r["compression"]: _pm(r) for r in group if r["finetuned"] == finetuned}
            row = [name, scope, "yes" if finetuned else "no", *(cells.get(c, "-") for c in comps)]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[dict[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Test accuracy (%) against the compression ratio (log₂ x axis), one line per criterion and
    scope with a ``mean ± std`` band; left panel before fine-tuning, right panel after; the dense
    accuracy as a dashed line with its band. A PNG at ``path``."""
    plt = extras.pyplot("the sweep's plot")
    dense = next(r for r in rows if r["criterion"] == "dense")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    lines = _lines(rows)
    colours = plt.get_cmap("tab10" if len(lines) <= 10 else "tab20")
    for ax, finetuned in zip(axes, (False, True)):
        for i, ((name, scope), group) in enumerate(lines.items()):
            pts = sorted((r for r in group if r["finetuned"] == finetuned), key=lambda r: r["compression"])
            xs = [r["compression"] for r in pts]
            mean = [100 * r["accuracy_mean"] for r in pts]
            std = [100 * r["accuracy_std"] for r in pts]
            style = "--" if scope == "layer" else "-"
            ax.plot(
                xs, mean, style, marker="o", ms=3, color=colours(i % colours.N), label=f"{name} ({scope})"
            )
            lo = [m - s for m, s in zip(mean, std)]
            hi = [m + s for m, s in zip(mean, std)]
            ax.fill_between(xs, lo, hi, color=colours(i % colours.N), alpha=0.2, linewidth=0)
        m, s = 100 * dense["accuracy_mean"], 100 * dense["accuracy_std"]
        ax.axhline(m, color="k", linestyle=":", linewidth=1, label="dense")
        ax.axhspan(m - s, m + s, color="k", alpha=0.08, linewidth=0)
        ax.set_xscale("log", base=2)
        comps = sorted({r["compression"] for r in rows if r["criterion"] != "dense"})
        ax.set_xticks(comps, [f"{c:g}" for c in comps])
        ax.set(
            xlabel="compression ratio (log2)",
            title="after fine-tuning" if finetuned else "without fine-tuning",
        )
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel(f"test accuracy (%), mean ± std over {dense['n']} seeds")
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # beside, not on the lines
    if title:
        fig.suptitle(title, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
