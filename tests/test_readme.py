"""The README's Python examples run as written, and its property-testing example finds its bug."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(python_blocks()) >= 2


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_examples_run(index):
    exec(compile(python_blocks()[index], str(README), "exec"), {"__name__": "readme"})


def test_property_example_fails_on_the_buggy_step_and_passes_on_the_fixed_one():
    block = next(b for b in python_blocks() if "def buggy_step" in b)
    ns: dict = {"__name__": "readme"}
    exec(compile(block, str(README), "exec"), ns)  # runs check(fixed_step): must pass
    with pytest.raises(AssertionError, match=r"leaf '[\w.]+' index \(\d+(, \d+)*\): pruned entry is") as info:
        ns["check_pruned_weights_stay_zero"](ns["buggy_step"])
    texts = re.findall(r"```text\n(.*?)```", README.read_text(), flags=re.S)
    shown = next(t for t in texts if "AssertionError" in t)
    assert str(info.value).strip() in shown  # the README quotes the message hypothesis shrinks to
