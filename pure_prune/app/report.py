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
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from einops import rearrange
from torch.utils._python_dispatch import TorchDispatchMode

from pure_prune import mask, select, tree
from pure_prune import models as model_registry
from pure_prune.app import checkpoint, extras

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

COLUMNS = (
    "run",
    "method",
    "model",
    "data",
    "rounds",
    "seeds",
    "best_accuracy",
    "best_accuracy_std",
    "final_accuracy",
    "final_accuracy_std",
    "sparsity",
    "params_kept",
    "params_total",
    "flops_kept",
    "flops_total",
    "wall_seconds",
)


class Run(NamedTuple):
    """A run directory read back: its name, path, ``run.json`` content, per-round metrics and the
    trees of its last checkpoint (``{}`` when it has none; stacked over the seeds for a run of
    several seeds, see the module docstring)."""

    name: str
    path: Path
    info: dict[str, Any]
    rounds: list[dict[str, Any]]
    final: dict[str, Any]


def _checkpoint_paths(path: Path) -> list[Path]:
    return sorted((path / "checkpoints").glob("round_*.safetensors"))


def n_seeds(run: Run) -> int:
    """The number of seeds of ``run``: ``len(run.json["seeds"]["keys"])``, 1 for a single-seed run."""
    return len(run.info.get("seeds", {}).get("keys", [])) or 1


def _seed_dirs(path: Path, info: dict[str, Any]) -> list[Path]:
    """The seed directories of a run whose seeds ran one after another (``[]`` otherwise)."""
    seeds = info.get("seeds", {})
    return [path / d for d in seeds.get("dirs", [])] if seeds.get("mode") == "sequential" else []


def _final_trees(path: Path, info: dict[str, Any]) -> dict[str, Any]:
    """The last checkpoint's trees; for sequential seeds the seeds' ``params``/``state``/``masks``
    stacked (``{}`` until every seed has reached the same last round)."""
    dirs = _seed_dirs(path, info)
    if not dirs:
        ckpts = _checkpoint_paths(path)
        return checkpoint.load(ckpts[-1])[0] if ckpts else {}
    last = [_checkpoint_paths(d)[-1:] for d in dirs]
    if any(not c or c[0].name != last[0][0].name for c in last):
        return {}  # a seed has not reached the round of the others yet
    finals = [checkpoint.load(c[0])[0] for c in last]
    out = {name: tree.stack([f[name] for f in finals]) for name in ("params", "masks")}
    out["state"] = tree.stack([f["state"] for f in finals]) if tree.leaves(finals[0]["state"]) else {}
    return out


def _seed(trees: Any, run: Run, i: int = 0) -> Any:
    """Seed ``i`` of a stacked tree of a several-seed run; the tree itself for one seed."""
    if n_seeds(run) == 1 or not tree.leaves(trees):
        return trees
    return tree.map(lambda x: None if x is None else x[i], trees)


def load_run(directory: str | Path) -> Run:
    """Read a run directory. Raises ``FileNotFoundError`` when it has no ``run.json`` and
    ``ValueError`` when its files do not parse (naming the file)."""
    path = Path(directory)
    info_path = path / "run.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"{str(path)!r} is not a pure-prune run directory (no run.json)")
    try:
        info = json.loads(info_path.read_text())
        lines = (path / "rounds.jsonl").read_text().splitlines() if (path / "rounds.jsonl").is_file() else []
        rounds = [json.loads(line) for line in lines if line.strip()]
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(path)!r}: a metrics file is not valid JSON ({e})") from e
    return Run(path.resolve().name, path, info, rounds, _final_trees(path, info))


# ----------------------------------------------------------------------------- FLOPs


_MATMULS = {
    torch.ops.aten.mm,
    torch.ops.aten.addmm,
    torch.ops.aten.bmm,
    torch.ops.aten.baddbmm,
    torch.ops.aten.convolution,
    torch.ops.aten._convolution,
}


class _Uses(TorchDispatchMode):
    """Records ``(leaf path, output numel)`` for every matmul/conv whose operand is a param leaf."""

    def __init__(self, owners: dict[int, str]):
        super().__init__()
        self.owners = owners
        self.calls: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in _MATMULS:
            for a in args:
                if isinstance(a, torch.Tensor) and a.untyped_storage().nbytes():
                    path = self.owners.get(a.untyped_storage().data_ptr())
                    if path is not None:
                        self.calls.append((path, out.numel()))
                        break
        return out


def count_flops(
    apply: Callable[..., Any],
    params: Any,
    state: Any,
    masks: Any,
    input_shape: Sequence[int],
    *,
    input_dtype: torch.dtype = torch.float32,
) -> dict[str, tuple[int, int]]:
    """``{leaf path: (dense FLOPs, kept FLOPs)}`` of one sample, for every param leaf that enters a
    matmul or convolution (module docstring). ``apply(params, state, x, train=False)`` runs once on
    a zero input of shape ``(1, *input_shape)``; ``masks`` (``None`` leaves = dense) give ``nnz``."""
    tree.assert_same_structure(params, masks, ("params", "masks"))
    names, p_leaves, _ = tree.flatten_with_paths(params)
    owners = {
        p.untyped_storage().data_ptr(): n for n, p in zip(names, p_leaves) if p is not None and p.ndim >= 2
    }
    shapes = {n: p for n, p in zip(names, p_leaves) if p is not None}
    nnz = {
        n: (int(m.sum()) if m is not None else shapes[n].numel())
        for n, m in zip(names, tree.leaves(masks))
        if n in shapes
    }
    x = torch.zeros((1, *input_shape), dtype=input_dtype)
    uses = _Uses(owners)
    with torch.no_grad(), uses:
        apply(params, state, x, train=False)
    out: dict[str, tuple[int, int]] = {}
    for path, numel in uses.calls:
        positions = numel // shapes[path].shape[0]
        dense, kept = out.get(path, (0, 0))
        out[path] = (dense + 2 * shapes[path].numel() * positions, kept + 2 * nnz[path] * positions)
    return out


# ----------------------------------------------------------------------------- the table


def summarize(run: Run) -> dict[str, Any]:
    """The table row of ``run`` (``COLUMNS``); FLOPs need the final checkpoint (``None`` without).

    Several seeds: accuracies, sparsity and ``params_kept`` are the means of the round row (with
    the accuracies' ``_std``); FLOPs are counted per seed and averaged (rounded to an int)."""
    cfg = run.info.get("config", {})
    last = run.rounds[-1] if run.rounds else {}
    kept = last.get("params_kept")
    row: dict[str, Any] = {
        "run": run.name,
        "method": cfg.get("method"),
        "model": cfg.get("model"),
        "data": cfg.get("data"),
        "rounds": len(run.rounds),
        "seeds": n_seeds(run),
        "best_accuracy": last.get("best_test_accuracy"),
        "best_accuracy_std": last.get("best_test_accuracy_std"),
        "final_accuracy": last.get("test_accuracy"),
        "final_accuracy_std": last.get("test_accuracy_std"),
        "sparsity": last.get("sparsity"),
        "params_kept": kept if kept is None else round(kept),
        "params_total": last.get("params_total"),
        "flops_kept": None,
        "flops_total": None,
        "wall_seconds": last.get("elapsed_seconds"),
    }
    if run.final:
        spec = model_registry.get(cfg["model"])
        dtype = getattr(torch, run.info.get("input_dtype", "float32"))
        per_seed = []
        for i in range(n_seeds(run)):
            trees = [_seed(run.final[name], run, i) for name in ("params", "state", "masks")]
            flops = count_flops(spec.apply, *trees, run.info["input_shape"], input_dtype=dtype)
            per_seed.append((sum(d for d, _ in flops.values()), sum(k for _, k in flops.values())))
        row["flops_total"] = per_seed[0][0]
        row["flops_kept"] = round(math.fsum(k for _, k in per_seed) / len(per_seed))
    return row


def _cell(key: str, v: Any, std: float | None = None) -> str:
    if v is None:
        return "-"
    if key in ("best_accuracy", "final_accuracy", "sparsity"):
        return f"{100 * v:.2f}%" if std is None else f"{100 * v:.2f} ± {100 * std:.2f}%"
    if key == "wall_seconds":
        return f"{v:.1f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


TABLE_NOTES = (
    "sparsity, weights_kept: share of the prunable weights (weight matrices and conv kernels) "
    "pruned and kept",
    "params: parameters kept / all parameters; biases and other dense leaves are never pruned and "
    "count as kept",
    "flops_kept: multiply-adds x2 of one sample at the final masks (share of the dense count)",
)
"""The footnotes :func:`format_table` and :func:`markdown_table` print under the table: what each
share counts (``sparsity`` and ``params`` have different denominators)."""

_SHOWN = ("run", "method", "model", "data", "rounds", "seeds", "best_accuracy", "final_accuracy", "sparsity")


def _display(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and cells; accuracies of several-seed rows read ``mean ± std%``."""
    head = [*_SHOWN, "weights_kept", "params", "flops_kept", "wall_s"]
    body = []
    for r in rows:
        weights = None if r["sparsity"] is None else f"{100 * (1 - r['sparsity']):.2f}%"
        params = "-" if r["params_kept"] is None else f"{r['params_kept']:,}/{r['params_total']:,}"
        flops = "-"
        if r["flops_kept"] is not None and r["flops_total"]:
            flops = f"{r['flops_kept']:,} ({100 * r['flops_kept'] / r['flops_total']:.2f}%)"
        body.append(
            [
                *(_cell(k, r.get(k), r.get(f"{k}_std")) for k in _SHOWN),
                weights or "-",
                params,
                flops,
                _cell("wall_seconds", r["wall_seconds"]),
            ]
        )
    return head, body


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as an aligned plain-text table (one line per run), then :data:`TABLE_NOTES`."""
    head, body = _display(rows)
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join([*lines, "", *TABLE_NOTES])


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a GitHub Markdown table, then :data:`TABLE_NOTES` as a list."""
    head, body = _display(rows)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(b) + " |" for b in body]
    return "\n".join([*lines, "", *(f"- {note}" for note in TABLE_NOTES)]) + "\n"


def csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str] = COLUMNS) -> str:
    """``rows`` as CSV text with a header of ``columns`` (the report's table by default)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


# ----------------------------------------------------------------------------- plots

_KEPT_COLOUR, _PRUNED_COLOUR = "#1d2f5b", "#e4e4e4"


def _label(run: Run) -> str:
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
        style = {"marker": markers[i % len(markers)], "ms": 4, "mfc": "none", "label": _label(run)}
        _line(ax_s, idx, run.rounds, "sparsity", **style)
        _line(ax_a, idx, run.rounds, "test_accuracy", **style)
    ax_s.set(xlabel="round", ylabel="prunable weights pruned (%)", title="sparsity across rounds")
    ax_a.set(xlabel="round", ylabel="test accuracy (%)", title="accuracy across rounds")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_s, ax_a):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_a.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return _save_fig(fig, path)


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
            label=_label(run),
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
    return _save_fig(fig, path)


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
    return _save_fig(fig, path)


def _as_2d(x: torch.Tensor) -> torch.Tensor:
    return rearrange(x, "o ... -> o (...)") if x.ndim > 1 else rearrange(x, "n -> 1 n")


def _mask_axes_labels(shape: Sequence[int]) -> tuple[str, str]:
    """``(x label, y label)`` of a mask drawn as its ``(out, rest)`` view."""
    if len(shape) > 2:
        positions = math.prod(shape[2:])
        return (
            f"inputs: {shape[1]} channels × {positions} kernel positions",
            f"output channels ({shape[0]})",
        )
    return f"input units ({shape[1]})", f"output units ({shape[0]})"


def _draw_mask(ax: Any, m: torch.Tensor, title: str, shape: Sequence[int]) -> None:
    """``m`` (its ``(out, rest)`` view) kept dark, pruned light; axis labels from the leaf ``shape``."""
    from matplotlib.colors import ListedColormap

    ax.imshow(
        _as_2d(m).to(torch.float32).numpy(),
        cmap=ListedColormap([_PRUNED_COLOUR, _KEPT_COLOUR]),
        interpolation="nearest",
        aspect="auto",
        vmin=0,
        vmax=1,
    )
    xlabel, ylabel = _mask_axes_labels(shape)
    ax.set_title(title, fontsize=8)
    ax.set_xlabel(xlabel, fontsize=7)
    ax.set_ylabel(ylabel, fontsize=7)
    ax.tick_params(labelsize=6)


def _mask_legend(fig: Any) -> None:
    from matplotlib.patches import Patch

    handles = [
        Patch(facecolor=_KEPT_COLOUR, edgecolor="0.4", label="kept"),
        Patch(facecolor=_PRUNED_COLOUR, edgecolor="0.4", label="pruned"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8, frameon=False)


def plot_masks(masks: Any, path: str | Path, *, title: str = "") -> Path:
    """One panel per prunable leaf: its mask as a ``(rows, rest)`` picture, kept entries dark and
    pruned light (legend below), output units down and inputs across (axis labels with their
    counts), titled with the leaf's path and sparsity; ``title`` above all panels. A PNG at ``path``."""
    plt = extras.pyplot("the report's plots")
    items = [(p, m) for p, m in zip(tree.paths(masks), tree.leaves(masks)) if m is not None and m.ndim >= 2]
    if not items:
        raise ValueError("plot_masks: the mask tree has no prunable matrix")
    cols = min(4, len(items))
    rows = math.ceil(len(items) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.6 * cols, 3.3 * rows + 0.6), squeeze=False, layout="constrained"
    )
    for ax, (p, m) in zip(axes.flat, items):
        pruned = 100 * (1 - float(m.float().mean()))
        _draw_mask(ax, m, f"{p}: {pruned:.1f}% pruned", tuple(m.shape))
    for ax in list(axes.flat)[len(items) :]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    _mask_legend(fig)
    return _save_fig(fig, path)


def mask_kinds(
    weight: torch.Tensor, sparsity: float, nm: tuple[int, int] = (2, 4)
) -> dict[str, torch.Tensor]:
    """Masks of one weight ``(out, in, ...)`` by ``|w|`` at ``sparsity``: ``unstructured``, ``rows``
    (output rows), ``columns`` (input columns) and ``n:m`` along the last axis of its 2-D view (when
    ``m`` divides it). Returns ``{name: bool (out, rest)}``."""
    w = _as_2d(weight.detach().abs().to(torch.float32))
    scores = {"w": w}
    out = {
        "unstructured": select.unstructured(scores, sparsity)["w"],
        "rows": select.rows(scores, sparsity, axis=0)["w"],
        "columns": select.rows(scores, sparsity, axis=1)["w"],
    }
    n, m = nm
    if w.shape[1] % m == 0:
        out[f"{n}:{m}"] = select.n_of_m(scores, n, m)["w"]
    return out


def plot_mask_kinds(weight: torch.Tensor, sparsity: float, path: str | Path, *, title: str = "") -> Path:
    """:func:`mask_kinds` side by side (unstructured, rows, columns), kept entries dark and pruned light
    (legend below), each panel titled with its kind and sparsity, axes labelled as in
    :func:`plot_masks`; a PNG at ``path``."""
    plt = extras.pyplot("the report's plots")
    kinds = mask_kinds(weight, sparsity)
    fig, axes = plt.subplots(
        1, len(kinds), figsize=(3.6 * len(kinds), 3.9), squeeze=False, layout="constrained"
    )
    for ax, (name, m) in zip(axes.flat, kinds.items()):
        pruned = 100 * (1 - float(m.float().mean()))
        fixed = " (fixed by the pattern)" if ":" in name else ""
        _draw_mask(ax, m, f"{name}: {pruned:.1f}% pruned{fixed}", tuple(weight.shape))
    if title:
        fig.suptitle(title, fontsize=9)
    _mask_legend(fig)
    return _save_fig(fig, path)


def _save_fig(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` (110 dpi; laid out tightly unless it has a layout engine) and close it."""
    plt = extras.pyplot("the report's plots")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _run_plots(run: Run, out: Path) -> list[Path]:
    """The final masks and the mask kinds of ``run`` (seed 0 of a several-seed run)."""
    if not run.final:
        return []
    which = ", seed 0" if n_seeds(run) > 1 else ""
    masks = _seed(run.final["masks"], run)
    overall = 100 * mask.sparsity(masks)
    files = [
        plot_masks(
            masks,
            out / f"masks_{run.name}.png",
            title=f"final masks of {_label(run)}{which}: {overall:.1f}% of the prunable weights pruned",
        )
    ]
    dirs = _seed_dirs(run.path, run.info)
    ckpts = _checkpoint_paths(dirs[0] if dirs else run.path)
    dense = checkpoint.load(ckpts[0])[0]["params"]  # round 0: trained before (most) pruning
    if not dirs:
        dense = _seed(dense, run)
    names, m_leaves, _ = tree.flatten_with_paths(masks)
    layers = [(p, m) for p, m in zip(names, m_leaves) if m is not None and m.ndim >= 2]
    if layers:
        path, m = max(layers, key=lambda pm: pm[1].numel())
        sparsity = 1.0 - float(m.float().mean())
        weight = dict(zip(tree.paths(dense), tree.leaves(dense)))[path]
        shape = " × ".join(str(d) for d in weight.shape)
        files.append(
            plot_mask_kinds(
                weight,
                sparsity,
                out / f"mask_kinds_{run.name}.png",
                title=f"{path} ({shape}) of {run.name}: the mask kinds by |w| of its round-0 weights, "
                f"at its final sparsity {100 * sparsity:.1f}%",
            )
        )
    return files


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
            files += _run_plots(r, out)
    return rows, files
