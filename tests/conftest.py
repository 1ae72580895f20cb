"""Shared test configuration: pure_prune's pytest plugin (hypothesis profiles, compact tensor output).

Choose the hypothesis profile with ``PURE_PRUNE_HYPOTHESIS_PROFILE=ci|thorough`` (default ``ci``).

Process-wide torch state is isolated between tests: the CPU thread count (the runner's
``--threads`` sets it) is restored after each test (modules of small runs ask for one thread with
``pytestmark = pytest.mark.usefixtures("one_thread")``), and dynamo's in-memory caches are reset before
each test module, so compile counters in one module never see graphs (or recompile-limit
pressure, or changed global-state guards) left by another. Compiled functions are still shared
within a module through module-scoped fixtures, and inductor's on-disk cache keeps recompiles warm.
The machine record of the application (``PURE_PRUNE_CACHE``: inductor's ISA probe, see
``pure_prune.app.vec_isa_record``) goes to a folder of the session, not the user's ``~/.cache``.
"""

import os

import pytest
import torch

pytest_plugins = ["pure_prune.testing.plugin"]


@pytest.fixture(autouse=True, scope="session")
def _machine_cache_of_the_session(tmp_path_factory):
    if "PURE_PRUNE_CACHE" not in os.environ:
        os.environ["PURE_PRUNE_CACHE"] = str(tmp_path_factory.mktemp("pure_prune_cache"))
    yield


@pytest.fixture(autouse=True, scope="module")
def _fresh_dynamo_per_module():
    torch._dynamo.reset()
    yield


@pytest.fixture(autouse=True)
def _restore_num_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def one_thread():
    """One CPU thread for the test (restored afterwards by ``_restore_num_threads``): the runs and
    sweeps of these tests are small, and one thread keeps their timing and results steady."""
    torch.set_num_threads(1)
