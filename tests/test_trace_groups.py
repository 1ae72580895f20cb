"""Channel groups traced from nn.Modules (interop.channel_groups), compacted back into the user's class.

Each tiny module of ``tests/_tiny_modules.py`` is traced once (module-scoped fixture); transformers'
classes are skipped when it is not installed (``pip install -e .[test-models]``).
"""

import io
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from pure_prune import compact, interop, mask, select, tree
from pure_prune.importance import magnitude

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _tiny_modules as tiny  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = [n for n in tiny.builders() if n not in ("hf-mobilenet_v2", "zoo-vgg11")]
SLOW = [n for n in ("hf-mobilenet_v2",) if n in tiny.builders()]
_CACHE: dict[str, tuple] = {}


def _traced(name):
    if name not in _CACHE:
        module, x = tiny.builders()[name]()
        _CACHE[name] = (module, x, interop.channel_groups_report(module, x))
    return _CACHE[name]


@pytest.fixture(scope="module", params=FAST + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW])
def traced(request):
    yield (request.param, *_traced(request.param))


def _state_dict_copy(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def _members(group):
    return {(m.path, m.axis, m.outer, m.inner) for m in group.members}


def _group_of(report, path, axis=0):
    found = [g for g in report.groups if any(m.path == path and m.axis == axis for m in g.members)]
    assert found, (
        f"no group holds {path} axis {axis}; left out: {[(g.name, g.reason) for g in report.left_out]}"
    )
    return found[0]


# ------------------------------------------------------------------ every architecture, end to end
def test_prune_compact_resize_save_reload(traced):
    name, module, x, report = traced
    assert report.groups, f"{name}: no groups; left out {[(g.name, g.reason) for g in report.left_out]}"
    before = _state_dict_copy(module)
    r = tiny.prune_and_check(module, x, report.groups, 0.3)
    assert r["class"] == type(module).__name__
    assert r["params_after"] < r["params_before"]
    assert r["module_vs_masked"] <= 1e-5, r
    assert r["reload_vs_module"] <= 1e-6, r
    assert r["pickled_bytes"] > 0
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the user's module was modified"


def test_every_left_out_group_says_why(traced):
    _, _, _, report = traced
    for g in report.left_out:
        assert g.reason and g.members and g.size > 1


# ----------------------------------------------------------------------------- what the groups hold
def test_small_cnn_groups_residual_bn_depthwise_flatten():
    _, _, report = _traced("small_cnn")
    residual = _group_of(report, "c1.weight")
    assert _members(residual) == {
        ("c1.weight", 0, 1, 1), ("c1.bias", 0, 1, 1), ("b1.weight", 0, 1, 1), ("b1.bias", 0, 1, 1),
        ("state.b1.running_mean", 0, 1, 1), ("state.b1.running_var", 0, 1, 1),
        ("c2.weight", 0, 1, 1), ("c2.weight", 1, 1, 1), ("c2.bias", 0, 1, 1), ("b2.weight", 0, 1, 1),
        ("b2.bias", 0, 1, 1), ("state.b2.running_mean", 0, 1, 1), ("state.b2.running_var", 0, 1, 1),
        ("c3.weight", 1, 1, 1),
    }  # fmt: skip
    wide = _group_of(report, "c3.weight")
    assert ("dw.weight", 0, 1, 1) in _members(wide)  # a depthwise conv passes its channels through
    assert ("fc.weight", 1, 1, 4) in _members(wide)  # flatten of (12, 2, 2) into the linear layer
    scored = {m.path for m in wide.members if m.score}
    assert scored == {"c3.weight", "dw.weight"}
    assert len(report.groups) == 2


@pytest.mark.parametrize("name", ["zoo-lenet5", "zoo-resnet20"])
def test_traced_groups_equal_the_hand_written_ones(name):
    from pure_prune import models

    if name not in tiny.builders():
        pytest.skip(name)
    module, _, report = _traced(name)
    spec = models.get(name.removeprefix("zoo-"))
    hand = spec.groups(module.params())
    assert {frozenset(_members(g)) for g in report.groups} == {frozenset(_members(g)) for g in hand}


def _needs(name):
    if name not in tiny.builders():
        pytest.skip("transformers is not installed")
    return _traced(name)


def test_llama_kv_head_keeps_its_query_heads():
    _, _, report = _needs("hf-llama")
    p = "model.layers.0.self_attn"
    heads = _group_of(report, f"{p}.k_proj.weight")
    assert heads.size == 2  # key/value heads
    assert {(f"{p}.q_proj.weight", 0, 1, 16), (f"{p}.k_proj.weight", 0, 1, 8), (f"{p}.v_proj.weight", 0, 1, 8),
            (f"{p}.o_proj.weight", 1, 1, 16)} == _members(heads)  # fmt: skip
    mlp = _group_of(report, "model.layers.0.mlp.gate_proj.weight")
    assert ("model.layers.0.mlp.up_proj.weight", 0, 1, 1) in _members(mlp)
    assert ("model.layers.0.mlp.down_proj.weight", 1, 1, 1) in _members(mlp)
    reasons = " ".join(g.reason for g in report.left_out)
    assert "sliced by slice_copy" in reasons  # RoPE's rotate_half keeps the head features whole
    assert "reduced over by mean" in reasons  # RMSNorm's statistics keep the hidden size whole


def test_gpt2_fused_qkv_heads_and_mixtral_experts():
    _, _, gpt2 = _needs("hf-gpt2")
    heads = _group_of(gpt2, "transformer.h.0.attn.c_attn.weight", 1)
    assert ("transformer.h.0.attn.c_attn.weight", 1, 3, 8) in _members(heads)
    assert ("transformer.h.0.attn.c_proj.weight", 0, 1, 8) in _members(heads)
    _, _, mixtral = _needs("hf-mixtral")
    experts = _group_of(mixtral, "model.layers.0.mlp.experts.gate_up_proj", 1)
    assert _members(experts) == {
        ("model.layers.0.mlp.experts.gate_up_proj", 1, 2, 1),
        ("model.layers.0.mlp.experts.down_proj", 2, 1, 1),
    }
    assert any("routed by offsets" in g.reason for g in mixtral.left_out)  # whole experts stay


def test_multihead_attention_heads_are_left_out_with_the_reason():
    _, _, report = _traced("nn.TransformerEncoder")
    left = [g for g in report.left_out if any(m.path.endswith("in_proj_weight") for m in g.members)]
    assert left and all(g.reason for g in left)
    assert {g.name for g in report.groups} == {"layers.0.linear1", "layers.1.linear1"}


# --------------------------------------------------------------------- the obvious pruning calls
def test_select_channels_on_default_masks_handles_batchnorm_members():
    module, x, report = _traced("small_cnn")
    _, params, state = interop.from_module(module)
    masks = select.channels(magnitude.magnitude(params, mask.ones_like(params)), 0.5, report.groups)
    assert masks["b1"]["weight"].sum() == 4 and masks["b1"]["bias"].sum() == 4
    cp, cs, _, _ = compact.compact(params, state, masks, report.groups)
    assert cp["b1"]["weight"].shape == (4,) and cs["b1"]["running_mean"].shape == (4,)
    small = interop.to_module(module, cp, cs)
    assert small.c1.out_channels == 4 and small.b1.num_features == 4 and small.c3.in_channels == 4
    assert small.c3.out_channels == 6 and small.dw.groups == 6 and small.fc.in_features == 24


def test_default_prunable_is_linear_and_conv_weights():
    module, _, _ = _needs("hf-bert")
    _, params, _ = interop.from_module(module)
    masks = interop.masks_like(module, params)
    kept = {p for p, m in zip(tree.paths(masks), tree.leaves(masks)) if m is not None}
    assert "bert.encoder.layer.0.attention.self.query.weight" in kept
    assert "classifier.weight" in kept
    assert not any("embeddings" in p or "LayerNorm" in p or p.endswith("bias") for p in kept)


def test_fully_pruned_leaf_warns_with_its_name():
    module, _, _ = _traced("small_cnn")
    _, params, _ = interop.from_module(module)
    masks = interop.masks_like(module, params)
    masks["fc"]["weight"] = torch.zeros_like(masks["fc"]["weight"])
    with pytest.warns(UserWarning, match=r"pruned to 100%: \['fc.weight'\]"):
        interop.to_module(module, params, masks=masks)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        interop.to_module(module, params, masks=interop.masks_like(module, params))


# ------------------------------------------------------------------------------------- bad input
class _Flips(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.b(torch.flip(self.a(x), [1]))


def test_op_without_rule_leaves_its_group_out_naming_the_op():
    report = interop.channel_groups_report(_Flips(), torch.randn(2, 4))
    assert report.groups == ()
    left = [g for g in report.left_out if g.size == 6]
    assert left and all("no channel rule for flip" in g.reason for g in left)


def test_wrong_example_inputs_and_non_modules_are_refused():
    module, _, _ = _traced("small_cnn")
    before = _state_dict_copy(module)
    with pytest.raises(
        ValueError, match=r"forward failed on the example inputs \(Tensor\(shape=\(2, 5, 8, 8\)"
    ):
        interop.channel_groups(module, torch.randn(2, 5, 8, 8))
    with pytest.raises(ValueError, match="give example inputs"):
        interop.channel_groups(module)
    with pytest.raises(TypeError, match="expected an nn.Module"):
        interop.channel_groups(lambda x: x, torch.randn(2))
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_compacted_trees_that_do_not_fit_are_refused_naming_the_leaf():
    module, x, report = _traced("small_cnn")
    _, params, state = interop.from_module(module)
    masks = select.channels(magnitude.magnitude(params, mask.ones_like(params)), 0.5, report.groups)
    cp, cs, _, _ = compact.compact(params, state, masks, report.groups)
    bigger = {**cp, "fc": {**cp["fc"], "weight": torch.zeros(5, 60)}}
    with pytest.raises(ValueError, match=r"params leaf 'fc.weight' has shape \(5, 60\), which does not fit"):
        interop.to_module(module, bigger, cs)
    short_bias = {**cp, "c1": {**cp["c1"], "bias": torch.zeros(3)}}
    with pytest.raises(
        ValueError, match=r"params leaf 'c1.bias' has shape \(3,\), but its layer c1 \(Conv2d\)"
    ):
        interop.to_module(module, short_bias, cs)
    with pytest.raises(ValueError, match=r"state leaf 'b1.running_mean' has shape \(8,\), but its layer b1"):
        interop.to_module(module, cp)  # compacted params need the compacted state
    small = interop.to_module(module, cp, cs)
    buf = io.BytesIO()
    torch.save(small, buf)  # the user's class pickles (compact.to_module's closure wrapper did not)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    torch.testing.assert_close(again(x), small(x), rtol=0, atol=0)
