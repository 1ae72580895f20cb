"""Importance scores: pure functions from params (and data) to score trees; higher = more important.

``get(name)`` / ``names()`` give every criterion under one signature (see ``registry``).
"""

from pure_prune.importance import magnitude
from pure_prune.importance.registry import Criterion, ScoreInput, get, names

__all__ = ["Criterion", "ScoreInput", "get", "magnitude", "names"]
