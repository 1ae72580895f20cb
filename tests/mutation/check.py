"""Mutation check: every planted bug must make each test named for it fail.

    python -m tests.mutation.check            # baseline + every mutant, 2 pytest processes at a time
    python -m tests.mutation.check -k rows    # only mutants whose id contains "rows"
    python -m tests.mutation.check --list     # the registry, nothing run

Steps: (1) every hypothesis property test under ``tests/`` (a ``@given`` test function, or a test
that runs a nested ``@given`` function) must be named by at least one mutant; (2) the baseline:
all named tests pass with no mutant planted; (3) each mutant runs in its own pytest process
(``-p tests.mutation.plant``, hypothesis profile ``"mutation"``: the CI example counts,
derandomized) and is *caught* when every test named for it fails. Prints one row per mutant
(id, caught/SURVIVED/ERROR, seconds, the planted bug, the tests) and exits 1 when a mutant
survives or errors (e.g. an import error instead of a failing test), the baseline fails, or a
property test is unnamed.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from tests.mutation.mutants import MUTANTS, Mutant
from tests.mutation.plant import MUTANT_ENV, RANDOM_ENV, REPORT_ENV

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"


class Run(NamedTuple):
    returncode: int
    outcomes: dict[str, str]  # node id -> "passed" | "failed" | "skipped"
    seconds: float
    tail: str


def property_tests(folder: Path = TESTS) -> list[str]:
    """``file::name`` of every module-level test function under ``folder`` that is a hypothesis
    property (decorated with ``@given``) or defines one inside its body."""
    found = []
    for path in sorted(folder.glob("test_*.py")):
        module = ast.parse(path.read_text(encoding="utf-8"))
        for node in module.body:
            if not isinstance(node, ast.FunctionDef) or not node.name.startswith("test"):
                continue
            if any(
                _is_given(d)
                for f in ast.walk(node)
                if isinstance(f, ast.FunctionDef)
                for d in f.decorator_list
            ):
                found.append(f"{path.relative_to(ROOT).as_posix()}::{node.name}")
    return found


def _is_given(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return (isinstance(target, ast.Name) and target.id == "given") or (
        isinstance(target, ast.Attribute) and target.attr == "given"
    )


def _base(node_id: str) -> str:
    return node_id.split("[", 1)[0]


def _matches(named: str, node_id: str) -> bool:
    """A named test covers its own node id and, without a parameter id, every parametrization."""
    return node_id == named or ("[" not in named and node_id.startswith(named + "["))


def run_pytest(node_ids: Sequence[str], mutant_id: str | None, *, randomized: bool = False) -> Run:
    """One pytest process over ``node_ids`` with ``mutant_id`` planted (``None``: the baseline)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.jsonl"
        env = {**os.environ, REPORT_ENV: str(report)}
        env.setdefault("OMP_NUM_THREADS", "1")
        env.pop(MUTANT_ENV, None)
        env.pop(RANDOM_ENV, None)
        if mutant_id is not None:
            env[MUTANT_ENV] = mutant_id
        if randomized:
            env[RANDOM_ENV] = "1"
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "--tb=line",
            "-p",
            "no:cacheprovider",
            "-p",
            "tests.mutation.plant",
            *sorted(set(node_ids)),
        ]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        outcomes: dict[str, str] = {}
        if report.exists():
            for line in report.read_text(encoding="utf-8").splitlines():
                rec = json.loads(line)
                if outcomes.get(rec["nodeid"]) != "failed":  # a failed setup or teardown fails the test
                    outcomes[rec["nodeid"]] = rec["outcome"]
    return Run(proc.returncode, outcomes, seconds, (proc.stdout + proc.stderr)[-3000:])


def verdict(mutant: Mutant, run: Run) -> tuple[str, list[str]]:
    """``("caught" | "SURVIVED" | "ERROR", named tests that did not fail)``.

    ERROR: pytest did not run the tests to a verdict (usage or collection error), or a named test
    matched no collected test.
    """
    if run.returncode not in (0, 1):
        return "ERROR", list(mutant.tests)
    missed = []
    for named in mutant.tests:
        hits = [o for nid, o in run.outcomes.items() if _matches(named, nid)]
        if not hits:
            return "ERROR", [named]
        if "failed" not in hits:
            missed.append(named)
    return ("SURVIVED" if missed else "caught"), missed


def _short(node_id: str) -> str:
    path, _, name = node_id.partition("::")
    return f"{Path(path).stem}::{name}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", dest="keyword", default="", help="run only mutants whose id contains this")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="pytest processes at a time (default 2)")
    parser.add_argument("--list", action="store_true", help="print the registry and exit")
    parser.add_argument("--random", action="store_true", help="randomized examples instead of derandomized")
    parser.add_argument("--no-baseline", action="store_true", help="skip the baseline run")
    args = parser.parse_args(argv)

    mutants = [m for m in MUTANTS if args.keyword in m.id]
    if args.list:
        for m in mutants:
            print(f"{m.id}: {m.bug}\n    target {m.target}; tests {', '.join(map(_short, m.tests))}")
        return 0

    ok = True
    named = {_base(t) for m in MUTANTS for t in m.tests}
    unnamed = [t for t in property_tests() if t not in named]
    if unnamed:
        ok = False
        print(f"{len(unnamed)} property test(s) named by no mutant:", *unnamed, sep="\n  ")
    unknown = sorted(
        t for t in named if not (ROOT / t.split("::")[0]).exists()
    )  # a typo in the registry would otherwise only show as ERROR
    if unknown:
        ok = False
        print("mutants name tests in missing files:", *unknown, sep="\n  ")

    start = time.perf_counter()
    jobs: list[tuple[str | None, list[str]]] = []
    if not args.no_baseline:
        jobs.append((None, sorted({t for m in mutants for t in m.tests})))
    jobs += [(m.id, list(m.tests)) for m in mutants]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        runs = list(pool.map(lambda job: run_pytest(job[1], job[0], randomized=args.random), jobs))

    if not args.no_baseline:
        base, runs = runs[0], runs[1:]
        failed = sorted(nid for nid, o in base.outcomes.items() if o == "failed")
        if base.returncode != 0 or failed:
            ok = False
            print(f"BASELINE FAILED (exit {base.returncode}) without any mutant:", *failed, sep="\n  ")
            print(base.tail)
        else:
            print(f"baseline: {len(base.outcomes)} tests passed in {base.seconds:.1f} s without a mutant")

    width = max((len(m.id) for m in mutants), default=10)
    print(f"\n{'mutant':<{width}}  {'result':<8}  {'secs':>5}  bug / tests that must fail")
    counts = {"caught": 0, "SURVIVED": 0, "ERROR": 0}
    for m, run in zip(mutants, runs):
        result, missed = verdict(m, run)
        counts[result] += 1
        print(f"{m.id:<{width}}  {result:<8}  {run.seconds:5.1f}  {m.bug}")
        print(f"{'':<{width}}  {'':<8}  {'':>5}  tests: {', '.join(map(_short, m.tests))}")
        if result != "caught":
            ok = False
            print(f"{'':<{width}}  {'':<8}  {'':>5}  NOT FAILING: {', '.join(map(_short, missed))}")
            if result == "ERROR":
                print(run.tail)
    print(
        f"\n{counts['caught']} of {len(mutants)} mutants caught, {counts['SURVIVED']} survived, "
        f"{counts['ERROR']} errors; {len(named)} property tests named; "
        f"{time.perf_counter() - start:.0f} s wall"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
