"""The public API: ``import pure_prune as pp`` gives every library module, lazily."""

from __future__ import annotations

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
        "app = [m for m in ('pure_prune.cli', 'pure_prune.runner', 'pure_prune.data', 'pure_prune.models') if m in sys.modules]; "
        "assert not app, app"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
