"""Traced channel groups on real architectures: what ``interop.channel_groups`` finds and keeps.

For every tiny module of ``tests/_tiny_modules.py`` (a BN/residual/depthwise CNN,
``nn.TransformerEncoder``, the bundled models, and transformers' ResNet, MobileNetV2, ConvNeXt,
ViT, BERT, GPT-2, Llama, Qwen2, Mixtral built from small configs): trace the groups, remove 30% of
every group by L1 norm (``select.channels`` on ``magnitude(params, interop.masks_like(...))``),
compact, resize the module (``interop.to_module``) and compare with the masked module.

Prints a Markdown table (model, groups found, groups left out with the reasons counted,
parameters before/after, max output difference relative to the largest masked output) and
writes ``bench/results/traced_groups.json`` with the machine information.

    python bench/traced_groups.py [--out PATH] [--models NAME ...]
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent / "tests"))

import _common  # noqa: E402
import _tiny_modules as tiny  # noqa: E402

from pure_prune import interop  # noqa: E402


def _kind(reason: str) -> str:
    """A reason without node names: 'sliced by slice_copy', 'normalised over by native_layer_norm', ..."""
    first = reason.split(";")[0]
    first = re.sub(r" \([^)]*\)", "", first)
    first = re.sub(r"'[^']*'", "'…'", first)
    return first.split(":")[0].strip()


def run(names: list[str]) -> list[dict]:
    rows = []
    for name in names:
        module, x = tiny.builders()[name]()
        t0 = time.perf_counter()
        report = interop.channel_groups_report(module, x)
        seconds = time.perf_counter() - t0
        figures = tiny.prune_and_check(module, x, report.groups, 0.3) if report.groups else {}
        reasons = Counter(_kind(g.reason) for g in report.left_out)
        rows.append(
            {
                "model": name,
                "class": type(module).__name__,
                "groups": [
                    {"name": g.name, "size": g.size, "members": len(g.members)} for g in report.groups
                ],
                "left_out": [{"name": g.name, "size": g.size, "reason": g.reason} for g in report.left_out],
                "left_out_reasons": dict(reasons),
                "trace_seconds": seconds,
                **figures,
            }
        )
        print(
            f"{name}: {len(report.groups)} groups, {len(report.left_out)} left out ({seconds:.2f} s)",
            flush=True,
        )
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| model | groups | left out (why) | params before → after | max diff / output scale |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        why = ", ".join(f"{n}× {k}" for k, n in sorted(r["left_out_reasons"].items(), key=lambda kv: -kv[1]))
        diff = r.get("module_vs_masked")
        lines.append(
            f"| {r['model']} ({r['class']}) | {len(r['groups'])} | {len(r['left_out'])}: {why} | "
            f"{r.get('params_before', '-')} → {r.get('params_after', '-')} | "
            f"{'-' if diff is None else f'{diff:.1e}'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="default bench/results/traced_groups.json")
    parser.add_argument("--models", nargs="*", default=None, help=f"subset of {list(tiny.builders())}")
    args = parser.parse_args()
    _common.setup_threads(1)
    torch.manual_seed(0)
    names = args.models or list(tiny.builders())
    rows = run(names)
    print()
    print(table(rows))
    print("wrote", _common.write_json("traced_groups", {"rows": rows}, args.out))


if __name__ == "__main__":
    main()
