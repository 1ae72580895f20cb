"""The criteria behind :mod:`pure_prune.importance.registry`, each a thin adapter from
:class:`~pure_prune.importance.registry.ScoreInput` to one scoring function."""

from __future__ import annotations

from typing import Any

from pure_prune.importance import magnitude
from pure_prune.importance.registry import Criterion, ScoreInput

__all__ = ["all_criteria"]


def _magnitude(inp: ScoreInput, p: float = 1) -> Any:
    return magnitude.magnitude(inp.params, inp.masks, p=p)


def _l2(inp: ScoreInput) -> Any:
    return magnitude.magnitude(inp.params, inp.masks, p=2)


def _random(inp: ScoreInput) -> Any:
    return magnitude.random(inp.masks, inp.key)


def all_criteria() -> list[Criterion]:
    """Every registered criterion."""
    return [
        Criterion("magnitude", _magnitude, "element", False, "|w| (Han et al. 2015; the seeds' global L1)"),
        Criterion("l1", _magnitude, "element", False, "|w|, the same ranking as magnitude"),
        Criterion("l2", _l2, "element", False, "w², for channel norms summed as L2"),
        Criterion("random", _random, "element", False, "uniform random scores from the key (a control)"),
    ]
