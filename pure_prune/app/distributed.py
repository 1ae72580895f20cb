"""Grid sweeps over processes and machines with ``torch.distributed``, resumable point by point.

A *grid* is a sequence of points (plain-JSON values, e.g. ``{"sparsity": 0.8, "lr": 0.05}``) and a
callable ``fn(point) -> result`` (plain JSON too). :func:`run_grid` runs it on every rank of a
``torchrun`` job (gloo on CPU, nccl on GPU; one process without ``torchrun``)::

    torchrun --nproc_per_node 2 sweep_script.py      # each rank calls run_grid(points, fn, "out/")

1. every rank hashes ``{"config": config, "points": points}``; the hashes are all-gathered and a
   rank that differs from rank 0 stops every rank with :class:`ConfigMismatchError` naming it;
2. rank 0 lists the points whose result file is missing (:func:`missing`) and broadcasts the list;
3. each rank runs its :func:`shard` of that list (round robin, deterministic) and writes every
   result as soon as it has it, atomically (``checkpoint.save_json_atomic``), to
   ``results_dir/<point id>.json`` — so a rank that dies loses only its unfinished points;
4. the records are gathered on rank 0 (``gather_object``), which also writes any it cannot see
   (ranks on other machines without a shared file system), and returns every result in point
   order; other ranks return ``None``.

Running again with the same arguments resumes: only missing points are computed. A result file
records its point, its result, the config hash, the rank and the seconds it took.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from pure_prune.app.checkpoint import save_json_atomic

__all__ = [
    "ConfigMismatchError",
    "config_hash",
    "default_backend",
    "load_results",
    "missing",
    "point_id",
    "process_group",
    "result_path",
    "run_grid",
    "shard",
]

T = TypeVar("T")
RECORD_FORMAT = "pure_prune.grid_point/1"


class ConfigMismatchError(ValueError):
    """Ranks of one sweep were given different configs or points."""


def _canonical_json(obj: Any, what: str) -> str:
    """``obj`` as compact JSON with sorted keys; ``TypeError``/``ValueError`` name ``what`` otherwise."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{what} must be plain JSON (dict/list/str/number/bool/None): {err}") from None


def config_hash(obj: Any) -> str:
    """SHA-256 (hex) of ``obj``'s canonical JSON (sorted keys): equal values give equal hashes."""
    return hashlib.sha256(_canonical_json(obj, "config").encode()).hexdigest()


def point_id(point: Any) -> str:
    """A file-name-safe id of ``point``: the first 16 hex digits of its :func:`config_hash`."""
    return hashlib.sha256(_canonical_json(point, "point").encode()).hexdigest()[:16]


def result_path(results_dir: str | os.PathLike, point: Any) -> Path:
    """Where the result of ``point`` is written: ``results_dir/<point_id(point)>.json``."""
    return Path(results_dir) / f"{point_id(point)}.json"


def shard(points: Sequence[T], rank: int, world: int) -> list[T]:
    """The points rank ``rank`` of ``world`` runs: ``points[rank::world]`` (round robin).

    Deterministic and complete: the shards of ranks ``0..world-1`` are disjoint and together hold
    every point once. Raises ``ValueError`` unless ``0 <= rank < world``.
    """
    for name, v in (("rank", rank), ("world", world)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {v!r}")
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"need 0 <= rank < world, got rank={rank}, world={world}")
    return list(points[rank::world])


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT or "result" not in record:
        return None
    return record


def _valid(record: dict | None, point: Any, chash: str | None) -> bool:
    if record is None or _canonical_json(record.get("point"), "point") != _canonical_json(point, "point"):
        return False
    return chash is None or record.get("config_hash") == chash


def _check_points(points: Sequence[Any]) -> list[str]:
    if isinstance(points, (str, bytes)) or not isinstance(points, Sequence):
        raise TypeError(f"points must be a sequence, got {type(points).__name__}")
    ids = [point_id(p) for p in points]
    seen: dict[str, int] = {}
    for i, pid in enumerate(ids):
        if pid in seen:
            raise ValueError(f"points[{i}] repeats points[{seen[pid]}]: {points[i]!r}")
        seen[pid] = i
    return ids


def missing(points: Sequence[Any], results_dir: str | os.PathLike, *, config: Any = None) -> list[int]:
    """Indices of the points without a valid result in ``results_dir``, in order.

    A result is valid when its file parses, has this module's record format and holds this point;
    with ``config`` given, its recorded config hash must be ``config_hash(config)`` (so results
    of another config are recomputed, not reused; adding points to a grid keeps the others).
    """
    _check_points(points)
    chash = None if config is None else config_hash(config)
    return [
        i for i, p in enumerate(points) if not _valid(_read_record(result_path(results_dir, p)), p, chash)
    ]


def load_results(points: Sequence[Any], results_dir: str | os.PathLike) -> list[Any]:
    """The stored result of every point, in order; ``ValueError`` naming the first missing point."""
    out = []
    for i, p in enumerate(points):
        record = _read_record(result_path(results_dir, p))
        if not _valid(record, p, None):
            raise ValueError(f"no result for points[{i}] = {p!r} in {str(results_dir)!r}")
        out.append(record["result"])
    return out


def _sweep_hash(points: Sequence[Any], config: Any) -> str:
    return config_hash({"config": config, "points": list(points)})


def default_backend() -> str:
    """``"nccl"`` when CUDA is available, else ``"gloo"``."""
    return "nccl" if torch.cuda.is_available() else "gloo"


@contextlib.contextmanager
def process_group(backend: str | None = None) -> Iterator[tuple[int, int]]:
    """``(rank, world)`` of this process, with the default process group up for the block.

    Uses a group that is already initialised; else, under ``torchrun`` (``WORLD_SIZE`` in the
    environment), initialises one from the environment with ``backend`` (default
    :func:`default_backend`; for nccl the device is ``LOCAL_RANK``) and destroys it on exit;
    else yields ``(0, 1)`` without any group.
    """
    if dist.is_available() and dist.is_initialized():
        yield dist.get_rank(), dist.get_world_size()
        return
    if "WORLD_SIZE" not in os.environ:
        yield 0, 1
        return
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE is set but this torch build has no torch.distributed")
    backend = backend or default_backend()
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    try:
        yield dist.get_rank(), dist.get_world_size()
        # every rank reaches here before any tears its group down: a rank that closed its gloo
        # connections while a peer was still sending made that peer abort at exit
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _check_same_config(chash: str, rank: int, world: int) -> None:
    """All-gather the sweep hashes; raise on every rank, naming the ranks that differ from rank 0."""
    if world == 1:
        return
    hashes: list[Any] = [None] * world
    dist.all_gather_object(hashes, chash)
    bad = [r for r, h in enumerate(hashes) if h != hashes[0]]
    if bad:
        detail = ", ".join(f"rank {r} has {hashes[r][:12]}" for r in bad)
        raise ConfigMismatchError(
            f"ranks disagree on the sweep (config and points): rank 0 has hash {hashes[0][:12]}, {detail}; "
            f"every rank must pass the same config and points (this is rank {rank})"
        )


def run_grid(
    points: Sequence[Any],
    fn: Callable[[Any], Any],
    results_dir: str | os.PathLike,
    *,
    config: Any = None,
    resume: bool = True,
    backend: str | None = None,
) -> list[Any] | None:
    """Run ``fn`` on every point of the grid across the ranks; see the module doc.

    ``points``: distinct plain-JSON values. ``fn(point)``: a plain-JSON result. ``config``: plain
    JSON that every rank must agree on (e.g. the sweep's settings). ``resume=False`` recomputes
    every point. ``backend`` is used when this call initialises the process group.

    Returns, on rank 0, the results of all points in order (those computed before included); on
    other ranks ``None``. Raises :class:`ConfigMismatchError` on every rank when ranks disagree.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable as fn(point), got {fn!r}")
    if not isinstance(resume, bool):
        raise TypeError(f"resume must be True or False, got {resume!r}")
    _check_points(points)
    chash = config_hash(config)
    results_dir = Path(results_dir)
    with process_group(backend) as (rank, world):
        _check_same_config(_sweep_hash(points, config), rank, world)
        todo = [missing(points, results_dir, config=config) if resume else list(range(len(points)))]
        if world > 1:
            dist.broadcast_object_list(todo, src=0)
        records = []
        for i in shard(todo[0], rank, world):
            t0 = time.perf_counter()
            result = fn(points[i])
            _canonical_json(result, f"the result of points[{i}]")
            record = {
                "format": RECORD_FORMAT,
                "point": points[i],
                "result": result,
                "config_hash": chash,
                "rank": rank,
                "seconds": time.perf_counter() - t0,
            }
            save_json_atomic(result_path(results_dir, points[i]), record)
            records.append(record)
        gathered: list[Any] | None = [records]
        if world > 1:
            gathered = [None] * world if rank == 0 else None
            dist.gather_object(records, gathered, dst=0)
        if rank != 0:
            return None
        for rank_records in gathered:
            for record in rank_records:
                path = result_path(results_dir, record["point"])
                if not _valid(_read_record(path), record["point"], chash):
                    save_json_atomic(path, record)
        return load_results(points, results_dir)
