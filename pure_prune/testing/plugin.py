"""pytest plugin for pruning tests: hypothesis profiles, compact tensor output, a per-test key.

Enable it in a ``conftest.py``::

    pytest_plugins = ["pure_prune.testing.plugin"]

* Hypothesis profiles ``"ci"`` (:data:`CI_EXAMPLES` examples) and ``"thorough"`` (500 examples),
  both without deadline, randomized, printing the reproduction blob and not failing on slow data
  generation. The profile comes from the environment variable ``PURE_PRUNE_HYPOTHESIS_PROFILE``
  (default ``"ci"``); hypothesis' own ``--hypothesis-profile`` option still wins.
  :func:`scaled_examples` sizes an explicit ``max_examples`` so that it grows with the profile.
* Readable failures: while a test runs and while its failure is rendered, tensors print compactly
  (at most 48 entries, 4 digits; :func:`compact_tensor_printing`), so hypothesis' falsifying
  examples and pytest's tracebacks stay short, and ``assert a == b`` on tensors or trees of tensors
  explains itself with :func:`~pure_prune.testing.invariants.describe_tree` (path, dtype, shape,
  first values) and the first differing index.
* ``key`` fixture: a :mod:`pure_prune.rng` key that is stable per test (from the test's node id).
"""

from __future__ import annotations

import contextlib
import os
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, settings

from pure_prune import tree
from pure_prune.testing.invariants import describe_tree, format_tensor, format_value

__all__ = [
    "CI_EXAMPLES",
    "PROFILE_ENV",
    "PROFILES",
    "compact_tensor_printing",
    "register_profiles",
    "scaled_examples",
]

PROFILE_ENV = "PURE_PRUNE_HYPOTHESIS_PROFILE"
CI_EXAMPLES = 30
_COMMON: dict[str, Any] = {
    "deadline": None,
    "derandomize": False,
    "print_blob": True,
    "suppress_health_check": (HealthCheck.too_slow,),
}
PROFILES: dict[str, dict[str, Any]] = {
    "ci": {"max_examples": CI_EXAMPLES, **_COMMON},
    "thorough": {"max_examples": 500, **_COMMON},
}


def register_profiles() -> None:
    """Register the ``"ci"`` and ``"thorough"`` profiles with hypothesis (idempotent)."""
    for name, kwargs in PROFILES.items():
        settings.register_profile(name, **kwargs)


def scaled_examples(n_ci: int) -> int:
    """``n_ci`` examples under the ``"ci"`` profile, proportionally more under a larger profile.

    For tests whose examples are costly: ``@settings(max_examples=scaled_examples(8))`` runs 8
    examples in CI and ``8 · 500 / 30 = 133`` under ``"thorough"``. Read at decoration time, so
    the profile must be loaded first (this plugin does that in ``pytest_configure``).
    """
    return max(1, round(n_ci * settings().max_examples / CI_EXAMPLES))


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Register the profiles (before hypothesis' plugin reads ``--hypothesis-profile``) and load
    the one named by ``PURE_PRUNE_HYPOTHESIS_PROFILE``."""
    register_profiles()
    chosen = config.getoption("hypothesis_profile", default=None)
    if chosen:
        return
    name = os.environ.get(PROFILE_ENV, "ci")
    if name not in PROFILES:
        raise pytest.UsageError(f"{PROFILE_ENV}={name!r}: expected one of {sorted(PROFILES)}")
    settings.load_profile(name)


@contextlib.contextmanager
def compact_tensor_printing() -> Iterator[None]:
    """Within the block tensors print with at most 48 entries and 4 digits; torch's default print
    options are restored on exit."""
    torch.set_printoptions(precision=4, threshold=48, edgeitems=2, linewidth=110)
    try:
        yield
    finally:
        torch.set_printoptions(profile="default")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """Print tensors compactly while the test body runs (hypothesis' falsifying example)."""
    with compact_tensor_printing():
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Print tensors compactly while pytest renders the failure (the test's arguments, locals)."""
    with compact_tensor_printing():
        yield


def _has_tensor(x: Any) -> bool:
    if isinstance(x, torch.Tensor):
        return True
    if isinstance(x, (dict, list, tuple)):
        return any(isinstance(v, torch.Tensor) for v in tree.leaves(x))
    return False


def pytest_assertrepr_compare(config: pytest.Config, op: str, left: Any, right: Any) -> list[str] | None:
    """Explain a failed comparison involving tensors or trees of tensors, leaf by leaf."""
    if not (_has_tensor(left) or _has_tensor(right)):
        return None
    if isinstance(left, torch.Tensor) or isinstance(right, torch.Tensor):
        lines = [f"{format_tensor(left)} {op} {format_tensor(right)}"]
        if (
            op == "=="
            and isinstance(left, torch.Tensor)
            and isinstance(right, torch.Tensor)
            and left.shape == right.shape
        ):
            diff = left != right
            if bool(diff.any()):
                idx = tuple(int(i) for i in torch.nonzero(diff)[0])
                lines.append(
                    f"first difference at index {idx}: {format_value(left[idx])} != {format_value(right[idx])}"
                    f" ({int(diff.sum())} of {diff.numel()} entries differ)"
                )
        return lines
    return [
        f"comparison {op} of trees of tensors failed",
        "left:",
        *("  " + line for line in describe_tree(left).splitlines()),
        "right:",
        *("  " + line for line in describe_tree(right).splitlines()),
    ]


@pytest.fixture
def key(request: pytest.FixtureRequest) -> int:
    """A :mod:`pure_prune.rng` key derived from the test's node id: stable across runs."""
    return zlib.crc32(request.node.nodeid.encode())
