"""A copy of an ``nn.Module`` of the same class whose layers hold smaller (compacted) tensors.

:func:`resized` deep-copies the module, puts the given parameters and buffers in (tied parameters
stay one ``nn.Parameter`` under every name) and updates the size attributes that the layers read
in ``forward`` and ``extra_repr``:

* ``nn.Linear`` (``in_features``, ``out_features``), ``nn.Conv1d/2d/3d`` (``in_channels``,
  ``out_channels``, ``groups`` scaled with the output channels when a grouped or depthwise conv
  lost whole groups), ``nn.BatchNorm*``/``nn.InstanceNorm*`` (``num_features``), ``nn.LayerNorm``
  and ``nn.RMSNorm`` (``normalized_shape``), ``nn.GroupNorm`` (``num_channels``), ``nn.Embedding``
  (``num_embeddings``, ``embedding_dim``);
* transformers' ``Conv1D`` (GPT-2; ``nf``, ``nx``), recognised by those attributes;
* attention modules that keep head counts in attributes (transformers' BERT, ViT, GPT-2, Llama,
  Qwen2, Mixtral...): ``num_heads``/``num_attention_heads``/``n_head``/``all_head_size``/
  ``split_size`` scale with the query projection's output width, ``num_key_value_heads`` with the
  key projection's, ``num_key_value_groups`` with their ratio; the per-head size stays;
* MLP and expert modules: ``intermediate_size``/``intermediate_dim``/``ffn_dim`` follow the
  down projection's input width.

Any other attribute keeps its value, so a module that sizes its tensors from other attributes
(``nn.MultiheadAttention``'s ``embed_dim``/``num_heads`` check, a config read in ``forward``) may
fail or compute something else; ``trace_groups``' verification leaves such groups out.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from fractions import Fraction

import torch
from torch import nn

__all__ = ["resized"]

_QUERY = ("q_proj", "query", "q", "q_lin", "c_attn", "qkv", "in_proj", "Wqkv")
_KEY = ("k_proj", "key", "k", "k_lin")
_DOWN = ("down_proj", "fc2", "c_proj", "w2", "dense_4h_to_h")
_BY_QUERY = ("num_heads", "num_attention_heads", "n_head", "n_heads", "all_head_size", "split_size")
_BY_KEY = ("num_key_value_heads", "num_kv_heads", "n_kv_heads")
_INTERMEDIATE = ("intermediate_size", "intermediate_dim", "ffn_dim")


def _out_width(layer: nn.Module) -> int | None:
    w = getattr(layer, "weight", None)
    if not isinstance(w, torch.Tensor) or w.ndim < 2:
        return None
    return int(w.shape[1]) if hasattr(layer, "nf") and hasattr(layer, "nx") else int(w.shape[0])


def _in_width(layer: nn.Module) -> int | None:
    w = getattr(layer, "weight", None)
    if not isinstance(w, torch.Tensor) or w.ndim < 2:
        return None
    return int(w.shape[0]) if hasattr(layer, "nf") and hasattr(layer, "nx") else int(w.shape[1])


def _child(module: nn.Module, names: tuple[str, ...]) -> nn.Module | None:
    for n in names:
        c = getattr(module, n, None)
        if isinstance(c, nn.Module):
            return c
    return None


def _ratio(old: nn.Module | None, new: nn.Module | None, width) -> Fraction | None:
    if old is None or new is None:
        return None
    a, b = width(old), width(new)
    return None if a is None or b is None or a == 0 else Fraction(b, a)


def _scaled(path: str, attr: str, value: int, ratio: Fraction) -> int:
    v = value * ratio
    if v.denominator != 1 or v < 1:
        raise ValueError(
            f"resize: {path or 'the module'}.{attr} = {value} scaled by {ratio} is {float(v):g}, not a positive integer"
        )
    return int(v)


def _check_len(path: str, sub: nn.Module, names: tuple[str, ...], expected: int) -> None:
    for n in names:
        t = getattr(sub, n, None)
        if isinstance(t, torch.Tensor) and t.ndim >= 1 and t.shape[0] != expected:
            kind = "params" if n in sub._parameters else "state"
            raise ValueError(
                f"{kind} leaf {(path + '.' if path else '') + n!r} has shape {tuple(t.shape)}, but its layer "
                f"{path or 'the module'} ({type(sub).__name__}) has {expected} units: the trees do not fit the module"
            )


def _update_layer(path: str, old: nn.Module, new: nn.Module) -> None:
    """Set ``new``'s size attributes from its tensors (``old`` is the unresized twin)."""
    if isinstance(new, nn.Linear):
        new.out_features, new.in_features = (int(s) for s in new.weight.shape)
        _check_len(path, new, ("bias",), new.out_features)
    elif isinstance(new, nn.modules.conv._ConvNd) and not new.transposed:
        if tuple(new.weight.shape[2:]) != tuple(old.weight.shape[2:]):
            raise ValueError(
                f"params leaf {path + '.weight'!r} has shape {tuple(new.weight.shape)}, the module's has "
                f"{tuple(old.weight.shape)}: a kernel window cannot change"
            )
        out_c = int(new.weight.shape[0])
        if old.groups > 1:
            new.groups = _scaled(path, "groups", old.groups, Fraction(out_c, old.out_channels))
        new.out_channels = out_c
        new.in_channels = int(new.weight.shape[1]) * new.groups
        _check_len(path, new, ("bias",), out_c)
    elif isinstance(new, (nn.modules.batchnorm._NormBase,)):
        ref = new.weight if new.weight is not None else new.running_mean
        if ref is not None:
            new.num_features = int(ref.shape[0])
            _check_len(path, new, ("weight", "bias", "running_mean", "running_var"), new.num_features)
    elif isinstance(new, (nn.LayerNorm, nn.RMSNorm)):
        if new.weight is not None:
            new.normalized_shape = tuple(int(s) for s in new.weight.shape)
            _check_len(path, new, ("bias",), new.normalized_shape[0])
    elif isinstance(new, nn.GroupNorm):
        if new.weight is not None:
            new.num_channels = int(new.weight.shape[0])
            _check_len(path, new, ("bias",), new.num_channels)
    elif isinstance(new, nn.Embedding):
        new.num_embeddings, new.embedding_dim = (int(s) for s in new.weight.shape)
    elif hasattr(new, "nf") and hasattr(new, "nx") and isinstance(getattr(new, "weight", None), torch.Tensor):
        new.nx, new.nf = (int(s) for s in new.weight.shape)
        _check_len(path, new, ("bias",), new.nf)
    _update_heads(path, old, new)
    _update_intermediate(path, old, new)


def _update_heads(path: str, old: nn.Module, new: nn.Module) -> None:
    rq = _ratio(_child(old, _QUERY), _child(new, _QUERY), _out_width)
    rk = _ratio(_child(old, _KEY), _child(new, _KEY), _out_width)
    if rq is not None and rq != 1:
        for attr in _BY_QUERY:
            if isinstance(getattr(old, attr, None), int) and not isinstance(getattr(old, attr), bool):
                setattr(new, attr, _scaled(path, attr, getattr(old, attr), rq))
    if rk is not None and rk != 1:
        for attr in _BY_KEY:
            if isinstance(getattr(old, attr, None), int) and not isinstance(getattr(old, attr), bool):
                setattr(new, attr, _scaled(path, attr, getattr(old, attr), rk))
    groups = getattr(old, "num_key_value_groups", None)
    if isinstance(groups, int) and (rq or 1) != (rk or 1):
        new.num_key_value_groups = _scaled(
            path, "num_key_value_groups", groups, (rq or Fraction(1)) / (rk or Fraction(1))
        )


def _update_intermediate(path: str, old: nn.Module, new: nn.Module) -> None:
    attrs = [a for a in _INTERMEDIATE if isinstance(getattr(old, a, None), int)]
    if not attrs:
        return
    ratio = None
    own_old = getattr(old, "down_proj", None)
    own_new = getattr(new, "down_proj", None)
    if isinstance(own_old, torch.Tensor) and isinstance(own_new, torch.Tensor):
        ratio = Fraction(int(own_new.shape[-1]), int(own_old.shape[-1]))
    else:
        ratio = _ratio(_child(old, _DOWN), _child(new, _DOWN), _in_width)
    if ratio is not None and ratio != 1:
        for attr in attrs:
            setattr(new, attr, _scaled(path, attr, getattr(old, attr), ratio))


def resized(
    module: nn.Module, params: Mapping[str, torch.Tensor], buffers: Mapping[str, torch.Tensor]
) -> nn.Module:
    """A deep copy of ``module`` holding ``params``/``buffers`` (``{dotted name: tensor}``, the
    module's names, tied parameters once) with its layers' size attributes updated (module docstring).

    ``params`` must name every parameter and ``buffers`` every buffer (callers check names, dtypes
    and ranks). Returns the new module (same class, same training flag, parameters keep
    ``requires_grad``); ``module`` is not modified. Raises ``ValueError`` naming the leaf when the
    tensors of one layer disagree (a bias longer than its weight's rows, BatchNorm statistics of
    another length) or a head count would not be an integer.
    """
    new = copy.deepcopy(module)
    by_id: dict[int, list[str]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    aliases = {names[0]: names for names in by_id.values()}
    for name, value in params.items():
        old = module.get_parameter(name)
        param = nn.Parameter(value.detach().clone(), requires_grad=old.requires_grad)
        for alias in aliases.get(name, [name]):
            mod_path, _, leaf = alias.rpartition(".")
            new.get_submodule(mod_path)._parameters[leaf] = param
    for name, value in buffers.items():
        mod_path, _, leaf = name.rpartition(".")
        new.get_submodule(mod_path)._buffers[leaf] = value.detach().clone()
    olds = dict(module.named_modules(remove_duplicate=False))
    for path, sub in new.named_modules(remove_duplicate=False):
        _update_layer(path, olds[path], sub)
    return new
