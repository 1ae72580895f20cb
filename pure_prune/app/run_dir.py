"""A run's save directory: ``run.json``, the round checkpoints, ``rounds.jsonl`` and ``summary.csv``.

================================  ===================================================================
``run.json``                      the resolved config, its hash, the model's input shape (written once)
``checkpoints/round_NNNN.safetensors``  after every round (``pure_prune.app.checkpoint``: atomic, hashed):
                                  params, state, opt_state, masks, rewind weights, method extras;
                                  metadata: round index, rng position, config hash, metrics so far
``rounds.jsonl``                  one line of metrics per round (derived from the last checkpoint)
``summary.csv``                   the same, one row per round, flat columns
``run.log``                       the log lines (also printed)
================================  ===================================================================

Refusals (``ValueError`` before anything is written, :func:`prepare_dir`): a save directory that holds
another run (different config hash; the differing knobs are named), one that holds this run without
``resume`` (its results are never overwritten), a non-empty directory without ``run.json``, and (on
resume, :func:`load_round`) a corrupt or truncated checkpoint. (Runs saved by versions that ran the seeds
of ``rsst``, ``refill``, ``distill`` and ``dst`` one after another, in ``<save_dir>/seed_<k>/``,
are refused with a message naming those directories: each is a single-seed run of its own.)
A ``run.json`` that is truncated, not JSON, not a run record, or whose config no longer matches its
hash (edited by hand) is refused by :func:`read_info` with a message naming the file.

**One run per directory** (:func:`claim`). A run holds ``<save_dir>/.lock`` for as long as it
works in the directory: an exclusive ``fcntl.flock`` on the file (which holds the holder's pid), so
a second process on the same directory is refused with "save dir X is in use by another run (pid
N)" before it writes anything. The kernel drops the lock when the holder exits or is killed (even
with ``kill -9``), so ``--resume`` after a crash just works; the file itself stays. Where
``fcntl`` does not exist (Windows), the lock is the file itself, created with ``O_EXCL`` and
removed when the run ends; one left by a killed run must be deleted by hand (the message says so).

**Nothing half written.** Every file but ``run.log`` (appended line by line) is written through a
fsynced temporary file ``.<name>.<random>.tmp`` renamed over the target (``os.replace``); a run
killed mid-write leaves the old file and a temporary one, which the next run on the directory
removes (:func:`remove_partials`, under the lock).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

try:
    import fcntl
except ImportError:  # Windows: the lock is an O_EXCL file (module docstring)
    fcntl = None  # type: ignore[assignment]

from pure_prune.algorithms.base import Carry
from pure_prune.app import checkpoint
from pure_prune.app.experiment import Experiment
from pure_prune.app.runconfig import NOT_HASHED, RunConfig, config_hash, from_mapping

__all__ = ["FORMAT", "LOCK", "claim", "holder", "read_info", "refuse_if_in_use", "remove_partials"]

FORMAT = "pure_prune.run/1"
_CKPT_DIR = "checkpoints"
_CKPT = re.compile(r"^round_(\d{4,})\.safetensors$")
LOCK = ".lock"
"""The lock file of a save directory (:func:`claim`)."""
# the temporary files of an atomic write (pure_prune.app.checkpoint's and _write_text's naming)
_PARTIAL = re.compile(
    r"^\.(run\.json|rounds\.jsonl|summary\.csv|round_\d{4,}\.safetensors)\.[A-Za-z0-9_]+\.tmp$"
)


# ----------------------------------------------------------------------------- the lock


def _in_use(save: Path, pid: int | None, *, stale_hint: bool) -> ValueError:
    who = f"pid {pid}" if pid is not None else "pid unknown"
    hint = (
        f"; if no such process is running (a run that was killed), delete {str(save / LOCK)!r}"
        if stale_hint
        else "; wait for it to finish (then --resume continues it), or choose another --save-dir"
    )
    return ValueError(f"save dir {str(save)!r} is in use by another run ({who}){hint}")


def _pid_in(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def holder(save: Path, *, flock: bool = fcntl is not None) -> int | None:
    """Whether another process holds ``save``'s lock: its pid (``-1`` when unreadable), else ``None``.

    Reads only (never creates the lock file): a refusal that comes before :func:`claim` leaves the
    directory byte for byte as it was. ``flock=False`` checks the ``O_EXCL`` form of the lock."""
    path = save / LOCK
    if not path.is_file():
        return None
    if not flock:
        pid = _pid_in(path)
        return -1 if pid is None else pid
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _pid_in(path)
            return -1 if pid is None else pid
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def refuse_if_in_use(save: Path, *, flock: bool = fcntl is not None) -> None:
    """Raise the "in use by another run (pid N)" ``ValueError`` when :func:`holder` finds one."""
    pid = holder(save, flock=flock)
    if pid is not None:
        raise _in_use(save, None if pid < 0 else pid, stale_hint=not flock)


@contextlib.contextmanager
def claim(save: Path, *, flock: bool = fcntl is not None) -> Iterator[Path]:
    """Create ``save`` (and its parents) and hold its lock while the ``with`` block runs; yields ``save``.

    Raises ``ValueError`` ("save dir X is in use by another run (pid N)") when another process (or
    another ``claim`` in this one) holds it. ``flock=True``: an exclusive non-blocking
    ``fcntl.flock`` on ``<save>/.lock``, released by the kernel however the process ends.
    ``flock=False`` (where ``fcntl`` is missing): the lock file created with ``O_CREAT | O_EXCL``
    and removed on exit. Either way the file holds the holder's pid."""
    save.mkdir(parents=True, exist_ok=True)
    path = save / LOCK
    pid = f"{os.getpid()}\n".encode()
    if flock:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _in_use(save, _pid_in(path), stale_hint=False) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, pid, 0)
            yield save
        finally:
            os.close(fd)  # drops the lock; the file stays (removing it would race with a new claim)
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise _in_use(save, _pid_in(path), stale_hint=True) from None
    try:
        os.write(fd, pid)
        os.close(fd)
        yield save
    finally:
        path.unlink(missing_ok=True)


def remove_partials(save: Path) -> list[Path]:
    """Delete the temporary files that a run killed mid-write left in ``save`` and its checkpoint
    folder (``.<name>.<random>.tmp`` of ``run.json``, the tables and the checkpoints); returns them.
    Call it holding the lock (:func:`claim`): a live writer's temporary file is never touched."""
    removed = []
    for folder in (save, save / _CKPT_DIR):
        if folder.is_dir():
            for p in sorted(folder.iterdir()):
                if _PARTIAL.match(p.name) and p.is_file():
                    p.unlink()
                    removed.append(p)
    return removed


def _write_text(path: Path, text: str) -> None:
    """``text`` into ``path`` through a fsynced ``.<name>.<random>.tmp`` renamed over it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------- run.json


def read_info(path: Path) -> dict[str, Any]:
    """The run record in ``run.json`` at ``path``, checked: valid JSON, an object of this
    :data:`FORMAT` with a ``config`` that parses (``runconfig.from_mapping``) and whose hash is the
    stored ``config_hash``. Raises ``ValueError`` naming the file and what is wrong (truncated,
    edited by hand, another program's file)."""
    fix = "restore it, or choose another --save-dir"
    try:
        stored = json.loads(path.read_bytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(
            f"{str(path)!r} is not valid JSON ({e}): truncated or edited, so this directory's run cannot "
            f"be identified; {fix}"
        ) from None
    if not isinstance(stored, dict) or stored.get("format") != FORMAT:
        what = stored.get("format") if isinstance(stored, dict) else type(stored).__name__
        raise ValueError(
            f"{str(path)!r} is not a pure-prune run record (format {what!r}, expected {FORMAT!r}); {fix}"
        )
    config, digest = stored.get("config"), stored.get("config_hash")
    if not isinstance(config, dict) or not isinstance(digest, str):
        raise ValueError(f"{str(path)!r} lacks its config or config_hash (edited by hand?); {fix}")
    try:
        actual = config_hash(from_mapping(config))
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"{str(path)!r} holds a config that does not parse ({e}); edited by hand? {fix}"
        ) from None
    if actual != digest:
        raise ValueError(
            f"{str(path)!r}: its config hashes to {actual[:12]}, not to its stored config_hash {digest[:12]} "
            f"(edited by hand?); {fix}"
        )
    return stored


def _is_ours(p: Path) -> bool:
    """A file a run may leave in a directory before its ``run.json`` exists: the lock, a partial write."""
    return p.name == LOCK or bool(_PARTIAL.match(p.name))


def _differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    keys = sorted((set(a) | set(b)) - set(NOT_HASHED))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


def list_checkpoints(save: Path) -> dict[int, Path]:
    folder = save / _CKPT_DIR
    if not folder.is_dir():
        return {}
    found = {}
    for p in folder.iterdir():
        m = _CKPT.match(p.name)
        if m and p.is_file():
            found[int(m.group(1))] = p
    return found


def prepare_dir(save: Path, cfg: RunConfig, digest: str, resume: bool, total: int) -> None:
    info = save / "run.json"
    if info.is_file():
        stored = read_info(info)
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
            done = max(list_checkpoints(save), default=-1) + 1
            state = "finished" if done >= total else f"unfinished ({done}/{total} rounds)"
            raise ValueError(
                f"save dir {str(save)!r} already holds this run, {state}; pass --resume to continue it, or "
                "choose another --save-dir (results are never overwritten)"
            )
        return
    if save.exists() and (not save.is_dir() or not all(_is_ours(p) for p in save.iterdir())):
        raise ValueError(
            f"save dir {str(save)!r} exists and holds no pure-prune run; choose another --save-dir"
        )


def write_info(save: Path, cfg: RunConfig, digest: str, extra: dict[str, Any], total: int) -> None:
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


def model_info(exp: Experiment) -> dict[str, Any]:
    return {
        "input_shape": list(exp.model.input_shape),
        "input_dtype": str(exp.model.input_dtype).removeprefix("torch."),
    }


def load_round(path: Path, digest: str, r: int) -> tuple[Carry, dict[str, Any]]:
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


def save_round(
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


def write_tables(save: Path, rounds: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    """``rounds.jsonl`` and ``summary.csv`` (``columns``) from the metrics (rewritten whole: they are derived)."""
    _write_text(save / "rounds.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rounds))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rounds)
    _write_text(save / "summary.csv", buf.getvalue())
