"""Tiny float64 nets and batches shared by the importance tests (dense MLP params, a small CNN)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pure_prune import rng, tree
from pure_prune.losses import model_loss

D = torch.float64


def dense(key: int, sizes: tuple[int, ...]) -> dict:
    keys = rng.split(key, 2 * len(sizes))
    return tree.canonical(
        {
            f"fc{i + 1}": {
                "bias": 0.3 * rng.normal(keys[2 * i], (sizes[i + 1],), dtype=D),
                "weight": rng.normal(keys[2 * i + 1], (sizes[i + 1], sizes[i]), dtype=D) / sizes[i] ** 0.5,
            }
            for i in range(len(sizes) - 1)
        }
    )


def cnn(p: dict, x: torch.Tensor) -> torch.Tensor:
    """conv(2->3, 3x3) + ReLU + 2x2 max-pool + linear: (N, 2, 6, 6) -> (N, 3)."""
    h = F.max_pool2d(torch.relu(F.conv2d(x, p["conv"]["weight"], p["conv"]["bias"])), 2)
    return F.linear(h.flatten(1), p["fc"]["weight"], p["fc"]["bias"])


def cnn_params(key: int) -> dict:
    k = rng.split(key, 4)
    return tree.canonical(
        {
            "conv": {
                "bias": 0.1 * rng.normal(k[0], (3,), dtype=D),
                "weight": rng.normal(k[1], (3, 2, 3, 3), dtype=D) / 4,
            },
            "fc": {
                "bias": 0.1 * rng.normal(k[2], (3,), dtype=D),
                "weight": rng.normal(k[3], (3, 12), dtype=D) / 3,
            },
        }
    )


def batch(key: int, n: int, shape: tuple[int, ...], classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    kx, ky = rng.split(key, 2)
    return rng.normal(kx, (n, *shape), dtype=D), torch.randint(0, classes, (n,), generator=rng.generator(ky))


def CE(model_fn):  # noqa: N802 - reads as the loss it builds
    """``losses.model_loss(model_fn, "cross_entropy")``: the scores' loss for a logits model."""
    return model_loss(model_fn, "cross_entropy")
