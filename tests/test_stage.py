"""Tests for pure_prune.stage: one compile per stage signature, counted from torch's own metrics;
The staged-recompilation decision by hand; the log lines.

Compiles use ``backend="eager"`` (dynamo traces and guards exactly as with inductor; only the
code generation is skipped, which keeps this file fast); one test compiles with inductor.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo.utils as dynamo_utils

from pure_prune import compact, losses, mask, optim, select, stage, stage_saved, train, tree
from pure_prune import models as model_registry

SIZES = (16, 8, 8, 4)


@pytest.fixture(scope="module")
def mlp():
    spec = model_registry.get("mlp")
    params, state = spec.init(0, sizes=SIZES)
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(32, SIZES[0], generator=g), torch.randint(0, SIZES[-1], (32,), generator=g))
    return spec, params, state, batch


def _graphs() -> int:
    return dynamo_utils.counters["stats"]["unique_graphs"]


# ------------------------------------------------------------------------------------ Compiled
def test_mask_only_imp_compiles_train_and_eval_step_once(mlp):
    spec, params, state, batch = mlp
    opt = optim.sgd(0.05, momentum=0.9)
    step = stage.Compiled(train.make_step(spec, losses.cross_entropy, opt, compile=False), backend="eager")
    evaluate = stage.Compiled(
        train.make_eval_step(spec, losses.cross_entropy, compile=False), backend="eager"
    )
    opt_state = opt.init(params)
    masks = mask.ones_like(params)
    graphs = _graphs()
    for r in range(20):
        scores = tree.map(lambda p, m: None if m is None else p.abs(), params, masks)
        masks = select.unstructured(scores, 1.0 - 0.8 ** (r + 1), masks=masks)
        opt_state = optim.set_lr(opt_state, 0.05 * 0.9**r)  # a new learning rate: a tensor input
        for _ in range(2):
            params, state, opt_state, _ = step(params, state, opt_state, masks, batch)
        evaluate(params, state, masks, batch)
    assert _graphs() - graphs == 2  # torch's own counter: one train graph, one eval graph
    (train_stats,) = step.stats().values()
    (eval_stats,) = evaluate.stats().values()
    assert train_stats["compiles"] == 1 and train_stats["calls"] == 40
    assert eval_stats["compiles"] == 1 and eval_stats["calls"] == 20
    assert train_stats["compile_seconds"] > 0 and eval_stats["compile_seconds"] > 0
    assert mask.sparsity(masks) == pytest.approx(1 - 0.8**20, abs=0.02)
    # the step kept every pruned weight at exactly zero
    assert all(
        bool((p[~m] == 0).all()) for p, m in zip(tree.leaves(params), tree.leaves(masks)) if m is not None
    )


def test_compacted_stage_compiles_once_more_and_form_tag_forces_a_new_stage(mlp):
    spec, params, state, batch = mlp
    opt = optim.sgd(0.05)
    step = stage.Compiled(train.make_step(spec, losses.cross_entropy, opt, compile=False), backend="eager")
    groups = spec.groups(params)
    masks = select.channels(tree.map(torch.abs, params), 0.5, groups)
    for _ in range(3):
        params, state, _, _ = step(params, state, opt.init(params), masks, batch)
    small_p, small_s, small_m, kept = compact.compact(params, state, masks, groups)
    for _ in range(3):
        small_p, small_s, _, _ = step.at("compact")(small_p, small_s, opt.init(small_p), small_m, batch)
    step.at("masked-recompiled")(params, state, opt.init(params), masks, batch)  # same shapes, new tag
    stats = step.stats()
    assert [s.split("/")[0] for s in stats] == ["masked", "compact", "masked-recompiled"]
    assert [v["compiles"] for v in stats.values()] == [1, 1, 1]
    assert [v["calls"] for v in stats.values()] == [3, 3, 1]
    full = compact.expand(small_p, small_s, small_m, kept, groups)[0]
    assert tree.structure(full) == tree.structure(params)


def test_more_stages_than_dynamo_recompile_limit_each_compile_once():
    def f(x):
        return (x * 2).sum(0)

    run = stage.Compiled(f, backend="eager")
    limit = torch._dynamo.config.recompile_limit
    for n in range(1, limit + 3):
        assert torch.equal(run(torch.ones(n, 3)), torch.full((3,), 2.0 * n))
    assert [v["compiles"] for v in run.stats().values()] == [1] * (limit + 2)


def test_inductor_stage_with_compile_kwargs():
    run = stage.Compiled(lambda x, y: torch.relu(x @ y), options={"cpp.min_chunk_size": 4096})
    x, y = torch.randn(8, 4), torch.randn(4, 5)
    assert torch.allclose(run(x, y), torch.relu(x @ y))
    assert torch.allclose(run(2 * x, y), torch.relu(2 * x @ y))
    (s,) = run.stats().values()
    assert s["compiles"] == 1 and s["calls"] == 2


def test_signature_ignores_values_and_sees_shapes_dtypes_scalars_and_form():
    a = {"w": torch.zeros(3, 2), "m": None, "lr": 0.1}
    sig = stage.signature("masked", a)
    assert sig.startswith("masked/") and len(sig) == len("masked/") + 12
    assert stage.signature("masked", {"w": torch.ones(3, 2), "m": None, "lr": 0.1}) == sig
    assert stage.signature("masked", {"w": torch.ones(3, 3), "m": None, "lr": 0.1}) != sig
    assert (
        stage.signature("masked", {"w": torch.ones(3, 2, dtype=torch.float64), "m": None, "lr": 0.1}) != sig
    )
    assert stage.signature("masked", {"w": torch.ones(3, 2), "m": None, "lr": 0.2}) != sig
    assert stage.signature("masked", {"w": torch.ones(3, 2), "m": torch.ones(1), "lr": 0.1}) != sig
    assert stage.signature("compact", a) != sig
    assert stage.signature("masked", a, k=1) != sig


def test_bad_inputs_name_the_leaf_or_the_form():
    with pytest.raises(TypeError, match=r"'args\[1\]\.w'"):
        stage.signature("masked", torch.ones(1), {"w": object()})
    with pytest.raises(TypeError, match=r"'opt\.lr\.1'"):
        stage.signature("masked", opt={"lr": [1.0, object()]})
    for form in ("", "a/b", 3):
        with pytest.raises(ValueError, match="form"):
            stage.signature(form, torch.ones(1))
    with pytest.raises(TypeError, match="callable"):
        stage.Compiled(3)


def test_fn_error_surfaces_instead_of_dynamo_error(mlp):
    spec, params, state, batch = mlp
    opt = optim.sgd(0.05)
    step = stage.Compiled(train.make_step(spec, losses.cross_entropy, opt, compile=False), backend="eager")
    masks = mask.ones_like(params)
    bad = {**masks, "fc1": {**masks["fc1"], "weight": masks["fc1"]["weight"][:, :3]}}
    with pytest.raises(ValueError, match=r"mask 'fc1\.weight' has shape \(8, 3\)"):
        step(params, state, opt.init(params), bad, batch)


# ------------------------------------------------------------------------ should_rematerialize
SCHEDULE = [0.08, 0.16, 0.24, 0.32, 0.40]  # linear_steps: 5 steps of 8%


def _run(knobs: stage.Knobs, last: float | None = None) -> list[bool]:
    out = []
    for i, s in enumerate(SCHEDULE, start=1):
        decision, _ = stage.should_rematerialize(
            i, s, last, recompile_every=knobs.recompile_every, threshold=knobs.threshold
        )
        out.append(decision)
        if decision:
            last = s
    return out


def test_source_a_variants_by_hand():
    assert stage.VARIANTS["default"] == (2, 0.05)
    assert stage.VARIANTS["aggressive"] == (1, 0.02)
    assert stage.VARIANTS["conservative"] == (5, 0.10)
    # first compile at 8%; then every change of 8 points exceeds 0.05 and 0.02
    assert _run(stage.VARIANTS["default"]) == [True] * 5
    assert _run(stage.VARIANTS["aggressive"]) == [True] * 5
    # conservative: 16-8 = 8 <= 10 (no); 24-8 = 16 > 10 (yes); 32-24 = 8 (no); 40-24 = 16 and step 5 (yes)
    assert _run(stage.VARIANTS["conservative"]) == [True, False, True, False, True]
    # starting from a dense compile (last = 0.0): default still fires every step, conservative at 16/32/40%
    assert _run(stage.VARIANTS["default"], last=0.0) == [True] * 5
    assert _run(stage.VARIANTS["conservative"], last=0.0) == [False, True, False, True, True]


def test_should_rematerialize_reasons_and_rules():
    assert stage.should_rematerialize(1, 0.08, None) == (True, "no compiled model yet")
    ok, why = stage.should_rematerialize(2, 0.16, 0.08)
    assert ok and "multiple of recompile_every=2" in why and "changed by 0.080 > 0.050" in why
    ok, why = stage.should_rematerialize(3, 0.10, 0.08)
    assert not ok and "0.020 <= 0.050" in why
    # the threshold is strict: a change equal to it (with float noise) does not fire
    assert not stage.should_rematerialize(1, 0.26, 0.16, recompile_every=5, threshold=0.10)[0]
    assert stage.should_rematerialize(1, 0.2601, 0.16, recompile_every=5, threshold=0.10)[0]
    # a drop in sparsity counts too (|change|)
    assert stage.should_rematerialize(1, 0.1, 0.3, recompile_every=5, threshold=0.1)[0]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"step_index": 0}, "step_index"),
        ({"step_index": True}, "step_index"),
        ({"sparsity": 1.5}, "sparsity"),
        ({"last_sparsity": -0.1}, "last_sparsity"),
        ({"recompile_every": 0}, "recompile_every"),
        ({"threshold": -0.01}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
    ],
)
def test_should_rematerialize_rejects_bad_arguments(kwargs, match):
    args = {"step_index": 1, "sparsity": 0.1, "last_sparsity": 0.0, **kwargs}
    knobs = {k: args.pop(k) for k in ("recompile_every", "threshold") if k in args}
    with pytest.raises(ValueError, match=match):
        stage.should_rematerialize(args["step_index"], args["sparsity"], args["last_sparsity"], **knobs)


def test_log_lines():
    first = stage.log_lines(1, 0.08, 0.012, (True, "no compiled model yet"), 9.126)
    assert first == ["step 1: sparsity 8.0% (0.01 s)", "compiled new model in 9.13 s"]
    forced = stage.log_lines(2, 0.16, 0.5, stage.should_rematerialize(2, 0.16, 0.08), 3.0)
    assert forced[1].startswith("forcing recompilation: compression 2 is a multiple")
    assert forced[2] == "compiled new model in 3.00 s"
    assert stage.log_lines(3, 0.24, 0.0, (False, "x"), 0.0004) == [
        "step 3: sparsity 24.0% (0.00 s)",
        "reused compiled model (0.000 s)",
    ]
    with pytest.raises(ValueError, match="seconds"):
        stage.log_lines(1, 0.1, -1.0, (False, ""), 0.0)


def test_compile_fresh_gives_every_built_step_its_own_dynamo_cache():
    """Twelve steps from one factory, each called at its own shape (static graphs): with one code
    object among them dynamo's limit of 8 compiles per code object would be hit under fullgraph."""

    def factory(scale: float):
        def step(x: torch.Tensor) -> torch.Tensor:
            return x * scale + 1

        return step

    for n in range(1, 13):
        fn = stage.compile_fresh(factory(float(n)), fullgraph=True, dynamic=False, backend="eager")
        torch.testing.assert_close(fn(torch.ones(n)), torch.full((n,), n + 1.0))


# ------------------------------------------------------------------------------------ Saved
def _run_steps(step, params, state, opt_state, masks, batch, n=3):
    outs = []
    for _ in range(n):
        params, state, opt_state, metrics = step(params, state, opt_state, masks, batch)
        outs.append((params, metrics))
    return outs


def _identical(a, b) -> bool:
    la, lb = tree.leaves(a), tree.leaves(b)
    return len(la) == len(lb) and all(
        (x is None and y is None) or (x.dtype == y.dtype and torch.equal(x, y)) for x, y in zip(la, lb)
    )


def test_saved_step_is_bit_identical_to_the_compiled_step_and_loads_in_a_new_step(mlp, tmp_path):
    """``make_step(cache_dir=...)``: the first step compiles and writes one file; a step built again
    (as a second process would) loads it; both give the uncached compiled step's values, bit for bit."""
    spec, params, state, batch = mlp
    masks = select.unstructured(tree.map(torch.abs, params), 0.5, masks=mask.ones_like(params))
    params = mask.apply(params, masks)
    opt = optim.sgd(0.05, momentum=0.9)
    opt_state = opt.init(params)
    args = (params, state, opt_state, masks, batch)
    ref = _run_steps(train.make_step(spec, losses.cross_entropy, opt, premasked=True), *args)
    first = train.make_step(spec, losses.cross_entropy, opt, premasked=True, cache_dir=tmp_path)
    assert _identical(_run_steps(first, *args), ref)
    assert len(list(tmp_path.glob("*.aot"))) == 1
    again = train.make_step(spec, losses.cross_entropy, opt, premasked=True, cache_dir=tmp_path)
    assert _identical(_run_steps(again, *args), ref)


def test_saved_reloads_and_refuses_what_it_cannot_save(tmp_path):
    def fn(x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x) * 2.0

    x = torch.linspace(0, 1, 7)
    saved = stage_saved.Saved(fn, tmp_path, form="f")
    torch.testing.assert_close(saved(x), fn(x))
    assert saved.stats() == {"loaded": 0, "saved": 1, "fresh": 0}
    loaded = stage_saved.Saved(fn, tmp_path, form="f")
    assert torch.equal(loaded(x), saved(x)) and loaded.stats()["loaded"] == 1
    assert torch.equal(loaded(torch.ones(3)), torch.sin(torch.ones(3)) * 2.0)  # another signature: saved
    assert loaded.stats() == {"loaded": 1, "saved": 1, "fresh": 0}
    for path in tmp_path.glob("*.aot"):  # a torn file is compiled again and rewritten, not fatal
        path.write_bytes(b"torn")
    torn = stage_saved.Saved(fn, tmp_path, form="f")
    assert torch.equal(torn(x), saved(x)) and torn.stats() == {"loaded": 0, "saved": 1, "fresh": 0}

    def scaled(k: float):
        return lambda x: x * k  # the closure is part of the key: another value, another file

    assert torch.equal(stage_saved.Saved(scaled(3.0), tmp_path / "k", form="f")(x), x * 3.0)
    assert torch.equal(stage_saved.Saved(scaled(5.0), tmp_path / "k", form="f")(x), x * 5.0)
    assert len(list((tmp_path / "k").glob("*.aot"))) == 2
    spec = model_registry.get("mlp")
    with pytest.raises(ValueError, match="backend must be 'inductor'"):
        train.make_step(spec, losses.cross_entropy, optim.sgd(0.1), backend="eager", cache_dir=tmp_path)
    with pytest.raises(TypeError, match="callable"):
        stage_saved.Saved(3, tmp_path)


def test_saved_compiles_through_a_wrapping_backend_and_loads_without_it(tmp_path):
    """``Saved(backend=callable)``: a backend wrapping inductor (as the application's compile
    counter does) runs for each signature compiled and saved, not for one loaded; the loaded step
    gives the same values; a backend name other than inductor is refused."""
    calls = []
    inductor = torch._dynamo.lookup_backend("inductor")

    def counting(gm, example_inputs):
        calls.append(len(example_inputs))
        return inductor(gm, example_inputs)

    def fn(x: torch.Tensor) -> torch.Tensor:
        return torch.cos(x) + x

    x = torch.linspace(-1, 1, 5)
    first = stage_saved.Saved(fn, tmp_path, form="f", backend=counting)
    assert torch.equal(first(x), torch.compile(fn, backend="inductor")(x))
    assert len(calls) == 1 and first.stats() == {"loaded": 0, "saved": 1, "fresh": 0}
    later = stage_saved.Saved(fn, tmp_path, form="f", backend=counting)
    assert torch.equal(later(x), first(x))
    assert len(calls) == 1 and later.stats() == {"loaded": 1, "saved": 0, "fresh": 0}
    with pytest.raises(ValueError, match="backend must be 'inductor' or a callable"):
        stage_saved.Saved(fn, tmp_path, backend="eager")


def test_saved_skips_the_signature_while_the_last_functions_guards_accept_the_arguments(
    tmp_path, monkeypatch
):
    """Repeated calls of one signature run the last saved function straight away (its guards check
    the arguments); another shape misses those guards and is dispatched by its signature, to its
    own function; every call gives ``fn``'s values."""
    counted = []
    real = stage_saved.stage.signature

    def signature(form, *args):
        counted.append(form)
        return real(form, *args)

    monkeypatch.setattr(stage_saved.stage, "signature", signature)

    def fn(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x) * 3.0

    saved = stage_saved.Saved(fn, tmp_path, form="f")
    a, b = torch.linspace(-1, 1, 6), torch.linspace(-2, 2, 9)
    for _ in range(3):
        torch.testing.assert_close(saved(a), fn(a), rtol=1e-6, atol=0)
    assert len(counted) == 2  # the form check at construction, then the first call only
    torch.testing.assert_close(saved(b), fn(b), rtol=1e-6, atol=0)  # a guard miss: by signature
    torch.testing.assert_close(saved(a), fn(a), rtol=1e-6, atol=0)  # and back
    torch.testing.assert_close(saved(a), fn(a), rtol=1e-6, atol=0)
    assert len(counted) == 4 and saved.stats() == {"loaded": 0, "saved": 2, "fresh": 0}
