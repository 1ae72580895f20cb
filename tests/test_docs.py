"""The documentation cites papers, and ``docs/methods.md`` has a section for every method.

* No tracked ``.py``/``.md`` file names the internal letters of the project's original material
  (the word "Source" followed by a capital A to E) or the file names of that material: a reader
  of the repository cannot look them up, so the code and docs cite papers or ``docs/methods.md``.
* Every criterion of ``pure_prune.importance.names()``, every ``pure-prune run --method``, every
  dynamic-sparse-training kind and every ``pure-prune llm --method`` has a heading of its own in
  the matching part of ``docs/methods.md``, and every method heading there names something the code
  registers (so the document and the registries cannot drift apart in either direction).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from pure_prune import importance
from pure_prune.algorithms import dst
from pure_prune.app import cli_llm, runconfig

ROOT = Path(__file__).resolve().parents[1]
METHODS_DOC = ROOT / "docs" / "methods.md"
# built from pieces so that this file does not match itself
FORBIDDEN = re.compile(r"\bSources? [A-E]\b|\b" + "seeds" + r"\.md\b|\b" + "design" + r"\.md\b")
SKIP_DIRS = {".git", ".venv", "venv", "build", "dist", "node_modules", "__pycache__", ".mypy_cache"}

# (H2 title of the part of docs/methods.md, H3/H4 headings expected in it)
PARTS = {
    "run": "Pruning methods (`pure-prune run --method`)",
    "criteria": "Criteria (`--importance`)",
    "llm": "Language models (`pure-prune llm --method`)",
}


def tracked_text_files() -> list[Path]:
    """The repository's ``.py`` and ``.md`` files, tracked or new but not ignored (``git ls-files``) in
    a checkout, else a walk of the tree without virtualenvs, build outputs and caches."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "*.py", "*.md"],
            cwd=ROOT,
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout.decode()
        files = [ROOT / p for p in out.split("\0") if p]
    except (OSError, subprocess.SubprocessError):
        files = [
            p
            for p in ROOT.rglob("*")
            if p.suffix in (".py", ".md") and not SKIP_DIRS.intersection(p.relative_to(ROOT).parts)
        ]
    return [p for p in files if p.is_file()]


def forbidden_mentions(text: str) -> list[tuple[int, str]]:
    """``(line number, line)`` of every line of ``text`` that names the internal material."""
    return [(i, line.strip()) for i, line in enumerate(text.splitlines(), 1) if FORBIDDEN.search(line)]


def test_forbidden_pattern_catches_what_it_must_and_nothing_else():
    src = "Source"  # the forbidden strings are built from pieces so that this file does not match
    must = [f"as {src} A's knob says", f"(seeds {src} C)", f"{src}s A–E", "see " + "seeds" + ".md"]
    must.append("the " + "design" + ".md contract")
    for text in must:
        assert forbidden_mentions(text), text
    for text in ["Source code", "open source", "Source F", "seeds.py", "the seeds' keys", "Sources: A"]:
        assert not forbidden_mentions(text), text


def test_no_file_names_the_internal_material():
    files = tracked_text_files()
    assert any(p.name == "methods.md" for p in files) and len(files) > 50, "file discovery found too little"
    bad = [
        f"{p.relative_to(ROOT)}:{i}: {line[:100]}"
        for p in files
        for i, line in forbidden_mentions(p.read_text(encoding="utf-8", errors="replace"))
    ]
    assert not bad, "cite the paper or docs/methods.md instead of:\n" + "\n".join(bad)


def parts(doc: str) -> dict[str, list[str]]:
    """``{H2 title: [H3 and H4 heading texts under it]}`` of a Markdown document (code fences skipped)."""
    out: dict[str, list[str]] = {}
    current = None
    fenced = False
    for line in doc.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if fenced:
            continue
        if line.startswith("## "):
            current = line[3:].strip()
            out[current] = []
        elif current is not None and line.startswith(("### ", "#### ")):
            out[current].append(line.lstrip("#").strip())
    return out


def method_names(headings: list[str]) -> set[str]:
    """The names of the headings that are exactly one backticked name (e.g. ``### `snip```)."""
    return {m.group(1) for h in headings if (m := re.fullmatch(r"`([\w.-]+)`", h))}


@pytest.fixture(scope="module")
def doc_parts() -> dict[str, list[str]]:
    return parts(METHODS_DOC.read_text(encoding="utf-8"))


def registered() -> dict[str, set[str]]:
    return {
        "run": set(runconfig.METHODS) | set(dst.KINDS),
        "criteria": set(importance.names()),
        "llm": set(cli_llm.METHODS),
    }


@pytest.mark.parametrize("part", sorted(PARTS))
def test_every_registered_method_has_a_section_and_every_section_a_method(doc_parts, part):
    title = PARTS[part]
    assert title in doc_parts, f"docs/methods.md has no '## {title}' part (has {sorted(doc_parts)})"
    documented = method_names(doc_parts[title])
    names = registered()[part]
    assert names, part
    missing = sorted(names - documented)
    assert not missing, f"docs/methods.md, '## {title}': no '### `name`' section for {missing}"
    unknown = sorted(documented - names)
    assert not unknown, f"docs/methods.md, '## {title}' documents {unknown}, which the code does not register"


def test_section_parser_reads_headings_by_part():
    doc = "# T\n## A\n### `x`\n```\n### `not a heading`\n```\n#### `y`\n### `z` (LLM)\n## B\n### `w`\n"
    got = parts(doc)
    assert got == {"A": ["`x`", "`y`", "`z` (LLM)"], "B": ["`w`"]}
    assert method_names(got["A"]) == {"x", "y"}


def test_every_reference_cited_in_methods_is_listed():
    """Each ``Author ... (year)`` / ``Author et al. year`` cited in the text has an entry under
    ``## References`` with that first author and year."""
    doc = METHODS_DOC.read_text(encoding="utf-8")
    body, _, refs = doc.partition("\n## References\n")
    body = " ".join(body.split())  # a citation may break across lines
    refs = re.sub(r"\n +", " ", refs)  # one line per entry
    assert refs, "docs/methods.md has no '## References' part"
    listed = set(re.findall(r"^- ([A-Z][\w'-]+), .*?\((\d{4})\)", refs, flags=re.M))
    cited = set(re.findall(r"\b([A-Z][A-Za-z'-]*[a-z])(?: et al\.| &| and|,) [^()]*?\(?(\d{4})\b", body))
    missing = sorted(c for c in cited if c not in listed)
    assert not missing, f"cited in docs/methods.md but not under '## References': {missing}"
