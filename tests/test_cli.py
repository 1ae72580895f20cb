"""The pure-prune command: demo and train end to end (tiny settings), and clear errors."""

import json

import pytest

from pure_prune.app import cli, cli_commands, cli_parser, cli_run, runner
from pure_prune.app.experiment import eval_batch_size, make_optimizer, setup

FAST = ["--epochs", "2", "--eager", "--no-progress", "--batch-size", "128"]


def test_demo_prints_before_after_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "demo.json"
    assert cli.main(["demo", *FAST, "--finetune-epochs", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "dense" in text and "pruned 80% (global |w|)" in text and "fine-tuned 1 epochs" in text
    rows = json.loads(out.read_text())["rows"]
    assert [r["sparsity"] for r in rows] == [0.0, pytest.approx(0.8, abs=1e-4), pytest.approx(0.8, abs=1e-4)]
    assert rows[1]["params_kept"] == rows[2]["params_kept"] < rows[0]["params_kept"]
    # sparsity counts the prunable weights, "params kept" every parameter (the dense biases too)
    weights, params = rows[0]["weights_total"], rows[0]["params_total"]
    biases = 256 + 256 + 10  # the default digits MLP 64-256-256-10
    assert params - weights == biases and rows[0]["weights_kept"] == weights
    assert (
        rows[1]["weights_kept"] == round(0.2 * weights)
        and rows[1]["params_kept"] == round(0.2 * weights) + biases
    )
    assert f"{round(0.2 * weights):,}/{weights:,}" in text and f"of the {weights:,} prunable weights" in text
    assert f"of all {params:,} parameters, the {biases:,} biases" in text
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in rows)


def test_train_command(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert cli.main(["train", "--model", "mlp", "--data", "digits", *FAST, "--out", str(out)]) == 0
    assert json.loads(out.read_text())["rows"][0]["test_accuracy"] > 0.5


@pytest.mark.parametrize("command", ["demo", "train"])
def test_demo_and_train_are_presets_of_run_with_the_same_numbers(tmp_path, command):
    """One key scheme: ``demo``/``train`` give exactly the numbers of ``pure-prune run`` with their
    preset's settings (the same loop, not a second pipeline)."""
    out = tmp_path / "cli.json"
    extra = ["--finetune-epochs", "1"] if command == "demo" else []
    assert cli.main([command, *FAST, "--seed", "3", *extra, "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    args = cli_parser.parser().parse_args([command, *FAST, "--seed", "3", *extra])
    cfg = cli_commands.preset(args, str(tmp_path / "run"))
    ran = runner.run(cfg, log=lambda msg: None).rounds
    assert rows[0]["test_accuracy"] == ran[0]["test_accuracy"] and rows[0]["test_loss"] == ran[0]["test_loss"]
    if command == "demo":
        assert cfg.method == "one_shot" and cfg.importance == "magnitude" and cfg.scope == "global"
        assert (
            rows[-1]["test_accuracy"] == ran[1]["test_accuracy"]
            and rows[-1]["sparsity"] == ran[1]["sparsity"]
        )
    else:
        assert len(ran) == 1 and len(rows) == 1


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "--model", "nope", *FAST], "known models: mlp"),
        (["train", "--data", "nope", *FAST], "known"),
        (["train", "--model", "lenet5", "--data", "digits", *FAST], "expects"),
    ],
)
def test_bad_names_and_shapes_give_clear_errors(argv, needle, capsys):
    assert cli.main(argv) == 2
    assert needle in capsys.readouterr().err


def test_python_dash_m_entry_point_exists():
    import importlib.util

    assert importlib.util.find_spec("pure_prune.__main__") is not None


def test_eval_batch_size_divides_when_it_can():
    assert eval_batch_size(360) == 360
    assert eval_batch_size(10000) == 2000
    assert 10000 % eval_batch_size(10000) == 0
    assert eval_batch_size(4099) == 2048  # 4099 is prime: equal batches are impossible


def test_make_optimizer_and_setup_errors():
    assert make_optimizer("adam", 1e-3).init is not None
    with pytest.raises(ValueError, match="known: sgd, adam, adamw"):
        make_optimizer("lion", 1e-3)
    with pytest.raises(ValueError, match="batch_size"):
        setup("mlp", "digits", batch_size=0, compile=False)
    with pytest.raises(ValueError, match="exceeds"):
        setup("mlp", "digits", batch_size=100_000, compile=False)


def test_explicit_mlp_sizes_set_the_input_width_and_are_checked_against_the_data():
    exp, init = setup("mlp", "mnist1d", model_cfg={"sizes": [40, 30, 10]}, compile=False)
    assert tuple(exp.model.input_shape) == (40,)
    params, _ = init(0)
    assert tuple(params["fc1"]["weight"].shape) == (30, 40)
    with pytest.raises(ValueError, match=r"model 'mlp' expects \(64,\)"):
        setup("mlp", "mnist1d", model_cfg={"sizes": [64, 30, 10]}, compile=False)


# ----------------------------------------------------------------------------- one line for a user's mistake


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("pure-prune: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_argument_mistakes_exit_2_at_parse_time(capsys):
    for argv in (
        ["train", "--threads", "-2"],
        ["sweep", "--threads", "0"],
        ["run", "--model-cfg", "[1, 2]"],
        ["run", "--model-cfg", "{sizes: 3}"],
    ):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert "expected a positive int" in err or "JSON" in err, err


def test_run_threads_and_report_out_on_a_file_are_one_line(tmp_path, capsys):
    assert cli.main(["run", "--threads", "-2", "--save-dir", str(tmp_path / "r"), *FAST[:2]]) == 2
    assert "threads must be >= 1" in _one_error_line(capsys) and not (tmp_path / "r").exists()
    taken = tmp_path / "taken"
    taken.write_text("mine")
    assert cli.main(["report", str(tmp_path), "--out", str(taken), "--no-plots"]) == 2
    assert f"--out '{taken}' exists and is not a folder" in _one_error_line(capsys)
    assert taken.read_text() == "mine"
    assert cli.main(["report", str(tmp_path / "nope"), "--no-plots", "--out", str(tmp_path / "o")]) == 2
    assert "is not a pure-prune run directory" in _one_error_line(capsys)


def test_a_refused_pickle_and_a_huge_label_are_one_line(tmp_path, capsys):
    import os
    import pickle

    import numpy as np

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo owned",))

    root = tmp_path / "cifar"
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (root / name).write_bytes(pickle.dumps(Evil()))
    assert cli.main(["train", "--data", "cifar10", "--root", str(root), *FAST]) == 2
    assert "refusing global" in _one_error_line(capsys)
    npz = tmp_path / "big.npz"
    x = np.zeros((100, 4), np.float32)
    np.savez(npz, x_train=x, y_train=np.full(100, 2**40), x_test=x[:20], y_test=np.zeros(20, np.int64))
    assert cli.main(["train", "--data", "npz", "--root", str(npz), *FAST]) == 2
    assert "1099511627776" in _one_error_line(capsys)
    npz.write_bytes(npz.read_bytes()[:100])  # a truncated file
    assert cli.main(["train", "--data", "npz", "--root", str(npz), *FAST]) == 2
    _one_error_line(capsys)


def test_debug_shows_the_traceback_and_bugs_keep_theirs(monkeypatch, tmp_path, capsys):
    argv = ["run", "--threads", "-2", "--save-dir", str(tmp_path / "r")]
    assert cli.main([*argv, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.rstrip().endswith(
        "pure-prune: error: threads must be >= 1 (leave it unset for torch's default), got -2"
    )

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_run, "prepare", interrupted)
    assert cli.main(argv) == 130
    assert capsys.readouterr().err == "pure-prune: interrupted\n"

    def bug(args):
        raise AssertionError("an internal invariant broke")

    monkeypatch.setattr(cli_run, "prepare", bug)
    with pytest.raises(AssertionError, match="internal invariant"):
        cli.main(argv)
    for error in (RuntimeError("inside torch"), KeyError("k"), IndexError("i")):

        def raiser(args, e=error):
            raise e

        monkeypatch.setattr(cli_run, "prepare", raiser)
        with pytest.raises(type(error)):
            cli.main(argv)


def test_every_flag_has_help_with_its_default_and_choices():
    import argparse

    ap = cli_parser.parser()
    sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == {"demo", "train", "run", "report", "sweep", "llm"}
    checked = 0
    for name, parser in sub.choices.items():
        assert any(a.dest == "debug" for a in parser._actions), name
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction) or not action.option_strings:
                continue
            text = action.help % {"default": action.default} if action.help else ""
            flag = f"{name} {action.option_strings[0]}"
            assert "default" in text.lower(), f"{flag}: no default in its help {text!r}"
            if action.default not in (None, False, True, argparse.SUPPRESS, {}, ()):
                assert str(action.default) in text, f"{flag}: default {action.default!r} not in {text!r}"
            for choice in action.choices or ():
                assert str(choice) in text, f"{flag}: choice {choice!r} not in {text!r}"
            checked += 1
    assert checked > 90
    run = sub.choices["run"]
    helps = {a.dest: a.help for a in run._actions}
    assert "one_shot, gradual, imp" in helps["method"] and "(default: imp)" in helps["method"]
    assert "rigl" in helps["dst"] and "inductor" in helps["backend"] and "(default: 0.2)" in helps["rate"]


def test_sweep_checks_the_model_against_the_data_before_training(tmp_path, capsys):
    save = tmp_path / "s"
    argv = ["sweep", "--epochs", "1", "--seeds", "1", "--compression", "2", "--criteria", "magnitude"]
    argv += ["--eager", "--no-plots", "--save-dir", str(save)]
    assert cli.main([*argv, "--model-cfg", '{"sizes": [64, 16, 3]}']) == 2
    assert "has label 9 in its train split, but model 'mlp' has 3 classes" in _one_error_line(capsys)
    assert cli.main([*argv, "--model-cfg", '{"widths": 3}']) == 2
    assert "model 'mlp' cannot be built with model_cfg {'widths': 3}" in _one_error_line(capsys)
    assert not save.exists()


def test_every_knob_is_declared_once_and_every_command_reads_it_from_there():
    """One configuration source: each RunConfig field has exactly one Knob (help, methods), and the
    flags of run, demo and train take their help and default from it (so they cannot drift)."""
    import dataclasses

    from pure_prune.app import knobs, runconfig

    fields = {f.name: f for f in dataclasses.fields(runconfig.RunConfig)}
    assert set(knobs.KNOBS) == set(fields)
    ap = cli_parser.parser()
    subs = next(a for a in ap._actions if a.dest == "command").choices
    for command in ("run", "demo", "train"):
        for action in subs[command]._actions:
            if action.dest in knobs.KNOBS and action.option_strings[0] == "--" + action.dest.replace(
                "_", "-"
            ):
                assert action.help.startswith(knobs.KNOBS[action.dest].help.replace("%", "%%")), (
                    command,
                    action.dest,
                )
                if command != "run":  # run's flags only override the TOML file: no argparse default
                    default = fields[action.dest].default
                    assert action.default == default, (command, action.dest, action.default, default)
    # a knob that a method does not read is refused with the methods that do
    with pytest.raises(ValueError, match="has no effect with method 'imp'.*used by: distill"):
        runconfig.RunConfig(method="imp", alpha=0.9).check()


def test_sweep_flags_shared_with_run_are_its_knobs_with_the_sweep_defaults():
    """``sweep``'s flags that are ``RunConfig`` knobs take run's help (knobs.KNOBS) and parse, given
    nothing, to ``SweepConfig``'s defaults; its run config copies every such setting by name."""
    import dataclasses

    from pure_prune.app.knobs import KNOBS
    from pure_prune.app.sweep_config import SWEEP_ONLY, SweepConfig

    args = vars(cli_parser.parser().parse_args(["sweep"]))
    defaults = dataclasses.asdict(SweepConfig())
    shared = [k for k in defaults if k not in SWEEP_ONLY and k != "save_dir"]
    assert {k: args[k] for k in shared} == {k: defaults[k] for k in shared}
    sub = next(a for a in cli_parser.parser()._subparsers._actions if a.choices)
    helps = {a.dest: a.help for a in sub.choices["sweep"]._actions}
    assert all(helps[k].startswith(KNOBS[k].help.replace("%", "%%")) for k in shared)
    cfg = SweepConfig(seeds=2, epochs=3, lr=0.1, seed=4, eager=True, model_cfg={"sizes": [64, 8, 10]})
    run = cfg.check().run_config()
    assert {k: getattr(run, k) for k in shared} == {k: getattr(cfg, k) for k in shared}
    assert (run.method, run.compile, run.progress, run.eval_every_epoch) == ("one_shot", False, False, False)
