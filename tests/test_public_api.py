"""The public API: ``import pure_prune as pp`` gives every library module, lazily."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

import pure_prune as pp


@pytest.mark.parametrize("name", pp.LIBRARY_MODULES)
def test_every_library_module_is_an_attribute_with_an_all(name):
    module = getattr(pp, name)
    assert module.__name__ == f"pure_prune.{name}"
    assert name in dir(pp)
    for public in getattr(module, "__all__", ()):
        assert hasattr(module, public), f"pure_prune.{name}.__all__ names {public!r}, which is missing"


def test_unknown_attribute_names_the_library_modules():
    with pytest.raises(AttributeError, match="no attribute 'masks'.*mask"):
        pp.masks  # noqa: B018


def test_import_is_lazy_and_imports_no_application_module():
    code = (
        "import sys, pure_prune as pp; "
        "assert 'pure_prune.select' not in sys.modules; "
        "pp.select.unstructured; "
        "assert 'pure_prune.select' in sys.modules; "
        "app = [m for m in ('pure_prune.app.cli', 'pure_prune.app.runner', 'pure_prune.app.data', 'pure_prune.models') if m in sys.modules]; "
        "assert not app, app"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


API_DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "api.md"


def api_examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", API_DOC.read_text(), flags=re.S)


def test_api_doc_tables_list_every_public_name_of_every_library_module():
    script = API_DOC.with_name("api_reference.py")
    done = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_api_doc_has_an_example_per_area():
    areas = re.findall(r"^## (.+)$", API_DOC.read_text(), flags=re.M)
    sections = re.split(r"^## .+$", API_DOC.read_text(), flags=re.M)[1:]
    without = [a for a, s in zip(areas, sections) if "```python" not in s]
    assert len(areas) >= 6 and not without, without


@pytest.mark.parametrize("index", range(len(api_examples())))
def test_api_doc_examples_run(index):
    exec(compile(api_examples()[index], str(API_DOC), "exec"), {"__name__": "api_doc"})


APPLICATION_PREFIXES = ("pure_prune.app", "pure_prune.models", "matplotlib")
"""What the library must not load: the application (``pure_prune/app/``: CLI, runner, run dirs, data
sets, reports, sweeps), the model zoo, and the application's plots. (tqdm is loaded by torch itself,
through ``torch.hub``; that no library file imports it is checked on the source,
``tests/test_architecture.py``.)"""


def test_the_library_imports_no_application_module():
    """Layering (the import contract ``make test`` enforces): importing every module of the library,
    i.e. every module of ``pure_prune`` outside ``pure_prune.app`` (the pytest plugin aside), loads
    nothing of the application, the model zoo or matplotlib; the first module that does is named."""
    code = f"""
import importlib, pathlib, sys
import pure_prune
prefixes = {APPLICATION_PREFIXES!r}
root = pathlib.Path(pure_prune.__file__).parent  # listed from the files: walking packages would import them
names = sorted(".".join(("pure_prune", *p.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
               for p in root.rglob("*.py"))
library = [n for n in names if not n.startswith("pure_prune.app") and n not in ("pure_prune.__main__", "pure_prune.testing.plugin")]
assert len(library) > 60, library
for full in library:
    importlib.import_module(full)
    app = sorted(k for k in sys.modules if k.startswith(prefixes))
    assert not app, (full, app)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def _package_imports() -> dict[str, set[str]]:
    """``{module: modules of pure_prune it imports}`` from the source (imports inside functions too)."""
    import ast

    root = pathlib.Path(pp.__file__).resolve().parent
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(("pure_prune", *parts)).removesuffix(".__init__")
        modules[name] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        graph[name] = {m for m in found if m in modules and m != name and not name.startswith(m + ".")}
    return graph


def test_no_import_circles_between_modules():
    graph = _package_imports()
    circles = sorted({tuple(sorted((a, b))) for a in graph for b in graph[a] if a in graph.get(b, ())})
    assert not circles, circles
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:  # depth-first search for longer cycles
        state[m] = 1
        for n in sorted(graph[m]):
            assert state.get(n) != 1, " -> ".join([*path[path.index(n) :], n]) if n in path else n
            if n not in state:
                visit(n, [*path, n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
