"""Importance criteria by name: one signature family for all of them.

Every criterion is ``fn(inp: ScoreInput, **options) -> scores`` where ``scores`` is

* ``level == "element"``: a tree shaped like ``inp.masks`` (float tensors, ``None`` where the mask
  is ``None``), for ``select.unstructured`` / ``rows`` / ``n_of_m`` / ``block`` / ``channels``;
* ``level == "unit"``: ``{group name: (size,) tensor}`` for every prunable channel group, for
  ``select.units``.

Higher means more important. ``get(name)`` returns a :class:`Criterion` (defined with
:class:`ScoreInput` in :mod:`pure_prune.importance.criterion_types`, re-exported here);
``names()`` lists them.
"""

from __future__ import annotations

from pure_prune.importance import criteria
from pure_prune.importance.criterion_types import Criterion, ScoreInput

__all__ = ["Criterion", "ScoreInput", "get", "names", "register_table"]


def register_table() -> dict[str, Criterion]:
    """The table of every criterion (built on each call: no module-level mutable registry)."""
    return {c.name: c for c in criteria.all_criteria()}


def names() -> tuple[str, ...]:
    """Names of the registered criteria, sorted."""
    return tuple(sorted(register_table()))


def get(name: str) -> Criterion:
    """The criterion registered as ``name``; ``ValueError`` listing the known names otherwise."""
    table = register_table()
    if name not in table:
        raise ValueError(f"unknown criterion {name!r}; known criteria: {', '.join(sorted(table))}")
    return table[name]
