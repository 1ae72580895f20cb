"""The bad-input table: every public function refuses what it cannot handle, before any work.

Each row is ``Case(id, call, error, match)``: ``call()`` must raise exactly ``error`` (not a
subclass chosen by accident: the type is compared), its message must match the regex ``match``
(which names the argument or leaf path and the bad value), and the innermost frame of the
traceback must be pure_prune's own code (the error was raised by a check, not by torch, numpy or a
compiled kernel). One parametrised test per function family.

``docs/bad_inputs.md`` is this table with the messages the calls actually raise; regenerate it with

    python tests/test_bad_inputs.py --markdown > docs/bad_inputs.md

``test_doc_matches_table`` fails when it drifts.
"""

from __future__ import annotations

import atexit
import functools
import re
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch

from pure_prune import allocate, groups, kth, losses, mask, models, optim, rng, schedule, select, train, tree
from pure_prune.app import checkpoint, data

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "bad_inputs.md"


class Case(NamedTuple):
    id: str
    call: Callable[[], Any]
    error: type[BaseException]
    match: str


# ------------------------------------------------------------------------------------- fixtures
# Plain functions (not pytest fixtures) so that the markdown generator can run the table too.
_TMP = Path(tempfile.mkdtemp(prefix="pure_prune_bad_inputs_"))
atexit.register(shutil.rmtree, _TMP, True)


def _params() -> dict[str, torch.Tensor]:
    return {"b": torch.zeros(2), "w": torch.arange(6.0).reshape(3, 2)}


def _masks(**leaves: Any) -> dict[str, Any]:
    return {"b": None, "w": torch.ones(3, 2, dtype=torch.bool), **leaves}


def _ones(*shape: int) -> torch.Tensor:
    return torch.ones(*shape, dtype=torch.bool)


def _group() -> groups.ChannelGroup:
    return groups.ChannelGroup("g", 3, (groups.Member("w", 0),))


def _npz(name: str, **change: np.ndarray) -> Path:
    arrays = {
        "x_train": np.ones((4, 2), np.float32),
        "y_train": np.array([0, 1, 2, 1]),
        "x_test": np.ones((2, 2), np.float32),
        "y_test": np.array([0, 1]),
        **change,
    }
    path = _TMP / f"{name}.npz"
    np.savez(path, **arrays)
    return path


def _corrupt_file() -> Path:
    path = _TMP / "corrupt.safetensors"
    path.write_bytes(b"not a checkpoint")
    return path


@functools.cache
def _mlp() -> tuple[Any, Any, Any]:
    spec = models.get("mlp")
    params, state = spec.init(0, sizes=(4, 8, 3))
    return spec, params, state


@functools.cache
def _steps() -> tuple[Any, Any, Any]:
    """A compiled train step and eval step (never compiled here: every case is refused before
    the compiled function is first called), and an optimizer state."""
    spec, params, _ = _mlp()
    opt = optim.sgd(0.1, momentum=0.9)
    step = train.make_step(spec, losses.cross_entropy, opt, compile=True)
    eval_step = train.make_eval_step(spec, losses.cross_entropy, compile=True)
    return step, eval_step, opt.init(params)


def _train(x: Any, y: Any, masks: Any = None) -> Any:
    step, _, opt_state = _steps()
    _, params, state = _mlp()
    return step(params, state, opt_state, masks, (x, y))


def _eval(x: Any, y: Any) -> Any:
    _, eval_step, _ = _steps()
    _, params, state = _mlp()
    return eval_step(params, state, None, (x, y))


_X = torch.ones(2, 4)
_Y = torch.tensor([0, 2])
_NAN = torch.tensor([1.0, float("nan"), 3.0])

# ----------------------------------------------------------------------------------------- table
MASK = [
    Case("apply: (3, 2) mask on a (2,) bias (no broadcasting)",
         lambda: mask.apply(_params(), _masks(b=_ones(3, 2))), ValueError,
         r"mask 'b' has shape \(3, 2\), param has \(2,\)"),
    Case("apply: float mask", lambda: mask.apply(_params(), _masks(w=torch.ones(3, 2))), TypeError,
         r"mask 'w' has dtype torch.float32, expected torch.bool"),
    Case("apply: mask tree lacks a leaf", lambda: mask.apply(_params(), {"w": _ones(3, 2)}), ValueError,
         r"leaves only in params: \['b'\]"),
    Case("apply: mask on a None param", lambda: mask.apply({"b": None, "w": _params()["w"]}, _masks(b=_ones(2))),
         ValueError, r"mask 'b' is a tensor but the param is None"),
    Case("apply: mask on an integer param", lambda: mask.apply({"w": torch.ones(3, 2, dtype=torch.int64)},
         {"w": _ones(3, 2)}), TypeError, r"param 'w' has dtype torch.int64"),
    Case("keep: (3, 2) mask on a (2,) tensor", lambda: mask.keep(torch.zeros(2), _ones(3, 2)), ValueError,
         r"keep: mask of shape \(3, 2\) does not match x of shape \(2,\)"),
    Case("keep: float mask", lambda: mask.keep(torch.zeros(2), torch.ones(2)), TypeError,
         r"keep: the mask must be a bool tensor .* got a torch.float32 tensor"),
    Case("sparsity: integer mask holding 2", lambda: mask.sparsity({"w": torch.full((3, 2), 2)}), TypeError,
         r"mask 'w' is a torch.int64 tensor, expected a bool tensor"),
    Case("count: a string leaf", lambda: mask.count({"w": "all"}), TypeError, r"mask 'w' is str 'all'"),
    Case("count: masks that do not fit params", lambda: mask.count(_masks(w=_ones(2, 3)), _params()), ValueError,
         r"mask 'w' has shape \(2, 3\), param has \(3, 2\)"),
    Case("layer_sparsity: float mask", lambda: mask.layer_sparsity({"w": torch.zeros(2)}), TypeError,
         r"mask 'w' is a torch.float32 tensor"),
    Case("prunable_paths: integer leaf", lambda: mask.prunable_paths({"w": 1}), TypeError, r"mask 'w' is int 1"),
    Case("is_nested: shapes differ", lambda: mask.is_nested({"w": _ones(3, 2)}, {"w": _ones(2, 3)}), ValueError,
         r"is_nested: masks at 'w' have shapes \(3, 2\) \(new\) and \(2, 3\) \(old\)"),
    Case("is_nested: structures differ", lambda: mask.is_nested({"w": _ones(2)}, {"v": _ones(2)}), ValueError,
         r"new and old have different tree structures; leaves only in new: \['w'\]"),
    Case("is_nested: float mask", lambda: mask.is_nested({"w": torch.ones(2)}, {"w": _ones(2)}), TypeError,
         r"is_nested: mask new 'w' is a torch.float32 tensor"),
    Case("intersect: uint8 mask", lambda: mask.intersect({"w": torch.ones(2, dtype=torch.uint8)}, {"w": _ones(2)}),
         TypeError, r"intersect: mask a 'w' is a torch.uint8 tensor"),
    Case("union: shapes differ", lambda: mask.union({"w": _ones(2)}, {"w": _ones(3)}), ValueError,
         r"union: masks at 'w' have shapes \(2,\) and \(3,\)"),
    Case("as_bytes: float mask (4 bytes an entry)", lambda: mask.as_bytes({"w": torch.ones(2)}), TypeError,
         r"mask 'w' is a torch.float32 tensor"),
    Case("from_nonzero: like does not fit", lambda: mask.from_nonzero(_params(), _masks(w=_ones(2, 3))), ValueError,
         r"mask 'w' has shape \(2, 3\), param has \(3, 2\)"),
    Case("ones_like: exclude_paths as one string", lambda: mask.ones_like(_params(), exclude_paths="w*"),
         TypeError, r"single string 'w\*'"),
    Case("ones_like: predicate returns an int", lambda: mask.ones_like(_params(), lambda p, x: x.ndim), TypeError,
         r"prunable\('b', leaf\) returned 1, expected a bool"),
    Case("ones_like: integer weight", lambda: mask.ones_like({"w": torch.ones(3, 2, dtype=torch.int64)}), TypeError,
         r"param 'w' has dtype torch.int64"),
    Case("ones_like: nothing prunable", lambda: mask.ones_like({"b": torch.zeros(2)}), ValueError,
         r"no prunable leaf: the predicate selected none of b"),
    Case("exclude: a non-str pattern", lambda: mask.exclude("fc.*", 3), TypeError, r"pattern \[1\] must be a str glob, got 3"),
]  # fmt: skip

_S = {"w": torch.tensor([[3.0, 1.0], [2.0, 5.0], [4.0, 0.0]])}
SELECT = [
    Case("unstructured: sparsity True prunes 100%", lambda: select.unstructured(_S, True), TypeError,
         r"sparsity must be a real number in \[0, 1\], got bool True"),
    Case("unstructured: sparsity '0.5' (a string)", lambda: select.unstructured(_S, "0.5"), TypeError,
         r"sparsity must be a real number in \[0, 1\], got str '0.5'"),
    Case("unstructured: sparsity as a tensor", lambda: select.unstructured(_S, torch.tensor(0.5)), TypeError,
         r"sparsity must be a real number in \[0, 1\], got a tensor"),
    Case("unstructured: sparsity NaN", lambda: select.unstructured(_S, float("nan")), ValueError,
         r"sparsity must be in \[0, 1\], got nan"),
    Case("unstructured: sparsity 1.5", lambda: select.unstructured(_S, 1.5), ValueError,
         r"sparsity must be in \[0, 1\], got 1.5"),
    Case("unstructured: unknown scope", lambda: select.unstructured(_S, 0.5, scope="all"), ValueError,
         r"scope must be 'global' or 'layer', got 'all'"),
    Case("unstructured: NaN score", lambda: select.unstructured({"w": _NAN}, 0.5), ValueError,
         r"score 'w' is not finite at index \(1,\): nan"),
    Case("unstructured: integer scores", lambda: select.unstructured({"w": torch.arange(4)}, 0.5), TypeError,
         r"score 'w' has dtype torch.int64, expected a floating-point tensor"),
    Case("unstructured: mask shape differs from score", lambda: select.unstructured(_S, 0.5, masks={"w": _ones(2, 3)}),
         ValueError, r"mask 'w' has shape \(2, 3\), score has \(3, 2\)"),
    Case("unstructured: per-leaf mapping misses a leaf", lambda: select.unstructured(_S, {"v": 0.5}, scope="layer"),
         ValueError, r"missing paths \['w'\], unknown paths \['v'\]"),
    Case("unstructured: per-leaf sparsity a string", lambda: select.unstructured(_S, {"w": "0.5"}, scope="layer"),
         TypeError, r"sparsity of 'w' must be a real number in \[0, 1\], got str '0.5'"),
    Case("rows: axis out of range", lambda: select.rows(_S, 0.5, axis=5), ValueError,
         r"rows: axis 5 out of range for score 'w' of shape \(3, 2\)"),
    Case("rows: float axis", lambda: select.rows(_S, 0.5, axis=0.5), TypeError, r"rows: axis must be an int, got float 0.5"),
    Case("rows: ord a string", lambda: select.rows(_S, 0.5, ord="fro"), TypeError,
         r"ord must be a real number > 0 .* got str 'fro'"),
    Case("rows: ord 0", lambda: select.rows(_S, 0.5, ord=0), ValueError, r"ord must be > 0 .* got 0"),
    Case("n_of_m: m does not divide the axis", lambda: select.n_of_m(_S, 2, 4), ValueError,
         r"n_of_m: m=4 does not divide axis -1 of length 2 in score 'w'"),
    Case("n_of_m: n > m", lambda: select.n_of_m(_S, 3, 2), ValueError, r"n_of_m needs integers 0 <= n <= m .* n=3, m=2"),
    Case("block: block_shape of floats", lambda: select.block(_S, 0.5, (1.5, 1)), TypeError,
         r"block_shape must be a pair of ints \(bh, bw\), got \(1.5, 1\)"),
    Case("block: block does not tile", lambda: select.block(_S, 0.5, (2, 2)), ValueError,
         r"block \(2, 2\) does not tile the first two axes of score 'w' with shape \(3, 2\)"),
    Case("units: unit_scores as a list", lambda: select.units([torch.ones(3)], 0.5, [_group()], _S), TypeError,
         r"unit_scores must be a mapping \{group name: \(size,\) tensor\}, got list"),
    Case("units: scores of the wrong length", lambda: select.units({"g": torch.ones(2)}, 0.5, [_group()], _S),
         ValueError, r"units: scores of group 'g' have shape \(2,\), expected \(3,\)"),
    Case("units: integer unit scores", lambda: select.units({"g": torch.ones(3, dtype=torch.int64)}, 0.5, [_group()], _S),
         TypeError, r"units: scores of group 'g' must be a float tensor, got a torch.int64 tensor"),
    Case("units: one group instead of a sequence", lambda: select.units({"g": torch.ones(3)}, 0.5, _group(), _S),
         TypeError, r"groups must be a sequence of ChannelGroup, got ChannelGroup"),
    Case("units: a group member not in the tree", lambda: select.units(
         {"g": torch.ones(3)}, 0.5, [groups.ChannelGroup("g", 3, (groups.Member("v", 0),))], _S),
         ValueError, r"channel group 'g': member 'v' is not a leaf of the tree"),
    Case("channels: no unit scores for a group", lambda: select.units({}, 0.5, [_group()], _S), ValueError,
         r"units: no unit scores for group 'g'"),
    Case("lowest_k: float k", lambda: select.lowest_k([torch.ones(3)], 1.5), TypeError,
         r"lowest_k: k must be an int, got float 1.5"),
    Case("lowest_k: a 2-D tensor", lambda: select.lowest_k([torch.ones(2, 2)], 1), TypeError,
         r"lowest_k: flat\[0\] is torch.float32 of shape \(2, 2\); expected 1-D tensors"),
    Case("lowest_k: NaN in a float16 tensor", lambda: select.lowest_k([_NAN.half()], 1), ValueError,
         r"lowest_k: flat\[0\] holds NaN"),
]  # fmt: skip

TREE = [
    Case("stack: leaf shapes differ", lambda: tree.stack([{"w": torch.ones(3)}, {"w": torch.ones(4)}]), ValueError,
         r"stack: leaf 'w' has shape \(3,\) in trees\[0\] but \(4,\) in trees\[1\]"),
    Case("stack: leaf dtypes differ", lambda: tree.stack([{"w": torch.ones(3)}, {"w": torch.ones(3).double()}]),
         TypeError, r"stack: leaf 'w' is torch.float32 on cpu in trees\[0\] but torch.float64 on cpu in trees\[1\]"),
    Case("stack: structures differ", lambda: tree.stack([{"w": torch.ones(3)}, {"v": torch.ones(3)}]), ValueError,
         r"trees\[0\] and trees\[1\] have different tree structures; leaves only in trees\[0\]: \['w'\]"),
    Case("stack: None and a tensor at one path", lambda: tree.stack([{"w": None}, {"w": torch.ones(3)}]), ValueError,
         r"stack: leaf 'w' is None in some trees and a tensor in others"),
    Case("stack: a dict instead of a list", lambda: tree.stack({"a": {"w": torch.ones(3)}}), TypeError,
         r"stack needs a list or tuple of trees, got dict"),
    Case("stack: a non-tensor leaf", lambda: tree.stack([{"w": 1}, {"w": 2}]), TypeError,
         r"stack: leaf 'w' of trees\[0\] is int 1, expected a tensor"),
    Case("unstack: leading size is not n", lambda: tree.unstack({"w": torch.ones(3, 2)}, 2), ValueError,
         r"unstack: leaf 'w' has shape \(3, 2\), expected leading size 2"),
    Case("unstack: n a string", lambda: tree.unstack({"w": torch.ones(3)}, "3"), TypeError,
         r"unstack: n must be a non-negative int or None, got '3'"),
    Case("unstack: a non-tensor leaf", lambda: tree.unstack({"w": [1, 2]}, 2), TypeError,
         r"unstack: leaf 'w.0' is int 1, expected a tensor or None"),
]  # fmt: skip

_P = {"w": torch.ones(3)}
OPTIM = [
    Case("sgd: momentum 1.5", lambda: optim.sgd(0.1, momentum=1.5), ValueError, r"momentum must be in \[0, 1\), got 1.5"),
    Case("sgd: momentum 1 (never decays)", lambda: optim.sgd(0.1, momentum=1), ValueError,
         r"momentum must be in \[0, 1\), got 1"),
    Case("sgd: momentum a string", lambda: optim.sgd(0.1, momentum="0.9"), TypeError,
         r"momentum must be a real number, got '0.9'"),
    Case("sgd: negative lr", lambda: optim.sgd(-0.1), ValueError, r"lr must be >= 0, got -0.1"),
    Case("sgd: NaN lr", lambda: optim.sgd(float("nan")), ValueError, r"lr must be finite, got nan"),
    Case("sgd: nesterov without momentum", lambda: optim.sgd(0.1, nesterov=True), ValueError,
         r"nesterov=True needs momentum > 0"),
    Case("adam: beta1 = 1", lambda: optim.adam(betas=(1.0, 0.999)), ValueError, r"betas\[0\] must be in \[0, 1\), got 1.0"),
    Case("adamw: weight_decay True", lambda: optim.adamw(weight_decay=True), TypeError,
         r"weight_decay must be a real number, got True"),
    Case("init: integer params", lambda: optim.sgd(0.1).init({"w": torch.ones(3, dtype=torch.int64)}), TypeError,
         r"params at 'w' must be a floating-point tensor, got a torch.int64 tensor"),
    Case("update: float64 gradient for float32 params",
         lambda: optim.sgd(0.1).update({"w": torch.ones(3).double()}, optim.sgd(0.1).init(_P), _P), TypeError,
         r"grads at 'w' has dtype torch.float64, but the param is torch.float32"),
    Case("update: gradient of another shape",
         lambda: optim.sgd(0.1).update({"w": torch.ones(4)}, optim.sgd(0.1).init(_P), _P), ValueError,
         r"grads at 'w' has shape \(4,\), but the param is \(3,\)"),
    Case("update: state of another optimizer",
         lambda: optim.sgd(0.1, momentum=0.9).update(_P, optim.sgd(0.1).init(_P), _P), ValueError,
         r"opt_state lacks \['momentum'\]"),
    Case("update: momentum tree of other shapes",
         lambda: optim.sgd(0.1, momentum=0.9).update(_P, optim.sgd(0.1, momentum=0.9).init({"w": torch.ones(4)}), _P),
         ValueError, r"opt_state\['momentum'\] at 'w' has shape \(4,\), but the param is \(3,\)"),
    Case("update: float mask", lambda: optim.sgd(0.1).update(_P, optim.sgd(0.1).init(_P), _P, {"w": torch.ones(3)}),
         TypeError, r"mask 'w' has dtype torch.float32"),
    Case("apply_updates: float64 updates", lambda: optim.apply_updates(_P, {"w": torch.ones(3).double()}), TypeError,
         r"updates at 'w' has dtype torch.float64, but the param is torch.float32"),
    Case("set_lr: negative", lambda: optim.set_lr(optim.sgd(0.1).init(_P), -1.0), ValueError, r"lr must be >= 0, got -1.0"),
    Case("multistep: milestones not increasing", lambda: optim.multistep(0.1, [5, 3]), ValueError,
         r"milestones must be strictly increasing, got \[5, 3\]"),
    Case("multistep: milestones an int", lambda: optim.multistep(0.1, 5), TypeError,
         r"milestones must be a sequence of ints, got 5"),
    Case("cosine: total_steps 0", lambda: optim.cosine(0.1, 0), ValueError, r"total_steps must be >= 1, got 0"),
    Case("warmup: warmup_steps 2.5", lambda: optim.warmup(0.1, 2.5), TypeError, r"warmup_steps must be an int, got 2.5"),
]  # fmt: skip

KTH = [
    Case("kth_smallest: NaN entry", lambda: kth.kth_smallest([_NAN], 1), ValueError,
         r"flat\[0\] holds NaN at index 1; NaN has no rank"),
    Case("kth_smallest: k 1.5", lambda: kth.kth_smallest([torch.ones(3)], 1.5), TypeError, r"k must be an int, got float 1.5"),
    Case("kth_smallest: k beyond the entries", lambda: kth.kth_smallest([torch.ones(3)], 4), ValueError,
         r"k must be in \[1, 3\], got 4"),
    Case("kth_smallest: mixed dtypes", lambda: kth.kth_smallest([torch.ones(3), torch.ones(2).double()], 1), TypeError,
         r"flat\[1\] is torch.float64 on cpu but flat\[0\] is torch.float32 on cpu"),
    Case("kth_smallest: integer tensor", lambda: kth.kth_smallest([torch.arange(3)], 1), TypeError,
         r"flat\[0\] is torch.int64 of shape \(3,\); expected a 1-D float32 or float64 tensor"),
    Case("kth_smallest: 2-D tensor", lambda: kth.kth_smallest([torch.ones(2, 2)], 1), TypeError,
         r"flat\[0\] is torch.float32 of shape \(2, 2\)"),
    Case("kth_smallest: a tensor instead of a list", lambda: kth.kth_smallest(torch.ones(3), 1), TypeError,
         r"flat must be a non-empty sequence of 1-D tensors, got Tensor"),
    Case("order_keys: float16", lambda: kth.order_keys(torch.ones(2).half()), TypeError,
         r"order_keys supports float32 and float64 tensors, got torch.float16"),
]  # fmt: skip

SCHEDULE = [
    Case("one_shot: final '0.5' (a string)", lambda: schedule.one_shot("0.5"), TypeError,
         r"final must be a real number, got str '0.5'"),
    Case("one_shot: final True", lambda: schedule.one_shot(True), TypeError, r"final must be a real number, got bool True"),
    Case("one_shot: final 1.5", lambda: schedule.one_shot(1.5), ValueError, r"final must be in \[0, 1\], got 1.5"),
    Case("one_shot: step '3'", lambda: schedule.one_shot(0.5)("3"), TypeError, r"step must be an int >= 0, got str '3'"),
    Case("polynomial: every 0", lambda: schedule.polynomial(0, 0.5, start=0, every=0, updates=3), ValueError,
         r"every must be an int >= 1, got 0"),
    Case("polynomial: power a string", lambda: schedule.polynomial(0, 0.5, start=0, every=1, updates=3, power="3"),
         TypeError, r"power must be a real number, got str '3'"),
    Case("linear_steps: start 1.5", lambda: schedule.linear_steps(0.4, start=1.5), TypeError,
         r"start must be an int >= 0, got float 1.5"),
    Case("geometric: rate 1", lambda: schedule.geometric(1.0), ValueError, r"rate must be in \[0, 1\) .* got 1.0"),
    Case("geometric: round -1", lambda: schedule.geometric(0.2)(-1), ValueError, r"round must be an int >= 0, got -1"),
    Case("progressive: factor pair malformed", lambda: schedule.progressive(0.2, factors=((0,),)), TypeError,
         r"factors\[0\] must be a \(first round, multiplier\) pair, got \(0,\)"),
    Case("progressive_rates: no round-0 factor", lambda: schedule.progressive_rates(0.2, 3, factors=((1, 1.0),)),
         ValueError, r"factors must start at round 0"),
    Case("penalty_growth: unknown kind", lambda: schedule.penalty_growth("cubic", 1.0, 10), ValueError,
         r"unknown penalty growth 'cubic'"),
    Case("penalty_growth: granularity NaN", lambda: schedule.penalty_growth("x", float("nan"), 10), ValueError,
         r"granularity must be finite and >= 0, got nan"),
    Case("penalty_growth: step 2.5", lambda: schedule.penalty_growth("x", 1.0, 10)(2.5), TypeError,
         r"step must be an int >= 0, got float 2.5"),
]  # fmt: skip

_M = {"a": _ones(4, 4), "b": None, "c": _ones(8, 4)}
ALLOCATE = [
    Case("uniform: sparsity '0.5'", lambda: allocate.uniform(_M, "0.5"), TypeError,
         r"sparsity must be a real number, got str '0.5'"),
    Case("erk: sparsity 1.5", lambda: allocate.erk(_M, 1.5), ValueError, r"sparsity must be in \[0, 1\], got 1.5"),
    Case("erk: power_scale inf", lambda: allocate.erk(_M, 0.5, power_scale=float("inf")), ValueError,
         r"power_scale must be finite, got inf"),
    Case("uniform: float mask", lambda: allocate.uniform({"a": torch.ones(2)}, 0.5), TypeError,
         r"mask 'a' is a torch.float32 tensor, expected a bool tensor or None"),
    Case("uniform: no prunable leaf", lambda: allocate.uniform({"a": None}, 0.5), ValueError,
         r"the mask tree has no prunable leaf"),
    Case("layer_multipliers: negative multiplier", lambda: allocate.layer_multipliers(_M, 0.5, (1.0, -1.0)), ValueError,
         r"multipliers must be finite, non-negative and non-empty, got \(1.0, -1.0\)"),
    Case("layer_multipliers: multipliers a string", lambda: allocate.layer_multipliers(_M, 0.5, "abc"), TypeError,
         r"multipliers must be a sequence of real numbers, got 'abc'"),
    Case("layer_multipliers: order misses a leaf", lambda: allocate.layer_multipliers(_M, 0.5, order=["a"]), ValueError,
         r"order must list exactly the prunable paths \['a', 'c'\], got \['a'\]"),
]  # fmt: skip

RNG = [
    Case("check_key: -1", lambda: rng.split(-1), ValueError, r"key must be a non-negative int, got -1"),
    Case("check_key: 1.0", lambda: rng.generator(1.0), TypeError, r"key must be a non-negative int .* got 1.0"),
    Case("check_key: True", lambda: rng.normal(True, (2,)), TypeError, r"key must be a non-negative int .* got True"),
    Case("fold_in: data '3'", lambda: rng.fold_in(0, "3"), TypeError, r"data must be an int, got str '3'"),
    Case("split: n -1", lambda: rng.split(0, -1), ValueError, r"n must be >= 0, got -1"),
    Case("normal: negative size", lambda: rng.normal(0, (2, -1)), ValueError,
         r"shape must hold non-negative sizes, got \(2, -1\)"),
    Case("normal: integer dtype", lambda: rng.normal(0, (2,), dtype=torch.int64), TypeError,
         r"dtype must be a floating-point torch.dtype, got torch.int64"),
    Case("uniform: shape a string", lambda: rng.uniform(0, "22"), TypeError, r"shape must be a tuple of ints, got '22'"),
    Case("rademacher: bool dtype", lambda: rng.rademacher(0, (2,), dtype=torch.bool), TypeError,
         r"dtype must hold -1, got torch.bool"),
]  # fmt: skip

GROUPS = [
    Case("member_view: axis out of range", lambda: groups.member_view(torch.ones(3, 2), groups.Member("w", 3), 3),
         ValueError, r"group member 'w': axis 3 is out of range for a 2-D leaf"),
    Case("member_view: 0-d leaf", lambda: groups.member_view(torch.tensor(1.0), groups.Member("w", 0), 1), ValueError,
         r"group member 'w': axis 0 is out of range for a 0-D leaf"),
    Case("member_view: axis length is not outer*size*inner",
         lambda: groups.member_view(torch.ones(3, 2), groups.Member("w", 0), 2), ValueError,
         r"group member 'w': axis 0 has length 3, expected outer\*size\*inner = 1\*2\*1"),
    Case("member_view: outer 0", lambda: groups.member_view(torch.ones(3, 2), groups.Member("w", 0, outer=0), 3),
         ValueError, r"group member 'w': size must be >= 0 and outer, inner >= 1, got size=3, outer=0, inner=1"),
    Case("unit_mask_to_member: float unit mask",
         lambda: groups.unit_mask_to_member(torch.ones(3), groups.Member("w", 0), torch.Size((3, 2))), TypeError,
         r"group member 'w': unit_mask must be a 1-D bool tensor, got torch.float32 of shape \(3,\)"),
    Case("unit_mask_to_member: shape does not fit",
         lambda: groups.unit_mask_to_member(_ones(3), groups.Member("w", 1), (3, 2)), ValueError,
         r"group member 'w': axis 1 of shape \(3, 2\) has length 2, expected outer\*size\*inner = 1\*3\*1"),
]  # fmt: skip

CHECKPOINT = [
    Case("save: path None", lambda: checkpoint.save(None, {"p": _P}), TypeError,
         r"path must be a non-empty str or os.PathLike, got NoneType None"),
    Case("save: tree name with '/'", lambda: checkpoint.save(_TMP / "c.safetensors", {"a/b": _P}), ValueError,
         r"tree name 'a/b' must be a non-empty str without '/'"),
    Case("save: NaN in metadata", lambda: checkpoint.save(_TMP / "c.safetensors", {"p": _P}, {"x": float("nan")}),
         ValueError, r"metadata\['x'\] is nan; JSON has no NaN"),
    Case("save: dict key with '.'", lambda: checkpoint.save(_TMP / "c.safetensors", {"p": {"a.b": torch.ones(1)}}),
         ValueError, r"tree 'p' leaf '' has key 'a.b'; dict keys must not contain '.'"),
    Case("save: a set leaf", lambda: checkpoint.save(_TMP / "c.safetensors", {"p": {"s": {1, 2}}}), TypeError,
         r"tree 'p' leaf 's' is set \(\{1, 2\}\)"),
    Case("save_json_atomic: a tensor in the object", lambda: checkpoint.save_json_atomic(_TMP / "a.json", {"t": _NAN}),
         TypeError, r"obj\['t'\] is Tensor"),
    Case("load: missing file", lambda: checkpoint.load(_TMP / "missing.safetensors"), FileNotFoundError,
         r"checkpoint '.*missing.safetensors' does not exist"),
    Case("load: not a checkpoint", lambda: checkpoint.load(_corrupt_file()), checkpoint.CorruptCheckpointError,
         r"checkpoint '.*corrupt.safetensors' is corrupt or incomplete"),
    Case("latest: pattern an int", lambda: checkpoint.latest(_TMP, 3), TypeError,
         r"pattern must be a non-empty str glob, got 3"),
]  # fmt: skip

DATA = [
    Case("npz: labels reach 2**40", lambda: data.load("npz", root=_npz("big", y_train=np.array([0, 2**40, 1, 1]))),
         ValueError, r"y_train\[1\] = 1099511627776 is outside \[0, MAX_CLASSES = 65536\)"),
    Case("npz: negative label", lambda: data.load("npz", root=_npz("neg", y_test=np.array([0, -3]))), ValueError,
         r"y_test\[1\] = -3 is outside \[0, MAX_CLASSES = 65536\)"),
    Case("npz: num_classes 100000", lambda: data.load("npz", root=_npz("ok"), num_classes=100_000), ValueError,
         r"num_classes = 100000 exceeds MAX_CLASSES = 65536"),
    Case("npz: num_classes below the labels", lambda: data.load("npz", root=_npz("ok"), num_classes=2), ValueError,
         r"y_train\[2\] = 2 is outside \[0, 2\)"),
    Case("npz: float labels", lambda: data.load("npz", root=_npz("fl", y_train=np.ones(4))), TypeError,
         r"y_train has dtype float64; expected numpy kind in 'iu'"),
    Case("npz: NaN input", lambda: data.load("npz", root=_npz("nan", x_train=np.array([[0, 1], [2, np.nan]] * 2))),
         ValueError, r"x_train\[1, 1\] = nan is not finite"),
    Case("npz: inputs and labels differ in length", lambda: data.load("npz", root=_npz("len", x_test=np.ones((3, 2)))),
         ValueError, r"x_test has shape \(3, 2\) but y_test has shape \(2,\)"),
    Case("npz: empty label array", lambda: data.load("npz", root=_npz("empty", y_test=np.zeros(0, np.int64))),
         ValueError, r"y_test must be a non-empty 1-D label array, got shape \(0,\)"),
    Case("load: unknown dataset", lambda: data.load("imagenet"), ValueError, r"unknown dataset 'imagenet'"),
    Case("load: root an int", lambda: data.load("npz", root=3), TypeError, r"root must be a str or Path, got int 3"),
    Case("load: unknown option", lambda: data.load("digits", size=3), TypeError,
         r"load\('digits'\) got unknown option\(s\) \['size'\]"),
    Case("batches: batch_size 0", lambda: data.batches(torch.ones(4, 2), torch.zeros(4), 0, key=None), ValueError,
         r"batch_size must be a positive int, got 0"),
    Case("batches: lengths differ", lambda: data.batches(torch.ones(4, 2), torch.zeros(3), 2, key=None), ValueError,
         r"x has shape \(4, 2\) but y has shape \(3,\); lengths differ"),
    Case("batches: key -1", lambda: data.batches(torch.ones(4, 2), torch.zeros(4), 2, key=-1), ValueError,
         r"key must be a non-negative int, got -1"),
    Case("check_batch: label outside the classes", lambda: data.check_batch(_X, torch.tensor([0, 7]), (4,), 3),
         ValueError, r"y\[1\] = 7 is outside \[0, 3\)"),
    Case("tokenize: bytes", lambda: data.tokenize(b"abc", "char"), TypeError, r"text must be a str, got bytes"),
    Case("decode: id outside the vocabulary", lambda: data.decode(torch.tensor([0, 5]), ("<unk>", "a"), "char"),
         ValueError, r"ids\[1\] = 5 is outside \[0, 2\)"),
    Case("num_batches: n -1", lambda: data.num_batches(-1, 2), ValueError, r"n must be a non-negative int, got -1"),
]  # fmt: skip

TRAIN = [
    Case("compiled step: label 10 with 3 classes", lambda: _train(_X, torch.tensor([0, 10])), ValueError,
         r"batch\[1\] \(the labels\) at index \(1,\) is 10, outside \[0, 3\): the model has 3 classes"),
    Case("compiled step: label -1", lambda: _train(_X, torch.tensor([-1, 0])), ValueError,
         r"batch\[1\] \(the labels\) at index \(0,\) is -1, outside \[0, 3\)"),
    Case("compiled step: float64 batch", lambda: _train(_X.double(), _Y), TypeError,
         r"batch\[0\] \(the inputs\) has dtype torch.float64 but the params are torch.float32"),
    Case("compiled step: NaN in the batch", lambda: _train(torch.tensor([[0.0, float("nan"), 0, 0]] * 2), _Y),
         ValueError, r"batch\[0\] is not finite at index \(0, 1\): nan"),
    Case("compiled step: inf in the batch", lambda: _train(torch.tensor([[0.0, 0, 0, float("inf")]] * 2), _Y),
         ValueError, r"batch\[0\] is not finite at index \(0, 3\): inf"),
    Case("compiled step: inputs of the wrong width", lambda: _train(torch.ones(2, 5), _Y), ValueError,
         r"batch\[0\] of shape \(2, 5\) and dtype torch.float32 does not fit the model"),
    Case("compiled step: labels None", lambda: _train(_X, None), TypeError,
         r"batch\[1\] \(the labels\) must be a tensor, got None"),
    Case("compiled step: broadcasting mask", lambda: _train(_X, _Y, {
         "fc1": {"bias": _ones(8, 4), "weight": _ones(8, 4)}, "fc2": {"bias": None, "weight": _ones(3, 8)}}),
         ValueError, r"mask 'fc1.bias' has shape \(8, 4\), param has \(8,\)"),
    Case("compiled eval step: label 3 with 3 classes", lambda: _eval(_X, torch.tensor([3, 0])), ValueError,
         r"batch\[1\] \(the labels\) at index \(0,\) is 3, outside \[0, 3\)"),
    Case("compiled eval step: float64 batch", lambda: _eval(_X.double(), _Y), TypeError,
         r"batch\[0\] \(the inputs\) has dtype torch.float64"),
    Case("make_step: loss not callable", lambda: train.make_step(models.get("mlp"), "ce", optim.sgd(0.1)), TypeError,
         r"loss must be callable, got 'ce'"),
    Case("fit: epochs -1", lambda: train.fit(lambda *a: a, {}, {}, {}, None, lambda e: [], -1), ValueError,
         r"epochs must be an int >= 0, got -1"),
]  # fmt: skip

FAMILIES: dict[str, list[Case]] = {
    "mask": MASK,
    "select": SELECT,
    "tree": TREE,
    "optim": OPTIM,
    "kth": KTH,
    "schedule": SCHEDULE,
    "allocate": ALLOCATE,
    "rng": RNG,
    "groups": GROUPS,
    "checkpoint": CHECKPOINT,
    "data": DATA,
    "train": TRAIN,
}


# ------------------------------------------------------------------------------------- the checks
_OUTCOMES: dict[str, tuple[BaseException | None, str]] = {}


def _outcome(family: str, case: Case) -> tuple[BaseException | None, str]:
    """``(exception or None, file of the innermost traceback frame)``, computed once per case."""
    key = f"{family}/{case.id}"
    if key not in _OUTCOMES:
        try:
            case.call()
        except BaseException as e:  # noqa: BLE001 - the table is about what is raised
            frames = traceback.extract_tb(e.__traceback__)
            _OUTCOMES[key] = (e, frames[-1].filename if frames else "")
        else:
            _OUTCOMES[key] = (None, "")
    return _OUTCOMES[key]


def _expect(family: str, case: Case) -> None:
    err, where = _outcome(family, case)
    assert err is not None, f"{case.id}: accepted silently"
    assert type(err) is case.error, f"{case.id}: raised {type(err).__name__}: {err}"
    assert re.search(case.match, str(err)), f"{case.id}: message {str(err)!r} does not match {case.match!r}"
    assert str(ROOT / "pure_prune") in where, f"{case.id}: raised from {where}, not by a pure_prune check"


def _ids(cases: list[Case]) -> list[str]:
    return [c.id for c in cases]


def test_table_has_unique_ids_and_enough_cases():
    ids = [f"{f}/{c.id}" for f, cases in FAMILIES.items() for c in cases]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 50


@pytest.mark.parametrize("case", MASK, ids=_ids(MASK))
def test_mask(case):
    _expect("mask", case)


@pytest.mark.parametrize("case", SELECT, ids=_ids(SELECT))
def test_select(case):
    _expect("select", case)


@pytest.mark.parametrize("case", TREE, ids=_ids(TREE))
def test_tree(case):
    _expect("tree", case)


@pytest.mark.parametrize("case", OPTIM, ids=_ids(OPTIM))
def test_optim(case):
    _expect("optim", case)


@pytest.mark.parametrize("case", KTH, ids=_ids(KTH))
def test_kth(case):
    _expect("kth", case)


@pytest.mark.parametrize("case", SCHEDULE, ids=_ids(SCHEDULE))
def test_schedule(case):
    _expect("schedule", case)


@pytest.mark.parametrize("case", ALLOCATE, ids=_ids(ALLOCATE))
def test_allocate(case):
    _expect("allocate", case)


@pytest.mark.parametrize("case", RNG, ids=_ids(RNG))
def test_rng(case):
    _expect("rng", case)


@pytest.mark.parametrize("case", GROUPS, ids=_ids(GROUPS))
def test_groups(case):
    _expect("groups", case)


@pytest.mark.parametrize("case", CHECKPOINT, ids=_ids(CHECKPOINT))
def test_checkpoint(case):
    _expect("checkpoint", case)


@pytest.mark.parametrize("case", DATA, ids=_ids(DATA))
def test_data(case):
    _expect("data", case)


@pytest.mark.parametrize("case", TRAIN, ids=_ids(TRAIN))
def test_train(case):
    _expect("train", case)


def test_train_step_checks_once_per_signature_and_still_trains():
    """The value checks run on the first batch of a signature; a good batch then trains (eagerly
    here, so no compile), and a later bad batch of the same signature is not read again: the
    documented trade-off (``data.load`` checked every label and input when it loaded them)."""
    spec, params, state = _mlp()
    opt = optim.sgd(0.1)
    step = train.make_step(spec, losses.cross_entropy, opt, compile=False)
    out = step(params, state, opt.init(params), None, (_X, _Y))
    assert torch.isfinite(out[3]["loss"])
    with pytest.raises(TypeError, match="float64"):  # a new signature is checked again
        step(params, state, opt.init(params), None, (_X.double(), _Y))


# ------------------------------------------------------------------------------------ the document
def _clean(text: str) -> str:
    text = text.replace(str(_TMP), "<tmp>").replace("\n", " ").replace("|", "\\|")
    return re.sub(r"0x[0-9a-f]+", "0x…", text)


def markdown() -> str:
    """The table as Markdown: family, case, error type and the message the call raises."""
    lines = [
        "# Bad inputs and what they raise",
        "",
        "Generated by `python tests/test_bad_inputs.py --markdown > docs/bad_inputs.md` from the table",
        "that `tests/test_bad_inputs.py` checks (`test_doc_matches_table` fails when they drift). Every",
        "call raises the listed type from a pure_prune check, before any work: none is accepted",
        "silently, none reaches a kernel or raises from inside torch.",
        "",
        "| family | case | error | message |",
        "|---|---|---|---|",
    ]
    for family, cases in FAMILIES.items():
        for case in cases:
            err, _ = _outcome(family, case)
            kind = "(none)" if err is None else type(err).__name__
            lines.append(f"| {family} | {_clean(case.id)} | {kind} | {_clean(str(err) if err else '')} |")
    count = sum(len(c) for c in FAMILIES.values())
    lines += ["", f"{count} cases.", ""]
    return "\n".join(lines)


def test_doc_matches_table():
    assert DOC.read_text() == markdown(), (
        "regenerate: python tests/test_bad_inputs.py --markdown > docs/bad_inputs.md"
    )


if __name__ == "__main__":
    if sys.argv[1:] != ["--markdown"]:
        raise SystemExit("usage: python tests/test_bad_inputs.py --markdown > docs/bad_inputs.md")
    sys.stdout.write(markdown())
