"""bench/reproduce.py: the quick mode end to end (markdown, tables, images, checks, the cache) and the
helpers of its sections (bench/reproduce_sections/)."""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "reproduce.py"
sys.path.append(str(ROOT / "bench"))  # bench/ is no package: its scripts import each other from there

from reproduce_sections import MODULES, SECTIONS, discussion, llm, lottery  # noqa: E402
from reproduce_sections.common import Checks, find_row, fmt_s, md_table, mean_std  # noqa: E402


def _run(out: Path, work: Path) -> str:
    cmd = [sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--work", str(work)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_quick_mode_writes_every_section_table_and_image(tmp_path):
    out, work = tmp_path / "docs", tmp_path / "work"
    log = _run(out, work)
    md = (out / "results.md").read_text()
    for heading in (
        "## Summary",
        "## 1. Lottery tickets",
        "## 2. Pruning criteria compared",
        "### 2b. SNIP and GraSP where their papers use them",
        "## 3. Hessian diagonal",
        "## 4. Speed",
        "## 5. Pruning a language model",
        "## 6. What matched, and what did not",
    ):
        assert heading in md
    for header in (
        "| round | weights left (%) | winning ticket (rewind to init) | random re-init | random mask |",
        "| criterion | scope | fine-tuned | ×2 (50.0%) | ×8 (87.5%) |",
        "| K | relative L2 error | seconds | entries < 0 |",
        "| criterion at init | ×2 (50.0%) | ×8 (87.5%) |",
        "| model | units removed | weights removed |",
        "| method | reads data | 50% | 2:4 | 70% |",
        "| removed | score | reads data | units removed | parameters | FLOP ratio | perplexity |",
        "| run | shipped: s | × forward | peak MiB (× forward) |",
        "| form | FLOP ratio | B=1: dense tok/s | B=1: pruned tok/s | B=1: speedup |",
        "| section | conclusion | holds | evidence |",
    ):
        assert header in md
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert {Path(p).name for p in images} >= {
        "lottery.png",
        "criteria_mlp-digits.png",
        "init.png",
        "hessian.png",
        "speed.png",
    }
    for rel in images:
        png = (out / rel).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000, rel
    # the table's dense cell is the CSV's number, and every check printed is in checks.json
    rows = list(csv.DictReader((out / "results" / "lottery_digits.csv").open()))
    dense = next(r for r in rows if r["control"] == "none" and r["round"] == "0")
    cell = f"{100 * float(dense['test_accuracy_mean']):.2f} ± {100 * float(dense['test_accuracy_std']):.2f}"
    assert f"| 0 | 100.00 | {cell} |" in md
    checks = json.loads((out / "results" / "checks.json").read_text())
    assert checks and all(isinstance(c["holds"], bool) for c in checks)
    assert log.count("[ok]") + log.count("[CONTRADICTED]") == len(checks)
    for name in SECTIONS:
        stored = json.loads((out / "results" / f"{name}.json").read_text())
        assert stored["wall_s"] >= 0 and stored["machine"]["torch"]
    # a second run reuses every section and writes the same tables
    again = _run(out, work)
    assert again.count("cached results") == len(SECTIONS)
    md2 = (out / "results.md").read_text()
    strip = lambda t: re.sub(r"\| this invocation \|[^\n]*\n", "", re.sub(r"load \d+\.\d", "", t))  # noqa: E731
    assert strip(md2) == strip(md)


def test_matches_down_to_stops_at_the_first_round_below_the_floor():
    rows = [
        {"remaining": r, "test_accuracy": a} for r, a in [(1.0, 0.9), (0.8, 0.91), (0.64, 0.85), (0.5, 0.95)]
    ]
    assert lottery.matches_down_to(rows, 0.89) == 0.8  # 0.5 is above the floor again, but after a fall
    assert lottery.matches_down_to(rows, 0.95) == 1.0
    assert lottery.matches_down_to(rows, 0.5) == 0.5


def test_md_table_escapes_pipes_and_aligns():
    text = md_table(["a", "b"], [["|w|", 1]], "lr")
    assert text.splitlines() == ["| a | b |", "|---|---:|", "| \\|w\\| | 1 |"]


def test_checks_record_and_mark_a_contradiction(capsys):
    checks = Checks()
    assert checks.add("s", "claim one", True, "e1") is True
    assert checks.add("s", "claim two", False, "e2") is False
    printed = capsys.readouterr().out
    assert "[ok] s: claim one (e1)" in printed and "[CONTRADICTED] s: claim two (e2)" in printed
    assert [c["holds"] for c in checks.items] == [True, False]
    assert "CONTRADICTED" in checks.verdict(False) and checks.verdict(True) == "holds"


def test_find_row_matches_compression_as_a_float_and_every_field():
    rows = [
        {"criterion": "snip", "scope": "global", "compression": 2, "finetuned": False},
        {"criterion": "snip", "scope": "global", "compression": "2.0", "finetuned": True},
        {"criterion": "snip", "scope": "layer", "compression": 2.0, "finetuned": True},
    ]
    assert find_row(rows, 2.0, criterion="snip", finetuned=True) is rows[1]
    assert find_row(rows, 2, criterion="snip", scope="layer") is rows[2]
    assert find_row(rows, 4, criterion="snip") is None
    assert find_row(rows, 2, criterion="grasp") is None


def test_mean_std_is_the_sample_std_and_zero_for_one_value():
    m, s = mean_std([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5 and math.isclose(s, math.sqrt(5 / 3))
    assert mean_std([0.7]) == (0.7, 0.0)


def test_fmt_s_switches_to_minutes_at_two_minutes():
    assert fmt_s(119.94) == "119.9 s"
    assert fmt_s(125.0) == "2 min 05 s"


def test_every_section_module_has_the_section_interface():
    assert SECTIONS == ("lottery", "criteria", "init", "hessian", "speed", "llm")
    for mod in MODULES.values():
        assert all(callable(getattr(mod, f, None)) for f in ("build", "chapter", "headlines")), mod


def test_discussion_groups_failed_checks_under_their_explanation(capsys):
    checks = Checks()
    checks.add("hessian", "MLP: Hutchinson's relative error falls like 1/sqrt(K)", False, "slope -0.3")
    checks.add("speed", "CSR loses to dense at 50% sparsity", True, "0.57x")
    checks.add("hessian", "MLP b: Hutchinson's relative error falls like 1/sqrt(K)", False, "slope -0.2")
    capsys.readouterr()
    text = discussion.results_discussion(checks)
    assert text.startswith("1 of 3 checked conclusions hold on this run.")
    failed, reproduced = text.split("### Reproduced")
    assert failed.count("*Best explanation:*") == 1  # both 1/sqrt(K) claims share one explanation
    assert "slope -0.3" in failed and "slope -0.2" in failed and "0.57x" in reproduced
    assert discussion.explain("something no rule knows") == "See the section above for the numbers."


def _llm_result(owl_ppl: float, sgpt_50: float) -> dict:
    """A made-up llm section result: dense 3.0, magnitude 3.4 at 50% (one run), Wanda and SparseGPT over
    two seeds, OWL + Wanda at 70%, and the blocks form with block 3 the least influential and least harmful."""
    runs = [("magnitude", "0.5", 0, 3.4), ("magnitude", "2:4", 0, 4.2), ("magnitude", "0.7", 0, 5.0)]
    for seed, d in ((0, -0.01), (1, 0.01)):
        runs += [
            ("wanda", "0.5", seed, 3.1 + d),
            ("wanda", "2:4", seed, 3.05 + d),
            ("wanda", "0.7", seed, 6.0 + d),
        ]
        runs += [("sparsegpt", "0.5", seed, sgpt_50 + d), ("sparsegpt", "2:4", seed, 3.3 + d)]
        runs += [("owl+wanda", "0.7", seed, owl_ppl + d)]
    owl = {"m": 5.0, "lam": 0.08, "outlier_ratios": [0.002, 0.003], "block_sparsities": [0.78, 0.62]}
    unstructured = [
        {
            "method": m,
            "pattern": p,
            "seed": s,
            "perplexity": v,
            **({"owl": owl} if m.startswith("owl") else {}),
        }
        for m, p, s, v in runs
    ]
    structured = [
        {
            "form": "blocks (BI)",
            "seed": s,
            "perplexity": 3.7 + s,
            "removed": "blocks [3] of 4",
            "params": 10,
            "flop_ratio": 1.3,
        }
        for s in (0, 1)
    ]
    return {
        "dense_perplexity": 3.0,
        "unstructured": unstructured,
        "structured": structured,
        "block_influence": [[0.8, 0.2, 0.1, 0.05], [0.7, 0.2, 0.1, 0.06]],
        "perplexity_with_block_dropped": [90.0, 3.9, 3.8, 3.7],
    }


def test_llm_checks_follow_the_numbers():
    checks = Checks()
    an = llm.analysis(_llm_result(owl_ppl=5.5, sgpt_50=3.3), checks)
    verdicts = {c["claim"]: c["holds"] for c in checks.items}
    far = (
        "is far ahead of magnitude at 50% (its perplexity increase over dense is at most half of magnitude's)"
    )
    # Wanda +0.1 against magnitude's +0.4: far ahead; SparseGPT +0.3: ahead, but not far
    assert verdicts[f"Wanda {far}"] is True and verdicts[f"SparseGPT {far}"] is False
    assert verdicts["magnitude: 2:4 costs more perplexity than 50% unstructured"] is True
    assert verdicts["Wanda: 2:4 costs more perplexity than 50% unstructured"] is False  # 3.05 < 3.1
    assert verdicts["OWL's block sparsities give Wanda a lower perplexity than uniform 70%"] is True
    assert (
        "OWL's block sparsities give SparseGPT a lower perplexity than uniform 70%" not in verdicts
    )  # not run
    bi = (
        "on every calibration seed, ShortGPT's lowest block influence picks the block whose removal hurts "
        "held-out perplexity least"
    )
    assert verdicts[bi] is True
    assert an["cells"]["magnitude 0.5"]["seeds"] == 1 and an["cells"]["wanda 0.5"]["seeds"] == 2
    blocks = an["structured"]["blocks (BI)"]
    assert (
        blocks["seeds"] == 2
        and math.isclose(blocks["mean"], 4.2)
        and math.isclose(blocks["std"], math.sqrt(0.5))
    )
    assert an["owl"]["sparsities"] == [0.78, 0.62]
    checks = Checks()
    res = _llm_result(owl_ppl=6.5, sgpt_50=3.15)
    res["block_influence"][1] = [0.7, 0.2, 0.04, 0.06]  # seed 1 picks block 2, whose removal hurts more
    res["structured"][1]["removed"] = "blocks [2] of 4"
    an = llm.analysis(res, checks)
    verdicts = {c["claim"]: c["holds"] for c in checks.items}
    assert verdicts[bi] is False
    assert an["structured"]["blocks (BI)"]["removed"] == "blocks [2] of 4 (1 seed), blocks [3] of 4 (1 seed)"
    assert verdicts[f"SparseGPT {far}"] is True
    assert verdicts["OWL's block sparsities give Wanda a lower perplexity than uniform 70%"] is False
