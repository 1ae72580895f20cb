"""Mutation check of the property tests: plant one realistic bug at a time and see its tests fail.

* :mod:`tests.mutation.mutants`: the registry, one :class:`~tests.mutation.mutants.Mutant` per
  planted bug (the function it replaces, the buggy replacement, the tests that must catch it).
* :mod:`tests.mutation.plant`: a pytest plugin (``-p tests.mutation.plant``) that plants the
  mutant named by ``PURE_PRUNE_MUTANT`` in memory, in the pytest process only. No file on disk
  is ever edited, so other test runs in the same working tree are unaffected.
* :mod:`tests.mutation.check`: runs the baseline and every mutant, prints the table and exits
  non-zero when a mutant survives, a test fails without a mutant, or a property test is named by
  no mutant (``python -m tests.mutation.check``; ``make test`` runs it).

No file here is named ``test_*.py``: pytest does not collect this folder.
"""
