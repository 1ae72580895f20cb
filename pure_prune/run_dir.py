"""A run's save directory: ``run.json``, the round checkpoints, ``rounds.jsonl`` and ``summary.csv``.

================================  ===================================================================
``run.json``                      the resolved config, its hash, the model's input shape (written once)
``checkpoints/round_NNNN.safetensors``  after every round (``pure_prune.checkpoint``: atomic, hashed):
                                  params, state, opt_state, masks, rewind weights, method extras;
                                  metadata: round index, rng position, config hash, metrics so far
``rounds.jsonl``                  one line of metrics per round (derived from the last checkpoint)
``summary.csv``                   the same, one row per round, flat columns
``run.log``                       the log lines (also printed)
================================  ===================================================================

Refusals (``ValueError`` before anything is written, :func:`_prepare`): a save directory that holds
another run (different config hash; the differing knobs are named), one that holds this run without
``resume`` (its results are never overwritten), a non-empty directory without ``run.json``, and (on
resume, :func:`_load`) a corrupt or truncated checkpoint. (Runs saved by versions that ran the seeds
of ``rsst``, ``refill``, ``distill`` and ``dst`` one after another, in ``<save_dir>/seed_<k>/``,
are refused with a message naming those directories: each is a single-seed run of its own.)
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import torch

from pure_prune import checkpoint
from pure_prune.algorithms.base import Carry
from pure_prune.experiment import Experiment
from pure_prune.run_rows import _SUMMARY_COLUMNS
from pure_prune.runconfig import NOT_HASHED, RunConfig

__all__ = ["FORMAT"]

FORMAT = "pure_prune.run/1"
_CKPT_DIR = "checkpoints"
_CKPT = re.compile(r"^round_(\d{4,})\.safetensors$")


def _differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    keys = sorted((set(a) | set(b)) - set(NOT_HASHED))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


def _checkpoints(save: Path) -> dict[int, Path]:
    folder = save / _CKPT_DIR
    if not folder.is_dir():
        return {}
    found = {}
    for p in folder.iterdir():
        m = _CKPT.match(p.name)
        if m and p.is_file():
            found[int(m.group(1))] = p
    return found


def _prepare(save: Path, cfg: RunConfig, digest: str, resume: bool, total: int) -> None:
    info = save / "run.json"
    if info.is_file():
        try:
            stored = json.loads(info.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{str(info)!r} is not valid JSON ({e}); this directory's run cannot be identified"
            ) from e
        if stored.get("config_hash") != digest:
            diff = _differences(stored.get("config", {}), cfg.to_json())
            raise ValueError(
                f"save dir {str(save)!r} holds another run (config hash {str(stored.get('config_hash'))[:12]} != "
                f"{digest[:12]}; differing: {'; '.join(diff) or 'format'}); choose another --save-dir"
            )
        seeds = stored.get("seeds") or {}
        if seeds.get("mode") == "sequential":
            dirs = ", ".join(str(save / d) for d in seeds.get("dirs", []))
            raise ValueError(
                f"save dir {str(save)!r} holds a run whose seeds ran one after another, each a single-seed "
                f"run in its own directory ({dirs}); resume those one by one with --save-dir, or choose "
                "another --save-dir to run the seeds as one vmapped program"
            )
        if not resume:
            done = max(_checkpoints(save), default=-1) + 1
            state = "finished" if done >= total else f"unfinished ({done}/{total} rounds)"
            raise ValueError(
                f"save dir {str(save)!r} already holds this run, {state}; pass --resume to continue it, or "
                "choose another --save-dir (results are never overwritten)"
            )
        return
    if save.exists() and (not save.is_dir() or any(save.iterdir())):
        raise ValueError(
            f"save dir {str(save)!r} exists and holds no pure-prune run; choose another --save-dir"
        )


def _write_info(save: Path, cfg: RunConfig, digest: str, extra: dict[str, Any], total: int) -> None:
    """``run.json``: format, config, hash, round count, torch version and ``extra`` (the model's input
    shape and dtype; for several seeds, ``seeds = {"keys", "mode", "dirs"}``)."""
    checkpoint.save_json_atomic(
        save / "run.json",
        {
            "format": FORMAT,
            "config": cfg.to_json(),
            "config_hash": digest,
            "rounds": total,
            **extra,
            "torch": torch.__version__,
        },
    )


def _model_info(exp: Experiment) -> dict[str, Any]:
    return {
        "input_shape": list(exp.model.input_shape),
        "input_dtype": str(exp.model.input_dtype).removeprefix("torch."),
    }


def _load(path: Path, digest: str, r: int) -> tuple[Carry, dict[str, Any]]:
    try:
        trees, meta = checkpoint.load(path)
    except checkpoint.CorruptCheckpointError as e:
        raise ValueError(
            f"cannot resume: {e}. Delete {path.name} to resume from the round before it, or start a new --save-dir"
        ) from e
    if meta.get("format") != FORMAT or meta.get("config_hash") != digest or meta.get("round") != r:
        raise ValueError(
            f"cannot resume: checkpoint {str(path)!r} belongs to another run or round "
            f"(format {meta.get('format')!r}, round {meta.get('round')!r}, hash {str(meta.get('config_hash'))[:12]})"
        )
    missing = [k for k in ("params", "state", "opt_state", "masks", "rewind", "extra") if k not in trees]
    if missing:
        raise ValueError(f"cannot resume: checkpoint {str(path)!r} lacks the trees {missing}")
    carry = Carry(
        trees["params"], trees["state"], trees["opt_state"], trees["masks"], trees["rewind"], trees["extra"]
    )
    return carry, meta


def _save(
    save: Path, r: int, total: int, carry: Carry, digest: str, cfg: RunConfig, rounds: list[dict]
) -> None:
    trees = {
        "params": carry.params,
        "state": carry.state,
        "opt_state": carry.opt_state,
        "masks": carry.masks,
        "rewind": carry.rewind,
        "extra": carry.extra or {},
    }
    position: dict[str, Any] = {"seed": cfg.seed, "next_round": r + 1}
    if cfg.seeds > 1:
        position["keys"] = cfg.seed_keys()
    meta = {
        "format": FORMAT,
        "config_hash": digest,
        "round": r,
        "rounds": total,
        "rng": position,
        "metrics": rounds,
    }
    checkpoint.save(save / _CKPT_DIR / f"round_{r:04d}.safetensors", trees, meta)


def _write_tables(
    save: Path, rounds: list[dict[str, Any]], columns: tuple[str, ...] = _SUMMARY_COLUMNS
) -> None:
    """``rounds.jsonl`` and ``summary.csv`` (``columns``) from the metrics (rewritten whole: they are derived)."""
    (save / "rounds.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rounds))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rounds)
    (save / "summary.csv").write_text(buf.getvalue())
