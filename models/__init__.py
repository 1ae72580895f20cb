"""Stateless models: ``init(key, **cfg) -> (params, state)``; ``apply(params, state, x, *, train)``.

Every model module (``mlp``, ``lenet5``, ``conv``, ``resnet``, ``vgg``, ``lstm_lm``, ``cnn1d``)
exposes ``init``, ``apply`` and ``groups`` (see ``docs/conventions.md``). The registry names presets
of them::

    spec = get("resnet20")
    params, state = spec.init(0)                     # the preset's default_cfg
    params, state = spec.init(0, width=4)            # with overrides
    logits, state = spec.apply(params, state, x, train=True)   # x: (N, *spec.input_shape)
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from . import cnn1d, conv, layers, lenet5, llama, lstm_lm, mlp, resnet, structure, vgg

__all__ = [
    "ModelSpec",
    "cnn1d",
    "conv",
    "get",
    "layers",
    "lenet5",
    "llama",
    "lstm_lm",
    "mlp",
    "names",
    "resnet",
    "structure",
    "vgg",
]


class ModelSpec(NamedTuple):
    """A registered model.

    ``default_cfg`` is the full config (the module's defaults updated by the preset) and
    ``init(key, **overrides)`` is the module's ``init`` with it bound (keywords override it); ``apply`` and ``groups`` are the module's. ``input_shape`` is one sample's shape
    (no batch axis) and ``input_dtype`` its dtype (``torch.long`` token ids for language models).
    """

    name: str
    init: Callable[..., tuple[dict[str, Any], dict[str, Any]]]
    apply: Callable[..., Any]
    groups: Callable[[dict[str, Any]], tuple[Any, ...]]
    default_cfg: dict[str, Any]
    input_shape: tuple[int, ...]
    description: str
    input_dtype: torch.dtype = torch.float32


def _table() -> tuple[tuple[str, Any, dict[str, Any], tuple[int, ...], str], ...]:
    """``(name, module, cfg, input_shape, description)`` for every registered model."""
    return (
        ("mlp", mlp, {"sizes": (64, 256, 256, 10)}, (64,), "MLP 64-256-256-10 (sklearn digits)"),
        ("lenet300", mlp, {"sizes": (784, 300, 100, 10)}, (784,), "LeNet-300-100 MLP for MNIST"),
        ("lenet5", lenet5, {}, (1, 28, 28), "LeNet-5, ReLU and max-pool, for MNIST"),
        ("conv2", conv, {"depth": 2}, (3, 32, 32), "Conv-2 (Frankle & Carbin 2019) for CIFAR-10"),
        ("conv4", conv, {"depth": 4}, (3, 32, 32), "Conv-4 (Frankle & Carbin 2019) for CIFAR-10"),
        ("conv6", conv, {"depth": 6}, (3, 32, 32), "Conv-6 (Frankle & Carbin 2019) for CIFAR-10"),
        ("resnet20", resnet, {"depth": 20}, (3, 32, 32), "CIFAR ResNet-20 (He et al. 2016)"),
        ("resnet32", resnet, {"depth": 32}, (3, 32, 32), "CIFAR ResNet-32 (He et al. 2016)"),
        ("resnet56", resnet, {"depth": 56}, (3, 32, 32), "CIFAR ResNet-56 (He et al. 2016)"),
        ("vgg11", vgg, {"depth": 11}, (3, 32, 32), "VGG-11 with BatchNorm for 32x32 inputs"),
        ("vgg16", vgg, {"depth": 16}, (3, 32, 32), "VGG-16 with BatchNorm for 32x32 inputs"),
        ("lstm_lm", lstm_lm, {}, (35,), "2-layer LSTM language model, 200 units, vocab 10000 (PTB)"),
        ("cnn1d", cnn1d, {}, (40,), "1-D CNN for MNIST-1D"),
        ("llama", llama, {}, (128,), "LLaMA-style decoder, byte vocab 256, 4 blocks of width 128 (pydoc)"),
    )


def names() -> tuple[str, ...]:
    """Names of the registered models, in registration order."""
    return tuple(row[0] for row in _table())


def get(name: str) -> ModelSpec:
    """The :class:`ModelSpec` registered as ``name``; ``ValueError`` listing the known names otherwise."""
    for row_name, module, preset, input_shape, description in _table():
        if row_name == name:
            defaults = inspect.signature(module.init).parameters.values()
            cfg = {p.name: p.default for p in defaults if p.kind is p.KEYWORD_ONLY} | preset
            return ModelSpec(
                name=name,
                init=functools.partial(module.init, **cfg),
                apply=module.apply,
                groups=module.groups,
                default_cfg=dict(cfg),
                input_shape=input_shape,
                description=description,
                input_dtype=torch.long if module in (lstm_lm, llama) else torch.float32,
            )
    raise ValueError(f"unknown model {name!r}; known models: {', '.join(names())}")
