"""Testing tools for pruning research code: invariant checks, hypothesis strategies, a pytest plugin.

* :mod:`pure_prune.testing.invariants` (re-exported here; needs only torch): checks that raise
  ``AssertionError`` naming the leaf path and the index of the first violation.
* :mod:`pure_prune.testing.strategies` (needs ``hypothesis``; import it explicitly):
  ``from pure_prune.testing import strategies as pst``.
* :mod:`pure_prune.testing.plugin` (needs ``pytest`` and ``hypothesis``): add
  ``pytest_plugins = ["pure_prune.testing.plugin"]`` to a ``conftest.py``.

Importing this package does not import hypothesis or pytest.
"""

from pure_prune.testing.invariants import (
    compacted_equals_masked,
    describe_tree,
    exact_n_of_m,
    exact_sparsity,
    format_tensor,
    format_value,
    masks_fit_params,
    masks_nested,
    optimizer_state_zero_at_pruned,
    pruned_are_zero,
    vmapped_equals_loop,
    whole_blocks,
    whole_channels,
    whole_rows,
)

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
