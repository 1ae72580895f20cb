"""Testing tools for pruning research code: invariant checks, hypothesis strategies, a pytest plugin.

* :mod:`pure_prune.testing.invariants` (re-exported here; needs only torch): checks that raise
  ``AssertionError`` naming the leaf path and the index of the first violation.
* :mod:`pure_prune.testing.close` (re-exported as ``testing.close``; needs only torch): float
  comparisons whose tolerance scales with the magnitude of the values compared.
* :mod:`pure_prune.testing.strategies` (needs ``hypothesis``; import it explicitly):
  ``from pure_prune.testing import strategies as pst``.
* :mod:`pure_prune.testing.plugin` (needs ``pytest`` and ``hypothesis``): add
  ``pytest_plugins = ["pure_prune.testing.plugin"]`` to a ``conftest.py``.

Importing this package does not import hypothesis or pytest.
"""

from pure_prune.testing import close, invariants
from pure_prune.testing.invariants import *  # noqa: F403 - the re-export is exactly invariants.__all__

__all__ = ["close", *invariants.__all__]
