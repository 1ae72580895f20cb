"""``bench/end_to_end.py --quick`` runs end to end (eager backend: no compile) and writes its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # eleven subprocesses, each importing torch
def test_end_to_end_quick_writes_its_table(tmp_path):
    out = tmp_path / "e2e.json"
    cmd = [sys.executable, str(ROOT / "bench" / "end_to_end.py"), "--quick", "--backend", "eager"]
    done = subprocess.run(
        [*cmd, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert set(rows) == {
        "peer (eager nn.Module + prune hooks + torch.optim)",
        "pure-prune run, first on the machine (empty caches, ISA not yet probed)",
        "pure-prune run, cold (empty inductor cache)",
        "pure-prune run, warm (steps loaded from the step cache)",
        "pure-prune run --step-cache off, warm (dynamo traces, inductor's cache)",
        "pure-prune run --eager",
        "pure-prune run --seeds 2, cold",
        "pure-prune run --seeds 2, warm",
        "2 peers one after another",
        "compute limit, 1 seed (compiled step x steps)",
        "compute limit, 2 seeds",
    }
    peer = rows["peer (eager nn.Module + prune hooks + torch.optim)"]
    assert peer["ratio_to_peer"] == 1.0 and "1 rounds" in peer["last_line"]
    assert all(r["wall_s"] > 0 and r["ratio_to_peer"] == r["wall_s"] / peer["wall_s"] for r in rows.values())
    for when in ("cold", "warm"):
        assert "2 rounds, final test accuracy" in rows[f"pure-prune run --seeds 2, {when}"]["last_line"]
        assert "mean ± std over 2 seeds" in rows[f"pure-prune run --seeds 2, {when}"]["last_line"]
    assert result["settings"]["steps_per_seed"] == 2 * 1 * (1437 // 64)
    limit = rows["compute limit, 1 seed (compiled step x steps)"]["wall_s"]
    assert limit == pytest.approx(result["step_s"] * 44) and rows["compute limit, 2 seeds"][
        "wall_s"
    ] == pytest.approx(2 * limit)
    assert len(result["loadavg_before"]) == 3 and result["machine"]["threads"] == 1
    assert "| program" in done.stdout and "load average" in done.stdout
    saved, loaded, traced = (
        rows[name]["last_line"].split("final test accuracy")[1].split(",")[0]
        for name in (
            "pure-prune run, cold (empty inductor cache)",
            "pure-prune run, warm (steps loaded from the step cache)",
            "pure-prune run --step-cache off, warm (dynamo traces, inductor's cache)",
        )
    )
    assert saved == loaded == traced  # the loaded steps give the saving run's accuracy
