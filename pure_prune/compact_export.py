"""Export of a (compacted) functional model to a plain ``nn.Module``.

:func:`to_module` wraps ``apply`` with its own copies of ``params`` (as ``nn.Parameter``) and
``state`` (as buffers) in nested submodules named by the tree keys, for ``state_dict``,
``.to(device)``, ``load_state_dict`` and ``torch.optim``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from pure_prune import tree

__all__ = ["to_module"]

Params = Any


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
