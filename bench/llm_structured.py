"""Structured pruning of the shipped LLaMA-style model: heads, MLP channels, blocks at 25%.

For each form: held-out perplexity (the test split of ``bench/train_llama.py``'s pydoc-bytes
corpus), parameters, forward FLOPs per token, and CPU latency / tokens per second of the
*compacted* model against the dense one, both eager, timed in alternation (so load changes hit
both alike), median over ``--reps`` calls after warm-up, at ``--threads`` threads.

* heads: 25% of the KV-head units (a KV head with its query heads), global over all blocks
  (a block has only 2 units, so a per-block 25% would remove none);
* channels: 25% of every block's SwiGLU channels;
* blocks: the 25% of blocks with the lowest ShortGPT block influence.

The dense row times the dense model against itself: its "speedup" shows the timing noise of the
run. Also printed: each block's influence and the perplexity with that one block dropped, to check
that BI ranks the blocks as their removal hurts.

Unit scores: ``magnitude`` (L1 of the producers' weights) and ``wanda`` (structured Wanda:
``Σ|W|·||X||`` over the consumer columns a unit owns), from ``--calib`` random train windows.

    OMP_NUM_THREADS=1 python bench/llm_structured.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

from pure_prune import compact, rng, select, tree
from pure_prune.llm import structured
from pure_prune.models import llama

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_llama import corpus, evaluate  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def latency(fns: dict[str, callable], reps: int) -> dict[str, float]:
    """Median seconds per call of each ``fn``, calls taken in turn (one of each per round)."""
    for fn in fns.values():
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sparsity", type=float, default=0.25)
    ap.add_argument("--calib", type=int, default=32, help="calibration windows of seq_len bytes")
    ap.add_argument("--key", type=int, default=0)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32], help="batch sizes timed")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "llm_structured.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    params, state, info = llama.load_pretrained()
    seq = info["model"]["context"]
    _, splits = corpus()
    train, test = splits["train"], splits["test"]
    starts = torch.randint(0, len(train) - seq, (args.calib,), generator=rng.generator(args.key))
    calib = train[starts[:, None] + torch.arange(seq)]
    cos_sin = llama.rope(state, seq)
    blocks = [(n, partial(llama.block, llama.get_block(params, n), cos_sin=cos_sin, capture=True))
              for n in llama.block_names(params)]  # fmt: skip
    stats = structured.calibration_stats(partial(llama.embed, params), blocks, calib.split(8))
    groups = llama.groups(params)
    n_blocks = len(llama.block_names(params))

    forms: dict[str, dict] = {"dense": {"params": params}}
    for kind, scope in (("attn", "global"), ("mlp", "layer")):
        gs = structured.groups_of(groups, kind)
        scores = {
            "magnitude": select.unit_norms(tree.map(torch.abs, params), gs),
            "wanda": structured.activation_unit_scores(params, gs, stats.input_norms),
        }
        for crit, s in scores.items():
            masks = structured.unit_masks(params, gs, s, args.sparsity, scope=scope)
            small, _, _, kept = compact.compact(params, state, masks, gs)
            label = {"attn": "heads", "mlp": "channels"}[kind]
            removed = sum(g.size - kept[g.name].numel() for g in gs)
            forms[f"{label} ({crit})"] = {
                "params": small,
                "removed": f"{removed}/{sum(g.size for g in gs)} units",
            }
    drop = structured.lowest_blocks(stats.block_influence, round(args.sparsity * n_blocks))
    masks = structured.block_masks(params, drop)
    forms["blocks (BI)"] = {"params": llama.drop_blocks(params, structured.dead_blocks(masks)),
                            "removed": f"blocks {drop} of {n_blocks}"}  # fmt: skip

    # does BI pick the block whose removal hurts least? perplexity with each single block dropped
    each_block = [
        evaluate(llama.drop_blocks(params, [i]), state, test, seq)["perplexity"] for i in range(n_blocks)
    ]
    print("block influence:", [round(v, 4) for v in stats.block_influence.tolist()])
    print("perplexity with block i dropped:", [round(v, 3) for v in each_block])

    dense_flops = llama.flops_per_token(params, seq)
    rows = []
    for name, form in forms.items():
        p = form["params"]
        ev = evaluate(p, state, test, seq)
        row = {
            "form": name,
            "removed": form.get("removed", ""),
            "params": sum(x.numel() for x in tree.leaves(p)),
            "flops_per_token": llama.flops_per_token(p, seq),
            "flop_ratio": dense_flops / llama.flops_per_token(p, seq),
            "perplexity": ev["perplexity"],
            "bits_per_byte": ev["bits_per_byte"],
        }
        for n in args.batch:
            x = test[: n * seq].reshape(n, seq)
            with torch.no_grad():
                run = partial(llama.apply, state=state, x=x, train=False)
                t = latency({"dense": partial(run, params), "form": partial(run, p)}, args.reps)
            row[f"batch{n}"] = {
                "dense_ms": 1e3 * t["dense"],
                "ms": 1e3 * t["form"],
                "dense_tokens_per_s": n * seq / t["dense"],
                "tokens_per_s": n * seq / t["form"],
                "speedup": t["dense"] / t["form"],
            }
        rows.append(row)
        print(json.dumps(row), flush=True)

    head = "| form | removed | params | perplexity | bits/byte | FLOP ratio |"
    head += "".join(f" B={n}: dense tok/s | B={n}: tok/s | B={n}: speedup |" for n in args.batch)
    lines = [head, "|" + "---|" * (6 + 3 * len(args.batch))]
    for r in rows:
        line = (f"| {r['form']} | {r['removed']} | {r['params']} | {r['perplexity']:.3f} | {r['bits_per_byte']:.3f} "
                f"| {r['flop_ratio']:.2f}x |")  # fmt: skip
        for n in args.batch:
            b = r[f"batch{n}"]
            line += f" {b['dense_tokens_per_s']:.0f} | {b['tokens_per_s']:.0f} | {b['speedup']:.2f}x |"
        lines.append(line)
    table = "\n".join(lines)
    print(table)
    result = {
        "model": info["model"],
        "weights_sha256": info["weights_sha256"],
        "settings": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "seq_len": seq,
            "torch": torch.__version__,
        },  # fmt: skip
        "calibration": {
            "windows": args.calib,
            "tokens": stats.tokens,
            "block_influence": stats.block_influence.tolist(),
        },  # fmt: skip
        "perplexity_with_block_dropped": each_block,
        "rows": rows,
        "table": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
