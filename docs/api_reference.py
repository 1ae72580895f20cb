"""Keep the reference tables of ``docs/api.md`` equal to the library's public names.

``docs/api.md`` is written by hand (one section per area, each with a runnable example) and holds,
between ``<!-- reference: pure_prune.x -->`` and ``<!-- end reference -->`` lines, one table per
module: every name in the module's ``__all__`` with the first sentence of its docstring. This
script rebuilds those tables from the code::

    python docs/api_reference.py --write   # rewrite the tables in docs/api.md
    python docs/api_reference.py --check   # exit 1 naming what is stale or missing (a test runs it)

``--check`` also fails when a library module (``pure_prune.LIBRARY_MODULES`` and their public
submodules) has no table in the document.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import pkgutil
import re
import sys
from pathlib import Path
from types import ModuleType

DOC = Path(__file__).with_name("api.md")
BLOCK = re.compile(
    r"(<!-- reference: (?P<module>[\w.]+) -->\n)(?P<body>.*?)(<!-- end reference -->)", re.DOTALL
)


def library_modules() -> list[str]:
    """Every public library module: ``pure_prune.<name>`` for ``LIBRARY_MODULES`` and their
    submodules whose names do not start with an underscore."""
    import pure_prune

    names = []
    for name in pure_prune.LIBRARY_MODULES:
        module = importlib.import_module(f"pure_prune.{name}")
        names.append(module.__name__)
        if hasattr(module, "__path__"):
            names += [
                f"{module.__name__}.{info.name}"
                for info in pkgutil.iter_modules(module.__path__)
                if not info.name.startswith("_") and info.name != "plugin"
            ]
    return names


def first_sentence(obj: object) -> str:
    """The first sentence of ``obj``'s own docstring on one line (up to the first sentence end or
    blank line); for a type alias or a constant without one, its value."""
    own = inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismodule(obj) or inspect.isbuiltin(obj)
    doc = inspect.getdoc(obj) if own or hasattr(obj, "__wrapped__") else None
    if not doc:
        text = repr(obj).replace("typing.", "").replace("collections.abc.", "")
        text = re.sub(r"<([\w.]+) object at 0x[0-9a-f]+>", r"\1(...)", text)
        text = re.sub(r" at 0x[0-9a-f]+", "", text)
        text = re.sub(r"<function ([\w.<>]+) at 0x[0-9a-f]+>", r"\1", text)
        return "`= " + (text if len(text) <= 100 else text[:97] + "...").replace("|", "\\|") + "`"
    para = " ".join(doc.split("\n\n")[0].split())
    # a sentence ends at ". ", ": " or "; " outside parentheses and backticks, not after an
    # abbreviation ("et al.", "e.g.", "i.e.", "w.r.t.")
    depth, code, cut = 0, False, len(para)
    for i, ch in enumerate(para):
        depth += (ch == "(") - (ch == ")") if not code else 0
        code ^= ch == "`"
        after = para[i + 1 : i + 2]
        if ch in ".:;" and after in (" ", "") and depth <= 0 and not code:
            if not re.search(r"(\bal|\be\.g|\bi\.e|\bvs|\bw\.r\.t)\.$", para[: i + 1]):
                cut = i + 1
                break
    text = para[:cut]
    return text.rstrip(":;").replace("|", "\\|").strip()


def kind(obj: object) -> str:
    if inspect.isclass(obj):
        return "class"
    if inspect.ismodule(obj):
        return "module"
    if inspect.isfunction(obj) or inspect.isbuiltin(obj) or hasattr(obj, "__wrapped__"):
        return "function"
    if hasattr(obj, "__origin__") or type(obj).__module__ in ("typing", "types"):
        return "type alias"
    return "function" if callable(obj) else "constant"


def table(module: ModuleType) -> str:
    """The markdown table of ``module.__all__`` (modules re-exported in ``__all__`` are skipped)."""
    rows = ["| name | kind | purpose |", "|---|---|---|"]
    for name in getattr(module, "__all__", ()):
        obj = getattr(module, name)
        if inspect.ismodule(obj):
            continue
        rows.append(f"| `{module.__name__}.{name}` | {kind(obj)} | {first_sentence(obj)} |")
    if len(rows) == 2:
        rows.append(f"| (the modules of `{module.__name__}`) | package | {first_sentence(module)} |")
    return "\n".join(rows) + "\n"


def rebuild(text: str) -> tuple[str, list[str]]:
    """``text`` with every reference table rebuilt, and the problems: modules without a table."""
    seen = []

    def fill(match: re.Match) -> str:
        name = match.group("module")
        seen.append(name)
        return match.group(1) + table(importlib.import_module(name)) + match.group(4)

    new = BLOCK.sub(fill, text)
    missing = [m for m in library_modules() if m not in seen]
    return new, [f"no reference table for {m}" for m in missing]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the tables in docs/api.md")
    parser.add_argument("--check", action="store_true", help="exit 1 if a table is stale or missing")
    args = parser.parse_args(argv)
    text = DOC.read_text()
    new, problems = rebuild(text)
    if args.write and new != text:
        DOC.write_text(new)
    if args.check and new != text:
        problems.insert(0, "docs/api.md reference tables are stale: run python docs/api_reference.py --write")
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems and (args.check or args.write) else 0


if __name__ == "__main__":
    sys.exit(main())
