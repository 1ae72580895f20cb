"""models.llama: the per-block interface, causality, GQA, tied head, context and checkpoint errors."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from pure_prune import rng, tree
from pure_prune.models import llama
from pure_prune.testing.close import assert_close

CFG = {"vocab": 19, "dim": 24, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "ffn": 20, "context": 12}


@pytest.fixture(scope="module")
def model():
    params, state = llama.init(3, **CFG)
    # non-trivial norm weights, so a wrong norm shows
    params = tree.map_with_path(
        lambda p, x: x + 0.3 * rng.normal(7, tuple(x.shape)) if "norm" in p else x, params
    )
    return params, state


def tokens(n: int, t: int, key: int = 1, vocab: int = CFG["vocab"]) -> torch.Tensor:
    return torch.randint(0, vocab, (n, t), generator=rng.generator(key))


def test_per_block_interface_equals_apply(model):
    params, state = model
    x = tokens(3, 10)
    out, new_state = llama.apply(params, state, x, train=False)
    assert out.shape == (3, 10, CFG["vocab"]) and new_state is state
    cos_sin = llama.rope(state, 10)
    h = llama.embed(params, x)
    for name in llama.block_names(params):
        h, inputs = llama.block(llama.get_block(params, name), h, cos_sin, capture=True)
        p = llama.get_block(params, name)
        for lin in llama.LINEARS:
            w = tree_get(p, lin)
            assert inputs[lin].shape == (3, 10, w.shape[1]), lin
    assert torch.equal(llama.head(params, h), out)
    assert llama.block_names(params) == ["blocks.0", "blocks.1"]
    hs = llama.hidden_states(params, state, x)
    assert len(hs) == 3 and torch.equal(hs[-1], h)


def tree_get(p, lin):
    a, b = lin.split(".")
    return p[a][b]["weight"]


def test_block_capture_inputs_are_the_linear_inputs(model):
    params, state = model
    p = llama.get_block(params, "blocks.1")
    x = rng.normal(4, (2, 7, CFG["dim"]))
    out, inputs = llama.block(p, x, llama.rope(state, 7), capture=True)
    # recompute the block from the captured inputs of its linear layers
    a = x + F.linear(inputs["attn.o"], p["attn"]["o"]["weight"])
    assert_close(a + F.linear(inputs["mlp.down"], p["mlp"]["down"]["weight"]), out, rtol=1e-6)
    y = llama.rms_norm(a, p["mlp_norm"]["weight"])
    assert_close(inputs["mlp.gate"], y, rtol=1e-6)
    hidden = F.silu(F.linear(y, p["mlp"]["gate"]["weight"])) * F.linear(y, p["mlp"]["up"]["weight"])
    assert_close(inputs["mlp.down"], hidden, rtol=1e-6)


def test_causal_output_at_t_ignores_later_tokens(model):
    params, state = model
    x = tokens(2, 12)
    y = x.clone()
    y[:, 7:] = (y[:, 7:] + 5) % CFG["vocab"]
    a, _ = llama.apply(params, state, x, train=False)
    b, _ = llama.apply(params, state, y, train=False)
    assert_close(b[:, :7], a[:, :7], rtol=1e-5)
    assert (a[:, 7:] - b[:, 7:]).abs().max() > 1e-3


def test_gqa_equals_manual_repeat_of_kv_heads():
    params, state = llama.init(5, **(CFG | {"n_heads": 4, "n_kv_heads": 2, "n_layers": 1}))
    p = llama.get_block(params, "blocks.0")
    x = rng.normal(2, (2, 9, CFG["dim"]))
    cos, sin = llama.rope(state, 9)
    out = llama.block(p, x, (cos, sin))
    # by hand: every KV head repeated for its 2 query heads, plain multi-head attention
    xn = llama.rms_norm(x, p["attn_norm"]["weight"])
    hd = llama.HEAD_DIM

    def heads(w):
        return rearrange(F.linear(xn, w), "n t (h d) -> n h t d", d=hd)

    def rot(z):
        z1, z2 = z[..., : hd // 2], z[..., hd // 2 :]
        return torch.cat((z1 * cos - z2 * sin, z2 * cos + z1 * sin), -1)

    q = rot(heads(p["attn"]["q"]["weight"]))
    k = repeat(rot(heads(p["attn"]["k"]["weight"])), "n kv t d -> n (kv g) t d", g=2)
    v = repeat(heads(p["attn"]["v"]["weight"]), "n kv t d -> n (kv g) t d", g=2)
    scores = q @ k.transpose(-1, -2) / hd**0.5
    scores = scores.masked_fill(torch.ones(9, 9, dtype=torch.bool).triu(1), float("-inf"))
    a = rearrange(scores.softmax(-1) @ v, "n h t d -> n t (h d)")
    h = x + F.linear(a, p["attn"]["o"]["weight"])
    y = llama.rms_norm(h, p["mlp_norm"]["weight"])
    mlp = p["mlp"]
    want = h + F.linear(
        F.silu(F.linear(y, mlp["gate"]["weight"])) * F.linear(y, mlp["up"]["weight"]), mlp["down"]["weight"]
    )
    assert_close(out, want, rtol=1e-5)


def test_tied_and_untied_head():
    tied, state = llama.init(0, **CFG)
    untied, _ = llama.init(0, **(CFG | {"tie_weights": False}))
    assert "head" not in tied and untied["head"]["weight"].shape == (CFG["vocab"], CFG["dim"])
    x = tokens(1, 5)
    h = rng.normal(1, (1, 5, CFG["dim"]))
    want = F.linear(llama.rms_norm(h, tied["norm"]["weight"]), tied["embed"]["weight"])
    assert torch.equal(llama.head(tied, h), want)
    # untied: the head is its own leaf; setting it to the embedding gives the tied model
    same = dict(untied) | {"head": {"weight": untied["embed"]["weight"]}}
    no_head = {k: v for k, v in untied.items() if k != "head"}
    assert_close(
        llama.apply(same, state, x, train=False)[0], llama.apply(no_head, state, x, train=False)[0], rtol=1e-6
    )


def test_sequence_longer_than_context_and_bad_tokens(model):
    params, state = model
    with pytest.raises(ValueError, match="13 tokens is longer than the model's context of 12"):
        llama.apply(params, state, tokens(1, 13), train=False)
    with pytest.raises(TypeError, match="integer token ids"):
        llama.apply(params, state, torch.zeros(1, 3), train=False)
    with pytest.raises(ValueError, match=r"must be \(N, T\)"):
        llama.embed(params, torch.zeros(3, dtype=torch.long))


def test_bad_config():
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        llama.init(0, **(CFG | {"n_heads": 3, "n_kv_heads": 2}))
    with pytest.raises(ValueError, match="unknown keys"):
        llama.expected_shapes({"width": 3})
    with pytest.raises(TypeError, match="ffn must be an int"):
        llama.expected_shapes({"ffn": "384"})


def _write(tmp_path, params, name="w.safetensors"):
    from safetensors.torch import save

    blob = save(dict(zip(tree.paths(params), tree.leaves(params))))
    path = tmp_path / name
    path.write_bytes(blob)
    return path, hashlib.sha256(blob).hexdigest()


def test_load_checkpoint_round_trip_and_refusals(tmp_path, model):
    params, state = model
    path, sha = _write(tmp_path, params)
    loaded, loaded_state = llama.load_checkpoint(path, CFG, sha256=sha)
    assert all(torch.equal(a, b) for a, b in zip(tree.leaves(loaded), tree.leaves(params)))
    assert all(torch.equal(a, b) for a, b in zip(tree.leaves(loaded_state), tree.leaves(state)))
    with pytest.raises(ValueError, match=f"SHA-256 is {sha}, expected 00"):
        llama.load_checkpoint(path, CFG, sha256="00" * 32)
    # a checkpoint of another shape than its config: every offending path named
    with pytest.raises(
        ValueError, match=r"blocks.0.mlp.up.weight has shape \(20, 24\), config needs \(21, 24\)"
    ):
        llama.load_checkpoint(path, CFG | {"ffn": 21}, sha256=sha)
    with pytest.raises(ValueError, match="missing blocks.2.attn.k.weight"):
        llama.load_checkpoint(path, CFG | {"n_layers": 3}, sha256=sha)
    with pytest.raises(ValueError, match=r"missing head.weight \(19, 24\)"):
        llama.load_checkpoint(path, CFG | {"tie_weights": False}, sha256=sha)


def test_flops_per_token(model):
    params, _ = model
    # per token: 2 * (linear weights) + attention 2 * 2 * H*hd * (T+1)/2 + head
    p = llama.get_block(params, "blocks.0")
    lin = sum(int(p[a][b]["weight"].numel()) for a, b in (s.split(".") for s in llama.LINEARS))
    want = 2 * (2 * lin + 2 * 2 * 64 * 5.5) + 2 * 19 * 24
    assert llama.flops_per_token(params, 10) == want


@pytest.mark.slow
def test_fullgraph_compile_equals_eager(model):
    params, state = model
    x = tokens(2, 6)
    want = llama.apply(params, state, x, train=True, capture=True)
    got = torch.compile(llama.apply, fullgraph=True, backend="aot_eager")(
        params, state, x, train=True, capture=True
    )
    assert_close(got[0], want[0], rtol=1e-6)
    for name, act in want[2].items():
        assert_close(got[2][name], act, rtol=1e-6)


@pytest.mark.filterwarnings(
    "ignore:There is a performance drop because we have not yet implemented the batching rule"
)
def test_vmap_over_seeds_and_grad(model):
    params, state = model
    x = tokens(2, 6)
    trees = [llama.init(k, **CFG) for k in (0, 1)]
    stacked = torch.func.vmap(lambda p, s: llama.apply(p, s, x, train=True)[0])(
        tree.stack([p for p, _ in trees]), tree.stack([s for _, s in trees])
    )
    for i, (p, s) in enumerate(trees):
        assert_close(stacked[i], llama.apply(p, s, x, train=True)[0], rtol=1e-5)
    g = torch.func.grad(lambda p: llama.apply(p, state, x, train=True)[0].square().mean())(params)
    assert all(bool(leaf.abs().sum() > 0) for leaf in tree.leaves(g))


def test_shipped_model_loads_and_predicts_held_out_text():
    params, state, info = llama.load_pretrained()
    assert info["weights_sha256"] == llama.PRETRAINED["pydoc"][2]
    assert info["model"]["vocab"] == 256 and set(info["heldout"]) == {"valid", "test"}
    from pydoc_data.topics import topics

    data = "".join(topics[k] for k in sorted(topics)).encode("utf-8")
    held = torch.tensor(list(data[-4 * 129 :]), dtype=torch.int64)  # the end of the test split
    x = torch.stack([held[i * 129 : i * 129 + 128] for i in range(4)])
    y = torch.stack([held[i * 129 + 1 : i * 129 + 129] for i in range(4)])
    logits, _ = llama.apply(params, state, x, train=False)
    bits = F.cross_entropy(logits.reshape(-1, 256), y.reshape(-1)).item() / math.log(2)
    assert bits < 3.5  # uniform: 8 bits per byte
    with pytest.raises(ValueError, match="no shipped llama model 'wiki'"):
        llama.load_pretrained("wiki")
