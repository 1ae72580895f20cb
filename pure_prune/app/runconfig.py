"""The configuration of a ``pure-prune run``: one frozen record, read from TOML and/or flags.

Every knob has a default; a TOML file (``tomllib``) overrides them and command-line flags override
the file. Knob names follow lottery-ticket code (``rate``, ``pruning_times``, ``rewind_epoch``,
``fillback_rate``, ``criteria``, ``reg_granularity``, ``rst_schedule``, ``decreasing_lr``, ...);
a TOML key may use ``-`` for ``_``.

:meth:`RunConfig.resolved` fills the method-dependent defaults (``struct``, ``schedule``,
``criteria``) and :meth:`RunConfig.check` rejects bad or contradictory settings with a message that
names the knob and its value: an unknown key or method (listing the known ones), ``rate >= 1``, a
rewind epoch past the end of training, a knob set away from its default that the chosen method
does not use. :func:`config_hash` identifies a run's results (every knob that can change them).

``seeds`` (default 1) runs the seeds with keys ``seed, seed + 1, ..., seed + seeds - 1``
(:meth:`RunConfig.seed_keys`) in one run; seed ``i`` is the run ``seed = seed + i`` (see
``pure_prune.app.runner``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomllib

from pure_prune.app.knobs import BACKENDS, GRADUAL_SCHEDULES, ITERATIVE_SCHEDULES, KNOBS, METHODS, used_by

__all__ = ["METHODS", "STEP_CACHE_WORDS", "RunConfig", "config_hash", "from_mapping", "load_toml", "parse_nm"]

# knobs that never change a run's results: excluded from the hash, allowed to differ on --resume
NOT_HASHED = ("save_dir", "progress", "threads", "root", "step_cache")
STEP_CACHE_WORDS = (None, "auto", "off")
"""``step_cache`` values that name no folder: ``"auto"`` (torch's inductor cache folder, where it
applies) and ``"off"``/``None`` (no saved steps)."""
# knobs added after runs were first saved: left out of the hash at these values, so the hash of a run
# saved before the knob existed stays the same
HASH_NEUTRAL: dict[str, Any] = {
    "seeds": 1,
    "compact": False,
    "recompile_every": 2,
    "sparsity_change_threshold": 0.05,
}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Every knob of a run (see the module docstring); ``None`` means "the method's default"."""

    model: str = "mlp"
    data: str = "digits"
    root: str | None = None
    model_cfg: dict = dataclasses.field(default_factory=dict)
    method: str = "imp"
    importance: str = "magnitude"
    criteria: str | None = None
    struct: str | None = None
    scope: str | None = None
    nm: str = "2:4"
    exclude: tuple[str, ...] = ()
    rate: float = 0.2
    pruning_times: int = 1
    rewind_epoch: int = 0
    control: str = "none"
    schedule: str | None = None
    sparsity: float = 0.8
    gradual_start: int = 0
    gradual_every: int = 1
    gradual_steps: int = 5
    fillback_rate: float = 0.0
    reg_granularity: float = 1.0
    rst_schedule: str = "x^2"
    exponent: float = 2.0
    alpha: float = 0.5
    temperature: float = 3.0
    dst: str = "rigl"
    update_every: int = 100
    drop_fraction: float = 0.3
    end_fraction: float = 0.75
    distribution: str = "uniform"
    compact: bool = False
    recompile_every: int = 2
    sparsity_change_threshold: float = 0.05
    epochs: int = 30
    finetune_epochs: int = 10
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    decreasing_lr: tuple[int, ...] = ()
    gamma: float = 0.1
    batch_size: int = 64
    score_batches: int = 1
    seed: int = 0
    seeds: int = 1
    compile: bool = True
    backend: str = "inductor"
    eval_every_epoch: bool = True
    threads: int | None = None
    progress: bool = True
    save_dir: str | None = None
    step_cache: str | None = "auto"

    # ------------------------------------------------------------------------------ derived
    def resolved(self) -> RunConfig:
        """A copy with the method defaults filled in: ``struct`` (``channels`` for rsst, else
        ``unstructured``), ``scope`` (``layer`` for channels, else ``global``), ``schedule`` (``linear_steps`` for gradual, else ``geometric``),
        ``criteria`` (``remain``) and ``save_dir`` (``runs/<method>-<model>-<data>-seed<seed>``, or
        ``...-seeds<first>-<last>`` for several seeds)."""
        rsst = self.method == "rsst"
        struct = self.struct or ("channels" if rsst else "unstructured")
        tag = f"seed{self.seed}" if self.seeds == 1 else f"seeds{self.seed}-{self.seed + self.seeds - 1}"
        return dataclasses.replace(
            self,
            struct=struct,
            scope=self.scope or ("layer" if struct == "channels" else "global"),
            schedule=self.schedule or ("linear_steps" if self.method == "gradual" else "geometric"),
            criteria=self.criteria or "remain",
            save_dir=self.save_dir or f"runs/{self.method}-{self.model}-{self.data}-{tag}",
        )

    def seed_keys(self) -> list[int]:
        """The random keys of the run's seeds: ``[seed, seed + 1, ..., seed + seeds - 1]``."""
        return [self.seed + i for i in range(self.seeds)]

    def check(self) -> RunConfig:
        """Return ``self`` (resolved) or raise ``ValueError`` naming the bad knob and its value."""
        c = self.resolved()
        _check_types(c)
        if c.method not in METHODS:
            raise ValueError(f"unknown method {c.method!r}; known methods: {', '.join(METHODS)}")
        default = dataclasses.replace(RunConfig(), method=c.method).resolved()
        for knob in KNOBS:
            users = used_by(knob)
            if c.method not in users and getattr(c, knob) != getattr(default, knob):
                raise ValueError(
                    f"{knob} = {getattr(c, knob)!r} has no effect with method {c.method!r} "
                    f"(it is used by: {', '.join(users)})"
                )
        if not 0.0 <= c.rate < 1.0:
            raise ValueError(
                f"rate must be in [0, 1) (a share of the remaining weights per round), got {c.rate!r}"
            )
        if not 0.0 <= c.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {c.sparsity!r}")
        if not 0.0 <= c.fillback_rate <= 1.0:
            raise ValueError(f"fillback_rate must be in [0, 1], got {c.fillback_rate!r}")
        for knob in ("epochs", "batch_size", "score_batches", "seeds"):
            if getattr(c, knob) < 1:
                raise ValueError(f"{knob} must be >= 1, got {getattr(c, knob)!r}")
        for knob in ("pruning_times", "rewind_epoch", "finetune_epochs", "gradual_start", "seed"):
            if getattr(c, knob) < 0:
                raise ValueError(f"{knob} must be >= 0, got {getattr(c, knob)!r}")
        explicit_cache = c.step_cache not in STEP_CACHE_WORDS
        if explicit_cache and (not c.compile or c.backend != "inductor" or c.compact):
            raise ValueError(
                f"step_cache {c.step_cache!r} saves inductor's compiled steps: it needs compile on, "
                f"backend 'inductor' and no compact stages (got compile={c.compile}, backend "
                f"{c.backend!r}, compact={c.compact})"
            )
        if c.threads is not None and c.threads < 1:
            raise ValueError(f"threads must be >= 1 (leave it unset for torch's default), got {c.threads!r}")
        if c.method in ("imp", "refill") and c.rewind_epoch >= c.epochs:
            raise ValueError(
                f"rewind_epoch {c.rewind_epoch} is past the end of training: rounds train epochs "
                f"rewind_epoch .. epochs-1, and epochs = {c.epochs}"
            )
        milestones = list(c.decreasing_lr)
        if any(b <= a for a, b in zip(milestones, milestones[1:])) or any(
            m < 1 or m >= c.epochs for m in milestones
        ):
            raise ValueError(
                f"decreasing_lr must be increasing epochs in [1, epochs-1 = {c.epochs - 1}], got {milestones}"
            )
        _check_choices(c)
        return c

    def to_json(self) -> dict[str, Any]:
        """The knobs as plain JSON (tuples as lists)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _check_choices(c: RunConfig) -> None:
    from pure_prune import importance
    from pure_prune.algorithms import dst, masking, refill, unit_criteria
    from pure_prune.algorithms.imp import CONTROLS
    from pure_prune.algorithms.rsst import GROWTH

    schedules = GRADUAL_SCHEDULES if c.method == "gradual" else ITERATIVE_SCHEDULES
    criteria = refill.CRITERIA if c.method == "refill" else unit_criteria.CRITERIA
    table = [
        ("struct", masking.STRUCTS),
        ("scope", ("global", "layer")),
        ("schedule", schedules),
        ("control", CONTROLS),
        ("criteria", criteria),
        ("rst_schedule", GROWTH),
        ("dst", dst.KINDS),
        ("distribution", dst.DISTRIBUTIONS),
        ("optimizer", ("sgd", "adam", "adamw")),
        ("importance", importance.names()),
        ("backend", BACKENDS),
    ]
    for knob, known in table:
        if getattr(c, knob) not in known:
            raise ValueError(
                f"unknown {knob} {getattr(c, knob)!r} for method {c.method!r}; known: {', '.join(known)}"
            )
    if importance.get(c.importance).level == "unit" and c.struct != "channels":
        raise ValueError(
            f"importance {c.importance!r} scores whole units: struct must be 'channels', got {c.struct!r}"
        )
    if c.method == "rsst" and c.struct != "channels":
        raise ValueError(f"method 'rsst' removes whole channels: struct must be 'channels', got {c.struct!r}")
    if c.method in ("refill", "dst") and c.struct != "unstructured":
        raise ValueError(
            f"method {c.method!r} starts from unstructured masks: struct must be 'unstructured', got {c.struct!r}"
        )
    if c.compact and c.struct != "channels":
        raise ValueError(
            f"compact trains the model with its pruned units removed: struct must be 'channels', got {c.struct!r}"
        )
    if c.compact and c.seeds > 1:
        raise ValueError(
            "compact runs one seed at a time (each seed removes different units, so the seeds' shapes "
            f"differ and cannot be stacked for vmap): use seeds = 1 per run, got seeds = {c.seeds}"
        )
    if not c.compact and (c.recompile_every != 2 or c.sparsity_change_threshold != 0.05):
        raise ValueError(
            "recompile_every and sparsity_change_threshold decide when a compact run makes a new form: "
            "set compact = true to use them"
        )
    if c.recompile_every < 1:
        raise ValueError(f"recompile_every must be >= 1, got {c.recompile_every!r}")
    if not c.sparsity_change_threshold >= 0.0:
        raise ValueError(f"sparsity_change_threshold must be >= 0, got {c.sparsity_change_threshold!r}")
    if c.struct == "nm":
        if c.method != "one_shot":
            raise ValueError(
                f"struct 'nm' has a fixed sparsity 1 - n/m: use method 'one_shot', not {c.method!r}"
            )
        parse_nm(c.nm)
    if (
        c.method == "gradual"
        and c.schedule == "linear_steps"
        and c.gradual_start + (c.gradual_steps - 1) * c.gradual_every >= c.epochs
    ):
        raise ValueError(
            f"gradual schedule ends at epoch {c.gradual_start + (c.gradual_steps - 1) * c.gradual_every}, "
            f"past the end of training (epochs = {c.epochs})"
        )
    if not 0.0 <= c.drop_fraction <= 1.0 or not 0.0 <= c.end_fraction <= 1.0:
        raise ValueError(
            f"drop_fraction and end_fraction must be in [0, 1], got {c.drop_fraction}, {c.end_fraction}"
        )


def parse_nm(text: str) -> tuple[int, int]:
    """``"2:4"`` -> ``(2, 4)``; ``ValueError`` unless ``0 <= n <= m`` and ``m >= 1``."""
    try:
        n, m = (int(v) for v in str(text).split(":"))
    except ValueError:
        raise ValueError(f"nm must look like 'n:m' (e.g. '2:4'), got {text!r}") from None
    if m < 1 or not 0 <= n <= m:
        raise ValueError(f"nm needs 0 <= n <= m and m >= 1, got {text!r}")
    return n, m


# ------------------------------------------------------------------------------------ parsing


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    return v


def _expected(field: dataclasses.Field) -> tuple[type, ...]:
    hint = typing.get_type_hints(RunConfig)[field.name]
    args = (
        typing.get_args(hint)
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        else (hint,)
    )
    return tuple(typing.get_origin(a) or a for a in args)


def _coerce(name: str, value: Any, kinds: tuple[type, ...]) -> Any:
    if value is None and type(None) in kinds:
        return None
    if tuple in kinds and isinstance(value, (list, tuple)):
        return tuple(value)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and bool not in kinds:
        raise TypeError(f"config key {name!r} must be {_names(kinds)}, got {value!r}")
    if not isinstance(value, tuple(k for k in kinds if k is not type(None))):
        raise TypeError(
            f"config key {name!r} must be {_names(kinds)}, got {value!r} ({type(value).__name__})"
        )
    return value


def _names(kinds: tuple[type, ...]) -> str:
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)


def _check_types(c: RunConfig) -> None:
    for f in dataclasses.fields(c):
        _coerce(f.name, getattr(c, f.name), _expected(f))
    for name, v in (("decreasing_lr", c.decreasing_lr), ("exclude", c.exclude)):
        want = int if name == "decreasing_lr" else str
        bad = [x for x in v if isinstance(x, bool) or not isinstance(x, want)]
        if bad:
            raise TypeError(f"config key {name!r} must hold {want.__name__}s, got {bad[0]!r}")


def from_mapping(values: Mapping[str, Any], base: RunConfig | None = None) -> RunConfig:
    """``base`` (default: all defaults) with ``values`` applied. Keys may use ``-`` for ``_``.

    Raises ``ValueError`` for an unknown key (listing the known ones) and ``TypeError`` for a value
    of the wrong type (naming the key)."""
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    changes = {}
    for raw, value in values.items():
        name = str(raw).replace("-", "_")
        if name not in fields:
            raise ValueError(f"unknown config key {raw!r}; known keys: {', '.join(sorted(fields))}")
        changes[name] = _coerce(name, value, _expected(fields[name]))
    return dataclasses.replace(base or RunConfig(), **changes)


def load_toml(path: str | Path) -> dict[str, Any]:
    """The top-level table of the TOML file at ``path`` (``FileNotFoundError``/``ValueError`` naming it)."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"config {str(p)!r} is not valid TOML: {e}") from e


def config_hash(config: RunConfig) -> str:
    """SHA-256 (hex) of the resolved knobs that can change a run's results (all but ``NOT_HASHED``,
    and those of ``HASH_NEUTRAL`` at their neutral value)."""
    data = {
        k: v
        for k, v in config.resolved().to_json().items()
        if k not in NOT_HASHED and not (k in HASH_NEUTRAL and v == HASH_NEUTRAL[k])
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
