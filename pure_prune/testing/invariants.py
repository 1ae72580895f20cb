"""Invariant checks for pruning code: plain functions that raise ``AssertionError`` on a violation.

Each check names the leaf path and the index of the first violating entry, with values printed
compactly, e.g.::

    leaf 'fc1.weight' index (3, 2): pruned entry is 0.25, expected exactly 0.0

They need only torch (no hypothesis, no pytest) and work in any research script or test:

    >>> masks_fit_params(params, masks)
    >>> pruned_are_zero(mask.apply(params, masks), masks)
    >>> exact_sparsity(masks, 0.9)                      # global: round(0.9 · N) entries pruned

:func:`format_tensor` and :func:`describe_tree` are the compact printers used in the messages.

The checks live by concept in :mod:`pure_prune.testing.mask_invariants` (masks against params,
exact counts, whole channels/rows/blocks), :mod:`pure_prune.testing.transform_invariants`
(vmapped equals looped, compacted equals masked) and :mod:`pure_prune.testing.printing`; this
module re-exports them all.
"""

from __future__ import annotations

from pure_prune.testing.mask_invariants import (
    exact_n_of_m,
    exact_sparsity,
    masks_fit_params,
    masks_nested,
    optimizer_state_zero_at_pruned,
    pruned_are_zero,
    whole_blocks,
    whole_channels,
    whole_rows,
)
from pure_prune.testing.printing import describe_tree, format_tensor, format_value
from pure_prune.testing.transform_invariants import compacted_equals_masked, vmapped_equals_loop

__all__ = [
    "compacted_equals_masked",
    "describe_tree",
    "exact_n_of_m",
    "exact_sparsity",
    "format_tensor",
    "format_value",
    "masks_fit_params",
    "masks_nested",
    "optimizer_state_zero_at_pruned",
    "pruned_are_zero",
    "vmapped_equals_loop",
    "whole_blocks",
    "whole_channels",
    "whole_rows",
]
