"""pure_prune.llm.calibrate: the sequential block-by-block engine on a tiny hand-written model.

The engine's result is checked against a plain loop written from the definitions (every
activation kept, no micro-batches): same masks, same weights. Then stages, purity, the record,
bad input (nothing runs), and the torchrun run on 2 CPU ranks (gloo) against one process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from pure_prune import rng
from pure_prune.llm import blocks, calibrate, magnitude, sparsegpt, stats, wanda
from pure_prune.llm.pattern import parse

pytestmark = pytest.mark.usefixtures("one_thread")

D, F, V = 8, 12, 16


def close(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    """``max |a - e| <= rtol · max |e|`` (a tolerance relative to the compared magnitudes)."""
    scale = float(expected.abs().max()) or 1.0
    err = float((actual.double() - expected.double()).abs().max())
    assert err <= rtol * scale, f"max error {err:.3g} > {rtol:g} · {scale:.3g}"


# ----------------------------------------------------------------------------- a tiny model
def _embed(p, tokens):
    return p["emb"][tokens]


def _block(pb, h):
    x = h * pb["scale"]
    mid = torch.tanh(x @ pb["a"]["weight"].T) * (x @ pb["b"]["weight"].T)
    return h + mid @ pb["c"]["weight"].T, {"x": x, "mid": mid}


def _head(p, h):
    return h @ p["emb"].T


def tiny(stages=()):
    return blocks.BlockModel(
        embed=_embed,
        block=_block,
        head=_head,
        block_paths=lambda p: [f"blocks.{i}" for i in range(len(p["blocks"]))],
        linears={"a": ("a.weight", "x"), "b": ("b.weight", "x"), "c": ("c.weight", "mid")},
        stages=stages,
    )


def tiny_params(key=0, n_blocks=2):
    ks = rng.split(key, 1 + 3 * n_blocks)
    bl = {}
    for i in range(n_blocks):
        ka, kb, kc = ks[1 + 3 * i : 4 + 3 * i]
        bl[str(i)] = {
            "a": {"weight": rng.normal(ka, (F, D))},
            "b": {"weight": rng.normal(kb, (F, D))},
            "c": {"weight": rng.normal(kc, (D, F)) * 0.3},
            "scale": torch.linspace(0.5, 2.0, D),
        }
    return {"blocks": bl, "emb": rng.normal(ks[0], (V, D))}


def tokens(key=1, n=7, t=5):
    return torch.randint(0, V, (n, t), generator=rng.generator(key))


def reference(params, tok, layer_fn, stages=(("a", "b", "c"),)):
    """The sequential scheme written from the definitions: all activations kept, one batch."""
    weights = {"a": "x", "b": "x", "c": "mid"}
    h = _embed(params, tok)
    out = {"blocks": {}, "emb": params["emb"]}
    masks = {}
    for i in range(len(params["blocks"])):
        pb = {k: (dict(v) if isinstance(v, dict) else v) for k, v in params["blocks"][str(i)].items()}
        for stage in stages:
            _, taps = _block(pb, h)
            for name in stage:
                x = taps[weights[name]].reshape(-1, taps[weights[name]].shape[-1]).double()
                new_w, keep = layer_fn(pb[name]["weight"], x)
                pb[name] = {"weight": new_w}
                masks[f"blocks.{i}.{name}.weight"] = keep
        h = _block(pb, h)[0]
        out["blocks"][str(i)] = pb
    return out, masks


def _wanda_by_formula(w, x):
    s = w.abs().double() * x.norm(dim=0)[None, :]
    keep = torch.ones_like(w, dtype=torch.bool)
    k = round(0.5 * w.shape[1])
    order = torch.sort(s, dim=1, stable=True).indices[:, :k]
    keep.scatter_(1, order, False)
    return w * keep, keep


def _sparsegpt_by_formula(w, x):
    return sparsegpt.prune_weight(w, x.T @ x, parse(0.5), block_size=4)


@pytest.mark.parametrize(
    "method, layer_fn",
    [(wanda.METHOD, _wanda_by_formula), (sparsegpt.method(block_size=4), _sparsegpt_by_formula)],
)
@pytest.mark.parametrize("stages", [(), (("a", "b"), ("c",))])
def test_engine_equals_the_sequential_scheme_written_out(method, layer_fn, stages):
    params, tok = tiny_params(), tokens()
    result = calibrate.prune(tiny(stages), params, tok, method, 0.5, batch_size=3)  # 7 = 3 + 3 + 1
    want, masks = reference(params, tok, layer_fn, stages or (("a", "b", "c"),))
    for path, keep in masks.items():
        got = blocks.subtree(result.masks, path)
        assert torch.equal(got, keep), path
        close(blocks.subtree(result.params, path), blocks.subtree(want, path), 1e-5)
    assert result.masks["emb"] is None and result.masks["blocks"]["0"]["scale"] is None


def test_inputs_untouched_untouched_leaves_shared_and_record():
    params, tok = tiny_params(), tokens()
    before = {k: v["a"]["weight"].clone() for k, v in params["blocks"].items()}
    calls = []
    result = calibrate.prune(
        tiny(), params, tok, wanda.METHOD, "2:4", errors=True, progress=lambda *a: calls.append(a),
        calibration={"data": "test", "key": 1},
    )  # fmt: skip
    assert all(torch.equal(params["blocks"][k]["a"]["weight"], w) for k, w in before.items())
    assert result.params["emb"] is params["emb"]
    assert result.params["blocks"]["1"]["scale"] is params["blocks"]["1"]["scale"]
    assert calls == [(1, 2, "blocks.0 a+b+c"), (2, 2, "blocks.1 a+b+c")]
    rec = result.record
    json.dumps(rec)
    assert rec["method"] == "wanda" and rec["patterns"] == ["2:4", "2:4"] and rec["calibration"]["key"] == 1
    assert (rec["sequences"], rec["seq_len"], rec["tokens"], rec["world_size"]) == (7, 5, 35, 1)
    assert [r["path"] for r in rec["layers"]][:3] == [
        "blocks.0.a.weight",
        "blocks.0.b.weight",
        "blocks.0.c.weight",
    ]
    assert all(r["sparsity"] == 0.5 and 0 < r["relative_error"] < 1 for r in rec["layers"])


def test_reconstruction_error_from_gram_equals_the_activations():
    x = rng.normal(3, (40, 6)).double()
    w, w2 = rng.normal(4, (5, 6)).double(), rng.normal(5, (5, 6)).double()
    direct = float(torch.linalg.norm(x @ w.T - x @ w2.T))
    assert abs(stats.reconstruction_error(w, w2, x.T @ x) - direct) <= 1e-12 * direct


def test_collect_sums_over_micro_batches_as_over_all_tokens():
    params, tok = tiny_params(), tokens()
    got = calibrate.collect(tiny(), params, tok, gram=True, batch_size=2)
    _, taps = _block(params["blocks"]["0"], _embed(params, tok))
    x = taps["x"].reshape(-1, D).double()
    assert got[0]["a"] is got[0]["b"] and got[0]["a"].count == 35
    close(got[0]["a"].sq_norms, (x * x).sum(0), 1e-12)
    close(got[0]["a"].gram, x.T @ x, 1e-12)


def test_device_and_storage_arguments_give_the_same_result():
    params, tok = tiny_params(), tokens()
    a = calibrate.prune(tiny(), params, tok, sparsegpt.method(block_size=4), 0.5)
    b = calibrate.prune(tiny(), params, tok, sparsegpt.method(block_size=4), 0.5, device="cpu", storage="cpu")
    for path in ("blocks.0.a.weight", "blocks.1.c.weight"):
        assert torch.equal(blocks.subtree(a.params, path), blocks.subtree(b.params, path))


def test_sample_windows_are_seeded_windows_of_the_stream():
    ids = torch.arange(100)
    w = calibrate.sample_windows(ids, 6, 10, key=7)
    assert w.shape == (6, 10) and torch.equal(w, calibrate.sample_windows(ids, 6, 10, key=7))
    assert torch.equal(w - w[:, :1], torch.arange(10).expand(6, 10))  # contiguous windows
    assert not torch.equal(w, calibrate.sample_windows(ids, 6, 10, key=8))
    with pytest.raises(ValueError, match="longer than the token stream"):
        calibrate.sample_windows(ids, 1, 101, key=0)
    with pytest.raises(TypeError, match="1-D int64"):
        calibrate.sample_windows(ids.float(), 1, 5, key=0)


# ------------------------------------------------------------------------------- bad input
def _refused(exc, match, *args, **kw):
    calls = []
    with pytest.raises(exc, match=match):
        calibrate.prune(*args, progress=lambda *a: calls.append(a), **kw)
    assert calls == []  # refused before any block ran


def test_bad_input_is_refused_before_any_block_runs():
    params, tok = tiny_params(), tokens()
    m = tiny()
    # N:M that does not divide the layer: c has in_features 12, 8 does not divide it
    _refused(ValueError, r"m=8 does not divide in_features=12 of linear weight 'blocks.0.c.weight'",
             m, params, tok, wanda.METHOD, "4:8")  # fmt: skip
    _refused(ValueError, "sparsity must be in", m, params, tok, magnitude.METHOD, 1.5)
    _refused(ValueError, "3 patterns given for 2 blocks", m, params, tok, magnitude.METHOD, [0.5] * 3)
    _refused(TypeError, "int64 tensor", m, params, tok.float(), magnitude.METHOD, 0.5)
    _refused(ValueError, "batch_size", m, params, tok, magnitude.METHOD, 0.5, batch_size=0)
    # too few tokens for a full-rank Hessian without dampening: 2 sequences x 5 = 10 tokens < 12 inputs
    _refused(ValueError, r"10 calibration tokens .* 'blocks.0.c.weight' with 12 inputs and damp=0",
             m, params, tok[:2], sparsegpt.method(damp=0.0), 0.5)  # fmt: skip
    bad = tiny_params()
    bad["blocks"]["1"]["b"]["weight"] = torch.zeros(F, D, 1)
    _refused(TypeError, "'blocks.1.b.weight' must be a 2-D float tensor", m, bad, tok, magnitude.METHOD, 0.5)
    with pytest.raises(ValueError, match="must list every linear once"):
        calibrate.prune(tiny((("a",), ("c",))), params, tok, magnitude.METHOD, 0.5)


def test_rank_deficient_hessian_without_dampening_is_a_clear_error():
    params = tiny_params()
    tok = torch.full((4, 5), 3)  # 20 tokens, all the same: X Xᵀ has rank 1
    with pytest.raises(ValueError, match=r"Hessian X Xᵀ of 'blocks.0.a.weight' is not positive definite"):
        calibrate.prune(tiny(), params, tok, sparsegpt.method(damp=0.0), 0.5)
    ok = calibrate.prune(tiny(), params, tok, sparsegpt.method(damp=0.01), 0.5)  # dampened: fine
    assert torch.isfinite(ok.params["blocks"]["0"]["a"]["weight"]).all()


# -------------------------------------------------------------------------------- torchrun
SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from pure_prune.app import distributed
    from pure_prune.llm import calibrate, owl, sparsegpt, wanda
    sys.path.insert(0, sys.argv[2])
    from test_llm_calibrate import tiny, tiny_params, tokens

    torch.set_num_threads(1)
    out = sys.argv[1]
    with distributed.process_group("gloo") as (rank, world):
        params, tok = tiny_params(), tokens(n=9)
        res = {}
        for name, run in {
            "sparsegpt": lambda: calibrate.prune(tiny(), params, tok, sparsegpt.method(block_size=4), 0.5),
            "wanda24": lambda: calibrate.prune(tiny(), params, tok, wanda.METHOD, "2:4", batch_size=2),
            "owl": lambda: owl.prune(tiny(), params, tok, wanda.METHOD, 0.6, m=1.5, lam=0.05),
        }.items():
            r = run()
            res[name] = {
                "masks": {f"{b}.{n}": r.masks["blocks"][b][n]["weight"].int().tolist()
                          for b in ("0", "1") for n in "abc"},
                "weights": {f"{b}.{n}": r.params["blocks"][b][n]["weight"].tolist()
                            for b in ("0", "1") for n in "abc"},
                "world": r.record["world_size"],
            }
        with open(f"{out}/rank{rank}.json", "w") as f:
            json.dump(res, f)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_ranks_compute_the_masks_of_one_process(tmp_path):
    script = tmp_path / "calib.py"
    script.write_text(SCRIPT)
    here = os.path.dirname(__file__)
    single = tmp_path / "one"
    single.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    one = subprocess.run([sys.executable, str(script), str(single), here], capture_output=True, text=True,
                         timeout=180, env=env)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(script), str(tmp_path), here,
    ]  # fmt: skip
    two = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    ref = json.loads((single / "rank0.json").read_text())
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for name in ref:
            assert got[name]["world"] == 2 and ref[name]["world"] == 1
            assert got[name]["masks"] == ref[name]["masks"], (rank, name)
            for k, w in ref[name]["weights"].items():
                close(torch.tensor(got[name]["weights"][k]), torch.tensor(w), 1e-9)
