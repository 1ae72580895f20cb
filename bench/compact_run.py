"""A structured IMP run end to end: every stage trained masked-dense vs compacted (``--compact``).

Both runs are ``pure_prune.app.runner.run`` with the same config (channel pruning, layer scope, 30% of
the remaining units per round, compiled steps), one with ``compact=True``
(``pure_prune.compact_training``: each round trains the model with its pruned units removed; a
new form compiles once) and one without (masks as inputs: one compile for the whole run). Per
round: units kept, the seconds of the round's last training epoch (its form compiled and warm) in
each run, their ratio (the compact form's speedup) against the FLOP ratio of the form (the limit),
the whole round's training seconds (a new form pays dynamo's tracing and inductor's compile or
cache load in its first epoch), and graphs and compile seconds.

The runs go one after another in fresh processes, masked first, then compact, then both again;
the table takes each round's fastest repeat (the machine is shared).

    python bench/compact_run.py [--rounds 4] [--epochs 3] [--width 1024] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, table, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _one(compact: bool, args: argparse.Namespace, save: Path) -> list[dict]:
    """One run in a fresh process (its own dynamo caches); returns its per-round rows."""
    cmd = [
        sys.executable,
        "-m",
        "pure_prune",
        "run",
        "--model",
        "mlp",
        "--model-cfg",
        json.dumps({"sizes": [64, args.width, args.width, 10]}),
        "--data",
        "digits",
        "--method",
        "imp",
        "--struct",
        "channels",
        "--rate",
        "0.3",
        "--pruning-times",
        str(args.rounds),
        "--epochs",
        str(args.epochs),
        "--batch-size",
        "128",
        "--threads",
        str(args.threads),
        "--no-progress",
        "--no-eval-every-epoch",
        "--save-dir",
        str(save),
    ] + (["--compact"] if compact else [])
    subprocess.run(cmd, check=True, cwd=ROOT, env=os.environ.copy(), capture_output=True, text=True)
    return [json.loads(line) for line in (save / "rounds.jsonl").read_text().splitlines()]


def _flop_ratio(width: int, sizes: dict[str, int] | None) -> float:
    """Dense MACs over the form's MACs for the MLP 64-width-width-10 (one sample's forward)."""
    if not sizes:
        return 1.0
    h1, h2 = sizes["fc1"], sizes["fc2"]
    dense = 64 * width + width * width + width * 10
    return dense / (64 * h1 + h1 * h2 + h2 * 10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    runs: dict[str, list[list[dict]]] = {"masked": [], "compact": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for kind in ("masked", "compact"):
                runs[kind].append(_one(kind == "compact", args, Path(tmp) / f"{kind}-{rep}"))

    def best(kind: str, r: int, key: str) -> float:
        return min(float(rows[r][key]) for rows in runs[kind])

    def epoch_s(kind: str, r: int) -> float:  # the round's last epoch: its form compiled and warm
        return min(float(rows[r]["last_epoch_seconds"]) for rows in runs[kind])

    def round_s(kind: str, r: int) -> float:
        return min(float(rows[r]["train_seconds"]) for rows in runs[kind])

    out_rows, body = [], []
    for r in range(args.rounds + 1):
        first = runs["compact"][0][r]
        m_s, c_s = epoch_s("masked", r), epoch_s("compact", r)
        flops = _flop_ratio(args.width, first.get("form_sizes"))
        row = {
            "round": r,
            "weights_kept": 1.0 - first["sparsity"],
            "form_units": first.get("form_units"),
            "masked_epoch_s": m_s,
            "compact_epoch_s": c_s,
            "masked_round_s": round_s("masked", r),
            "compact_round_s": round_s("compact", r),
            "speedup": m_s / c_s,
            "flop_ratio": flops,
            "masked_compile_s": [rows[r]["compile_seconds"] for rows in runs["masked"]],
            "compact_compile_s": [rows[r]["compile_seconds"] for rows in runs["compact"]],
            "masked_graphs": runs["masked"][0][r]["compiled_graphs"],
            "compact_graphs": first["compiled_graphs"],
            "test_accuracy": {k: runs[k][0][r]["test_accuracy"] for k in runs},
        }
        out_rows.append(row)
        body.append(
            [
                r,
                f"{100 * row['weights_kept']:.1f}%",
                row["form_units"],
                m_s,
                c_s,
                f"{row['speedup']:.2f}x",
                f"{row['masked_round_s']:.2f}/{row['compact_round_s']:.2f}",
                f"{flops:.2f}x",
                f"{row['masked_graphs']}/{row['compact_graphs']}",
                f"{min(row['masked_compile_s']):.1f}/{min(row['compact_compile_s']):.1f}",
            ]
        )
    title = (
        f"structured IMP, MLP 64-{args.width}-{args.width}-10 on digits, {args.epochs} epochs/round, "
        f"batch 128, {args.threads} threads (load {machine()['loadavg_1m']:.1f})"
    )
    headers = [
        "round",
        "weights kept",
        "units",
        "masked epoch s",
        "compact epoch s",
        "speedup",
        "round s m/c",
        "FLOP ratio",
        "graphs m/c",
        "compile s m/c",
    ]
    print(table(title, headers, body))
    path = write_json("compact_run", {"args": vars(args), "rounds": out_rows}, args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
