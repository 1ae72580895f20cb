"""pure-prune run (runner + runconfig): configs, the save directory, metrics, every method, resume."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from pure_prune import tree
from pure_prune.app import checkpoint, cli, run_context, runconfig, runner
from pure_prune.app.runconfig import RunConfig

TINY = {"sizes": (64, 16, 16, 10)}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(tmp_path: Path, name: str = "run", **knobs) -> RunConfig:
    base = dict(
        model_cfg=TINY, epochs=2, batch_size=128, compile=False, progress=False, save_dir=str(tmp_path / name)
    )
    return dataclasses.replace(RunConfig(), **{**base, **knobs})


# ----------------------------------------------------------------------------- configuration


def test_config_from_toml_and_flags(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        'method = "imp"\npruning-times = 20\nrate = 0.2\ndecreasing_lr = [10, 20]\nexclude = ["fc1.*"]\n'
    )
    cfg = runconfig.from_mapping(runconfig.load_toml(path))
    assert (cfg.pruning_times, cfg.rate, cfg.decreasing_lr, cfg.exclude) == (20, 0.2, (10, 20), ("fc1.*",))
    args = cli._parser().parse_args(
        ["run", "--config", str(path), "--rate", "0.3", "--eager", "--decreasing-lr", "5,9"]
    )
    merged = cli._run_config(args)
    assert (merged.rate, merged.pruning_times, merged.compile, merged.decreasing_lr) == (
        0.3,
        20,
        False,
        (5, 9),
    )
    r = cfg.resolved()
    assert (r.struct, r.schedule, r.criteria, r.save_dir) == (
        "unstructured",
        "geometric",
        "remain",
        "runs/imp-mlp-digits-seed0",
    )
    assert RunConfig(method="rsst").resolved().struct == "channels"
    assert RunConfig(method="gradual").resolved().schedule == "linear_steps"
    bad = tmp_path / "bad.toml"
    bad.write_text("rate = ")
    with pytest.raises(ValueError, match="not valid TOML"):
        runconfig.load_toml(bad)


@pytest.mark.parametrize(
    ("knobs", "error", "needle"),
    [
        (
            {"learning_rate": 0.1},
            ValueError,
            "unknown config key 'learning_rate'; known keys: alpha, backend",
        ),
        ({"method": "obd"}, ValueError, "known methods: one_shot, gradual, imp, rsst, refill, distill, dst"),
        ({"rate": 1.0}, ValueError, r"rate must be in \[0, 1\)"),
        ({"rewind_epoch": 30, "epochs": 30}, ValueError, "rewind_epoch 30 is past the end of training"),
        ({"fillback_rate": 0.1}, ValueError, "fillback_rate = 0.1 has no effect with method 'imp'"),
        ({"struct": "nm"}, ValueError, "struct 'nm' has a fixed sparsity"),
        ({"method": "rsst", "struct": "rows"}, ValueError, "struct must be 'channels'"),
        ({"decreasing_lr": (20, 10)}, ValueError, "decreasing_lr must be increasing"),
        ({"criteria": "l2", "method": "refill"}, ValueError, "unknown criteria 'l2' for method 'refill'"),
        ({"importance": "oracle"}, ValueError, "unknown importance 'oracle'"),
        ({"epochs": "30"}, TypeError, "config key 'epochs' must be int"),
        ({"compile": 1}, TypeError, "config key 'compile' must be bool"),
        (
            {"method": "gradual", "gradual_start": 30, "gradual_every": 15, "epochs": 60},
            ValueError,
            "past the end",
        ),
    ],
)
def test_bad_configs_give_clear_errors(knobs, error, needle):
    with pytest.raises(error, match=needle):
        runconfig.from_mapping(knobs).check()


def test_config_hash_ignores_only_what_cannot_change_results():
    a = RunConfig()
    assert runconfig.config_hash(a) == runconfig.config_hash(
        dataclasses.replace(a, save_dir="x", threads=3, progress=False)
    )
    assert runconfig.config_hash(a) != runconfig.config_hash(dataclasses.replace(a, rate=0.3))
    assert runconfig.config_hash(a) != runconfig.config_hash(dataclasses.replace(a, compile=False))
    assert runconfig.parse_nm("2:4") == (2, 4)
    with pytest.raises(ValueError, match="n:m"):
        runconfig.parse_nm("2-4")


def test_n_rounds_per_method():
    assert runner.n_rounds(RunConfig(method="imp", pruning_times=20)) == 21
    assert runner.n_rounds(RunConfig(method="rsst", pruning_times=2)) == 4
    assert runner.n_rounds(RunConfig(method="one_shot")) == 2
    assert runner.n_rounds(RunConfig(method="dst", epochs=7)) == 7
    source_a = RunConfig(method="gradual", sparsity=0.4, gradual_start=30, gradual_every=15, epochs=100)
    assert runner.n_rounds(source_a) == 6


# ----------------------------------------------------------------------------- a run and its files


def test_imp_run_writes_checkpoints_metrics_and_logs(tmp_path):
    lines = []
    cfg = tiny(tmp_path, method="imp", rate=0.5, pruning_times=2, rewind_epoch=1)
    res = runner.run(cfg, log=lines.append)
    save = res.save_dir
    assert [r["round"] for r in res.rounds] == [0, 1, 2]
    assert [r["sparsity"] for r in res.rounds] == pytest.approx([0.0, 0.5, 0.75], abs=1e-4)
    assert set(res.rounds[2]["layer_sparsity"]) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert all(0.0 <= r["test_accuracy"] <= r["best_test_accuracy"] <= 1.0 for r in res.rounds)
    jsonl = [json.loads(x) for x in (save / "rounds.jsonl").read_text().splitlines()]
    assert jsonl == json.loads(json.dumps(res.rounds))
    rows = list(csv.DictReader((save / "summary.csv").open()))
    assert [r["round"] for r in rows] == ["0", "1", "2"] and "test_accuracy" in rows[0]
    trees, meta = checkpoint.load(save / "checkpoints" / "round_0002.safetensors")
    assert set(trees) == {"params", "state", "opt_state", "masks", "rewind", "extra"}
    assert meta["round"] == 2 and meta["rng"] == {"seed": 0, "next_round": 3} and len(meta["metrics"]) == 3
    assert all(torch.equal(a, b) for a, b in zip(tree.leaves(trees["params"]), tree.leaves(res.carry.params)))
    info = json.loads((save / "run.json").read_text())
    assert info["config_hash"] == runconfig.config_hash(cfg) and info["input_shape"] == [64]
    assert sum("prune: step" in x for x in lines) == 2 and sum("eager (compile off)" in x for x in lines) == 3
    assert (save / "run.log").read_text().splitlines() == lines


@pytest.mark.parametrize(
    ("method", "knobs", "rounds"),
    [
        ("one_shot", {"sparsity": 0.7, "finetune_epochs": 1}, 2),
        ("one_shot", {"struct": "nm", "nm": "2:4", "sparsity": 0.5, "finetune_epochs": 1}, 2),
        (
            "gradual",
            {"sparsity": 0.6, "gradual_start": 1, "gradual_every": 1, "gradual_steps": 2, "epochs": 3},
            3,
        ),
        ("rsst", {"rate": 0.5, "pruning_times": 1, "finetune_epochs": 1, "criteria": "l1"}, 3),
        ("refill", {"rate": 0.5, "pruning_times": 1, "fillback_rate": 0.2}, 2),
        ("distill", {"rate": 0.5, "pruning_times": 1, "finetune_epochs": 1}, 2),
        ("dst", {"dst": "set", "sparsity": 0.5, "update_every": 4, "lr": 0.2}, 2),
        ("dst", {"dst": "ste", "sparsity": 0.5, "update_every": 4, "lr": 0.2}, 2),
    ],
)
def test_every_method_runs_through_the_runner(tmp_path, method, knobs, rounds):
    res = runner.run(tiny(tmp_path, method=method, **knobs), log=lambda _: None)
    assert len(res.rounds) == rounds
    assert res.rounds[-1]["sparsity"] > 0.3 and res.rounds[-1]["test_accuracy"] > 0.1


def test_compiled_run_compiles_once_and_logs_the_decisions(tmp_path):
    lines = []
    res = runner.run(
        tiny(tmp_path, method="imp", rate=0.5, pruning_times=2, epochs=1, compile=True, backend="eager"),
        log=lines.append,
    )
    # the train step, once (the eval step runs eagerly: run_context.build_context)
    assert [r["compiled_graphs"] for r in res.rounds] == [1, 0, 0]
    assert "compiled new step (1 graph," in lines[1] and sum("reused compiled step" in x for x in lines) == 2


# ----------------------------------------------------------------------------- refusals


def test_a_save_dir_is_never_overwritten(tmp_path):
    cfg = tiny(tmp_path, method="imp", pruning_times=1, epochs=1)
    runner.run(cfg, log=lambda _: None)
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=r"holds another run .*differing: rate: 0.2 -> 0.4"):
        runner.run(dataclasses.replace(cfg, rate=0.4), log=lambda _: None)
    with pytest.raises(ValueError, match="already holds this run, finished; pass --resume"):
        runner.run(cfg, log=lambda _: None)
    after = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert after == before
    lines = []
    runner.run(cfg, resume=True, log=lines.append)
    assert lines[-1] == "run already complete (2 rounds)"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds no pure-prune run"):
        runner.run(tiny(tmp_path, "other"), log=lambda _: None)


def test_corrupt_or_truncated_checkpoint_on_resume(tmp_path):
    cfg = tiny(tmp_path, method="imp", pruning_times=2, epochs=1)
    runner.run(cfg, log=lambda _: None)
    last = tmp_path / "run" / "checkpoints" / "round_0002.safetensors"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot resume: checkpoint .*round_0002.safetensors.* corrupt"):
        runner.run(cfg, resume=True, log=lambda _: None)
    flipped = bytearray(data)
    flipped[-5] ^= 0xFF
    last.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="Delete round_0002.safetensors to resume from the round before it"):
        runner.run(cfg, resume=True, log=lambda _: None)
    last.unlink()  # as the message says: resume from round 1
    res = runner.run(cfg, resume=True, log=lambda _: None)
    assert [r["round"] for r in res.rounds] == [0, 1, 2]


def test_cli_run_prints_errors_and_results(tmp_path, capsys):
    save = tmp_path / "c"
    argv = ["run", "--model-cfg", '{"sizes": [64, 16, 16, 10]}', "--epochs", "1", "--pruning-times", "1"]
    argv += ["--eager", "--no-progress", "--batch-size", "128", "--save-dir", str(save)]
    assert cli.main(argv) == 0
    assert "2 rounds, final test accuracy" in capsys.readouterr().out
    assert cli.main([*argv, "--rate", "1.5"]) == 2
    assert "rate must be in [0, 1)" in capsys.readouterr().err
    assert (
        cli.main(["run", "--resume", "--save-dir", str(save), "--no-progress"]) == 0
    )  # config from run.json


# kill -9 at any point, then --resume: tests/test_run_dir.py


def test_step_cache_is_checked_and_a_second_run_loads_the_saved_steps_with_identical_results(tmp_path):
    """``--step-cache``: the first run saves its compiled train and eval steps, a later run with the
    same steps loads them (no dynamo, no inductor) and ends bit-identical to the uncached compiled run;
    it is refused where it cannot apply, and it does not change the run's config hash."""
    cache = str(tmp_path / "steps")
    for bad in (dict(compile=False), dict(compile=True, backend="eager")):
        with pytest.raises(
            ValueError, match="step_cache .* needs compile on, backend 'inductor' and no compact"
        ):
            tiny(tmp_path, step_cache=cache, **bad).check()
    plain = runner.run(
        tiny(tmp_path, "plain", compile=True, pruning_times=1, step_cache="off"), log=lambda msg: None
    )
    first = runner.run(
        tiny(tmp_path, "first", compile=True, pruning_times=1, step_cache=cache), log=lambda msg: None
    )
    saved = sorted(p.name for p in Path(cache).iterdir())
    assert len(saved) == 1, saved  # the train step (the eval step runs eagerly)
    second = runner.run(
        tiny(tmp_path, "second", compile=True, pruning_times=1, step_cache=cache), log=lambda msg: None
    )
    assert sorted(p.name for p in Path(cache).iterdir()) == saved  # loaded, nothing new written
    # the saving run's compiles go through the run's counting backend; loaded steps compile nothing
    assert [r["compiled_graphs"] for r in first.rounds] == [1, 0]
    assert [r["compiled_graphs"] for r in second.rounds] == [0, 0]
    for res in (first, second):
        assert [r["test_accuracy"] for r in res.rounds] == [r["test_accuracy"] for r in plain.rounds]
        for a, b in zip(tree.leaves(res.carry.params), tree.leaves(plain.carry.params), strict=True):
            assert torch.equal(a, b)
    assert runconfig.config_hash(tiny(tmp_path, step_cache=cache)) == runconfig.config_hash(tiny(tmp_path))


def test_step_cache_auto_is_inductors_cache_folder_where_steps_compile_with_inductor(tmp_path, monkeypatch):
    """``step_cache="auto"`` (the default) resolves to ``pure_prune_steps`` in the inductor cache
    folder (``TORCHINDUCTOR_CACHE_DIR``) for inductor-compiled steps without compact stages, and
    to no folder otherwise; ``"off"`` is none; a folder given is used as it is."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    assert RunConfig().step_cache == "auto"
    auto = tiny(tmp_path, compile=True)
    assert run_context.step_cache_dir(auto) == str(tmp_path / "inductor" / "pure_prune_steps")
    for none in (
        dict(compile=False),
        dict(compile=True, backend="aot_eager"),
        dict(compile=True, compact=True, method="one_shot", struct="channels"),
        dict(compile=True, step_cache="off"),
        dict(compile=True, step_cache=None),
    ):
        cfg = tiny(tmp_path, **none)
        assert run_context.step_cache_dir(cfg) is None, none
        cfg.check()  # "auto" and "off" are accepted whatever the backend
    assert run_context.step_cache_dir(tiny(tmp_path, compile=True, step_cache="/x/y")) == "/x/y"


def test_step_cache_serves_the_vmapped_seed_steps_with_identical_results(tmp_path):
    """``--step-cache`` with several seeds: the vmapped train and eval steps are saved, a later run
    loads them, and both end bit-identical to the uncached compiled several-seed run."""
    cache = str(tmp_path / "steps")
    knobs = dict(compile=True, pruning_times=1, seeds=2)
    plain = runner.run(tiny(tmp_path, "plain", step_cache="off", **knobs), log=lambda msg: None)
    first = runner.run(tiny(tmp_path, "first", step_cache=cache, **knobs), log=lambda msg: None)
    saved = sorted(p.name for p in Path(cache).iterdir())
    second = runner.run(tiny(tmp_path, "second", step_cache=cache, **knobs), log=lambda msg: None)
    assert len(saved) == 2 and sorted(p.name for p in Path(cache).iterdir()) == saved  # train, eval
    for res in (first, second):
        assert [r["per_seed"]["test_accuracy"] for r in res.rounds] == [
            r["per_seed"]["test_accuracy"] for r in plain.rounds
        ]
        for a, b in zip(tree.leaves(res.carry.params), tree.leaves(plain.carry.params), strict=True):
            assert torch.equal(a, b)
