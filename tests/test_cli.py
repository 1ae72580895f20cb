"""The pure-prune command: demo and train end to end (tiny settings), and clear errors."""

import json

import pytest

from pure_prune import cli
from pure_prune.experiment import eval_batch_size, make_optimizer, setup

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
