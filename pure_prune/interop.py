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

import copy
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils import prune

from pure_prune import mask as mask_lib
from pure_prune import resize
from pure_prune import tree as tree_lib
from pure_prune.groups import ChannelGroup
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

Apply = Callable[..., tuple[Any, tree_lib.Tree]]


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"Tensor(shape={tuple(x.shape)}, dtype={x.dtype})"
    text = repr(x)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_module(module: object) -> None:
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected an nn.Module, got {_describe(module)}")


def _flatten(tree: tree_lib.Tree, what: str) -> dict[str, torch.Tensor]:
    """A nested dict of tensors as ``{dotted path: tensor}``; ``TypeError`` naming a bad leaf."""
    if not isinstance(tree, dict):
        raise TypeError(f"{what} must be a nested dict of tensors, got {_describe(tree)}")
    names, leaves, _ = tree_lib.flatten_with_paths(tree)
    for name, leaf in zip(names, leaves):
        if not isinstance(leaf, torch.Tensor):
            raise TypeError(f"{what} leaf {name!r} must be a tensor, got {_describe(leaf)}")
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


def _torch_pruned(module: nn.Module) -> list[tuple[str, str]]:
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


def _join(mod_path: str, name: str) -> str:
    return f"{mod_path}.{name}" if mod_path else name


def _reject_torch_pruned(module: nn.Module, where: str) -> None:
    pruned = [_join(m, n) for m, n in _torch_pruned(module)]
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
    _check_module(module)
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
            raise TypeError(f"train must be a bool, got {_describe(train)}")
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
    _check_module(module)
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
    _check_module(module)
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
    _check_module(module)
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
    _check_module(module)
    pruned = set(_torch_pruned(module))
    params: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor | None] = {}
    first_name: dict[int, str] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        mod_path, _, pname = name.rpartition(".")
        base = pname[: -len("_orig")]
        if pname.endswith("_orig") and (mod_path, base) in pruned:
            leaf = _join(mod_path, base)
            m = _bool_mask(leaf, module.get_buffer(_join(mod_path, f"{base}_mask")))
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
    _check_module(module)
    # The hook-computed ``<name> = <name>_orig * <name>_mask`` has a grad_fn, which deepcopy refuses:
    # copy it detached (the copy's hook or prune.remove replaces it).
    memo: dict[int, Any] = {}
    for mod_path, base in _torch_pruned(module):
        computed = getattr(module.get_submodule(mod_path), base)
        memo[id(computed)] = computed.detach().clone()
    new = copy.deepcopy(module, memo)
    pruned = {}  # (id(submodule), name) -> (submodule, name): a shared submodule is stripped once
    originals = {}  # id(<name>_orig) -> (parameter, its unmasked values): tied ones saved once
    for mod_path, base in _torch_pruned(new):
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
