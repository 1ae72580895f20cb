"""Run directories read back for ``pure-prune report``: :class:`Run` and its seeds.

:func:`load_run` reads ``run.json``, ``rounds.jsonl`` and the trees of the last checkpoint of a
``pure-prune run`` save directory. A run of several seeds (``run.json["seeds"]``) holds its seeds'
final trees stacked (seed axis first), read from its own checkpoints (vmapped seeds) or from its
seed directories (sequential seeds); :func:`n_seeds` counts them and :func:`seed_tree` takes one.
:func:`checkpoint_paths` and :func:`seed_dirs` list a run's checkpoints and seed directories.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from pure_prune import tree
from pure_prune.app import checkpoint

__all__ = ["Run", "checkpoint_paths", "load_run", "n_seeds", "seed_dirs", "seed_tree"]


class Run(NamedTuple):
    """A run directory read back: its name, path, ``run.json`` content, per-round metrics and the
    trees of its last checkpoint (``{}`` when it has none; stacked over the seeds for a run of
    several seeds, see the module docstring)."""

    name: str
    path: Path
    info: dict[str, Any]
    rounds: list[dict[str, Any]]
    final: dict[str, Any]


def checkpoint_paths(path: Path) -> list[Path]:
    """The ``round_*.safetensors`` checkpoints of the run directory ``path``, in round order."""
    return sorted((path / "checkpoints").glob("round_*.safetensors"))


def n_seeds(run: Run) -> int:
    """The number of seeds of ``run``: ``len(run.json["seeds"]["keys"])``, 1 for a single-seed run."""
    return len(run.info.get("seeds", {}).get("keys", [])) or 1


def seed_dirs(path: Path, info: dict[str, Any]) -> list[Path]:
    """The seed directories of a run whose seeds ran one after another (``[]`` otherwise)."""
    seeds = info.get("seeds", {})
    return [path / d for d in seeds.get("dirs", [])] if seeds.get("mode") == "sequential" else []


def _final_trees(path: Path, info: dict[str, Any]) -> dict[str, Any]:
    """The last checkpoint's trees; for sequential seeds the seeds' ``params``/``state``/``masks``
    stacked (``{}`` until every seed has reached the same last round)."""
    dirs = seed_dirs(path, info)
    if not dirs:
        ckpts = checkpoint_paths(path)
        return checkpoint.load(ckpts[-1])[0] if ckpts else {}
    last = [checkpoint_paths(d)[-1:] for d in dirs]
    if any(not c or c[0].name != last[0][0].name for c in last):
        return {}  # a seed has not reached the round of the others yet
    finals = [checkpoint.load(c[0])[0] for c in last]
    out = {name: tree.stack([f[name] for f in finals]) for name in ("params", "masks")}
    out["state"] = tree.stack([f["state"] for f in finals]) if tree.leaves(finals[0]["state"]) else {}
    return out


def seed_tree(trees: Any, run: Run, i: int = 0) -> Any:
    """Seed ``i`` of a stacked tree of a several-seed run; the tree itself for one seed."""
    if n_seeds(run) == 1 or not tree.leaves(trees):
        return trees
    return tree.map(lambda x: None if x is None else x[i], trees)


def load_run(directory: str | Path) -> Run:
    """Read a run directory. Raises ``FileNotFoundError`` when it has no ``run.json`` and
    ``ValueError`` when its files do not parse (naming the file)."""
    path = Path(directory)
    info_path = path / "run.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"{str(path)!r} is not a pure-prune run directory (no run.json)")
    try:
        info = json.loads(info_path.read_text())
        lines = (path / "rounds.jsonl").read_text().splitlines() if (path / "rounds.jsonl").is_file() else []
        rounds = [json.loads(line) for line in lines if line.strip()]
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(path)!r}: a metrics file is not valid JSON ({e})") from e
    return Run(path.resolve().name, path, info, rounds, _final_trees(path, info))
