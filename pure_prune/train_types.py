"""The types of :mod:`pure_prune.train`: a batch, a loss, a training step and an eval step.

``Step``: ``step(params, state, opt_state, masks, batch) -> (params, state, opt_state, metrics)``;
``EvalStep``: ``eval_step(params, state, masks, batch) -> sums``; ``Batch``: ``(x, y, *extra)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from pure_prune.optim import OptState

__all__ = ["Batch", "Compiler", "EvalStep", "Loss", "Metrics", "Params", "Step"]

Params = Any
Batch = tuple[Tensor, ...]
Loss = Callable[..., Tensor]
Step = Callable[[Params, Params, OptState, Params, Batch], tuple[Params, Params, OptState, dict[str, Tensor]]]
EvalStep = Callable[[Params, Params, Params, Batch], dict[str, Tensor]]
Compiler = Callable[[Callable[..., Any]], Callable[..., Any]]
"""Compiles a step's body in place of ``torch.compile``: ``compiler(body) -> callable``."""
Metrics = Mapping[str, Callable[..., Tensor]]
"""Extra metrics ``{name: fn(out, y, *extra) -> float ()}``, each a mean over the entries of ``y``."""
