"""``pure-prune sweep``: accuracy against compression for many criteria, every point over many seeds.

In the spirit of ShrinkBench (Blalock et al. 2020, *What is the state of neural network
pruning?*): one model and data set, every criterion pruned one-shot to every compression ratio
``c`` (sparsity ``1 − 1/c``: ``c = 2, 4, 8, 16, 32`` keep 50%, 25%, 12.5%, 6.25%, 3.125% of the
prunable weights), each point measured over ``S`` seeds and reported as ``mean ± std``, without
fine-tuning and after it.

* **Dense training once.** Seed ``k_i = seed + i`` trains its dense model as
  ``sweep.run_seeds`` does (init and data order from ``sweep.seed_subkeys(k_i)``), all seeds as
  one vmapped program. The stacked params and state are cached in
  ``<save_dir>/dense/<hash>.safetensors``, keyed by every setting that changes them (model, its
  config, data, keys, epochs, batch size, optimizer, compile); every point, and every later sweep
  with the same settings, starts from this file.
* **A point** is one criterion (with its scope) at one compression: ``sweep.run_seeds`` with
  ``train_epochs=0`` and an init that returns each seed's cached dense trees, so a point equals
  ``run_seeds`` trained from scratch (``tests/test_grid.py`` checks it): score, select per seed,
  evaluate, fine-tune ``finetune_epochs`` epochs with the masks fixed, evaluate. A unit-level
  criterion (one that scores whole channels, e.g. ``hap``) removes channels instead: the same
  pipeline with ``masking.prune_to(struct="channels", level="unit")`` per seed; its compression
  is then counted in units (``sparsity`` = share of removed units; ``achieved_sparsity`` in the
  CSV is the pruned share of the masked entries).
* **Distributed and resumable.** The points run under ``distributed.run_grid``: one process, or
  ``torchrun --nproc_per_node N -m pure_prune sweep ...`` (rank 0 trains or loads the dense
  trees and broadcasts them; the points are sharded round robin). Each point's result is a JSON
  file in ``<save_dir>/points/<settings hash>/`` (so sweeps with other fine-tuning settings keep
  their own results beside it); running again computes only the missing points, and adding a
  criterion or a compression computes only the new ones.

Outputs (rank 0): ``sweep.csv`` (:data:`CSV_COLUMNS`: one row per criterion, scope, compression
and fine-tuning state, plus a ``dense`` row), ``sweep.png`` (accuracy against compression, log₂
axis, one line per criterion with ``mean ± std`` bands; one panel before and one after
fine-tuning) and ``sweep.md`` (the Markdown table that the command prints).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist

from pure_prune import importance, losses, mask, rng, seeds, tree
from pure_prune.algorithms import masking
from pure_prune.app import checkpoint, cli_choices, distributed, extras, report
from pure_prune.app.experiment import OPTIMIZERS, Experiment
from pure_prune.app.runner import setup_eager
from pure_prune.importance.registry import Criterion

__all__ = [
    "COMPRESSIONS",
    "CSV_COLUMNS",
    "DEFAULT_CRITERIA",
    "SweepConfig",
    "SweepResult",
    "default_criteria",
    "dense_init",
    "markdown",
    "parse_criteria",
    "plot",
    "run",
    "run_point",
    "sparsity_of",
    "table",
    "train_dense",
]

FORMAT = "pure_prune.seeds/1"
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


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """The settings of a sweep (the flags of ``pure-prune sweep``).

    ``criteria``: ``(name, scope)`` pairs (:func:`parse_criteria`); empty = :func:`default_criteria`.
    ``compression``: ratios ``c >= 1``. ``seeds``: ``S``, keys ``seed .. seed + S − 1``. ``epochs``:
    dense training; ``finetune_epochs`` after pruning. ``eager``: no ``torch.compile``.
    ``save_dir`` defaults to ``runs/sweep-<model>-<data>``.
    """

    model: str = "mlp"
    data: str = "digits"
    model_cfg: dict = dataclasses.field(default_factory=dict)
    root: str | None = None
    criteria: tuple[tuple[str, str], ...] = ()
    compression: tuple[float, ...] = COMPRESSIONS
    seeds: int = 5
    epochs: int = 20
    finetune_epochs: int = 5
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    score_batches: int = 1
    seed: int = 0
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

    def dense_config(self) -> dict[str, Any]:
        """Every setting the dense training depends on (plain JSON): the cache key."""
        return {
            "format": "pure_prune.sweep_dense/1",
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


def _points(cfg: SweepConfig) -> list[dict[str, Any]]:
    """One point per criterion and compression (criteria major), each naming its criterion's level."""
    return [
        {"criterion": n, "scope": s, "level": importance.get(n).level, "compression": c}
        for n, s in cfg.criteria
        for c in cfg.compression
    ]


# ----------------------------------------------------------------------------- dense training


def train_dense(
    exp: Experiment,
    init: Callable[[int], tuple[Any, Any]],
    keys: Sequence[int],
    epochs: int,
    steps: seeds.SeedSteps,
) -> tuple[Any, Any, dict[str, list[float]]]:
    """Every seed's dense model, trained as ``sweep.run_seeds`` trains it, all seeds vmapped.

    Seed ``k``: ``init(seed_subkeys(k)["init"])``, ``epochs`` epochs with all-kept masks, a fresh
    ``exp.optimizer`` state and the data order of ``seed_subkeys(k)["train"]``. Returns the stacked
    ``(params, state)`` (``(S, *shape)`` leaves) and ``{"accuracy": [S], "loss": [S]}`` on the test
    split."""
    sub = [seeds.seed_subkeys(k) for k in keys]
    params, state = seeds.init_seeds(init, [s["init"] for s in sub])
    masks = seeds.masks_like_seeds(params)
    order = [s["train"] for s in sub]
    fit = _fit_fresh(steps, exp, params, state, masks, order, epochs)
    test = seeds.evaluate_seeds(steps.eval, fit.params, fit.state, masks, exp.test_batches())
    return fit.params, fit.state, {"accuracy": test["accuracy"], "loss": test["loss"]}


def _fit_fresh(
    steps: seeds.SeedSteps,
    exp: Experiment,
    params: Any,
    state: Any,
    masks: Any,
    orders: Sequence[int],
    epochs: int,
) -> seeds.SeedFitResult:
    """``sweep.fit_seeds`` of stacked seeds (``(S, *shape)`` leaves) for ``epochs`` epochs from fresh
    optimizer states; seed ``i``'s data order comes from ``orders[i]``. Returns the stacked fit result."""
    return seeds.fit_seeds(
        steps.train,
        params,
        state,
        seeds.init_opt_seeds(exp.optimizer, params),
        masks,
        lambda epoch: seeds.seed_batches(exp.dataset, exp.batch_size, orders, epoch),
        epochs,
    )


def _dense_path(save: Path, cfg: SweepConfig) -> Path:
    return save / "dense" / f"{distributed.config_hash(cfg.dense_config())[:16]}.safetensors"


def _load_or_train_dense(
    cfg: SweepConfig,
    exp: Experiment,
    init: Callable[[int], tuple[Any, Any]],
    steps: seeds.SeedSteps,
    log: Callable[[str], None],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The cached dense trees ``{"params", "state"}`` and metadata, trained and saved when the cache
    is missing, corrupt or of other settings."""
    path = _dense_path(Path(cfg.save_dir), cfg)
    if path.is_file():
        try:
            trees, meta = checkpoint.load(path)
        except checkpoint.CorruptCheckpointError as e:
            log(f"dense: cache {path} is unreadable ({e}); training again")
        else:
            if meta.get("config") == cfg.dense_config():
                acc = seeds.summarize(meta["metrics"]["accuracy"])
                log(
                    f"dense: loaded {cfg.seeds} seeds from cache {path} ({cfg.epochs} epochs; test acc "
                    f"{100 * acc['mean']:.2f} ± {100 * acc['std']:.2f}%)"
                )
                return trees, meta
            log(f"dense: cache {path} holds other settings; training again")
    log(f"dense: training {cfg.seeds} seeds x {cfg.epochs} epochs as one vmapped program")
    t0 = time.perf_counter()
    params, state, metrics = train_dense(exp, init, cfg.keys(), cfg.epochs, steps)
    meta = {"config": cfg.dense_config(), "metrics": metrics, "seconds": time.perf_counter() - t0}
    trees = {"params": params, "state": state}
    checkpoint.save(path, trees, meta)
    acc = seeds.summarize(metrics["accuracy"])
    log(
        f"dense: test acc {100 * acc['mean']:.2f} ± {100 * acc['std']:.2f}% after {meta['seconds']:.1f} s; "
        f"cached at {path}"
    )
    return trees, meta


def _share(obj: Any, rank: int, world: int) -> Any:
    """``obj`` of rank 0 on every rank (``broadcast_object_list``); ``obj`` itself in one process."""
    if world == 1:
        return obj
    box = [obj if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ----------------------------------------------------------------------------- one point


def _channel_point(
    exp: Experiment,
    init: Callable[[int], tuple[Any, Any]],
    keys: Sequence[int],
    crit: Criterion,
    *,
    sparsity: float,
    scope: str,
    finetune_epochs: int,
    steps: seeds.SeedSteps,
    score_batches: int,
) -> seeds.SeedsResult:
    """``sweep.run_seeds`` (``train_epochs=0``) for a unit-level criterion: whole channels removed.

    Seed ``k`` with the keys of ``seed_subkeys(k)``: ``init``; channel masks
    (``masking.initial(..., "channels")``); unit scores by ``crit`` (key and batches from
    ``score``); ``masking.prune_to(struct="channels", level="unit")`` to ``sparsity`` of the units
    by ``scope``; fine-tuning with the order of ``finetune``; test metrics after each stage."""
    sub = [seeds.seed_subkeys(k) for k in keys]
    params, state = seeds.init_seeds(init, [s["init"] for s in sub])
    n = len(sub)
    groups = tuple(exp.model.groups(seeds.seed_slice(params, 0)))
    if not any(g.prunable for g in groups):
        raise ValueError(
            f"criterion {crit.name!r} removes whole channels, but the model has no prunable group"
        )
    masks = tree.stack([masking.initial(seeds.seed_slice(params, i), "channels", groups) for i in range(n)])
    ds, bs = exp.dataset, exp.batch_size

    def on_test(p: Any, st: Any, m: Any) -> dict[str, Any]:
        return seeds.evaluate_seeds(steps.eval, p, st, m, exp.test_batches())

    dense = on_test(params, state, masks)
    batches = []
    if crit.needs_data:
        order = seeds.seed_batches(ds, bs, [s["score"] for s in sub], 0)
        batches = [b for _, b in zip(range(score_batches), order)]
    scores = seeds.score_seeds(
        crit,
        exp.model,
        params,
        state,
        masks,
        keys=[s["score"] for s in sub],
        batches=batches,
        per_seed_batches=True,
        groups=groups,
    )
    masks = tree.stack(
        [
            masking.prune_to(
                seeds.seed_slice(scores, i),
                sparsity,
                struct="channels",
                masks=seeds.seed_slice(masks, i),
                groups=groups,
                scope=scope,
                level="unit",
            )
            for i in range(n)
        ]
    )
    params = mask.apply(params, masks)
    pruned = on_test(params, state, masks)
    tuned = _fit_fresh(steps, exp, params, state, masks, [s["finetune"] for s in sub], finetune_epochs)
    final = on_test(tuned.params, tuned.state, masks)
    metrics = {
        "dense_accuracy": dense["accuracy"],
        "dense_loss": dense["loss"],
        "pruned_accuracy": pruned["accuracy"],
        "pruned_loss": pruned["loss"],
        "accuracy": final["accuracy"],
        "loss": final["loss"],
        "sparsity": [mask.sparsity(m) for m in tree.unstack(masks, n)],
    }
    return seeds.SeedsResult(
        tuned.params,
        tuned.state,
        masks,
        metrics,
        {k: seeds.summarize(v) for k, v in metrics.items()},
        {"train": [], "finetune": tuned.history},
        list(keys),
    )


def run_point(
    exp: Experiment,
    init: Callable[[int], tuple[Any, Any]],
    keys: Sequence[int],
    *,
    criterion: str | Criterion,
    scope: str,
    compression: float,
    finetune_epochs: int,
    steps: seeds.SeedSteps,
    score_batches: int = 1,
) -> seeds.SeedsResult:
    """One point of the grid for the seeds ``keys``: prune the dense models of ``init`` to sparsity
    ``1 − 1/compression`` by ``criterion`` (a registered name or a :class:`Criterion`) and ``scope``,
    evaluate, fine-tune ``finetune_epochs`` epochs, evaluate.

    ``init(k_init) -> (params, state)`` returns seed ``k``'s *trained* dense trees for
    ``k_init = sweep.seed_subkeys(k)["init"]``. Element-level criteria run ``sweep.run_seeds``
    with ``train_epochs=0`` (unstructured selection per seed); unit-level ones remove channels (see
    the module docstring). Returns the ``sweep.SeedsResult`` (metrics ``dense_accuracy``,
    ``pruned_accuracy`` (before fine-tuning), ``accuracy`` (after), ``sparsity``, ... per seed)."""
    crit = importance.get(criterion) if isinstance(criterion, str) else criterion
    if not isinstance(crit, Criterion):
        raise TypeError(f"criterion must be a registered name or a Criterion, got {criterion!r}")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    sparsity = sparsity_of(compression)
    kw = dict(finetune_epochs=finetune_epochs, steps=steps, score_batches=score_batches)
    if crit.level == "unit":
        return _channel_point(exp, init, keys, crit, sparsity=sparsity, scope=scope, **kw)
    return seeds.run_seeds(
        exp, init, keys, sparsity=sparsity, train_epochs=0, criterion=crit, scope=scope, **kw
    )


def dense_init(params: Any, state: Any, keys: Sequence[int]) -> Callable[[int], tuple[Any, Any]]:
    """``init(k_init)`` returning seed ``k``'s slice of the stacked dense trees, for
    ``k_init = seed_subkeys(k)["init"]`` (``ValueError`` for any other key)."""
    by_key = {seeds.seed_subkeys(k)["init"]: i for i, k in enumerate(keys)}

    def init(key: int) -> tuple[Any, Any]:
        if key not in by_key:
            raise ValueError(f"no dense model for init key {key}: the cache holds seeds {list(keys)}")
        i = by_key[key]
        return seeds.seed_slice(params, i), seeds.seed_slice(state, i)

    return init


# ----------------------------------------------------------------------------- tables and plot


def table(points: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The CSV rows (:data:`CSV_COLUMNS`): first the dense models (``criterion="dense"``, compression 1),
    then per point one row without fine-tuning (``pruned_accuracy``) and one after it
    (``accuracy``); accuracies as fractions, ``accuracy_std`` the sample std over the seeds."""
    if not points or len(points) != len(results):
        raise ValueError(
            f"table: need one result per point, got {len(points)} points, {len(results)} results"
        )
    d = results[0]["summary"]["dense_accuracy"]
    out = [
        {
            "criterion": "dense",
            "scope": "-",
            "compression": 1.0,
            "sparsity": 0.0,
            "finetuned": False,
            "accuracy_mean": d["mean"],
            "accuracy_std": d["std"],
            "n": d["n"],
            "level": "-",
            "achieved_sparsity": 0.0,
        }
    ]
    for p, res in zip(points, results):
        for finetuned, key in ((False, "pruned_accuracy"), (True, "accuracy")):
            s = res["summary"][key]
            out.append(
                {
                    "criterion": p["criterion"],
                    "scope": p["scope"],
                    "compression": p["compression"],
                    "sparsity": sparsity_of(p["compression"]),
                    "finetuned": finetuned,
                    "accuracy_mean": s["mean"],
                    "accuracy_std": s["std"],
                    "n": s["n"],
                    "level": p["level"],
                    "achieved_sparsity": res["summary"]["sparsity"]["mean"],
                }
            )
    return out


def _pm(row: dict[str, Any]) -> str:
    return f"{100 * row['accuracy_mean']:.2f} ± {100 * row['accuracy_std']:.2f}"


def _lines(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The non-dense rows grouped by ``(criterion, scope)``, in first-seen order."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r["criterion"] != "dense":
            out.setdefault((r["criterion"], r["scope"]), []).append(r)
    return out


def markdown(rows: Sequence[dict[str, Any]], *, title: str = "") -> str:
    """The rows as a Markdown table: one line per criterion, scope and fine-tuning state, one column
    per compression ratio (``×c (sparsity)``), cells ``mean ± std`` test accuracy in %; the dense
    accuracy and the seed count on the line above the table."""
    dense = next(r for r in rows if r["criterion"] == "dense")
    comps = sorted({r["compression"] for r in rows if r["criterion"] != "dense"})
    head = ["criterion", "scope", "fine-tuned", *(f"×{c:g} ({100 * sparsity_of(c):.1f}%)" for c in comps)]
    lines = [
        f"{title + ': ' if title else ''}test accuracy (%), mean ± std over {dense['n']} seeds; "
        f"dense {_pm(dense)}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] * 3 + ["---:"] * len(comps)) + "|",
    ]
    for (name, scope), group in _lines(rows).items():
        for finetuned in (False, True):
            cells = {r["compression"]: _pm(r) for r in group if r["finetuned"] == finetuned}
            row = [name, scope, "yes" if finetuned else "no", *(cells.get(c, "-") for c in comps)]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[dict[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Test accuracy (%) against the compression ratio (log₂ x axis), one line per criterion and
    scope with a ``mean ± std`` band; left panel before fine-tuning, right panel after; the dense
    accuracy as a dashed line with its band. A PNG at ``path``."""
    plt = extras.pyplot("the sweep's plot")
    dense = next(r for r in rows if r["criterion"] == "dense")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    lines = _lines(rows)
    colours = plt.get_cmap("tab10" if len(lines) <= 10 else "tab20")
    for ax, finetuned in zip(axes, (False, True)):
        for i, ((name, scope), group) in enumerate(lines.items()):
            pts = sorted((r for r in group if r["finetuned"] == finetuned), key=lambda r: r["compression"])
            xs = [r["compression"] for r in pts]
            mean = [100 * r["accuracy_mean"] for r in pts]
            std = [100 * r["accuracy_std"] for r in pts]
            style = "--" if scope == "layer" else "-"
            ax.plot(
                xs, mean, style, marker="o", ms=3, color=colours(i % colours.N), label=f"{name} ({scope})"
            )
            lo = [m - s for m, s in zip(mean, std)]
            hi = [m + s for m, s in zip(mean, std)]
            ax.fill_between(xs, lo, hi, color=colours(i % colours.N), alpha=0.2, linewidth=0)
        m, s = 100 * dense["accuracy_mean"], 100 * dense["accuracy_std"]
        ax.axhline(m, color="k", linestyle=":", linewidth=1, label="dense")
        ax.axhspan(m - s, m + s, color="k", alpha=0.08, linewidth=0)
        ax.set_xscale("log", base=2)
        comps = sorted({r["compression"] for r in rows if r["criterion"] != "dense"})
        ax.set_xticks(comps, [f"{c:g}" for c in comps])
        ax.set(
            xlabel="compression ratio (log2)",
            title="after fine-tuning" if finetuned else "without fine-tuning",
        )
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel(f"test accuracy (%), mean ± std over {dense['n']} seeds")
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # beside, not on the lines
    if title:
        fig.suptitle(title, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- the command


class SweepResult(NamedTuple):
    """What :func:`run` returns on rank 0: the CSV rows, the files written, the Markdown table, and
    how many points this call computed (the others were on disk)."""

    rows: list[dict[str, Any]]
    files: list[Path]
    markdown: str
    computed: int


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _label(point: dict[str, Any]) -> str:
    return f"{point['criterion']} ({point['scope']}) x{point['compression']:g}"


def run(cfg: SweepConfig, *, plots: bool = True, log: Callable[[str], None] = _stderr) -> SweepResult | None:
    """Run the sweep ``cfg`` (see the module docstring) in this process or on every ``torchrun`` rank.

    Returns the :class:`SweepResult` on rank 0 and ``None`` on the other ranks. ``plots=False``
    skips ``sweep.png``. Raises ``ValueError`` for bad settings, and ``extras.MissingExtraError`` for
    ``plots`` without matplotlib, before anything is computed or written."""
    cfg = cfg.check()
    if plots:
        extras.pyplot("the sweep's plot (plots=False leaves it out)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    exp, init = setup_eager(cfg)
    points = _points(cfg)
    if any(p["level"] == "unit" for p in points):
        params, _ = init(0)
        if not any(g.prunable for g in exp.model.groups(params)):
            raise ValueError(
                f"unit-level criteria remove whole channels, but model {cfg.model!r} has no prunable group"
            )
    steps = seeds.make_seed_steps(exp.model, losses.cross_entropy, exp.optimizer, compile=not cfg.eager)
    save = Path(cfg.save_dir)
    results_dir = save / "points" / distributed.config_hash(cfg.grid_config())[:12]
    keys = cfg.keys()
    with distributed.process_group() as (rank, world):
        say = log if rank == 0 else (lambda msg: log(f"[rank {rank}] {msg}"))
        dense = _share(_load_or_train_dense(cfg, exp, init, steps, say) if rank == 0 else None, rank, world)
        trees, _ = dense
        init_dense = dense_init(trees["params"], trees["state"], keys)
        todo = distributed.missing(points, results_dir, config=cfg.grid_config()) if rank == 0 else []
        if rank == 0:
            say(
                f"sweep: {len(points)} points ({len(cfg.criteria)} criteria x {len(cfg.compression)} compressions), "
                f"{len(todo)} to compute on {world} process{'es' * (world > 1)}, {cfg.seeds} seeds each"
            )

        def point_fn(point: dict[str, Any]) -> dict[str, Any]:
            t0 = time.perf_counter()
            res = run_point(
                exp,
                init_dense,
                keys,
                criterion=point["criterion"],
                scope=point["scope"],
                compression=point["compression"],
                finetune_epochs=cfg.finetune_epochs,
                steps=steps,
                score_batches=cfg.score_batches,
            )
            s = res.summary
            say(
                f"point {_label(point)}: pruned {100 * s['pruned_accuracy']['mean']:.2f} ± "
                f"{100 * s['pruned_accuracy']['std']:.2f}%, fine-tuned {100 * s['accuracy']['mean']:.2f} ± "
                f"{100 * s['accuracy']['std']:.2f}%, {time.perf_counter() - t0:.1f} s"
            )
            return res.as_json()

        results = distributed.run_grid(points, point_fn, results_dir, config=cfg.grid_config())
    if results is None:
        return None
    rows = table(points, results)
    save.mkdir(parents=True, exist_ok=True)
    title = f"{cfg.model} on {cfg.data}, {cfg.epochs} epochs dense, {cfg.finetune_epochs} epochs fine-tuning"
    text = markdown(rows, title=title)
    (save / "sweep.csv").write_text(report.csv_text(rows, CSV_COLUMNS))
    (save / "sweep.md").write_text(text)
    files = [save / "sweep.csv", save / "sweep.md"]
    if plots:
        files.append(plot(rows, save / "sweep.png", title=title))
    say(f"sweep: wrote {', '.join(str(f) for f in files)}")
    return SweepResult(rows, files, text, len(todo))
