"""The settings of the full run (``FULL``) and of ``--quick`` (``QUICK``).

Every knob that changes a number is here, and is stored with the section's results (a cached
section is reused only for identical settings).
"""

from __future__ import annotations

from typing import Any

FULL: dict[str, Any] = {
    "seeds": 5,
    "lottery": {
        "rate": 0.2,
        "rounds": 20,
        "rewind_epoch": 0,
        "compile": True,
        "datasets": {
            "digits": {
                "model": "mlp",
                "sizes": [64, 300, 100, 10],
                "epochs": 15,
                "batch_size": 64,
                "lr": 0.05,
            },
            # lenet300 takes its input size from the data (40-300-100-10 here); see lottery.model_cfg
            "mnist1d": {
                "model": "lenet300",
                "sizes": [40, 300, 100, 10],
                "epochs": 15,
                "batch_size": 128,
                "lr": 0.05,
            },
        },
        "mnist": {
            "model": "lenet300",
            "sizes": [784, 300, 100, 10],
            "epochs": 5,
            "batch_size": 128,
            "lr": 0.05,
        },
    },
    "criteria": {
        "eager": False,
        "score_batches": 4,
        "compression": [2, 4, 8, 16, 32],
        "criteria": [],  # empty: every registered default criterion (grid.default_criteria())
        "nets": {
            "mlp-digits": {
                "model": "mlp",
                "data": "digits",
                "model_cfg": {"sizes": [64, 300, 100, 10]},
                "epochs": 20,
                "finetune_epochs": 5,
                "batch_size": 64,
                "lr": 0.05,
            },
            "cnn1d-mnist1d": {
                "model": "cnn1d",
                "data": "mnist1d",
                "model_cfg": {},
                "epochs": 20,
                "finetune_epochs": 5,
                "batch_size": 128,
                "lr": 0.05,
            },
        },
    },
    "init": {"criteria": ["random", "magnitude", "snip", "grasp"]},
    "hessian": {
        "version": 2,
        "train_epochs": 10,
        "probes": [1, 4, 16, 64, 256],
        "batch": 256,
        "small": [64, 32, 32, 10],
        "large": [64, 300, 100, 10],
        "sparsities": [0.5, 0.9],
    },
    "speed": {"rerun": True, "reps": 30},
    "llm": {
        "version": 1,
        "threads": 1,
        "sequences": 32,
        "batch_size": 8,
        "heldout_tokens": 0,  # 0: the whole test split
        "patterns": ["0.5", "2:4", "4:8", "0.7"],
        "methods": ["magnitude", "wanda", "sparsegpt"],
        "extra": ["wanda-layer"],
        "owl": ["wanda", "sparsegpt"],
        "owl_sparsity": "0.7",
        "structured_sparsity": 0.25,
        "speed": {"batches": [1, 8, 32], "reps": 20},
        "cost": {"fresh_process": True, "sequences": 32, "batch_size": 8, "runs": []},
    },
}

QUICK: dict[str, Any] = {
    "seeds": 2,
    "lottery": {
        "rate": 0.5,
        "rounds": 2,
        "rewind_epoch": 0,
        "compile": False,
        "datasets": {
            "digits": {"model": "mlp", "sizes": [64, 32, 16, 10], "epochs": 1, "batch_size": 128, "lr": 0.05},
        },
        "mnist": {
            "model": "lenet300",
            "sizes": [784, 300, 100, 10],
            "epochs": 1,
            "batch_size": 128,
            "lr": 0.05,
        },
    },
    "criteria": {
        "eager": True,
        "score_batches": 1,
        "compression": [2, 8],
        "criteria": ["random", "magnitude", "magnitude:layer", "snip", "grasp", "gsnr", "hap"],
        "nets": {
            "mlp-digits": {
                "model": "mlp",
                "data": "digits",
                "model_cfg": {"sizes": [64, 32, 16, 10]},
                "epochs": 1,
                "finetune_epochs": 1,
                "batch_size": 128,
                "lr": 0.05,
            },
        },
    },
    "init": {"criteria": ["random", "snip", "grasp"]},
    "hessian": {
        "version": 2,
        "train_epochs": 1,
        "probes": [1, 4, 16],
        "batch": 64,
        "small": [64, 8, 8, 10],
        "large": [64, 16, 16, 10],
        "sparsities": [0.5],
    },
    "speed": {"rerun": False, "reps": 3},
    "llm": {
        "version": 1,
        "threads": 1,
        "sequences": 2,
        "batch_size": 2,
        "heldout_tokens": 512,
        "patterns": ["0.5", "2:4", "0.7"],
        "methods": ["magnitude", "wanda", "sparsegpt"],
        "extra": [],
        "owl": ["wanda"],
        "owl_sparsity": "0.7",
        "structured_sparsity": 0.25,
        "speed": {"batches": [1], "reps": 1},
        "cost": {"fresh_process": False, "sequences": 2, "batch_size": 2, "runs": ["wanda 50%"]},
    },
}
