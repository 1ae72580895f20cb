"""Pruning algorithms composed from pure pieces (scores, selection, schedules, masked steps).

Each method is a sequence of rounds over a :class:`~pure_prune.algorithms.base.Carry` with injected
training (``base.TrainFn``) and operations (``ops.RoundOps``), so the same code runs on one seed or
many, in a notebook, in a property test with no
training, and in ``pure-prune run`` with checkpoints between rounds:

``one_shot``  score, prune, fine-tune          ``gradual``  prune on a schedule during training
``imp``       lottery tickets with rewinding   ``rsst``     growing penalty, then whole channels
``refill``    IMP masks turned into channels   ``distill``  fine-tune from the dense teacher
``dst``       SET / RigL / STE at constant sparsity

Shared pieces: ``masking`` (mask forms and scoring by criterion name), ``unit_criteria`` (channel
rankings of RSST and Refill), ``base`` (carry, rounds, training callback), ``ops`` (what a round
calls, built for one seed or a vmapped stack of seeds, so each method is written once).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "base",
    "distill",
    "dst",
    "gradual",
    "imp",
    "masking",
    "one_shot",
    "ops",
    "refill",
    "rsst",
    "unit_criteria",
]


def __getattr__(name: str) -> Any:
    """Import a method's module on first access as ``pure_prune.algorithms.<name>`` (PEP 562)."""
    if name in __all__:
        module = importlib.import_module(f"pure_prune.algorithms.{name}")
        globals()[name] = module
        return module
    raise AttributeError(
        f"module 'pure_prune.algorithms' has no attribute {name!r}; its modules: {', '.join(__all__)}"
    )
