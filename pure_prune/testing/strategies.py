"""Hypothesis strategies for pruning code: parameter trees, masks, scores, sparsities, batches.

Needs the optional ``hypothesis`` package (``pip install pure-prune[test]``); ``import pure_prune``
never imports it. Tensor values come from a drawn :mod:`pure_prune.rng` key, so an example is
cheap to draw and shrinks by structure (fewer leaves, smaller shapes) and key::

    from hypothesis import given
    from pure_prune.testing import strategies as pst

    @given(pst.params_trees(), pst.sparsities())
    def test_my_selection(params, s): ...

    @given(pst.params_trees(min_prunable=1).flatmap(lambda p: pst.masks(p)))
    def test_with_masks(masks): ...

Every strategy that depends on an earlier value (``masks(params)``, ``scores(like)``) takes the
tree as an argument; chain them with ``st.data()`` or ``flatmap``.

The strategies live by concept in :mod:`pure_prune.testing.tensor_strategies` (scalars, shapes,
tensors, parameter trees), :mod:`pure_prune.testing.mask_strategies` (masks, scores) and
:mod:`pure_prune.testing.model_strategies` (channel networks, batches); this module re-exports
them all.
"""

from __future__ import annotations

from pure_prune.testing.mask_strategies import MASK_KINDS, masks, scores
from pure_prune.testing.model_strategies import batches, channel_nets
from pure_prune.testing.tensor_strategies import (
    FLOAT_DTYPES,
    dtypes,
    keys,
    params_trees,
    schedules,
    shapes,
    sparsities,
    tensors,
)

__all__ = [
    "FLOAT_DTYPES",
    "MASK_KINDS",
    "batches",
    "channel_nets",
    "dtypes",
    "keys",
    "masks",
    "params_trees",
    "schedules",
    "scores",
    "shapes",
    "sparsities",
    "tensors",
]
