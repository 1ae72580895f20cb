"""The calibration engine of one-shot LLM pruning: block by block over calibration sequences.

The sequential scheme of SparseGPT (Frantar & Alistarh, 2023) and Wanda (Sun et al., 2024):

1. the calibration sequences ``(N, T)`` are embedded once, ``h⁰ = embed(tokens)``, and kept as
   micro-batches on ``storage`` (the CPU by default; ``N·T·D`` floats);
2. for each block ``b`` in order, its parameters (alone) go to ``device``; the block runs on every
   micro-batch of ``hᵇ`` — the outputs of the *already-pruned* blocks before it — and the input
   statistics of each of its linear layers (:mod:`pure_prune.llm.stats`: ``Σ x_j²`` and, for the
   methods that need it, ``X Xᵀ``) are summed micro-batch by micro-batch, so no activation is
   kept beyond one micro-batch;
3. under ``torch.distributed`` the sequences are sharded over ranks (``tokens[rank::world]``) and
   the statistics all-reduced (sums), so every rank computes the same weights and masks;
4. the method prunes each linear of the block from those statistics (:class:`Method`), and the
   pruned block computes ``hᵇ⁺¹`` for the next one. With ``BlockModel.stages`` the linears of a
   block are pruned stage by stage, each on the inputs produced by the already-pruned stages.

Peak memory: the model's parameters where they live, plus ``2·N·T·D`` stored activations (``hᵇ``
and ``hᵇ⁺¹``), one block on ``device``, one micro-batch's activations inside a block, and the
statistics of one block's linears (``Σ in²`` over its distinct inputs for ``X Xᵀ``, in
``stats_dtype``). ``bench/llm_calibration_cost.py`` measures it.

Pure: nothing is modified in place and nothing is written; the returned
:class:`CalibrationResult` holds new parameters (sharing every untouched tensor), masks and a
record of the settings. Bad input (tokens, patterns that do not fit a layer, a Hessian that
cannot be factorised without dampening on too few tokens) raises before any block runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from pure_prune import rng, tree
from pure_prune.llm import stats as st
from pure_prune.llm.blocks import BlockModel, replace, subtree
from pure_prune.llm.pattern import Pattern, parse

__all__ = ["CalibrationResult", "Method", "collect", "prune", "rank_world", "sample_windows"]

Params = Any
Progress = Callable[[int, int, str], None]
NEEDS = ("none", "norms", "gram")


@dataclass(frozen=True)
class Method:
    """A one-shot method as the engine calls it, layer by layer.

    ``prune_layer(weight, stats, pattern, path) -> (new_weight, keep)``: ``weight`` ``(out, in)``;
    ``stats`` the layer's :class:`~pure_prune.llm.stats.LayerStats` (``None`` when ``needs`` is
    ``"none"``); returns the new weight (same shape, zero where pruned) and the bool keep mask.
    ``needs``: ``"none"``, ``"norms"`` (``Σ x_j²``) or ``"gram"`` (also ``X Xᵀ``).
    ``check(path, shape, pattern, n_tokens)``: optional, raises on input the method cannot take,
    before any work. ``settings``: plain-JSON hyperparameters, recorded with the result.
    """

    name: str
    needs: str
    prune_layer: Callable[
        [torch.Tensor, st.LayerStats | None, Pattern, str], tuple[torch.Tensor, torch.Tensor]
    ]
    check: Callable[[str, tuple[int, ...], Pattern, int], None] | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CalibrationResult:
    """``params``: the pruned parameters (the input tree's structure). ``masks``: bool keep masks at
    the pruned linear weights, ``None`` elsewhere. ``record``: plain JSON — method and settings,
    patterns per block, calibration sizes, world size, per-layer achieved sparsity and (with
    ``errors=True``) reconstruction error ``‖W X − W' X‖_F``, seconds, CUDA peak bytes."""

    params: Params
    masks: Any
    record: dict


def rank_world() -> tuple[int, int]:
    """``(rank, world)`` of the default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def sample_windows(ids: torch.Tensor, n: int, seq_len: int, key: int) -> torch.Tensor:
    """``n`` random windows of ``seq_len`` tokens of the 1-D token stream ``ids``: ``(n, seq_len)``.

    Start offsets are uniform over ``[0, len(ids) - seq_len]``, drawn from ``key`` (as the
    reference implementations draw their calibration sequences from a training text).
    """
    key = rng.check_key(key)
    if not isinstance(ids, torch.Tensor) or ids.ndim != 1 or ids.dtype != torch.int64:
        raise TypeError(f"ids must be a 1-D int64 tensor of token ids, got {getattr(ids, 'shape', ids)!r}")
    for name, v in (("n", n), ("seq_len", seq_len)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if seq_len > ids.numel():
        raise ValueError(f"seq_len={seq_len} is longer than the token stream ({ids.numel()} tokens)")
    starts = torch.randint(0, ids.numel() - seq_len + 1, (n,), generator=rng.generator(key))
    return torch.stack([ids[s : s + seq_len] for s in starts.tolist()])


# ----------------------------------------------------------------------------------------- checks
def _check_tokens(tokens: torch.Tensor) -> None:
    if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.int64 or tokens.ndim != 2:
        what = (
            f"{tokens.dtype} of shape {tuple(tokens.shape)}" if isinstance(tokens, torch.Tensor) else tokens
        )
        raise TypeError(f"calibration tokens must be an int64 tensor (N, T), got {what!r}")
    if tokens.numel() == 0:
        raise ValueError(f"no calibration tokens: shape {tuple(tokens.shape)}")


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


def _patterns(pattern: Any, n_blocks: int) -> list[Pattern]:
    if isinstance(pattern, Sequence) and not isinstance(pattern, str):
        if len(pattern) != n_blocks:
            raise ValueError(f"{len(pattern)} patterns given for {n_blocks} blocks")
        return [parse(p) for p in pattern]
    return [parse(pattern)] * n_blocks


def _linear_weights(model: BlockModel, params: Params, paths: Sequence[str]) -> dict[str, torch.Tensor]:
    """``{full weight path: weight}`` of every linear of every block; errors name the path."""
    out = {}
    for path in paths:
        block = subtree(params, path)
        for name, (wpath, _tap) in model.linears.items():
            full = f"{path}.{wpath}"
            try:
                w = subtree(block, wpath)
            except KeyError:
                raise ValueError(f"linear {name!r}: no weight {full!r} in the params") from None
            if not isinstance(w, torch.Tensor) or not w.is_floating_point() or w.ndim != 2:
                what = f"{w.dtype} {tuple(w.shape)}" if isinstance(w, torch.Tensor) else type(w).__name__
                raise TypeError(f"linear weight {full!r} must be a 2-D float tensor (out, in), got {what}")
            out[full] = w
    return out


# ----------------------------------------------------------------------------------------- engine
def _to(block: Params, device: torch.device | None) -> Params:
    if device is None:
        return block
    return tree.map(lambda x: x.to(device) if isinstance(x, torch.Tensor) else x, block)


def _run(
    model: BlockModel,
    params: Params,
    tokens: torch.Tensor,
    *,
    needs: str,
    on_stage: Callable[[int, str, tuple[str, ...], Params, dict[str, st.LayerStats] | None], Params],
    batch_size: int,
    device: torch.device | None,
    storage: torch.device | str,
    stats_dtype: torch.dtype,
    progress: Progress | None,
) -> Params:
    rank, world = rank_world()
    shard = tokens[rank::world]
    paths = list(model.block_paths(params))
    stages = model.stage_list()
    total, done = len(paths) * len(stages), 0
    with torch.no_grad():
        # the embedding runs where the parameters are (on the CPU while blocks visit a GPU)
        emb_device = next(
            (x.device for x in tree.leaves(params) if isinstance(x, torch.Tensor)), tokens.device
        )
        hs = [
            model.embed(params, shard[i : i + batch_size].to(emb_device)).to(storage)
            for i in range(0, shard.shape[0], batch_size)
        ]
        for b, path in enumerate(paths):
            original = subtree(params, path)
            block = _to(original, device)
            for stage in stages:
                stats = None
                if needs != "none":
                    taps = {model.linears[name][1]: model.linears[name][0] for name in stage}
                    stats = {
                        tap: st.empty(
                            subtree(block, wpath).shape[1],
                            gram=needs == "gram",
                            dtype=stats_dtype,
                            device=subtree(block, wpath).device,
                        )
                        for tap, wpath in taps.items()
                    }
                    for h in hs:
                        _, caps = model.block(block, h.to(subtree(block, next(iter(taps.values()))).device))
                        for tap in taps:
                            if tap not in caps:
                                raise ValueError(
                                    f"block {path!r} returned no tap {tap!r} (has {sorted(caps)})"
                                )
                            stats[tap] = st.accumulate(stats[tap], caps[tap])
                        del caps
                    stats = {tap: st.all_reduce(s) for tap, s in stats.items()}
                block = on_stage(b, path, stage, block, stats)
                done += 1
                if progress is not None:
                    progress(done, total, f"{path} {'+'.join(stage)}")
            dev = next((x.device for x in tree.leaves(block) if isinstance(x, torch.Tensor)), None)
            hs = [model.block(block, h.to(dev))[0].to(storage) for h in hs]
            block = tree.map(
                lambda new, old: new.to(old.device) if isinstance(new, torch.Tensor) else new, block, original
            )
            params = replace(params, path, block)
    return params


def prune(
    model: BlockModel,
    params: Params,
    tokens: torch.Tensor,
    method: Method,
    pattern: float | str | Pattern | Sequence[float | str | Pattern],
    *,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    storage: torch.device | str = "cpu",
    stats_dtype: torch.dtype = torch.float64,
    errors: bool = False,
    progress: Progress | None = None,
    calibration: Mapping[str, Any] | None = None,
) -> CalibrationResult:
    """Prune every linear layer of every block of ``model`` with ``method``, sequentially.

    ``params``: the model's parameter tree (not modified). ``tokens``: calibration sequences
    ``(N, T)`` int64 (the same on every rank under ``torch.distributed``; each rank runs its
    shard). ``pattern``: one pattern for all blocks, or one per block (e.g. OWL's layer-wise
    sparsities). ``batch_size``: sequences per micro-batch. ``device``: where each block runs in
    turn (``None``: where its parameters are); ``storage``: where the activations between blocks
    wait. ``errors=True`` also gathers ``X Xᵀ`` for methods that do not need it and records every
    layer's reconstruction error. ``progress(done, total, label)`` is called after each stage.
    ``calibration``: plain-JSON settings of the caller (data, seed) copied into the record.

    Returns a :class:`CalibrationResult`.
    """
    if not isinstance(model, BlockModel):
        raise TypeError(f"model must be a BlockModel, got {type(model).__name__}")
    if not isinstance(method, Method) or method.needs not in NEEDS:
        raise TypeError(f"method must be a Method with needs in {NEEDS}, got {method!r}")
    _check_tokens(tokens)
    _check_batch_size(batch_size)
    stages = model.stage_list()
    paths = list(model.block_paths(params))
    if not paths:
        raise ValueError("the model has no blocks")
    patterns = _patterns(pattern, len(paths))
    weights = _linear_weights(model, params, paths)
    n_tokens = tokens.numel()
    for b, path in enumerate(paths):
        for wpath, _ in model.linears.values():
            full = f"{path}.{wpath}"
            patterns[b].check_fits(full, tuple(weights[full].shape))
            if method.check is not None:
                method.check(full, tuple(weights[full].shape), patterns[b], n_tokens)
    needs = "gram" if errors else method.needs
    device = torch.device(device) if device is not None else None

    masks: dict[str, torch.Tensor] = {}
    layers: list[dict] = []
    t0 = time.perf_counter()
    if device is not None and device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def on_stage(b, path, stage, block, stats):
        for name in stage:
            wpath, tap = model.linears[name]
            full = f"{path}.{wpath}"
            w = subtree(block, wpath)
            s = None if stats is None else stats[tap]
            new_w, keep = method.prune_layer(w, s, patterns[b], full)
            new_w = new_w.to(dtype=w.dtype, device=w.device)
            row = {"path": full, "pattern": str(patterns[b]), "sparsity": 1.0 - float(keep.float().mean())}
            if s is not None and s.gram is not None and errors:
                err = st.reconstruction_error(w, new_w, s.gram)
                dense = st.reconstruction_error(w, torch.zeros_like(w), s.gram)
                row.update(error=err, relative_error=err / dense if dense > 0 else 0.0)
            layers.append(row)
            masks[full] = keep.to("cpu") if device is not None else keep
            block = replace(block, wpath, new_w)
        return block

    new_params = _run(
        model, params, tokens, needs=needs, on_stage=on_stage, batch_size=batch_size, device=device,
        storage=storage, stats_dtype=stats_dtype, progress=progress,
    )  # fmt: skip
    mask_tree = tree.map_with_path(lambda p, x: masks.get(p), new_params)
    record = {
        "method": method.name,
        "settings": dict(method.settings),
        "patterns": [str(p) for p in patterns],
        "sequences": int(tokens.shape[0]),
        "seq_len": int(tokens.shape[1]),
        "tokens": int(n_tokens),
        "batch_size": batch_size,
        "world_size": rank_world()[1],
        "stats_dtype": str(stats_dtype).removeprefix("torch."),
        "stages": [list(s) for s in stages],
        "calibration": dict(calibration or {}),
        "layers": layers,
        "seconds": time.perf_counter() - t0,
    }
    if device is not None and device.type == "cuda":
        record["cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return CalibrationResult(new_params, mask_tree, record)


def collect(
    model: BlockModel,
    params: Params,
    tokens: torch.Tensor,
    *,
    gram: bool = False,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    storage: torch.device | str = "cpu",
    stats_dtype: torch.dtype = torch.float64,
    progress: Progress | None = None,
) -> list[dict[str, st.LayerStats]]:
    """The input statistics of every linear of the *dense* model, block by block.

    Runs the engine without pruning (each block on the dense outputs of the blocks before it).
    Returns one ``{linear name: LayerStats}`` per block, in run order, all-reduced over ranks;
    linears that share a tap share one statistics object. ``gram=True`` also sums ``X Xᵀ``.
    """
    if not isinstance(model, BlockModel):
        raise TypeError(f"model must be a BlockModel, got {type(model).__name__}")
    _check_tokens(tokens)
    _check_batch_size(batch_size)
    model.stage_list()
    paths = list(model.block_paths(params))
    _linear_weights(model, params, paths)
    out: list[dict[str, st.LayerStats]] = [{} for _ in paths]

    def on_stage(b, path, stage, block, stats):
        for name in stage:
            out[b][name] = stats[model.linears[name][1]]
        return block

    _run(
        model, params, tokens, needs="gram" if gram else "norms", on_stage=on_stage, batch_size=batch_size,
        device=None if device is None else torch.device(device), storage=storage, stats_dtype=stats_dtype,
        progress=progress,
    )  # fmt: skip
    return out
