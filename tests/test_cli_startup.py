"""Start-up of the ``pure-prune`` command: ``--help`` without torch, ``run``'s first line before it.

The parser lists names copied into :mod:`pure_prune.app.cli_choices` (so that it need not import the
registries, which import torch); each copy is compared with its registry here, so they cannot
drift. Timing is measured by ``bench/end_to_end.py`` and reported in the README, not tested.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from pure_prune import importance
from pure_prune import models as model_registry
from pure_prune.algorithms import dst, imp, masking, refill, rsst, unit_criteria
from pure_prune.app import cli_choices, cli_llm, data
from pure_prune.app import sweep as grid
from pure_prune.app.experiment import OPTIMIZERS


def test_the_choices_equal_their_registries():
    assert cli_choices.MODELS == tuple(model_registry.names())
    assert cli_choices.DATA == tuple(data.names())
    assert cli_choices.IMPORTANCE == tuple(importance.names())
    assert cli_choices.UNIT_CRITERIA == tuple(unit_criteria.CRITERIA)
    assert cli_choices.REFILL_CRITERIA == tuple(refill.CRITERIA)
    assert cli_choices.STRUCTS == tuple(masking.STRUCTS)
    assert cli_choices.CONTROLS == tuple(imp.CONTROLS)
    assert cli_choices.GROWTH == tuple(rsst.GROWTH)
    assert cli_choices.DST_KINDS == tuple(dst.KINDS)
    assert cli_choices.DST_DISTRIBUTIONS == tuple(dst.DISTRIBUTIONS)
    assert cli_choices.OPTIMIZERS == tuple(OPTIMIZERS)
    assert cli_choices.SWEEP_COMPRESSIONS == tuple(grid.COMPRESSIONS)
    assert cli_choices.SWEEP_CRITERIA == tuple(grid.DEFAULT_CRITERIA)
    defaults = dataclasses.asdict(grid.SweepConfig())
    assert cli_choices.SWEEP_DEFAULTS == {k: defaults[k] for k in cli_choices.SWEEP_DEFAULTS}
    assert cli_choices.LLM_METHODS == cli_llm.METHODS and cli_choices.LLM_DTYPES == tuple(cli_llm.DTYPES)


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=_env()
    )


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("command", [[], ["demo"], ["train"], ["run"], ["report"], ["sweep"], ["llm"]])
def test_help_imports_neither_torch_nor_the_commands(command):
    argv = [*command, "--help"]
    code = (
        f"import sys\nfrom pure_prune.app import cli\ntry:\n    cli.main({argv!r})\nexcept SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "heavy = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('pure_prune.app.cli_commands', "
        "'pure_prune.app.cli_llm.', 'pure_prune.app.runner', 'pure_prune.app.data', 'pure_prune.app.sweep')) "
        "or m == 'pure_prune.app.cli_llm')\nprint('HEAVY', heavy)"
    )
    done = _python(code)
    assert done.returncode == 0, done.stderr
    assert "usage: pure-prune" in done.stdout and "HEAVY []" in done.stdout, done.stdout[-400:]


def test_run_prints_its_first_line_before_importing_torch(tmp_path):
    """An import hook stops the process at the first ``import torch``: the line is already out."""
    save = tmp_path / "r"
    code = f"""
import sys
class Stop:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            print("IMPORTING TORCH", flush=True)
            raise SystemExit(0)
sys.meta_path.insert(0, Stop())
from pure_prune.app import cli
cli.main(["run", "--method", "imp", "--model", "mlp", "--data", "digits", "--save-dir", {str(save)!r}])
"""
    done = _python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"pure-prune run: imp on mlp/digits, save dir {save}",
        "IMPORTING TORCH",
    ]
    assert not save.exists()


def test_run_first_line_then_the_error_of_a_refused_config(tmp_path, capsys):
    from pure_prune.app import cli, cli_parser, cli_run

    toml = tmp_path / "bad.toml"
    toml.write_text("nope = 1\n")
    args = cli_parser.parser().parse_args(["run", "--config", str(toml)])
    assert cli_run.first_line(args) is None
    args = cli_parser.parser().parse_args(["run", "--method", "one_shot", "--seed", "3"])
    assert (
        cli_run.first_line(args)
        == "pure-prune run: one_shot on mlp/digits, save dir runs/one_shot-mlp-digits-seed3"
    )
    save = tmp_path / "r"
    assert cli.main(["run", "--rate", "1.5", "--save-dir", str(save)]) == 2
    out, err = capsys.readouterr()
    assert out == f"pure-prune run: imp on mlp/digits, save dir {save}\n"
    assert err.count("\n") == 1 and "rate must be in [0, 1)" in err and not save.exists()
    assert cli.main(["run", "--config", str(toml)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "nope" in err


def test_the_console_entry_returns_mains_code_and_freezes_the_heap(monkeypatch):
    """``cli.entry`` (the console script, ``python -m pure_prune``) returns ``main``'s exit code and
    leaves the objects alive at the end in the permanent generation (``gc.freeze``), so the
    interpreter's final collection does not walk them."""
    import gc

    from pure_prune.app import cli

    monkeypatch.setattr(cli, "main", lambda: 7)
    gc.unfreeze()
    try:
        assert cli.entry() == 7 and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
    done = subprocess.run([sys.executable, "-m", "pure_prune", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "usage: pure-prune" in done.stdout
