"""transformers' LLaMA, Qwen2 and OPT causal LMs through pure_prune.llm.hf: the block functions equal the
decoder layers' own forward, the taps are what each linear reads, Wanda/SparseGPT/OWL through the
calibration engine give exact sparsities and patterns per row, and the pruned model goes back into
its own class and survives save_pretrained / from_pretrained bit for bit."""

from __future__ import annotations

import pytest
import torch

from pure_prune import interop, rng, tree
from pure_prune.llm import calibrate, hf, owl, perplexity, sparsegpt, wanda
from pure_prune.llm.blocks import subtree
from pure_prune.testing.close import assert_close

tf = pytest.importorskip("transformers")
from transformers.masking_utils import create_causal_mask  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB, CONTEXT = 96, 32
CONFIGS = {
    "llama": lambda: tf.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=CONTEXT, tie_word_embeddings=True,
    ),
    "qwen2": lambda: tf.Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, max_position_embeddings=CONTEXT, tie_word_embeddings=False,
    ),
    "opt": lambda: tf.OPTConfig(
        vocab_size=VOCAB, hidden_size=32, ffn_dim=48, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=CONTEXT, word_embed_proj_dim=16,
    ),
    "opt-post-norm": lambda: tf.OPTConfig(
        vocab_size=VOCAB, hidden_size=32, ffn_dim=48, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=CONTEXT, word_embed_proj_dim=32, do_layer_norm_before=False,
    ),
}  # fmt: skip


def tiny(name: str, key: int = 0):
    """A tiny model of ``name`` in eval mode with N(0, 0.2²) weights drawn from ``key`` (norms
    around 1), so that attention and the MLP are far from trivial."""
    model = tf.AutoModelForCausalLM.from_config(CONFIGS[name]()).eval()
    with torch.no_grad():
        for i, (path, p) in enumerate(model.named_parameters()):
            base = 1.0 if "norm" in path and path.endswith("weight") else 0.0
            p.copy_(base + 0.2 * rng.normal(rng.fold_in(key, i), tuple(p.shape)))
    return model


@pytest.fixture(scope="module")
def models():
    return {name: tiny(name) for name in CONFIGS}


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, VOCAB, (6, 16), generator=rng.generator(1))


def layers(model):
    return model.model.decoder.layers if hf.family(model) == "opt" else model.model.layers


@pytest.mark.parametrize("name", list(CONFIGS))
def test_block_equals_decoder_layer_and_forward_equals_model(name, models, tokens):
    model = models[name]
    bm, params = hf.block_model(model)
    expected_params = interop.from_module(model)[1]
    assert tree.paths(params) == tree.paths(expected_params)
    assert all(torch.equal(a, b) for a, b in zip(tree.leaves(params), tree.leaves(expected_params)))
    assert bm.block_paths(params) == [
        f"{'model.decoder' if 'opt' in name else 'model'}.layers.{i}" for i in range(2)
    ]
    with torch.no_grad():
        h = bm.embed(params, tokens)
        positions = torch.arange(tokens.shape[1])[None]
        mask = create_causal_mask(config=model.config, inputs_embeds=h, attention_mask=None, cache=None,
                                  position_ids=positions)  # fmt: skip
        kwargs = {"attention_mask": mask, "position_ids": positions}
        if "opt" not in name:
            kwargs["position_embeddings"] = model.model.rotary_emb(h, positions)
        for path, layer in zip(bm.block_paths(params), layers(model)):
            ours, _ = bm.block(subtree(params, path), h)
            expected = layer(h, **kwargs)
            assert_close(ours, expected, 1e-5, what=f"{name} {path}")
            h = expected
        assert_close(bm.forward(params, tokens), model(tokens).logits, 1e-5, what=f"{name} logits")


@pytest.mark.parametrize("name", ["llama", "opt"])
def test_taps_are_the_inputs_of_the_linears(name, models, tokens):
    model = models[name]
    bm, params = hf.block_model(model)
    seen = {}
    layer = layers(model)[0]
    handles = [
        layer.get_submodule(lin).register_forward_pre_hook(
            lambda m, args, lin=lin: seen.__setitem__(lin, args[0])
        )
        for lin in bm.linears
    ]
    try:
        with torch.no_grad():
            model(tokens)
            _, taps = bm.block(subtree(params, bm.block_paths(params)[0]), bm.embed(params, tokens))
    finally:
        for hnd in handles:
            hnd.remove()
    for lin, (wpath, tap) in bm.linears.items():
        assert wpath == f"{lin}.weight"
        assert_close(taps[tap].reshape(seen[lin].shape), seen[lin], 1e-5, what=f"tap of {lin}")


def keep_counts_per_row(masks, pattern):
    """Every pruned linear: exactly the per-row count (unstructured) or n kept of every m (N:M)."""
    checked = 0
    for path, m in zip(tree.paths(masks), tree.leaves(masks)):
        if m is None:
            continue
        checked += 1
        rows, cols = m.shape
        if ":" in pattern:
            n, mm = (int(v) for v in pattern.split(":"))
            assert (m.reshape(rows, cols // mm, mm).sum(-1) == n).all(), path
        else:
            assert (m.sum(1) == cols - round(float(pattern) * cols)).all(), path
    return checked


@pytest.mark.parametrize("name", ["llama", "qwen2", "opt"])
@pytest.mark.parametrize("pattern", ["0.5", "2:4"])
def test_wanda_through_the_engine_exact_patterns(name, pattern, models, tokens):
    model = models[name]
    bm, params = hf.block_model(model)
    res = calibrate.prune(bm, params, tokens, wanda.METHOD, pattern, batch_size=4)
    assert keep_counts_per_row(res.masks, pattern) == 2 * len(bm.linears)
    for path, p, m, before in zip(tree.paths(params), tree.leaves(res.params), tree.leaves(res.masks),
                                  tree.leaves(params)):  # fmt: skip
        if m is None:  # embeddings, norms, biases, head: untouched
            assert torch.equal(p, before), path
        else:  # Wanda keeps the kept weights and zeroes the others
            assert torch.equal(p, before * m), path
    assert {r["path"].rsplit(".", 2)[-2] for r in res.record["layers"]} >= {"q_proj", "k_proj", "v_proj"}


def test_sparsegpt_sequential_and_owl_on_hf_models(models, tokens):
    bm, params = hf.block_model(models["qwen2"], sequential=True)
    res = calibrate.prune(bm, params, tokens, sparsegpt.METHOD, 0.5, batch_size=3)
    for path, m in zip(tree.paths(res.masks), tree.leaves(res.masks)):
        if m is not None:  # SparseGPT: round(s · out · in) pruned per layer
            assert int((~m).sum()) == round(0.5 * m.numel()), path
            assert (subtree(res.params, path)[~m] == 0).all(), path
    bm, params = hf.block_model(models["opt"])
    res = owl.prune(bm, params, tokens, wanda.METHOD, 0.6, m=3.0, lam=0.1)
    spars = res.record["owl"]["block_sparsities"]
    assert len(spars) == 2 and abs(sum(spars) / 2 - 0.6) < 1e-12 and max(spars) - min(spars) <= 0.2 + 1e-12


def test_pruned_model_round_trips_save_pretrained(models, tokens, tmp_path):
    model = models["llama"]
    bm, params = hf.block_model(model)
    res = calibrate.prune(bm, params, tokens, wanda.METHOD, "2:4", batch_size=6)
    pruned = interop.to_module(model, res.params, masks=res.masks)
    assert type(pruned) is type(model) and pruned.lm_head.weight is pruned.model.embed_tokens.weight
    assert torch.equal(
        model.model.layers[0].mlp.up_proj.weight, subtree(params, "model.layers.0.mlp.up_proj.weight")
    )
    pruned.save_pretrained(tmp_path)
    loaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True).eval()
    assert type(loaded) is type(model)
    state = dict(loaded.named_parameters())
    for path, m, p in zip(tree.paths(res.masks), tree.leaves(res.masks), tree.leaves(res.params)):
        assert torch.equal(state[path], p), path
        if m is not None:
            assert (state[path][~m] == 0).all() and int((state[path] == 0).sum()) >= int((~m).sum()), path
    with torch.no_grad():
        assert torch.equal(loaded(tokens).logits, pruned(tokens).logits)
        assert_close(loaded(tokens).logits, bm.forward(res.params, tokens), 1e-5, what="reloaded logits")
    # a model from from_pretrained (hub kernels on by default) runs the same way
    bm_loaded, params_loaded = hf.block_model(loaded)
    assert all(torch.equal(a, b) for a, b in zip(tree.leaves(params_loaded), tree.leaves(res.params)))
    assert_close(
        bm_loaded.forward(params_loaded, tokens), bm.forward(res.params, tokens), 1e-5, what="loaded"
    )


def test_perplexity_matches_the_cross_entropy_by_hand(models):
    model = models["opt"]
    bm, params = hf.block_model(model)
    ids = torch.randint(0, VOCAB, (70,), generator=rng.generator(3))
    got = perplexity.perplexity(lambda x: bm.forward(params, x), ids, 16, batch_size=3)
    x, y = ids[:64].reshape(4, 16), ids[1:65].reshape(4, 16)
    with torch.no_grad():
        nll = torch.nn.functional.cross_entropy(model(x).logits.reshape(-1, VOCAB), y.reshape(-1))
    assert got["tokens"] == 64
    assert abs(got["nll"] - float(nll)) <= 1e-5 * float(nll)
    assert perplexity.windows(ids, 16, max_tokens=40)[0].shape == (2, 16)
    with pytest.raises(ValueError, match="no window of 80 tokens"):
        perplexity.windows(ids, 80)


def test_bad_input_is_refused_before_any_work(models, tokens):
    bm, params = hf.block_model(models["llama"])
    with pytest.raises(ValueError, match=r"3:7: m=7 does not divide in_features=32 of linear weight "
                       r"'model.layers.0.self_attn.q_proj.weight'"):  # fmt: skip
        calibrate.prune(bm, params, tokens, wanda.METHOD, "3:7")
    long = torch.zeros(1, CONTEXT + 1, dtype=torch.int64)
    with pytest.raises(ValueError, match=f"33 tokens are longer than the model's context of {CONTEXT}"):
        calibrate.prune(bm, params, long, wanda.METHOD, 0.5)
    with pytest.raises(ValueError, match=rf"token ids must lie in \[0, {VOCAB}\)"):
        bm.embed(params, tokens + VOCAB)
    with pytest.raises(ValueError, match="10 calibration tokens cannot give a full-rank Hessian"):
        calibrate.prune(bm, params, tokens[:1, :10], sparsegpt.method(damp=0.0), 0.5)
    with pytest.raises(TypeError, match="GPT2LMHeadModel .*model_type 'gpt2'.* is not a supported causal LM"):
        hf.block_model(
            tf.GPT2LMHeadModel(
                tf.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=20, bos_token_id=0, eos_token_id=0)
            )
        )
    with pytest.raises(TypeError, match=r"Linear \(model_type None\) is not a supported causal LM"):
        hf.block_model(torch.nn.Linear(2, 2))
    sliding = tf.Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True,
                             sliding_window=8, max_window_layers=0)  # fmt: skip
    with pytest.raises(ValueError, match="sliding-window attention"):
        hf.block_model(tf.Qwen2ForCausalLM(sliding))
