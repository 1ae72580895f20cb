"""The mutants: realistic one-line bugs of pure_prune's functions, each with the tests that must catch it.

A :class:`Mutant` names its target as ``"module:attribute"``; ``make(original, module)`` returns
the buggy replacement (usually the original wrapped with the bug, or a private helper swapped), and
``tests`` lists the pytest node ids that must *each* fail while it is planted (a node id without a
``[param]`` covers every parametrization; one failing parametrization catches it). Replacing a
private helper (``select_structured:_norm_rows``) changes every public function that calls it, as the real
bug would. :mod:`tests.mutation.plant` plants one at a time, in memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import ModuleType
from typing import Any, NamedTuple

import torch

from pure_prune import tree


class Mutant(NamedTuple):
    id: str
    bug: str
    target: str  # "module:attribute"
    make: Callable[[Any, ModuleType], Any]  # (original, its module) -> buggy replacement
    tests: tuple[str, ...]


SELECT = "tests/test_select.py::"
TESTING = "tests/test_testing.py::"
MASK = "tests/test_mask.py::"


def _flip_flat(flat):
    """Reverse the order of all entries across a list of 1-D tensors (and the list)."""
    return [x.flip(0) for x in reversed(flat)]


def _leaves_none_where(out: Any, like: Any) -> Any:
    return tree.map(lambda o, s: None if s is None else o, out, like)


def _noop(*_args: Any, **_kwargs: Any) -> None:
    return None


# --------------------------------------------------------------------------------- select.py
def _norm_rows_l1(orig, mod):
    return lambda x, ord: orig(x, 1.0 if ord == 2 else ord)  # noqa: A006


def _count_off_by_one(orig, mod):
    return lambda s, n: max(0, orig(s, n) - 1)


def _count_floor(orig, mod):
    return lambda s, n: int(s * n)


def _live_scores_ignore_masks(orig, mod):
    return lambda s, m, dtype: orig(s, None, dtype)


def _lowest_k_tie_latest(orig, mod):
    def lowest_k(flat, k):
        return _flip_flat(orig(_flip_flat(flat), k))

    return lowest_k


def _lowest_k_tie_by_parity(orig, mod):
    def lowest_k(flat, k):  # ties: earliest first for even k, latest first for odd k
        return _flip_flat(orig(_flip_flat(flat), k)) if k % 2 else orig(flat, k)

    return lowest_k


def _lowest_k_compiled_off_by_one(orig, mod):
    def lowest_k(flat, k):
        return orig(flat, k + 1 if torch.compiler.is_compiling() else k)

    return lowest_k


def _unstructured_ignores_old_masks(orig, mod):
    def unstructured(scores, sparsity, *, scope="global", masks=None):
        return orig(scores, sparsity, scope=scope)

    return unstructured


def _unstructured_global_per_layer(orig, mod):
    def unstructured(scores, sparsity, *, scope="global", masks=None):
        return orig(scores, sparsity, scope="layer" if scope == "global" else scope, masks=masks)

    return unstructured


def _unstructured_by_position(orig, mod):
    def unstructured(scores, sparsity, *, scope="global", masks=None):
        ranks = tree.map(
            lambda x: None if x is None else torch.arange(x.numel(), dtype=x.dtype).reshape(x.shape), scores
        )
        return orig(ranks, sparsity, scope=scope, masks=masks)

    return unstructured


def _unstructured_drops_unscored(orig, mod):
    def unstructured(scores, sparsity, *, scope="global", masks=None):
        return _leaves_none_where(orig(scores, sparsity, scope=scope, masks=masks), scores)

    return unstructured


def _unstructured_in_place(orig, mod):
    def unstructured(scores, sparsity, *, scope="global", masks=None):
        out = orig(scores, sparsity, scope=scope, masks=masks)
        if masks is not None:  # "saves a copy" by writing the result into the old masks
            for o, m in zip(tree.leaves(out), tree.leaves(masks)):
                if o is not None and m is not None and o is not m:
                    m.copy_(o)
        return out

    return unstructured


def _rows_axis_zero(orig, mod):
    def rows(scores, sparsity, *, axis=0, ord=2, masks=None):
        return orig(scores, sparsity, axis=0, ord=ord, masks=masks)

    return rows


def _rows_ignores_old_masks(orig, mod):
    def rows(scores, sparsity, *, axis=0, ord=2, masks=None):
        out = orig(scores, sparsity, axis=axis, ord=ord)
        if masks is None:
            return out
        return tree.map(lambda o, m: m if o is None else (o if m is None else o & m), out, masks)

    return rows


def _n_of_m_keeps_lowest(orig, mod):
    def n_of_m(scores, n, m, *, axis=-1, masks=None):
        return orig(tree.map(lambda x: None if x is None else -x, scores), n, m, axis=axis, masks=masks)

    return n_of_m


def _n_of_m_tie_keeps_later(orig, mod):
    def n_of_m(scores, n, m, *, axis=-1, masks=None):
        flip = lambda t: tree.map(lambda x: None if x is None else x.flip(axis), t)  # noqa: E731
        return flip(orig(flip(scores), n, m, axis=axis, masks=None if masks is None else flip(masks)))

    return n_of_m


def _n_of_m_ignores_old_masks(orig, mod):
    def n_of_m(scores, n, m, *, axis=-1, masks=None):
        out = orig(scores, n, m, axis=axis)
        return out if masks is None else tree.map(lambda o, old: old if o is None else o, out, masks)

    return n_of_m


def _block_ignores_old_masks(orig, mod):
    def block(scores, sparsity, block_shape, *, scope="global", masks=None):
        out = orig(scores, sparsity, block_shape, scope=scope)
        if masks is None:
            return out
        return tree.map(lambda o, m: m if o is None else (o if m is None else o & m), out, masks)

    return block


def _block_scope_ignored(orig, mod):
    def block(scores, sparsity, block_shape, *, scope="global", masks=None):
        return orig(scores, sparsity, block_shape, masks=masks)

    return block


def _units_remove_highest(orig, mod):
    def units(unit_scores, sparsity, groups, like, *, scope="layer", masks=None):
        return orig({k: -v for k, v in unit_scores.items()}, sparsity, groups, like, scope=scope, masks=masks)

    return units


def _units_skip_consumers(orig, mod):
    def units(unit_scores, sparsity, groups, like, *, scope="layer", masks=None):
        producers = [g._replace(members=tuple(m for m in g.members if m.axis == 0)) for g in groups]
        return orig(unit_scores, sparsity, producers, like, scope=scope, masks=masks)

    return units


def _units_scope_ignored(orig, mod):
    def units(unit_scores, sparsity, groups, like, *, scope="layer", masks=None):
        return orig(unit_scores, sparsity, groups, like, masks=masks)

    return units


# ------------------------------------------------------------------------------ other modules
def _kth_off_by_one(orig, mod):
    def kth_smallest(flat, k, **kwargs):
        total = sum(x.numel() for x in flat)
        return orig(flat, min(total, k + 1), **kwargs)

    return kth_smallest


def _order_keys_no_flip(orig, mod):
    def order_keys(x):
        int_dtype, _ = {torch.float32: (torch.int32, 32), torch.float64: (torch.int64, 64)}[x.dtype]
        return (x + 0.0).view(int_dtype)  # forgets to flip the negatives

    return order_keys


def _erk_uniform(orig, mod):
    return lambda masks, sparsity, *, power_scale=1.0: mod.uniform(masks, sparsity)


def _fill_no_redistribution(orig, mod):
    def fill(weights, sizes, sparsity):
        keep = (1.0 - sparsity) * sum(sizes.values())
        denom = sum(weights[p] * sizes[p] for p in weights)
        eps = keep / denom if denom > 0 else 0.0
        return {p: 1.0 - min(1.0, max(0.0, eps * weights[p])) for p in weights}

    return fill


def _layer_multipliers_clip(orig, mod):
    def layer_multipliers(masks, sparsity, multipliers=mod.SEEDS_MULTIPLIERS, *, order=None):
        out = orig(masks, sparsity, multipliers, order=order)
        parts = len(multipliers)
        names = list(order) if order is not None else list(out)
        mult = {p: multipliers[min(parts - 1, i * parts // len(names))] for i, p in enumerate(names)}
        return {p: min(1.0, sparsity * mult[p]) for p in out}  # scaled and clipped, never rebalanced

    return layer_multipliers


def _apply_inverted(orig, mod):
    def keep(x, m):
        if m is None:
            return x
        return torch.where(m.to(torch.bool), torch.zeros((), dtype=x.dtype), x)

    return keep


def _keep_in_float32(orig, mod):
    def keep(x, m):
        if m is None:
            return x
        return torch.where(m.to(torch.bool), x.float(), torch.zeros(()))

    return keep


def _from_nonzero_returns_like(orig, mod):
    return lambda params, like: tree.map(lambda p, m: None if m is None else m.clone(), params, like)


def _count_ignores_dense(orig, mod):
    return lambda masks, params=None: orig(masks)


def _layer_sparsity_kept(orig, mod):
    return lambda masks: {p: 1.0 - s if s else s for p, s in orig(masks).items()}


def _difference_swapped(orig, mod):
    return lambda a, b: orig(b, a)


def _is_nested_reversed(orig, mod):
    return lambda new, old: orig(old, new)


def _as_bytes_copies(orig, mod):
    return lambda masks: tree.map(lambda m: None if m is None else m.to(torch.uint8), masks)


def _bytes_views_keep_first(orig, mod):
    def bytes_views():
        memo = []

        def views(masks):
            if not memo:
                memo.append(mod.as_bytes(masks))
            return memo[0]

        return views

    return bytes_views


def _ones_like_ndim1(orig, mod):
    def ones_like(params, prunable=lambda path, leaf: leaf.ndim >= 1, *, exclude_paths=()):
        return orig(params, prunable, exclude_paths=exclude_paths)

    return ones_like


def _magnitude_ignores_p(orig, mod):
    return lambda params, masks, *, p=1: orig(params, masks)


def _random_global_rng(orig, mod):
    return lambda masks, key: tree.map(lambda m: None if m is None else torch.rand(m.shape), masks)


def _channel_norms_l2(orig, mod):
    return lambda scores, groups, *, ord=1: orig(scores, groups, ord=2 if ord == 1 else ord)  # noqa: A006


def _member_view_unit_inner(orig, mod):
    def member_view(x, member, size):  # units as (c o i) instead of (o c i): outer blocks mixed up
        from einops import rearrange

        axis = member.axis % x.ndim
        moved = torch.movedim(x, axis, 0)
        return rearrange(moved, "(c o i) ... -> c (o i ...)", o=member.outer, c=size, i=member.inner)

    return member_view


def _unit_mask_ignores_outer(orig, mod):
    def unit_mask_to_member(unit_mask, member, shape):
        from einops import rearrange

        size = unit_mask.shape[0]
        axis = member.axis % len(shape)
        along = rearrange(
            unit_mask[:, None, None].expand(size, member.outer, member.inner), "c o i -> (c o i)"
        )
        view_shape = [1] * len(shape)
        view_shape[axis] = shape[axis]
        return along.reshape(view_shape).expand(shape)

    return unit_mask_to_member


def _shard_contiguous(orig, mod):
    def shard(points, rank, world):
        orig(points, rank, world)  # the argument checks
        per = math.ceil(len(points) / world)
        return list(points[rank * per : (rank + 1) * per])

    return shard


def _canonical_unsorted(orig, mod):
    def canonical(t):
        if isinstance(t, dict):
            return {k: canonical(v) for k, v in t.items()}
        if isinstance(t, list):
            return [canonical(v) for v in t]
        if isinstance(t, tuple) and not hasattr(t, "_fields"):
            return tuple(canonical(v) for v in t)
        return t

    return canonical


def _unflatten_reversed(orig, mod):
    return lambda spec, leaves: orig(spec, list(leaves)[::-1])


def _split_same_keys(orig, mod):
    return lambda key, n=2: [mod.fold_in(key, 1)] * n


def _batches_with_replacement(orig, mod):
    def batches(x, y, batch_size, *, key, drop_last=True):
        orig(x, y, batch_size, key=key, drop_last=drop_last)  # the argument checks
        n = len(x)
        count = mod.num_batches(n, batch_size, drop_last=drop_last)
        g = None if key is None else mod.rng.generator(key)
        order = torch.randint(0, n, (n,), generator=g)

        def gen():
            for i in range(count):
                idx = order[i * batch_size : (i + 1) * batch_size]
                yield x[idx], y[idx]

        return gen()

    return batches


def _in_place_skips_opt_state(orig, mod):
    def in_place_body(body):
        def stepped_in_place(params, state, opt_state, masks, batch):
            new_params, new_state, _, found = body(params, state, opt_state, masks, batch)
            for old, new in zip(mod.tree.leaves(params), mod.tree.leaves(new_params)):
                old.copy_(new)  # the optimizer state is left as it was
            return new_state, found

        return stepped_in_place

    return in_place_body


def _batches_gather_past_last_full(orig, mod):
    def batches(x, y, batch_size, *, key, drop_last=True):
        orig(x, y, batch_size, key=key, drop_last=drop_last)  # the argument checks
        count = mod.num_batches(len(x), batch_size, drop_last=drop_last)
        order = torch.randperm(len(x), generator=mod.rng.generator(key))
        per_chunk = mod.batches_per_gather(batch_size, x, y)

        def gen():
            for first in range(0, count, per_chunk):
                rows = order[first * batch_size : (first + per_chunk) * batch_size]  # no clip at count
                xs, ys = x[rows], y[rows]
                for i in range(0, len(rows), batch_size):
                    yield xs[i : i + batch_size], ys[i : i + batch_size]

        return gen()

    return batches


def _chunk_rows_seed_major(orig, mod):
    def _chunk_rows(orders, first, k, batch_size):
        return orders[:, first * batch_size : (first + k) * batch_size].reshape(-1)  # (seed, batch, row)

    return _chunk_rows


def _batches_ignore_key(orig, mod):
    def batches(x, y, batch_size, *, key, drop_last=True):
        return orig(x, y, batch_size, key=0 if key is not None else None, drop_last=drop_last)

    return batches


def _checkpoint_positive_zero(orig, mod):
    def save(path, trees, metadata=None, **kwargs):
        plus = {
            k: tree.map(lambda x: x + 0.0 if isinstance(x, torch.Tensor) and x.is_floating_point() else x, v)
            for k, v in trees.items()
        }
        return orig(path, plus, metadata, **kwargs)

    return save


def _polynomial_inverted(orig, mod):
    def polynomial(initial, final, *, start, every, updates, power=3.0):
        s = orig(initial, final, start=start, every=every, updates=updates, power=power)

        def schedule(t):
            if t < start:
                return initial
            k = min(updates, (t - start) // every)
            return final + (initial - final) * (k / updates) ** power  # progress the wrong way round

        s(0)
        return schedule

    return polynomial


def _penalty_unclamped(orig, mod):
    def penalty_growth(kind, granularity, total, *, exponent=2.0):
        orig(kind, granularity, total, exponent=exponent)  # the argument checks
        g = mod._GROWTH[kind]
        return lambda t: granularity * g(max(t, 0) / total, exponent)

    return penalty_growth


def _entropy_unnormalized(orig, mod):
    def weight_entropy(params, groups, *, masks=None):
        out = orig(params, groups, masks=masks)
        l2 = mod.weight_l2(params, groups, masks=masks)  # H(|w|) without dividing by Σ|w| first
        return {g: v + torch.log1p(l2[g]) for g, v in out.items()}

    return weight_entropy


def _fast_path_squares_batch_sum(orig, mod):
    def batch_moments(problem, taps, batch, stats, chunk_size):
        m = orig(problem, taps, batch, stats, chunk_size)
        if taps is not None and "sumsq" in m:  # the sum of squares of the summed gradient
            m = {**m, "sumsq": m["sum"] * m["sum"] / max(1, batch[0].shape[0])}
        return m

    return batch_moments


def _streaming_drops_between_term(orig, mod):
    def update_one(name, s, a):
        out = orig(name, s, a)
        obs = a.detach().to(s.mean.dtype).transpose(0, 1).reshape(a.shape[1], -1)
        m = obs.shape[1]
        if m == 0:
            return out
        delta = obs.mean(1) - s.mean
        return out._replace(m2=out.m2 - delta * delta * (s.count * m / (s.count + m)))

    return update_one


def _keep_masks_lowest(orig, mod):
    def keep_masks(importance, **kwargs):
        out = orig(importance, **kwargs)
        return {
            g: mod.lowest_k([importance[g].double()], int(m.sum()))[0] for g, m in out.items()
        }  # keeps the least important units

    return keep_masks


def _nest_not_canonical(orig, mod):
    def nest(flat):
        out = orig(flat)
        order = {}
        for path in flat:  # rebuild in the given order instead of sorted
            node, parts = order, path.split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = None

        def rebuild(shape, src):
            return {k: (rebuild(v, src[k]) if isinstance(v, dict) else src[k]) for k, v in shape.items()}

        return rebuild(order, out)

    return nest


def _tree_path_only(opt, update):
    """``opt`` with ``update`` replaced and its leaf-list fast path (if it has one) removed, so
    that ``train.make_step`` calls the buggy ``update``."""
    fast = {"update_leaves": None} if "update_leaves" in opt._fields else {}
    return opt._replace(update=update, **fast)


def _factors_bytes_dense(orig, mod):
    def mask_factors(masks, params):
        out = orig(masks, params)
        return [None if m is not None and m.dtype == torch.uint8 else f for m, f in zip(masks, out)]

    return mask_factors


def _factors_float32(orig, mod):
    return lambda masks, params: orig(masks, [p.float() for p in params])


def _sgd_unmasked_momentum(orig, mod):
    def sgd(lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        opt = orig(lr, momentum, nesterov, weight_decay)
        if momentum == 0:
            return opt

        def update(grads, opt_state, params, masks=None):
            updates, new = opt.update(grads, opt_state, params, masks)
            g = tree.map(lambda g, p: g + weight_decay * p, grads, params)
            new["momentum"] = tree.map(lambda b, g: momentum * b + g, opt_state["momentum"], g)
            return updates, new

        return _tree_path_only(opt, update)

    return sgd


def _premasked_skips_optimizer_masks(orig, mod):
    def make_step(model, loss, optimizer, *, premasked=False, **kwargs):
        if premasked:
            inner = optimizer
            optimizer = _tree_path_only(inner, lambda g, s, p, m=None: inner.update(g, s, p, None))
        return orig(model, loss, optimizer, premasked=premasked, **kwargs)

    return make_step


def _select_seeds_seed0(orig, mod):
    def select_seeds(scores, sparsity, *, scope="global", masks=None):
        first = tree.map(lambda x: None if x is None else x[:1].expand_as(x).clone(), scores)
        return orig(first, sparsity, scope=scope, masks=masks)

    return select_seeds


def _kept_of_all(orig, mod):
    return lambda alive: torch.arange(alive.shape[0])


def _expand_kept_at_front(orig, mod):
    def expand(params, state, masks, kept, groups):
        front = {g: torch.arange(len(v)) for g, v in kept.items()}
        return orig(params, state, masks, front, groups)

    return expand


def _removed_state_zeroed(orig, mod):
    return lambda new, old, indicator: new


def _imp_target_one_round_behind(orig, mod):
    return lambda round, rate, schedule="geometric": orig(max(0, round - 1), rate, schedule)  # noqa: A006


# --------------------------------------------------------------------------- strategies.py
def _masks_all_kept(orig, mod):
    def masks(params, sparsity=None, *, kind=None, prunable=mod.mask.default_prunable, **kwargs):
        return orig(params, sparsity, kind=kind, prunable=prunable, **kwargs).map(
            lambda t: tree.map(lambda m: None if m is None else torch.ones_like(m), t)
        )

    return masks


def _strategy_masks_any_kind(orig, mod):
    def masks(params, sparsity=None, *, kind=None, **kwargs):
        if kind is not None and kind not in mod.MASK_KINDS:
            kind = "unstructured"  # accepts an unknown kind silently
        return orig(params, sparsity, kind=kind, **kwargs)

    return masks


def _strategy_n_of_m_one_more(orig, mod):
    return lambda mk, n, m, key, axis: orig(mk, min(m, n + 1), m, key, axis)


def _strategy_rows_axis_zero(orig, mod):
    return lambda m, s, key, axis: orig(m, s, key, 0)


def _strategy_global_rounds_per_leaf(orig, mod):
    return lambda base, s, key, scope: orig(base, s, key, "layer")


def _strategy_block_floor(orig, mod):
    def blocks(base, s, key, block_shape):
        total = sum(
            (m.shape[0] // block_shape[0]) * (m.shape[1] // block_shape[1]) for m in base if m is not None
        )
        return orig(base, math.floor(s * total) / total if total else s, key, block_shape)

    return blocks


def _strategy_scores_with_ties(orig, mod):
    def scores(like, *, ties=False, dtype=None):
        return orig(like, ties=True, dtype=dtype if dtype is not None or ties else torch.float32)

    return scores


def _strategy_params_not_canonical(orig, mod):
    def params_trees(**kwargs):
        def shuffled(t):
            if isinstance(t, dict):
                return {k: shuffled(t[k]) for k in sorted(t, reverse=True)}
            return t

        return orig(**kwargs).map(shuffled)

    return params_trees


def _strategy_shapes_ignore_multiple(orig, mod):
    def shapes(*, multiple_of=1, **kwargs):
        return orig(**kwargs)

    return shapes


def _strategy_shapes_never_empty(orig, mod):
    def shapes(*, allow_empty=True, **kwargs):
        return orig(allow_empty=False, **kwargs)

    return shapes


def _strategy_distinct_values_tie(orig, mod):
    def values(key, shape, dtype, kind):
        return orig(key, shape, dtype, "ties" if kind == "distinct" else kind)

    return values


def _strategy_schedules_unsorted(orig, mod):
    def schedules(min_size=1, max_size=6, *, min_value=0.0, max_value=1.0, strict=False):
        values = mod.sparsities(min_value, max_value)
        return mod.st.lists(values, min_size=min_size, max_size=max_size, unique=strict)

    return schedules


def _strategy_conv_inner_one(orig, mod):
    def channel_nets(**kwargs):
        def drop_inner(net):
            params, groups = net
            fixed = tuple(
                g._replace(members=tuple(m._replace(inner=1) for m in g.members)) if g.name == "conv" else g
                for g in groups
            )
            return params, fixed

        return orig(**kwargs).map(drop_inner)

    return channel_nets


def _strategy_labels_one_past(orig, mod):
    def batches(spec, *, min_size=1, max_size=4, num_outputs=None):
        return orig(spec, min_size=min_size, max_size=max_size, num_outputs=num_outputs).map(
            lambda b: (b[0], b[1] + 1)
        )

    return batches


# ---------------------------------------------------------------------------------- the list
# ------------------------------------------------------------------------------ algorithms/ops.py
OPS = "tests/test_algorithms_ops.py::"


def _ops_with(**methods: Any) -> Callable[[Any, ModuleType], Any]:
    """A RoundOps subclass whose ``methods`` (name -> (original method) -> replacement) are buggy."""

    def make(orig, mod):
        return type("BuggyRoundOps", (orig,), {name: fn(getattr(orig, name)) for name, fn in methods.items()})

    return make


def _fold_seed0(fold):
    def buggy(self, key, offset):
        if not self.stacked:
            return fold(self, key, offset)
        return fold(self, (self.keys(key)[0],) * self.seeds, offset)

    return buggy


def _each_key0(each):
    def buggy(self, fn, *trees, key=None):
        if self.stacked and key is not None:
            key = (self.keys(key)[0],) * self.seeds
        return each(self, fn, *trees, key=key)

    return buggy


def _prune_as_one(prune):
    def buggy(self, scores, target, masks, **kw):
        if self.stacked and kw.get("struct", "unstructured") == "unstructured" and self.level == "element":
            from pure_prune import select

            return select.unstructured(scores, target, scope=kw.get("scope", "global"), masks=masks)
        return prune(self, scores, target, masks, **kw)

    return buggy


MUTANTS: tuple[Mutant, ...] = (
    # select: norms, counts, tie-breaks, old masks, axes, scopes
    Mutant(
        "rows-l2-as-l1",
        "rows ranks slices by the L1 norm when asked for L2",
        "pure_prune.select_structured:_norm_rows",
        _norm_rows_l1,
        (SELECT + "test_matches_torch_ln_structured",),
    ),
    Mutant(
        "count-off-by-one",
        "every selector prunes round(s·N) - 1 entries/slices/blocks/units",
        "pure_prune.select_inputs:prune_count",
        _count_off_by_one,
        (
            SELECT + "test_unstructured_global_exact_and_fits",
            SELECT + "test_unstructured_layer_exact_float_and_mapping",
            SELECT + "test_already_pruned_stays_pruned_and_counts",
            SELECT + "test_rows_whole_exact_and_reference",
            SELECT + "test_rows_with_old_masks",
            SELECT + "test_block_exact_whole_and_nested",
            SELECT + "test_channels_whole_exact_nested",
            SELECT + "test_units_exact_and_whole_for_any_unit_scores",
            SELECT + "test_erk_proportional_clipped_and_on_target",
            SELECT + "test_matches_torch_l1_unstructured_and_global",
            "tests/test_groups.py::test_removed_channels_are_whole_and_zero",
            "tests/test_magnitude.py::test_random_scores_are_reproducible_uniform_and_shaped",
        ),
    ),
    Mutant(
        "count-floor",
        "counts floor s·N instead of rounding half to even",
        "pure_prune.select_inputs:prune_count",
        _count_floor,
        (
            SELECT + "test_unstructured_global_exact_and_fits",
            SELECT + "test_unstructured_layer_exact_float_and_mapping",
        ),
    ),
    Mutant(
        "live-scores-ignore-old-masks",
        "already-pruned entries are ranked by their score, not below all live ones",
        "pure_prune.select_inputs:live_scores",
        _live_scores_ignore_masks,
        (
            SELECT + "test_unstructured_matches_stable_sort_reference",
            SELECT + "test_already_pruned_stays_pruned_and_counts",
            SELECT + "test_n_of_m_with_old_masks",
        ),
    ),
    Mutant(
        "ties-latest-first",
        "lowest_k prunes the latest of equal scores first",
        "pure_prune.select:lowest_k",
        _lowest_k_tie_latest,
        (
            SELECT + "test_unstructured_matches_stable_sort_reference",
            SELECT + "test_rows_whole_exact_and_reference",
        ),
    ),
    Mutant(
        "ties-by-parity",
        "lowest_k breaks ties earliest-first for even k and latest-first for odd k",
        "pure_prune.select:lowest_k",
        _lowest_k_tie_by_parity,
        (
            SELECT + "test_nested_as_sparsity_rises",
            SELECT + "test_unstructured_matches_stable_sort_reference",
        ),
    ),
    Mutant(
        "compiled-threshold-off-by-one",
        "under torch.compile lowest_k prunes k + 1 entries",
        "pure_prune.select:lowest_k",
        _lowest_k_compiled_off_by_one,
        (SELECT + "test_unchanged_under_torch_compile",),
    ),
    Mutant(
        "unstructured-ignores-old-masks",
        "unstructured drops its masks argument (old masks neither ranked lowest nor kept)",
        "pure_prune.select:unstructured",
        _unstructured_ignores_old_masks,
        (
            SELECT + "test_unstructured_matches_stable_sort_reference",
            SELECT + "test_already_pruned_stays_pruned_and_counts",
            SELECT + "test_unscored_leaf_keeps_its_old_mask",
        ),
    ),
    Mutant(
        "unstructured-global-per-layer",
        "scope='global' ranks every leaf separately",
        "pure_prune.select:unstructured",
        _unstructured_global_per_layer,
        (
            SELECT + "test_unstructured_matches_stable_sort_reference",
            SELECT + "test_matches_torch_l1_unstructured_and_global",
        ),
    ),
    Mutant(
        "unstructured-by-position",
        "unstructured ranks entries by position instead of score",
        "pure_prune.select:unstructured",
        _unstructured_by_position,
        (
            SELECT + "test_unstructured_permutation_equivariant",
            SELECT + "test_unstructured_matches_stable_sort_reference",
        ),
    ),
    Mutant(
        "unstructured-drops-unscored",
        "a leaf with a None score loses its old mask (becomes None)",
        "pure_prune.select:unstructured",
        _unstructured_drops_unscored,
        (SELECT + "test_unscored_leaf_keeps_its_old_mask",),
    ),
    Mutant(
        "unstructured-in-place",
        "unstructured writes the new masks into the old masks",
        "pure_prune.select:unstructured",
        _unstructured_in_place,
        (SELECT + "test_select_does_not_modify_inputs",),
    ),
    Mutant(
        "rows-axis-ignored",
        "rows always removes slices along axis 0",
        "pure_prune.select:rows",
        _rows_axis_zero,
        (SELECT + "test_rows_whole_exact_and_reference", SELECT + "test_matches_torch_ln_structured"),
    ),
    Mutant(
        "rows-ignores-old-masks",
        "rows does not count already-pruned slices toward the target",
        "pure_prune.select:rows",
        _rows_ignores_old_masks,
        (SELECT + "test_rows_with_old_masks",),
    ),
    Mutant(
        "n-of-m-keeps-lowest",
        "n_of_m keeps the n lowest scores of each group",
        "pure_prune.select:n_of_m",
        _n_of_m_keeps_lowest,
        (SELECT + "test_n_of_m_exact_and_tie_break",),
    ),
    Mutant(
        "n-of-m-ties-keep-later",
        "n_of_m keeps the later of equal scores",
        "pure_prune.select:n_of_m",
        _n_of_m_tie_keeps_later,
        (SELECT + "test_n_of_m_exact_and_tie_break",),
    ),
    Mutant(
        "n-of-m-ignores-old-masks",
        "n_of_m drops its masks argument (revives pruned entries)",
        "pure_prune.select:n_of_m",
        _n_of_m_ignores_old_masks,
        (SELECT + "test_n_of_m_with_old_masks",),
    ),
    Mutant(
        "block-ignores-old-masks",
        "block does not count already-pruned blocks toward the target",
        "pure_prune.select:block",
        _block_ignores_old_masks,
        (SELECT + "test_block_exact_whole_and_nested",),
    ),
    Mutant(
        "block-scope-ignored",
        "block ranks globally for scope='layer'",
        "pure_prune.select:block",
        _block_scope_ignored,
        (SELECT + "test_block_exact_whole_and_nested",),
    ),
    Mutant(
        "units-remove-highest",
        "units removes the highest-scoring units",
        "pure_prune.select:units",
        _units_remove_highest,
        (
            SELECT + "test_units_exact_and_whole_for_any_unit_scores",
            "tests/test_magnitude.py::test_channel_norms_rank_like_select_channels",
        ),
    ),
    Mutant(
        "units-skip-consumers",
        "units prunes a unit's producer rows but not its consumers' input columns",
        "pure_prune.select:units",
        _units_skip_consumers,
        (
            SELECT + "test_channels_whole_exact_nested",
            SELECT + "test_units_exact_and_whole_for_any_unit_scores",
            "tests/test_groups.py::test_removed_channels_are_whole_and_zero",
        ),
    ),
    Mutant(
        "units-scope-ignored",
        "units ranks per group for scope='global'",
        "pure_prune.select:units",
        _units_scope_ignored,
        (
            SELECT + "test_channels_whole_exact_nested",
            SELECT + "test_units_exact_and_whole_for_any_unit_scores",
        ),
    ),
    Mutant(
        "kth-off-by-one",
        "kth_smallest returns the (k+1)-th smallest",
        "pure_prune.kth:kth_smallest",
        _kth_off_by_one,
        ("tests/test_kth.py::test_equals_kthvalue_of_concatenation",),
    ),
    Mutant(
        "kth-negative-order",
        "the radix keys forget to flip negative floats (negatives ordered backwards)",
        "pure_prune.kth:_keys",
        _order_keys_no_flip,
        ("tests/test_kth.py::test_equals_kthvalue_of_concatenation",),
    ),
    # allocate
    Mutant(
        "erk-is-uniform",
        "erk gives every leaf the same sparsity",
        "pure_prune.allocate:erk",
        _erk_uniform,
        (SELECT + "test_erk_proportional_clipped_and_on_target",),
    ),
    Mutant(
        "erk-no-redistribution",
        "erk clips dense leaves at density 1 without re-solving for the rest",
        "pure_prune.allocate:_fill_to_target",
        _fill_no_redistribution,
        (SELECT + "test_erk_proportional_clipped_and_on_target",),
    ),
    Mutant(
        "multipliers-no-rebalance",
        "layer_multipliers scales and clips but never rescales to the target",
        "pure_prune.allocate:layer_multipliers",
        _layer_multipliers_clip,
        (SELECT + "test_layer_multipliers_on_target",),
    ),
    # mask
    Mutant(
        "apply-inverted",
        "mask.keep zeroes the kept entries and keeps the pruned ones",
        "pure_prune.mask:keep",
        _apply_inverted,
        (MASK + "test_apply_zeroes_pruned_and_keeps_the_rest",),
    ),
    Mutant(
        "apply-casts-float32",
        "mask.keep returns float32 whatever the param dtype",
        "pure_prune.mask:keep",
        _keep_in_float32,
        (MASK + "test_apply_zeroes_pruned_and_keeps_the_rest",),
    ),
    Mutant(
        "from-nonzero-returns-like",
        "from_nonzero returns the like masks instead of the non-zero pattern",
        "pure_prune.mask:from_nonzero",
        _from_nonzero_returns_like,
        (MASK + "test_from_nonzero_recovers_masks_of_applied_params",),
    ),
    Mutant(
        "count-ignores-dense",
        "count(masks, params) leaves out the dense leaves",
        "pure_prune.mask:count",
        _count_ignores_dense,
        (MASK + "test_count_sparsity_and_layer_sparsity",),
    ),
    Mutant(
        "layer-sparsity-kept-fraction",
        "layer_sparsity reports the kept fraction",
        "pure_prune.mask:layer_sparsity",
        _layer_sparsity_kept,
        (MASK + "test_count_sparsity_and_layer_sparsity",),
    ),
    Mutant(
        "difference-swapped",
        "difference(a, b) computes b minus a",
        "pure_prune.mask:difference",
        _difference_swapped,
        (MASK + "test_set_algebra_is_elementwise_logic",),
    ),
    Mutant(
        "is-nested-reversed",
        "is_nested(new, old) tests old ⊆ new",
        "pure_prune.mask:is_nested",
        _is_nested_reversed,
        (MASK + "test_set_algebra_is_elementwise_logic",),
    ),
    Mutant(
        "validate-accepts-anything",
        "mask.validate never raises",
        "pure_prune.mask:validate",
        lambda orig, mod: _noop,
        (MASK + "test_validate_agrees_with_masks_fit_params",),
    ),
    Mutant(
        "as-bytes-copies",
        "as_bytes copies the masks instead of viewing them",
        "pure_prune.mask:as_bytes",
        _as_bytes_copies,
        (MASK + "test_bytes_views_share_memory_and_apply_alike",),
    ),
    Mutant(
        "bytes-views-keep-first",
        "bytes_views hands out the first masks' views for every later masks",
        "pure_prune.mask:bytes_views",
        _bytes_views_keep_first,
        (MASK + "test_bytes_views_memo_reuses_views_only_for_the_same_mask_tensors",),
    ),
    Mutant(
        "ones-like-masks-biases",
        "ones_like's default marks 1-D leaves (biases) prunable",
        "pure_prune.mask:ones_like",
        _ones_like_ndim1,
        (MASK + "test_ones_like_fits_params_and_marks_ndim2_leaves",),
    ),
    # importance
    Mutant(
        "magnitude-ignores-p",
        "magnitude returns |w| for every p",
        "pure_prune.importance.magnitude:magnitude",
        _magnitude_ignores_p,
        ("tests/test_magnitude.py::test_magnitude_shape_dtype_and_detached",),
    ),
    Mutant(
        "random-scores-global-rng",
        "random scores come from the global RNG, not the key",
        "pure_prune.importance.magnitude:random",
        _random_global_rng,
        ("tests/test_magnitude.py::test_random_scores_are_reproducible_uniform_and_shaped",),
    ),
    Mutant(
        "channel-norms-l2",
        "channel_norms computes L2 norms when asked for L1",
        "pure_prune.importance.magnitude:channel_norms",
        _channel_norms_l2,
        ("tests/test_magnitude.py::test_channel_norms_rank_like_select_channels",),
    ),
    Mutant(
        "entropy-unnormalized",
        "weight_entropy is taken of |w| before normalising it to a distribution",
        "pure_prune.importance.weights:weight_entropy",
        _entropy_unnormalized,
        ("tests/test_importance_weights.py::test_scale_invariance_of_shape_statistics",),
    ),
    Mutant(
        "fast-path-squares-sum",
        "gradient_stats' fast path squares the summed gradient instead of summing squared ones",
        "pure_prune.importance.gradient:batch_moments",
        _fast_path_squares_batch_sum,
        ("tests/test_importance_gradient.py::test_fast_path_equals_generic_property",),
    ),
    Mutant(
        "streaming-variance-no-delta",
        "activation_update merges chunk variances without the between-chunk term",
        "pure_prune.importance.activation:_update_one",
        _streaming_drops_between_term,
        ("tests/test_importance_activation.py::test_streaming_equals_one_shot",),
    ),
    Mutant(
        "retention-keeps-least-important",
        "keep_masks keeps the least important units",
        "pure_prune.importance.retention:keep_masks",
        _keep_masks_lowest,
        ("tests/test_importance_fusion.py::test_retention_properties",),
    ),
    # groups, trees, keys, data, files, schedules
    Mutant(
        "member-view-units-outermost",
        "member_view groups entries as (unit, outer, inner) instead of (outer, unit, inner)",
        "pure_prune.groups:member_view",
        _member_view_unit_inner,
        (
            "tests/test_groups.py::test_member_view_partitions_the_leaf",
            "tests/test_groups.py::test_unit_mask_to_member_inverts_member_view",
        ),
    ),
    Mutant(
        "unit-mask-ignores-outer",
        "unit_mask_to_member repeats each unit outer times in a row instead of tiling",
        "pure_prune.groups:unit_mask_to_member",
        _unit_mask_ignores_outer,
        ("tests/test_groups.py::test_unit_mask_to_member_inverts_member_view",),
    ),
    Mutant(
        "shard-contiguous",
        "shard hands out ceil(n/world) contiguous points per rank",
        "pure_prune.app.distributed:shard",
        _shard_contiguous,
        ("tests/test_distributed.py::test_shards_are_disjoint_complete_and_deterministic",),
    ),
    Mutant(
        "canonical-keeps-insertion-order",
        "tree.canonical keeps dict keys in insertion order",
        "pure_prune.tree:canonical",
        _canonical_unsorted,
        (
            "tests/test_tree.py::test_canonical_trees_flatten_like_torch",
            TESTING + "test_params_trees_are_canonical_and_bounded",
        ),
    ),
    Mutant(
        "unflatten-reversed",
        "tree.unflatten places the leaves in reverse order",
        "pure_prune.tree:unflatten",
        _unflatten_reversed,
        ("tests/test_tree.py::test_flatten_unflatten_roundtrip",),
    ),
    Mutant(
        "split-same-keys",
        "rng.split returns the same key n times",
        "pure_prune.rng:split",
        _split_same_keys,
        ("tests/test_rng.py::test_split_is_deterministic_and_distinct",),
    ),
    Mutant(
        "batches-with-replacement",
        "batching.batches samples indices with replacement",
        "pure_prune.batching:batches",
        _batches_with_replacement,
        ("tests/test_data.py::test_batches_properties",),
    ),
    Mutant(
        "in-place-skips-opt-state",
        "train.in_place_body writes the new params but not the new optimizer state",
        "pure_prune.train_steps:in_place_body",
        _in_place_skips_opt_state,
        (
            "tests/test_train.py::test_in_place_body_writes_the_pure_steps_results_into_its_inputs",
            "tests/test_train.py::test_fit_runs_a_compiled_step_in_place_with_the_same_results",
        ),
    ),
    Mutant(
        "batches-gather-past-last-full",
        "batching.batches gathers its last chunk past the last full batch (a partial batch with drop_last)",
        "pure_prune.batching:batches",
        _batches_gather_past_last_full,
        ("tests/test_data.py::test_batches_gathered_in_chunks_equal_indexing_each_batch",),
    ),
    Mutant(
        "seed-batches-seed-major",
        "seeds.seed_batches lays a gathered chunk out (seed, batch) instead of (batch, seed)",
        "pure_prune.seeds_stack:_chunk_rows",
        _chunk_rows_seed_major,
        ("tests/test_sweep.py::test_seed_batches_gathered_in_chunks_equal_indexing_each_seed",),
    ),
    Mutant(
        "batches-ignore-key",
        "batching.batches shuffles with key 0 whatever the key",
        "pure_prune.batching:batches",
        _batches_ignore_key,
        ("tests/test_data.py::test_batches_different_keys_give_different_orders",),
    ),
    Mutant(
        "checkpoint-loses-negative-zero",
        "checkpoint.save normalises float tensors with + 0.0 (-0.0 becomes +0.0)",
        "pure_prune.app.checkpoint:save",
        _checkpoint_positive_zero,
        ("tests/test_checkpoint.py::test_round_trip_is_bit_exact",),
    ),
    Mutant(
        "polynomial-inverted",
        "polynomial schedule uses progress k/n where it needs 1 - k/n",
        "pure_prune.schedule:polynomial",
        _polynomial_inverted,
        ("tests/test_schedule.py::test_polynomial_is_monotone_and_bounded",),
    ),
    Mutant(
        "penalty-unclamped",
        "penalty_growth keeps growing after total steps",
        "pure_prune.schedule:penalty_growth",
        _penalty_unclamped,
        ("tests/test_schedule.py::test_penalty_growth_is_monotone_from_zero_to_granularity",),
    ),
    Mutant(
        "nest-not-canonical",
        "structure.nest keeps the given key order",
        "pure_prune.models.structure:nest",
        _nest_not_canonical,
        ("tests/test_models.py::test_nest_inverts_flatten",),
    ),
    # training, seeds, compaction, IMP
    Mutant(
        "sgd-unmasked-momentum",
        "SGD's momentum buffer accumulates the unmasked gradient",
        "pure_prune.optim:sgd",
        _sgd_unmasked_momentum,
        (
            "tests/test_train.py::test_pruned_weights_and_state_stay_exactly_zero[sgd]",
            "tests/test_train.py::test_pruned_weights_and_state_stay_exactly_zero[nesterov]",
        ),
    ),
    Mutant(
        "factors-ignore-bytes-masks",
        "optim.mask_factors treats a mask given as bytes as dense",
        "pure_prune.optim:mask_factors",
        _factors_bytes_dense,
        ("tests/test_optim_leaves.py::test_updates_equal_the_previous_implementation",),
    ),
    Mutant(
        "factors-in-float32",
        "optim.mask_factors makes float32 factors whatever the param dtype",
        "pure_prune.optim:mask_factors",
        _factors_float32,
        ("tests/test_optim_leaves.py::test_mixed_dtypes_equal_the_previous_implementation",),
    ),
    Mutant(
        "premasked-optimizer-unmasked",
        "the premasked step forgets to pass the masks to the optimizer",
        "pure_prune.train:make_step",
        _premasked_skips_optimizer_masks,
        ("tests/test_train.py::test_premasked_step_equals_the_masked_step",),
    ),
    Mutant(
        "select-seeds-seed0-scores",
        "select_seeds ranks every seed by seed 0's scores",
        "pure_prune.seeds_scores:select_seeds",
        _select_seeds_seed0,
        (
            "tests/test_sweep.py::test_select_seeds_equals_per_seed_select_exactly",
            "tests/test_sweep.py::test_vmapped_run_equals_loop_with_batchnorm_and_pruning",
        ),
    ),
    Mutant(
        "compact-keeps-every-unit",
        "compact keeps every unit (removes none)",
        "pure_prune.compact_units:_kept_of",
        _kept_of_all,
        ("tests/test_compact.py::test_compacted_outputs_equal_masked_outputs",),
    ),
    Mutant(
        "expand-ignores-kept-indices",
        "compact.expand puts the k kept units at indices 0..k-1",
        "pure_prune.compact:expand",
        _expand_kept_at_front,
        ("tests/test_compact.py::test_expand_compact_round_trip",),
    ),
    Mutant(
        "compact-training-zeroes-removed-state",
        "compacting_trainer zeroes the BatchNorm state of removed units instead of keeping it",
        "pure_prune.compact_training:_keep_removed_state",
        _removed_state_zeroed,
        (
            "tests/test_compact_training.py::test_training_the_compacted_form_equals_training_the_masked_model",
        ),
    ),
    Mutant(
        "imp-target-one-round-behind",
        "IMP prunes round j to the target of round j - 1",
        "pure_prune.algorithms.imp:target",
        _imp_target_one_round_behind,
        ("tests/test_algorithms_imp.py::test_rounds_are_nested_and_keep_exactly_the_rounding_rule",),
    ),
    # pure_prune.testing.strategies
    Mutant(
        "strategy-masks-all-kept",
        "pst.masks draws all-True masks",
        "pure_prune.testing.mask_strategies:masks",
        _masks_all_kept,
        (
            TESTING + "test_masks_without_kind_draw_an_allowed_kind",
            TESTING + "test_masks_of_each_kind_are_exact",
        ),
    ),
    Mutant(
        "strategy-masks-unknown-kind",
        "pst.masks accepts an unknown kind",
        "pure_prune.testing.mask_strategies:masks",
        _strategy_masks_any_kind,
        (TESTING + "test_bad_strategy_arguments",),
    ),
    Mutant(
        "strategy-n-of-m-keeps-one-more",
        "pst.masks(kind='n_of_m') keeps n + 1 of every m",
        "pure_prune.testing.mask_strategies:_n_of_m",
        _strategy_n_of_m_one_more,
        (TESTING + "test_masks_of_each_kind_are_exact[n_of_m]",),
    ),
    Mutant(
        "strategy-rows-axis-zero",
        "pst.masks(kind='rows', axis=1) removes rows along axis 0",
        "pure_prune.testing.mask_strategies:_rows",
        _strategy_rows_axis_zero,
        (TESTING + "test_masks_of_each_kind_are_exact[rows]",),
    ),
    Mutant(
        "strategy-global-per-leaf",
        "pst.masks(kind='unstructured') rounds the count per leaf",
        "pure_prune.testing.mask_strategies:_unstructured",
        _strategy_global_rounds_per_leaf,
        (TESTING + "test_masks_of_each_kind_are_exact[unstructured]",),
    ),
    Mutant(
        "strategy-block-floor",
        "pst.masks(kind='block') floors the block count",
        "pure_prune.testing.mask_strategies:_blocks",
        _strategy_block_floor,
        (TESTING + "test_masks_of_each_kind_are_exact[block]",),
    ),
    Mutant(
        "strategy-scores-tied",
        "pst.scores(ties=False) draws tied values",
        "pure_prune.testing.mask_strategies:scores",
        _strategy_scores_with_ties,
        (TESTING + "test_scores_tie_free_or_tied",),
    ),
    Mutant(
        "strategy-params-not-canonical",
        "pst.params_trees inserts keys in reverse order",
        "pure_prune.testing.tensor_strategies:params_trees",
        _strategy_params_not_canonical,
        (TESTING + "test_params_trees_are_canonical_and_bounded",),
    ),
    Mutant(
        "strategy-shapes-ignore-multiple",
        "pst.shapes ignores multiple_of",
        "pure_prune.testing.tensor_strategies:shapes",
        _strategy_shapes_ignore_multiple,
        (TESTING + "test_shapes_respect_bounds_and_multiples",),
    ),
    Mutant(
        "strategy-shapes-never-empty",
        "pst.shapes never draws a zero-length axis",
        "pure_prune.testing.tensor_strategies:shapes",
        _strategy_shapes_never_empty,
        (TESTING + "test_params_trees_reach_every_kind_of_leaf",),
    ),
    Mutant(
        "strategy-distinct-values-tie",
        "pst.tensors(values='distinct') draws tied values",
        "pure_prune.testing.tensor_strategies:_values",
        _strategy_distinct_values_tie,
        (TESTING + "test_tensors_distinct_and_tied",),
    ),
    Mutant(
        "strategy-schedules-unsorted",
        "pst.schedules forgets to sort",
        "pure_prune.testing.tensor_strategies:schedules",
        _strategy_schedules_unsorted,
        (TESTING + "test_sparsities_and_schedules",),
    ),
    Mutant(
        "strategy-conv-inner-one",
        "pst.channel_nets gives the conv stem's consumer inner = 1",
        "pure_prune.testing.model_strategies:channel_nets",
        _strategy_conv_inner_one,
        (TESTING + "test_channel_nets_groups_fit_their_params",),
    ),
    Mutant(
        "strategy-labels-one-past",
        "pst.batches draws labels in [1, classes]",
        "pure_prune.testing.model_strategies:batches",
        _strategy_labels_one_past,
        (TESTING + "test_batches_fit_every_model",),
    ),
    # pure_prune.testing.invariants: each check must still catch a broken input
    Mutant(
        "invariant-exact-sparsity-noop",
        "exact_sparsity ignores the count",
        "pure_prune.testing.mask_invariants:exact_sparsity",
        lambda orig, mod: _noop,
        (TESTING + "test_exact_sparsity_global_layer_and_mapping",),
    ),
    Mutant(
        "invariant-pruned-are-zero-noop",
        "pruned_are_zero accepts non-zero pruned entries",
        "pure_prune.testing.mask_invariants:_zero_at_pruned",
        lambda orig, mod: _noop,
        (
            TESTING + "test_pruned_are_zero_names_leaf_index_and_value",
            TESTING + "test_optimizer_state_zero_at_pruned_single_and_list",
        ),
    ),
    Mutant(
        "invariant-masks-fit-params-noop",
        "masks_fit_params accepts any masks",
        "pure_prune.testing.mask_invariants:masks_fit_params",
        lambda orig, mod: _noop,
        (
            TESTING + "test_masks_fit_params_names_the_leaf",
            MASK + "test_validate_agrees_with_masks_fit_params",
        ),
    ),
    Mutant(
        "invariant-masks-nested-noop",
        "masks_nested accepts revived entries",
        "pure_prune.testing.mask_invariants:masks_nested",
        lambda orig, mod: _noop,
        (TESTING + "test_masks_nested_names_revived_entry",),
    ),
    Mutant(
        "invariant-n-of-m-noop",
        "exact_n_of_m accepts any group count",
        "pure_prune.testing.mask_invariants:exact_n_of_m",
        lambda orig, mod: _noop,
        (TESTING + "test_exact_n_of_m_names_the_group_start",),
    ),
    Mutant(
        "invariant-whole-channels-no-count",
        "whole_channels checks wholeness but not the count",
        "pure_prune.testing.mask_invariants:_check_count",
        lambda orig, mod: _noop,
        (TESTING + "test_whole_channels_partial_unit_and_counts", TESTING + "test_whole_rows_and_blocks"),
    ),
    Mutant(
        "invariant-whole-channels-noop",
        "whole_channels accepts partly removed units",
        "pure_prune.testing.mask_invariants:whole_channels",
        lambda orig, mod: _noop,
        (
            TESTING + "test_whole_channels_partial_unit_and_counts",
            TESTING + "test_whole_channels_outer_and_inner_members",
        ),
    ),
    Mutant(
        "invariant-whole-blocks-noop",
        "whole_blocks accepts mixed blocks",
        "pure_prune.testing.mask_invariants:whole_blocks",
        lambda orig, mod: _noop,
        (TESTING + "test_whole_rows_and_blocks",),
    ),
    Mutant(
        "invariant-close-noop",
        "the tensor comparison of vmapped_equals_loop and compacted_equals_masked accepts anything",
        "pure_prune.testing.transform_invariants:_close",
        lambda orig, mod: _noop,
        (TESTING + "test_vmapped_equals_loop_catches_hidden_state",),
    ),
    Mutant(
        "ops-fold-seed0-key",
        "a stack folds seed 0's key for every seed (all seeds draw one data order and control)",
        "pure_prune.algorithms.ops:RoundOps",
        _ops_with(fold=_fold_seed0),
        (OPS + "test_fold_is_fold_in_of_each_seeds_own_key",),
    ),
    Mutant(
        "ops-each-key0",
        "each hands seed 0's key to every seed's host step",
        "pure_prune.algorithms.ops:RoundOps",
        _ops_with(each=_each_key0),
        (OPS + "test_each_on_a_stack_is_the_per_seed_calls_stacked",),
    ),
    Mutant(
        "ops-prune-stack-as-one",
        "a stack's unstructured selection ranks all seeds' scores together instead of per seed",
        "pure_prune.algorithms.ops:RoundOps",
        _ops_with(prune=_prune_as_one),
        (OPS + "test_unstructured_prune_on_a_stack_equals_each_seeds_prune_to",),
    ),
)


def by_id(mutant_id: str) -> Mutant:
    """The mutant named ``mutant_id``; ``KeyError`` listing the known ids otherwise."""
    for m in MUTANTS:
        if m.id == mutant_id:
            return m
    raise KeyError(f"unknown mutant {mutant_id!r}; known: {', '.join(m.id for m in MUTANTS)}")
