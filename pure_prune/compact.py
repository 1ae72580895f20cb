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

Which unit is removable: see :mod:`pure_prune.compact_units`. The forms live in modules of their
own, all re-exported here: :mod:`pure_prune.compact_units` (compaction, expansion, channels_last),
:mod:`pure_prune.compact_sparse` (CSR and 2:4 kernels), :mod:`pure_prune.compact_export` (``nn.Module``).
"""

from __future__ import annotations

from pure_prune.compact_export import to_module
from pure_prune.compact_sparse import csr_apply, measure_crossover, to_csr, to_semi_structured
from pure_prune.compact_units import Params as Params
from pure_prune.compact_units import compact, expand, kept_units, to_channels_last

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
