"""The report's table: one row per run (:data:`COLUMNS`), its FLOPs, and its text forms.

* :func:`count_flops`: ``{leaf path: (dense FLOPs, kept FLOPs)}`` of one sample, read off the
  model's own forward pass on a zero input: a layer whose weight ``W`` computes ``P`` output
  positions costs ``2·numel(W)·P`` dense and ``2·nnz(W ⊙ M)·P`` kept;
* :func:`summarize`: the row of a :class:`~pure_prune.app.report_runs.Run` (several seeds: means,
  accuracies with their ``_std``, FLOPs per seed averaged);
* :func:`format_table` (aligned plain text), :func:`markdown_table` and :func:`csv_text`, with
  the footnotes :data:`TABLE_NOTES`.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pure_prune import models as model_registry
from pure_prune import tree
from pure_prune.app.report_runs import Run, n_seeds, seed_tree

__all__ = ["COLUMNS", "TABLE_NOTES", "count_flops", "csv_text", "format_table", "markdown_table", "summarize"]

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
            trees = [seed_tree(run.final[name], run, i) for name in ("params", "state", "masks")]
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
