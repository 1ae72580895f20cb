"""``pure-prune llm``: one-shot pruning of a language model and its held-out perplexity table.

    pure-prune llm --model shipped --method wanda --sparsity 0.5 --calib 32 --seeds 5
    pure-prune llm --model path/to/checkpoint --method sparsegpt --sparsity 2:4
    pure-prune llm --model shipped --method wanda --sparsity 0.7 --owl --out run.json

The model is the shipped LLaMA-style model (``--model shipped``: ``pure_prune.models.llama``,
byte level, trained by ``bench/train_llama.py`` on Python's pydoc topics) or a transformers
LLaMA/Qwen2/OPT checkpoint folder on this machine (nothing is downloaded; the folder must hold the
checkpoint's tokenizer). The text is the pydoc topics (as UTF-8 bytes for the shipped model, the
checkpoint's tokenizer otherwise), split by position: train = the first 90%, valid = the next 5%,
test = the last 5%. Calibration: ``--calib`` random windows of ``--seqlen`` tokens from the train
split, one draw per seed (keys ``0 .. seeds-1``); the pruning runs block by block through
:func:`pure_prune.llm.calibrate.prune` (or :func:`pure_prune.llm.owl.prune` with ``--owl``) on
every linear layer of every block. The table: held-out perplexity of the test split (non-overlapping
windows, :mod:`pure_prune.llm.perplexity`), dense and pruned (mean ± std over the seeds).

Bad input (an unknown method, a pattern that does not fit a layer, a checkpoint whose shapes do not
fit its config, a folder without tokenizer, sequences longer than the context, too few tokens for
SparseGPT's Hessian without dampening, ...) is refused with one line and exit status 2 before any
pruning runs; ``--out`` is written atomically once everything has run.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from pure_prune import tree
from pure_prune.app import checkpoint, extras
from pure_prune.app.cli_choices import LLM_METHODS
from pure_prune.app.cli_llm_parser import DEFAULT_SEQLEN, add_parser
from pure_prune.app.machine import cpu_name
from pure_prune.llm import blocks, calibrate, magnitude, owl, perplexity, sparsegpt, wanda
from pure_prune.llm.blocks import subtree
from pure_prune.llm.pattern import parse

__all__ = ["DTYPES", "METHODS", "add_parser", "run"]

METHODS = LLM_METHODS
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""``--dtype`` names (:data:`pure_prune.app.cli_choices.LLM_DTYPES`) to torch dtypes."""


class UsageError(ValueError):
    """A flag value the command cannot take (reported in one line, exit status 2)."""


# ------------------------------------------------------------------------------------------ checks
def _check_args(args: argparse.Namespace) -> None:
    """Every flag checked before anything is loaded; :class:`UsageError` names flag and value."""
    if args.method not in METHODS:
        raise UsageError(f"--method must be one of {', '.join(METHODS)}, got {args.method!r}")
    try:
        pattern = parse(args.sparsity)
    except (TypeError, ValueError) as e:
        raise UsageError(f"--sparsity {args.sparsity!r}: {e}") from None
    if args.owl and pattern.is_nm:
        raise UsageError(f"--owl allocates unstructured sparsities; --sparsity {args.sparsity!r} is N:M")
    for flag, value in (("calib", args.calib), ("seeds", args.seeds), ("batch-size", args.batch_size)):
        if value < 1:
            raise UsageError(f"--{flag} must be at least 1, got {value}")
    for flag, value in (
        ("seqlen", args.seqlen),
        ("eval-tokens", args.eval_tokens),
        ("threads", args.threads),
    ):
        if value is not None and value < 1:
            raise UsageError(f"--{flag} must be at least 1, got {value}")
    if not (math.isfinite(args.damp) and args.damp >= 0):
        raise UsageError(f"--damp must be a number >= 0, got {args.damp}")
    if not (math.isfinite(args.owl_m) and args.owl_m > 0):
        raise UsageError(f"--owl-m must be a number > 0, got {args.owl_m}")
    if not (math.isfinite(args.owl_lam) and args.owl_lam >= 0):
        raise UsageError(f"--owl-lam must be a number >= 0, got {args.owl_lam}")
    if args.dtype not in DTYPES:
        raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}, got {args.dtype!r}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise UsageError(f"--device {args.device!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: CUDA is not available on this machine")
    if args.out is not None and Path(args.out).is_dir():
        raise UsageError(f"--out {args.out} is a folder; give a file name for the JSON record")


def _method(args: argparse.Namespace) -> calibrate.Method:
    if args.method == "sparsegpt":
        return sparsegpt.method(damp=args.damp)
    return {"magnitude": magnitude.METHOD, "wanda": wanda.METHOD}[args.method]


def _check_fits(
    bm: blocks.BlockModel, params: Any, pattern: str, method: calibrate.Method, n_tokens: int
) -> None:
    """The pattern and the method's own checks on every linear, before the dense evaluation runs."""
    pat = parse(pattern)
    for path in bm.block_paths(params):
        for wpath, _ in bm.linears.values():
            full = f"{path}.{wpath}"
            shape = tuple(subtree(params, full).shape)
            pat.check_fits(full, shape)
            if method.check is not None:
                method.check(full, shape, pat, n_tokens)


# ------------------------------------------------------------------------------------------- data
def _pydoc_text() -> str:
    from pydoc_data.topics import topics

    return "".join(topics[k] for k in sorted(topics))


def _split(ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Train = first 90%, valid = next 5%, test = the rest (by position)."""
    n = ids.numel()
    n_train, n_valid = n * 9 // 10, n // 20
    return {
        "train": ids[:n_train],
        "valid": ids[n_train : n_train + n_valid],
        "test": ids[n_train + n_valid :],
    }


def _shipped(args: argparse.Namespace) -> dict[str, Any]:
    import hashlib

    from pure_prune.models import llama

    params, state, info = llama.load_pretrained()
    text = _pydoc_text().encode("utf-8")
    ids = torch.frombuffer(bytearray(text), dtype=torch.uint8).to(torch.int64)
    notes = []
    if hashlib.sha256(text).hexdigest() != info["corpus"]["sha256"]:
        notes.append(
            f"note: this Python's pydoc text differs from the one the model was trained on (Python "
            f"{info['corpus']['python']}); the held-out split may overlap its training text"
        )
    cfg = info["model"]
    return {
        "label": f"shipped llama 'pydoc' ({cfg['dim']} wide, {cfg['n_layers']} blocks, {info['params']:,} params, byte level)",
        "context": int(cfg["context"]),
        "block_model": lambda sequential: (blocks.from_llama(llama, state, sequential=sequential), params),
        "splits": _split(ids),
        "unit": "byte",
        "notes": notes,
        "config": cfg,
    }


def _transformers():
    transformers = extras.require("transformers", "--model <checkpoint folder>")
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def _checkpoint_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """``{tensor name: shape}`` of the weights in ``folder`` (safetensors, single or sharded, or a
    PyTorch ``.bin``), read from the file headers (safetensors) or a memory map, not into memory."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()})
    elif (folder / "model.safetensors").is_file():
        files = [folder / "model.safetensors"]
    elif (folder / "pytorch_model.bin").is_file():
        sd = torch.load(folder / "pytorch_model.bin", map_location="cpu", mmap=True, weights_only=True)
        return {k: tuple(v.shape) for k, v in sd.items()}
    else:
        raise ValueError(f"{folder} holds no weights (model.safetensors, its index, or pytorch_model.bin)")
    shapes = {}
    for f in files:
        if not f.is_file():
            raise ValueError(f"{f} is listed in {index.name} but missing")
        with safe_open(str(f), framework="pt") as h:
            for k in h.keys():
                shapes[k] = tuple(h.get_slice(k).get_shape())
    return shapes


def _hf(args: argparse.Namespace) -> dict[str, Any]:
    from pure_prune.llm import hf

    folder = Path(args.model)
    if not folder.is_dir():
        raise UsageError(
            f"--model must be 'shipped' or a local checkpoint folder; {args.model!r} is not a folder"
        )
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder} has no config.json: not a transformers checkpoint folder")
    tf = _transformers()
    try:
        config = tf.AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{folder}/config.json cannot be read: {str(e).splitlines()[0]}") from None
    if config.model_type not in hf.FAMILIES:
        raise ValueError(
            f"{folder}: model_type {config.model_type!r} is not supported; supported: {', '.join(hf.FAMILIES)}"
        )
    try:
        tokenizer = tf.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(
            f"{folder} holds no tokenizer ({first}); the held-out text must be tokenised with the "
            "checkpoint's own tokenizer: save it there with tokenizer.save_pretrained(folder)"
        ) from None
    with torch.device("meta"):
        skeleton = tf.AutoModelForCausalLM.from_config(config)
    found = _checkpoint_shapes(folder)
    prefix = f"{skeleton.base_model_prefix}."
    problems = []
    for name, p in skeleton.named_parameters():
        key = name if name in found else name.removeprefix(prefix)
        if key not in found:
            problems.append(f"missing {name} {tuple(p.shape)}")
        elif found[key] != tuple(p.shape):
            problems.append(f"{name} has shape {found[key]}, config needs {tuple(p.shape)}")
    if problems:
        raise ValueError(
            f"{folder}: the checkpoint does not fit its config.json ({len(problems)} tensors): "
            + "; ".join(problems[:6])
        )
    model = tf.AutoModelForCausalLM.from_pretrained(
        folder, local_files_only=True, dtype=DTYPES[args.dtype], use_kernels=False
    ).eval()
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.tensor(tokenizer(_pydoc_text(), add_special_tokens=False)["input_ids"], dtype=torch.int64)
    if ids.numel() and int(ids.max()) >= vocab:
        raise ValueError(
            f"{folder}: the tokenizer gives token id {int(ids.max())}, but the model's embedding has {vocab} rows"
        )
    return {
        "label": f"{type(model).__name__} from {folder} ({sum(p.numel() for p in model.parameters()):,} params, "
        f"{type(tokenizer).__name__})",
        "context": hf.context(model),
        "block_model": lambda sequential: hf.block_model(model, sequential=sequential),
        "splits": _split(ids),
        "unit": "token",
        "notes": [],
        "config": {"model_type": config.model_type, "class": type(model).__name__, "dtype": args.dtype},
    }


# -------------------------------------------------------------------------------------------- run
def _progress(label: str):
    def show(done: int, total: int, what: str) -> None:
        end = "\n" if done == total else ""
        print(f"\r  {label}: {done}/{total} {what.split()[0]:<24}", end=end, file=sys.stderr, flush=True)

    return show


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def run(args: argparse.Namespace) -> int:
    """Run ``pure-prune llm`` with parsed ``args``; returns the exit status (errors propagate as
    ``ValueError``/``TypeError``/``MissingExtraError`` for the caller to print in one line)."""
    _check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    loaded = _shipped(args) if args.model == "shipped" else _hf(args)
    seqlen = args.seqlen if args.seqlen is not None else min(DEFAULT_SEQLEN, loaded["context"])
    if seqlen > loaded["context"]:
        raise UsageError(
            f"--seqlen {seqlen} is longer than the model's context of {loaded['context']} tokens"
        )
    splits = loaded["splits"]
    if seqlen >= splits["train"].numel() or seqlen >= splits["test"].numel():
        raise UsageError(
            f"--seqlen {seqlen} does not fit the text: train split {splits['train'].numel()}, "
            f"test split {splits['test'].numel()} tokens"
        )
    bm, params = loaded["block_model"](args.sequential)
    method = _method(args)
    _check_fits(bm, params, args.sparsity, method, args.calib * seqlen)
    data_free = args.method == "magnitude" and not args.owl
    seeds = [0] if data_free else list(range(args.seeds))
    machine = f"{cpu_name()}, {torch.get_num_threads()} threads"
    if device.type == "cuda":
        machine += f", {torch.cuda.get_device_name(device)}"

    def evaluate(p: Any) -> dict[str, float]:
        on_device = tree.map(lambda x: x.to(device) if isinstance(x, torch.Tensor) else x, p)
        return perplexity.perplexity(
            lambda x: bm.forward(on_device, x), splits["test"], seqlen, batch_size=args.batch_size,
            max_tokens=args.eval_tokens, device=device,
        )  # fmt: skip

    t0 = time.perf_counter()
    dense = evaluate(params)
    dense["seconds"] = time.perf_counter() - t0
    pat = parse(args.sparsity)
    label = f"{'owl+' if args.owl else ''}{args.method} {pat if pat.is_nm else f'{100 * pat.sparsity:g}%'}"
    runs = []
    for seed in seeds:
        calib = calibrate.sample_windows(splits["train"], args.calib, seqlen, key=seed)
        opts = {
            "batch_size": args.batch_size,
            "device": None if device.type == "cpu" else device,
            "calibration": {"data": "pydoc topics, train split", "key": seed, "sequences": args.calib,
                            "seq_len": seqlen},
            "progress": None if args.no_progress else _progress(f"{label} seed {seed}"),
        }  # fmt: skip
        t = time.perf_counter()
        if args.owl:
            res = owl.prune(bm, params, calib, method, float(parse(args.sparsity).sparsity),
                            m=args.owl_m, lam=args.owl_lam, **opts)  # fmt: skip
        else:
            res = calibrate.prune(bm, params, calib, method, args.sparsity, **opts)
        seconds = time.perf_counter() - t
        masks = [m for m in tree.leaves(res.masks) if m is not None]
        pruned = sum(int((~m).sum()) for m in masks) / sum(m.numel() for m in masks)
        runs.append({"seed": seed, **evaluate(res.params), "sparsity": pruned, "seconds": seconds,
                     "record": res.record})  # fmt: skip

    ppl_mean, ppl_std = _mean_std([r["perplexity"] for r in runs])
    bits_mean, bits_std = _mean_std([r["bits_per_token"] for r in runs])
    secs = statistics.fmean(r["seconds"] for r in runs)
    spread = (lambda m, s, f: f"{m:{f}} ± {s:{f}}") if len(runs) > 1 else (lambda m, s, f: f"{m:{f}}")
    unit = loaded["unit"]
    rows = [
        ["dense", f"{dense['perplexity']:.3f}", f"{dense['bits_per_token']:.4f}", "0.0%", ""],
        [label, spread(ppl_mean, ppl_std, ".3f"), spread(bits_mean, bits_std, ".4f"),
         f"{100 * statistics.fmean(r['sparsity'] for r in runs):.1f}%", f"{secs:.1f}"],
    ]  # fmt: skip
    headers = ["model", "held-out perplexity", f"bits/{unit}", "linear weights pruned", "pruning s/seed"]
    calib_text = (
        "no calibration data (magnitude)"
        if data_free
        else f"{args.calib} x {seqlen} {unit}s of the train split per seed, {len(seeds)} seed(s) (keys 0..{len(seeds) - 1})"
    )
    print(f"pure-prune llm: {loaded['label']}")
    print(
        f"pruning: {label} of every linear of every block{' (sequential stages)' if args.sequential else ''}; {calib_text}"
    )
    print(
        f"held-out: test split of the pydoc topics, {dense['tokens']:,} {unit}s in windows of {seqlen}; machine: {machine}"
    )
    for note in loaded["notes"]:
        print(note)
    print()
    print(_table(rows, headers))
    if len(runs) > 1:
        print(f"\nmean ± std over {len(runs)} calibration seeds")
    if args.out is not None:
        payload = {
            "command": "llm",
            "args": {k: v for k, v in vars(args).items() if k != "func"},
            "model": loaded["label"],
            "config": loaded["config"],
            "machine": machine,
            "seq_len": seqlen,
            "dense": dense,
            "summary": {
                "method": label,
                "perplexity_mean": ppl_mean,
                "perplexity_std": ppl_std,
                "seeds": len(runs),
            },
            "runs": runs,
        }
        print(f"wrote {checkpoint.save_json_atomic(args.out, payload)}")
    return 0
