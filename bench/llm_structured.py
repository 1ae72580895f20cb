"""Structured pruning of the shipped LLaMA-style model: heads, MLP channels, blocks at 25%.

For each form: held-out perplexity (the test split of ``bench/train_llama.py``'s pydoc-bytes
corpus), parameters, forward FLOPs per token, and CPU latency / tokens per second of the
*compacted* model against the dense one, both eager, timed in alternation (so load changes hit
both alike), median over ``--reps`` calls after warm-up, at ``--threads`` threads.

* heads: 25% of the KV-head units (a KV head with its query heads), global over all blocks
  (a block has only 2 units, so a per-block 25% would remove none);
* channels: 25% of every block's SwiGLU channels;
* blocks: the 25% of blocks with the lowest ShortGPT block influence (Men et al. 2024).

The dense row times the dense model against itself: its "speedup" shows the timing noise of the
run. Also printed: each block's influence and the perplexity with that one block dropped, to check
that BI ranks the blocks as their removal hurts.

Unit scores: ``magnitude`` (L1 of the producers' weights; reads no data) and ``wanda`` (structured
Wanda: ``Σ|W|·||X||`` over the consumer columns a unit owns), from ``--calib`` random train windows.
The functions that build the forms (:func:`calibration_stats`, :func:`forms`), measure one
(:func:`measure`) and time it (:func:`speed`) are shared with ``bench/reproduce_sections/llm.py``.

    OMP_NUM_THREADS=1 python bench/llm_structured.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from pure_prune import compact, rng, select, tree
from pure_prune.llm import structured
from pure_prune.models import llama

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_llama import corpus, evaluate  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
#: form name -> whether its unit scores read the calibration data
READS_DATA = {
    "heads (magnitude)": False,
    "heads (wanda)": True,
    "channels (magnitude)": False,
    "channels (wanda)": True,
    "blocks (BI)": True,
}


def latency(fns: dict[str, Callable[[], Any]], reps: int) -> dict[str, float]:
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


def calibration_stats(
    params: Any, state: Any, calib: torch.Tensor, batch: int = 8
) -> structured.StructuredStats:
    """The dense model's consumer input norms and ShortGPT block influences over ``calib`` ``(N, T)``."""
    cos_sin = llama.rope(state, calib.shape[1])
    blocks = [(n, partial(llama.block, llama.get_block(params, n), cos_sin=cos_sin, capture=True))
              for n in llama.block_names(params)]  # fmt: skip
    return structured.calibration_stats(partial(llama.embed, params), blocks, calib.split(batch))


def forms(
    params: Any,
    state: Any,
    stats: structured.StructuredStats,
    sparsity: float,
    names: Sequence[str] = tuple(READS_DATA),
) -> dict[str, dict[str, Any]]:
    """The compacted forms ``names`` (keys of :data:`READS_DATA`) at ``sparsity``: ``{name: {"params",
    "removed"}}`` (the compacted params; what was removed, in words)."""
    out: dict[str, dict[str, Any]] = {}
    groups = llama.groups(params)
    for kind, label, scope in (("attn", "heads", "global"), ("mlp", "channels", "layer")):
        gs = structured.groups_of(groups, kind)
        for crit in ("magnitude", "wanda"):
            name = f"{label} ({crit})"
            if name not in names:
                continue
            if crit == "magnitude":
                s = select.unit_norms(tree.map(torch.abs, params), gs)
            else:
                s = structured.activation_unit_scores(params, gs, stats.input_norms)
            masks = structured.unit_masks(params, gs, s, sparsity, scope=scope)
            small, _, _, kept = compact.compact(params, state, masks, gs)
            removed = sum(g.size - kept[g.name].numel() for g in gs)
            out[name] = {"params": small, "removed": f"{removed}/{sum(g.size for g in gs)} units"}
    if "blocks (BI)" in names:
        n_blocks = len(llama.block_names(params))
        drop = structured.lowest_blocks(stats.block_influence, round(sparsity * n_blocks))
        dead = structured.dead_blocks(structured.block_masks(params, drop))
        out["blocks (BI)"] = {
            "params": llama.drop_blocks(params, dead),
            "removed": f"blocks {drop} of {n_blocks}",
        }
    return out


def measure(dense: Any, p: Any, state: Any, test: torch.Tensor, seq: int) -> dict[str, Any]:
    """Parameters, FLOPs per token (and their ratio dense / ``p``), held-out perplexity and bits/byte of ``p``."""
    ev = evaluate(p, state, test, seq)
    flops = llama.flops_per_token(p, seq)
    return {
        "params": sum(x.numel() for x in tree.leaves(p)),
        "flops_per_token": flops,
        "flop_ratio": llama.flops_per_token(dense, seq) / flops,
        "perplexity": ev["perplexity"],
        "bits_per_byte": ev["bits_per_byte"],
    }


def speed(
    dense: Any, p: Any, state: Any, test: torch.Tensor, seq: int, batches: Sequence[int], reps: int
) -> dict[str, dict[str, float]]:
    """``{"batch<n>": {dense_ms, ms, dense_tokens_per_s, tokens_per_s, speedup}}``: eager forward passes
    of ``p`` and ``dense`` over ``n`` held-out windows, timed in alternation (:func:`latency`)."""
    out = {}
    for n in batches:
        x = test[: n * seq].reshape(n, seq)
        with torch.no_grad():
            run = partial(llama.apply, state=state, x=x, train=False)
            t = latency({"dense": partial(run, dense), "form": partial(run, p)}, reps)
        out[f"batch{n}"] = {
            "dense_ms": 1e3 * t["dense"],
            "ms": 1e3 * t["form"],
            "dense_tokens_per_s": n * seq / t["dense"],
            "tokens_per_s": n * seq / t["form"],
            "speedup": t["dense"] / t["form"],
        }
    return out


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
    stats = calibration_stats(params, state, calib)
    n_blocks = len(llama.block_names(params))
    all_forms = {"dense": {"params": params}, **forms(params, state, stats, args.sparsity)}

    # does BI pick the block whose removal hurts least? perplexity with each single block dropped
    each_block = [
        evaluate(llama.drop_blocks(params, [i]), state, test, seq)["perplexity"] for i in range(n_blocks)
    ]
    print("block influence:", [round(v, 4) for v in stats.block_influence.tolist()])
    print("perplexity with block i dropped:", [round(v, 3) for v in each_block])

    rows = []
    for name, form in all_forms.items():
        p = form["params"]
        row = {"form": name, "removed": form.get("removed", ""), **measure(params, p, state, test, seq)}
        row.update(speed(params, p, state, test, seq, args.batch, args.reps))
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
