"""Group verification: does compacting a group reproduce the masked module's outputs?

:func:`verify_groups` removes about 30% of every group's units (a fixed random choice per group),
masks the module, compacts the trees (:func:`pure_prune.compact.compact`), resizes the module
(:func:`pure_prune.resize.resized`) and compares the float outputs in eval mode to ``rtol`` times
the largest output entry; it returns ``None`` when they agree, else the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from pure_prune import compact as compact_lib
from pure_prune import resize, tree
from pure_prune.groups import ChannelGroup, unit_mask_to_member
from pure_prune.trace_capture import STATE_PREFIX, flat_state, output_tensors

__all__ = ["verify_groups"]


def _removed_units(size: int, key: int) -> torch.Tensor:
    """A ``(size,)`` bool keep-mask that drops about 30% of the units (at least one, never all)."""
    k = min(max(1, round(0.3 * size)), size - 1)
    order = torch.randperm(size, generator=torch.Generator().manual_seed(key))
    keep = torch.ones(size, dtype=torch.bool)
    keep[order[:k]] = False
    return keep


def _first_tensor(out: Any) -> list[torch.Tensor]:
    return [t for t in output_tensors(out) if t.is_floating_point()]


def verify_groups(
    module: nn.Module, inputs: tuple, groups: Sequence[ChannelGroup], rtol: float
) -> str | None:
    """``None`` when removing ~30% of every group's units, compacting, and resizing the module gives
    the masked module's outputs; else why not."""
    params, buffers = flat_state(module)
    keep = {g.name: _removed_units(g.size, i) for i, g in enumerate(groups)}
    masks_flat: dict[str, torch.Tensor] = {}
    for g in groups:
        for m in g.members:
            if m.path.startswith(STATE_PREFIX):
                continue
            shape = params[m.path].shape
            unit = unit_mask_to_member(keep[g.name], m, shape)
            masks_flat[m.path] = unit if m.path not in masks_flat else masks_flat[m.path] & unit
    masked = {
        n: torch.where(masks_flat[n], p, torch.zeros((), dtype=p.dtype)) if n in masks_flat else p
        for n, p in params.items()
    }
    try:
        with torch.no_grad():
            ref = _first_tensor(functional_call(module, {**masked, **buffers}, inputs, tie_weights=True))
        p_tree, s_tree = tree.nest(params), tree.nest(buffers)
        m_tree = tree.nest({n: masks_flat.get(n) for n in params})
        kept = {g.name: torch.nonzero(keep[g.name]).reshape(-1) for g in groups}
        cp, cs, _, _ = compact_lib.compact(p_tree, s_tree, m_tree, groups, kept=kept)
        names_p, leaves_p, _ = tree.flatten_with_paths(cp)
        names_s, leaves_s, _ = tree.flatten_with_paths(cs)
        small = resize.resized(module, dict(zip(names_p, leaves_p)), dict(zip(names_s, leaves_s)))
        with torch.no_grad():
            got = _first_tensor(small(*inputs))
    except Exception as err:  # any failure means: not safe to compact this way
        return f"compacting and resizing failed: {type(err).__name__}: {str(err).splitlines()[0][:160]}"
    if len(got) != len(ref):
        return "the resized module returns a different number of outputs"
    for r, g_ in zip(ref, got):
        if r.shape != g_.shape:
            return f"the resized module's output has shape {tuple(g_.shape)}, the masked one {tuple(r.shape)}"
        scale = float(r.abs().max()) if r.numel() else 0.0
        diff = float((r - g_).abs().max()) if r.numel() else 0.0
        if not diff <= rtol * max(scale, 1e-30):
            return f"compacted output differs from the masked output by {diff / max(scale, 1e-30):.2e} of its scale"
    return None
