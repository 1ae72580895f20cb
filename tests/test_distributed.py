"""pure_prune.app.distributed: deterministic shards, per-point atomic results, resume, config checks.

The ``torchrun`` tests start 2 CPU processes (gloo) on a tiny grid: every point is present on rank
0; after one result is deleted a second run recomputes only that point; ranks with different
configs stop with an error naming the rank.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pure_prune.app import distributed


# ---------------------------------------------------------------------------------- shards
@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 30), world=st.integers(1, 6))
def test_shards_are_disjoint_complete_and_deterministic(n, world):
    points = list(range(n))
    shards = [distributed.shard(points, r, world) for r in range(world)]
    assert sorted(p for s in shards for p in s) == points
    assert shards == [distributed.shard(points, r, world) for r in range(world)]
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_shard_is_round_robin_by_hand():
    assert distributed.shard("abcdefg", 0, 3) == ["a", "d", "g"]
    assert distributed.shard("abcdefg", 2, 3) == ["c", "f"]
    with pytest.raises(ValueError, match="rank=3, world=3"):
        distributed.shard([1], 3, 3)
    with pytest.raises(TypeError, match="world must be an int"):
        distributed.shard([1], 0, 1.0)


# ------------------------------------------------------------------------------------- ids
def test_config_hash_and_point_id_by_hand():
    assert (
        distributed.config_hash({"b": 1, "a": [1.5, None]})
        == hashlib.sha256(b'{"a":[1.5,null],"b":1}').hexdigest()
    )
    assert distributed.config_hash({"a": 1, "b": 2}) == distributed.config_hash({"b": 2, "a": 1})
    assert distributed.point_id({"s": 0.5}) == hashlib.sha256(b'{"s":0.5}').hexdigest()[:16]
    assert (
        distributed.result_path("out", {"s": 0.5}) == Path("out") / f"{distributed.point_id({'s': 0.5})}.json"
    )
    with pytest.raises(TypeError, match="plain JSON"):
        distributed.config_hash({"x": object()})
    with pytest.raises(ValueError, match="plain JSON"):
        distributed.point_id({"x": float("nan")})


# --------------------------------------------------------------------- one process (world 1)
def test_run_grid_in_one_process_writes_atomically_and_resumes(tmp_path):
    points = [{"s": s} for s in (0.1, 0.5, 0.9)]
    calls: list[float] = []

    def fn(p):
        calls.append(p["s"])
        return {"twice": 2 * p["s"]}

    out = tmp_path / "res"
    assert distributed.missing(points, out) == [0, 1, 2]
    assert distributed.run_grid(points, fn, out, config={"lr": 0.1}) == [
        {"twice": 0.2},
        {"twice": 1.0},
        {"twice": 1.8},
    ]
    assert calls == [0.1, 0.5, 0.9] and distributed.missing(points, out) == []
    record = json.loads(distributed.result_path(out, points[1]).read_text())
    assert (
        record["point"] == points[1]
        and record["rank"] == 0
        and record["config_hash"] == distributed.config_hash({"lr": 0.1})
    )
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]

    calls.clear()
    distributed.result_path(out, points[2]).unlink()
    distributed.result_path(out, points[0]).write_text("{truncated")  # a damaged file counts as missing
    assert distributed.missing(points, out) == [0, 2]
    assert distributed.run_grid(points, fn, out, config={"lr": 0.1})[2] == {"twice": 1.8}
    assert calls == [0.1, 0.9]

    calls.clear()
    grown = [*points, {"s": 0.7}]  # a new point: the others are reused
    assert distributed.missing(grown, out, config={"lr": 0.1}) == [3]
    assert distributed.missing(grown, out, config={"lr": 0.2}) == [0, 1, 2, 3]  # another config
    distributed.run_grid(grown, fn, out, config={"lr": 0.1})
    assert calls == [0.7]
    calls.clear()
    distributed.run_grid(points, fn, out, config={"lr": 0.1}, resume=False)
    assert calls == [0.1, 0.5, 0.9]


def test_run_grid_and_load_results_reject_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"points\[2\] repeats points\[0\]"):
        distributed.run_grid([{"a": 1}, {"a": 2}, {"a": 1}], lambda p: 0, tmp_path)
    with pytest.raises(TypeError, match="plain JSON"):
        distributed.run_grid([{"a": {1, 2}}], lambda p: 0, tmp_path)
    with pytest.raises(TypeError, match=r"the result of points\[0\] must be plain JSON"):
        distributed.run_grid([{"a": 1}], lambda p: object(), tmp_path)
    assert distributed.missing([{"a": 1}], tmp_path) == [0]  # nothing written for the bad result
    with pytest.raises(TypeError, match="fn must be callable"):
        distributed.run_grid([{"a": 1}], None, tmp_path)
    with pytest.raises(ValueError, match=r"no result for points\[0\]"):
        distributed.load_results([{"a": 1}], tmp_path)


def test_process_group_without_torchrun_is_world_one(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with distributed.process_group() as (rank, world):
        assert (rank, world) == (0, 1)
    assert distributed.default_backend() in ("gloo", "nccl")


# ------------------------------------------------------------------------------- torchrun
SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    from pure_prune.app import distributed

    out, mode = Path(sys.argv[1]), sys.argv[2]
    rank = int(os.environ["RANK"])
    points = [{"i": i} for i in range(5)]
    config = {"lr": 0.2 if mode == "mismatch" and rank == 1 else 0.1}

    def fn(point):
        (out / "calls").mkdir(parents=True, exist_ok=True)
        (out / "calls" / f"{point['i']}-rank{rank}").write_text("")
        return {"square": point["i"] ** 2, "rank": rank}

    results = distributed.run_grid(points, fn, out / "results", config=config)
    if rank == 0:
        (out / "rank0.json").write_text(json.dumps(results))
    else:
        assert results is None
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(script: Path, out: Path, mode: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(script), str(out), mode,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)


@pytest.mark.slow
def test_torchrun_two_processes_gather_resume_and_config_mismatch(tmp_path):
    script = tmp_path / "grid.py"
    script.write_text(SCRIPT)
    out = tmp_path / "run"

    first = _torchrun(script, out, "ok")
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.loads((out / "rank0.json").read_text())
    assert [r["square"] for r in results] == [0, 1, 4, 9, 16]
    assert [r["rank"] for r in results] == [0, 1, 0, 1, 0]  # round robin over 2 ranks
    assert sorted(os.listdir(out / "calls")) == ["0-rank0", "1-rank1", "2-rank0", "3-rank1", "4-rank0"]

    points = [{"i": i} for i in range(5)]
    distributed.result_path(out / "results", points[3]).unlink()
    for f in (out / "calls").iterdir():
        f.unlink()
    second = _torchrun(script, out, "ok")
    assert second.returncode == 0, second.stderr[-3000:]
    assert os.listdir(out / "calls") == ["3-rank0"]  # only the missing point, now on rank 0
    assert [r["square"] for r in json.loads((out / "rank0.json").read_text())] == [0, 1, 4, 9, 16]

    bad = _torchrun(script, tmp_path / "bad", "mismatch")
    assert bad.returncode != 0
    text = bad.stdout + bad.stderr
    assert "ConfigMismatchError" in text and "rank 1 has" in text, text[-3000:]
    assert not (tmp_path / "bad" / "calls").exists()  # nothing ran
