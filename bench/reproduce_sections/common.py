"""What every section of ``bench/reproduce.py`` shares: the run's context, number and Markdown
formatting, CSV output, figures, the checked conclusions (:class:`Checks`) and the per-section
result cache (:func:`cached`)."""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from _common import machine

ROOT = Path(__file__).resolve().parents[2]


class Checks:
    """Conclusions the prose states, each checked against the measured numbers."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def add(self, section: str, claim: str, holds: bool, evidence: str) -> bool:
        self.items.append({"section": section, "claim": claim, "holds": bool(holds), "evidence": evidence})
        print(f"[{'ok' if holds else 'CONTRADICTED'}] {section}: {claim} ({evidence})", flush=True)
        return bool(holds)

    def verdict(self, holds: bool) -> str:
        return "holds" if holds else "**CONTRADICTED by this run**"

    def bullets(self, section: str, prefix: str = "") -> str:
        """The checks of ``section`` whose claim starts with ``prefix``, one Markdown bullet each:
        claim, verdict, evidence."""
        lines = [
            f"- {c['claim'][len(prefix) :].lstrip(': ')} — {self.verdict(c['holds'])} ({c['evidence']})."
            for c in self.items
            if c["section"] == section and c["claim"].startswith(prefix)
        ]
        return "\n".join(lines) + "\n" if lines else ""


@dataclass
class Context:
    """One invocation: its settings (``FULL`` or ``QUICK``), folders and what the sections produce.

    ``out``: the folder of ``results.md`` (raw results under ``out/results``); ``work``: the runs'
    checkpoints; ``figs``: figure name -> path relative to ``out``; ``results``: section name -> its
    cached results plus ``analysis`` and ``markdown``."""

    settings: dict[str, Any]
    out: Path
    work: Path
    quick: bool = False
    force: bool = False
    mnist_root: str | None = None
    wanted: tuple[str, ...] = ()
    checks: Checks = field(default_factory=Checks)
    figs: dict[str, str] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def seeds(self) -> int:
        return self.settings["seeds"]

    @property
    def rd(self) -> Path:
        """``out/results``: the raw numbers, CSVs and PNGs."""
        return self.out / "results"


def pm(mean: float, std: float, scale: float = 100.0, digits: int = 2) -> str:
    """``"mean ± std"`` of a fraction, in percent by default."""
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0.0 for a single value)."""
    n = len(values)
    m = sum(values) / n
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return m, s


def dashed(sizes: Sequence[int]) -> str:
    """Layer sizes as ``"64-300-100-10"``."""
    return "-".join(map(str, sizes))


def fmt_s(seconds: float) -> str:
    """``"12.3 s"`` or ``"4 min 05 s"``."""
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 60)} min {int(round(seconds % 60)):02d} s"


def machine_line(m: dict[str, Any] | None) -> str:
    """One line naming the machine of a ``_common.machine()`` record: CPU, cores, torch, threads, load."""
    if not m:
        return "unknown machine"
    load = m.get("loadavg_1m")
    threads = m.get("torch_threads")
    return (
        f"{m.get('cpu')} ({m.get('cores')} cores), torch {m.get('torch')}, {threads} thread"
        + ("" if threads == 1 else "s")
        + (f", load {load:.1f}" if isinstance(load, (int, float)) else "")
    )


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A Markdown table; ``align`` is one character per column (``l`` or ``r``), default all left."""
    align = align or "l" * len(headers)
    sep = ["---:" if a == "r" else "---" for a in align]

    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(map(cell, headers)) + " |", "|" + "|".join(sep) + "|"]
    lines += ["| " + " | ".join(map(cell, r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Rows of flat dicts as CSV (the union of their keys, in first-seen order)."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    path.write_text(buf.getvalue())
    return path


def find_row(rows: Sequence[dict[str, Any]], compression: float, **fields: Any) -> dict[str, Any] | None:
    """The first row at ``compression`` (compared as floats) whose ``fields`` all equal the given values."""
    for r in rows:
        if float(r["compression"]) == float(compression) and all(r[k] == v for k, v in fields.items()):
            return r
    return None


def accuracy(row: dict[str, Any] | None) -> float:
    """A grid row's mean accuracy; NaN for a missing row."""
    return float("nan") if row is None else row["accuracy_mean"]


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def band(ax: Any, xs: Sequence[float], mean: Sequence[float], std: Sequence[float], **line: Any) -> None:
    """A line of ``mean`` against ``xs`` with small markers and a shaded mean ± std band in its colour.

    With an explicit ``color`` the band's edge takes it too (matplotlib's ``color=``); without one only
    the face takes the line's colour from the cycle. The two render slightly differently at the band's
    border, and each plot keeps the form it was recorded with, so that its PNG stays byte-identical."""
    (drawn,) = ax.plot(xs, mean, marker="o", ms=3, **line)
    lo = [a - b for a, b in zip(mean, std)]
    hi = [a + b for a, b in zip(mean, std)]
    colour = {"color": line["color"]} if "color" in line else {"facecolor": drawn.get_color()}
    ax.fill_between(xs, lo, hi, alpha=0.2, lw=0, **colour)


def finish_axes(ax: Any, legend_size: int = 8, **labels: Any) -> None:
    """``ax.set(**labels)`` (title, axis labels), a light grid on major and minor ticks, the legend."""
    ax.set(**labels)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=legend_size)


def save_figure(fig: Any, path: Path) -> Path:
    """``fig`` laid out tightly, written to ``path`` (110 dpi) and closed."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


class NotCached(LookupError):
    """A section that was not asked for has no cached results with the current settings."""


def cached(
    ctx: Context, name: str, config: dict[str, Any], compute: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """The section ``name``'s results: read from ``<out>/results/<name>.json`` when it holds the same
    ``config``, else computed (timed) and written with the machine it ran on. A section that is not
    in ``ctx.wanted`` is only read, never computed (``NotCached`` when it cannot be), so a partial
    rebuild keeps every other cached section in the document; ``ctx.force`` recomputes the wanted."""
    path = ctx.out / "results" / f"{name}.json"
    force = ctx.force and name in ctx.wanted
    if path.is_file() and not force:
        stored = json.loads(path.read_text())
        if stored.get("config") == config:
            print(f"{name}: cached results from {path} (computed in {fmt_s(stored['wall_s'])})", flush=True)
            return stored
        if name not in ctx.wanted:
            raise NotCached(f"{path} holds other settings")
        print(f"{name}: {path} holds other settings; computing again", flush=True)
    elif name not in ctx.wanted:
        raise NotCached(f"no {path}")
    print(f"{name}: computing", flush=True)
    t0 = time.perf_counter()
    payload = compute()
    stored = {
        "config": config,
        "wall_s": time.perf_counter() - t0,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine(),
        **payload,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stored, indent=1, default=str) + "\n")
    print(f"{name}: done in {fmt_s(stored['wall_s'])}", flush=True)
    return stored


def fresh_compile_caches() -> None:
    """``torch._dynamo.reset()`` before each run or sweep of this long-lived process.

    No longer needed for correctness: dynamo counts recompilations per code object, and
    ``pure_prune.stage.compile_fresh`` now gives every step the library builds a code object of its
    own, so many models and data shapes in one process no longer hit the recompile limit. The reset
    is kept because it is harmless and makes every experiment start from empty caches, as it would
    in a process of its own (compile times then do not depend on which sections ran before)."""
    torch._dynamo.reset()


def log_to(path: Path) -> Callable[[str], None]:
    """A ``log(msg)`` that appends ``msg`` as one line to ``path``."""

    def log(msg: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)  # --force may have removed the work folder
        with path.open("a") as f:
            f.write(msg + "\n")

    return log
