"""The report's curves and bars: rounds, accuracy against remaining weights, accuracy bars.

* :func:`plot_rounds`: sparsity and test accuracy (%) against the round, one line per run;
* :func:`plot_accuracy_vs_weights`: test accuracy against the remaining share of prunable weights
  (log x axis labelled in %, :func:`plain_log_axis`), one colour per method;
* :func:`plot_accuracy_bars`: best and final accuracy per run, on an axis that spans the values.

Runs of several seeds draw ``mean ± std`` bands (:func:`mean_std_band`) or error bars. Each plot
writes a PNG (:func:`save_figure`) and returns its path; matplotlib comes from the ``plots`` extra
(:func:`pure_prune.app.extras.pyplot`), imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pure_prune.app import extras
from pure_prune.app.report_runs import Run, n_seeds

__all__ = [
    "mean_std_band",
    "plain_log_axis",
    "plot_accuracy_bars",
    "plot_accuracy_vs_weights",
    "plot_rounds",
    "run_label",
    "save_figure",
]


def run_label(run: Run) -> str:
    """``method (run name, N seeds)``: the legend and title label of ``run``."""
    seeds = n_seeds(run)
    tail = f", {seeds} seeds" if seeds > 1 else ""
    return f"{run.info.get('config', {}).get('method')} ({run.name}{tail})"


def mean_std_band(
    rows: Sequence[dict[str, Any]], key: str, *, scale: float = 100.0
) -> tuple[list, list] | None:
    """``(lower, upper)`` = ``scale · (mean ∓ std)`` of ``key`` per row, from ``row[key]`` (the mean
    over seeds) and ``row[key + "_std"]``; ``None`` unless every row has both (a single-seed run)."""
    if not rows or any(r.get(key) is None or r.get(f"{key}_std") is None for r in rows):
        return None
    lower = [scale * (r[key] - r[f"{key}_std"]) for r in rows]
    upper = [scale * (r[key] + r[f"{key}_std"]) for r in rows]
    return lower, upper


def _line(ax: Any, xs: list, rows: Sequence[dict[str, Any]], key: str, **kw: Any) -> None:
    """``100 · row[key]`` against ``xs``, with a ``mean ± std`` band when the rows have one."""
    (line,) = ax.plot(xs, [100 * r[key] for r in rows], **kw)
    band = mean_std_band(rows, key)
    if band is not None:
        ax.fill_between(xs, *band, color=line.get_color(), alpha=0.2, linewidth=0)


def plain_log_axis(ax: Any, axis: str = "x") -> None:
    """Label the log-scale ``axis`` (``"x"`` or ``"y"``) of ``ax`` with plain numbers (100, 10, 1,
    0.1) instead of matplotlib's ``10^k``, and, when its limits span less than two decades, also the
    2 and 5 multiples between them (50, 20, 5, 2). Call it after the data is drawn."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if axis not in ("x", "y"):
        raise ValueError(f"axis must be 'x' or 'y', got {axis!r}")
    target = ax.xaxis if axis == "x" else ax.yaxis
    lo, hi = sorted(ax.get_xlim() if axis == "x" else ax.get_ylim())
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    few_decades = lo > 0 and hi / lo < 100
    target.set_major_locator(LogLocator(base=10))
    target.set_major_formatter(plain)
    target.set_minor_locator(LogLocator(base=10, subs=(2, 5) if few_decades else tuple(range(2, 10))))
    target.set_minor_formatter(plain if few_decades else NullFormatter())


def plot_rounds(runs: Sequence[Run], path: str | Path) -> Path:
    """Sparsity (%) and test accuracy (%) against the round index, one line per run; runs of several
    seeds draw the mean with a ``mean ± std`` band. A PNG at ``path``."""
    plt = extras.pyplot("the report's plots")
    fig, (ax_s, ax_a) = plt.subplots(1, 2, figsize=(12, 4))
    markers = ("o", "s", "^", "D", "v", "P", "X")  # runs with one schedule overlap: their markers differ
    for i, run in enumerate(runs):
        idx = [r["round"] for r in run.rounds]
        style = {"marker": markers[i % len(markers)], "ms": 4, "mfc": "none", "label": run_label(run)}
        _line(ax_s, idx, run.rounds, "sparsity", **style)
        _line(ax_a, idx, run.rounds, "test_accuracy", **style)
    ax_s.set(xlabel="round", ylabel="prunable weights pruned (%)", title="sparsity across rounds")
    ax_a.set(xlabel="round", ylabel="test accuracy (%)", title="accuracy across rounds")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_s, ax_a):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_a.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return save_figure(fig, path)


def plot_accuracy_vs_weights(runs: Sequence[Run], path: str | Path) -> Path:
    """Test accuracy against the remaining share of prunable weights (log x axis labelled 100, 50,
    20, 10, ...; 100% on the left), one line per run, one colour per method, ``mean ± std`` bands for
    runs of several seeds (at the mean remaining share); a PNG at ``path``."""
    plt = extras.pyplot("the report's plots")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    methods = sorted({str(r.info.get("config", {}).get("method")) for r in runs})
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    styles = ("-", "--", ":", "-.")
    seen: dict[str, int] = {}
    for run in runs:
        kept = [max(100 * (1 - r["sparsity"]), 1e-3) for r in run.rounds]
        method = str(run.info.get("config", {}).get("method"))
        style = styles[seen.get(method, 0) % len(styles)]  # runs of one method: one colour, own line style
        seen[method] = seen.get(method, 0) + 1
        _line(
            ax,
            kept,
            run.rounds,
            "test_accuracy",
            linestyle=style,
            marker="o",
            ms=3,
            color=colours[method],
            label=run_label(run),
        )
    ax.set_xscale("log")
    ax.invert_xaxis()
    plain_log_axis(ax, "x")
    ax.set(
        xlabel="prunable weights remaining (%, log scale)",
        ylabel="test accuracy (%)",
        title="accuracy vs remaining weights",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def _bar_axis_limits(values: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """y limits (%) around the ``(mean, std)`` pairs drawn: the spread of the values fills most of
    the axis (at least 2 points wide), clipped to [0, 100], with headroom for the value labels."""
    lo = min(m - s for m, s in values)
    hi = max(m + s for m, s in values)
    span = max(hi - lo, 2.0)
    return max(0.0, lo - 0.35 * span), min(hi + 0.3 * span, 100.0 + 0.15 * span)


def plot_accuracy_bars(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Best and final accuracy per run as grouped bars (a comparison chart), each
    value printed above its bar. The y axis spans the values drawn, not 0–100, so that differences
    of a fraction of a point show (the title says when it does not start at 0); ``± std`` error bars
    only for runs of several seeds (rows with ``<key>_std``); missing accuracies draw no bar."""
    plt = extras.pyplot("the report's plots")
    fig, ax = plt.subplots(figsize=(max(5.5, 1.4 * len(rows) + 2.5), 4.2))
    drawn: list[tuple[float, float]] = []
    any_std = False
    for name, shift, colour in (("best", -0.2, "#4c72b0"), ("final", 0.2, "#dd8452")):
        pts = [
            (x, 100 * r[f"{name}_accuracy"], r.get(f"{name}_accuracy_std"))
            for x, r in enumerate(rows)
            if r.get(f"{name}_accuracy") is not None
        ]
        if not pts:
            continue
        xs = [x + shift for x, _, _ in pts]
        heights = [h for _, h, _ in pts]
        ax.bar(xs, heights, width=0.4, color=colour, label=name)
        with_std = [(x, h, 100 * s) for x, (_, h, s) in zip(xs, pts) if s is not None]
        if with_std:
            any_std = True
            ax.errorbar(
                [x for x, _, _ in with_std],
                [h for _, h, _ in with_std],
                yerr=[s for _, _, s in with_std],
                fmt="none",
                ecolor="black",
                elinewidth=1,
                capsize=3,
            )
        for x, (_, h, s) in zip(xs, pts):
            top = h + (100 * s if s is not None else 0.0)
            ax.annotate(
                f"{h:.2f}", (x, top), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=7
            )
        drawn += [(h, 100 * s if s is not None else 0.0) for _, h, s in pts]
    if drawn:
        ax.set_ylim(*_bar_axis_limits(drawn))
    labels = []
    for r in rows:
        seeds = r.get("seeds") or 1
        extra = f", {seeds} seeds" if seeds > 1 else ""
        labels.append(f"{r['run']}\n{r['method']}{extra}" if r.get("method") else f"{r['run']}{extra}")
    long = max((len(line) for lab in labels for line in lab.split("\n")), default=0) > 14
    ax.set_xticks(range(len(rows)), labels, rotation=20 if long else 0, ha="right" if long else "center")
    ax.tick_params(axis="x", labelsize=7)
    bottom = ax.get_ylim()[0]
    notes = [f"axis starts at {bottom:.1f}%"] if drawn and bottom > 0 else []
    notes += ["error bars ± std over seeds"] if any_std else []
    title = "best and final test accuracy" + (f" ({'; '.join(notes)})" if notes else "")
    ax.set(ylabel="test accuracy (%)", title=title)
    ax.title.set_fontsize(9)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return save_figure(fig, path)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` (110 dpi; laid out tightly unless it has a layout engine) and close it."""
    plt = extras.pyplot("the report's plots")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
