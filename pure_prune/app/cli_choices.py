"""The names the ``pure-prune`` command lists in its flags' help, as plain tuples (no torch).

Building the parser from the registries themselves (``pure_prune.models.names()``,
``pure_prune.importance.names()``, ``pure_prune.app.experiment.OPTIMIZERS``, ...) would import torch
and most of the application, about a second before ``pure-prune --help`` could print anything.
These copies let the parser, and the first line of ``pure-prune run``, come without that import;
``tests/test_cli_startup.py`` asserts each equals its registry, so they cannot drift apart.
"""

from __future__ import annotations

__all__ = [
    "CONTROLS",
    "DATA",
    "DST_DISTRIBUTIONS",
    "DST_KINDS",
    "GROWTH",
    "IMPORTANCE",
    "LLM_DTYPES",
    "LLM_METHODS",
    "MODELS",
    "OPTIMIZERS",
    "REFILL_CRITERIA",
    "STRUCTS",
    "SWEEP_COMPRESSIONS",
    "SWEEP_CRITERIA",
    "SWEEP_DEFAULTS",
    "UNIT_CRITERIA",
]

MODELS = (
    "mlp", "lenet300", "lenet5", "conv2", "conv4", "conv6", "resnet20", "resnet32", "resnet56",
    "vgg11", "vgg16", "lstm_lm", "cnn1d", "llama",
)  # fmt: skip
"""``pure_prune.models.names()``: the models ``--model`` takes."""

DATA = ("cifar10", "digits", "mnist", "mnist1d", "npz", "text")
"""``pure_prune.app.data.names()``: the data sets ``--data`` takes."""

IMPORTANCE = (
    "enhanced", "fisher", "grasp", "gsnr", "hap", "hessian", "l1", "l1_units", "l2", "magnitude",
    "obd", "random", "snip", "taylor", "taylor_units",
)  # fmt: skip
"""``pure_prune.importance.names()``: the criteria ``run --importance`` takes."""

UNIT_CRITERIA = ("remain", "magnitude", "l1", "l2", "saliency")
"""``pure_prune.algorithms.unit_criteria.CRITERIA``: rsst's channel rankings."""

REFILL_CRITERIA = ("remain", "l1")
"""``pure_prune.algorithms.refill.CRITERIA``: refill's channel rankings."""

STRUCTS = ("unstructured", "rows", "channels", "nm")
"""``pure_prune.algorithms.masking.STRUCTS``: what ``run --struct`` prunes."""

CONTROLS = ("none", "reinit", "random_masks")
"""``pure_prune.algorithms.imp.CONTROLS``: IMP's control runs."""

GROWTH = ("x", "x^2", "exp", "exp_custom")
"""``pure_prune.algorithms.rsst.GROWTH``: rsst's penalty growth."""

DST_KINDS = ("set", "rigl", "ste")
"""``pure_prune.algorithms.dst.KINDS``: the dynamic sparse training kinds."""

DST_DISTRIBUTIONS = ("uniform", "erk")
"""``pure_prune.algorithms.dst.DISTRIBUTIONS``: dst's sparsity per layer."""

OPTIMIZERS = ("sgd", "adam", "adamw")
"""``pure_prune.app.experiment.OPTIMIZERS``."""

SWEEP_COMPRESSIONS = (2.0, 4.0, 8.0, 16.0, 32.0)
"""The default compression ratios of ``pure-prune sweep`` (``pure_prune.app.sweep.COMPRESSIONS`` is this)."""

SWEEP_CRITERIA = (
    ("random", "global", "element"),
    ("magnitude", "global", "element"),
    ("magnitude", "layer", "element"),
    ("snip", "global", "element"),
    ("grasp", "global", "element"),
    ("taylor", "global", "element"),
    ("hessian", "global", "element"),
    ("obd", "global", "element"),
    ("gsnr", "global", "element"),
    ("hap", "layer", "unit"),
    ("enhanced", "layer", "unit"),
)
"""``(criterion, scope, level)`` of the default sweep (``pure_prune.app.sweep.DEFAULT_CRITERIA`` is this)."""

SWEEP_DEFAULTS = {
    "model": "mlp",
    "data": "digits",
    "seeds": 5,
    "epochs": 20,
    "finetune_epochs": 5,
    "batch_size": 64,
    "optimizer": "sgd",
    "lr": 0.05,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "score_batches": 1,
    "seed": 0,
}
"""The defaults of ``pure_prune.app.sweep.SweepConfig`` that ``pure-prune sweep``'s flags show."""

LLM_METHODS = ("magnitude", "wanda", "sparsegpt")
"""The methods of ``pure-prune llm --method``."""

LLM_DTYPES = ("float32", "bfloat16", "float16")
"""The names of ``pure-prune llm --dtype`` (``pure_prune.app.cli_llm.DTYPES`` maps them to torch dtypes)."""
