"""Token-level (language-model) inputs to the gradient and Hessian scores: logits ``(N, T, C)``,
labels ``(N, T)``; a sample is one sequence whose loss is the mean over its tokens."""

import math

import pytest
import torch
import torch.nn.functional as F
from _importance_nets import CE
from torch.func import grad

import pure_prune.models as models
from pure_prune import tree
from pure_prune.importance import gradient as G
from pure_prune.importance import hessian as H
from pure_prune.importance.problem import linear_taps
from pure_prune.importance.registry import ScoreInput, get
from pure_prune.losses import sample_cross_entropy as cross_entropy
from pure_prune.losses import softmax_factor

V, N, T = 30, 4, 5
SPEC = models.get("lstm_lm")


@pytest.fixture(scope="module")
def lm():
    params, state = SPEC.init(0, vocab=V, embed=8, hidden=8, num_layers=2)
    params = tree.map(lambda t: t.double(), params)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, V, (N, T), generator=gen)
    y = torch.randint(0, V, (N, T), generator=gen)
    return params, state, x, y


def model_fn(state):
    return lambda p, x: SPEC.apply(p, state, x, train=False)[0]


def token_loss(fn, params, x, y):
    """The reference: the mean over every token of the flattened logits."""
    return F.cross_entropy(fn(params, x).reshape(-1, V), y.reshape(-1))


def at(t, params, path):
    """The leaf of ``t`` (a tree like ``params``) at ``path``."""
    return dict(zip(tree.paths(params), tree.leaves(t)))[path]


def close(a, b, tol=1e-9):
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# ----------------------------------------------------------------------------- formulas by hand


def test_cross_entropy_token_level_by_hand():
    logits = torch.tensor([[[0.0, math.log(3.0)], [math.log(2.0), 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    y = torch.tensor([[1, 1], [0, 1]])
    # sample 0: tokens -log(3/4), -log(1/3); sample 1: two tokens -log(1/2)
    l0 = (-math.log(0.75) - math.log(1 / 3)) / 2
    l1 = math.log(2.0)
    per = cross_entropy(logits, y, "none")
    close(per, torch.tensor([l0, l1]), 1e-6)
    close(cross_entropy(logits, y, "sum"), torch.tensor(l0 + l1), 1e-6)
    close(cross_entropy(logits, y), torch.tensor((l0 + l1) / 2), 1e-6)
    flat = F.cross_entropy(logits.reshape(-1, 2), y.reshape(-1))
    close(cross_entropy(logits, y), flat, 1e-6)  # equal token counts: the mean over all tokens
    close(
        cross_entropy(logits[:, 0], y[:, 0], "none"), F.cross_entropy(logits[:, 0], y[:, 0], reduction="none")
    )
    with pytest.raises(ValueError, match="reduction"):
        cross_entropy(logits, y, "max")
    with pytest.raises(ValueError, match=r"labels \(2, 3\)"):
        cross_entropy(logits, torch.zeros(2, 3, dtype=torch.long))


def test_softmax_factor_token_level_is_block_diagonal_hessian():
    logits = torch.tensor([[[0.0, math.log(3.0)], [math.log(2.0), 0.0]]], dtype=torch.float64)
    f = softmax_factor(logits)
    assert f.shape == (1, 4, 2, 2)
    rows = f[0].reshape(4, 4)
    gram = rows.T @ rows  # sum over rows of outer products, over the flattened (t, c) axis
    p = torch.tensor([[0.25, 0.75], [2 / 3, 1 / 3]], dtype=torch.float64)
    want = torch.zeros(4, 4, dtype=torch.float64)
    for t in range(2):
        want[2 * t : 2 * t + 2, 2 * t : 2 * t + 2] = torch.diag(p[t]) - torch.outer(p[t], p[t])
    close(gram, want)
    # row (t=1, c=0) holds sqrt(p_10) (e_0 - p_1) at token 1 only
    close(
        f[0, 2],
        torch.tensor([[0.0, 0.0], [math.sqrt(2 / 3) / 3, -math.sqrt(2 / 3) / 3]], dtype=torch.float64),
    )


def test_checked_logits_token_level_errors():
    y = torch.tensor([[0, 2], [1, 1]])
    checked_logits = CE(lambda p, x: x).check
    assert checked_logits("w", torch.zeros(2, 2, 3), y).shape == (2, 2, 3)
    with pytest.raises(ValueError, match=r"shape \(2, 3\).*labels of shape \(2, 2\)"):
        checked_logits("w", torch.zeros(2, 3), y)
    with pytest.raises(ValueError, match=r"labels y span \[0, 2\].*2 classes"):
        checked_logits("w", torch.zeros(2, 2, 2), y)


def test_labels_without_entries_are_refused(lm):
    params, state, x, _ = lm
    with pytest.raises(ValueError, match=r"batches\[0\] y of shape \(4, 0\) holds no label"):
        G.snip(CE(model_fn(state)), params, (x, torch.zeros(N, 0, dtype=torch.long)))
    with pytest.raises(TypeError, match=r"y must be an int64 tensor of shape \(N,\) or \(N, \.\.\.\)"):
        G.snip(CE(model_fn(state)), params, (x, torch.tensor(3)))


# ----------------------------------------------------------------------------------- LSTM LM


def test_snip_is_the_mean_token_loss_gradient(lm):
    params, state, x, y = lm
    fn = model_fn(state)
    g = grad(lambda p: token_loss(fn, p, x, y))(params)
    got = G.snip(CE(fn), params, (x, y))
    for s, gi, w in zip(tree.leaves(got), tree.leaves(g), tree.leaves(params)):
        close(s, (gi * w).abs())
    # two batches of equal length weigh like one batch of all sequences
    two = G.snip(CE(fn), params, [(x[:2], y[:2]), (x[2:], y[2:])])
    for a, b in zip(tree.leaves(two), tree.leaves(got)):
        close(a, b)


def test_per_sequence_gradients_equal_a_loop_over_sequences(lm):
    params, state, x, y = lm
    fn = model_fn(state)
    loop = [grad(lambda p, n=n: token_loss(fn, p, x[n : n + 1], y[n : n + 1]))(params) for n in range(N)]
    got = G.per_sample_grads(CE(fn), params, (x, y), chunk_size=3)
    for j, leaf in enumerate(tree.leaves(got)):
        close(leaf, torch.stack([tree.leaves(g)[j] for g in loop]))
    stats = G.gradient_stats(CE(fn), params, (x, y))
    assert stats.samples == N
    for j, (mean, fisher, mag) in enumerate(
        zip(tree.leaves(stats.mean), tree.leaves(stats.fisher), tree.leaves(stats.magnitude))
    ):
        per = torch.stack([tree.leaves(g)[j] for g in loop])
        close(mean, per.mean(0))
        close(fisher, (per * per).mean(0))
        close(mag, per.abs().mean(0))
    slow = G.gradient_stats(CE(fn), params, (x, y), fast=False)
    for a, b in zip(tree.leaves(stats.snr), tree.leaves(slow.snr)):
        close(a, b, 1e-7)


def test_linear_taps_leave_token_level_models_to_the_generic_route(lm):
    params, state, x, _ = lm
    assert linear_taps(model_fn(state), params, x).layers == ()
    # one token per sequence: the layers have one row per sample, still token-level logits
    assert linear_taps(model_fn(state), params, x[:, :1]).layers == ()


def test_hessian_auto_uses_hutchinson_for_the_lstm_and_ggn_for_the_decoder(lm):
    params, state, x, y = lm
    fn = model_fn(state)
    exact = H.ggn_is_exact(CE(fn), params, (x, y))
    assert exact["decoder.weight"] and exact["decoder.bias"]
    assert not any(v for p, v in exact.items() if not p.startswith("decoder."))
    auto = H.hessian_diag(CE(fn), params, (x, y), key=3, probes=8)
    lstm_only = tree.map_with_path(
        lambda p, w: None if p.startswith("decoder.") else torch.ones_like(w, dtype=torch.bool), params
    )
    dec_only = tree.map_with_path(
        lambda p, w: torch.ones_like(w, dtype=torch.bool) if p.startswith("decoder.") else None, params
    )
    hutch = H.hessian_diag(CE(fn), params, (x, y), method="hutchinson", key=3, probes=8, masks=lstm_only)
    ggn = H.ggn_diag(CE(fn), params, (x, y), masks=dec_only)
    exact_dec = H.hessian_diag(CE(fn), params, (x, y), method="exact", masks=dec_only)
    for p, a, h, g, e in zip(
        tree.paths(params), tree.leaves(auto), tree.leaves(hutch), tree.leaves(ggn), tree.leaves(exact_dec)
    ):
        if p.startswith("decoder."):
            close(a, g)
            close(g, e)  # logits are linear in the decoder: the token-level GGN is the Hessian diagonal
        else:
            close(a, h)
    with pytest.raises(ValueError, match="pass key="):
        H.hessian_diag(CE(fn), params, (x, y))


def test_token_level_ggn_by_hand_on_the_decoder_bias(lm):
    params, state, x, y = lm
    fn = model_fn(state)
    dec_bias = tree.map_with_path(
        lambda p, w: torch.ones_like(w, dtype=torch.bool) if p == "decoder.bias" else None, params
    )
    got = at(H.ggn_diag(CE(fn), params, (x, y), masks=dec_bias, chunk_size=1), params, "decoder.bias")
    p = fn(params, x).softmax(-1)  # d logits_nt / d bias = I: GGN diag = mean_(n,t) of p - p²
    close(got, (p - p * p).mean((0, 1)))


def test_fisher_mc_token_level_approaches_the_ggn(lm):
    params, state, x, y = lm
    fn = model_fn(state)
    dec_bias = tree.map_with_path(
        lambda p, w: torch.ones_like(w, dtype=torch.bool) if p == "decoder.bias" else None, params
    )
    mc = at(
        H.fisher_diag_mc(CE(fn), params, (x, y), key=1, samples=400, masks=dec_bias), params, "decoder.bias"
    )
    ggn = at(H.ggn_diag(CE(fn), params, (x, y), masks=dec_bias), params, "decoder.bias")
    assert mc.shape == ggn.shape
    assert float((mc.sum() - ggn.sum()).abs() / ggn.sum()) < 0.1


# ---------------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", ["hap", "enhanced", "l1_units"])
def test_unit_criteria_score_every_lstm_group(lm, name):
    params, state, x, y = lm
    masks = tree.map(lambda w: torch.ones_like(w, dtype=torch.bool), params)
    groups = SPEC.groups(params)
    inp = ScoreInput(SPEC.apply, params, state, masks, ((x, y),), key=0, groups=groups)
    scores = get(name)(inp)
    assert set(scores) == {g.name for g in groups if g.prunable}
    for g in groups:
        assert scores[g.name].shape == (g.size,)
        assert bool(scores[g.name].isfinite().all())
    if name == "hap":
        diag = H.hessian_diag(CE(model_fn(state)), params, [(x, y)], key=0, masks=masks)
        want = H.hap(params, diag, [g for g in groups if g.prunable], masks=masks)
        for k in want:
            close(scores[k], want[k])
