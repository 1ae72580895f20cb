"""Normalisation, family sums, fusion strategies, adaptive retention and unit scores -> exact masks."""

from __future__ import annotations

import math
from typing import NamedTuple

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pure_prune.models as models
from pure_prune import rng, select, tree
from pure_prune.groups import ChannelGroup, Member
from pure_prune.importance import fusion as F
from pure_prune.importance.activation import activation_stats
from pure_prune.importance.weights import cooperation_stats, weight_stats


def t(*v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float32)


def close(a: torch.Tensor, b, **kw) -> None:
    torch.testing.assert_close(a, b if isinstance(b, torch.Tensor) else torch.tensor(b, dtype=a.dtype), **kw)


# ---------------------------------------------------------------------------------- normalisation
def test_normalize_by_hand():
    x = {"g": t(1, 3, 2, 2), "c": t(4, 4)}
    mm, z, r = F.normalize(x, "minmax"), F.normalize(x, "zscore"), F.normalize(x, "rank")
    close(mm["g"], [0.0, 1.0, 0.5, 0.5])
    s = math.sqrt(0.5)  # population std of (1, 3, 2, 2)
    close(z["g"], [-1 / s, 1 / s, 0.0, 0.0])
    close(r["g"], [0.0, 1.0, 0.5, 0.5])  # ranks 0, 3, and 1.5 shared by the tie; / 3
    close(F.normalize({"g": t(3, 1, 2)}, "rank")["g"], [1.0, 0.0, 0.5])
    for n in (mm, z, r):
        close(n["c"], [0.0, 0.0])  # a constant group discriminates nothing
    close(F.normalize({"one": t(7)}, "rank")["one"], [0.0])
    with pytest.raises(ValueError, match="norm"):
        F.normalize(x, "l2")
    with pytest.raises(ValueError, match="scores\\['g'\\] is not finite at unit 1: inf"):
        F.normalize({"g": t(1, math.inf)})


# ------------------------------------------------------------------------------------- families
def test_default_weights_sum_to_one():
    assert set(F.FAMILY_WEIGHTS) == {"weights", "activations", "gradients", "cooperation"}
    for fam in F.FAMILY_WEIGHTS.values():
        assert math.isclose(sum(fam.values()), 1.0)
    assert dict(F.WEIGHT_FAMILY) == {
        "l2": 0.3,
        "variance": 0.2,
        "nonzero_ratio": 0.2,
        "entropy": 0.2,
        "effective_rank": 0.1,
    }
    assert dict(F.GRADIENT_FAMILY) == {
        "magnitude": 0.4,
        "stability": 0.2,
        "snr": 0.2,
        "sign_consistency": 0.2,
    }
    with pytest.raises(TypeError):
        F.WEIGHT_FAMILY["l2"] = 1.0  # read-only


def test_family_score_is_the_weighted_sum():
    stats = {"a": {"g": t(0, 10, 5)}, "b": {"g": t(2, 1, 0)}, "unused": {"g": t(9, 9, 9)}}
    got = F.family_score(stats, {"a": 0.25, "b": 0.75})["g"]
    close(got, 0.25 * t(0, 1, 0.5) + 0.75 * t(1, 0.5, 0))
    rank = F.family_score(stats, {"a": 0.25, "b": 0.75}, norm="rank")["g"]
    close(rank, 0.25 * t(0, 1, 0.5) + 0.75 * t(1, 0.5, 0))
    full = {k: {"g": rng.normal(i, (5,))} for i, k in enumerate(F.ACTIVATION_FAMILY)}
    expected = sum(w * F.normalize(full[k])["g"] for k, w in F.ACTIVATION_FAMILY.items())
    close(F.family_score(full, F.ACTIVATION_FAMILY)["g"], expected)
    with pytest.raises(ValueError, match="lacks statistics \\['c'\\]"):
        F.family_score(stats, {"a": 1.0, "c": 1.0})
    with pytest.raises(ValueError, match="weight of 'a'"):
        F.family_score(stats, {"a": -1.0})
    with pytest.raises(ValueError, match="statistic 'b' has groups"):
        F.family_score({"a": {"g": t(1, 2)}, "b": {"h": t(1, 2)}}, {"a": 1.0, "b": 1.0})


def test_per_unit_means_by_hand():
    scores = {
        "a": {"weight": t(1, 2, 3, 4, 5, 6).reshape(3, 2), "bias": None},
        "gates": t(1, 2, 3, 4).reshape(4, 1),
        "next": {"weight": torch.full((2, 3), 100.0)},
    }
    g = ChannelGroup(
        "a",
        3,
        (Member("a.weight", 0), Member("a.bias", 0, score=False), Member("next.weight", 1, score=False)),
    )
    close(F.per_unit(scores, [g])["a"], [1.5, 3.5, 5.5])  # consumers and None leaves do not count
    lstm = ChannelGroup("gates", 2, (Member("gates", 0, outer=2),))
    close(F.per_unit(scores, [lstm])["gates"], [2.0, 3.0])  # unit 0 owns rows 0 and 2
    two = ChannelGroup("a", 2, (Member("gates", 0, outer=2), Member("next.weight", 0)))
    close(F.per_unit(scores, [two])["a"], [(1 + 3 + 300) / 5, (2 + 4 + 300) / 5])
    with pytest.raises(ValueError, match="'a' has no scored member"):
        F.per_unit(scores, [ChannelGroup("a", 3, (Member("a.bias", 0),))])


class FakeGradStats(NamedTuple):
    magnitude: dict
    stability: dict
    snr: dict
    sign_consistency: dict


def test_gradient_family_from_attributes_or_keys():
    g = ChannelGroup("w", 2, (Member("w", 0),))
    trees = {k: {"w": t(i, i + 1, i + 2, i + 3).reshape(2, 2)} for i, k in enumerate(F.GRADIENT_FAMILY)}
    fam = F.gradient_family(FakeGradStats(**trees), [g])
    assert list(fam) == list(F.GRADIENT_FAMILY)
    close(fam["stability"]["w"], [1.5, 3.5])
    assert F.gradient_family(trees, [g])["snr"]["w"].tolist() == fam["snr"]["w"].tolist()
    with pytest.raises(ValueError, match="'snr'"):
        F.gradient_family({k: v for k, v in trees.items() if k != "snr"}, [g])


# --------------------------------------------------------------------------------------- fusion
FAMS = {"A": {"g": t(0, 2, 1), "h": t(1, 2)}, "B": {"g": t(5, 5, 7), "h": t(3, 3)}}


def test_simple_is_the_average():
    out = F.fuse(FAMS)
    close(out.scores["g"], 0.5 * t(0, 1, 0.5) + 0.5 * t(0, 0, 1))
    close(out.scores["h"], 0.5 * t(0, 1))
    assert out.weights["g"] == {"A": 0.5, "B": 0.5} and out.state is None
    z = F.fuse(FAMS, norm="zscore").scores["g"]
    close(z, 0.5 * F.normalize(FAMS["A"], "zscore")["g"] + 0.5 * F.normalize(FAMS["B"], "zscore")["g"])


def test_adaptive_weights_follow_the_coefficient_of_variation():
    out = F.fuse(FAMS, strategy="adaptive")
    # minmax A = (0, 1, .5): cv = sqrt(2/3); minmax B = (0, 0, 1): cv = sqrt(2)
    w_a = 1 / (1 + math.sqrt(3))
    assert out.weights["g"]["A"] == pytest.approx(w_a) and out.weights["g"]["B"] == pytest.approx(1 - w_a)
    close(out.scores["g"], w_a * t(0, 1, 0.5) + (1 - w_a) * t(0, 0, 1))
    # group h: B is constant (cv 0), all weight on A
    assert out.weights["h"] == {"A": 1.0, "B": 0.0}
    # invariant to each family's scale and offset
    moved = {"A": {k: 3 * v + 1 for k, v in FAMS["A"].items()}, "B": FAMS["B"]}
    assert F.fuse(moved, strategy="adaptive").weights["g"]["A"] == pytest.approx(w_a)
    flat = F.fuse({"A": {"g": t(1, 1)}, "B": {"g": t(2, 2)}}, strategy="adaptive")
    assert flat.weights["g"] == {"A": 0.5, "B": 0.5}


def test_learned_by_hand():
    state = F.learned_init({"g": 3})
    first = F.fuse(
        {"A": {"g": t(0, 1, 2)}, "B": {"g": t(0, 2, 1)}}, strategy="learned", state=state, decay=0.5
    )
    assert first.weights["g"] == {"A": 0.5, "B": 0.5}  # no history yet
    close(first.scores["g"], [0.0, 0.75, 0.75])
    close(first.state.ema["g"], torch.tensor([0.0, 0.5, 0.5], dtype=torch.float64))  # .5 * minmax(fused)
    assert int(first.state.steps) == 1 and int(state.steps) == 0 and state.ema["g"].abs().sum() == 0
    # history (bias-corrected) is (0, 1, 1): A agrees (pearson .866), B disagrees (-.866 -> 0)
    second = F.fuse(
        {"A": {"g": t(0, 1, 2)}, "B": {"g": t(2, 1, 0)}}, strategy="learned", state=first.state, decay=0.5
    )
    assert second.weights["g"] == {"A": 1.0, "B": 0.0}
    close(second.scores["g"], [0.0, 0.5, 1.0])
    close(second.state.ema["g"], torch.tensor([0.0, 0.5, 0.75], dtype=torch.float64))
    assert int(second.state.steps) == 2


def test_learned_weights_favour_the_stable_family():
    state = F.learned_init({"g": 6})
    stable = t(0, 1, 2, 3, 4, 5)
    for i in range(5):
        noisy = rng.normal(i, (6,))
        out = F.fuse({"stable": {"g": stable}, "noisy": {"g": noisy}}, strategy="learned", state=state)
        state = out.state
    assert out.weights["g"]["stable"] > 0.6


def test_fuse_errors():
    with pytest.raises(TypeError, match="learned_init"):
        F.fuse(FAMS, strategy="learned")
    with pytest.raises(ValueError, match="strategy"):
        F.fuse(FAMS, strategy="mean")
    with pytest.raises(ValueError, match="family 'B' has groups"):
        F.fuse({"A": {"g": t(1, 2)}, "B": {"g": t(1, 2, 3)}})
    with pytest.raises(ValueError, match="learned state has groups"):
        F.fuse(FAMS, strategy="learned", state=F.learned_init({"g": 3}))
    with pytest.raises(ValueError, match="decay"):
        F.fuse(FAMS, strategy="learned", state=F.learned_init({"g": 3, "h": 2}), decay=1.0)
    with pytest.raises(ValueError, match="size of group 'g'"):
        F.learned_init({"g": 0})


# ------------------------------------------------------------------------------------ retention
def test_coefficient_of_variation_and_share_thresholds():
    assert F.coefficient_of_variation(t(1, 0, 0, 0)) == pytest.approx(math.sqrt(3))
    assert F.coefficient_of_variation(t(0, 0)) == 0.0
    assert F.retention_share(2.5 + 1e-9) == 0.7 and F.retention_share(2.5) == 0.8
    assert F.retention_share(1.5 + 1e-9) == 0.8 and F.retention_share(1.5) == 0.9
    assert F.retention_share(0.0, otherwise=0.95) == 0.95


def padded(delta: float, n: int) -> torch.Tensor:
    """(5, 2, 1, 1, 1, delta, 0, ...) of length n: sum 10 + delta, sum of squares 32 + delta²."""
    x = torch.zeros(n, dtype=torch.float64)
    x[:6] = torch.tensor([5.0, 2, 1, 1, 1, delta], dtype=torch.float64)
    return x


def test_retention_rule_at_cv_2_5():
    # cv² = n (32 + d²) / (10 + d)² - 1 = 6.25 with n = 23: 15.75 d² - 145 d + 11 = 0
    d = (145 - math.sqrt(145**2 - 4 * 15.75 * 11)) / (2 * 15.75)
    above, below = padded(d - 1e-4, 23), padded(d + 1e-4, 23)
    assert F.coefficient_of_variation(above) > 2.5 > F.coefficient_of_variation(below)
    # 70% of 10.076 = 7.05: 5 + 2 < 7.05 <= 5 + 2 + 1 -> 3 units; 80% = 8.06 -> 4 units
    assert F.keep_counts({"g": above}) == {"g": 3}
    assert F.keep_counts({"g": below}) == {"g": 4}


def test_retention_rule_at_cv_1_5():
    # n = 11: 7.75 d² - 65 d + 27 = 0
    d = (65 - math.sqrt(65**2 - 4 * 7.75 * 27)) / (2 * 7.75)
    above, below = padded(d - 1e-4, 11), padded(d + 1e-4, 11)
    assert F.coefficient_of_variation(above) > 1.5 > F.coefficient_of_variation(below)
    assert F.keep_counts({"g": above}) == {"g": 4}  # 80% of 10.44 = 8.35 -> 5 + 2 + 1 + 1
    # conservative: 90% = 9.39 -> 5 units, and never fewer than ceil(0.5 * 11) = 6
    assert F.keep_counts({"g": below}) == {"g": 6}
    assert F.keep_counts({"g": below}, floor=0.0) == {"g": 5}
    assert F.keep_counts({"g": torch.zeros(4)}) == {"g": 2}  # nothing to go by: the floor
    assert F.keep_counts({"g": torch.zeros(4)}, floor=0.0) == {"g": 1}  # never an empty layer


def test_keep_masks_break_ties_like_select():
    x = {"g": t(1, 1, 1, 1)}  # cv 0, 90% of 4 = 3.6 -> 4 units; floor 0: still 4
    assert F.keep_counts(x, otherwise=0.5) == {"g": 2}
    assert F.keep_masks(x, otherwise=0.5)["g"].tolist() == [
        False,
        False,
        True,
        True,
    ]  # earliest removed first
    with pytest.raises(ValueError, match="importance\\['g'\\] is negative at unit 1"):
        F.keep_counts({"g": t(1, -1)})
    with pytest.raises(ValueError, match="share"):
        F.keep_counts(x, rules=((2.0, 1.5),))


@settings(max_examples=25, deadline=None)
@given(key=st.integers(0, 2**31 - 1), n=st.integers(1, 40), power=st.floats(0.5, 6.0))
def test_retention_properties(key, n, power):
    x = rng.uniform(key, (n,)) ** power  # larger powers: more unequal, higher cv
    k = F.keep_counts({"g": x})["g"]
    keep = F.keep_masks({"g": x})["g"]
    assert int(keep.sum()) == k and 1 <= k <= n
    cv = F.coefficient_of_variation(x)
    share = F.retention_share(cv)
    v = torch.sort(x.double(), descending=True).values
    total = float(v.sum())
    assert float(x.double()[keep].sum()) >= share * total * (1 - 1e-12)
    if cv > 1.5 and k > 1:  # minimal: one unit fewer would not hold the share
        assert float(v[: k - 1].sum()) < share * total
    if keep.any() and (~keep).any():
        assert float(x[keep].min()) >= float(x[~keep].max())


# ------------------------------------------------------------------------- unit scores -> masks
def test_unit_scores_to_tree_by_hand():
    params = {
        "a": {"weight": torch.ones(3, 2), "bias": torch.ones(3)},
        "b": {"weight": torch.ones(2, 3)},
        "z": torch.ones(2),
    }
    g = ChannelGroup(
        "a", 3, (Member("a.weight", 0), Member("a.bias", 0, score=False), Member("b.weight", 1, score=False))
    )
    out = F.unit_scores_to_tree({"a": t(0.5, 2, 1)}, [g], params)
    close(out["a"]["weight"], t(0.5, 0.5, 2, 2, 1, 1).reshape(3, 2))
    close(out["a"]["bias"], [0.0, 0.0, 0.0])
    close(out["b"]["weight"], torch.zeros(2, 3))
    assert out["z"] is None
    lstm = {"w": torch.ones(4, 1)}
    gl = ChannelGroup("w", 2, (Member("w", 0, outer=2),))
    close(F.unit_scores_to_tree({"w": t(1, 3)}, [gl], lstm)["w"], t(1, 3, 1, 3).reshape(4, 1))
    with pytest.raises(ValueError, match="negative at unit 0"):
        F.unit_scores_to_tree({"a": t(-1, 0, 0)}, [g], params)
    with pytest.raises(ValueError, match="lacks prunable groups \\['a'\\]"):
        F.unit_scores_to_tree({"w": t(1, 3)}, [g, gl], {**params, **lstm})
    with pytest.raises(ValueError, match="has 2 units, group has 3"):
        F.unit_scores_to_tree({"a": t(1, 2)}, [g], params)
    twice = ChannelGroup("c", 2, (Member("a.weight", 1),))
    with pytest.raises(ValueError, match="'a.weight' is scored by groups 'a' and 'c'"):
        F.unit_scores_to_tree({"a": t(1, 2, 3), "c": t(1, 2)}, [g, twice], params)
    with pytest.raises(ValueError, match="keep\\['a'\\]"):
        F.keep_to_sparsity({"a": 4}, [g])


def removed_units(masks: dict, name: str) -> torch.Tensor:
    return ~masks[name]["weight"].any(dim=1)


def test_end_to_end_unit_scores_remove_exact_units():
    """Weights, cooperation, activations, gradients and a HAP-like family on a tiny MLP -> fused
    importance -> adaptive retention -> select.channels removes exactly size - keep units per group."""
    spec = models.get("mlp")
    params, state = spec.init(0, sizes=(10, 16, 12, 3))
    groups = spec.groups(params)
    xs = [rng.normal(i, (8, 10)) for i in range(4)]
    grads = {
        k: tree.map(lambda w, i=i: rng.uniform(i, tuple(w.shape)), params)
        for i, k in enumerate(F.GRADIENT_FAMILY)
    }
    families = {
        "weights": F.family_score(weight_stats(params, groups), F.WEIGHT_FAMILY),
        "cooperation": F.family_score(cooperation_stats(params, groups), F.COOPERATION_FAMILY),
        "activations": F.family_score(activation_stats(spec.apply, params, state, xs), F.ACTIVATION_FAMILY),
        "gradients": F.family_score(F.gradient_family(grads, groups), F.GRADIENT_FAMILY),
        "hap": {g.name: params[g.name]["weight"].square().mean(1) for g in groups},
    }
    fused = F.fuse(families, strategy="adaptive").scores
    keep = F.keep_counts(fused)
    scores = F.unit_scores_to_tree(fused, groups, params)
    masks = select.channels(scores, F.keep_to_sparsity(keep, groups), groups, ord=1, normalize=True)
    expected = F.keep_masks(fused)
    for g in groups:
        gone = removed_units(masks, g.name)
        assert int(gone.sum()) == g.size - keep[g.name]
        assert torch.equal(gone, ~expected[g.name])
        assert not bool(masks[g.name]["bias"][gone].any())  # the bias and the consumer columns go too
        nxt = f"fc{int(g.name[2:]) + 1}"
        assert torch.equal(~masks[nxt]["weight"].any(dim=0), gone)
    # a plain sparsity ranks units by the fused score: the lowest round(0.5 * size) go
    half = select.channels(scores, 0.5, groups, ord=1, normalize=True)
    for g in groups:
        gone = removed_units(half, g.name)
        assert int(gone.sum()) == round(0.5 * g.size)
        assert float(fused[g.name][gone].max()) <= float(fused[g.name][~gone].min())
