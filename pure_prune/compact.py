"""Faster forms of a pruned model: fewer units, sparse CSR kernels, 2:4 semi-structured sparsity.

A mask multiplies a dense kernel: at any sparsity the masked model costs what the dense one
does. Speed comes only when the form of the computation changes:

* :func:`compact` physically removes the units (neurons, channels, LSTM hidden units) whose
  mask entries are all pruned, slicing every member of their channel group (weights, biases,
  BatchNorm params and ``"state."`` running statistics, the consumer's input slice). The smaller
  params run through the *same* ``apply`` and give the masked model's outputs; :func:`expand` puts
  them back at full size (zeros at removed units) so a compacted model can be trained and
  re-expanded. Cost scales with the kept units: about the FLOP ratio (``bench/inference.py``);
  convolution weights come out channels_last (:func:`to_channels_last`), the layout in which
  narrow convolutions keep up with that ratio on CPU.
* :func:`to_csr` stores very sparse 2-D weights as sparse CSR tensors and :func:`csr_apply` runs a
  model with them, computing ``F.linear(x, W)`` as ``W @ xᵀ`` with the sparse weight on the
  left (``torch.addmm``). ``F.linear`` accepts a CSR weight as it is, but on CPU that is the slow
  path (torch 2.13, 1024x1024 weight, batch 64: ~10x slower than dense at 50% sparsity, still
  slower at 95%, faster only at 99%), while weight-on-the-left beats dense from about 80-90%
  (``bench/inference.py``). Where CSR starts to win depends on the machine:
  :func:`measure_crossover`.
* :func:`to_semi_structured` converts exactly-2:4 weights for the sparse tensor cores of CUDA GPUs
  of compute capability >= 8.0 (``torch.sparse.to_sparse_semi_structured``).
* :func:`to_module` exports a (compacted) model to a plain ``nn.Module`` (params as
  ``nn.Parameter``, state as buffers), for ``state_dict``, ``.to(device)`` and ``torch.optim``.

Which unit is removable: unit ``c`` of a group is removed when every mask entry of ``c`` in the
group's scored members (``Member.score``: the producer's weights) is pruned *and* its per-unit
params (the non-scored 1-D members: bias, BatchNorm weight and bias, an LSTM's gate biases) are
pruned or zero. The second condition keeps compaction exact: a unit whose weights are pruned but
whose bias is kept outputs a constant (``relu(b)``) that the next layer still reads, so it stays.
``select.channels``/``select.units`` masks prune every param member of a unit, so their units go.
A group never shrinks below one unit (all pruned: unit 0 stays, its output is zero), so every
shape stays valid.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import reduce
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from pure_prune import mask as mask_lib
from pure_prune import rng, tree
from pure_prune.groups import ChannelGroup, Member, member_view

__all__ = [
    "compact",
    "csr_apply",
    "expand",
    "kept_units",
    "measure_crossover",
    "to_channels_last",
    "to_csr",
    "to_module",
    "to_semi_structured",
]

Params = Any
_STATE = "state."


# =========================================================================== structured compaction
def _leaf_table(params: Params, state: Params, masks: Params) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``{path: tensor}`` over params and ``"state."``-prefixed state leaves, and ``{path: mask}``."""
    names, p_leaves, _ = tree.flatten_with_paths(params)
    leaves = dict(zip(names, p_leaves))
    masks_by_path = dict(zip(names, tree.leaves(masks)))
    s_names, s_leaves, _ = tree.flatten_with_paths(state)
    for name, leaf in zip(s_names, s_leaves):
        if not isinstance(leaf, Tensor):
            raise TypeError(f"state leaf {name!r} is {type(leaf).__name__}, expected a tensor")
        leaves[_STATE + name] = leaf
    return leaves, masks_by_path


def _check_groups(groups: Sequence[ChannelGroup], leaves: Mapping[str, Tensor]) -> None:
    """Every member names a leaf whose axis has length ``outer * size * inner``; no (leaf, axis) twice."""
    if isinstance(groups, ChannelGroup) or not all(isinstance(g, ChannelGroup) for g in groups):
        raise TypeError(f"groups must be a sequence of ChannelGroup, got {groups!r}")
    names = [g.name for g in groups]
    if len(set(names)) != len(names):
        raise ValueError(f"channel group names must be unique, got {names}")
    claimed: dict[tuple[str, int], str] = {}
    for g in groups:
        for mem in g.members:
            if mem.path not in leaves:
                raise ValueError(
                    f"channel group {g.name!r}: member {mem.path!r} is not a leaf of params or state"
                )
            x = leaves[mem.path]
            if not -x.ndim <= mem.axis < x.ndim:
                raise ValueError(
                    f"channel group {g.name!r}: axis {mem.axis} out of range for {mem.path!r} of shape "
                    f"{tuple(x.shape)}"
                )
            axis = mem.axis % x.ndim
            if x.shape[axis] != mem.outer * g.size * mem.inner:
                raise ValueError(
                    f"channel group {g.name!r}: {mem.path!r} axis {mem.axis} has length {x.shape[axis]}, "
                    f"expected outer*size*inner = {mem.outer}*{g.size}*{mem.inner}"
                )
            if (mem.path, axis) in claimed:
                raise ValueError(
                    f"axis {axis} of {mem.path!r} is claimed twice (groups {claimed[mem.path, axis]!r} and {g.name!r})"
                )
            claimed[mem.path, axis] = g.name


def _alive_units(g: ChannelGroup, leaves: Mapping[str, Tensor], masks: Mapping[str, Tensor | None]) -> Tensor:
    """``(size,)`` bool: units with a kept scored entry, or a non-zero per-unit param (bias, norm)."""
    alive = None
    for mem in g.members:
        if mem.path.startswith(_STATE):
            continue
        m = masks[mem.path]
        if mem.score:
            if m is None:
                return torch.ones(g.size, dtype=torch.bool)
            unit = reduce(member_view(m, mem, g.size), "u r -> u", "any")
        elif leaves[mem.path].ndim == 1:  # a per-unit param: bias, norm weight or bias
            x = leaves[mem.path]
            live = x != 0 if m is None else m & (x != 0)
            unit = reduce(member_view(live, mem, g.size), "u r -> u", "any")
        else:
            continue
        alive = unit if alive is None else alive | unit
    if alive is None:  # no scored member carries a mask: nothing can be removed
        return torch.ones(g.size, dtype=torch.bool)
    return alive.cpu()


def _member_index(mem: Member, size: int, units: Tensor) -> Tensor:
    """Positions along the member's axis of ``units`` in the ``(outer, size, inner)`` view: int64 ``(outer*k*inner,)``."""
    o = torch.arange(mem.outer)[:, None, None] * (size * mem.inner)
    c = units[None, :, None] * mem.inner
    i = torch.arange(mem.inner)[None, None, :]
    return (o + c + i).reshape(-1)


def _check_kept(kept: Mapping[str, Tensor], groups: Sequence[ChannelGroup]) -> None:
    """``kept`` names every group once with 1..size strictly increasing int64 unit indices."""
    if not isinstance(kept, Mapping):
        raise TypeError(f"kept must be a mapping {{group name: unit indices}}, got {kept!r}")
    names = {g.name for g in groups}
    if set(kept) != names:
        raise ValueError(
            f"kept must name every group exactly: missing {sorted(names - set(kept))}, "
            f"unknown {sorted(set(kept) - names)}"
        )
    for g in groups:
        k = kept[g.name]
        if not isinstance(k, Tensor) or k.ndim != 1 or k.dtype != torch.int64:
            raise TypeError(f"kept[{g.name!r}] must be an int64 (k,) tensor, got {k!r}")
        if k.numel() == 0 or k.numel() > g.size or int(k.min()) < 0 or int(k.max()) >= g.size:
            raise ValueError(
                f"kept[{g.name!r}] = {k.tolist()} must hold 1..{g.size} unit indices in [0, {g.size})"
            )
        if k.numel() > 1 and not bool((k[1:] > k[:-1]).all()):
            raise ValueError(f"kept[{g.name!r}] = {k.tolist()} must be strictly increasing")


def _plan(groups: Sequence[ChannelGroup], leaves: Mapping[str, Tensor], kept: Mapping[str, Tensor]):
    """``{path: [(axis, group, member)]}`` for every member whose group loses units."""
    plan: dict[str, list[tuple[int, ChannelGroup, Member]]] = {}
    for g in groups:
        if kept[g.name].numel() == g.size:
            continue
        for mem in g.members:
            plan.setdefault(mem.path, []).append((mem.axis % leaves[mem.path].ndim, g, mem))
    return plan


def _kept_of(alive: Tensor) -> Tensor:
    """Ascending int64 indices of the alive units; unit 0 when none is (a group keeps one unit)."""
    if not bool(alive.any()):
        return torch.zeros(1, dtype=torch.int64)
    return torch.nonzero(alive).reshape(-1)


def kept_units(
    params: Params, state: Params, masks: Params, groups: Sequence[ChannelGroup]
) -> dict[str, Tensor]:
    """The units :func:`compact` keeps when it is not given ``kept``, without building anything:
    ``{group name: ascending int64 (k,) unit indices}`` (the module docstring's rule). Raises as
    :func:`compact` does on bad input."""
    mask_lib.validate(params, masks)
    leaves, masks_by_path = _leaf_table(params, state, masks)
    _check_groups(groups, leaves)
    return {g.name: _kept_of(_alive_units(g, leaves, masks_by_path)) for g in groups}


def compact(
    params: Params,
    state: Params,
    masks: Params,
    groups: Sequence[ChannelGroup],
    *,
    kept: Mapping[str, Tensor] | None = None,
    channels_last: bool = True,
) -> tuple[Params, Params, Params, dict[str, Tensor]]:
    """Remove the units whose mask entries are all pruned (see the module docstring for the rule).

    Args:
        params, state: a model's trees (``state`` may be ``{}``).
        masks: the structure of ``params`` (bool tensors, ``None`` for dense leaves).
        groups: the model's channel groups (``spec.groups(params)``); every group is compacted,
            ``prunable=False`` ones included (their units are normally all kept).
        kept: slice to these units instead of the removable ones (``{group name: ascending
            int64 indices}``, e.g. an earlier call's ``kept``): the shapes of that call with the
            new masks inside, so a compiled step of that form is reused. Every unit that is not
            removable must be in it (else ``ValueError``: the outputs would change).
        channels_last: store every 4-D params leaf (convolution weights) of the result in
            ``torch.channels_last`` (see :func:`to_channels_last`): same values, a faster layout
            for the narrower convolutions. ``False`` keeps the layout of ``params``.

    Returns:
        ``(params, state, masks, kept)``: trees of the same structure whose group axes are sliced
        to the kept units, params masked (``mask.apply``: zeros at the pruned entries that remain;
        dense leaves no group shrinks are returned as they are, not copied), and
        ``kept = {group name: int64 (k,) ascending unit indices}`` for every group, which
        :func:`expand` needs. ``apply(params, state, x)`` of the result equals the masked model's
        ``apply(mask.apply(params, masks), state, x)`` up to float rounding, in train and eval mode.

    Raises ``ValueError``/``TypeError`` naming the leaf or group on bad input, before anything is built.
    """
    mask_lib.validate(params, masks)
    leaves, masks_by_path = _leaf_table(params, state, masks)
    _check_groups(groups, leaves)
    if kept is not None:
        _check_kept(kept, groups)
    chosen: dict[str, Tensor] = {}
    for g in groups:
        alive = _alive_units(g, leaves, masks_by_path)
        if kept is not None:
            given = torch.zeros(g.size, dtype=torch.bool)
            given[kept[g.name].cpu()] = True
            lost = torch.nonzero(alive & ~given).reshape(-1)
            if lost.numel():
                raise ValueError(
                    f"kept[{g.name!r}] drops units {lost.tolist()[:8]} that are not removable (kept mask "
                    "entries or non-zero biases): slicing them away would change the outputs"
                )
            chosen[g.name] = kept[g.name].cpu()
            continue
        chosen[g.name] = _kept_of(alive)
    kept = chosen
    plan = _plan(groups, leaves, kept)

    def shrink(path: str, x: Tensor | None) -> Tensor | None:
        if x is None or path not in plan:
            return x
        for axis, g, mem in plan[path]:
            x = x.index_select(axis, _member_index(mem, g.size, kept[g.name]).to(x.device))
        return x

    new_masks = tree.map_with_path(shrink, masks)
    new_params = mask_lib.apply(tree.map_with_path(shrink, params), new_masks)
    if channels_last:
        new_params = to_channels_last(new_params)
    new_state = tree.map_with_path(lambda p, x: shrink(_STATE + p, x), state)
    return new_params, new_state, new_masks, kept


def to_channels_last(params: Params) -> Params:
    """``params`` with every 4-D tensor leaf (``(C_out, C_in, kH, kW)`` convolution weights) stored
    in ``torch.channels_last``; other leaves (and 4-D leaves already in that layout) as they are.

    Values, shapes and dtypes are unchanged; only the strides differ. Why: on CPU, torch's oneDNN
    convolution of a contiguous (NCHW) input reorders input, weight and output to its blocked
    layout on every call, and NCHW max-pooling is slow for few channels; a channels_last weight
    makes the convolution run NHWC end to end (its output, and the pooling after it, stay
    channels_last). Those fixed costs weigh most on narrow convolutions. ``bench/inference.py``,
    Conv-4 (width 64, batch 64) with 50% / 75% of its channels removed, speed-up over the dense
    model as a share of the FLOP ratio, on a shared 2-core machine: both NCHW 0.75 / 0.60 (2
    threads) and 0.95 / 0.60 (1 thread); both channels_last 0.87 / 0.78 and 1.07 / 0.85; compacted
    channels_last against the dense model as initialised (NCHW) 1.11 / 0.97 and 1.31 / 1.01.
    ``compact`` applies it by default. Returns a new tree.
    """

    def convert(x: Any) -> Any:
        if isinstance(x, Tensor) and x.ndim == 4 and x.layout == torch.strided:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    return tree.map(convert, params)


def expand(
    params: Params, state: Params, masks: Params, kept: Mapping[str, Tensor], groups: Sequence[ChannelGroup]
) -> tuple[Params, Params, Params]:
    """Inverse of :func:`compact`: full-size trees with zeros (params, state) and ``False`` (masks)
    at the removed units.

    Args:
        params, state, masks: compacted trees (e.g. after training the compacted model).
        kept: :func:`compact`'s ``{group name: (k,) unit indices}``, one entry per group.
        groups: the *full-size* model's channel groups (those passed to :func:`compact`).

    Returns ``(params, state, masks)`` of the full shapes. A removed unit comes back with zero
    weights, biases and running statistics; its mask entries are ``False`` where the leaf has a
    mask (dense leaves stay ``None``). ``expand(*compact(p, s, m, g)[:3], kept, g)`` equals
    ``(mask.apply(p, m), s, m)`` at every kept unit and is zero at every removed one.
    """
    mask_lib.validate(params, masks)
    _check_kept(kept, groups)
    leaves, _ = _leaf_table(params, state, masks)
    sizes = {g.name: kept[g.name].numel() for g in groups}
    _check_groups([g._replace(size=sizes[g.name]) for g in groups], leaves)
    plan = _plan(groups, leaves, kept)

    def grow(path: str, x: Tensor | None) -> Tensor | None:
        if x is None or path not in plan:
            return x
        for axis, g, mem in plan[path]:
            shape = list(x.shape)
            shape[axis] = mem.outer * g.size * mem.inner
            index = _member_index(mem, g.size, kept[g.name]).to(x.device)
            x = torch.zeros(shape, dtype=x.dtype, device=x.device).index_copy(axis, index, x)
        return x

    new_params = tree.map_with_path(grow, params)
    new_masks = tree.map_with_path(grow, masks)
    new_state = tree.map_with_path(lambda p, x: grow(_STATE + p, x), state)
    return new_params, new_state, new_masks


# =============================================================================== CSR kernels (CPU)
def _check_min_sparsity(min_sparsity: object) -> float:
    if isinstance(min_sparsity, bool) or not isinstance(min_sparsity, (int, float)):
        raise TypeError(f"min_sparsity must be a number in [0, 1], got {min_sparsity!r}")
    if not 0.0 <= float(min_sparsity) <= 1.0:
        raise ValueError(f"min_sparsity must be in [0, 1], got {min_sparsity!r}")
    return float(min_sparsity)


def to_csr(params: Params, masks: Params, *, min_sparsity: float) -> Params:
    """Masked params with the 2-D masked leaves of sparsity ``>= min_sparsity`` as sparse CSR tensors.

    Every other leaf is ``mask.apply``'d (dense, zeros at pruned entries), so the result computes
    the masked model. Run it with :func:`csr_apply` (``F.linear`` with a CSR weight is the slow
    path on CPU, see the module docstring). ``min_sparsity``: e.g. :func:`measure_crossover`'s
    result. Returns a new tree; ``params`` is not modified.
    """
    s_min = _check_min_sparsity(min_sparsity)
    mask_lib.validate(params, masks)

    def convert(p: Tensor, m: Tensor | None) -> Tensor:
        if m is None:
            return p
        dense = torch.where(m, p, torch.zeros((), dtype=p.dtype, device=p.device))
        if p.ndim != 2 or m.numel() == 0 or 1.0 - float(m.sum()) / m.numel() < s_min:
            return dense
        with warnings.catch_warnings():  # torch's "CSR support is in beta" notice, once per leaf
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return dense.to_sparse_csr()

    return tree.map(convert, params, masks)


class _CsrLinear(TorchFunctionMode):
    """Inside: ``F.linear(x, W_csr, b)`` runs as ``addmm(b, W_csr, xᵀ)ᵀ``; any other op handed a CSR
    tensor gets it densified (correct, not fast: e.g. an embedding lookup)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear and len(args) >= 2 and args[1].layout == torch.sparse_csr:
            x, w = args[0], args[1]
            b = args[2] if len(args) > 2 else kwargs.get("bias")
            flat = x.reshape(-1, x.shape[-1]).T
            y = torch.sparse.mm(w, flat) if b is None else torch.addmm(b[:, None], w, flat)
            return y.T.reshape(*x.shape[:-1], w.shape[0])
        if any(isinstance(a, Tensor) and a.layout == torch.sparse_csr for a in args):
            args = tuple(
                a.to_dense() if isinstance(a, Tensor) and a.layout == torch.sparse_csr else a for a in args
            )
        return func(*args, **kwargs)


def csr_apply(apply: Callable[..., Any]) -> Callable[..., Any]:
    """``apply`` with the CSR kernels of :func:`to_csr` enabled for the duration of each call.

    ``csr_apply(spec.apply)(to_csr(params, masks, min_sparsity=0.9), state, x, train=False)``
    equals ``spec.apply(mask.apply(params, masks), state, x, train=False)`` up to float rounding.
    Eager only: ``torch.compile`` does not generate sparse CSR kernels. The CSR path has no
    autograd support for training; use it for inference.
    """
    if not callable(apply):
        raise TypeError(f"apply must be callable, got {apply!r}")

    def run(*args: Any, **kwargs: Any) -> Any:
        with _CsrLinear():
            return apply(*args, **kwargs)

    return run


def _median_seconds(fn: Callable[[], Any], reps: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_crossover(
    shape: tuple[int, int],
    batch: int,
    sparsities: Sequence[float] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99),
    *,
    reps: int = 20,
    key: int = 0,
) -> float | None:
    """Time a dense masked linear against the CSR kernel of :func:`csr_apply` on this machine.

    ``shape = (out, in)`` of the weight; inputs ``(batch, in)``; random masks of each sparsity
    (drawn from ``key``). Each case is the median of ``reps`` timed calls after warm-up, at the
    current ``torch.get_num_threads()``. Returns the smallest tested sparsity from which CSR is
    faster at it and at every larger tested sparsity, or ``None`` when CSR never wins. Nothing is
    cached: keep the number (e.g. as ``to_csr``'s ``min_sparsity``).
    """
    if len(shape) != 2 or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise ValueError(f"shape must be (out, in) positive ints, got {shape!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    if isinstance(reps, bool) or not isinstance(reps, int) or reps < 1:
        raise ValueError(f"reps must be a positive int, got {reps!r}")
    levels = sorted(_check_min_sparsity(s) for s in sparsities)
    if not levels:
        raise ValueError("sparsities must not be empty")
    k_w, k_x, k_m = rng.split(key, 3)
    weight = rng.normal(k_w, shape)
    x = rng.normal(k_x, (batch, shape[1]))
    bias = torch.zeros(shape[0])
    linear = csr_apply(lambda w, inp: F.linear(inp, w, bias))
    wins = []
    for s in levels:
        keep = rng.uniform(rng.fold_in(k_m, round(s * 1e6)), shape) >= s
        dense = torch.where(keep, weight, torch.zeros(()))
        csr = to_csr({"w": weight}, {"w": keep}, min_sparsity=0.0)["w"]
        t_dense = _median_seconds(lambda dense=dense: F.linear(x, dense, bias), reps)
        t_csr = _median_seconds(lambda csr=csr: linear(csr, x), reps)
        wins.append(t_csr < t_dense)
    for i, s in enumerate(levels):
        if all(wins[i:]):
            return s
    return None


# ==================================================================== 2:4 semi-structured (CUDA)
_SEMI_DTYPES = (torch.float16, torch.bfloat16, torch.int8)


def _check_two_four(path: str, m: Tensor) -> None:
    if m.shape[-1] % 4 != 0:
        raise ValueError(f"2:4 sparsity: {path!r} has {m.shape[-1]} inputs, not a multiple of 4")
    counts = reduce(m.to(torch.int64), "o (g four) -> o g", "sum", four=4)
    bad = torch.nonzero(counts != 2)
    if bad.numel():
        row, grp = (int(v) for v in bad[0])
        raise ValueError(
            f"2:4 sparsity: mask {path!r} keeps {int(counts[row, grp])} of the 4 inputs "
            f"{4 * grp}..{4 * grp + 3} of row {row}; every group of 4 along the input axis must keep exactly 2"
        )


def to_semi_structured(params: Params, masks: Params) -> Params:
    """Masked params with every 2-D masked leaf as a 2:4 ``SparseSemiStructuredTensor`` (CUDA).

    Each 2-D masked leaf ``(out, in)`` must keep exactly 2 of every 4 consecutive inputs, be
    float16, bfloat16 or int8, and live on a CUDA GPU of compute capability >= 8.0 (Ampere or
    newer); ``F.linear`` then uses the sparse tensor cores. Other leaves are ``mask.apply``'d.
    Checks run in that order over every leaf before anything is converted; a failure raises
    ``ValueError``/``TypeError`` naming the leaf (on a CPU: the device, with why). Shape limits
    of the kernels (e.g. minimum rows and columns) are torch's; its error is re-raised naming the leaf.
    """
    mask_lib.validate(params, masks)
    names, p_leaves, spec = tree.flatten_with_paths(params)
    m_leaves = tree.leaves(masks)
    chosen = [i for i, (p, m) in enumerate(zip(p_leaves, m_leaves)) if m is not None and p.ndim == 2]
    if not chosen:
        raise ValueError("to_semi_structured: no 2-D masked leaf to convert")
    for i in chosen:
        _check_two_four(names[i], m_leaves[i])
    for i in chosen:
        if p_leaves[i].dtype not in _SEMI_DTYPES:
            raise TypeError(
                f"2:4 sparsity: {names[i]!r} has dtype {p_leaves[i].dtype}; the semi-structured kernels take "
                f"float16, bfloat16 or int8 (convert with .half() or .bfloat16())"
            )
    for i in chosen:
        device = p_leaves[i].device
        if device.type != "cuda":
            raise ValueError(
                f"2:4 sparsity: {names[i]!r} is on {device}; semi-structured sparse kernels run only on "
                "CUDA GPUs of compute capability >= 8.0 (sparse tensor cores), not on a CPU"
            )
        cap = torch.cuda.get_device_capability(device)
        if cap < (8, 0):
            raise ValueError(
                f"2:4 sparsity: {names[i]!r} is on {device} of compute capability {cap[0]}.{cap[1]}; "
                "semi-structured sparsity needs >= 8.0"
            )
    out = [
        p if m is None else torch.where(m, p, torch.zeros((), dtype=p.dtype, device=p.device))
        for p, m in zip(p_leaves, m_leaves)
    ]
    for i in chosen:
        try:
            out[i] = torch.sparse.to_sparse_semi_structured(out[i])
        except (RuntimeError, ValueError) as err:
            raise ValueError(
                f"2:4 sparsity: torch cannot convert {names[i]!r} of shape {tuple(out[i].shape)}: {err}"
            ) from err
    return tree.unflatten(spec, out)


# =================================================================================== nn.Module export
_RESERVED = frozenset(dir(nn.Module())) | {
    "",
    "params",
    "state",
    "_apply_fn",
    "_param_spec",
    "_state_spec",
    "_param_names",
    "_state_names",
}


def _check_names(kind: str, names: Sequence[str]) -> None:
    for name in names:
        for part in name.split("."):
            if part in _RESERVED:
                raise ValueError(
                    f"to_module: {kind} leaf {name!r} has the key {part!r}, which the exported nn.Module "
                    "cannot hold (empty, or the name of one of its attributes)"
                )


class _Exported(nn.Module):
    """Params as ``nn.Parameter`` and state as buffers in nested submodules named by the tree keys."""

    def __init__(self, apply: Callable[..., Any], params: Params, state: Params) -> None:
        super().__init__()
        self._apply_fn = apply
        p_names, p_leaves, self._param_spec = tree.flatten_with_paths(params)
        s_names, s_leaves, self._state_spec = tree.flatten_with_paths(state)
        self._param_names, self._state_names = p_names, s_names
        for name, leaf in zip(p_names, p_leaves):
            self._owner(name).register_parameter(name.rsplit(".", 1)[-1], nn.Parameter(leaf.detach().clone()))
        for name, leaf in zip(s_names, s_leaves):
            self._owner(name).register_buffer(name.rsplit(".", 1)[-1], leaf.detach().clone())

    def _owner(self, path: str) -> nn.Module:
        node: nn.Module = self
        for part in path.split(".")[:-1]:
            if not hasattr(node, part):
                node.add_module(part, nn.Module())
            node = getattr(node, part)
        return node

    def _leaf(self, path: str) -> Tensor:
        # getattr, not get_parameter: under torch.func.functional_call the leaves are plain tensors
        owner, _, name = path.rpartition(".")
        return getattr(self.get_submodule(owner), name)

    def params(self) -> Params:
        """The current parameters as a params tree (the ``nn.Parameter`` objects themselves)."""
        return tree.unflatten(self._param_spec, [self._leaf(n) for n in self._param_names])

    def state(self) -> Params:
        """The current buffers as a state tree."""
        return tree.unflatten(self._state_spec, [self._leaf(n) for n in self._state_names])

    def forward(self, x: Tensor, **kwargs: Any) -> Any:
        """``apply(params, state, x, train=self.training, **kwargs)`` without the state.

        Returns the output (or ``(output, activations)`` with ``capture=True``). In training mode
        the new state (BatchNorm running statistics) is copied into the buffers, as
        ``nn.BatchNorm`` does.
        """
        result = self._apply_fn(self.params(), self.state(), x, train=self.training, **kwargs)
        out, new_state, *rest = result
        if self.training and self._state_names:
            with torch.no_grad():
                for name, new in zip(self._state_names, tree.leaves(new_state)):
                    self.get_buffer(name).copy_(new)
        return (out, *rest) if rest else out


def to_module(apply: Callable[..., Any], params: Params, state: Params) -> nn.Module:
    """A plain ``nn.Module`` running ``apply`` on its own copies of ``params`` and ``state``.

    Params become ``nn.Parameter`` s and state leaves buffers, in nested submodules named by the
    tree keys, so ``state_dict()`` keys are the tree paths (``"fc1.weight"``,
    ``"bn1.running_mean"``) and ``.to(device)``, ``torch.optim`` and ``load_state_dict`` work.
    ``module(x)`` returns ``apply(params, state, x, train=module.training)[0]``; ``module.params()``
    and ``module.state()`` give the trees back. Raises ``ValueError`` when a key cannot name an
    ``nn.Module`` attribute (empty or an ``nn.Module`` member name such as ``"training"``) or a
    path is both a param and a state leaf, ``TypeError`` for a non-tensor leaf.
    """
    if not callable(apply):
        raise TypeError(f"apply must be callable, got {apply!r}")
    for kind, t in (("params", params), ("state", state)):
        names, leaves, _ = tree.flatten_with_paths(t)
        for name, leaf in zip(names, leaves):
            if not isinstance(leaf, Tensor):
                raise TypeError(
                    f"to_module: {kind} leaf {name!r} is {type(leaf).__name__}, expected a tensor"
                )
        _check_names(kind, names)
    p_names, s_names = set(tree.paths(params)), set(tree.paths(state))
    both = sorted(p_names & s_names)
    if both:
        raise ValueError(f"to_module: {both[0]!r} is both a params and a state leaf")
    prefixes = {n.rsplit(".", 1)[0] for n in p_names | s_names if "." in n}
    clash = sorted((p_names | s_names) & {p for n in prefixes for p in _prefixes(n)})
    if clash:
        raise ValueError(f"to_module: {clash[0]!r} is a leaf and also a node of the other tree")
    return _Exported(apply, params, state)


def _prefixes(path: str) -> list[str]:
    parts = path.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]
