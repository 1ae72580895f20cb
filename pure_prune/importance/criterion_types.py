"""The two types every importance criterion is written against: what a criterion may look at
(:class:`ScoreInput`) and a registered criterion (:class:`Criterion`). The table of criteria by
name is :mod:`pure_prune.importance.registry`; the scoring functions are in
:mod:`pure_prune.importance.criteria`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from pure_prune import tree
from pure_prune.groups import ChannelGroup

__all__ = ["Criterion", "ScoreInput"]


class ScoreInput(NamedTuple):
    """What a criterion may look at.

    ``apply(params, state, x, *, train)`` is the model's; ``params``/``state``/``masks`` its trees
    (``masks`` bool or ``None`` per leaf); ``batches`` a tuple of ``(x, y)`` batches for
    data-driven criteria (may be empty for data-free ones); ``key`` the explicit random key;
    ``groups`` the model's channel groups (may be empty for element-level criteria).
    """

    apply: Callable[..., Any]
    params: Any
    state: Any
    masks: Any
    batches: tuple[tuple[torch.Tensor, torch.Tensor], ...] = ()
    key: int = 0
    groups: Sequence[ChannelGroup] = ()

    def model_fn(self, masked: bool = True) -> Callable[[Any, torch.Tensor], torch.Tensor]:
        """``f(params, x) -> logits`` in eval mode with ``state`` closed over (masks applied if asked)."""
        from pure_prune import mask

        masks, state, apply = self.masks, self.state, self.apply

        def f(params: Any, x: torch.Tensor) -> torch.Tensor:
            p = mask.apply(params, masks) if masked and masks is not None else params
            return apply(p, state, x, train=False)[0]

        return f

    def restrict(self, scores: Any) -> Any:
        """``scores`` with ``None`` wherever ``masks`` is ``None`` (dense leaves are never scored)."""
        return tree.map(lambda s, m: None if m is None or s is None else s, scores, self.masks)


class Criterion(NamedTuple):
    """A registered criterion: its ``fn``, ``level`` (``"element"``/``"unit"``), whether it needs
    ``batches`` (``needs_data``) and a one-line ``description``."""

    name: str
    fn: Callable[..., Any]
    level: str
    needs_data: bool
    description: str

    def __call__(self, inp: ScoreInput, **options: Any) -> Any:
        if self.needs_data and not inp.batches:
            raise ValueError(f"criterion {self.name!r} needs data: pass at least one (x, y) batch")
        if self.level == "unit" and not inp.groups:
            raise ValueError(f"criterion {self.name!r} scores units: pass the model's channel groups")
        return self.fn(inp, **options)
