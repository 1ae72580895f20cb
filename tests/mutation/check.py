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


def _pytest_args(node_ids: Sequence[str]) -> list[str]:
    return [
        "-q",
        "--tb=line",
        "-p",
        "no:cacheprovider",
        "-p",
        "tests.mutation.plant",
        "-W",
        "ignore::pytest.PytestAssertRewriteWarning",  # the preloaded modules are not rewritten
        *sorted(set(node_ids)),
    ]


def _child_env(report: Path, mutant_id: str | None, randomized: bool) -> dict[str, str]:
    env = {**os.environ, REPORT_ENV: str(report)}
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop(MUTANT_ENV, None)
    env.pop(RANDOM_ENV, None)
    if mutant_id is not None:
        env[MUTANT_ENV] = mutant_id
    if randomized:
        env[RANDOM_ENV] = "1"
    return env


def _read_outcomes(report: Path) -> dict[str, str]:
    outcomes: dict[str, str] = {}
    if report.exists():
        for line in report.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            if outcomes.get(rec["nodeid"]) != "failed":  # a failed setup or teardown fails the test
                outcomes[rec["nodeid"]] = rec["outcome"]
    return outcomes


def run_pytest(node_ids: Sequence[str], mutant_id: str | None, *, randomized: bool = False) -> Run:
    """One fresh pytest process over ``node_ids`` with ``mutant_id`` planted (``None``: baseline)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.jsonl"
        cmd = [sys.executable, "-m", "pytest", *_pytest_args(node_ids)]
        start = time.perf_counter()
        env = _child_env(report, mutant_id, randomized)
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        return Run(proc.returncode, _read_outcomes(report), seconds, (proc.stdout + proc.stderr)[-3000:])


def _preload() -> None:
    """Import what the pytest runs need (torch with dynamo, hypothesis, pytest, every module of
    the library) once, so that forked runs start warm. Test modules are *not* imported: they build
    hypothesis strategies at import time, which must happen after a mutant of a strategy is planted.
    A library module that fails to import is left to fail in the runs that need it."""
    import importlib
    import pkgutil

    import hypothesis  # noqa: F401
    import pytest  # noqa: F401
    import torch._dynamo  # noqa: F401 - conftest resets dynamo in every run
    import torch.nn.utils.prune  # noqa: F401

    import pure_prune

    for info in pkgutil.walk_packages(pure_prune.__path__, "pure_prune."):
        if info.name.endswith("__main__"):  # runs the command line
            continue
        try:
            importlib.import_module(info.name)
        except Exception:  # noqa: BLE001, S112 - an optional extra or another engineer's broken file
            continue


def run_forked(jobs: Sequence[tuple[str | None, list[str]]], n_jobs: int, *, randomized: bool) -> list[Run]:
    """Each job in a child forked from this (preloaded) process, ``n_jobs`` at a time: the child
    plants its mutant and runs ``pytest.main`` in a copy of this process, so no run sees another's
    mutant and none pays for importing torch again."""
    import pytest

    _preload()
    tmp = Path(tempfile.mkdtemp(prefix="pure_prune_mutation_"))
    pending = list(enumerate(jobs))
    running: dict[int, tuple[int, float]] = {}  # pid -> (job index, start)
    results: dict[int, Run] = {}
    while pending or running:
        while pending and len(running) < max(1, n_jobs):
            i, (mutant_id, node_ids) = pending.pop(0)
            report, log = tmp / f"{i}.jsonl", tmp / f"{i}.log"
            env = _child_env(report, mutant_id, randomized)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:  # the child: never returns
                code = 3
                try:
                    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    os.dup2(fd, 1)
                    os.dup2(fd, 2)
                    os.environ.clear()
                    os.environ.update(env)
                    os.chdir(ROOT)
                    code = int(pytest.main(_pytest_args(node_ids)))
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            running[pid] = (i, time.perf_counter())
        pid, status = os.wait()
        i, start = running.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        log = (tmp / f"{i}.log").read_text(encoding="utf-8", errors="replace")
        results[i] = Run(code, _read_outcomes(tmp / f"{i}.jsonl"), time.perf_counter() - start, log[-3000:])
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    return [results[i] for i in range(len(jobs))]


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
    parser.add_argument("--spawn", action="store_true", help="a fresh interpreter per run instead of fork")
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
    baseline_jobs = 0
    if not args.no_baseline:  # one run per test file, so that the baseline spreads over the workers
        by_file: dict[str, set[str]] = {}
        for t in {t for m in mutants for t in m.tests}:
            by_file.setdefault(t.split("::")[0], set()).add(t)
        jobs += [(None, sorted(ts)) for _, ts in sorted(by_file.items())]
        baseline_jobs = len(jobs)
    jobs += [(m.id, list(m.tests)) for m in mutants]
    if hasattr(os, "fork") and not args.spawn:
        runs = run_forked(jobs, args.jobs, randomized=args.random)
    else:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            runs = list(pool.map(lambda job: run_pytest(job[1], job[0], randomized=args.random), jobs))

    bases, runs = runs[:baseline_jobs], runs[baseline_jobs:]
    for base in bases:
        failed = sorted(nid for nid, o in base.outcomes.items() if o == "failed")
        if base.returncode != 0 or failed:
            ok = False
            print(f"BASELINE FAILED (exit {base.returncode}) without any mutant:", *failed, sep="\n  ")
            print(base.tail)
    if bases:
        n = sum(len(b.outcomes) for b in bases)
        print(f"baseline: {n} tests in {len(bases)} runs, {sum(b.seconds for b in bases):.0f} s, no mutant")

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
