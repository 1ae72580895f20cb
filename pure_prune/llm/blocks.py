"""A decoder described block by block: what the calibration engine needs to run and prune a model.

One-shot LLM pruning (SparseGPT, Wanda, OWL) runs a model one residual block at a time and reads
the input of every linear layer inside each block. A :class:`BlockModel` says how, with pure
functions over the ordinary parameter tree (no hooks, no module state):

* ``embed(params, tokens) -> h``: token ids ``(N, T)`` int64 to the residual stream ``(N, T, D)``;
* ``block(block_params, h) -> (h_out, taps)``: one block, ``(N, T, D) -> (N, T, D)``, returning also
  ``taps``, a dict ``{tap name: (N, T, in_features) tensor}``: the input each linear layer reads;
* ``head(params, h) -> logits``: final norm and output projection, ``(N, T, D) -> (N, T, V)``;
* ``block_paths(params) -> [path, ...]``: the dotted paths of the blocks' subtrees, in the order
  they run (e.g. ``["blocks.0", "blocks.1", ...]``);
* ``linears``: ``{linear name: (weight path inside the block, tap name)}``, e.g.
  ``{"attn.q": ("attn.q.weight", "attn_in"), ...}``; linears that read the same tensor share a
  tap, so their input statistics are gathered once;
* ``stages``: optional order of sub-blocks for the sequential scheme inside a block (e.g.
  ``(("attn.q", "attn.k", "attn.v"), ("attn.o",), ("mlp.gate", "mlp.up"), ("mlp.down",))``):
  each stage is calibrated on the outputs of the already-pruned stages before it. Empty: the
  whole block at once, on the dense block's inputs (as Wanda and SparseGPT's reference runs do).

Weights are ``(out_features, in_features)`` with ``y = x Wᵀ``. :func:`subtree` and
:func:`replace` read and functionally update a subtree by dotted path. :func:`from_llama` describes
``pure_prune.models.llama`` (passed in: the library never imports the model zoo).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["LLAMA_STAGES", "BlockModel", "from_llama", "replace", "subtree"]

Params = Any


@dataclass(frozen=True)
class BlockModel:
    """See the module docstring."""

    embed: Callable[[Params, torch.Tensor], torch.Tensor]
    block: Callable[[Params, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]
    head: Callable[[Params, torch.Tensor], torch.Tensor]
    block_paths: Callable[[Params], Sequence[str]]
    linears: Mapping[str, tuple[str, str]]
    stages: tuple[tuple[str, ...], ...] = field(default=())

    def stage_list(self) -> tuple[tuple[str, ...], ...]:
        """The stages, checked: every linear in exactly one stage (one stage of all by default)."""
        if not self.stages:
            return (tuple(self.linears),)
        listed = [name for stage in self.stages for name in stage]
        unknown = sorted(set(listed) - set(self.linears))
        missing = sorted(set(self.linears) - set(listed))
        repeated = sorted({n for n in listed if listed.count(n) > 1})
        if unknown or missing or repeated:
            raise ValueError(
                f"BlockModel.stages must list every linear once: unknown {unknown}, missing {missing}, "
                f"repeated {repeated}"
            )
        return tuple(tuple(stage) for stage in self.stages)

    def forward(self, params: Params, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, T, V)`` of the whole model run block by block (for checks and perplexity)."""
        h = self.embed(params, tokens)
        for path in self.block_paths(params):
            h = self.block(subtree(params, path), h)[0]
        return self.head(params, h)


def subtree(tree: Any, path: str) -> Any:
    """The node at dotted ``path`` of a nested dict/list tree; ``KeyError`` naming the path."""
    node = tree
    for key in path.split(".") if path else ():
        try:
            node = node[int(key)] if isinstance(node, (list, tuple)) else node[key]
        except (KeyError, IndexError, ValueError, TypeError):
            raise KeyError(f"no node {path!r} in the tree (missing at {key!r})") from None
    return node


def replace(tree: Any, path: str, value: Any) -> Any:
    """A copy of ``tree`` with the node at dotted ``path`` set to ``value``.

    Only the dicts/lists along the path are copied; every other subtree and tensor is shared
    (nothing is modified in place). ``KeyError`` when the path does not exist.
    """
    if not path:
        return value
    key, _, rest = path.partition(".")
    if isinstance(tree, (list, tuple)):
        i = int(key)
        items = list(tree)
        if not 0 <= i < len(items):
            raise KeyError(f"no node {path!r} in the tree (index {key!r} out of range)")
        items[i] = replace(items[i], rest, value)
        return type(tree)(items)
    if not isinstance(tree, Mapping) or key not in tree:
        raise KeyError(f"no node {path!r} in the tree (missing at {key!r})")
    return {k: (replace(v, rest, value) if k == key else v) for k, v in tree.items()}


LLAMA_STAGES = (("attn.q", "attn.k", "attn.v"), ("attn.o",), ("mlp.gate", "mlp.up"), ("mlp.down",))


def from_llama(llama: Any, state: Mapping[str, Any], *, sequential: bool = False) -> BlockModel:
    """The :class:`BlockModel` of the LLaMA-style decoder ``llama`` (the module
    ``pure_prune.models.llama``) with rotary tables ``state``.

    Uses its per-block interface (``embed``, ``block(..., capture=True)``, ``head``, ``rope``,
    ``block_names``, ``LINEARS``): q, k and v read one tensor (tap ``"attn.q"``), gate and up
    another (tap ``"mlp.gate"``). ``sequential=True`` prunes each block in the stages of
    :data:`LLAMA_STAGES` (q/k/v, then o on the pruned attention's inputs, then gate/up, then down).
    """
    shared = {"attn.k": "attn.q", "attn.v": "attn.q", "mlp.up": "mlp.gate"}
    linears = {name: (f"{name}.weight", shared.get(name, name)) for name in llama.LINEARS}

    def block(params_block: Params, h: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cos, sin = llama.rope(state, h.shape[1])
        return llama.block(params_block, h, (cos.to(h.device), sin.to(h.device)), capture=True)

    return BlockModel(
        embed=llama.embed,
        block=block,
        head=llama.head,
        block_paths=llama.block_names,
        linears=linears,
        stages=LLAMA_STAGES if sequential else (),
    )
