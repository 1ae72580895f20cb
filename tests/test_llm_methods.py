"""Magnitude, Wanda, SparseGPT and OWL against their definitions, on hand-made layers."""

from __future__ import annotations

import pytest
import torch

from pure_prune import rng
from pure_prune.llm import magnitude, owl, sparsegpt, stats, wanda
from pure_prune.llm.pattern import Pattern, parse

pytestmark = pytest.mark.usefixtures("one_thread")


def close(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    """``max |a - e| <= rtol · max |e|`` (a tolerance relative to the compared magnitudes)."""
    scale = float(expected.abs().max()) or 1.0
    err = float((actual.double() - expected.double()).abs().max())
    assert err <= rtol * scale, f"max error {err:.3g} > {rtol:g} · {scale:.3g}"


def layer_stats(x: torch.Tensor) -> stats.LayerStats:
    return stats.accumulate(stats.empty(x.shape[-1], gram=True, dtype=torch.float64, device="cpu"), x)


# ------------------------------------------------------------------------------------ patterns
def test_patterns_parse_and_refuse():
    assert parse("2:4") == Pattern(0.5, 2, 4) and str(parse("4:8")) == "4:8"
    assert parse("50%") == parse(0.5) == parse("0.5") == Pattern(0.5)
    for bad, exc in (
        ("5:4", ValueError),
        ("a:b", ValueError),
        (1.2, ValueError),
        (True, TypeError),
        ("x", ValueError),
    ):
        with pytest.raises(exc):
            parse(bad)
    with pytest.raises(ValueError, match="m=4 does not divide in_features=6 of linear weight 'l.w'"):
        parse("2:4").check_fits("l.w", (3, 6))


# ------------------------------------------------------------------------------- magnitude, Wanda
W = torch.tensor([[4.0, -1.0, 2.0, 3.0], [1.0, 1.0, -5.0, 0.5]])
X = torch.tensor([[1.0, 2.0, 0.0, 1.0], [1.0, 2.0, 1.0, 1.0]])  # two tokens: Σx² = [2, 8, 1, 2]


def test_wanda_mask_is_the_formula_on_a_hand_made_layer():
    # |W| · ‖X_j‖: row 0 [5.66, 2.83, 2.00, 4.24], row 1 [1.41, 2.83, 5.00, 0.71]; half of each row pruned
    s = layer_stats(X)
    close(wanda.scores(W, s.sq_norms), torch.tensor([[4 * 2**0.5, 8**0.5, 2, 3 * 2**0.5], [2**0.5, 8**0.5, 5, 0.5 * 2**0.5]], dtype=torch.float64), 1e-12)  # fmt: skip
    new_w, keep = wanda.prune_layer(W, s, parse(0.5))
    assert keep.tolist() == [[True, False, False, True], [False, True, True, False]]
    assert torch.equal(new_w, W * keep)
    assert wanda.prune_layer(W, s, parse("1:4"))[1].tolist() == [
        [True, False, False, False],
        [False, False, True, False],
    ]
    # compared over the layer: 0.71, 1.41, 2.0 and the first of the tied 2.83s pruned
    layer = wanda.method("layer")
    assert layer.name == "wanda-layer" and layer.prune_layer(W, s, parse(0.5), "w")[1].tolist() == [[True, False, False, True], [False, True, True, False]]  # fmt: skip
    with pytest.raises(ValueError, match="comparison must be"):
        wanda.method("column")
    # magnitude compares over the whole layer, without activations: a different mask
    assert magnitude.prune_layer(W, None, parse(0.5))[1].tolist() == [
        [True, False, True, True],
        [False, False, True, False],
    ]


def test_exact_counts_and_n_of_m():
    w = rng.normal(0, (5, 8))
    s = layer_stats(rng.normal(1, (30, 8)))
    assert int((~magnitude.prune_layer(w, None, parse(0.3))[1]).sum()) == round(0.3 * 40)
    assert ((~wanda.prune_layer(w, s, parse(0.25))[1]).sum(1) == 2).all()
    for m in (magnitude, wanda):
        keep = m.prune_layer(w, s, parse("2:4"))[1]
        assert (keep.reshape(5, 2, 4).sum(-1) == 2).all()


# ------------------------------------------------------------------------------------ SparseGPT
def _obs_setup(damp):
    x = rng.normal(2, (50, 6)).double() * torch.linspace(0.2, 3, 6, dtype=torch.float64)
    w = rng.normal(3, (3, 6)).double()
    h = x.T @ x
    hd = h + damp * torch.diagonal(h).mean() * torch.eye(6, dtype=torch.float64)
    return x, w, h, hd


@pytest.mark.parametrize("q, block_size", [(0, 128), (3, 128), (3, 2)])
def test_sparsegpt_single_pruned_weight_is_the_closed_form_obs_update(q, block_size):
    """Column ``q`` is pruned after the columns before it are frozen: the OBS update
    ``δw = −w_q / [H_F⁻¹]_00 · [H_F⁻¹]_{0,:}`` over the free columns ``F = q..in``."""
    x, w, h, hd = _obs_setup(0.01)
    keep = torch.ones_like(w, dtype=torch.bool)
    keep[1, q] = False
    new_w, got_keep = sparsegpt.prune_weight(w, h, keep=keep, damp=0.01, block_size=block_size)
    hinv = torch.linalg.inv(hd[q:, q:])
    expected = w.clone()
    expected[1, q:] = w[1, q:] - w[1, q] / hinv[0, 0] * hinv[0, :]
    assert torch.equal(got_keep, keep) and new_w[1, q] == 0
    close(new_w, expected, 1e-10)


def test_sparsegpt_obs_error_is_w_squared_over_the_inverse_hessian_diagonal():
    x, w, h, _ = _obs_setup(0.0)
    keep = torch.ones_like(w, dtype=torch.bool)
    keep[2, 0] = False
    new_w, _ = sparsegpt.prune_weight(w, h, keep=keep, damp=0.0)
    err = stats.reconstruction_error(w, new_w, h) ** 2
    close(torch.tensor(err), w[2, 0] ** 2 / torch.linalg.inv(h)[0, 0], 1e-6)


def test_sparsegpt_patterns_exact_zero_and_lazy_blocks():
    x = rng.normal(4, (80, 16)).double() * torch.linspace(0.1, 2, 16, dtype=torch.float64)
    w = rng.normal(5, (6, 16))
    h = x.T @ x
    for spec in ("2:4", "4:8"):
        a, keep = sparsegpt.prune_weight(w, h, parse(spec), block_size=8)
        b, keep_b = sparsegpt.prune_weight(w, h, parse(spec), block_size=128)
        n, m = parse(spec).n, parse(spec).m
        assert (keep.reshape(6, -1, m).sum(-1) == n).all() and torch.equal(keep, keep_b)
        assert (a[~keep] == 0).all() and a.dtype == w.dtype
        close(a, b, 1e-5)  # lazy batch updates are exact
    a, keep = sparsegpt.prune_weight(w, h, parse(0.37), block_size=5)
    assert int((~keep).sum()) == round(0.37 * 96) and (a[~keep] == 0).all()
    with pytest.raises(ValueError, match="block_size=6 must be a multiple of m=4"):
        sparsegpt.prune_weight(w, h, parse("2:4"), block_size=6)
    with pytest.raises(ValueError, match="exactly one of pattern and keep"):
        sparsegpt.prune_weight(w, h)


def test_sparsegpt_never_active_input_is_zeroed_and_pruned_first():
    x = rng.normal(6, (40, 8)).double()
    x[:, 3] = 0
    w = rng.normal(7, (4, 8)).double()
    new_w, keep = sparsegpt.prune_weight(w, x.T @ x, parse("1:2"), damp=0.0)
    assert (new_w[:, 3] == 0).all() and not keep[:, 3].any()


# ------------------------------------------------------------------------------------------ OWL
def test_owl_outlier_ratio_and_allocation_by_hand():
    # A = |W| · ‖X_j‖ = [1, 10, 1, 1], mean 3.25; above 2 · mean: one of four
    assert owl.outlier_ratio([torch.tensor([[1.0, 10.0], [1.0, 1.0]])], [torch.ones(2)], 2.0) == 0.25
    # ratios [0.1, 0.3, 0.2] spread to [0, 0.2, 0.1] (2λ = 0.2), centred: more outliers, less sparsity
    got = owl.allocate([0.1, 0.3, 0.2], 0.5, 0.1)
    assert got == pytest.approx([0.6, 0.4, 0.5], rel=1e-12)
    assert owl.allocate([0.2, 0.2], 0.7, 0.08) == [0.7, 0.7]
    with pytest.raises(ValueError, match="unstructured"):
        owl.allocate([0.1, 0.2], "2:4", 0.1)
    with pytest.raises(ValueError, match="leave"):
        owl.allocate([0.0, 1.0], 0.95, 0.2)
