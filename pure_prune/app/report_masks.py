"""The report's mask pictures: the final masks of a run and the mask kinds of one layer.

* :func:`plot_masks`: one panel per prunable leaf, its mask as a ``(rows, rest)`` picture, kept
  entries dark and pruned light;
* :func:`mask_kinds` / :func:`plot_mask_kinds`: unstructured, row, column and ``n:m`` masks of one
  weight by ``|w|`` at a sparsity, side by side;
* :func:`plot_run_masks`: both pictures for a run (``masks_<run>.png`` and
  ``mask_kinds_<run>.png``; seed 0 of a several-seed run).

PNGs written by :func:`pure_prune.app.report_plots.save_figure`; matplotlib from the ``plots`` extra.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from einops import rearrange

from pure_prune import mask, select, tree
from pure_prune.app import checkpoint, extras
from pure_prune.app.report_plots import run_label, save_figure
from pure_prune.app.report_runs import Run, checkpoint_paths, n_seeds, seed_dirs, seed_tree

__all__ = ["mask_kinds", "plot_mask_kinds", "plot_masks", "plot_run_masks"]

_KEPT_COLOUR, _PRUNED_COLOUR = "#1d2f5b", "#e4e4e4"


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
    return save_figure(fig, path)


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
    return save_figure(fig, path)


def plot_run_masks(run: Run, out: Path) -> list[Path]:
    """The final masks and the mask kinds of ``run`` (seed 0 of a several-seed run) as PNGs in
    ``out``; returns the files written (``[]`` for a run without a checkpoint)."""
    if not run.final:
        return []
    which = ", seed 0" if n_seeds(run) > 1 else ""
    masks = seed_tree(run.final["masks"], run)
    overall = 100 * mask.sparsity(masks)
    files = [
        plot_masks(
            masks,
            out / f"masks_{run.name}.png",
            title=f"final masks of {run_label(run)}{which}: {overall:.1f}% of the prunable weights pruned",
        )
    ]
    dirs = seed_dirs(run.path, run.info)
    ckpts = checkpoint_paths(dirs[0] if dirs else run.path)
    dense = checkpoint.load(ckpts[0])[0]["params"]  # round 0: trained before (most) pruning
    if not dirs:
        dense = seed_tree(dense, run)
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
