"""pytest plugin that plants one mutant in memory: ``python -m pytest -p tests.mutation.plant ...``.

``PURE_PRUNE_MUTANT=<id>`` names the mutant (:data:`tests.mutation.mutants.MUTANTS`); without it
nothing is planted (the baseline run). The target attribute is replaced in its module and in every
module that bound the same object by ``from ... import`` (re-exports, test modules), once when
pytest starts and again after collection, so test modules imported later see the mutant too.

Every run loads the hypothesis profile ``"mutation"``: the ``"ci"`` profile derandomized (the same
examples on every run, so the check is reproducible), without the example database (a mutant's
failing examples must not be replayed by ordinary test runs) and without shrinking (only the
verdict matters). ``PURE_PRUNE_MUTATION_RANDOM=1`` keeps randomized examples, to probe how
reliably a mutant is caught. ``PURE_PRUNE_MUTATION_REPORT=<file>`` receives the outcome of every
test as JSON lines ``{"nodeid": ..., "outcome": ...}``.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from typing import Any

import pytest
from hypothesis import Phase, settings

from tests.mutation.mutants import Mutant, by_id

MUTANT_ENV = "PURE_PRUNE_MUTANT"
REPORT_ENV = "PURE_PRUNE_MUTATION_REPORT"
RANDOM_ENV = "PURE_PRUNE_MUTATION_RANDOM"


def _rebind(original: Any, replacement: Any) -> int:
    """Replace ``original`` by ``replacement`` wherever a loaded module binds it; returns how often."""
    n = 0
    for mod in list(sys.modules.values()):
        namespace = getattr(mod, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for name, value in list(namespace.items()):
            if value is original:
                namespace[name] = replacement
                n += 1
    return n


class _Planted:
    def __init__(self, mutant: Mutant) -> None:
        module_name, attr = mutant.target.split(":")
        module = importlib.import_module(module_name)
        self.original = getattr(module, attr)
        self.replacement = mutant.make(self.original, module)
        setattr(module, attr, self.replacement)
        self.count = 1 + _rebind(self.original, self.replacement)


_STATE: dict[str, Any] = {}


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """Load the ``"mutation"`` profile (after pure_prune's plugin loaded ``"ci"``) and plant."""
    base = settings.get_profile("ci")
    settings.register_profile(
        "mutation",
        parent=base,
        database=None,
        derandomize=not os.environ.get(RANDOM_ENV),
        phases=(Phase.explicit, Phase.reuse, Phase.generate),
        print_blob=False,
    )
    settings.load_profile("mutation")
    mutant_id = os.environ.get(MUTANT_ENV)
    if mutant_id:
        _STATE["planted"] = _Planted(by_id(mutant_id))
    path = os.environ.get(REPORT_ENV)
    if path:
        _STATE["report"] = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed at unconfigure


def pytest_collection_finish(session: pytest.Session) -> None:
    """Test modules imported during collection may have bound the original: rebind there too."""
    planted = _STATE.get("planted")
    if planted is not None:
        planted.count += _rebind(planted.original, planted.replacement)


def pytest_report_header(config: pytest.Config) -> str:
    planted = _STATE.get("planted")
    if planted is None:
        return "mutation: no mutant planted (baseline)"
    return f"mutation: planted {os.environ[MUTANT_ENV]} at {planted.count} binding(s)"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    out = _STATE.get("report")
    if out is None:
        return
    if report.when == "call" or report.outcome != "passed":
        out.write(
            json.dumps({"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome}) + "\n"
        )
        out.flush()


def pytest_unconfigure(config: pytest.Config) -> None:
    out = _STATE.pop("report", None)
    if out is not None:
        out.close()
