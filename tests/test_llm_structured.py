"""pure_prune.llm.structured on tiny llama models: compacted == masked for heads, channels and
blocks; ShortGPT's block influence against its formula; structured Wanda scores by hand."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from pure_prune import compact, mask, rng, select, tree
from pure_prune.groups import member_view
from pure_prune.llm import structured
from pure_prune.models import llama
from pure_prune.testing.close import assert_close

CFG = {"vocab": 17, "dim": 16, "n_layers": 3, "n_heads": 4, "n_kv_heads": 2, "ffn": 12, "context": 10}


@pytest.fixture(scope="module")
def model():
    params, state = llama.init(11, **CFG)
    return params, state


def tokens(n: int, t: int, key: int) -> torch.Tensor:
    return torch.randint(0, CFG["vocab"], (n, t), generator=rng.generator(key))


def block_fns(params, state, t):
    cos_sin = llama.rope(state, t)
    return [
        (name, functools.partial(llama.block, llama.get_block(params, name), cos_sin=cos_sin, capture=True))
        for name in llama.block_names(params)
    ]


@pytest.fixture(scope="module")
def stats(model):
    params, state = model
    batches = [tokens(2, 8, k) for k in (1, 2)]
    return structured.calibration_stats(
        lambda x: llama.embed(params, x), block_fns(params, state, 8), batches
    )


def test_block_influence_by_hand():
    h_in = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    h_out = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    # cosines 1 and 1/sqrt(2)
    assert math.isclose(float(structured.block_influence(h_in, h_out)), 1 - (1 + 2**-0.5) / 2, rel_tol=1e-12)
    with pytest.raises(ValueError, match="must match"):
        structured.block_influence(h_in, h_out[:1])


def test_calibration_stats_equal_the_definitions(model, stats):
    params, state = model
    x = torch.cat([tokens(2, 8, k) for k in (1, 2)])
    hs = llama.hidden_states(params, state, x)
    want = torch.stack([structured.block_influence(a, b) for a, b in zip(hs[:-1], hs[1:])])
    assert_close(stats.block_influence, want, rtol=1e-6)
    assert stats.tokens == 32
    cos_sin = llama.rope(state, 8)
    for i, name in enumerate(llama.block_names(params)):
        _, inputs = llama.block(llama.get_block(params, name), hs[i], cos_sin, capture=True)
        for lin in ("attn.o", "mlp.down"):
            norms = inputs[lin].double().reshape(-1, inputs[lin].shape[-1]).norm(dim=0)
            assert_close(stats.input_norms[f"{name}.{lin}.weight"], norms, rtol=1e-6)


def test_activation_unit_scores_by_hand():
    w = torch.tensor([[1.0, -2.0, 0.5, 0.0], [0.0, 1.0, -1.0, 3.0]])  # consumer (out 2, in 4)
    params = {"down": {"weight": w}, "up": {"weight": torch.ones(4, 3)}}
    from pure_prune.groups import ChannelGroup, Member

    g = ChannelGroup(
        "mlp", 2, (Member("up.weight", 0, inner=2), Member("down.weight", 1, inner=2, score=False))
    )
    norms = torch.tensor([1.0, 2.0, 3.0, 4.0])
    got = structured.activation_unit_scores(params, [g], {"down.weight": norms})
    # unit 0 owns input columns 0, 1; unit 1 columns 2, 3: sum |W_ij| * ||X_j||
    assert torch.equal(
        got["mlp"],
        torch.tensor([1 * 1 + 2 * 2 + 0 + 1 * 2, 0.5 * 3 + 0 + 1 * 3 + 3 * 4], dtype=torch.float64),
    )
    with pytest.raises(ValueError, match="one norm per input column"):
        structured.activation_unit_scores(params, [g], {"down.weight": norms[:3]})
    with pytest.raises(ValueError, match="no member has input norms"):
        structured.activation_unit_scores(params, [g], {})


@pytest.mark.parametrize(
    "kind, scope", [("attn", "global"), ("attn", "layer"), ("mlp", "layer"), ("mlp", "global")]
)
def test_compacted_units_equal_masked(model, stats, kind, scope):
    params, state = model
    groups = structured.groups_of(llama.groups(params), kind)
    scores = structured.activation_unit_scores(params, groups, stats.input_norms)
    masks = structured.unit_masks(params, groups, scores, 0.5, scope=scope)
    small_p, small_s, _, kept = compact.compact(params, state, masks, groups)
    flat = dict(zip(tree.paths(masks), tree.leaves(masks)))
    pruned = [int((~member_view(flat[g.members[0].path], g.members[0], g.size).any(1)).sum()) for g in groups]
    units = sum(g.size for g in groups)
    assert sum(pruned) == (units // 2 if scope == "global" else sum(g.size // 2 for g in groups))
    assert max(k / g.size for k, g in zip(pruned, groups)) < 1  # min_units=1: no group emptied
    assert sum(g.size - kept[g.name].numel() for g in groups) == sum(pruned)
    if kind == "attn":  # GQA consistent: every block keeps H/KV = 2 query heads per KV head
        for name in llama.block_names(small_p):
            p = llama.get_block(small_p, name)
            assert p["attn"]["q"]["weight"].shape[0] == 2 * p["attn"]["k"]["weight"].shape[0]
    x = tokens(2, 10, 5)
    want, _ = llama.apply(mask.apply(params, masks), state, x, train=False)
    got, _ = llama.apply(small_p, small_s, x, train=False)
    assert_close(got, want, rtol=1e-5)
    assert not torch.allclose(want, llama.apply(params, state, x, train=False)[0])
    assert llama.flops_per_token(small_p, 10) < llama.flops_per_token(params, 10)


def test_removed_blocks_equal_masked_blocks(model, stats):
    params, state = model
    drop = structured.lowest_blocks(stats.block_influence, 1)
    assert drop == [int(torch.argmin(stats.block_influence))]
    masks = structured.block_masks(params, drop, mask.ones_like(params))
    assert structured.dead_blocks(masks) == drop
    small = llama.drop_blocks(params, structured.dead_blocks(masks))
    assert llama.block_names(small) == ["blocks.0", "blocks.1"]
    x = tokens(2, 10, 6)
    want, _ = llama.apply(mask.apply(params, masks), state, x, train=False)
    assert_close(llama.apply(small, state, x, train=False)[0], want, rtol=1e-5)
    # combined with units: compacting the remaining blocks after dropping keeps the outputs
    groups = llama.groups(small)
    m2 = select.units({g.name: torch.arange(g.size, dtype=torch.float32) for g in groups}, 0.5, groups, small)
    small_p, small_s, _, _ = compact.compact(small, state, m2, groups)
    assert_close(
        llama.apply(small_p, small_s, x, train=False)[0],
        llama.apply(mask.apply(small, m2), state, x, train=False)[0],
        rtol=1e-5,
    )


def test_min_units_keeps_the_best_unit_of_every_group(model):
    params, _ = model
    groups = structured.groups_of(llama.groups(params), "attn")  # 3 groups of 2 units
    # block 0's units score lowest: a plain global selection of 2 units would empty it
    scores = {g.name: torch.tensor([float(i), float(i) + 0.5]) for i, g in enumerate(groups)}
    masks = structured.unit_masks(params, groups, scores, 2 / 6, scope="global")
    k = {name: bool(masks["blocks"][name[7]]["attn"]["k"]["weight"].any(1).all()) for name in scores}
    assert k == {"blocks.0.attn": False, "blocks.1.attn": False, "blocks.2.attn": True}
    with pytest.raises(ValueError, match="needs more than the 3 left"):
        structured.unit_masks(params, groups, scores, 4 / 6, scope="global")
    assert structured.unit_masks(params, groups, scores, 4 / 6, scope="global", min_units=0) is not None


def test_block_errors(model):
    params, _ = model
    with pytest.raises(ValueError, match=r"n must be an int in \[0, 3\)"):
        structured.lowest_blocks(torch.zeros(3), 3)
    with pytest.raises(ValueError, match=r"no blocks \[7\]"):
        structured.block_masks(params, [7])
    with pytest.raises(ValueError, match="distinct blocks"):
        llama.drop_blocks(params, [1, 1])
    with pytest.raises(ValueError, match=r"no channel group named '\*.heads'"):
        structured.groups_of(llama.groups(params), "heads")
    assert structured.dead_blocks(tree.map(lambda _: None, params)) == []
