"""Faster routes equal the previous ones, bit for bit on CPU: the traced fast path of the
per-sample moments against the eager one, the byte-table Rademacher probes of Hutchinson against
the shift-unpacked ones."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
from _importance_nets import batch as _batch
from _importance_nets import cnn, cnn_params, dense

from pure_prune import losses, rng, tree
from pure_prune.importance import gradient as G
from pure_prune.importance import hessian as H
from pure_prune.importance._functional import batch_moments, prepare, resolve_taps, traced_moments
from pure_prune.importance.trace_cache import TRACES

STATS = ("sum", "sumsq", "abs", "pos", "neg")


def relu_mlp(p: dict, x: torch.Tensor) -> torch.Tensor:
    h = x
    names = sorted(p)
    for name in names[:-1]:
        h = torch.relu(F.linear(h, p[name]["weight"], p[name]["bias"]))
    return h @ p[names[-1]]["weight"].T + p[names[-1]]["bias"]


def _both(loss_fn, params, batch, masks=None):
    problem = prepare("test", loss_fn, params, batch, masks)
    taps = resolve_taps(True, problem, problem.model.split(problem.batches[0])[0])
    run = [batch_moments(problem, taps, problem.batches[0], STATS, None, traced=t) for t in (True, False)]
    return problem, taps, run[0], run[1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_traced_moments_equal_the_eager_route(dtype, loss):
    params = tree.map(lambda t: t.to(dtype), dense(0, (6, 5, 4, 3)))
    x, y = _batch(1, 9, (6,), 3)
    y = y if loss == "cross_entropy" else rng.normal(2, (9, 3), dtype=dtype)
    masks = tree.map(lambda w: rng.uniform(3, w.shape) > 0.3, params)
    masks["fc2"]["bias"] = None  # an unscored bias next to a scored weight
    problem, taps, traced, eager = _both(losses.model_loss(relu_mlp, loss), params, (x.to(dtype), y), masks)
    assert traced_moments(problem, taps, problem.batches[0])
    for s in STATS:
        assert torch.equal(traced[s], eager[s]), s


def test_traced_moments_next_to_generic_leaves():
    params, batch = cnn_params(3), _batch(4, 6, (2, 6, 6), 3)
    problem, taps, traced, eager = _both(losses.model_loss(cnn, "cross_entropy"), params, batch)
    assert [lay.weight for lay in taps.layers] == [3]  # fc by the graph, conv by vmap(grad)
    for s in STATS:
        assert torch.equal(traced[s], eager[s]), s


def test_the_graph_is_traced_once_per_shape_and_still_checks_labels():
    def model(p, x):  # a function of its own: a fresh memo
        return relu_mlp(p, x)

    loss_fn = losses.model_loss(model, "cross_entropy")
    params = dense(5, (4, 3, 3))
    first = G.gradient_snr(loss_fn, params, _batch(6, 7, (4,), 3))
    misses = TRACES.misses
    again = G.gradient_snr(loss_fn, params, _batch(6, 7, (4,), 3))
    assert TRACES.misses == misses  # taps and moment graph both memoised
    assert all(torch.equal(a, b) for a, b in zip(tree.leaves(first), tree.leaves(again)))
    x, y = _batch(7, 7, (4,), 3)
    with pytest.raises(ValueError, match="labels y span"):
        G.gradient_snr(loss_fn, params, (x, y + 5))


def test_a_callable_output_loss_runs_eagerly():
    def huber(out, t):
        return F.huber_loss(out, t)

    params = dense(8, (4, 3, 2))
    x = rng.normal(9, (5, 4), dtype=torch.float64)
    problem, taps, traced, eager = _both(losses.model_loss(relu_mlp, huber), params, (x, x[:, :2]))
    assert taps.layers and not traced_moments(problem, taps, problem.batches[0])
    for s in STATS:
        assert torch.equal(traced[s], eager[s]), s


@pytest.mark.parametrize("width", [(3, 5), (4, 8)])  # 15 + 3 and 32 + 4 entries: partial and whole words
def test_hutchinson_probes_from_the_byte_table_equal_the_shifted_bits(monkeypatch, width):
    params = {"b": torch.zeros(width[0]), "w": torch.zeros(width)}

    def loss(p, batch):  # rows of w couple all their entries: the estimate depends on every sign
        return 0.5 * ((p["w"].sum(1) * batch[0]).square().sum() + (p["b"] * batch[0]).square().sum())

    def probes(order):
        monkeypatch.setattr(sys, "byteorder", order)
        return H.hessian_diag(loss, params, (torch.ones(1),), method="hutchinson", probes=5, key=11)

    little, big = probes("little"), probes("big")
    assert all(torch.equal(a, b) for a, b in zip(tree.leaves(little), tree.leaves(big)))
