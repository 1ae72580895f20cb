"""Pure, mask-aware optimizers over parameter pytrees (optax-like), and learning-rate schedules.

An :class:`Optimizer` is a NamedTuple of pure functions::

    opt = sgd(0.1, momentum=0.9, weight_decay=5e-4)
    opt_state = opt.init(params)
    updates, opt_state = opt.update(grads, opt_state, params, masks)
    params = apply_updates(params, updates)

``sgd``, ``adam`` and ``adamw`` follow ``torch.optim.SGD`` (dampening 0), ``torch.optim.Adam`` and
``torch.optim.AdamW`` (no amsgrad) step for step, with one parameter group.

**Who guarantees what.** With ``masks`` (the structure of ``params``; bool tensors or their
``mask.as_bytes`` views, ``None`` for dense leaves), ``update`` makes the gradient, the
weight-decay term, the momentum buffer or Adam moments, and the update of every pruned entry
``0.0`` — also when the masks became sparser since the last update (stale state at newly pruned
entries is zeroed). Masking is a product with the mask as ``0.0``/``1.0`` factors
(:func:`mask_factors`, one multi-tensor op per list), so a pruned entry is ``x * 0.0``: ``0.0``
or ``-0.0`` (equal to ``0.0``) for finite ``x``; a gradient, param or state that is
``inf``/``NaN`` at a pruned entry stays ``NaN`` there (``mask.keep`` selects instead, at about
5x the cost on CPU). So :func:`apply_updates`
leaves a pruned entry that is already ``0.0`` at exactly ``0.0``. The optimizer never rewrites
``params`` itself: a pruned entry that is non-zero on entry stays as it was. ``train.make_step``
re-applies the masks to the params after each update, so there every pruned weight is exactly
``0.0`` after every step.

**opt_state** is a canonical dict of tensors, so it can be checkpointed, stacked over seeds and fed
to a compiled step:

* ``count``: int64, shape ``()``: number of updates done; the schedule's step.
* ``lr_override`` (float32, ``()``) and ``lr_override_on`` (bool, ``()``): see :func:`set_lr`.
* ``momentum`` (``sgd`` with momentum > 0) or ``mu``, ``nu`` (``adam``/``adamw``): trees like
  ``params``.

The learning rate is a float or a :data:`Schedule`, evaluated at every update on the step tensor
``count``; the override of :func:`set_lr` is read from ``opt_state`` too. So neither a new step nor
:func:`set_lr` recompiles a compiled step. Trees are validated (paths named in errors) in eager
code; under ``torch.compile`` validation is skipped, see ``train.make_step``.

The pieces live in modules of their own, all re-exported here: :mod:`pure_prune.optim_optimizers`
(the optimizers), :mod:`pure_prune.optim_lr` (schedules and the override), :mod:`pure_prune.optim_leaves`
(leaf-list kernels and mask factors), :mod:`pure_prune.optim_checks` (argument checks, tree types).
"""

from __future__ import annotations

from pure_prune.optim_checks import OptState as OptState
from pure_prune.optim_checks import Params as Params
from pure_prune.optim_leaves import apply_factors, mask_factors
from pure_prune.optim_lr import Schedule, clear_lr, constant, cosine, multistep, set_lr, warmup
from pure_prune.optim_optimizers import Optimizer, adam, adamw, apply_updates, sgd

__all__ = [
    "Optimizer",
    "Schedule",
    "adam",
    "adamw",
    "apply_updates",
    "clear_lr",
    "mask_factors",
    "apply_factors",
    "constant",
    "cosine",
    "multistep",
    "set_lr",
    "sgd",
    "warmup",
]
