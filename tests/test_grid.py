"""pure-prune sweep (pure_prune.app.sweep): compression by hand, criteria lists, the grid's files, resume
of missing points, the dense cache, a point equal to round 1 of pure-prune run --method one_shot
(element criteria, and unit criteria removing channels), torchrun, and clear errors for bad input."""

from __future__ import annotations

import csv
import dataclasses
import os
import socket
import subprocess
import sys

import pytest
import torch

from pure_prune import importance, mask, seeds, tree
from pure_prune.app import cli, runner
from pure_prune.app import sweep as grid
from pure_prune.app.run_context import build_context
from pure_prune.app.runconfig import RunConfig

TINY = {"sizes": [64, 16, 16, 10]}
SMALL = dict(model_cfg=TINY, seeds=2, epochs=2, finetune_epochs=1, batch_size=128, eager=True, threads=1)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """2 criteria x 2 compressions x 2 seeds, tiny MLP on digits, eager: (config, result, log lines,
    the CSV text as first written)."""
    cfg = grid.SweepConfig(
        criteria=(("magnitude", "global"), ("random", "global")),
        compression=(2, 8),
        save_dir=str(tmp_path_factory.mktemp("sweep") / "out"),
        **SMALL,
    )
    lines: list[str] = []
    res = grid.run(cfg, log=lines.append)
    return cfg, res, lines, res.files[0].read_text()


# ----------------------------------------------------------------------------- settings


def test_sparsity_of_compression_by_hand():
    assert [grid.sparsity_of(c) for c in (1, 2, 4, 8, 16, 32)] == [0.0, 0.5, 0.75, 0.875, 0.9375, 0.96875]
    assert grid.sparsity_of(1.25) == pytest.approx(0.2)
    for bad in (0.5, 0, -2, float("nan"), float("inf"), True, "4"):
        with pytest.raises(ValueError, match="compression ratio must be"):
            grid.sparsity_of(bad)


def test_criteria_lists_follow_the_registry():
    known = importance.names()
    default = grid.default_criteria()
    assert (
        ("magnitude", "global") in default
        and ("magnitude", "layer") in default
        and ("random", "global") in default
    )
    assert all(n in known for n, _ in default) and not {"l1", "l2"} & {n for n, _ in default}
    order = [(n, s) for n, s, _ in grid.DEFAULT_CRITERIA]
    assert [order.index(c) for c in default] == sorted(order.index(c) for c in default)
    assert grid.parse_criteria("magnitude, random:layer,magnitude:layer") == [
        ("magnitude", "global"),
        ("random", "layer"),
        ("magnitude", "layer"),
    ]
    assert grid.parse_criteria(["l2"]) == [("l2", "global")]
    with pytest.raises(
        ValueError, match=f"unknown criterion 'oracle' in --criteria; known criteria: {', '.join(known)}"
    ):
        grid.parse_criteria("magnitude,oracle")
    with pytest.raises(ValueError, match="unknown scope 'block'; known: global, layer"):
        grid.parse_criteria("magnitude:block")
    with pytest.raises(ValueError, match="listed twice"):
        grid.parse_criteria("random,random:global")
    with pytest.raises(ValueError, match="at least one criterion"):
        grid.parse_criteria(" , ")


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"seeds": 0}, "seeds must be an int >= 1, got 0"),
        ({"epochs": 0}, "epochs must be an int >= 1"),
        ({"finetune_epochs": -1}, "finetune_epochs must be an int >= 0"),
        ({"compression": (2, 0.5)}, r"compression ratio must be >= 1 .*got 0.5"),
        ({"compression": (2, 2.0)}, "compression ratios repeat"),
        ({"compression": ()}, "at least one ratio"),
        ({"criteria": (("magnitude", "global"), ("nope", "global"))}, "known criteria: "),
        ({"lr": 0.0}, "lr must be a positive number"),
    ],
)
def test_bad_settings_give_clear_errors(changes, needle):
    with pytest.raises(ValueError, match=needle):
        grid.SweepConfig(**{**SMALL, **changes}).check()


def test_cli_bad_input_exits_2_with_the_reason(tmp_path, capsys):
    base = [
        "sweep",
        "--model-cfg",
        '{"sizes": [64, 16, 16, 10]}',
        "--eager",
        "--save-dir",
        str(tmp_path / "s"),
    ]
    cases = [
        (["--criteria", "magnitude,oracle"], f"known criteria: {', '.join(importance.names())}"),
        (["--compression", "2,0.5"], "compression ratio must be >= 1"),
        (["--compression", "2,x"], "--compression must be comma-separated numbers, got '2,x'"),
        (["--seeds", "0"], "seeds must be an int >= 1, got 0"),
    ]
    for flags, needle in cases:
        assert cli.main([*base, *flags]) == 2
        assert needle in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # refused before anything was written


# ----------------------------------------------------------------------------- tables by hand


def _result(dense, pruned, tuned, sparsity):
    def s(v):
        return {"mean": v[0], "std": v[1], "n": 2}

    return {
        "summary": {
            "dense_accuracy": s(dense),
            "pruned_accuracy": s(pruned),
            "accuracy": s(tuned),
            "sparsity": s((sparsity, 0.0)),
        }
    }


def test_table_and_markdown_by_hand():
    points = [
        {"criterion": "magnitude", "scope": "global", "level": "element", "compression": 2.0},
        {"criterion": "magnitude", "scope": "global", "level": "element", "compression": 4.0},
    ]
    results = [
        _result((0.9, 0.01), (0.8, 0.02), (0.85, 0.005), 0.5),
        _result((0.9, 0.01), (0.5, 0.1), (0.7, 0.0), 0.75),
    ]
    rows = grid.table(points, results)
    assert [(r["criterion"], r["compression"], r["finetuned"]) for r in rows] == [
        ("dense", 1.0, False),
        ("magnitude", 2.0, False),
        ("magnitude", 2.0, True),
        ("magnitude", 4.0, False),
        ("magnitude", 4.0, True),
    ]
    assert rows[3] == {
        "criterion": "magnitude",
        "scope": "global",
        "compression": 4.0,
        "sparsity": 0.75,
        "finetuned": False,
        "accuracy_mean": 0.5,
        "accuracy_std": 0.1,
        "n": 2,
        "level": "element",
        "achieved_sparsity": 0.75,
    }
    assert grid.markdown(rows, title="t").splitlines() == [
        "t: test accuracy (%), mean ± std over 2 seeds; dense 90.00 ± 1.00.",
        "",
        "| criterion | scope | fine-tuned | ×2 (50.0%) | ×4 (75.0%) |",
        "|---|---|---|---:|---:|",
        "| magnitude | global | no | 80.00 ± 2.00 | 50.00 ± 10.00 |",
        "| magnitude | global | yes | 85.00 ± 0.50 | 70.00 ± 0.00 |",
    ]
    with pytest.raises(ValueError, match="one result per point"):
        grid.table(points, results[:1])


# ----------------------------------------------------------------------------- the sweep


def test_sweep_writes_the_csv_markdown_and_plot(swept):
    cfg, res, lines, _ = swept
    assert res.computed == 4
    assert "dense: training 2 seeds x 2 epochs as one vmapped program" in lines[0]
    assert any("4 points (2 criteria x 2 compressions), 4 to compute on 1 process" in x for x in lines)
    save = res.files[0].parent
    table = list(csv.DictReader((save / "sweep.csv").open()))
    assert list(table[0]) == list(grid.CSV_COLUMNS) and len(table) == 1 + 2 * 2 * 2
    assert (table[0]["criterion"], table[0]["compression"], table[0]["n"]) == ("dense", "1.0", "2")
    keys = [(r["criterion"], r["scope"], r["compression"], r["sparsity"], r["finetuned"]) for r in table[1:]]
    assert keys == [
        (c, "global", comp, sp, ft)
        for c in ("magnitude", "random")
        for comp, sp in (("2.0", "0.5"), ("8.0", "0.875"))
        for ft in ("False", "True")
    ]
    for r in table[1:]:
        assert float(r["achieved_sparsity"]) == pytest.approx(float(r["sparsity"]), abs=1e-3)
        assert 0.0 <= float(r["accuracy_mean"]) <= 1.0 and float(r["accuracy_std"]) >= 0.0 and r["n"] == "2"
    md = (save / "sweep.md").read_text()
    assert md == res.markdown and "| criterion | scope | fine-tuned | ×2 (50.0%) | ×8 (87.5%) |" in md
    cell = f"{100 * float(table[1]['accuracy_mean']):.2f} ± {100 * float(table[1]['accuracy_std']):.2f}"
    assert f"| magnitude | global | no | {cell} |" in md
    assert (save / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((save / "points").glob("*/*.json"))) == 4 and len(list((save / "dense").iterdir())) == 1


def test_resume_computes_only_missing_points_and_reuses_the_dense_cache(swept):
    cfg, first, _, _ = swept
    save = first.files[0].parent
    files = sorted((save / "points").glob("*/*.json"))
    before = {p: p.read_bytes() for p in files}
    dense = next((save / "dense").iterdir())
    dense_stat = dense.stat().st_mtime_ns
    csv_before = (save / "sweep.csv").read_text()
    files[1].unlink()
    lines: list[str] = []
    again = grid.run(cfg, log=lines.append)
    assert again.computed == 1 and any(
        "4 points (2 criteria x 2 compressions), 1 to compute" in x for x in lines
    )
    assert lines[0].startswith("dense: loaded 2 seeds from cache") and dense.stat().st_mtime_ns == dense_stat
    assert sum(x.startswith("point ") for x in lines) == 1
    for p in files:
        if p != files[1]:
            assert p.read_bytes() == before[p]  # untouched
    assert (save / "sweep.csv").read_text() == csv_before  # the recomputed point gives the same numbers
    lines.clear()
    other = grid.run(dataclasses.replace(cfg, finetune_epochs=0), log=lines.append, plots=False)
    assert other.computed == 4 and lines[0].startswith("dense: loaded")  # new points, same dense models
    assert len(list((save / "points").glob("*/*.json"))) == 8  # beside the first sweep's, not over them
    assert all(p.read_bytes() == before[p] for p in files if p != files[1])


def _one_shot_config(tmp_path, **kw) -> RunConfig:
    return RunConfig(
        method="one_shot", model_cfg=TINY, seeds=2, seed=7, epochs=2, finetune_epochs=1, batch_size=128,
        compile=False, progress=False, threads=1, save_dir=str(tmp_path / "run"), **kw,
    )  # fmt: skip


def _assert_point_is_round_one(point, ran) -> None:
    """Seed by seed, the point equals round 1 of the run (and its dense numbers round 0), exactly."""
    row0, row1 = ran.rounds
    assert point.metrics["dense_accuracy"] == row0["per_seed"]["test_accuracy"]
    assert point.metrics["dense_loss"] == row0["per_seed"]["test_loss"]
    assert point.metrics["accuracy"] == row1["per_seed"]["test_accuracy"]
    assert point.metrics["loss"] == row1["per_seed"]["test_loss"]
    assert point.metrics["sparsity"] == row1["per_seed"]["sparsity"]
    for a, b in zip(tree.leaves(point.carry.masks), tree.leaves(ran.carry.masks), strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    for a, b in zip(tree.leaves(point.carry.params), tree.leaves(ran.carry.params), strict=True):
        assert torch.equal(a, b)


def test_a_point_equals_round_one_of_pure_prune_run(tmp_path):
    """An element criterion: the point of pure-prune sweep is round 1 of pure-prune run --method
    one_shot --seeds 2 with that criterion, scope and sparsity; the same keys give the same numbers."""
    run_cfg = _one_shot_config(tmp_path, importance="magnitude", scope="layer", sparsity=0.75)
    ran = runner.run(run_cfg, log=lambda _: None)
    sweep_cfg = grid.SweepConfig(**{**SMALL, "seed": 7}, save_dir=str(tmp_path / "s")).check()
    ctx = build_context(sweep_cfg.run_config())
    dense, dense_metrics = grid.dense_round(ctx)
    point = grid.run_point(ctx, dense, criterion="magnitude", scope="layer", compression=4)
    _assert_point_is_round_one(point, ran)
    assert point.metrics["dense_accuracy"] == dense_metrics["accuracy"]
    pruned = grid.evaluate(ctx, mask.apply(dense.params, point.carry.masks), dense.state, point.carry.masks)
    assert point.metrics["pruned_accuracy"] == pruned["accuracy"]
    assert point.metrics["sparsity"] == pytest.approx([0.75, 0.75], abs=1e-3)
    for bad, needle in (
        (dict(criterion="oracle"), "registered name"),
        (dict(scope="block"), "scope must be"),
    ):
        kw = {"criterion": "magnitude", "scope": "global", "compression": 2, **bad}
        with pytest.raises(ValueError, match=needle):
            grid.run_point(ctx, dense, **kw)


def test_a_unit_level_point_equals_round_one_of_a_channel_run(tmp_path):
    """A unit-level criterion (l1_units) removes whole channels per seed: the point is round 1 of
    pure-prune run --method one_shot --struct channels with that criterion, exactly."""
    assert importance.get("l1_units").level == "unit"
    run_cfg = _one_shot_config(
        tmp_path, importance="l1_units", struct="channels", scope="layer", sparsity=0.5
    )
    ran = runner.run(run_cfg, log=lambda _: None)
    sweep_cfg = grid.SweepConfig(**{**SMALL, "seed": 7}, save_dir=str(tmp_path / "s")).check()
    ctx = build_context(sweep_cfg.run_config())
    dense, _ = grid.dense_round(ctx)
    point = grid.run_point(ctx, dense, criterion="l1_units", scope="layer", compression=2)
    _assert_point_is_round_one(point, ran)
    for i in range(2):
        m, p = seeds.seed_slice(point.carry.masks, i), seeds.seed_slice(point.carry.params, i)
        for layer in ("fc1", "fc2"):  # the hidden groups: 8 of 16 units removed in each
            dead = ~m[layer]["weight"].any(dim=1)
            assert int(dead.sum()) == 8
            assert not bool(m[layer]["bias"][dead].any()) and not bool(p[layer]["weight"][dead].any())
    assert point.summary["pruned_accuracy"]["n"] == 2 and len(point.history["finetune"]) == 1


def test_one_seed_sweep_point_equals_round_one_of_a_one_seed_run(tmp_path):
    """seeds=1: a single-seed context (no stack); the point's one-element lists are the run's rows."""
    run_cfg = dataclasses.replace(
        _one_shot_config(tmp_path, importance="magnitude", sparsity=0.5), seeds=1, seed=3
    )
    ran = runner.run(run_cfg, log=lambda _: None)
    sweep_cfg = grid.SweepConfig(**{**SMALL, "seeds": 1, "seed": 3}, save_dir=str(tmp_path / "s")).check()
    ctx = build_context(sweep_cfg.run_config())
    assert ctx.seeds is None
    dense, _ = grid.dense_round(ctx)
    point = grid.run_point(ctx, dense, criterion="magnitude", scope="global", compression=2)
    row0, row1 = ran.rounds
    assert point.metrics["dense_accuracy"] == [row0["test_accuracy"]]
    assert point.metrics["accuracy"] == [row1["test_accuracy"]] and point.metrics["loss"] == [
        row1["test_loss"]
    ]
    for a, b in zip(tree.leaves(point.carry.masks), tree.leaves(ran.carry.masks), strict=True):
        assert (a is None and b is None) or torch.equal(a, b)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes_give_the_one_process_table(swept, tmp_path):
    *_, csv_text = swept
    out = tmp_path / "tr"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2"]
    cmd += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "pure_prune", "sweep"]
    cmd += [
        "--model-cfg",
        '{"sizes": [64, 16, 16, 10]}',
        "--criteria",
        "magnitude,random",
        "--compression",
        "2,8",
    ]
    cmd += ["--seeds", "2", "--epochs", "2", "--finetune-epochs", "1", "--batch-size", "128", "--eager"]
    cmd += ["--threads", "1", "--no-plots", "--save-dir", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[rank 1] point " in proc.stderr  # rank 1 computed points too
    assert "| magnitude | global | no |" in proc.stdout and "4 points computed" in proc.stdout
    assert (out / "sweep.csv").read_text() == csv_text
