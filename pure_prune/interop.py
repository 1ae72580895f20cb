"""``nn.Module`` in and out, and export to ``torch.nn.utils.prune``'s ``weight_orig``/``weight_mask`` form.

* :func:`from_module` turns a module into ``(apply, params, state)``: ``params`` and ``state`` are
  canonical nested dicts built from ``named_parameters()`` / ``named_buffers()`` split on dots
  (``"layer1.0.conv1.weight"`` -> ``{"layer1": {"0": {"conv1": {"weight": ...}}}}``), holding
  detached clones; ``apply`` runs the module through ``torch.func.functional_call``.
* :func:`to_module` writes (optionally masked) params and state into a copy of a module, resizing
  its layers when the trees are compacted (the user's own class comes back, smaller).
* :func:`channel_groups` finds a module's channel groups by tracing (``pure_prune.trace_groups``);
  :func:`default_prunable` / :func:`masks_like` pick its Linear and Conv weights.
* :func:`to_torch_prune` / :func:`from_torch_prune` convert pure_prune masks to and from the
  ``<name>_orig`` parameter + ``<name>_mask`` buffer + forward-pre-hook form of
  ``torch.nn.utils.prune``; :func:`strip_torch_prune` gives back the plain module.

The first two live in :mod:`pure_prune.module_trees`, the ``torch.nn.utils.prune`` conversions in
:mod:`pure_prune.torch_prune_form`; this module re-exports them.

Masks follow ``pure_prune.mask``: the structure of ``params``, a bool tensor of the leaf's shape
(``True`` = kept) or ``None`` for a dense leaf.

Purity of ``apply``. ``functional_call`` swaps the given tensors into the module and writes buffer
updates (BatchNorm's running statistics and ``num_batches_tracked`` in train mode) *in place* into
the tensors it was handed, also under ``torch.func.grad``. ``apply`` therefore hands it clones of
``state`` and returns those clones as ``new_state``: neither the caller's ``state`` nor the original
module changes. ``apply`` runs a private copy of the module whose parameters and buffers live on the
``meta`` device (no memory), one copy per mode, so ``train`` never flips a ``training`` flag.
Limits inherited from ``functional_call``: a call swaps tensors into the shared private copy, so one
``apply`` must not run in two threads at once; ``nn.LSTM`` keeps a reference to the last weights it
ran with until the next call; modules that draw random numbers in train mode (``nn.Dropout``) read
torch's global RNG; ``vmap`` over the batch axis in train mode fails for BatchNorm (its running
statistics would need a batch axis) while ``vmap`` over stacked params *and* state (one model per
seed) works.

Tied parameters. One ``nn.Parameter`` registered under several names (an embedding shared with the
output projection) is one leaf of ``params``, under the first name ``named_parameters()`` yields;
``apply`` passes ``tie_weights=True`` so every alias sees that leaf and gradients sum over all uses.
:func:`to_module` writes the leaf once (the deep copy keeps the tie); :func:`to_torch_prune` prunes
every alias with the leaf's mask, so ``weight_orig`` stays one shared parameter;
:func:`from_torch_prune` raises when aliases carry different masks. Tied buffers work the same way.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pure_prune import mask as mask_lib
from pure_prune import tree as tree_lib
from pure_prune.groups import ChannelGroup
from pure_prune.module_trees import Apply, check_module, from_module, to_module, warn_fully_pruned
from pure_prune.torch_prune_form import from_torch_prune, strip_torch_prune, to_torch_prune
from pure_prune.trace_groups import GroupReport, trace_groups

__all__ = [
    "Apply",
    "channel_groups",
    "channel_groups_report",
    "default_prunable",
    "from_module",
    "from_torch_prune",
    "masks_like",
    "strip_torch_prune",
    "to_module",
    "to_torch_prune",
    "warn_fully_pruned",
]


def _prunable_owners(module: nn.Module) -> set[str]:
    owners = set()
    for path, sub in module.named_modules():
        w = getattr(sub, "weight", None)
        layer = isinstance(sub, (nn.Linear, nn.modules.conv._ConvNd, nn.Bilinear)) or (
            hasattr(sub, "nf") and hasattr(sub, "nx")
        )
        if layer and isinstance(w, nn.Parameter):
            owners.add(f"{path}.weight" if path else "weight")
        if type(sub).__name__.endswith("Experts"):  # stacked expert weights (experts, out, in)
            for name, p in sub.named_parameters(recurse=False):
                if p.ndim >= 3:
                    owners.add(f"{path}.{name}" if path else name)
    return owners


def default_prunable(module: nn.Module) -> mask_lib.Prunable:
    """The default prunable leaves of a module: the weights of its Linear and Conv layers.

    Also transformers' ``Conv1D`` weights (GPT-2) and the stacked 3-D weights of modules whose
    class name ends in ``Experts`` (mixture-of-experts banks). Not embeddings, norms, biases,
    positional tables or class tokens. A module with none of these layers (bare parameters, such
    as ``compact.to_module``'s export) falls back to ``mask.default_prunable`` (``ndim >= 2``).
    Returns a predicate ``(path, leaf) -> bool`` for
    ``mask.ones_like(params, prunable)``; tied parameters count under their first name.
    """
    check_module(module)
    owners = _prunable_owners(module)
    if not owners:  # no Linear/Conv layer (a module holding bare tensors): every matrix or kernel
        return mask_lib.default_prunable
    by_id: dict[int, str] = {}
    for name, p in module.named_parameters():
        by_id.setdefault(id(p), name)
    for name, p in module.named_parameters(remove_duplicate=False):
        if name in owners:
            owners.add(by_id[id(p)])

    def prunable(path: str, leaf: torch.Tensor) -> bool:
        return path in owners

    return prunable


def masks_like(module: nn.Module, params: tree_lib.Tree) -> tree_lib.Tree:
    """``mask.ones_like(params, default_prunable(module))``: all-kept masks on the module's Linear/Conv weights."""
    return mask_lib.ones_like(params, default_prunable(module))


def channel_groups(module: nn.Module, *example_inputs: Any, verify: bool = True) -> tuple[ChannelGroup, ...]:
    """The channel groups of ``module``, found by tracing ``module(*example_inputs)``.

    Member paths are the leaf names of :func:`from_module` (buffers as ``"state.<name>"``), so
    ``compact.compact(params, state, masks, groups)`` and ``select.channels(scores, s, groups)``
    work on its trees. Only groups the tracer can follow and (``verify=True``) that compact to
    the masked module's outputs are returned; :func:`channel_groups_report` says what was left
    out and why (``pure_prune.trace_groups``). The module is not modified.
    """
    return trace_groups(module, *example_inputs, verify=verify).groups


def channel_groups_report(module: nn.Module, *example_inputs: Any, verify: bool = True) -> GroupReport:
    """:func:`channel_groups` with the groups left out: ``GroupReport(groups, left_out)``, each
    ``LeftOut(name, size, members, reason)``."""
    return trace_groups(module, *example_inputs, verify=verify)
