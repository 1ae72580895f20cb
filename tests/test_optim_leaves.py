"""pure_prune.optim over leaf lists (``torch._foreach_*`` kernels, masks as factors) against the
tree-by-tree implementation it replaced, kept here as the reference.

The arithmetic is the same, operation for operation, so every update and every state entry must
be *equal* (``torch.equal``: bit-identical values, where ``-0.0`` equals ``0.0``; the reference
selects with ``where`` and gives ``+0.0`` at pruned entries, the product ``x * 0.0`` may give
``-0.0``). Inputs are finite: a non-finite value at a pruned entry is where the two differ by
design (see ``optim``'s docstring).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pure_prune import mask, optim, rng, tree
from pure_prune.mask import keep
from pure_prune.testing import strategies as pst


# ------------------------------------------------------------------ the previous implementation
def reference_sgd(lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    """``optim.sgd``'s update as it was: one ``tree.map`` and one ``where`` per op and leaf."""

    def update(grads, opt_state, params, masks=None):
        masks = tree.map(lambda _: None, params) if masks is None else masks
        rate = torch.full((), lr, dtype=torch.float32)
        wd, mu = weight_decay, momentum
        g = tree.map(lambda g, p, m: keep(g + wd * p if wd else g, m), grads, params, masks)
        new_state = {**opt_state, "count": opt_state["count"] + 1}
        d = g
        if mu > 0:
            buf = tree.map(lambda b, g, m: keep(mu * b + g, m), opt_state["momentum"], g, masks)
            d = tree.map(lambda g, b: g + mu * b, g, buf) if nesterov else buf
            new_state["momentum"] = buf
        return tree.map(lambda d, m: keep(-rate.to(d.dtype) * d, m), d, masks), new_state

    return update


def reference_adam(lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False):
    """``optim.adam``/``adamw``'s update as it was."""
    b1, b2 = betas
    coupled_wd, decoupled_wd = (0.0, weight_decay) if decoupled else (weight_decay, 0.0)

    def update(grads, opt_state, params, masks=None):
        masks = tree.map(lambda _: None, params) if masks is None else masks
        rate = torch.full((), lr, dtype=torch.float32).to(torch.float64)
        t = opt_state["count"].to(torch.float64) + 1.0
        step_size = rate / (1.0 - torch.pow(b1, t))
        root_bc2 = torch.sqrt(1.0 - torch.pow(b2, t))
        g = tree.map(lambda g, p, m: keep(g + coupled_wd * p if coupled_wd else g, m), grads, params, masks)
        mus = tree.map(lambda mu, g, m: keep(mu + (1.0 - b1) * (g - mu), m), opt_state["mu"], g, masks)
        nus = tree.map(lambda nu, g, m: keep(b2 * nu + (1.0 - b2) * (g * g), m), opt_state["nu"], g, masks)

        def leaf_update(mu, nu, p, m):
            u = -step_size.to(p.dtype) * (mu / (torch.sqrt(nu) / root_bc2.to(nu.dtype) + eps))
            if decoupled_wd:
                u = u - (rate * decoupled_wd).to(p.dtype) * p
            return keep(u, m)

        updates = tree.map(leaf_update, mus, nus, params, masks)
        return updates, {**opt_state, "count": opt_state["count"] + 1, "mu": mus, "nu": nus}

    return update


CASES = {
    "sgd": (lambda: optim.sgd(0.1), lambda: reference_sgd(0.1)),
    "sgd_wd": (lambda: optim.sgd(0.2, weight_decay=0.1), lambda: reference_sgd(0.2, weight_decay=0.1)),
    "momentum": (lambda: optim.sgd(0.05, momentum=0.9), lambda: reference_sgd(0.05, momentum=0.9)),
    "nesterov_wd": (
        lambda: optim.sgd(0.1, momentum=0.8, nesterov=True, weight_decay=0.05),
        lambda: reference_sgd(0.1, momentum=0.8, nesterov=True, weight_decay=0.05),
    ),
    "adam": (lambda: optim.adam(0.05), lambda: reference_adam(0.05)),
    "adam_wd": (
        lambda: optim.adam(0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
        lambda: reference_adam(0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
    ),
    "adamw": (
        lambda: optim.adamw(0.05, weight_decay=0.2),
        lambda: reference_adam(0.05, weight_decay=0.2, decoupled=True),
    ),
    "adam_eps0": (lambda: optim.adam(0.05, eps=0.0), lambda: reference_adam(0.05, eps=0.0)),
}


def assert_equal_trees(got, want, what):
    g_paths, g_leaves, _ = tree.flatten_with_paths(got)
    w_leaves = tree.leaves(want)
    assert g_paths == tree.paths(want), what
    for path, a, b in zip(g_paths, g_leaves, w_leaves):
        assert a.dtype == b.dtype and a.shape == b.shape, (what, path)
        # equal values; NaN only where both are NaN (0/0 of adam's eps=0 at kept zero moments)
        same = (a == b) | (torch.isnan(a) & torch.isnan(b))
        assert bool(same.all()), (what, path, (a.double() - b.double()).abs().max())


def _perturbed(key: int, like):
    return tree.map(lambda p: rng.normal(key, p.shape).to(p.dtype) if p is not None else None, like)


# --------------------------------------------------------------------------------- properties
@pytest.mark.parametrize("name", sorted(CASES))
@given(data=st.data())
def test_updates_equal_the_previous_implementation(name, data):
    """Three updates from a dense state (stale at pruned entries), random masks (bool or bytes,
    dense leaves included), random float trees: updates and every state tree equal."""
    params = data.draw(
        pst.params_trees(min_prunable=1, max_leaves=5, none_leaves=False, dtype=st.just(torch.float32)),
        label="params",
    )
    masks = data.draw(pst.masks(params), label="masks")
    as_bytes = data.draw(st.booleans(), label="as_bytes")
    key = data.draw(pst.keys(), label="key")
    make, make_ref = CASES[name]
    opt, ref = make(), make_ref()
    state = opt.init(params)
    dense_grads = _perturbed(key, params)
    state = opt.update(dense_grads, state, params)[1]  # non-zero state everywhere: stale once pruned
    ref_state = state
    given_masks = mask.as_bytes(masks) if as_bytes else masks
    for i in range(3):
        grads = _perturbed(key + 1 + i, params)
        updates, state = opt.update(grads, state, params, given_masks)
        ref_updates, ref_state = ref(grads, ref_state, params, masks)
        assert_equal_trees(updates, ref_updates, f"updates {i}")
        for k in ("momentum", "mu", "nu"):
            if k in ref_state:
                assert_equal_trees(state[k], ref_state[k], f"{k} {i}")
        assert torch.equal(state["count"], ref_state["count"])
        for m, u in zip(tree.leaves(masks), tree.leaves(updates)):
            if m is not None:
                assert bool((u[~m] == 0).all())
        params = optim.apply_updates(params, updates)


@given(data=st.data())
def test_mixed_dtypes_equal_the_previous_implementation(data):
    """float32, float64 and bfloat16 leaves in one tree: each leaf computes in its own dtype."""
    params = data.draw(pst.params_trees(min_prunable=1, max_leaves=5, none_leaves=False), label="params")
    masks = data.draw(pst.masks(params), label="masks")
    for name in ("nesterov_wd", "adamw"):
        make, make_ref = CASES[name]
        opt, ref = make(), make_ref()
        state = opt.init(params)
        grads = _perturbed(5, params)
        got, new_state = opt.update(grads, state, params, masks)
        want, ref_state = ref(grads, state, params, masks)
        assert_equal_trees(got, want, name)


@pytest.mark.parametrize("name", ["momentum", "adamw"])
def test_update_leaves_is_update_over_leaf_lists(name):
    params = {"a": rng.normal(0, (4, 6)), "b": rng.normal(1, (6,)), "c": {"w": rng.normal(2, (3, 4))}}
    masks = {"a": rng.normal(3, (4, 6)) > 0, "b": None, "c": {"w": rng.normal(4, (3, 4)) > 0.5}}
    opt = CASES[name][0]()
    state = opt.init(params)
    grads = _perturbed(7, params)
    want, want_state = opt.update(grads, state, params, masks)
    p_leaves = tree.leaves(params)
    factors = optim.mask_factors(tree.leaves(masks), p_leaves)
    assert factors[1] is None and factors[0].dtype == torch.float32
    got, got_state = opt.update_leaves(tree.leaves(grads), state, p_leaves, factors)
    assert_equal_trees(got, tree.leaves(want), name)
    for k in ("momentum", "mu", "nu"):
        if k in want_state:
            assert_equal_trees(got_state[k], want_state[k], k)


def test_vmapped_update_equals_the_loop():
    """Under ``torch.func.vmap`` (the seeds' steps) the same arithmetic runs leaf by leaf."""
    params = tree.stack([{"w": rng.normal(k, (3, 4)), "b": rng.normal(k + 10, (3,))} for k in range(3)])
    masks = {"w": rng.normal(20, (3, 4)) > 0, "b": None}
    grads = _perturbed(30, params)
    opt = optim.adamw(0.05)
    state = torch.func.vmap(opt.init)(params)
    mapped = torch.func.vmap(lambda g, s, p: opt.update(g, s, p, masks))(grads, state, params)
    for i in range(3):
        one = opt.update(*(tree.map(lambda t, i=i: t[i], x) for x in (grads, state, params)), masks)
        assert_equal_trees(tree.map(lambda t, i=i: t[i], mapped[0]), one[0], f"seed {i}")


def test_bad_state_leaf_names_the_path():
    params = {"a": torch.zeros(2, 3), "b": torch.zeros(3)}
    opt = optim.sgd(0.1, momentum=0.9)
    state = opt.init(params)
    bad = {**state, "momentum": {"a": torch.zeros(3, 2), "b": torch.zeros(3)}}
    leaves = tree.leaves(params)
    with pytest.raises(ValueError, match=r"opt_state\['momentum'\] at 'a' is torch.float32 \(3, 2\)"):
        opt.update_leaves(leaves, bad, leaves, [None, None])
    with pytest.raises(ValueError, match=r"opt_state lacks \['momentum'\]"):
        opt.update_leaves(leaves, {k: v for k, v in state.items() if k != "momentum"}, leaves, [None, None])
