"""hessian_diag(method="hutchinson", compile=...): the second call with the same shapes compiles
the block of HVPs (memoised), and its estimate equals the eager one up to rounding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _importance_nets import batch as _batch
from _importance_nets import dense
from torch._dynamo.utils import counters

from pure_prune import losses, tree
from pure_prune.importance import hessian as H
from pure_prune.importance.trace_cache import TRACES
from pure_prune.testing.close import assert_trees_close


def tanh_mlp(p: dict, x: torch.Tensor) -> torch.Tensor:
    h = torch.tanh(F.linear(x, p["fc1"]["weight"], p["fc1"]["bias"]))
    return F.linear(h, p["fc2"]["weight"], p["fc2"]["bias"])


@pytest.fixture(scope="module")
def case():
    def model(p, x):  # a function of its own: a fresh memo for this module
        return tanh_mlp(p, x)

    return losses.model_loss(model, "cross_entropy"), dense(0, (4, 5, 3)), _batch(1, 6, (4,), 3)


def _hutch(loss_fn, params, batch, compile_):
    return H.hessian_diag(loss_fn, params, batch, method="hutchinson", probes=6, key=3, compile=compile_)


def test_second_call_compiles_once_and_equals_eager(case):
    loss_fn, params, batch = case
    eager = _hutch(loss_fn, params, batch, False)
    misses = TRACES.misses
    first = _hutch(loss_fn, params, batch, "aot_eager")  # new shapes: eager
    assert TRACES.misses == misses + 1  # the call count
    assert all(torch.equal(a, b) for a, b in zip(tree.leaves(first), tree.leaves(eager)))
    graphs = counters["stats"]["unique_graphs"]
    second = _hutch(loss_fn, params, batch, "aot_eager")  # traces and compiles
    assert TRACES.misses == misses + 2
    assert counters["stats"]["unique_graphs"] == graphs + 1  # one whole graph, no graph break
    third = _hutch(loss_fn, params, batch, "aot_eager")  # reuses it
    assert TRACES.misses == misses + 2
    for got in (second, third):
        assert_trees_close(got, eager, rtol=1e-12)  # float64: the same HVPs, rounding only
    other = _hutch(loss_fn, params, _batch(2, 5, (4,), 3), "aot_eager")  # another shape: eager again
    assert TRACES.misses == misses + 3
    assert_trees_close(other, _hutch(loss_fn, params, _batch(2, 5, (4,), 3), False), rtol=0.0)


def test_compile_must_be_a_bool_or_a_backend(case):
    loss_fn, params, batch = case
    with pytest.raises(TypeError, match="compile must be a bool"):
        _hutch(loss_fn, params, batch, 1)


@pytest.mark.slow
def test_inductor_block_equals_eager_float32(case):
    loss_fn, params, batch = case
    p32 = tree.map(lambda t: t.float(), params)
    b32 = (batch[0].float(), batch[1])
    eager = _hutch(loss_fn, p32, b32, False)
    for _ in range(2):
        got = _hutch(loss_fn, p32, b32, True)
    assert_trees_close(got, eager, rtol=1e-5)
