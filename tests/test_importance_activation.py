"""Streaming activation statistics: hand values, streaming = one shot over any split, model runs, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pure_prune.models as models
from pure_prune import rng, tree
from pure_prune.importance import fusion
from pure_prune.importance.activation import (
    ACTIVATION_STATISTICS,
    activation_finalize,
    activation_init,
    activation_stats,
    activation_update,
)


def one_batch(acts: dict, **kw) -> dict:
    stats = activation_init({k: v.shape[1] for k, v in acts.items()}, **kw)
    return activation_finalize(activation_update(stats, acts))


def test_statistics_by_hand():
    # unit 0 sees 1, -1, 2, 0; unit 1 is constant 3
    a = torch.tensor([[1.0, 3], [-1, 3], [2, 3], [0, 3]])
    got = one_batch({"g": a}, bins=4)
    exp = {
        "frequency": [0.5, 1.0],
        "magnitude": [1.0, 3.0],
        "variance": [1.25, 0.0],  # mean 0.5: (0.25 + 2.25 + 2.25 + 0.25) / 4
        "range": [3.0, 0.0],
        # softsign: 1 -> .5, -1 -> -.5, 2 -> 2/3, 0 -> 0; bins [-1,-.5) [-.5,0) [0,.5) [.5,1]
        # counts (0, 1, 1, 2): H = 1.5 ln 2, / ln 4 = 0.75; a constant unit fills one bin: 0
        "entropy": [0.75, 0.0],
    }
    assert list(got) == list(ACTIVATION_STATISTICS) == list(fusion.ACTIVATION_FAMILY)
    for k, v in exp.items():
        torch.testing.assert_close(got[k]["g"], torch.tensor(v, dtype=torch.float64), msg=k)


def test_scale_of_the_histogram():
    a = torch.tensor([[10.0], [-10.0]])
    # scale 1: softsign(±10) = ±10/11, two different bins of 2 -> entropy ln 2 / ln 2 = 1
    assert float(one_batch({"g": a}, bins=2)["entropy"]["g"]) == pytest.approx(1.0)
    # scale 100: ±0.1 -> ±1/11, bins of 64: still two bins, so entropy ln 2 / ln 64 = 1/6
    assert float(one_batch({"g": a}, bins=64, scale=100.0)["entropy"]["g"]) == pytest.approx(1 / 6)


def test_spatial_and_time_dims_are_observations():
    a = rng.normal(3, (5, 4, 3, 2))  # (N, U, H, W)
    flat = a.permute(0, 2, 3, 1).reshape(-1, 4)  # every (n, h, w) one observation of each unit
    got, ref = one_batch({"g": a}), one_batch({"g": flat})
    for k in ACTIVATION_STATISTICS:
        torch.testing.assert_close(got[k]["g"], ref[k]["g"])


def reference(a: torch.Tensor, bins: int) -> dict[str, torch.Tensor]:
    """One-shot statistics of (N, U, T) activations, written independently of the module."""
    obs = a.double().transpose(0, 1).reshape(a.shape[1], -1)
    t = obs / (1 + obs.abs())
    ent = []
    for row in t:
        q = torch.histc(row, bins=bins, min=-1, max=1) / row.numel()
        ent.append(-(q[q > 0] * q[q > 0].log()).sum() / math.log(bins))
    return {
        "frequency": (obs > 0).double().mean(1),
        "magnitude": obs.abs().mean(1),
        "variance": obs.var(1, unbiased=False),
        "entropy": torch.stack(ent),
        "range": obs.amax(1) - obs.amin(1),
    }


@settings(max_examples=25, deadline=None)
@given(
    key=st.integers(0, 2**31 - 1),
    n=st.integers(2, 24),
    cuts=st.lists(st.integers(0, 24), max_size=5),
    offset=st.floats(-3, 3),
)
def test_streaming_equals_one_shot(key, n, cuts, offset):
    a = torch.relu(rng.normal(key, (n, 3, 2)) + offset) - 0.5 * offset  # zeros and a shifted mean
    bounds = sorted({0, n, *[c for c in cuts if c <= n]})
    stats = activation_init({"g": 3}, bins=8)
    for lo, hi in zip(bounds, bounds[1:]):
        stats = activation_update(stats, {"g": a[lo:hi], "ignored": torch.zeros(1, 1)})
    got = activation_finalize(stats)
    ref = reference(a, 8)
    for k in ACTIVATION_STATISTICS:
        torch.testing.assert_close(got[k]["g"], ref[k], atol=1e-9, rtol=1e-9, msg=k)


def test_update_is_pure_and_empty_batches_change_nothing():
    stats = activation_init({"g": 2}, bins=4)
    stats = activation_update(stats, {"g": torch.tensor([[1.0, 2.0]])})
    before = tree.map(lambda x: x.clone(), stats)
    new = activation_update(stats, {"g": torch.tensor([[3.0, 4.0]])})
    for x, y in zip(tree.leaves(stats), tree.leaves(before)):
        assert torch.equal(x, y)
    assert float(new["g"].count) == 2
    same = activation_update(stats, {"g": torch.zeros(0, 2)})
    for x, y in zip(tree.leaves(same), tree.leaves(stats)):
        assert torch.equal(x, y)


def tiny_mlp():
    spec = models.get("mlp")
    params, state = spec.init(0, sizes=(6, 5, 4, 3))
    return spec, params, state


def test_activation_stats_runs_the_model_over_samples_batches():
    spec, params, state = tiny_mlp()
    xs = [rng.normal(i, (7, 6)) for i in range(5)]
    it = iter([(x, torch.zeros(7, dtype=torch.long)) for x in xs])
    got = activation_stats(spec.apply, params, state, it, samples=2)
    assert len(list(it)) == 3  # exactly `samples` batches were read
    stats = activation_init({"fc1": 5, "fc2": 4})
    for x in xs[:2]:
        stats = activation_update(stats, spec.apply(params, state, x, train=False, capture=True)[2])
    ref = activation_finalize(stats)
    for k in ACTIVATION_STATISTICS:
        for g in ("fc1", "fc2"):
            torch.testing.assert_close(got[k][g], ref[k][g])
    only = activation_stats(spec.apply, params, state, xs, groups=["fc2"])  # default samples=100: all 5
    assert set(only["magnitude"]) == {"fc2"}
    assert bool((only["frequency"]["fc2"] >= 0).all() and (only["frequency"]["fc2"] <= 1).all())


def test_lstm_hidden_states_per_unit():
    spec = models.get("lstm_lm")
    params, state = spec.init(0, vocab=20, embed=4, hidden=3, num_layers=1)
    x = torch.randint(0, 20, (2, 5), generator=torch.Generator().manual_seed(0))
    got = activation_stats(spec.apply, params, state, [x, x])
    h = spec.apply(params, state, x, train=False, capture=True)[2]["lstm.0"]  # (N, H, T)
    assert got["magnitude"]["lstm.0"].shape == (3,)
    torch.testing.assert_close(got["magnitude"]["lstm.0"], h.abs().double().mean((0, 2)))
    assert bool((got["range"]["lstm.0"] < 2).all())  # tanh-bounded hidden state


def test_errors():
    stats = activation_init({"g": 2})
    with pytest.raises(ValueError, match="groups \\['g'\\]"):
        activation_update(stats, {"h": torch.zeros(1, 2)})
    with pytest.raises(ValueError, match="acts\\['g'\\] must be \\(N, 2"):
        activation_update(stats, {"g": torch.zeros(1, 3)})
    with pytest.raises(ValueError, match="acts\\['g'\\] holds a non-finite value nan"):
        activation_update(stats, {"g": torch.tensor([[0.0, float("nan")]])})
    with pytest.raises(TypeError, match="acts\\['g'\\] must be floating"):
        activation_update(stats, {"g": torch.zeros(1, 2, dtype=torch.long)})
    with pytest.raises(ValueError, match="group 'g' has no observations"):
        activation_finalize(stats)
    with pytest.raises(ValueError, match="bins"):
        activation_init({"g": 2}, bins=1)
    with pytest.raises(ValueError, match="scale"):
        activation_init({"g": 2}, scale=0.0)
    with pytest.raises(ValueError, match="units\\['g'\\]"):
        activation_init({"g": 0})
    spec, params, state = tiny_mlp()
    with pytest.raises(ValueError, match="samples"):
        activation_stats(spec.apply, params, state, [torch.zeros(1, 6)], samples=0)
    with pytest.raises(ValueError, match="empty"):
        activation_stats(spec.apply, params, state, [])
    with pytest.raises(ValueError, match="\\['nope'\\] are not captured"):
        activation_stats(spec.apply, params, state, [torch.zeros(1, 6)], groups=["nope"])
