"""Missing optional dependencies: one line naming the pip extra, from the library and from the CLI.

A module counts as missing when ``sys.modules`` maps its name to ``None`` (Python then raises
``ModuleNotFoundError`` on import), which is what an environment without the extra looks like."""

from __future__ import annotations

import sys

import pytest

from pure_prune.app import cli, data, extras, report


def _hide(monkeypatch, *modules: str) -> None:
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def test_require_returns_the_module_when_installed():
    assert extras.require("sklearn.datasets", "x").load_digits is not None


def test_require_names_the_distribution_and_the_extra(monkeypatch):
    _hide(monkeypatch, "sklearn", "sklearn.datasets")
    with pytest.raises(extras.MissingExtraError) as err:
        extras.require("sklearn.datasets", "the digits data set")
    assert str(err.value) == (
        'scikit-learn is not installed; it is needed for the digits data set: pip install "pure-prune[data]"'
    )
    assert err.value.extra == "data" and isinstance(err.value, ModuleNotFoundError)


def test_a_missing_dependency_of_the_optional_package_is_named_too(monkeypatch):
    def missing_scipy(name, *a, **k):
        raise ModuleNotFoundError("No module named 'scipy'", name="scipy")

    monkeypatch.setattr(extras.importlib, "import_module", missing_scipy)
    with pytest.raises(
        extras.MissingExtraError, match=r"^scipy \(a dependency of mnist1d\) is not installed"
    ) as err:
        extras.require("mnist1d.data", "the mnist1d data set")
    assert err.value.name == "scipy" and 'pip install "pure-prune[data]"' in str(err.value)


def test_require_refuses_a_module_that_is_no_extra():
    with pytest.raises(ValueError, match="'numpy' is not an optional dependency"):
        extras.require("numpy", "x")


@pytest.mark.parametrize(
    ("name", "hidden", "extra"),
    [("digits", ("sklearn", "sklearn.datasets"), "data"), ("mnist1d", ("mnist1d", "mnist1d.data"), "data")],
)
def test_data_load_names_the_data_extra(monkeypatch, name, hidden, extra):
    _hide(monkeypatch, *hidden)
    with pytest.raises(extras.MissingExtraError, match=rf'pip install "pure-prune\[{extra}\]"'):
        data.load(name)


def test_pyplot_names_the_plots_extra(monkeypatch):
    _hide(monkeypatch, "matplotlib", "matplotlib.pyplot")
    with pytest.raises(
        extras.MissingExtraError,
        match=r'^matplotlib is not installed; it is needed for plots: pip install "pure-prune\[plots\]"$',
    ):
        extras.pyplot()


def test_cli_demo_without_the_data_extra_prints_one_line_and_exits_2(monkeypatch, capsys):
    _hide(monkeypatch, "sklearn", "sklearn.datasets")
    assert cli.main(["demo", "--eager", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "pure-prune[data]"' in err and "Traceback" not in err


def test_report_without_the_plots_extra_refuses_before_writing(monkeypatch, tmp_path, capsys):
    _hide(monkeypatch, "matplotlib", "matplotlib.pyplot")
    with pytest.raises(extras.MissingExtraError, match=r"plots=False writes the table only"):
        report.report([tmp_path / "missing"], tmp_path / "lib")
    assert cli.main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "pure-prune[plots]"' in err and "--no-plots" in err
    assert not (tmp_path / "lib").exists() and not (tmp_path / "rep").exists()
    assert cli.main(["sweep", "--epochs", "1", "--save-dir", str(tmp_path / "sw")]) == 2
    assert 'pip install "pure-prune[plots]"' in capsys.readouterr().err
    assert not (tmp_path / "sw").exists()
