"""An experiment: a registered model on a data set, with its compiled train and eval steps.

This is the glue the command line and the algorithms share; every piece stays a pure function.

    >>> exp = setup("mlp", "digits", batch_size=64, optimizer="sgd", lr=0.05, momentum=0.9)
    >>> params, state = exp.model.init(0)
    >>> opt_state = exp.optimizer.init(params)
    >>> res = train.fit(exp.step, params, state, opt_state, None, exp.train_batches(key=1), epochs=5)
    >>> exp.evaluate(res.params, res.state, None)["accuracy"]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import torch

from pure_prune import losses, optim, train
from pure_prune import models as model_registry
from pure_prune.app import data

__all__ = ["Experiment", "eval_batch_size", "make_optimizer", "setup", "OPTIMIZERS"]

OPTIMIZERS = ("sgd", "adam", "adamw")


class Experiment(NamedTuple):
    """A model, its data and the steps that train and evaluate it.

    ``step``/``eval_step`` are :func:`pure_prune.train.make_step` / ``make_eval_step`` results,
    compiled once and reused for every mask. ``train_batches(key)`` returns ``batches_fn(epoch)``
    for :func:`pure_prune.train.fit`; ``evaluate(params, state, masks)`` scores the test split.
    """

    model: model_registry.ModelSpec
    dataset: data.Dataset
    optimizer: optim.Optimizer
    step: train.Step
    eval_step: train.EvalStep
    batch_size: int

    def train_batches(self, key: int) -> Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
        """``batches_fn(epoch)``: the training split shuffled by ``fold_in(key, epoch)``, full batches."""
        ds = self.dataset
        return lambda epoch: data.batches(
            ds.x_train, ds.y_train, self.batch_size, key=data.epoch_key(key, epoch)
        )

    def test_batches(self) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """The whole test split in equal-sized batches (so the eval step compiles once)."""
        ds = self.dataset
        size = eval_batch_size(len(ds.y_test))
        return data.batches(ds.x_test, ds.y_test, size, key=None, drop_last=False)

    def evaluate(self, params: Any, state: Any, masks: Any) -> dict[str, float]:
        """``{"accuracy", "loss", "count"}`` on the test split."""
        return train.evaluate(self.eval_step, params, state, masks, self.test_batches())


def eval_batch_size(n: int, largest: int = 2048) -> int:
    """A batch size that splits ``n`` test samples into equal batches when one exists.

    The largest divisor of ``n`` not above ``largest``; if that is tiny (``n`` prime-ish) the batch
    is ``min(n, largest)`` and the last batch is shorter (one more compiled shape).
    """
    if n <= largest:
        return n
    best = max(d for d in range(1, largest + 1) if n % d == 0)
    return best if best >= 64 else largest


def make_optimizer(
    name: str,
    lr: float | optim.Schedule,
    *,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    nesterov: bool = False,
) -> optim.Optimizer:
    """An optimizer by name: ``sgd`` (with ``momentum``/``nesterov``), ``adam`` or ``adamw``."""
    if name == "sgd":
        return optim.sgd(lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    if name == "adam":
        return optim.adam(lr, weight_decay=weight_decay)
    if name == "adamw":
        return optim.adamw(lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")


def _check_fit(model: model_registry.ModelSpec, ds: data.Dataset) -> None:
    sample = tuple(ds.x_train.shape[1:])
    if model.input_dtype == torch.float32 and sample != tuple(model.input_shape):
        flat = int(torch.Size(sample).numel())
        if not (len(model.input_shape) == 1 and model.input_shape[0] == flat):
            raise ValueError(
                f"data set {ds.name!r} has samples of shape {sample}, model {model.name!r} expects "
                f"{tuple(model.input_shape)}"
            )


def setup(
    model: str,
    dataset: str,
    *,
    root: str | None = None,
    batch_size: int = 64,
    optimizer: str = "sgd",
    lr: float | optim.Schedule = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    compile: bool = True,  # noqa: A002 - the switch's natural name
    model_cfg: dict | None = None,
    data_opts: dict | None = None,
    loss: Callable[..., torch.Tensor] = losses.cross_entropy,
    sizes_from_data: bool = True,
) -> tuple[Experiment, Callable[[int], tuple[Any, Any]]]:
    """Build an :class:`Experiment` and an ``init(key) -> (params, state)`` for it.

    ``model_cfg`` overrides the model's defaults. With ``sizes_from_data`` an MLP's input and
    output sizes follow the data set (so ``--model mlp --data mnist1d`` is a 40-…-10 MLP).
    Raises ``ValueError`` for unknown names (listing the known ones) or data that does not fit.
    """
    spec = model_registry.get(model)
    ds = data.load(dataset, root=root, **(data_opts or {}))
    cfg = dict(model_cfg or {})
    if sizes_from_data and "sizes" in spec.default_cfg and "sizes" not in cfg:
        sizes: Sequence[int] = list(spec.default_cfg["sizes"])
        sizes[0] = int(torch.Size(ds.x_train.shape[1:]).numel())
        sizes[-1] = ds.num_classes
        cfg["sizes"] = tuple(sizes)
    if "sizes" in spec.default_cfg and "sizes" in cfg:  # the input width the model is built with
        spec = spec._replace(input_shape=(int(cfg["sizes"][0]),))
    _check_fit(spec, ds)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if batch_size > len(ds.y_train):
        raise ValueError(f"batch_size {batch_size} exceeds the {len(ds.y_train)} training samples")
    opt = make_optimizer(optimizer, lr, momentum=momentum, weight_decay=weight_decay)
    exp = Experiment(
        model=spec,
        dataset=ds,
        optimizer=opt,
        step=train.make_step(spec, loss, opt, compile=compile),
        eval_step=train.make_eval_step(spec, loss, compile=compile),
        batch_size=batch_size,
    )
    return exp, lambda key: spec.init(key, **cfg)
