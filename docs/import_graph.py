"""Figures of pure_prune's import graph, read from the source (no import is executed).

``python docs/import_graph.py [ROOT]`` prints, for the package below ``ROOT`` (default: this
checkout): the modules, the import edges between them, the depth in layers (the longest chain of
imports), the import circles, the upward imports (a library module importing an application one)
and the underscore names imported across files. ``docs/architecture.md`` quotes its output for the
commit before the layering work and for today's tree; ``tests/test_architecture.py`` asserts the
zeros.
"""

from __future__ import annotations

import ast
import json
import sys
from functools import cache
from pathlib import Path

APPLICATION = (
    "pure_prune.app",
    "pure_prune.cli",
    "pure_prune.run",
    "pure_prune.grid",
    "pure_prune.data",
    "pure_prune.experiment",
    "pure_prune.report",
    "pure_prune.models",
    "pure_prune.checkpoint",
    "pure_prune.distributed",
    "pure_prune.extras",
    "pure_prune.__main__",
)
"""Module prefixes of the application layer (the older trees kept it beside the library)."""


def modules(root: Path) -> dict[str, Path]:
    """``{dotted module name: source path}`` of every module of ``root/pure_prune``."""
    pkg = root / "pure_prune"
    out = {}
    for path in sorted(pkg.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        out[".".join(parts).removesuffix(".__init__")] = path
    return out


def imports(root: Path) -> tuple[dict[str, set[str]], list[tuple[str, str, str]]]:
    """The graph ``{module: modules of the package it imports}`` (imports inside functions count)
    and the underscore names imported across files as ``(importer, module, name)``."""
    mods = modules(root)
    graph: dict[str, set[str]] = {}
    private: list[tuple[str, str, str]] = []
    for name, path in mods.items():
        found: set[str] = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")
                    parent = parent[: len(parent) - node.level + 1]
                    base = ".".join([*parent, *([base] if base else [])])
                found.add(base)
                for a in node.names:
                    full = f"{base}.{a.name}"
                    found.add(full)
                    if (
                        a.name.startswith("_")
                        and not a.name.startswith("__")
                        and base in mods
                        and full not in mods
                    ):
                        private.append((name, base, a.name))
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        graph[name] = {m for m in found if m in mods and m != name and not name.startswith(m + ".")}
    return graph, private


def is_app(name: str) -> bool:
    return name.startswith(APPLICATION)


FORBIDDEN_IN_LIBRARY = ("tqdm", "matplotlib", "models", "pure_prune.models")
"""Top-level imports the library must not make (the application's progress bars and plots, the zoo)."""


def third_party(root: Path) -> list[tuple[str, str]]:
    """``(library module, forbidden import)`` for every library file importing one of
    :data:`FORBIDDEN_IN_LIBRARY` (imports inside functions count)."""
    found = []
    for name, path in modules(root).items():
        if is_app(name):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            found += [
                (name, n)
                for n in names
                if n.split(".")[0] in FORBIDDEN_IN_LIBRARY or n.startswith("pure_prune.models")
            ]
    return sorted(set(found))


def _has_cycle(graph: dict[str, set[str]]) -> bool:
    """Whether ``graph`` has a cycle of any length (iterative depth-first search)."""
    state: dict[str, int] = {}
    for start in graph:
        if start in state:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        state[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return True
            elif nxt not in state:
                state[nxt] = 1
                stack.append((nxt, iter(sorted(graph[nxt]))))
    return False


def figures(root: Path) -> dict[str, object]:
    """The figures ``main`` prints, as a dict."""
    graph, private = imports(root)

    circles = sorted({tuple(sorted((a, b))) for a in graph for b in graph[a] if a in graph.get(b, ())})
    acyclic = not circles and not _has_cycle(graph)

    @cache
    def depth(m: str, seen: frozenset = frozenset()) -> int:  # the longest simple chain from m
        if acyclic:
            return 1 + max((depth(n) for n in graph[m]), default=0)
        nxt = [n for n in graph[m] if n not in seen]
        return 1 + max((depth(n, seen | {m}) for n in nxt), default=0)

    @cache
    def app_depth(m: str, seen: frozenset = frozenset()) -> int:  # chains of application modules only
        if acyclic:
            return 1 + max((app_depth(n) for n in graph[m] if is_app(n)), default=0)
        nxt = [n for n in graph[m] if is_app(n) and n not in seen]
        return 1 + max((app_depth(n, seen | {m}) for n in nxt), default=0)

    upward = sorted((a, b) for a in graph for b in graph[a] if not is_app(a) and is_app(b))
    longest = max(graph, key=lambda m: depth(m))
    chain = [longest]
    while graph[chain[-1]]:
        chain.append(
            max((n for n in graph[chain[-1]] if n not in chain), key=lambda n: depth(n), default=None)
        )
        if chain[-1] is None:
            chain.pop()
            break
    lines = sum(len(p.read_text().splitlines()) for p in modules(root).values())
    return {
        "modules": len(graph),
        "edges": sum(len(v) for v in graph.values()),
        "depth": depth(longest),
        "application_depth": max((app_depth(m) for m in graph if is_app(m)), default=0),
        "library_forbidden_imports": third_party(root),
        "longest_chain": chain,
        "circles": circles if circles or acyclic else ["a cycle longer than two modules"],
        "upward_imports": upward,
        "underscore_imports": private,
        "lines": lines,
        "files_over_400_lines": sorted(
            str(p.relative_to(root))
            for p in [*modules(root).values(), *sorted((root / "models").glob("*.py"))]
            if len(p.read_text().splitlines()) > 400
        ),
    }


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path(__file__).resolve().parents[1]
    f = figures(root)
    if "--json" in argv:
        print(json.dumps(f, indent=1))
        return 0
    print(f"modules {f['modules']}, import edges {f['edges']}, lines {f['lines']}")
    print(
        f"depth in layers {f['depth']}: {' -> '.join(m.removeprefix('pure_prune.') for m in f['longest_chain'])}"
    )
    print(f"application floors (longest chain of application modules) {f['application_depth']}")
    print(f"circles {len(f['circles'])}: {f['circles']}")
    print(f"upward imports (library -> application) {len(f['upward_imports'])}: {f['upward_imports'][:10]}")
    print(f"underscore names imported across files {len(f['underscore_imports'])}")
    print(
        f"library files importing tqdm, matplotlib or the model zoo {len(f['library_forbidden_imports'])}: {f['library_forbidden_imports'][:6]}"
    )
    print(f"files over 400 lines {len(f['files_over_400_lines'])}: {' '.join(f['files_over_400_lines'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
