"""pure-prune run --seeds N: for every method the vmapped seeds equal the single-seed runs; rows,
tables, checkpoints, resume, compiled steps; runs saved with sequential seeds are refused."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math

import pytest
import torch

from pure_prune import seeds, tree
from pure_prune.app import checkpoint, cli, runconfig, runner
from pure_prune.app.runconfig import RunConfig
from pure_prune.testing import close

TINY = {"sizes": (64, 16, 16, 10)}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(tmp_path, name: str, **knobs) -> RunConfig:
    base = dict(
        model_cfg=TINY, epochs=2, batch_size=128, compile=False, progress=False, save_dir=str(tmp_path / name)
    )
    return dataclasses.replace(RunConfig(), **{**base, **knobs})


def quiet(_: str) -> None:
    pass


def assert_seed_equals_single(multi: runner.RunResult, i: int, single: runner.RunResult) -> None:
    """Seed ``i`` of the several-seed run equals the single-seed run: params, masks, per-round metrics."""
    for name in ("params", "masks", "opt_state"):
        a, b = seeds.seed_slice(getattr(multi.carry, name), i), getattr(single.carry, name)
        pairs = list(zip(tree.leaves(a), tree.leaves(b), strict=True))
        assert pairs
        for x, y in pairs:
            assert (x is None) == (y is None)
            if x is None:
                continue
            if x.dtype == torch.bool:
                assert torch.equal(x, y), name
            else:
                close.assert_close(x, y, 1e-5, what=name)
    for row, one in zip(multi.rounds, single.rounds, strict=True):
        for m in runner.SEED_METRICS:
            assert row["per_seed"][m][i] == pytest.approx(one[m], abs=1e-6), (row["round"], m)


@pytest.mark.parametrize(
    ("method", "knobs"),
    [
        ("imp", {"rate": 0.5, "pruning_times": 2, "rewind_epoch": 1}),
        ("imp", {"rate": 0.5, "pruning_times": 1, "control": "reinit"}),
        ("imp", {"rate": 0.5, "pruning_times": 1, "control": "random_masks", "importance": "random"}),
        ("one_shot", {"sparsity": 0.7, "finetune_epochs": 1, "struct": "rows"}),
        (
            "gradual",
            {"sparsity": 0.6, "gradual_start": 1, "gradual_every": 1, "gradual_steps": 2, "epochs": 3},
        ),
        ("rsst", {"rate": 0.5, "pruning_times": 2, "finetune_epochs": 1, "criteria": "l1"}),
        ("rsst", {"rate": 0.5, "pruning_times": 1, "finetune_epochs": 1, "criteria": "saliency"}),
        ("rsst", {"rate": 0.5, "pruning_times": 1, "finetune_epochs": 1, "criteria": "remain"}),
        ("refill", {"rate": 0.5, "pruning_times": 2, "fillback_rate": 0.2}),
        ("refill", {"rate": 0.5, "pruning_times": 1, "fillback_rate": 0.5, "criteria": "l1"}),
        ("distill", {"rate": 0.5, "pruning_times": 2, "finetune_epochs": 1}),
        ("dst", {"dst": "rigl", "sparsity": 0.5, "update_every": 3, "lr": 0.2}),
        ("dst", {"dst": "set", "sparsity": 0.5, "update_every": 3, "lr": 0.2, "distribution": "erk"}),
        ("dst", {"dst": "ste", "sparsity": 0.5, "update_every": 3, "lr": 0.2, "scope": "global"}),
    ],
)
def test_vmapped_seeds_equal_single_seed_runs(tmp_path, method, knobs):
    assert set(runner.VMAPPED_METHODS) == set(runconfig.METHODS)  # every method has seeded rounds
    lines = []
    multi = runner.run(tiny(tmp_path, "m", method=method, seed=3, seeds=2, **knobs), log=lines.append)
    assert "2 seeds (keys 3..4) as one vmapped program" in lines[0]
    for i, key in enumerate((3, 4)):
        single = runner.run(tiny(tmp_path, f"s{key}", method=method, seed=key, **knobs), log=quiet)
        assert_seed_equals_single(multi, i, single)
    a, b = (seeds.seed_slice(multi.carry.params, i) for i in (0, 1))
    assert not torch.equal(a["fc1"]["weight"], b["fc1"]["weight"])  # the seeds differ
    if method == "dst":  # every epoch moved the masks (so the equal masks above are per-seed regrowth)
        assert all(r["pruned"] for r in multi.rounds)


def test_seed_rows_tables_and_checkpoints(tmp_path):
    lines = []
    cfg = tiny(tmp_path, "m", method="imp", rate=0.5, pruning_times=2, seeds=2)
    res = runner.run(cfg, log=lines.append)
    save = res.save_dir
    for row in res.rounds:
        assert row["seeds"] == 2 and row["keys"] == [0, 1] and row["mode"] == "vmap"
        a, b = row["per_seed"]["test_accuracy"]
        assert row["test_accuracy"] == pytest.approx((a + b) / 2)
        assert row["test_accuracy_std"] == pytest.approx(abs(a - b) / math.sqrt(2))  # sample std of 2 values
        assert row["sparsity"] == pytest.approx([0.0, 0.5, 0.75][row["round"]], abs=1e-3)
        assert set(row["layer_sparsity"]) == {"fc1.weight", "fc2.weight", "fc3.weight"}
        assert 0 < row["last_epoch_seconds"] <= row["train_seconds"]  # the one program's epoch
    assert [json.loads(x) for x in (save / "rounds.jsonl").read_text().splitlines()] == json.loads(
        json.dumps(res.rounds)
    )
    table = list(csv.DictReader((save / "summary.csv").open()))
    assert [r["round"] for r in table] == ["0", "1", "2"] and table[2]["seeds"] == "2"
    assert float(table[2]["test_accuracy_std"]) == pytest.approx(res.rounds[2]["test_accuracy_std"])
    info = json.loads((save / "run.json").read_text())
    assert info["seeds"] == {"keys": [0, 1], "mode": "vmap", "dirs": []}
    trees, meta = checkpoint.load(save / "checkpoints" / "round_0002.safetensors")
    assert trees["params"]["fc1"]["weight"].shape == (2, 16, 64) and trees["opt_state"]["count"].shape == (2,)
    assert meta["rng"] == {"seed": 0, "next_round": 3, "keys": [0, 1]}
    assert any(" ± " in x and "test acc" in x for x in lines)


@pytest.mark.parametrize(
    ("method", "knobs"),
    [
        ("imp", {"rate": 0.5, "pruning_times": 2, "rewind_epoch": 1}),
        ("rsst", {"rate": 0.5, "pruning_times": 1, "finetune_epochs": 1, "criteria": "l1"}),
        ("distill", {"rate": 0.5, "pruning_times": 1, "finetune_epochs": 1}),
        ("dst", {"dst": "rigl", "sparsity": 0.5, "update_every": 3, "lr": 0.2, "epochs": 3}),
    ],
)
def test_killed_seed_run_resumes_to_the_same_result(tmp_path, method, knobs):
    """The last checkpoint is deleted as if the run was killed in its last round; the resumed run
    reloads the stacked extras (RSST's pending units, the teachers) and ends bit-identical."""
    cfg = tiny(tmp_path, "m", method=method, seeds=2, **knobs)
    whole = runner.run(cfg, log=quiet)
    last = len(whole.rounds) - 1
    (whole.save_dir / "checkpoints" / f"round_{last:04d}.safetensors").unlink()
    lines = []
    resumed = runner.run(cfg, resume=True, log=lines.append)
    assert lines[0] == f"resume: loaded round {last - 1} from round_{last - 1:04d}.safetensors; 1 rounds left"
    for name in ("params", "masks", "opt_state", "extra"):
        pairs = zip(
            tree.leaves(getattr(whole.carry, name)), tree.leaves(getattr(resumed.carry, name)), strict=True
        )
        for x, y in pairs:
            assert (x is None and y is None) or torch.equal(x, y), name
    assert resumed.rounds[-1]["per_seed"] == whole.rounds[-1]["per_seed"]


def test_a_run_saved_with_sequential_seeds_is_refused(tmp_path):
    """Earlier versions ran the seeds of rsst, refill, distill and dst one after another, each in
    ``seed_<k>/``; such a directory is not mistaken for a vmapped run."""
    cfg = tiny(tmp_path, "m", method="rsst", rate=0.5, pruning_times=1, finetune_epochs=1, epochs=1, seeds=2)
    res = runner.run(cfg, log=quiet)
    info = json.loads((res.save_dir / "run.json").read_text())
    info["seeds"] = {"keys": [0, 1], "mode": "sequential", "dirs": ["seed_0", "seed_1"]}
    (res.save_dir / "run.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"seeds ran one after another.*seed_0, .*seed_1\); resume those"):
        runner.run(cfg, resume=True, log=quiet)


def test_seeds_knob_checks_hash_and_cli(tmp_path, capsys):
    with pytest.raises(ValueError, match="seeds must be >= 1, got 0"):
        RunConfig(seeds=0).check()
    with pytest.raises(TypeError, match="config key 'seeds' must be int"):
        runconfig.from_mapping({"seeds": 2.5})
    assert RunConfig(seed=3, seeds=4).seed_keys() == [3, 4, 5, 6]
    assert RunConfig(seed=3, seeds=4).resolved().save_dir == "runs/imp-mlp-digits-seeds3-6"
    # seeds = 1 (like every hash-neutral knob at its default) leaves the hash of runs saved before the knob existed unchanged
    legacy = {
        k: v
        for k, v in RunConfig().resolved().to_json().items()
        if k not in (*runconfig.NOT_HASHED, *runconfig.HASH_NEUTRAL)
    }
    expected = hashlib.sha256(json.dumps(legacy, sort_keys=True).encode()).hexdigest()
    assert runconfig.config_hash(RunConfig()) == expected
    assert runconfig.config_hash(RunConfig(seeds=2)) != expected
    argv = ["run", "--model-cfg", '{"sizes": [64, 16, 16, 10]}', "--epochs", "1", "--pruning-times", "1"]
    argv += ["--eager", "--no-progress", "--batch-size", "128", "--save-dir", str(tmp_path / "c")]
    assert cli.main([*argv, "--seeds", "0"]) == 2
    assert "seeds must be >= 1" in capsys.readouterr().err
    assert cli.main([*argv, "--seeds", "2"]) == 0
    assert "(mean ± std over 2 seeds)" in capsys.readouterr().out


def test_compiled_seed_steps_compile_once_for_all_rounds(tmp_path):
    lines = []
    cfg = tiny(tmp_path, "c", method="imp", rate=0.5, pruning_times=2, epochs=1, seeds=2, compile=True)
    res = runner.run(dataclasses.replace(cfg, backend="eager"), log=lines.append)
    assert [r["compiled_graphs"] for r in res.rounds] == [2, 0, 0]  # the vmapped train and eval steps
    assert "compiled new step (2 graphs" in lines[1] and sum("reused compiled step" in x for x in lines) == 2
    eager = runner.run(dataclasses.replace(cfg, compile=False, save_dir=str(tmp_path / "e")), log=quiet)
    for x, y in zip(tree.leaves(res.carry.params), tree.leaves(eager.carry.params), strict=True):
        close.assert_close(x, y, 1e-4)


@pytest.mark.parametrize(
    ("method", "knobs"),
    [
        ("rsst", {"rate": 0.5, "pruning_times": 1, "finetune_epochs": 1, "criteria": "l1"}),
        ("distill", {"rate": 0.5, "pruning_times": 1, "finetune_epochs": 1}),
        ("dst", {"dst": "ste", "sparsity": 0.5, "update_every": 3, "lr": 0.2, "epochs": 2}),
    ],
)
def test_compiled_method_steps_equal_eager_ones(tmp_path, method, knobs):
    """The penalized, distillation and straight-through seed steps compile (fullgraph) and give the
    eager program's result; the method's step compiles in the round that first uses it, once."""
    cfg = tiny(tmp_path, "c", method=method, seeds=2, compile=True, backend="eager", **{"epochs": 1, **knobs})
    res = runner.run(cfg, log=quiet)
    graphs = [r["compiled_graphs"] for r in res.rounds]
    assert graphs[0] >= 1 and sum(graphs[1:]) <= 1, graphs
    eager = runner.run(dataclasses.replace(cfg, compile=False, save_dir=str(tmp_path / "e")), log=quiet)
    for x, y in zip(tree.leaves(res.carry.params), tree.leaves(eager.carry.params), strict=True):
        close.assert_close(x, y, 1e-4)
