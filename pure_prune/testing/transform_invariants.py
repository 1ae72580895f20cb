"""Invariants of transformations: a transformed computation equals the plain one, leaf by leaf.

* :func:`vmapped_equals_loop`: ``torch.func.vmap(fn)`` over a leading seed axis of size ``n``
  equals ``fn`` called on each seed in a loop;
* :func:`compacted_equals_masked`: a physically compacted model computes what the masked model
  computes (eval mode).

Outputs are compared within ``atol + rtol · max |leaf|`` (the tolerance scales with the largest
magnitude in the leaf, as in :mod:`pure_prune.testing.close`); a failure raises ``AssertionError``
naming the output leaf, the seed and the first differing index. Needs only torch; re-exported by
:mod:`pure_prune.testing.invariants`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from pure_prune import tree
from pure_prune.testing.printing import first_index, format_value, leaf_label

__all__ = ["compacted_equals_masked", "vmapped_equals_loop"]


# ------------------------------------------------------------------------------ transformations
def _close(path: str, a: Any, b: Any, atol: float, rtol: float, names: tuple[str, str], where: str) -> None:
    """Raise naming ``path`` and the first index where tensors ``a`` and ``b`` differ beyond tolerance."""
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        if a != b:
            raise AssertionError(f"{where}{leaf_label(path)}: {names[0]} gives {a!r}, {names[1]} gives {b!r}")
        return
    if a.shape != b.shape:
        raise AssertionError(
            f"{where}{leaf_label(path)}: {names[0]} has shape {tuple(a.shape)}, {names[1]} has {tuple(b.shape)}"
        )
    scale = 0.0
    if a.dtype == torch.bool or b.dtype == torch.bool or not (a.is_floating_point() or b.is_floating_point()):
        bad = a != b
    else:
        # rtol scales with the largest magnitude in the leaf, not entry by entry: entries near zero
        # that are differences of large terms carry the rounding of those terms (pure_prune.testing.close)
        x, y = a.detach().to(torch.float64), b.detach().to(torch.float64)
        both_nan = torch.isnan(x) & torch.isnan(y)
        scale = (
            torch.maximum(x.abs(), y.abs()).nan_to_num(0.0, 0.0, 0.0).max() if x.numel() else x.new_zeros(())
        )
        bad = ~(((x - y).abs() <= atol + rtol * scale) | both_nan)
    if bool(bad.any()):
        idx = first_index(bad)
        diff = ""
        if a.is_floating_point():
            d = (a[idx].double() - b[idx].double()).abs().item()
            diff = f" (|diff| {d:.3g} > atol {atol:g} + rtol {rtol:g} · max |leaf| {float(scale):.3g})"
        raise AssertionError(
            f"{where}{leaf_label(path)} index {idx}: {names[0]} gives {format_value(a[idx])}, "
            f"{names[1]} gives {format_value(b[idx])}{diff}; {int(bad.sum())} of {bad.numel()} entries differ"
        )


def vmapped_equals_loop(
    fn: Callable[..., Any],
    stacked_inputs: Sequence[tree.Tree],
    n: int,
    *,
    atol: float = 1e-5,
    rtol: float = 1e-5,
) -> None:
    """``torch.func.vmap(fn)(*stacked_inputs)`` equals ``[fn(*inputs_i) for i in range(n)]``.

    ``stacked_inputs`` is the tuple of ``fn``'s arguments, each a tree whose tensor leaves carry a
    leading axis of size ``n`` (e.g. params stacked over seeds with ``tree.stack``); ``None`` and
    non-tensor leaves are passed unbatched. The outputs (any tree of tensors) are compared leaf by
    leaf within ``atol + rtol · max |leaf|`` (the tolerance scales with the largest magnitude in
    the leaf, see :mod:`pure_prune.testing.close`); the message names the output leaf, the seed
    and the index.
    """
    args = tuple(stacked_inputs)
    for a_i, a in enumerate(args):
        for path, x in zip(tree.paths(a), tree.leaves(a)):
            if isinstance(x, torch.Tensor) and (x.ndim == 0 or x.shape[0] != n):
                raise ValueError(
                    f"vmapped_equals_loop: input {a_i} leaf {path!r} has shape {tuple(x.shape)}, "
                    f"expected leading size {n}"
                )
    in_dims = tuple(tree.map(lambda x: 0 if isinstance(x, torch.Tensor) else None, a) for a in args)
    batched = torch.func.vmap(fn, in_dims=in_dims)(*args)
    looped = [
        fn(*(tree.map(lambda x, i=i: x[i] if isinstance(x, torch.Tensor) else x, a) for a in args))
        for i in range(n)
    ]
    try:
        tree.assert_same_structure(batched, looped[0], ("vmap output", "loop output"))
    except ValueError as e:
        raise AssertionError(str(e)) from None
    names, b_leaves, _ = tree.flatten_with_paths(batched)
    for i, out in enumerate(looped):
        for path, b, x in zip(names, b_leaves, tree.leaves(out)):
            bi = b[i] if isinstance(b, torch.Tensor) else b
            _close(path or "<output>", bi, x, atol, rtol, ("vmap", "loop"), f"seed {i}: ")


def compacted_equals_masked(
    apply: Callable[..., Any],
    masked_params: tree.Tree,
    compacted_params: tree.Tree,
    state: tree.Tree,
    x: torch.Tensor,
    atol: float = 1e-5,
    *,
    rtol: float = 1e-5,
    compacted_state: tree.Tree | None = None,
) -> None:
    """A physically compacted model computes what the masked model computes (eval mode).

    Calls ``apply(params, state, x, train=False)`` for both (``compacted_state`` defaults to
    ``state``; pass the compacted BatchNorm statistics when compaction sliced them) and compares
    the outputs, a tensor ``(N, ...)`` or a tree, entry by entry within ``atol + rtol · max |masked leaf|``.
    """
    out_m = apply(masked_params, state, x, train=False)
    out_c = apply(compacted_params, state if compacted_state is None else compacted_state, x, train=False)
    out_m = out_m[0] if isinstance(out_m, tuple) else out_m
    out_c = out_c[0] if isinstance(out_c, tuple) else out_c
    try:
        tree.assert_same_structure(out_m, out_c, ("masked output", "compacted output"))
    except ValueError as e:
        raise AssertionError(str(e)) from None
    names, m_leaves, _ = tree.flatten_with_paths(out_m)
    for path, a, b in zip(names, m_leaves, tree.leaves(out_c)):
        _close(path or "<output>", b, a, atol, rtol, ("compacted", "masked"), "")
