"""``results.md``: the header (command, machine, wall times), the summary, every section's chapter,
section 6 and the table of every checked conclusion (also written to ``results/checks.json``)."""

from __future__ import annotations

import json
from typing import Any

from _common import machine

from . import MODULES, lottery
from .common import Context, fmt_s, machine_line, md_table
from .discussion import results_discussion


def section_wall(name: str, res: dict[str, Any]) -> float:
    """The section's compute time: the invocation that computed it, or for the lottery runs (which
    resume across invocations) the sum of their rounds' wall times when that is larger."""
    return lottery.wall_seconds(res) if name == "lottery" else res["wall_s"]


def command(ctx: Context) -> str:
    """The command line that writes this document."""
    return (
        "python bench/reproduce.py"
        + (" --quick" if ctx.quick else "")
        + (f" --mnist-root {ctx.mnist_root}" if ctx.mnist_root else "")
    )


def header(ctx: Context, total_s: float) -> list[str]:
    """Title, what wrote the page, the machine, the table of wall times, how the cache works."""
    results = ctx.results
    m = machine()
    walls = {k: section_wall(k, v) for k, v in results.items()}
    times = [
        [k, fmt_s(v) + (f" ({results[k]['finished']})" if results[k].get("finished") else "")]
        for k, v in walls.items()
    ]
    times += [["total compute", fmt_s(sum(walls.values()))], ["this invocation", fmt_s(total_s)]]
    out = [
        "# Reproducing the pruning literature with pure_prune\n",
        f"Everything on this page — every table, number and figure — is written by one command, `{command(ctx)}` "
        f"(`make results`), from the numbers it measures; raw results are in [`results/`](results/). "
        f"Each number is the mean ± sample std over **{ctx.seeds} seeds** (vmapped: all seeds train as one program).\n",
        f"Machine: {machine_line(m)}; Python {m['python']}; {m['platform']}. "
        f"The machine is shared with other jobs, so wall times are upper bounds.\n",
        md_table(["section", "wall time (computed)"], times, "lr"),
        "Sections are cached in `results/<section>.json` together with their settings; a rerun with the same "
        "settings reuses them, `--force` recomputes. Conclusions stated below are checked by the script; the "
        "checks table at the end lists each one with its evidence, and a conclusion a rerun contradicts is marked there "
        "and printed as `CONTRADICTED`.\n",
    ]
    if ctx.quick:
        out.append(
            "> **Quick mode** (`--quick`): tiny settings for the test suite; the numbers mean nothing.\n"
        )
    return out


def summary(results: dict[str, Any]) -> str:
    """The headline numbers of every section, as bullets (each number read from the results)."""
    out = [line for name, mod in MODULES.items() if name in results for line in mod.headlines(results[name])]
    return "\n".join(f"- {t}" for t in out) + "\n" if out else ""


def document(ctx: Context, total_s: float) -> str:
    """The whole of ``results.md``; writes ``results/checks.json``."""
    checks = ctx.checks
    out = header(ctx, total_s)
    out.append("## Summary\n")
    out.append(summary(ctx.results))
    for name, mod in MODULES.items():
        if name in ctx.results:
            out += mod.chapter(ctx, ctx.results[name])
    out.append("## 6. What matched, and what did not\n")
    out.append(results_discussion(checks))
    out.append("### Every checked conclusion\n")
    rows = [
        [c["section"], c["claim"], "yes" if c["holds"] else "**no**", c["evidence"]] for c in checks.items
    ]
    out.append(md_table(["section", "conclusion", "holds", "evidence"], rows, "llll"))
    (ctx.rd / "checks.json").write_text(json.dumps(checks.items, indent=1) + "\n")
    return "\n".join(out)
