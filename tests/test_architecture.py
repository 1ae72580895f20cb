"""The layering contract, checked on the source (``docs/import_graph.py``) and the generated layout
table of ``docs/architecture.md`` (``docs/architecture.py``)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_import_graph_has_no_circles_upward_or_private_imports_and_no_long_files():
    """Library below, application above: no module of the library imports ``pure_prune.app``, tqdm,
    matplotlib or the model zoo; no import circles; no file imports another file's underscore
    names; no file of ``pure_prune/`` or ``models/`` is over 400 lines."""
    f = _load("import_graph").figures(ROOT)
    assert f["circles"] == [], f["circles"]
    assert f["upward_imports"] == [], f["upward_imports"]
    assert f["library_forbidden_imports"] == [], f["library_forbidden_imports"]
    assert f["underscore_imports"] == [], f["underscore_imports"]
    assert f["files_over_400_lines"] == [], f["files_over_400_lines"]


def test_the_checks_see_a_planted_violation(tmp_path):
    """The figures are not vacuous: a copy of the package with a library module importing the
    application, tqdm and a private name, and a long file, shows each."""
    ig = _load("import_graph")
    pkg = tmp_path / "pure_prune"
    (pkg / "app").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "app" / "__init__.py").write_text("")
    (pkg / "app" / "runner.py").write_text("from pure_prune import lib\n")
    (pkg / "helper.py").write_text("def _private():\n    pass\n")
    (pkg / "lib.py").write_text(
        "from pure_prune.app import runner\nimport tqdm\nfrom pure_prune.helper import _private\n"
        + "x = 1\n" * 400
    )
    f = ig.figures(tmp_path)
    assert ("pure_prune.lib", "pure_prune.app.runner") in f["upward_imports"]
    assert ("pure_prune.lib", "tqdm") in f["library_forbidden_imports"]
    assert ("pure_prune.lib", "pure_prune.helper", "_private") in f["underscore_imports"]
    assert f["circles"] == [("pure_prune.app.runner", "pure_prune.lib")]
    assert f["files_over_400_lines"] == ["pure_prune/lib.py"]


def test_the_layout_table_of_architecture_md_is_current():
    done = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "architecture.py"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
