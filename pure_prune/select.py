"""Scores + target -> masks. Pure, exact and ``torch.compile``-able.

Exactness: asking for sparsity ``s`` over ``N`` entries prunes exactly ``round(s · N)`` of them, with
Python's ``round`` (half to even, as ``torch.nn.utils.prune`` does). Ties in score are broken by
position: among equal scores the entry that comes first (leaf order of :mod:`pure_prune.tree`, then
row-major index) is pruned first.

Already-pruned entries (``masks`` given) stay pruned and count toward the target: they are ranked
below every live entry. If the target is below the current sparsity nothing is revived.

Bad input (checked eagerly, skipped while ``torch.compile`` traces): sparsity outside [0, 1] or
NaN, NaN/±inf scores (an error: a score that is not finite is a bug upstream, never silently
"least important"), trees or shapes that do not match, a non-bool mask, no prunable leaf.
Every error names the leaf path and the value.

Memory of global selection: no concatenation and no sort outside ``torch.compile`` — a radix
select over the leaves (``pure_prune.kth``) plus one bool mask per leaf; see ``bench/selection.py``
for time and peak memory at 10M and 100M parameters against sort- and topk-based selection.

The selectors live in one module per kind, all re-exported here: :mod:`pure_prune.select_unstructured`
(entries), :mod:`pure_prune.select_structured` (slices, channel-group units, N:M),
:mod:`pure_prune.select_block` (blocks), on the kernel :mod:`pure_prune.select_lowest_k` and the shared
checks of :mod:`pure_prune.select_inputs`.
"""

from __future__ import annotations

from pure_prune.select_block import block
from pure_prune.select_inputs import Sparsity as Sparsity  # the type of a sparsity argument
from pure_prune.select_lowest_k import lowest_k
from pure_prune.select_structured import channels, n_of_m, rows, unit_norms, units
from pure_prune.select_unstructured import unstructured

__all__ = ["block", "channels", "lowest_k", "n_of_m", "rows", "unit_norms", "units", "unstructured"]
