"""The settings of ``pure-prune sweep``: compression ratios, criteria lists, :class:`SweepConfig`.

* :func:`sparsity_of`: compression ratio ``c`` -> sparsity ``1 − 1/c``;
* :func:`default_criteria` / :func:`parse_criteria`: ``(criterion, scope)`` pairs (element criteria
  rank ``global`` by default, unit criteria ``layer``);
* :class:`SweepConfig`: the flags of the command, checked; :meth:`SweepConfig.run_config` is the
  ``pure-prune run --method one_shot`` config whose round 0 is the sweep's dense training and whose
  round 1 is a point; :meth:`SweepConfig.dense_config` / :meth:`SweepConfig.grid_config` key the
  dense cache and the point results;
* :func:`sweep_points`: one point per criterion and compression.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from typing import Any

from pure_prune import importance, rng
from pure_prune.app import cli_choices
from pure_prune.app.experiment import OPTIMIZERS
from pure_prune.app.runconfig import RunConfig

__all__ = [
    "COMPRESSIONS",
    "CSV_COLUMNS",
    "DEFAULT_CRITERIA",
    "FORMAT",
    "SCOPES",
    "SWEEP_ONLY",
    "SweepConfig",
    "default_criteria",
    "parse_criteria",
    "sparsity_of",
    "sweep_points",
]

FORMAT = "pure_prune.sweep/2"
"""The format of a point's result (2: a point is round 1 of ``pure-prune run --method one_shot``)."""
COMPRESSIONS = cli_choices.SWEEP_COMPRESSIONS
DEFAULT_CRITERIA: tuple[tuple[str, str, str], ...] = cli_choices.SWEEP_CRITERIA
"""``(criterion, scope, level)`` in table order; :func:`default_criteria` keeps those registered
with that level (element criteria prune weights, unit criteria whole channels)."""
CSV_COLUMNS = (
    "criterion",
    "scope",
    "compression",
    "sparsity",
    "finetuned",
    "accuracy_mean",
    "accuracy_std",
    "n",
    "level",
    "achieved_sparsity",
)
SCOPES = ("global", "layer")


# ----------------------------------------------------------------------------- configuration


def sparsity_of(compression: float) -> float:
    """The sparsity of compression ratio ``c``: ``1 − 1/c`` (``c = 4`` keeps a quarter: 0.75).

    Raises ``ValueError`` unless ``c`` is a finite real number ``>= 1``."""
    if isinstance(compression, bool) or not isinstance(compression, numbers.Real):
        raise ValueError(f"compression ratio must be a number >= 1, got {compression!r}")
    if not math.isfinite(compression) or compression < 1:
        raise ValueError(
            f"compression ratio must be >= 1 (sparsity 1 - 1/c: 2 keeps half the weights), got {compression!r}"
        )
    return 1.0 - 1.0 / float(compression)


def default_criteria() -> list[tuple[str, str]]:
    """``[(criterion, scope), ...]``: the entries of :data:`DEFAULT_CRITERIA` whose name is registered
    (``importance.names()``) with the listed level, in that order."""
    known = set(importance.names())
    return [(n, s) for n, s, level in DEFAULT_CRITERIA if n in known and importance.get(n).level == level]


def parse_criteria(text: str | Sequence[str]) -> list[tuple[str, str]]:
    """``"magnitude,random,magnitude:layer"`` (or a list of such items) -> ``[(name, scope), ...]``.

    An item is ``name`` or ``name:scope`` (``global`` or ``layer``); without a scope, element
    criteria rank ``global`` and unit criteria ``layer``. Raises ``ValueError`` for an unknown name
    (listing the registered ones), an unknown scope, a repeated item or an empty list."""
    items = [t.strip() for t in text.split(",")] if isinstance(text, str) else [str(t).strip() for t in text]
    items = [t for t in items if t]
    if not items:
        raise ValueError("criteria: give at least one criterion (e.g. 'magnitude,random')")
    known = importance.names()
    out: list[tuple[str, str]] = []
    for item in items:
        name, _, scope = item.partition(":")
        if name not in known:
            raise ValueError(f"unknown criterion {name!r} in --criteria; known criteria: {', '.join(known)}")
        level = importance.get(name).level
        scope = scope or ("layer" if level == "unit" else "global")
        if scope not in SCOPES:
            raise ValueError(f"criterion {item!r}: unknown scope {scope!r}; known: {', '.join(SCOPES)}")
        if (name, scope) in out:
            raise ValueError(f"criterion {item!r} is listed twice")
        out.append((name, scope))
    return out


SWEEP_ONLY = ("criteria", "compression", "eager")
"""The settings of :class:`SweepConfig` that are not ``RunConfig`` knobs; the others are, by name
(their defaults ``RunConfig``'s, but for ``seeds``/``epochs``/``finetune_epochs``)."""


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """The settings of a sweep (the flags of ``pure-prune sweep``).

    ``criteria``: ``(name, scope)`` pairs (:func:`parse_criteria`); empty = :func:`default_criteria`.
    ``compression``: ratios ``c >= 1``. ``seeds``: ``S``, keys ``seed .. seed + S − 1``. ``epochs``:
    dense training; ``finetune_epochs`` after pruning. ``eager``: no ``torch.compile``.
    ``save_dir`` defaults to ``runs/sweep-<model>-<data>``.
    """

    model: str = RunConfig.model
    data: str = RunConfig.data
    model_cfg: dict = dataclasses.field(default_factory=dict)
    root: str | None = None
    criteria: tuple[tuple[str, str], ...] = ()
    compression: tuple[float, ...] = COMPRESSIONS
    seeds: int = 5
    epochs: int = 20
    finetune_epochs: int = 5
    batch_size: int = RunConfig.batch_size
    optimizer: str = RunConfig.optimizer
    lr: float = RunConfig.lr
    momentum: float = RunConfig.momentum
    weight_decay: float = RunConfig.weight_decay
    score_batches: int = RunConfig.score_batches
    seed: int = RunConfig.seed
    eager: bool = False
    threads: int | None = None
    save_dir: str | None = None

    def check(self) -> SweepConfig:
        """A copy with the defaults filled in (criteria, save dir; compressions as floats), or
        ``ValueError`` naming the bad setting and its value."""
        criteria = tuple(self.criteria) or tuple(default_criteria())
        if not criteria:
            raise ValueError("no criterion to sweep: none of the default criteria is registered")
        parse_criteria([f"{n}:{s}" for n, s in criteria])  # names, scopes, repeats
        comps = tuple(self.compression)
        if not comps:
            raise ValueError("compression: give at least one ratio (e.g. 2,4,8,16,32)")
        for c in comps:
            sparsity_of(c)
        if len(set(map(float, comps))) != len(comps):
            raise ValueError(f"compression ratios repeat: {list(comps)}")
        for name, low in (("seeds", 1), ("epochs", 1), ("finetune_epochs", 0), ("batch_size", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
        if (
            isinstance(self.score_batches, bool)
            or not isinstance(self.score_batches, int)
            or self.score_batches < 1
        ):
            raise ValueError(f"score_batches must be an int >= 1, got {self.score_batches!r}")
        rng.check_key(self.seed, "seed")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; known: {', '.join(OPTIMIZERS)}")
        if not isinstance(self.lr, numbers.Real) or not math.isfinite(self.lr) or self.lr <= 0:
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        return dataclasses.replace(
            self,
            criteria=criteria,
            compression=tuple(float(c) for c in comps),
            save_dir=self.save_dir or f"runs/sweep-{self.model}-{self.data}",
        )

    def keys(self) -> list[int]:
        """The seeds' keys: ``[seed, seed + 1, ..., seed + seeds − 1]``."""
        return [self.seed + i for i in range(self.seeds)]

    def run_config(self) -> RunConfig:
        """The ``pure-prune run --method one_shot`` config of these settings (checked): round 0 is
        the dense training every point starts from, round 1 (with a point's ``importance``,
        ``scope``, ``sparsity`` and ``struct``) is the point: every setting but :data:`SWEEP_ONLY` is
        the knob of its name; ``compile`` is ``not eager``."""
        knobs = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in SWEEP_ONLY}
        return RunConfig(
            **{**knobs, "model_cfg": dict(self.model_cfg)},
            method="one_shot",
            compile=not self.eager,
            eval_every_epoch=False,
            progress=False,
        ).check()

    def dense_config(self) -> dict[str, Any]:
        """Every setting the dense training depends on (plain JSON): the cache key."""
        return {
            "format": "pure_prune.sweep_dense/2",
            "model": self.model,
            "model_cfg": _jsonable(self.model_cfg),
            "data": self.data,
            "keys": self.keys(),
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "optimizer": self.optimizer,
            "lr": self.lr,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "compile": not self.eager,
        }

    def grid_config(self) -> dict[str, Any]:
        """Every setting a point's result depends on (plain JSON): ``run_grid``'s config."""
        return {
            "format": FORMAT,
            "dense": self.dense_config(),
            "finetune_epochs": self.finetune_epochs,
            "score_batches": self.score_batches,
        }


def _jsonable(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return v


def sweep_points(cfg: SweepConfig) -> list[dict[str, Any]]:
    """One point per criterion and compression (criteria major), each naming its criterion's level."""
    return [
        {"criterion": n, "scope": s, "level": importance.get(n).level, "compression": c}
        for n, s in cfg.criteria
        for c in cfg.compression
    ]
