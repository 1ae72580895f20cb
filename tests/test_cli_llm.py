"""``pure-prune llm``: the perplexity table on the shipped model and on a local transformers checkpoint,
the JSON record, and bad input refused in one line with exit status 2 and nothing written."""

from __future__ import annotations

import json

import pytest
import torch

from pure_prune import rng
from pure_prune.app import cli

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--calib", "2", "--eval-tokens", "1024", "--no-progress"]


def run(argv, capsys):
    """``(exit status, stdout, stderr)`` of ``pure-prune llm ...``; usage errors exit via SystemExit."""
    try:
        code = cli.main(["llm", *argv])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_shipped_model_table_and_json(tmp_path, capsys):
    out = tmp_path / "sub" / "run.json"
    code, text, err = run(
        ["--method", "wanda", "--sparsity", "2:4", "--seeds", "2", *FAST, "--out", str(out)], capsys
    )
    assert code == 0, err
    assert (
        "shipped llama 'pydoc'" in text
        and "| wanda 2:4 " in text
        and "mean ± std over 2 calibration seeds" in text
    )
    rec = json.loads(out.read_text())
    assert [r["seed"] for r in rec["runs"]] == [0, 1] and rec["seq_len"] == 128
    assert rec["dense"]["tokens"] == 1024 and rec["summary"]["seeds"] == 2
    for r in rec["runs"]:
        assert r["sparsity"] == 0.5 and {x["pattern"] for x in r["record"]["layers"]} == {"2:4"}
        assert len(r["record"]["layers"]) == 4 * 7 and r["record"]["calibration"]["key"] == r["seed"]
        assert r["perplexity"] > rec["dense"]["perplexity"] > 1.0
    dense_row = next(line for line in text.splitlines() if line.startswith("| dense "))
    assert f"{rec['dense']['perplexity']:.3f}" in dense_row


def test_magnitude_reads_no_data_and_runs_once(capsys):
    code, text, err = run(["--method", "magnitude", "--sparsity", "0.5", "--seeds", "3", *FAST], capsys)
    assert code == 0, err
    assert "no calibration data (magnitude)" in text and "±" not in text and "| magnitude 50% " in text


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Tiny LLaMA checkpoint folders: with a byte-level tokenizer, without one, and with a config whose
    MLP width does not fit the saved weights."""
    tf = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    root = tmp_path_factory.mktemp("checkpoints")
    config = tf.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    model = tf.LlamaForCausalLM(config)
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.add_(0.05 * rng.normal(rng.fold_in(7, i), tuple(p.shape)))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    vocab = {c: i for i, c in enumerate(sorted(byte_level.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer, tok.decoder = byte_level, decoders.ByteLevel()
    tokenizer = tf.PreTrainedTokenizerFast(tokenizer_object=tok)
    paths = {k: root / k for k in ("good", "no_tokenizer", "bad_shapes")}
    for k, path in paths.items():
        model.save_pretrained(path)
        if k != "no_tokenizer":
            tokenizer.save_pretrained(path)
    cfg = json.loads((paths["bad_shapes"] / "config.json").read_text())
    (paths["bad_shapes"] / "config.json").write_text(json.dumps(cfg | {"intermediate_size": 96}))
    return paths


def test_local_transformers_checkpoint(checkpoints, capsys, tmp_path):
    out = tmp_path / "hf.json"
    argv = ["--model", str(checkpoints["good"]), "--method", "sparsegpt", "--sparsity", "0.5", "--seqlen", "32",
            "--sequential", *FAST, "--out", str(out)]  # fmt: skip
    code, text, err = run(argv, capsys)
    assert code == 0, err
    assert "LlamaForCausalLM from" in text and "| sparsegpt 50% " in text and "bits/token" in text
    rec = json.loads(out.read_text())
    assert rec["runs"][0]["sparsity"] == 0.5 and rec["seq_len"] == 32 and rec["dense"]["tokens"] == 1024
    assert rec["runs"][0]["record"]["stages"][0] == [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
    ]


BAD = [
    (["--method", "obd"], "--method must be one of magnitude, wanda, sparsegpt, got 'obd'"),
    (["--sparsity", "1.5"], "--sparsity '1.5': sparsity must be in [0, 1]"),
    (["--sparsity", "half"], "cannot read a sparsity from 'half'"),
    (["--sparsity", "3:7"], "m=7 does not divide in_features=128 of linear weight 'blocks.0.attn.q.weight'"),
    (["--sparsity", "2:4", "--owl"], "--owl allocates unstructured sparsities"),
    (["--seqlen", "129"], "--seqlen 129 is longer than the model's context of 128 tokens"),
    (["--calib", "0"], "--calib must be at least 1, got 0"),
    (["--calib", "two"], "argument --calib: invalid int value: 'two'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--method", "sparsegpt", "--damp", "0", "--calib", "1", "--seqlen", "64"],
     "64 calibration tokens cannot give a full-rank Hessian"),
    (["--model", "/no/such/folder"], "--model must be 'shipped' or a local checkpoint folder"),
    (["--device", "gpu"], "--device 'gpu' is not a torch device"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "needle"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_one_line_exit_2_nothing_written(argv, needle, tmp_path, capsys):
    out = tmp_path / "run.json"
    code, text, err = run([*FAST, *argv, "--out", str(out)], capsys)
    assert code == 2
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("which", "needle"),
    [
        ("no_tokenizer", "holds no tokenizer"),
        ("bad_shapes", "does not fit its config.json (6 tensors): model.layers.0.mlp.gate_proj.weight has shape "
                       "(64, 32), config needs (96, 32); "),
    ],
)  # fmt: skip
def test_bad_checkpoint_folders(which, needle, checkpoints, tmp_path, capsys):
    out = tmp_path / "run.json"
    code, text, err = run(["--model", str(checkpoints[which]), *FAST, "--out", str(out)], capsys)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_out_that_is_a_folder_is_refused(tmp_path, capsys):
    code, _, err = run([*FAST, "--out", str(tmp_path)], capsys)
    assert code == 2 and f"--out {tmp_path} is a folder" in err


def test_every_flag_has_help_with_its_default(capsys):
    with pytest.raises(SystemExit):
        cli.main(["llm", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--model", "--method", "--sparsity", "--owl", "--calib", "--seqlen", "--seeds", "--out"):
        assert flag in text
    assert "one of: magnitude, wanda, sparsegpt (default: wanda)" in text and "(default: 0.5)" in text
