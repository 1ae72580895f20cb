"""A run's save directory: one run at a time (the lock), nothing written before every check passed,
a loss that diverges, partial writes of a killed run, damaged ``run.json``, kill -9 at any point."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pure_prune import tree
from pure_prune.app import checkpoint, cli, report, run_dir, runconfig, runner
from pure_prune.app.runconfig import RunConfig

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"sizes": (64, 16, 16, 10)}


def tiny(tmp_path: Path, name: str = "run", **knobs) -> RunConfig:
    base = dict(
        model_cfg=TINY,
        epochs=1,
        batch_size=128,
        pruning_times=1,
        compile=False,
        progress=False,
        save_dir=str(tmp_path / name),
    )
    return dataclasses.replace(RunConfig(), **{**base, **knobs})


def quiet(_: str) -> None:
    pass


def files(save: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in save.rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------- the lock


def test_a_save_dir_in_use_is_refused_before_anything_is_written(tmp_path):
    cfg = tiny(tmp_path)
    save = Path(cfg.save_dir)
    with run_dir.claim(save):
        assert run_dir.holder(save) == os.getpid()
        for resume in (False, True):
            with pytest.raises(
                ValueError, match=rf"save dir .*run' is in use by another run \(pid {os.getpid()}\)"
            ):
                runner.run(cfg, resume=resume, log=quiet)
        assert [p.name for p in save.iterdir()] == [run_dir.LOCK]  # the refused run wrote nothing
    assert run_dir.holder(save) is None  # released; the file stays, and does not block a run
    res = runner.run(cfg, log=quiet)
    assert [r["round"] for r in res.rounds] == [0, 1]
    assert (save / run_dir.LOCK).read_text().strip() == str(os.getpid())


def test_the_lock_without_fcntl_is_an_exclusive_file(tmp_path):
    save = tmp_path / "w"
    with run_dir.claim(save, flock=False):
        assert run_dir.holder(save, flock=False) == os.getpid()
        with pytest.raises(
            ValueError, match=rf"in use by another run \(pid {os.getpid()}\); if no such process"
        ):
            with run_dir.claim(save, flock=False):
                pass
        with pytest.raises(ValueError, match="delete .*\\.lock"):
            run_dir.refuse_if_in_use(save, flock=False)
    assert not (save / run_dir.LOCK).exists() and run_dir.holder(save, flock=False) is None


SLOW_RUN = """
method = "imp"
rate = 0.3
pruning_times = 3
epochs = 2
batch_size = 32
compile = false
threads = 1
progress = false
model_cfg = { sizes = [64, 32, 32, 10] }
"""


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pure_prune", "run", *args]


@pytest.mark.slow
def test_two_concurrent_runs_the_second_is_refused_and_the_first_is_intact(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text(SLOW_RUN)
    save = tmp_path / "shared"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        _cli("--config", str(config), "--save-dir", str(save)), env=env, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while run_dir.holder(save) is None and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert first.poll() is None, "the first run ended before the second started"
    cfg = runconfig.from_mapping({**runconfig.load_toml(config), "save_dir": str(save)})
    with pytest.raises(ValueError, match=rf"in use by another run \(pid {first.pid}\)"):
        runner.run(cfg, log=quiet)
    assert cli.main(["run", "--config", str(config), "--save-dir", str(save), "--resume"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("pure-prune: error: save dir") and f"(pid {first.pid})" in err and err.count("\n") == 1
    )
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    digest = runconfig.config_hash(cfg)
    assert json.loads((save / "run.json").read_text())["config_hash"] == digest
    for r in range(4):  # every checkpoint is the first run's, whole
        meta = checkpoint.load(save / "checkpoints" / f"round_{r:04d}.safetensors")[1]
        assert (meta["round"], meta["config_hash"]) == (r, digest)
    rows = [json.loads(x) for x in (save / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    log = (save / "run.log").read_text()
    assert log.count("run imp on mlp/digits") == 1 and "in use" not in log


# ----------------------------------------------------------------------------- checked before writing


def _npz(path: Path, x_train, y_train, x_test, y_test) -> Path:
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


@pytest.mark.parametrize(
    ("knobs", "needle"),
    [
        (
            {"method": "one_shot", "struct": "nm", "nm": "2:3", "finetune_epochs": 1},
            r"nm '2:3' does not fit model 'mlp': n_of_m: m=3 does not divide axis -1 of length 64 in score 'fc1.weight'",
        ),
        ({"exclude": ("*",)}, r"exclude \['\*'\] with struct 'unstructured' leaves nothing to prune"),
        (
            {"exclude": ("conv1.*",)},
            r"exclude glob 'conv1.\*' matches no prunable leaf of model 'mlp'; its prunable",
        ),
        (
            {"model": "lstm_lm", "model_cfg": {}},
            "model 'lstm_lm' cannot read data set 'digits'.*integer token ids",
        ),
        (
            {"model_cfg": {"sizes": (64, 16, 3)}},
            r"has label [3-9] in its train split, but model 'mlp' has 3 classes",
        ),
        ({"model_cfg": {"sizes": (64, -3, 10)}}, r"model 'mlp' cannot be built with model_cfg .*-3"),
        ({"model_cfg": {"widths": 3}}, r"model 'mlp' cannot be built with model_cfg \{'widths': 3\}"),
        ({"threads": -2}, r"threads must be >= 1 .*got -2"),
        (
            {"method": "rsst", "exclude": ("fc1.*", "fc2.*")},
            "with struct 'channels' leaves nothing to prune: .*needs at least one prunable channel group",
        ),
    ],
)
def test_bad_settings_are_refused_before_the_save_dir_exists(tmp_path, knobs, needle):
    cfg = tiny(tmp_path, **knobs)
    with pytest.raises(ValueError, match=needle):
        runner.run(cfg, log=quiet)
    assert not Path(cfg.save_dir).exists()


def test_bad_data_files_are_refused_before_the_save_dir_exists(tmp_path):
    flat = _npz(
        tmp_path / "flat.npz",
        np.zeros(100, np.float32),
        np.zeros(100, np.int64),
        np.zeros(20, np.float32),
        np.zeros(20, np.int64),
    )
    cfg = tiny(tmp_path, data="npz", root=str(flat), model_cfg={}, batch_size=32)
    with pytest.raises(ValueError, match=r"x_train of shape \(100,\): one scalar per sample"):
        runner.run(cfg, log=quiet)
    huge = _npz(
        tmp_path / "huge.npz",
        np.zeros((100, 4), np.float32),
        np.full(100, 2**40),
        np.zeros((20, 4), np.float32),
        np.zeros(20, np.int64),
    )
    with pytest.raises(ValueError, match="1099511627776"):
        runner.run(dataclasses.replace(cfg, root=str(huge)), log=quiet)
    with pytest.raises(FileNotFoundError):
        runner.run(dataclasses.replace(cfg, root=str(tmp_path / "missing.npz")), log=quiet)
    assert not Path(cfg.save_dir).exists()


# ----------------------------------------------------------------------------- divergence


def test_a_loss_that_turns_nan_stops_the_run_with_a_marked_row(tmp_path):
    cfg = tiny(tmp_path, lr=1e6, pruning_times=2)
    lines: list[str] = []
    with pytest.raises(runner.Diverged, match=r"the run diverged: loss is nan in round 0, epoch 0") as info:
        runner.run(cfg, log=lines.append)
    assert (info.value.round, info.value.epoch, info.value.metric) == (0, 0, "loss")
    save = Path(cfg.save_dir)
    assert not (save / "checkpoints").exists()  # nothing of the diverged round is checkpointed
    rows = [json.loads(x) for x in (save / "rounds.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["diverged"] == "loss nan in round 0, epoch 0"
    assert rows[0]["train_loss"] is None and rows[0]["sparsity"] == 0.0 and rows[0]["epochs"] == 1
    table = list(csv.DictReader((save / "summary.csv").open()))
    assert table[0]["diverged"] == "loss nan in round 0, epoch 0" and table[0]["round"] == "0"
    assert "round 0/2: stopped, the run diverged" in lines[-1]
    summary = report.summarize(report.load_run(save))  # the report still reads the run
    assert summary["rounds"] == 1 and summary["final_accuracy"] is not None
    # the row check: non-finite training or test loss of a finished round (several-seed runs)
    out = runner.RoundOut(None, [{"epoch": 3.0, "loss": 0.5}], None)
    with pytest.raises(runner.Diverged, match="test_loss is inf in round 4;") as info:
        runner.check_finite(4, out, {"train_loss": 0.5, "test_loss": float("inf")})
    assert info.value.row == {"train_loss": 0.5, "test_loss": float("inf")}
    with pytest.raises(runner.Diverged, match="train_loss is nan in round 1;"):
        runner.check_finite(1, out, {"train_loss": 0.5, "per_seed": {"train_loss": [0.5, float("nan")]}})


def test_several_seeds_that_diverge_stop_after_the_round(tmp_path):
    cfg = tiny(tmp_path, lr=1e6, seeds=2, eval_every_epoch=False)
    with pytest.raises(runner.Diverged, match=r"loss is nan in round 0, epoch 0"):
        runner.run(cfg, log=quiet)
    rows = [json.loads(x) for x in (Path(cfg.save_dir) / "rounds.jsonl").read_text().splitlines()]
    assert rows[0]["diverged"] == "loss nan in round 0, epoch 0" and rows[0]["train_loss"] is None
    assert (
        rows[0]["per_seed"]["train_loss"] == [None, None] and len(rows[0]["per_seed"]["train_accuracy"]) == 2
    )
    assert rows[0]["sparsity"] == 0.0 and rows[0]["params_total"] == 64 * 16 + 16 * 16 + 16 * 10 + 42


# ----------------------------------------------------------------------------- damaged files, resume


def test_resume_removes_partial_writes_of_a_killed_run(tmp_path):
    cfg = tiny(tmp_path, pruning_times=2)
    runner.run(cfg, log=quiet)
    save = Path(cfg.save_dir)
    whole = checkpoint.load(save / "checkpoints" / "round_0002.safetensors")[0]
    (save / "checkpoints" / "round_0002.safetensors").unlink()
    partials = [
        save / "checkpoints" / ".round_0002.safetensors.k3j_9zq1.tmp",
        save / ".rounds.jsonl.ab12cd34.tmp",
        save / ".run.json.x9y8z7w6.tmp",
    ]
    for p in partials:
        p.write_bytes(b"half a file")
    mine = save / "checkpoints" / "notes.tmp"  # not a partial write of a run: kept
    mine.write_text("mine")
    lines: list[str] = []
    res = runner.run(cfg, resume=True, log=lines.append)
    assert not any(p.exists() for p in partials) and mine.exists()
    assert sum("a partial write left by a run that was killed" in x for x in lines) == 3
    assert [r["round"] for r in res.rounds] == [0, 1, 2]
    again = checkpoint.load(save / "checkpoints" / "round_0002.safetensors")[0]
    for name in ("params", "masks", "opt_state"):
        assert all(
            x is y is None or torch.equal(x, y)
            for x, y in zip(tree.leaves(whole[name]), tree.leaves(again[name]))
        )


def test_a_directory_with_only_a_lock_or_partial_files_is_a_fresh_start(tmp_path):
    cfg = tiny(tmp_path)
    save = Path(cfg.save_dir)
    save.mkdir()
    (save / run_dir.LOCK).write_text("12345\n")  # a run killed before it wrote run.json
    (save / ".run.json.abcd1234.tmp").write_text("{")
    res = runner.run(cfg, log=quiet)
    assert len(res.rounds) == 2 and not (save / ".run.json.abcd1234.tmp").exists()


def test_a_damaged_run_json_is_refused_with_a_clear_message(tmp_path, capsys):
    cfg = tiny(tmp_path)
    runner.run(cfg, log=quiet)
    info = Path(cfg.save_dir) / "run.json"
    good = info.read_text()
    cases = [
        (good[: len(good) // 2], r"run.json' is not valid JSON .*: truncated or edited"),
        ("\xff\xfe", r"run.json' is not valid JSON"),
        ("[1, 2]", r"is not a pure-prune run record \(format 'list'"),
        (
            good.replace('"rate": 0.2', '"rate": 0.3'),
            r"its config hashes to \w+, not to its stored config_hash .*edited by hand",
        ),
        (
            good.replace('"rate": 0.2', '"rate": "x"'),
            r"holds a config that does not parse .*'rate' must be float",
        ),
        (json.dumps({**json.loads(good), "config": None}), "lacks its config or config_hash"),
    ]
    for text, needle in cases:
        info.write_text(text) if text != "\xff\xfe" else info.write_bytes(b"\xff\xfe")
        before = files(Path(cfg.save_dir))
        with pytest.raises(ValueError, match=needle):
            runner.run(cfg, resume=True, log=quiet)
        assert cli.main(["run", "--resume", "--save-dir", cfg.save_dir, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("pure-prune: error: ") and err.count("\n") == 1 and "Traceback" not in err
        assert files(Path(cfg.save_dir)) == before


# ----------------------------------------------------------------------------- kill -9 at any point

CHAIN = """
method = "imp"
rate = 0.3
pruning_times = 4
epochs = 2
rewind_epoch = 1
batch_size = 32
compile = false
threads = 1
progress = false
model_cfg = { sizes = [64, 32, 32, 10] }
"""


def _kill_when(proc: subprocess.Popen, ready, deadline_s: float = 120) -> None:
    deadline = time.monotonic() + deadline_s
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_kill_9_at_any_point_then_resume_is_bit_identical(tmp_path):
    """Killed while starting (before run.json), right after run.json, inside a round, right as a
    checkpoint appears (often mid-write of the tables), and resumed each time with the same
    command: the last checkpoint equals an uninterrupted run's, bit for bit."""
    config = tmp_path / "chain.toml"
    config.write_text(CHAIN)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole = subprocess.run(
        _cli("--config", str(config), "--save-dir", str(tmp_path / "whole")),
        env=env,
        capture_output=True,
        text=True,
    )
    assert whole.returncode == 0, whole.stderr
    save = tmp_path / "killed"
    ckpt = save / "checkpoints"
    points = [
        lambda: (save / run_dir.LOCK).exists(),  # claimed, run.json maybe not yet written
        lambda: (save / "run.json").exists(),
        lambda: (ckpt / "round_0001.safetensors").exists(),
        lambda: (
            any(p.name.startswith(".round_0003") for p in ckpt.glob(".*"))
            or (ckpt / "round_0003.safetensors").exists()
        ),
    ]
    for ready in points:
        proc = subprocess.Popen(
            _cli("--config", str(config), "--save-dir", str(save), "--resume"),
            env=env,
            stderr=subprocess.DEVNULL,
        )
        _kill_when(proc, ready)
    done = subprocess.run(
        _cli("--config", str(config), "--save-dir", str(save), "--resume"),
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    a = checkpoint.load(tmp_path / "whole" / "checkpoints" / "round_0004.safetensors")[0]
    b = checkpoint.load(ckpt / "round_0004.safetensors")[0]
    for name in ("params", "state", "masks", "opt_state", "rewind"):
        pairs = list(zip(tree.leaves(a[name]), tree.leaves(b[name])))
        assert all(x is y is None or torch.equal(x, y) for x, y in pairs), name
    rows = [json.loads(x) for x in (save / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == list(range(5))
    assert not [p for p in save.rglob(".*.tmp")]
