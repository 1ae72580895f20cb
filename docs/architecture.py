"""Keep the layout tree of ``docs/architecture.md`` equal to the source.

``python docs/architecture.py --write`` rewrites the part of ``docs/architecture.md`` between
``<!-- layout:begin -->`` and ``<!-- layout:end -->``: one line per file of ``pure_prune/`` and
``models/``, its path, its line count and the first sentence of its docstring, grouped into the
library and the application. ``--check`` exits 1 (naming the first differing line) when the file
is stale; ``tests/test_docs.py`` runs it.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
BEGIN, END = "<!-- layout:begin -->", "<!-- layout:end -->"


def summary(path: Path) -> str:
    """The first sentence of the module docstring of ``path`` (``""`` when it has none)."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    first = " ".join(doc.strip().split("\n\n")[0].split()).replace("``", "`")
    if ". " in first:
        first = first[: first.index(". ") + 1]
    if len(first) > 180:
        first = first[:180].rsplit(" ", 1)[0] + " …"
    return first.replace("|", "\\|")


def layout() -> str:
    """The generated Markdown: the library's files, then the application's, then the model zoo's."""
    files = sorted(p for p in (ROOT / "pure_prune").rglob("*.py") if "__pycache__" not in p.parts)
    app = [p for p in files if (ROOT / "pure_prune" / "app") in p.parents]
    lib = [p for p in files if p not in app]
    zoo = sorted(p for p in (ROOT / "models").glob("*.py"))
    out = []
    for title, group in (
        ("The library (`pure_prune/`, what a researcher imports)", lib),
        ("The application (`pure_prune/app/`, what `pure-prune` runs)", app),
        ("The model zoo (`models/`, installed as `pure_prune.models`)", zoo),
    ):
        out += [f"### {title}", "", "| file | lines | what is inside |", "|---|---:|---|"]
        for p in group:
            rel = p.relative_to(ROOT).as_posix()
            out.append(f"| `{rel}` | {len(p.read_text().splitlines())} | {summary(p)} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def render(text: str) -> str:
    """``text`` with its layout block replaced by :func:`layout`."""
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{layout()}{END}{tail}"


def main(argv: list[str]) -> int:
    text = DOC.read_text()
    new = render(text)
    if "--write" in argv:
        DOC.write_text(new)
        return 0
    if new != text:
        diff = next(
            (
                f"line {i + 1}: {a!r} != {b!r}"
                for i, (a, b) in enumerate(zip(text.splitlines(), new.splitlines()))
                if a != b
            ),
            "lengths differ",
        )
        print(f"docs/architecture.md is stale ({diff}); run python docs/architecture.py --write")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
