"""Per-unit weight statistics (the ``enhanced`` importance): the weights and cooperation families.

Every function takes ``params`` and a sequence of :class:`~pure_prune.groups.ChannelGroup` and
returns ``{group name: (size,) float tensor}`` (dtype float32 or wider), one value per unit, higher
meaning more important after fusion (:mod:`pure_prune.importance.fusion` normalises each statistic
per group before weighting). ``masks`` (optional, a tree like ``params``) zeroes pruned entries
first: the statistics are those of ``theta = W * M``.

Which entries a unit owns (see :mod:`pure_prune.groups`):

* its **incoming** vector ``w_u``: the concatenation, over the group's members marked
  ``score=True``, of the rows ``member_view(theta, member, size)[u]`` (a linear layer's weight row,
  a conv filter ``(in, kh, kw)``, an LSTM unit's four gate rows, ...);
* its **outgoing** vector ``o_u``: the same over the *consumer* members, i.e. members with
  ``score=False`` whose leaf has two or more dimensions (the next layer's input columns, an LSTM's
  recurrent columns). The producer's bias and BatchNorm vectors are 1-D and therefore excluded;
  ``"state."`` members (running statistics) are always skipped.

Weights family (0.3·L2 + 0.2·variance + 0.2·non-zero ratio + 0.2·entropy + 0.1·effective
rank) over ``w_u`` of length ``n``: see :func:`weight_l2`, :func:`weight_variance`,
:func:`weight_nonzero_ratio`, :func:`weight_entropy`, :func:`effective_rank`.

Cooperation family (0.3·connection strength + 0.3·uniqueness + 0.2·degree centrality + 0.2·
cooperation ability): :func:`connection_strength`, :func:`uniqueness`, :func:`degree_centrality`,
:func:`cooperation_ability`. :func:`weight_stats` and :func:`cooperation_stats` return a whole
family as ``{statistic: {group: (size,)}}``, the input of :func:`fusion.family_score`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from einops import rearrange, reduce

from pure_prune import tree
from pure_prune.groups import ChannelGroup, Member, member_view

__all__ = [
    "connection_strength",
    "cooperation_ability",
    "cooperation_stats",
    "degree_centrality",
    "effective_rank",
    "uniqueness",
    "weight_entropy",
    "weight_l2",
    "weight_nonzero_ratio",
    "weight_stats",
    "weight_variance",
]

Groups = Sequence[ChannelGroup]
Units = dict[str, torch.Tensor]


# ------------------------------------------------------------------------------------- plumbing
def _theta(where: str, params: tree.Tree, masks: tree.Tree | None) -> dict[str, torch.Tensor]:
    """``{path: W * M}`` in float32 or wider; ``ValueError``/``TypeError`` naming the leaf on bad input."""
    paths, leaves, _ = tree.flatten_with_paths(params)
    m_leaves = [None] * len(leaves)
    if masks is not None:
        tree.assert_same_structure(params, masks, ("params", "masks"))
        m_leaves = tree.leaves(masks)
    out = {}
    for p, w, m in zip(paths, leaves, m_leaves):
        if w is None:
            continue
        if not isinstance(w, torch.Tensor) or not w.is_floating_point():
            what = w.dtype if isinstance(w, torch.Tensor) else type(w).__name__
            raise TypeError(f"{where}: param {p!r} must be a floating-point tensor, got {what}")
        w = w.detach().to(torch.promote_types(w.dtype, torch.float32))
        if m is not None:
            if not isinstance(m, torch.Tensor) or m.dtype != torch.bool or m.shape != w.shape:
                what = (m.dtype, tuple(m.shape)) if isinstance(m, torch.Tensor) else type(m).__name__
                raise ValueError(
                    f"{where}: mask {p!r} must be a bool tensor of shape {tuple(w.shape)}, got {what}"
                )
            w = w * m.to(w.dtype)
        out[p] = w
    return out


def _check_groups(where: str, groups: Groups) -> None:
    if isinstance(groups, ChannelGroup) or not isinstance(groups, Sequence):
        raise TypeError(f"{where}: groups must be a sequence of ChannelGroup, got {type(groups).__name__}")
    for g in groups:
        if not isinstance(g, ChannelGroup):
            raise TypeError(f"{where}: groups must hold ChannelGroup, got {type(g).__name__}")


def _members(where: str, index: dict[str, torch.Tensor], g: ChannelGroup, incoming: bool) -> list[Member]:
    """The group's incoming (``score=True``) or outgoing (consumer) members, leaves checked."""
    out = []
    for mem in g.members:
        if mem.path.startswith("state."):
            continue
        if mem.path not in index:
            raise ValueError(f"{where}: group {g.name!r} member {mem.path!r} is not a leaf of params")
        if incoming and mem.score:
            out.append(mem)
        elif not incoming and not mem.score and index[mem.path].ndim >= 2:
            out.append(mem)
    if not out:
        kind = "scored (incoming)" if incoming else "consumer (outgoing, score=False, ndim >= 2)"
        raise ValueError(f"{where}: group {g.name!r} has no {kind} member in params")
    return out


def _vectors(where: str, index: dict[str, torch.Tensor], g: ChannelGroup, incoming: bool) -> torch.Tensor:
    """``(size, n)``: each unit's incoming or outgoing entries, members concatenated in group order."""
    rows = [member_view(index[m.path], m, g.size) for m in _members(where, index, g, incoming)]
    return rows[0] if len(rows) == 1 else torch.cat(rows, dim=1)


def _per_group(
    where: str, params: tree.Tree, groups: Groups, masks: tree.Tree | None, fn, incoming: bool
) -> Units:
    _check_groups(where, groups)
    index = _theta(where, params, masks)
    return {g.name: fn(_vectors(where, index, g, incoming)) for g in groups}


def _check_tol(where: str, tol: float) -> float:
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0 or math.isinf(tol):
        raise ValueError(f"{where}: tol must be a finite float >= 0, got {tol!r}")
    return float(tol)


def _alive_share(
    where: str, params: tree.Tree, groups: Groups, masks: tree.Tree | None, tol: float, *, incoming: bool
) -> Units:
    """Share of each unit's incoming (or outgoing) entries with ``|w| > tol``, in ``[0, 1]``."""
    t = _check_tol(where, tol)
    return _per_group(
        where,
        params,
        groups,
        masks,
        lambda v: reduce((v.abs() > t).to(v.dtype), "u n -> u", "mean"),
        incoming=incoming,
    )


def _abs_cosine(v: torch.Tensor) -> torch.Tensor:
    """``(size, n)`` -> ``(size, size)`` ``|cos|`` between rows, 0 on the diagonal and for zero rows."""
    norm = torch.linalg.vector_norm(v, dim=1, keepdim=True)
    unit = v / torch.where(norm > 0, norm, torch.ones_like(norm))
    c = (unit @ unit.T).abs().clamp(max=1.0)
    eye = torch.eye(v.shape[0], dtype=torch.bool, device=v.device)
    return torch.where(eye, torch.zeros_like(c), c)


# ------------------------------------------------------------------------------- weights family
def weight_l2(params: tree.Tree, groups: Groups, *, masks: tree.Tree | None = None) -> Units:
    """L2 norm of each unit's incoming vector: ``||w_u||_2 = sqrt(sum_k w_uk²)``. Returns ``{group: (size,)}``."""
    return _per_group(
        "weight_l2", params, groups, masks, lambda v: torch.linalg.vector_norm(v, dim=1), incoming=True
    )


def weight_variance(params: tree.Tree, groups: Groups, *, masks: tree.Tree | None = None) -> Units:
    """Population variance of each unit's incoming entries: ``(1/n) sum_k (w_uk - mean(w_u))²``.

    No Bessel correction: the ``n`` entries are the whole row, not a sample. Returns ``{group: (size,)}``.
    """

    def fn(v: torch.Tensor) -> torch.Tensor:
        centred = v - reduce(v, "u n -> u 1", "mean")
        return reduce(centred * centred, "u n -> u", "mean")

    return _per_group("weight_variance", params, groups, masks, fn, incoming=True)


def weight_nonzero_ratio(
    params: tree.Tree, groups: Groups, *, tol: float = 1e-8, masks: tree.Tree | None = None
) -> Units:
    """Share of each unit's incoming entries with ``|w| > tol`` (``tol=1e-8``), in ``[0, 1]``."""
    return _alive_share("weight_nonzero_ratio", params, groups, masks, tol, incoming=True)


def weight_entropy(params: tree.Tree, groups: Groups, *, masks: tree.Tree | None = None) -> Units:
    """Normalised Shannon entropy of each unit's ``|w|`` distribution, in ``[0, 1]``.

    ``p_k = |w_uk| / sum_j |w_uj|``, ``H = -sum_k p_k ln p_k`` (nats, ``0 ln 0 = 0``), returned as
    ``H / ln n``: 1 when every entry has the same magnitude, 0 when one entry carries everything.
    An all-zero row and ``n = 1`` give 0. Returns ``{group: (size,)}``.
    """

    def fn(v: torch.Tensor) -> torch.Tensor:
        a = v.abs()
        total = reduce(a, "u n -> u 1", "sum")
        p = a / torch.where(total > 0, total, torch.ones_like(total))
        h = -reduce(torch.special.xlogy(p, p), "u n -> u", "sum")
        n = v.shape[1]
        return h / math.log(n) if n > 1 else torch.zeros_like(h)

    return _per_group("weight_entropy", params, groups, masks, fn, incoming=True)


def _unit_matrices(x: torch.Tensor, mem: Member, size: int) -> torch.Tensor:
    """``(size, r, c)``: each unit's slice of ``x`` as a matrix (see :func:`effective_rank`)."""
    member_view(x, mem, size)  # checks the axis length, naming the member
    moved = torch.movedim(x, mem.axis % x.ndim, 0)
    v = rearrange(moved, "(o c i) ... -> c o i ...", o=mem.outer, c=size, i=mem.inner)
    rest = moved.ndim - 1
    if rest >= 2:
        return rearrange(v, "c o i r ... -> c (o i r) (...)")
    if rest == 1:
        return rearrange(v, "c o i r -> c (o i) r")
    return rearrange(v, "c o i -> c (o i) ()")


def _erank(m: torch.Tensor) -> torch.Tensor:
    """``(size, r, c)`` -> ``(size,)`` ``exp(entropy of normalised singular values)``; 0 for a zero matrix."""
    s = torch.linalg.svdvals(m)
    total = reduce(s, "u k -> u 1", "sum")
    p = s / torch.where(total > 0, total, torch.ones_like(total))
    h = -reduce(torch.special.xlogy(p, p), "u k -> u", "sum")
    return torch.where(total[:, 0] > 0, torch.exp(h), torch.zeros_like(h))


def effective_rank(params: tree.Tree, groups: Groups, *, masks: tree.Tree | None = None) -> Units:
    """Effective rank (Roy & Vetterli 2007) of each unit's incoming weights viewed as a matrix.

    ``erank(A) = exp(-sum_k p_k ln p_k)`` with ``p_k = sigma_k / sum_j sigma_j`` over the singular
    values of ``A``; it lies in ``[1, rank(A)]`` and is 0 by convention for ``A = 0`` (a dead unit).

    The matrix ``A`` of unit ``u`` in a member is the unit's slice of the leaf, shape
    ``(outer, inner, *rest)`` (``rest`` = the leaf's other axes), with the first of ``rest`` as rows
    when there are two or more of them: a conv filter ``(in, kh, kw)`` becomes ``(in, kh*kw)`` (how
    many independent spatial patterns the filter mixes over its input channels); with one other
    axis the ``outer * inner`` copies are the rows: an LSTM unit's four gate rows form ``(4, in)``.
    A plain linear row is ``(1, in)``: a single vector has rank 1, so its effective rank is exactly 1
    (0 when the row is zero). That is the honest value, not a reshaping of the row into an arbitrary
    matrix whose rank would depend on the chosen shape rather than on the layer; it carries no
    ranking information beyond "dead or alive", and per-group normalisation gives a constant
    statistic no weight in the ranking. With several scored members (a residual stream) the unit's
    value is the mean over members, since their matrices differ in shape. Returns ``{group: (size,)}``.
    """
    where = "effective_rank"
    _check_groups(where, groups)
    index = _theta(where, params, masks)
    out = {}
    for g in groups:
        per = [_erank(_unit_matrices(index[m.path], m, g.size)) for m in _members(where, index, g, True)]
        out[g.name] = reduce(torch.stack(per), "m u -> u", "mean")
    return out


def weight_stats(
    params: tree.Tree, groups: Groups, *, tol: float = 1e-8, masks: tree.Tree | None = None
) -> dict[str, Units]:
    """The weights family: ``{"l2", "variance", "nonzero_ratio", "entropy", "effective_rank"}`` ->
    ``{group: (size,)}`` (keys as in :data:`pure_prune.importance.fusion.WEIGHT_FAMILY`)."""
    return {
        "l2": weight_l2(params, groups, masks=masks),
        "variance": weight_variance(params, groups, masks=masks),
        "nonzero_ratio": weight_nonzero_ratio(params, groups, tol=tol, masks=masks),
        "entropy": weight_entropy(params, groups, masks=masks),
        "effective_rank": effective_rank(params, groups, masks=masks),
    }


# --------------------------------------------------------------------------- cooperation family
def connection_strength(params: tree.Tree, groups: Groups, *, masks: tree.Tree | None = None) -> Units:
    """How strongly each unit drives the layers that read it: ``||o_u||_1 = sum_k |o_uk|``.

    The L1 norm of the outgoing vector bounds how far a unit change of the unit's output moves the
    consumers' pre-activations, summed over consumers. Returns ``{group: (size,)}``.
    """
    return _per_group(
        "connection_strength",
        params,
        groups,
        masks,
        lambda v: reduce(v.abs(), "u n -> u", "sum"),
        incoming=False,
    )


def uniqueness(params: tree.Tree, groups: Groups, *, masks: tree.Tree | None = None) -> Units:
    """How different each unit's input feature is from its group's: ``1 - max_{v != u} |cos(w_u, w_v)|``.

    In ``[0, 1]``: 0 when another unit computes the same (or the negated) feature, so one of the two
    is redundant; 1 when the unit is orthogonal to all others. A zero vector has no direction, its
    cosines are 0 (uniqueness 1; its other statistics are 0). A group of one unit gives 1.
    Returns ``{group: (size,)}``.
    """

    def fn(v: torch.Tensor) -> torch.Tensor:
        c = _abs_cosine(v)
        return 1.0 - reduce(c, "u v -> u", "max")

    return _per_group("uniqueness", params, groups, masks, fn, incoming=True)


def degree_centrality(
    params: tree.Tree, groups: Groups, *, tol: float = 1e-8, masks: tree.Tree | None = None
) -> Units:
    """Share of each unit's outgoing connections that are alive: ``mean_k [|o_uk| > tol]``, in ``[0, 1]``.

    The unit's degree in the (weighted) graph of the network, divided by the largest possible degree.
    Returns ``{group: (size,)}``.
    """
    return _alive_share("degree_centrality", params, groups, masks, tol, incoming=False)


def cooperation_ability(params: tree.Tree, groups: Groups, *, masks: tree.Tree | None = None) -> Units:
    """How much each unit acts together with the others downstream: ``mean_{v != u} |cos(o_u, o_v)|``.

    Two units whose outgoing vectors point the same way feed the same consumers in the same
    proportions: their outputs are read as one assembly. A unit that takes part in such assemblies
    carries a share of a pathway the next layer relies on, whereas a unit whose output no other unit
    reinforces is a weak, isolated contribution. This is the output-side counterpart of
    :func:`uniqueness` (input side): a good unit computes a feature nobody else computes and feeds it
    into pathways the network uses. In ``[0, 1]``; 0 for a group of one unit and for a zero vector.
    Returns ``{group: (size,)}``.
    """

    def fn(v: torch.Tensor) -> torch.Tensor:
        u = v.shape[0]
        c = _abs_cosine(v)
        return reduce(c, "u v -> u", "sum") / max(u - 1, 1)

    return _per_group("cooperation_ability", params, groups, masks, fn, incoming=False)


def cooperation_stats(
    params: tree.Tree, groups: Groups, *, tol: float = 1e-8, masks: tree.Tree | None = None
) -> dict[str, Units]:
    """The cooperation family: ``{"connection_strength", "uniqueness", "degree_centrality",
    "cooperation_ability"}`` -> ``{group: (size,)}`` (keys as in ``fusion.COOPERATION_FAMILY``)."""
    return {
        "connection_strength": connection_strength(params, groups, masks=masks),
        "uniqueness": uniqueness(params, groups, masks=masks),
        "degree_centrality": degree_centrality(params, groups, tol=tol, masks=masks),
        "cooperation_ability": cooperation_ability(params, groups, masks=masks),
    }
