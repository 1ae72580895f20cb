"""Per-unit weight statistics: every formula by hand on a 3-unit group, conv/LSTM effective ranks, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pure_prune.models as models
from pure_prune import rng, tree
from pure_prune.groups import ChannelGroup, Member
from pure_prune.importance import fusion
from pure_prune.importance import weights as W

# a.weight rows are the units' incoming vectors; b.weight columns their outgoing vectors
#   w_0 = [3, 4, 0, 0], w_1 = [1, 1, 1, 1], w_2 = 0;   o_0 = [1, -1], o_1 = 0, o_2 = [2, 0]
PARAMS = tree.canonical(
    {
        "a": {
            "weight": torch.tensor([[3.0, 4, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]]),
            "bias": torch.tensor([5.0, 6, 7]),
        },
        "b": {"weight": torch.tensor([[1.0, 0, 2], [-1, 0, 0]])},
        "other": torch.ones(2),
    }
)
GROUP = ChannelGroup(
    "a",
    3,
    (Member("a.weight", 0), Member("a.bias", 0, score=False), Member("b.weight", 1, score=False)),
)


def close(got: dict, name: str, expected: list[float]) -> None:
    torch.testing.assert_close(got[name], torch.tensor(expected), atol=1e-6, rtol=1e-6)


def test_weight_family_by_hand():
    close(W.weight_l2(PARAMS, [GROUP]), "a", [5.0, 2.0, 0.0])
    # row 0: mean 1.75, squared deviations 1.5625 + 5.0625 + 3.0625 + 3.0625 = 12.75, / 4
    close(W.weight_variance(PARAMS, [GROUP]), "a", [3.1875, 0.0, 0.0])
    close(W.weight_nonzero_ratio(PARAMS, [GROUP]), "a", [0.5, 1.0, 0.0])
    h0 = -(3 / 7 * math.log(3 / 7) + 4 / 7 * math.log(4 / 7)) / math.log(4)
    close(W.weight_entropy(PARAMS, [GROUP]), "a", [h0, 1.0, 0.0])
    # a linear row is a (1, in) matrix: effective rank 1, and 0 for a dead unit
    close(W.effective_rank(PARAMS, [GROUP]), "a", [1.0, 1.0, 0.0])


def test_cooperation_family_by_hand():
    close(W.connection_strength(PARAMS, [GROUP]), "a", [2.0, 0.0, 2.0])
    close(W.degree_centrality(PARAMS, [GROUP]), "a", [1.0, 0.0, 0.5])
    # cos(w_0, w_1) = 7 / (5 * 2) = 0.7; the zero vector has cosine 0 with everything
    close(W.uniqueness(PARAMS, [GROUP]), "a", [0.3, 0.3, 1.0])
    # |cos(o_0, o_2)| = 2 / (sqrt(2) * 2); mean over the two other units
    c = 1 / math.sqrt(2)
    close(W.cooperation_ability(PARAMS, [GROUP]), "a", [c / 2, 0.0, c / 2])


def test_family_keys_match_fusion_defaults():
    assert list(W.weight_stats(PARAMS, [GROUP])) == list(fusion.WEIGHT_FAMILY)
    assert list(W.cooperation_stats(PARAMS, [GROUP])) == list(fusion.COOPERATION_FAMILY)
    stats = W.weight_stats(PARAMS, [GROUP])
    torch.testing.assert_close(stats["l2"]["a"], W.weight_l2(PARAMS, [GROUP])["a"])


def test_masks_and_tol():
    masks = tree.map(lambda x: torch.ones_like(x, dtype=torch.bool), PARAMS)
    masks["a"]["weight"] = torch.tensor([[True, False, True, True], [True] * 4, [True] * 4])
    close(W.weight_l2(PARAMS, [GROUP], masks=masks), "a", [3.0, 2.0, 0.0])
    close(W.weight_nonzero_ratio(PARAMS, [GROUP], masks=masks), "a", [0.25, 1.0, 0.0])
    tiny = tree.map(lambda x: x, PARAMS)
    tiny["a"] = {"bias": PARAMS["a"]["bias"], "weight": torch.tensor([[1e-9, 1, 1, 1], [1.0] * 4, [0.0] * 4])}
    close(W.weight_nonzero_ratio(tiny, [GROUP]), "a", [0.75, 1.0, 0.0])  # tol 1e-8
    close(W.weight_nonzero_ratio(tiny, [GROUP], tol=0.0), "a", [1.0, 1.0, 0.0])
    close(W.degree_centrality(PARAMS, [GROUP], tol=1.5), "a", [0.0, 0.0, 0.5])


def test_effective_rank_of_conv_filters():
    """A filter (in, kh, kw) is the matrix (in, kh*kw): singular values (1, 1) -> 2, (3, 1) -> exp(H)."""
    w = torch.zeros(3, 2, 2, 2)
    w[0, 0, 0, 0] = w[0, 1, 0, 1] = 1.0  # orthonormal rows: sigma = (1, 1)
    w[1, 0, 0, 0], w[1, 1, 0, 0] = 1.0, 2.0  # rank 1
    w[2, 0, 0, 0], w[2, 1, 1, 1] = 3.0, 1.0  # sigma = (3, 1)
    params = {"conv": {"weight": w}, "next": {"weight": torch.ones(4, 3, 1, 1)}}
    g = ChannelGroup("conv", 3, (Member("conv.weight", 0), Member("next.weight", 1, score=False)))
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    close(W.effective_rank(params, [g]), "conv", [2.0, 1.0, math.exp(h)])


def test_effective_rank_of_lstm_gate_rows_and_of_several_members():
    """outer=4: unit j's rows 0*H+j, 1*H+j, 2*H+j, 3*H+j form a (4, in) matrix."""
    hidden, n_in = 2, 3
    w = torch.zeros(4 * hidden, n_in)
    for gate in range(3):
        w[gate * hidden + 0, gate] = 1.0  # unit 0: three orthonormal gate rows and a zero row
    w[[1, 3, 5, 7]] = 1.0  # unit 1: four equal rows
    params = {
        "lstm": {"w_ih": w, "w_hh": torch.zeros(4 * hidden, hidden)},
        "dec": {"weight": torch.ones(5, hidden)},
    }
    g = ChannelGroup("lstm", hidden, (Member("lstm.w_ih", 0, outer=4), Member("dec.weight", 1, score=False)))
    close(W.effective_rank(params, [g]), "lstm", [3.0, 1.0])
    both = ChannelGroup(
        "lstm", hidden, (Member("lstm.w_ih", 0, outer=4), Member("lstm.w_hh", 0, outer=4)) + g.members[1:]
    )
    close(W.effective_rank(params, [both]), "lstm", [1.5, 0.5])  # mean with the all-zero w_hh slice
    # the incoming vector concatenates both members: unit 0 has 3 entries of 1 among 4*(3+2) = 20
    close(W.weight_nonzero_ratio(params, [both]), "lstm", [3 / 20, 12 / 20])


@settings(max_examples=20, deadline=None)
@given(key=st.integers(0, 2**31 - 1), factor=st.floats(0.1, 10.0))
def test_scale_invariance_of_shape_statistics(key, factor):
    """Entropy, effective rank, uniqueness and cooperation ability ignore a unit's scale."""
    p = {"a": {"weight": rng.normal(key, (4, 3, 2, 2))}, "b": {"weight": rng.normal(key + 1, (5, 4, 1, 1))}}
    g = ChannelGroup("a", 4, (Member("a.weight", 0), Member("b.weight", 1, score=False)))
    q = {
        "a": {"weight": p["a"]["weight"] * torch.tensor([factor, 1, 1, 1])[:, None, None, None]},
        "b": {"weight": p["b"]["weight"] * torch.tensor([factor, 1, 1, 1])[None, :, None, None]},
    }
    for fn in (
        W.weight_entropy,
        W.effective_rank,
        W.uniqueness,
        W.cooperation_ability,
        W.weight_nonzero_ratio,
    ):
        torch.testing.assert_close(fn(p, [g])["a"], fn(q, [g])["a"], atol=1e-5, rtol=1e-4)
    l2p, l2q = W.weight_l2(p, [g])["a"], W.weight_l2(q, [g])["a"]
    torch.testing.assert_close(l2q, l2p * torch.tensor([factor, 1, 1, 1]), rtol=1e-5, atol=1e-6)


def test_on_registered_models_ranges_and_shapes():
    spec = models.get("lenet5")
    params, _ = spec.init(0)
    groups = spec.groups(params)
    stats = W.weight_stats(params, groups) | W.cooperation_stats(params, groups)
    for name, per_group in stats.items():
        assert set(per_group) == {g.name for g in groups}
        for g in groups:
            x = per_group[g.name]
            assert x.shape == (g.size,) and x.dtype == torch.float32 and bool(torch.isfinite(x).all())
            if name in ("nonzero_ratio", "entropy", "uniqueness", "degree_centrality", "cooperation_ability"):
                assert bool(((x >= 0) & (x <= 1 + 1e-6)).all()), (name, g.name)
    # conv2 filters (6, 5, 5) -> (6, 25): 1 <= erank <= 6
    e = stats["effective_rank"]["conv2"]
    assert bool(((e >= 1) & (e <= 6)).all()) and float(e.min()) > 1.5


def test_lstm_model_groups():
    spec = models.get("lstm_lm")
    params, _ = spec.init(0, vocab=30, embed=6, hidden=5, num_layers=1)
    groups = spec.groups(params)
    stats = W.weight_stats(params, groups) | W.cooperation_stats(params, groups)
    assert stats["effective_rank"]["lstm.0"].shape == (5,)
    assert bool((stats["effective_rank"]["lstm.0"] > 1).all())  # (4, 6 + 5) gate matrices, full rank
    assert bool((stats["effective_rank"]["embedding"] == 1).all())  # an embedding column is one vector


def test_errors_name_the_offender():
    with pytest.raises(ValueError, match="'missing.weight'"):
        W.weight_l2(PARAMS, [ChannelGroup("x", 3, (Member("missing.weight", 0),))])
    with pytest.raises(ValueError, match="no consumer"):
        W.connection_strength(
            PARAMS, [ChannelGroup("a", 3, (Member("a.weight", 0), Member("a.bias", 0, score=False)))]
        )
    with pytest.raises(ValueError, match="no scored"):
        W.weight_l2(PARAMS, [ChannelGroup("a", 3, (Member("b.weight", 1, score=False),))])
    with pytest.raises(ValueError, match="'a.weight'.*expected"):
        W.weight_l2(PARAMS, [ChannelGroup("a", 2, (Member("a.weight", 0),))])
    bad = tree.map(lambda x: torch.ones_like(x, dtype=torch.bool), PARAMS)
    bad["a"]["weight"] = torch.ones(3, 4)
    with pytest.raises(ValueError, match="mask 'a.weight'"):
        W.weight_l2(PARAMS, [GROUP], masks=bad)
    with pytest.raises(ValueError, match="tol"):
        W.weight_nonzero_ratio(PARAMS, [GROUP], tol=-1.0)
    with pytest.raises(TypeError, match="sequence of ChannelGroup"):
        W.weight_l2(PARAMS, GROUP)
    ints = {"a": {"weight": torch.ones(3, 4, dtype=torch.int64)}}
    with pytest.raises(TypeError, match="'a.weight'"):
        W.weight_l2(ints, [ChannelGroup("a", 3, (Member("a.weight", 0),))])


def test_inputs_are_not_modified():
    before = tree.map(lambda x: x.clone(), PARAMS)
    W.weight_stats(PARAMS, [GROUP])
    W.cooperation_stats(PARAMS, [GROUP])
    for x, y in zip(tree.leaves(PARAMS), tree.leaves(before)):
        assert torch.equal(x, y)
