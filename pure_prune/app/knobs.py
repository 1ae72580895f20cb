"""Every knob of a run, declared once: what it does, which methods read it, what it may be.

The one configuration source of ``pure-prune``. :class:`~pure_prune.app.runconfig.RunConfig` holds
each knob's type and default; this table holds its help text and the methods that use it. The
``run`` flags (one per knob), the ``demo``/``train``/``sweep`` flags they share with it, the TOML
keys of ``--config``, the ``--help`` texts and ``RunConfig.check``'s "has no effect with method"
refusal are all built from these two, so a knob is added or changed in one place. Built without
torch (the choices come from :mod:`pure_prune.app.cli_choices`, which a test holds equal to the
registries), so ``--help`` stays instant.
"""

from __future__ import annotations

from typing import NamedTuple

from pure_prune.app.cli_choices import (
    CONTROLS,
    DATA,
    DST_DISTRIBUTIONS,
    DST_KINDS,
    GROWTH,
    IMPORTANCE,
    MODELS,
    OPTIMIZERS,
    REFILL_CRITERIA,
    STRUCTS,
    UNIT_CRITERIA,
)

__all__ = ["KNOBS", "METHODS", "Knob", "used_by"]

METHODS = ("one_shot", "gradual", "imp", "rsst", "refill", "distill", "dst")
ITERATIVE_SCHEDULES = ("geometric", "progressive")
GRADUAL_SCHEDULES = ("linear_steps", "linear", "polynomial")
BACKENDS = ("inductor", "aot_eager", "eager")  # torch.compile backends a run may use
_ITER = ("imp", "refill", "rsst", "distill")


class Knob(NamedTuple):
    """A knob's help text and the methods that read it (every method when ``methods`` is ``None``)."""

    help: str
    methods: tuple[str, ...] | None = None


def _one_of(names: tuple[str, ...]) -> str:
    return "one of: " + ", ".join(names)


_HELP: dict[str, str] = {
    "model": _one_of(MODELS),
    "data": _one_of(DATA),
    "root": "folder (or .npz file) for data sets you already have",
    "model_cfg": "model options as a JSON object (e.g. '{\"sizes\": [64, 32, 32, 10]}')",
    "method": _one_of(METHODS),
    "importance": "criterion that scores weights: " + _one_of(IMPORTANCE),
    "criteria": f"channel ranking of rsst ({', '.join(UNIT_CRITERIA)}) and refill "
    f"({', '.join(REFILL_CRITERIA)}); unset: remain",
    "struct": _one_of(STRUCTS) + "; unset: channels for rsst, else unstructured",
    "scope": "one of: global, layer; unset: layer for channels, else global",
    "nm": "N:M pattern of struct nm, n of every m consecutive inputs kept",
    "exclude": "globs of leaves kept dense, comma separated (e.g. 'fc1.*'); each must match a prunable leaf",
    "rate": "share of the remaining weights pruned per round, in [0, 1)",
    "pruning_times": "number of pruning rounds",
    "rewind_epoch": "rewind to the weights of this epoch (0: the initialisation)",
    "control": "IMP's control runs: " + _one_of(CONTROLS),
    "schedule": f"{', '.join(ITERATIVE_SCHEDULES)} (iterative methods) or "
    f"{', '.join(GRADUAL_SCHEDULES)} (gradual); unset: linear_steps for gradual, else geometric",
    "sparsity": "target share of the prunable weights pruned (one_shot, gradual, dst), in [0, 1)",
    "gradual_start": "gradual: epoch of the first pruning step",
    "gradual_every": "gradual: epochs between pruning steps",
    "gradual_steps": "gradual: number of pruning steps",
    "fillback_rate": "refill: share of the pruned channels filled back, in [0, 1]",
    "reg_granularity": "rsst: regularisation granularity",
    "rst_schedule": "rsst: growth of the penalty, " + _one_of(GROWTH),
    "exponent": "rsst: exponent of the penalty growth",
    "alpha": "distill: weight of the distillation loss",
    "temperature": "distill: softmax temperature",
    "dst": "dynamic sparse training kind: " + _one_of(DST_KINDS),
    "update_every": "dst: steps between mask updates",
    "drop_fraction": "dst: share of the kept weights dropped per update, in [0, 1]",
    "end_fraction": "dst: share of training after which masks stop changing, in [0, 1]",
    "distribution": "dst: sparsity per layer, " + _one_of(DST_DISTRIBUTIONS),
    "recompile_every": "with --compact: make a new form at every N-th compression",
    "sparsity_change_threshold": "with --compact: make a new form when sparsity moved by more than this",
    "epochs": "training epochs per round",
    "finetune_epochs": "fine-tuning epochs after pruning (one_shot, rsst, distill)",
    "optimizer": _one_of(OPTIMIZERS),
    "lr": "learning rate",
    "momentum": "SGD momentum",
    "weight_decay": "weight decay",
    "decreasing_lr": "learning-rate milestones in epochs, comma separated (lr x gamma at each)",
    "gamma": "learning-rate factor at each milestone of --decreasing-lr",
    "batch_size": "training batch size",
    "score_batches": "batches that data-driven criteria score on",
    "seed": "the explicit random key of the run",
    "seeds": "number of seeds, keys seed..seed+N-1, run as one vmapped program (every method); "
    "metrics are reported as mean ± std",
    "backend": "torch.compile backend: " + _one_of(BACKENDS),
    "threads": "torch CPU threads, >= 1 (unset: torch's)",
    "compile": "torch.compile the training steps once per stage, and several seeds' evaluation (one "
    "seed's evaluation runs eagerly: its compile would not repay) (--eager: run them eagerly)",
    "compact": "train each stage with the pruned units removed (struct channels; one_shot, gradual, imp): "
    "one compile per form, see pure_prune.compact_training",
    "eval_every_epoch": "evaluate on the test split after every epoch (--no-eval-every-epoch: at the end of each round only)",
    "progress": "show progress bars (--no-progress hides them)",
    "step_cache": "folder where the compiled steps are saved (torch's aot_compile) and "
    "loaded by later runs with the same steps, which then skip dynamo and inductor; 'auto': "
    "pure_prune_steps in torch's inductor cache folder when the steps compile with inductor and "
    "no compact stages; 'off': no saving",
    "save_dir": "the run's folder (unset: runs/<method>-<model>-<data>-seed<seed>)",
}

_USED_BY: dict[str, tuple[str, ...]] = {
    "rate": _ITER,
    "pruning_times": _ITER,
    "rewind_epoch": ("imp", "refill"),
    "control": ("imp",),
    "schedule": (*_ITER, "gradual"),
    "fillback_rate": ("refill",),
    "criteria": ("rsst", "refill"),
    "sparsity": ("one_shot", "gradual", "dst"),
    "finetune_epochs": ("one_shot", "rsst", "distill"),
    "gradual_start": ("gradual",),
    "gradual_every": ("gradual",),
    "gradual_steps": ("gradual",),
    "nm": ("one_shot",),
    "reg_granularity": ("rsst",),
    "rst_schedule": ("rsst",),
    "exponent": ("rsst",),
    "alpha": ("distill",),
    "temperature": ("distill",),
    "dst": ("dst",),
    "update_every": ("dst",),
    "drop_fraction": ("dst",),
    "end_fraction": ("dst",),
    "distribution": ("dst",),
    "importance": ("one_shot", "gradual", "imp", "refill", "distill"),
    "compact": ("one_shot", "gradual", "imp"),
    "recompile_every": ("one_shot", "gradual", "imp"),
    "sparsity_change_threshold": ("one_shot", "gradual", "imp"),
}

KNOBS: dict[str, Knob] = {name: Knob(text, _USED_BY.get(name)) for name, text in _HELP.items()}
"""Every ``RunConfig`` field's :class:`Knob` (a test holds the two key sets equal)."""


def used_by(name: str) -> tuple[str, ...]:
    """The methods that read knob ``name`` (every method for a knob of all runs)."""
    return KNOBS[name].methods or METHODS
