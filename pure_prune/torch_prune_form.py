"""Masks to and from ``torch.nn.utils.prune``'s form: a ``<name>_orig`` parameter, a
``<name>_mask`` buffer and a forward pre-hook computing ``<name> = <name>_orig * <name>_mask``.

:func:`to_torch_prune` writes params and prunes every masked leaf that way (at every name a tied
parameter has), :func:`from_torch_prune` reads ``(params, masks)`` back, and
:func:`strip_torch_prune` gives the plain module holding the unmasked values. Re-exported by
:mod:`pure_prune.interop`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from pure_prune import mask as mask_lib
from pure_prune import tree as tree_lib
from pure_prune.module_trees import check_module, join_path, to_module, torch_pruned

__all__ = ["from_torch_prune", "strip_torch_prune", "to_torch_prune"]


def _aliases(module: nn.Module) -> dict[str, list[str]]:
    """Each parameter's first name -> every name it is registered under (itself first)."""
    by_id: dict[int, list[str]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    return {names[0]: names for names in by_id.values()}


def to_torch_prune(module: nn.Module, params: tree_lib.Tree, masks: tree_lib.Tree) -> nn.Module:
    """A deep copy of ``module`` with ``params`` written in and every masked leaf pruned the torch way.

    For each leaf whose mask is a tensor, ``torch.nn.utils.prune.custom_from_mask`` is applied at
    every name the parameter is registered under: the submodule then has a ``<name>_orig``
    parameter (``params``' unmasked value), a ``<name>_mask`` buffer (the mask in the parameter's
    dtype) and a forward pre-hook computing ``<name> = <name>_orig * <name>_mask``. Leaves whose
    mask is ``None`` stay plain parameters. So ``to_torch_prune(m, p, k)(x)`` equals
    ``apply(mask.apply(p, k), state, x)``. Raises like :func:`to_module`.
    """
    if masks is None:
        raise TypeError("to_torch_prune needs a masks tree (None leaves for dense parameters)")
    check_module(module)
    new = to_module(module, params)  # validates names, shapes and dtypes of params
    mask_lib.validate(params, masks)
    aliases = _aliases(new)
    names, leaves, _ = tree_lib.flatten_with_paths(masks)
    for name, m in zip(names, leaves):
        if m is None:
            continue
        target = new.get_parameter(name)
        done = set()  # a submodule registered under two paths is pruned once
        for alias in aliases[name]:
            mod_path, _, pname = alias.rpartition(".")
            sub = new.get_submodule(mod_path)
            if (id(sub), pname) not in done:
                done.add((id(sub), pname))
                prune.custom_from_mask(sub, pname, m.detach().to(device=target.device, copy=True))
    return new


def _bool_mask(name: str, buffer: torch.Tensor) -> torch.Tensor:
    if buffer.dtype != torch.bool and not bool(((buffer == 0) | (buffer == 1)).all()):
        bad = buffer[(buffer != 0) & (buffer != 1)][0].item()
        raise ValueError(f"torch prune mask of {name!r} holds {bad!r}; only 0 and 1 are masks")
    return buffer != 0


def from_torch_prune(module: nn.Module) -> tuple[tree_lib.Tree, tree_lib.Tree]:
    """``(params, masks)`` read from a module pruned with ``torch.nn.utils.prune``.

    A pruned tensor ``<name>`` contributes ``params[<name>] = <name>_orig`` (the unmasked values)
    and ``masks[<name>] = <name>_mask != 0`` (bool); every other parameter contributes its value and
    a ``None`` mask. Both are canonical nested dicts of fresh tensors with one structure (the
    structure :func:`from_module` gives for the plain module). After ``prune.remove`` the pruning is
    baked into the weights and cannot be told apart from weights that happen to be zero: such a
    module gives ``None`` masks (use ``mask.from_nonzero`` to guess them from the zeros).

    Raises ``ValueError`` when a mask holds values other than 0 and 1, or when a tied parameter is
    pruned with different masks (or pruned at one alias only) under its names.
    """
    check_module(module)
    pruned = set(torch_pruned(module))
    params: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor | None] = {}
    first_name: dict[int, str] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        mod_path, _, pname = name.rpartition(".")
        base = pname[: -len("_orig")]
        if pname.endswith("_orig") and (mod_path, base) in pruned:
            leaf = join_path(mod_path, base)
            m = _bool_mask(leaf, module.get_buffer(join_path(mod_path, f"{base}_mask")))
        else:
            leaf, m = name, None
        if id(p) in first_name:
            first = first_name[id(p)]
            same = (m is None) == (masks[first] is None) and (m is None or torch.equal(m, masks[first]))
            if not same:
                raise ValueError(
                    f"tied parameter {first!r} is also {leaf!r}, pruned with different torch prune masks"
                )
            continue
        first_name[id(p)] = leaf
        params[leaf] = p.detach().clone()
        masks[leaf] = m
    return tree_lib.nest(params), tree_lib.nest(masks)


def strip_torch_prune(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with every ``torch.nn.utils.prune`` reparametrisation removed.

    Each pruned ``<name>`` becomes a plain parameter again holding the *unmasked* ``<name>_orig``
    values: the module ``to_torch_prune`` started from. ``from_module(strip_torch_prune(m))`` then
    gives ``apply`` and ``state`` for the ``(params, masks)`` of ``from_torch_prune(m)``.
    """
    check_module(module)
    # The hook-computed ``<name> = <name>_orig * <name>_mask`` has a grad_fn, which deepcopy refuses:
    # copy it detached (the copy's hook or prune.remove replaces it).
    memo: dict[int, Any] = {}
    for mod_path, base in torch_pruned(module):
        computed = getattr(module.get_submodule(mod_path), base)
        memo[id(computed)] = computed.detach().clone()
    new = copy.deepcopy(module, memo)
    pruned = {}  # (id(submodule), name) -> (submodule, name): a shared submodule is stripped once
    originals = {}  # id(<name>_orig) -> (parameter, its unmasked values): tied ones saved once
    for mod_path, base in torch_pruned(new):
        sub = new.get_submodule(mod_path)
        pruned[(id(sub), base)] = (sub, base)
        orig = sub.get_parameter(f"{base}_orig")
        originals.setdefault(id(orig), (orig, orig.detach().clone()))
    for sub, base in pruned.values():
        prune.remove(sub, base)
    with torch.no_grad():
        for orig, saved in originals.values():
            orig.copy_(saved)
    return new
