"""Shared test configuration: pure_prune's pytest plugin (hypothesis profiles, compact tensor output).

Choose the hypothesis profile with ``PURE_PRUNE_HYPOTHESIS_PROFILE=ci|thorough`` (default ``ci``).
"""

pytest_plugins = ["pure_prune.testing.plugin"]
