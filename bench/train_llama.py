"""Train the shipped LLaMA-style model (``models/llama.py``) on Python's pydoc topics, byte level.

Corpus: ``pydoc_data.topics.topics`` (shipped with CPython; the same text as ``pure-prune``'s
``text`` data), its values joined in sorted key order and encoded as UTF-8 bytes (vocab 256; about
466 KB for Python 3.11). Split by position as ``pure_prune.app.data.text_corpus``: train = the first
90%, valid = the next 5%, test = the last 5%. The corpus SHA-256 is recorded, because the text
changes with the Python version.

Training: random windows of ``seq_len + 1`` bytes from the train split (drawn from a fixed key),
AdamW with linear warm-up and a cosine decay, ``steps`` updates, one thread by default. Held-out
figures: mean next-byte cross-entropy over non-overlapping ``seq_len`` windows of each split, as
perplexity and bits per byte.

Writes ``models/weights/llama_<name>.safetensors`` and ``llama_<name>.json`` (config, corpus,
split, training settings, held-out perplexity) through temporary files renamed into place, so a
killed run leaves nothing half written; prints the SHA-256 to record in ``llama.PRETRAINED``.

    OMP_NUM_THREADS=1 python bench/train_llama.py --steps 1500
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import grad_and_value

from pure_prune import optim, rng, tree
from pure_prune.models import llama

ROOT = Path(__file__).resolve().parent.parent


def corpus() -> tuple[bytes, dict[str, torch.Tensor]]:
    """The pydoc-topics bytes and their ``{"train", "valid", "test"}`` int64 id streams."""
    from pydoc_data.topics import topics

    data = "".join(topics[k] for k in sorted(topics)).encode("utf-8")
    ids = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int64)
    n = len(ids)
    n_train, n_valid = n * 9 // 10, n // 20
    return data, {
        "train": ids[:n_train],
        "valid": ids[n_train : n_train + n_valid],
        "test": ids[n_train + n_valid :],
    }


def loss_fn(params, state, x, y):
    logits, _ = llama.apply(params, state, x, train=True)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def evaluate(params, state, ids: torch.Tensor, seq_len: int, batch: int = 64) -> dict[str, float]:
    """Mean next-byte cross-entropy (nats) over the non-overlapping ``seq_len`` windows of ``ids``."""
    n = (len(ids) - 1) // seq_len
    x = ids[: n * seq_len].reshape(n, seq_len)
    y = ids[1 : n * seq_len + 1].reshape(n, seq_len)
    total = 0.0
    with torch.no_grad():
        for i in range(0, n, batch):
            logits, _ = llama.apply(params, state, x[i : i + batch], train=False)
            total += float(
                F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), y[i : i + batch].reshape(-1), reduction="sum"
                )
            )
    nll = total / (n * seq_len)
    return {
        "nll": nll,
        "perplexity": math.exp(nll),
        "bits_per_byte": nll / math.log(2),
        "tokens": n * seq_len,
    }


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--name", default="pydoc")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--key", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compile", action="store_true", help="torch.compile the train step")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "models" / "weights")
    for k, v in {"dim": 128, "n_layers": 4, "n_heads": 4, "n_kv_heads": 2, "ffn": 384}.items():
        ap.add_argument(f"--{k.replace('_', '-')}", type=int, default=v)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    config = {"vocab": 256, "dim": args.dim, "n_layers": args.n_layers, "n_heads": args.n_heads,
              "n_kv_heads": args.n_kv_heads, "ffn": args.ffn, "context": args.seq_len,
              "rope_theta": 10000.0, "tie_weights": True}  # fmt: skip
    raw, splits = corpus()
    k_init, k_data = rng.split(args.key, 2)
    params, state = llama.init(k_init, **config)
    n_params = sum(p.numel() for p in tree.leaves(params))
    print(f"corpus {len(raw)} bytes: " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    print(f"model {config}: {n_params} params")

    schedule = optim.warmup(optim.cosine(args.lr, args.steps, final=args.lr * 0.1), args.warmup)
    opt = optim.adamw(schedule, betas=(0.9, 0.95), weight_decay=args.weight_decay)
    opt_state = opt.init(params)

    def step(params, opt_state, x, y):
        grads, loss = grad_and_value(loss_fn)(params, state, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optim.apply_updates(params, updates), opt_state, loss

    if args.compile:
        step = torch.compile(step)
    train = splits["train"]
    starts = torch.randint(
        0, len(train) - args.seq_len - 1, (args.steps, args.batch_size), generator=rng.generator(k_data)
    )
    offsets = torch.arange(args.seq_len + 1)
    t0 = time.perf_counter()
    running = None
    for i in range(args.steps):
        window = train[starts[i][:, None] + offsets]
        params, opt_state, loss = step(params, opt_state, window[:, :-1], window[:, 1:])
        running = float(loss) if running is None else 0.98 * running + 0.02 * float(loss)
        if (i + 1) % 100 == 0 or i == 0:
            el = time.perf_counter() - t0
            tps = (i + 1) * args.batch_size * args.seq_len / el
            print(f"step {i + 1}/{args.steps} loss {running:.4f} ({running / math.log(2):.3f} bits/byte) "
                  f"{el:.0f} s, {tps:.0f} tokens/s", flush=True)  # fmt: skip
    train_seconds = time.perf_counter() - t0
    params = tree.map(lambda p: p.detach().contiguous(), params)

    heldout = {k: evaluate(params, state, splits[k], args.seq_len) for k in ("valid", "test")}
    for k, v in heldout.items():
        print(
            f"{k}: perplexity {v['perplexity']:.3f}, {v['bits_per_byte']:.4f} bits/byte over {v['tokens']} bytes"
        )

    from safetensors.torch import save

    blob = save(dict(zip(tree.paths(params), tree.leaves(params))))
    sha = hashlib.sha256(blob).hexdigest()
    record = {
        "model": config,
        "params": n_params,
        "corpus": {
            "source": "pydoc_data.topics.topics values joined in sorted key order, UTF-8 bytes",
            "python": sys.version.split()[0],
            "bytes": len(raw),
            "sha256": hashlib.sha256(raw).hexdigest(),
            "split": "by position: train first 90%, valid next 5%, test last 5% (as pure_prune.app.data.text_corpus)",
            "tokens": {k: len(v) for k, v in splits.items()},
        },
        "training": {
            "steps": args.steps,
            "batch_size": args.batch_size,
            "seq_len": args.seq_len,
            "lr": args.lr,
            "schedule": f"linear warm-up {args.warmup} steps, cosine to 0.1 lr",
            "optimizer": "adamw betas (0.9, 0.95)",
            "weight_decay": args.weight_decay,
            "key": args.key,
            "threads": args.threads,
            "compiled": args.compile,
            "seconds": round(train_seconds, 1),
            "torch": torch.__version__,
        },  # fmt: skip
        "heldout": heldout,
        "weights_sha256": sha,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    weights = args.out_dir / f"llama_{args.name}.safetensors"
    write_atomic(weights, blob)
    write_atomic(args.out_dir / f"llama_{args.name}.json", (json.dumps(record, indent=2) + "\n").encode())
    print(f"wrote {weights} ({len(blob)} bytes), sha256 {sha}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
