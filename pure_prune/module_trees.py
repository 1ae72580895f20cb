"""``nn.Module`` to trees and back: :func:`from_module` and :func:`to_module`.

:func:`from_module` gives ``(apply, params, state)``: canonical nested dicts of detached clones of
``named_parameters()`` / ``named_buffers()`` and a pure ``apply(params, state, x, *, train=False)
-> (out, new_state)`` that runs a meta-device copy of the module through
``torch.func.functional_call``. :func:`to_module` writes (optionally masked, possibly compacted)
trees into a copy of the module, resizing its layers. Purity of ``apply`` and tied parameters:
see :mod:`pure_prune.interop`, which re-exports these functions. Also here: the checks shared with
:mod:`pure_prune.torch_prune_form` (:func:`check_module`, :func:`torch_pruned`, which finds
``torch.nn.utils.prune`` reparametrisations).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from pure_prune import mask as mask_lib
from pure_prune import resize
from pure_prune import tree as tree_lib

__all__ = [
    "Apply",
    "check_module",
    "describe",
    "from_module",
    "join_path",
    "to_module",
    "torch_pruned",
    "warn_fully_pruned",
]

Apply = Callable[..., tuple[Any, tree_lib.Tree]]


def describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"Tensor(shape={tuple(x.shape)}, dtype={x.dtype})"
    text = repr(x)
    return text if len(text) <= 80 else text[:77] + "..."


def check_module(module: object) -> None:
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected an nn.Module, got {describe(module)}")


def _flatten(tree: tree_lib.Tree, what: str) -> dict[str, torch.Tensor]:
    """A nested dict of tensors as ``{dotted path: tensor}``; ``TypeError`` naming a bad leaf."""
    if not isinstance(tree, dict):
        raise TypeError(f"{what} must be a nested dict of tensors, got {describe(tree)}")
    names, leaves, _ = tree_lib.flatten_with_paths(tree)
    for name, leaf in zip(names, leaves):
        if not isinstance(leaf, torch.Tensor):
            raise TypeError(f"{what} leaf {name!r} must be a tensor, got {describe(leaf)}")
    return dict(zip(names, leaves))


def _check_names(flat: dict[str, torch.Tensor], expected: list[str], what: str) -> None:
    missing = sorted(n for n in expected if n not in flat)
    unexpected = sorted(n for n in flat if n not in set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{what} does not match the module: missing leaves {missing[:5]}, unexpected leaves {unexpected[:5]}"
        )


def _check_fits(flat: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], what: str) -> bool:
    """Each leaf of ``flat`` has the module tensor's dtype and rank and no axis longer than it.

    Returns whether any shape differs (compacted trees). ``ValueError``/``TypeError`` name the leaf.
    """
    smaller = False
    for name, value in flat.items():
        ref = reference[name]
        if value.dtype != ref.dtype:
            raise TypeError(f"{what} leaf {name!r} has dtype {value.dtype}, the module's has {ref.dtype}")
        if value.ndim != ref.ndim or any(a > b for a, b in zip(value.shape, ref.shape)):
            raise ValueError(
                f"{what} leaf {name!r} has shape {tuple(value.shape)}, which does not fit the module's "
                f"{tuple(ref.shape)} (same rank, no axis longer)"
            )
        if any(a == 0 for a in value.shape) and ref.numel():
            raise ValueError(f"{what} leaf {name!r} has shape {tuple(value.shape)}: an axis lost every unit")
        smaller = smaller or value.shape != ref.shape
    return smaller


def torch_pruned(module: nn.Module) -> list[tuple[str, str]]:
    """``(submodule path, tensor name)`` for every tensor reparametrised by ``torch.nn.utils.prune``.

    Recognised by the documented form: a parameter ``<name>_orig`` and a buffer ``<name>_mask`` in
    the same submodule, and ``<name>`` a plain tensor attribute (set by the pruning hook).
    """
    found = []
    for mod_path, mod in module.named_modules(remove_duplicate=False):
        own_params = dict(mod.named_parameters(recurse=False))
        own_buffers = dict(mod.named_buffers(recurse=False))
        for pname in own_params:
            base = pname[: -len("_orig")]
            if (
                pname.endswith("_orig")
                and f"{base}_mask" in own_buffers
                and base not in own_params
                and isinstance(getattr(mod, base, None), torch.Tensor)
            ):
                found.append((mod_path, base))
    return found


def join_path(mod_path: str, name: str) -> str:
    return f"{mod_path}.{name}" if mod_path else name


def _reject_torch_pruned(module: nn.Module, where: str) -> None:
    pruned = [join_path(m, n) for m, n in torch_pruned(module)]
    if pruned:
        raise ValueError(
            f"{where}: the module carries torch.nn.utils.prune reparametrisations at {pruned[:5]} "
            "(<name>_orig/<name>_mask); use from_torch_prune(module) for (params, masks) and "
            "strip_torch_prune(module) for the plain module"
        )


def _skeleton(module: nn.Module, training: bool) -> nn.Module:
    """A deep copy of ``module`` in mode ``training`` whose parameters and buffers are on ``meta``.

    Pre-filling ``deepcopy``'s memo maps every tensor to its meta twin without copying data and
    keeps ties (one parameter under two names stays one parameter).
    """
    memo: dict[int, Any] = {}
    for p in module.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in module.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    skeleton = copy.deepcopy(module, memo)
    # nn.Module.train itself, not an override: transformers' PreTrainedModel.train re-applies hub
    # kernels to a model loaded with them, which fails on meta tensors
    nn.Module.train(skeleton, training)
    return skeleton


def from_module(module: nn.Module) -> tuple[Apply, tree_lib.Tree, tree_lib.Tree]:
    """``(apply, params, state)`` for ``module``; the module is neither aliased nor modified.

    ``params``: canonical nested dict of detached clones of ``named_parameters()`` (tied parameters
    once, under their first name). ``state``: the same for ``named_buffers()`` (BatchNorm
    ``running_mean``/``running_var``/``num_batches_tracked``), ``{}`` when there are none.

    ``apply(params, state, x, *, train=False) -> (out, new_state)``: ``out`` is what
    ``module(x)`` returns with these params and buffers, in train or eval mode; ``new_state`` has the
    structure of ``state`` and holds the updated buffers (fresh tensors; ``state`` is untouched).
    ``params``/``state`` must have exactly the module's leaf names (``ValueError`` otherwise); leaf
    shapes are not checked, so physically smaller (compacted) params run where the layers allow.

    Raises ``TypeError`` for a non-module, ``ValueError`` for uninitialised lazy parameters or a
    module pruned with ``torch.nn.utils.prune`` (see :func:`from_torch_prune`).
    """
    check_module(module)
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        if nn.parameter.is_lazy(t):
            raise ValueError(f"{name!r} is an uninitialised lazy tensor; run the module once first")
    _reject_torch_pruned(module, "from_module")
    param_names = [n for n, _ in module.named_parameters()]
    buffer_names = [n for n, _ in module.named_buffers()]
    params = tree_lib.nest({n: p.detach().clone() for n, p in module.named_parameters()})
    state = tree_lib.nest({n: b.detach().clone() for n, b in module.named_buffers()})
    skeletons = {True: _skeleton(module, True), False: _skeleton(module, False)}

    def apply(params: tree_lib.Tree, state: tree_lib.Tree, x: Any, *, train: bool = False):
        """``(module(x), new_state)`` with ``params``/``state`` swapped in; see :func:`from_module`."""
        if not isinstance(train, bool):
            raise TypeError(f"train must be a bool, got {describe(train)}")
        flat_params = _flatten(params, "params")
        flat_state = _flatten(state, "state")
        _check_names(flat_params, param_names, "params")
        _check_names(flat_state, buffer_names, "state")
        new_state = {name: value.clone() for name, value in flat_state.items()}
        out = functional_call(
            skeletons[train], {**flat_params, **new_state}, (x,), strict=True, tie_weights=True
        )
        return out, tree_lib.nest(new_state)

    return apply, params, state


def to_module(
    module: nn.Module,
    params: tree_lib.Tree,
    state: tree_lib.Tree | None = None,
    *,
    masks: tree_lib.Tree | None = None,
) -> nn.Module:
    """A copy of ``module`` (same class) holding ``params`` (``W * M`` where ``masks`` has a tensor) and ``state``.

    ``params`` must name exactly the module's parameters (tied ones once) with the module's dtypes
    and ranks; ``state``, when given, exactly its buffers (``None`` keeps the module's buffers).
    Leaves may be *smaller* than the module's (compacted trees, ``compact.compact`` through
    :func:`channel_groups`): the copy's layers are then resized (``in_features``,
    ``out_channels``, ``num_features``, head counts, ...; :func:`pure_prune.resize.resized`), so
    ``torch.save(new.state_dict())`` reloads into a module of that class with those shapes
    (e.g. another ``to_module`` of the same trees). Compacted params that change a buffer's
    length need ``state`` (BatchNorm statistics). ``masks`` follows ``pure_prune.mask`` and must
    fit ``params``. A leaf masked to 100% gets a ``UserWarning`` naming it. Everything is
    checked before anything is written: ``ValueError``/``TypeError`` name the leaf and both
    shapes or dtypes. Returns the new module; ``module`` and the trees are not modified.
    """
    check_module(module)
    _reject_torch_pruned(module, "to_module")
    flat_params = _flatten(params, "params")
    module_params = dict(module.named_parameters())
    _check_names(flat_params, list(module_params), "params")
    smaller = _check_fits(flat_params, module_params, "params")
    flat_state: dict[str, torch.Tensor] = {}
    module_buffers = dict(module.named_buffers())
    if state is not None:
        flat_state = _flatten(state, "state")
        _check_names(flat_state, list(module_buffers), "state")
        smaller = _check_fits(flat_state, module_buffers, "state") or smaller
    if masks is not None:
        mask_lib.validate(params, masks)
        warn_fully_pruned(masks)
        flat_params = _flatten(mask_lib.apply(params, masks), "params")
    if smaller:
        buffers = flat_state if state is not None else {n: b.detach() for n, b in module_buffers.items()}
        return resize.resized(module, flat_params, buffers)
    new = copy.deepcopy(module)
    with torch.no_grad():
        for name, value in flat_params.items():
            new.get_parameter(name).copy_(value)
        for name, value in flat_state.items():
            new.get_buffer(name).copy_(value)
    return new


def warn_fully_pruned(masks: tree_lib.Tree) -> list[str]:
    """Warn (``UserWarning``) naming every leaf whose mask prunes all of its entries; returns their paths."""
    names, leaves, _ = tree_lib.flatten_with_paths(masks)
    dead = [
        n for n, m in zip(names, leaves) if isinstance(m, torch.Tensor) and m.numel() and not bool(m.any())
    ]
    if dead:
        warnings.warn(
            f"{len(dead)} leaf(s) pruned to 100%: {dead[:8]}; the layer outputs only its bias", stacklevel=2
        )
    return dead
