"""Hypothesis strategies for pruning code: parameter trees, masks, scores, sparsities, batches.

Needs the optional ``hypothesis`` package (``pip install pure-prune[test]``); ``import pure_prune``
never imports it. Tensor values come from a drawn :mod:`pure_prune.rng` key, so an example is
cheap to draw and shrinks by structure (fewer leaves, smaller shapes) and key::

    from hypothesis import given
    from pure_prune.testing import strategies as pst

    @given(pst.params_trees(), pst.sparsities())
    def test_my_selection(params, s): ...

    @given(pst.params_trees(min_prunable=1).flatmap(lambda p: pst.masks(p)))
    def test_with_masks(masks): ...

Every strategy that depends on an earlier value (``masks(params)``, ``scores(like)``) takes the
tree as an argument; chain them with ``st.data()`` or ``flatmap``.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any

import torch
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from pure_prune import mask, rng, tree
from pure_prune.groups import ChannelGroup, Member

__all__ = [
    "FLOAT_DTYPES",
    "MASK_KINDS",
    "batches",
    "channel_nets",
    "dtypes",
    "keys",
    "masks",
    "params_trees",
    "schedules",
    "scores",
    "shapes",
    "sparsities",
    "tensors",
]

FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16)
MASK_KINDS = ("unstructured", "layer", "rows", "n_of_m", "block")
_KEY_NAMES = ("0", "1", "2", "10", "bias", "bn", "conv", "fc", "layer1", "running_mean", "w", "weight")


# ------------------------------------------------------------------------------------- scalars
def keys() -> st.SearchStrategy[int]:
    """Random keys for :mod:`pure_prune.rng` (non-negative ints below ``2**32``)."""
    return st.integers(0, 2**32 - 1)


def dtypes(choices: Sequence[torch.dtype] = FLOAT_DTYPES) -> st.SearchStrategy[torch.dtype]:
    """One of ``choices`` (default float32, float64, bfloat16; shrinks towards the first)."""
    return st.sampled_from(tuple(choices))


def sparsities(min_value: float = 0.0, max_value: float = 1.0) -> st.SearchStrategy[float]:
    """Sparsities in ``[min_value, max_value]``: any float, biased to the edges and to simple
    fractions (0, 1/2, 1/4, 1/8, ... where ``round(s·N)`` falls on a half and rounds to even)."""
    if not 0.0 <= min_value <= max_value <= 1.0:
        raise InvalidArgument(f"need 0 <= min_value <= max_value <= 1, got {min_value}, {max_value}")
    specials = [
        v for v in (0.0, 1.0, 0.5, 0.25, 0.75, 0.125, 0.375, 0.9, 0.99) if min_value <= v <= max_value
    ]
    floats = st.floats(min_value, max_value, allow_nan=False, allow_infinity=False)
    return st.one_of(st.sampled_from(specials), floats) if specials else floats


def schedules(
    min_size: int = 1,
    max_size: int = 6,
    *,
    min_value: float = 0.0,
    max_value: float = 1.0,
    strict: bool = False,
) -> st.SearchStrategy[list[float]]:
    """Monotone sparsity schedules: non-decreasing lists (strictly increasing with ``strict``)."""
    values = sparsities(min_value, max_value)
    if strict:
        return st.lists(values, min_size=min_size, max_size=max_size, unique=True).map(sorted)
    return st.lists(values, min_size=min_size, max_size=max_size).map(sorted)


# ------------------------------------------------------------------------------------- tensors
@st.composite
def shapes(
    draw: st.DrawFn,
    *,
    min_ndim: int = 0,
    max_ndim: int = 4,
    max_side: int = 4,
    multiple_of: int | Sequence[int] = 1,
    allow_empty: bool = True,
) -> tuple[int, ...]:
    """Tensor shapes with ``min_ndim..max_ndim`` axes of length ``1..max_side`` (size-1 included).

    ``multiple_of`` makes axis ``i`` a multiple of ``multiple_of[i]`` (an int applies to every axis;
    a shorter sequence to the leading axes), e.g. ``(4, 4)`` for 4×4 blocks. With ``allow_empty``
    about one shape in eight has a zero-length axis.
    """
    ndim = draw(st.integers(min_ndim, max_ndim))
    mult = [multiple_of] * ndim if isinstance(multiple_of, int) else list(multiple_of)
    mult = (mult + [1] * ndim)[:ndim]
    shape = [draw(st.integers(1, max(1, max_side // k))) * k for k in mult]
    if allow_empty and ndim and draw(st.integers(0, 7)) == 0:
        shape[draw(st.integers(0, ndim - 1))] = 0
    return tuple(shape)


def _values(key: int, shape: tuple[int, ...], dtype: torch.dtype, kind: str) -> torch.Tensor:
    if kind == "normal":
        return rng.normal(key, shape).to(dtype)
    if kind == "ties":  # a few distinct levels: many exact ties in every dtype
        return torch.randint(0, 3, shape, generator=rng.generator(key)).to(dtype)
    if kind == "distinct":  # a permutation of 0..n-1: no ties
        n = math.prod(shape)
        if dtype == torch.bfloat16 and n > 256:
            raise InvalidArgument(f"bfloat16 cannot hold {n} distinct integers exactly; use float32")
        return torch.randperm(n, generator=rng.generator(key)).to(dtype).reshape(shape)
    raise InvalidArgument(f"values must be 'normal', 'ties' or 'distinct', got {kind!r}")


@st.composite
def tensors(
    draw: st.DrawFn,
    shape: tuple[int, ...] | st.SearchStrategy[tuple[int, ...]] | None = None,
    dtype: torch.dtype | st.SearchStrategy[torch.dtype] | None = None,
    *,
    values: str = "normal",
) -> torch.Tensor:
    """A tensor of ``shape`` and ``dtype`` (drawn from :func:`shapes` / :func:`dtypes` when omitted).

    ``values``: ``"normal"`` (standard normal), ``"ties"`` (integers 0..2, many ties) or
    ``"distinct"`` (a random permutation of ``0..n-1``: tie-free).
    """
    shp = (
        draw(shapes()) if shape is None else (draw(shape) if isinstance(shape, st.SearchStrategy) else shape)
    )
    dt = draw(dtypes()) if dtype is None else (draw(dtype) if isinstance(dtype, st.SearchStrategy) else dtype)
    return _values(draw(keys()), tuple(shp), dt, values)


# ---------------------------------------------------------------------------------------- trees
def _nest(draw: st.DrawFn, leaves: list[Any], depth: int, max_depth: int) -> dict[str, Any]:
    """Distribute ``leaves`` over a dict of depth ``<= max_depth`` with distinct keys per level."""
    if depth >= max_depth:
        n_children = len(leaves)
    else:
        n_children = draw(st.integers(1, len(leaves)))
    names = draw(st.lists(st.sampled_from(_KEY_NAMES), min_size=n_children, max_size=n_children, unique=True))
    cuts = sorted(draw(st.permutations(range(1, len(leaves))))[: n_children - 1])
    bounds = [0, *cuts, len(leaves)]
    out: dict[str, Any] = {}
    for name, lo, hi in zip(names, bounds[:-1], bounds[1:]):
        part = leaves[lo:hi]
        if len(part) == 1 and (depth >= max_depth or draw(st.booleans())):
            out[name] = part[0]
        else:
            out[name] = _nest(draw, part, depth + 1, max_depth)
    return out


@st.composite
def params_trees(
    draw: st.DrawFn,
    *,
    min_leaves: int = 1,
    max_leaves: int = 6,
    max_depth: int = 3,
    min_prunable: int = 0,
    leaf_shapes: st.SearchStrategy[tuple[int, ...]] | None = None,
    prunable_shapes: st.SearchStrategy[tuple[int, ...]] | None = None,
    dtype: st.SearchStrategy[torch.dtype] | None = None,
    none_leaves: bool = True,
) -> dict[str, Any]:
    """Canonical nested-dict parameter trees of random structure.

    Leaves are float tensors drawn from ``leaf_shapes`` (default :func:`shapes`: ndim 0–4, empty
    and size-1 axes included) and ``dtype`` (default :func:`dtypes`), or ``None`` when
    ``none_leaves``. At least ``min_prunable`` leaves are prunable by
    :func:`pure_prune.mask.default_prunable` (ndim >= 2), with shapes from ``prunable_shapes``
    (default ``shapes(min_ndim=2)``). Depth is at most ``max_depth`` dict levels; keys mimic real
    models (``"0"``, ``"10"``, ``"bias"``, ``"weight"``, ...), inserted in sorted order.
    """
    if not 1 <= min_leaves <= max_leaves or min_prunable > max_leaves:
        raise InvalidArgument(
            f"bad leaf counts: min_leaves={min_leaves}, max_leaves={max_leaves}, min_prunable={min_prunable}"
        )
    any_shape = shapes() if leaf_shapes is None else leaf_shapes
    big_shape = shapes(min_ndim=2) if prunable_shapes is None else prunable_shapes
    dt = dtypes() if dtype is None else dtype
    n = draw(st.integers(max(min_leaves, min_prunable), max_leaves))
    leaves: list[Any] = []
    for i in range(n):
        if i < min_prunable:
            shape = draw(big_shape)
            if len(shape) < 2:
                raise InvalidArgument(f"prunable_shapes drew {shape}; prunable leaves need ndim >= 2")
        elif none_leaves and draw(st.integers(0, 4)) == 0:
            leaves.append(None)
            continue
        else:
            shape = draw(any_shape)
        leaves.append(_values(draw(keys()), shape, draw(dt), "normal"))
    order = draw(st.permutations(range(n)))
    return tree.canonical(_nest(draw, [leaves[i] for i in order], 1, max_depth))


# ---------------------------------------------------------------------------------------- masks
def _prune_entries(mask_: torch.Tensor, flat_idx: torch.Tensor) -> torch.Tensor:
    out = mask_.clone().reshape(-1)
    out[flat_idx] = False
    return out.reshape(mask_.shape)


def _unstructured(
    base: list[torch.Tensor | None], s: float, key: int, scope: str
) -> list[torch.Tensor | None]:
    live = [m for m in base if m is not None]
    if scope == "layer":
        out = []
        for i, m in enumerate(base):
            if m is None:
                out.append(None)
                continue
            k = int(round(s * m.numel()))
            perm = torch.randperm(m.numel(), generator=rng.generator(rng.fold_in(key, i)))
            out.append(_prune_entries(m, perm[:k]))
        return out
    total = sum(m.numel() for m in live)
    k = int(round(s * total))
    chosen = torch.zeros(total, dtype=torch.bool)
    chosen[torch.randperm(total, generator=rng.generator(key))[:k]] = True
    out, offset = [], 0
    for m in base:
        if m is None:
            out.append(None)
            continue
        out.append(~chosen[offset : offset + m.numel()].reshape(m.shape))
        offset += m.numel()
    return out


def _rows(m: torch.Tensor, s: float, key: int, axis: int) -> torch.Tensor:
    size = m.shape[axis]
    gone = torch.randperm(size, generator=rng.generator(key))[: int(round(s * size))]
    keep = torch.ones(size, dtype=torch.bool)
    keep[gone] = False
    shape = [1] * m.ndim
    shape[axis] = size
    return keep.reshape(shape).expand(m.shape).clone()


def _n_of_m(mk: torch.Tensor, n: int, m: int, key: int, axis: int) -> torch.Tensor:
    moved = torch.movedim(mk, axis, -1)
    groups = moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)
    noise = torch.rand(groups.shape, generator=rng.generator(key))
    rank = torch.argsort(torch.argsort(noise, dim=-1), dim=-1)
    keep = (rank < n).reshape(moved.shape)
    return torch.movedim(keep, -1, axis).contiguous()


def _blocks(
    base: list[torch.Tensor | None], s: float, key: int, block_shape: tuple[int, int]
) -> list[torch.Tensor | None]:
    """``round(s · B)`` of all ``B`` blocks of the leaves pruned, chosen at random across leaves."""
    bh, bw = block_shape
    grids = [None if m is None else (m.shape[0] // bh, m.shape[1] // bw) for m in base]
    total = sum(r * c for g in grids if g is not None for r, c in [g])
    keep = torch.ones(total, dtype=torch.bool)
    keep[torch.randperm(total, generator=rng.generator(key))[: int(round(s * total))]] = False
    out, offset = [], 0
    for m, g in zip(base, grids):
        if m is None:
            out.append(None)
            continue
        r, c = g
        part = keep[offset : offset + r * c].reshape(r, c).repeat_interleave(bh, 0).repeat_interleave(bw, 1)
        offset += r * c
        out.append(part.reshape(*part.shape, *([1] * (m.ndim - 2))).expand(m.shape).clone())
    return out


@st.composite
def masks(
    draw: st.DrawFn,
    params: Any,
    sparsity: float | st.SearchStrategy[float] | None = None,
    *,
    kind: str | None = None,
    prunable: mask.Prunable = mask.default_prunable,
    axis: int | None = None,
    n_m: tuple[int, int] = (2, 4),
    block_shape: tuple[int, int] = (2, 2),
) -> Any:
    """Random masks for ``params`` (prunable leaves chosen by ``prunable``), exact by construction.

    ``kind`` (drawn from the kinds the leaves allow when ``None``):

    * ``"unstructured"``: exactly ``round(s · N)`` of all ``N`` prunable entries pruned;
    * ``"layer"``: ``round(s · N_l)`` pruned in every leaf;
    * ``"rows"``: ``round(s · size)`` whole slices along ``axis`` (default 0) in every leaf;
    * ``"n_of_m"``: ``n`` of every ``m`` consecutive entries along ``axis`` (default -1) kept
      (``n_m = (n, m)``; ``sparsity`` is ignored; needs ``m`` to divide that axis);
    * ``"block"``: ``round(s · B)`` of all ``B`` ``block_shape`` blocks of the first two axes pruned.

    ``sparsity`` defaults to :func:`sparsities`. Pruned positions are random (from a drawn key),
    independent of any score, so tests of ``pure_prune.select`` do not check it against itself.
    ``params`` needs a prunable leaf (``params_trees(min_prunable=1)``): ``mask.ones_like`` raises
    ``ValueError`` otherwise.
    """
    ones = mask.ones_like(params, prunable)
    base = tree.leaves(ones)
    live = [m for m in base if m is not None]
    row_axis = 0 if axis is None else axis
    nm_axis = -1 if axis is None else axis
    if kind is None:
        allowed = ["unstructured", "layer"]
        if all(-m.ndim <= row_axis < m.ndim for m in live):
            allowed.append("rows")
        mm = n_m[1]
        if all(-m.ndim <= nm_axis < m.ndim and m.shape[nm_axis] % mm == 0 for m in live):
            allowed.append("n_of_m")
        bh, bw = block_shape
        if all(m.ndim >= 2 and m.shape[0] % bh == 0 and m.shape[1] % bw == 0 for m in live):
            allowed.append("block")
        kind = draw(st.sampled_from(allowed))
    if kind not in MASK_KINDS:
        raise InvalidArgument(f"kind must be one of {MASK_KINDS}, got {kind!r}")
    if sparsity is None:
        s = draw(sparsities())
    else:
        s = draw(sparsity) if isinstance(sparsity, st.SearchStrategy) else float(sparsity)
    key = draw(keys())
    if kind in ("unstructured", "layer"):
        out = _unstructured(base, s, key, "global" if kind == "unstructured" else "layer")
    elif kind == "block":
        out = _blocks(base, s, key, block_shape)
    else:
        out = []
        for i, m in enumerate(base):
            k = rng.fold_in(key, i)
            if m is None:
                out.append(None)
            elif kind == "rows":
                out.append(_rows(m, s, k, row_axis % m.ndim))
            else:
                out.append(_n_of_m(m, n_m[0], n_m[1], k, nm_axis % m.ndim))
    return tree.unflatten(tree.structure(ones), out)


# --------------------------------------------------------------------------------------- scores
@st.composite
def scores(
    draw: st.DrawFn,
    like: Any,
    *,
    ties: bool = False,
    dtype: torch.dtype | st.SearchStrategy[torch.dtype] | None = None,
) -> Any:
    """A score tree for ``like`` (a mask tree, or any tree): a float tensor of the leaf's shape
    wherever ``like`` has a tensor, ``None`` elsewhere.

    ``ties=False``: all values distinct across the whole tree (a random permutation of
    ``arange(N)``, shifted by a drawn offset so some are negative), so every ranking is unique.
    ``ties=True``: values from three levels, so ties abound. ``dtype`` defaults to float32 or
    float64 (tie-free) and any of :data:`FLOAT_DTYPES` (with ties).
    """
    names, leaves, spec = tree.flatten_with_paths(like)
    if dtype is None:
        dt = draw(dtypes((torch.float32, torch.float64) if not ties else FLOAT_DTYPES))
    else:
        dt = draw(dtype) if isinstance(dtype, st.SearchStrategy) else dtype
    key = draw(keys())
    sizes = [x.numel() if isinstance(x, torch.Tensor) else 0 for x in leaves]
    total = sum(sizes)
    if ties:
        flat = torch.randint(0, 3, (total,), generator=rng.generator(key)).to(dt)
    else:
        if dt == torch.bfloat16 and total > 256:
            raise InvalidArgument(f"bfloat16 cannot hold {total} distinct integers exactly; use float32")
        offset = draw(st.integers(0, max(0, total)))
        flat = (torch.randperm(total, generator=rng.generator(key)) - offset).to(dt)
    out, start = [], 0
    for x, size in zip(leaves, sizes):
        if not isinstance(x, torch.Tensor):
            out.append(None)
            continue
        out.append(flat[start : start + size].reshape(x.shape).clone())
        start += size
    return tree.unflatten(spec, out)


# ------------------------------------------------------------------------------ channel networks
@st.composite
def channel_nets(
    draw: st.DrawFn,
    *,
    max_hidden: int = 3,
    max_width: int = 5,
    conv_stem: bool | None = None,
    gated: bool | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[dict[str, Any], tuple[ChannelGroup, ...]]:
    """Hand-built MLP-like parameter trees with their channel groups: ``(params, groups)``.

    ``[conv stem] -> fc0 -> ... -> fc{k-1} -> [gated cell] -> head``:

    * conv stem ``conv.weight (C, cin, 2, 2)``, ``conv.bias (C,)`` flattened from a ``(C, H, W)``
      map into ``fc0.weight (h0, C·H·W)``: group ``"conv"`` with member ``inner = H·W``;
    * hidden linears ``fc{i}.weight (h_i, h_{i-1})``, ``fc{i}.bias (h_i,)``: group ``"fc{i}"``
      (rows of fc{i}, its bias, columns of the next layer);
    * gated cell ``cell.w_ih (4H, ·)``, ``cell.w_hh (4H, H)``: group ``"cell"`` with the stacked
      gate rows as members with ``outer=4``, plus the ``w_hh`` and ``head.weight`` columns.
    """
    use_conv = draw(st.booleans()) if conv_stem is None else conv_stem
    use_gate = draw(st.booleans()) if gated is None else gated
    key = draw(keys())
    width = st.integers(1, max_width)
    params: dict[str, Any] = {}
    groups: list[ChannelGroup] = []

    def leaf(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        return rng.normal(rng.fold_in(key, zlib.crc32(name.encode())), shape).to(dtype)

    prev_members: list[Member] = []  # members of the group feeding the next layer (minus its consumer)
    prev_name, prev_size, fan_in = None, 0, draw(width)
    if use_conv:
        c, hw = draw(width), draw(st.integers(1, 4))
        params["conv"] = {"bias": leaf("conv.bias", (c,)), "weight": leaf("conv.weight", (c, fan_in, 2, 2))}
        prev_name, prev_size, fan_in = "conv", c, c * hw
        prev_members = [Member("conv.weight", 0), Member("conv.bias", 0)]
        inner = hw
    else:
        inner = 1
    n_hidden = draw(st.integers(1, max_hidden))
    for i in range(n_hidden):
        h, name = draw(width), f"fc{i}"
        params[name] = {"bias": leaf(f"{name}.bias", (h,)), "weight": leaf(f"{name}.weight", (h, fan_in))}
        if prev_name is not None:
            consumer = Member(f"{name}.weight", 1, inner=inner)
            groups.append(ChannelGroup(prev_name, prev_size, (*prev_members, consumer)))
        prev_name, prev_size, fan_in, inner = name, h, h, 1
        prev_members = [Member(f"{name}.weight", 0), Member(f"{name}.bias", 0)]
    if use_gate:
        hid = draw(width)
        params["cell"] = {
            "w_hh": leaf("cell.w_hh", (4 * hid, hid)),
            "w_ih": leaf("cell.w_ih", (4 * hid, fan_in)),
        }
        groups.append(ChannelGroup(prev_name, prev_size, (*prev_members, Member("cell.w_ih", 1))))
        prev_name, prev_size, fan_in = "cell", hid, hid
        prev_members = [
            Member("cell.w_ih", 0, outer=4),
            Member("cell.w_hh", 0, outer=4),
            Member("cell.w_hh", 1),
        ]
    out = draw(width)
    params["head"] = {"bias": leaf("head.bias", (out,)), "weight": leaf("head.weight", (out, fan_in))}
    groups.append(ChannelGroup(prev_name, prev_size, (*prev_members, Member("head.weight", 1))))
    return tree.canonical(params), tuple(groups)


# -------------------------------------------------------------------------------------- batches
_VOCAB_KEYS = ("vocab", "vocab_size", "num_tokens")


def _num_outputs(spec: Any, shape: tuple[int, ...], dtype: torch.dtype, vocab: int | None) -> int:
    """Classes of a model: ``num_classes`` in its config, its vocabulary, else read off one forward
    pass of the default model (``init(0)``, one all-zero example)."""
    cfg = spec.default_cfg
    if "num_classes" in cfg:
        return int(cfg["num_classes"])
    if vocab is not None:
        return vocab
    params, state = spec.init(0)
    out = spec.apply(params, state, torch.zeros((1, *shape), dtype=dtype), train=False)
    return int(out[0].shape[-1])


def batches(
    spec: Any,
    *,
    min_size: int = 1,
    max_size: int = 4,
    num_outputs: int | None = None,
) -> st.SearchStrategy[tuple[torch.Tensor, torch.Tensor]]:
    """``(x, y)`` batches that fit a model of :mod:`pure_prune.models` in its default config.

    ``spec`` is a ``ModelSpec`` (``.input_shape``: one example's shape; ``.default_cfg``; optional
    ``.input_dtype``, default float32). ``x`` has shape ``(B, *input_shape)``, ``min_size <= B <=
    max_size``: standard-normal floats, or, for an integer ``input_dtype``, token ids in
    ``[0, vocab)`` (``vocab`` from ``default_cfg``: ``vocab``, ``vocab_size`` or ``num_tokens``).
    ``y`` is int64 labels in ``[0, num_outputs)``: shape ``(B,)`` for float inputs, the shape of
    ``x`` (next-token targets) for token inputs. ``num_outputs`` defaults to ``default_cfg``'s
    ``num_classes``, else the vocabulary, else the last axis of the default model's output.
    """
    shape = tuple(int(d) for d in spec.input_shape)
    dtype = getattr(spec, "input_dtype", torch.float32)
    tokens = not (dtype.is_floating_point or dtype.is_complex)
    vocab = next((int(spec.default_cfg[k]) for k in _VOCAB_KEYS if k in spec.default_cfg), None)
    if tokens and vocab is None:
        raise InvalidArgument(
            f"batches: model {getattr(spec, 'name', spec)!r} takes {dtype} tokens but its default_cfg "
            f"{sorted(spec.default_cfg)} names no vocabulary ({', '.join(_VOCAB_KEYS)})"
        )
    classes = num_outputs if num_outputs is not None else _num_outputs(spec, shape, dtype, vocab)
    if not 1 <= min_size <= max_size:
        raise InvalidArgument(f"need 1 <= min_size <= max_size, got {min_size}, {max_size}")

    @st.composite
    def draw_batch(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
        b = draw(st.integers(min_size, max_size))
        key_x, key_y = rng.split(draw(keys()), 2)
        if tokens:
            x = torch.randint(0, vocab, (b, *shape), generator=rng.generator(key_x)).to(dtype)
            y = torch.randint(0, classes, (b, *shape), generator=rng.generator(key_y))
        else:
            x = rng.normal(key_x, (b, *shape)).to(dtype)
            y = torch.randint(0, classes, (b,), generator=rng.generator(key_y))
        return x, y

    return draw_batch()
