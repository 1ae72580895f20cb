"""Sparse kernels of a pruned model: sparse CSR weights on CPU, 2:4 semi-structured weights on CUDA.

* :func:`to_csr` stores very sparse 2-D weights as sparse CSR tensors and :func:`csr_apply` runs a
  model with them (``F.linear(x, W)`` as ``W @ xᵀ``, the sparse weight on the left);
  :func:`measure_crossover` times where CSR starts to beat the dense masked weight on this machine.
* :func:`to_semi_structured` converts exactly-2:4 weights for the sparse tensor cores of CUDA GPUs
  of compute capability >= 8.0 (``torch.sparse.to_sparse_semi_structured``; Mishra et al. 2021).

See :mod:`pure_prune.compact` for the measured speeds.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import reduce
from torch import Tensor
from torch.overrides import TorchFunctionMode

from pure_prune import mask as mask_lib
from pure_prune import rng, tree

__all__ = ["csr_apply", "measure_crossover", "to_csr", "to_semi_structured"]

Params = Any


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
