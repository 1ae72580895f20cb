"""One masked SGD-momentum training step (80% global L1 sparsity): pure_prune vs its peers.

Peers, timed interleaved in one process (``bench/_common.py``), 2 threads, float32:

* ``pure_prune Compiled``: ``stage.Compiled(train.make_step(..., compile=False))``, inductor;
* ``pure_prune make_step``: ``train.make_step(...)`` as it ships (``compile=True``: eager tree
  checks on every call, then ``torch.compile``);
* ``pure_prune pre-masked`` (*proposed*, not in ``train.py``): the same step for params whose
  pruned entries are already zero (``mask.apply`` once per round; every step keeps them zero):
  the forward pass uses the params directly instead of ``where(M, W, 0)``; the optimizer still
  masks gradients and updates, so the results are identical;
* ``pure_prune pre-masked, float masks`` (*proposed*): as above with the masks handed to the
  compiled step as float32 0/1 tensors (converted once per round) and every ``where(M, x, 0)``
  written ``where(K != 0, x, 0)``: same values. On this CPU a select on a bool mask compiles to
  branchy code (inductor and eager alike: ``where`` over a random 300x784 bool mask takes ~470 µs,
  ~190 µs when the mask is sorted, ~90 µs with a float32 mask), so the masked steps spend more
  time in masking than in their backward GEMM;
* ``torch.nn.utils.prune + torch.optim``: ``global_unstructured(L1Unstructured, 0.8)`` hooks and
  ``torch.optim.SGD`` in eager mode (the seeds' status quo);
* ``dense eager``: the same ``nn.Module`` without pruning;
* ``JAX jit``: the same masked step in ``jax.numpy`` (MLPs only; skipped if JAX is missing), timed
  in a process of its own (not interleaved): in one process XLA's thread pool and libgomp's
  spinning OpenMP threads stall each other on two cores (torch medians of 160-240 ms).

Cases: digits MLP 64-256-256-10 (sklearn digits, batch 128), LeNet-300-100 (random inputs, batch
128), a narrow ResNet-20 (width 8, random 32x32 inputs, batch 64). Before timing, every peer runs
the same first step from the same weights and masks and the losses are checked to agree.

    python bench/train_step.py [--reps 40] [--cases mlp lenet300 resnet20] [--variants]

``--variants`` adds LeNet-300-100 compile variants (``cpp.min_chunk_size``,
``max-autotune-no-cudagraphs``) used to explain where the compiled step's time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, setup_threads, table, time_interleaved, write_json  # noqa: E402

from pure_prune import data, losses, mask, optim, select, stage, train, tree  # noqa: E402
from pure_prune import models as model_registry  # noqa: E402
from pure_prune.losses import accuracy  # noqa: E402
from pure_prune.optim import apply_updates  # noqa: E402

LR, MOMENTUM, SPARSITY = 0.05, 0.9, 0.8


# ------------------------------------------------------------------------------------------ data
def case_setup(name: str):
    """``(spec, params, state, batch)`` of a case, deterministic."""
    if name == "mlp":
        ds = data.load("digits")
        spec = model_registry.get("mlp")
        batch = (ds.x_train[:128].contiguous(), ds.y_train[:128].contiguous())
        params, state = spec.init(0)
    elif name == "lenet300":
        spec = model_registry.get("lenet300")
        g = torch.Generator().manual_seed(0)
        batch = (torch.randn(128, 784, generator=g), torch.randint(0, 10, (128,), generator=g))
        params, state = spec.init(0)
    elif name == "resnet20":
        spec = model_registry.get("resnet20")
        g = torch.Generator().manual_seed(0)
        batch = (torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 10, (64,), generator=g))
        params, state = spec.init(0, width=8)
    else:
        raise ValueError(f"unknown case {name!r}")
    return spec, params, state, batch


def global_l1_masks(params):
    """80% global L1 over every weight with ndim >= 2 (as ``prune.global_unstructured``)."""
    scores = tree.map(lambda p: p.abs() if p.ndim >= 2 else None, params)
    return select.unstructured(scores, SPARSITY)


# ------------------------------------------------------------------------------------ pure_prune
def pre_masked_step(model, loss, optimizer):
    """The proposed step: params already zero at pruned entries (see the module docstring)."""

    def step(params, state, opt_state, masks, batch):
        x, *targets = batch

        def objective(p):
            out, new_state = model.apply(p, state, x, train=True)
            return loss(out, *targets), (out.detach(), new_state)

        grads, (value, (out, new_state)) = torch.func.grad_and_value(objective, has_aux=True)(params)
        updates, new_opt_state = optimizer.update(grads, opt_state, params, masks)
        metrics = {"accuracy": accuracy(out, targets[0]), "loss": value.detach()}
        return apply_updates(params, updates), new_state, new_opt_state, metrics

    return step


def float_mask_step(model, loss, lr: float, momentum: float):
    """The proposed step with float32 0/1 masks (``keep``, made once per round from the bool masks)
    and pre-masked params: ``optim.sgd(lr, momentum)``'s update entry for entry, with every
    ``where(M, x, 0)`` spelled ``where(K != 0, x, 0)``."""

    def keep(x, k):
        return x if k is None else torch.where(k != 0, x, torch.zeros((), dtype=x.dtype))

    def step(params, state, opt_state, keeps, batch):
        x, *targets = batch

        def objective(p):
            out, new_state = model.apply(p, state, x, train=True)
            return loss(out, *targets), (out.detach(), new_state)

        grads, (value, (out, new_state)) = torch.func.grad_and_value(objective, has_aux=True)(params)
        rate = torch.where(opt_state["lr_override_on"], opt_state["lr_override"], lr)
        buf = tree.map(
            lambda b, g, k: keep(momentum * b + keep(g, k), k), opt_state["momentum"], grads, keeps
        )
        new_params = tree.map(lambda p, b, k: p + keep(-rate * b, k), params, buf, keeps)
        new_opt_state = {**opt_state, "count": opt_state["count"] + 1, "momentum": buf}
        metrics = {"accuracy": accuracy(out, targets[0]), "loss": value.detach()}
        return new_params, new_state, new_opt_state, metrics

    return step


def pure_runner(run, params, state, opt, masks, batch):
    """A closure doing one step in place of its own trees, and the first step's loss."""
    trees = [params, state, opt.init(params)]

    def one() -> torch.Tensor:
        trees[0], trees[1], trees[2], metrics = run(trees[0], trees[1], trees[2], masks, batch)
        return metrics["loss"]

    return one


# ------------------------------------------------------------------------------------- torch.nn
class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Module()
            self.shortcut.conv = nn.Conv2d(c_in, c_out, 1, stride, bias=False)
            self.shortcut.bn = nn.BatchNorm2d(c_out)

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        sc = self.shortcut.bn(self.shortcut.conv(x)) if hasattr(self, "shortcut") else x
        return F.relu(out + sc)


class ResNet(nn.Module):
    """CIFAR ResNet-(6n+2) with the parameter names of ``pure_prune.models.resnet``."""

    def __init__(self, n: int, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        c_in = width
        for s in range(3):
            blocks = nn.Sequential()
            for b in range(n):
                blocks.append(BasicBlock(c_in, width << s, 2 if s > 0 and b == 0 else 1))
                c_in = width << s
            setattr(self, f"layer{s + 1}", blocks)
        self.fc = nn.Linear(c_in, 10)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.layer3(self.layer2(self.layer1(h)))
        return self.fc(h.mean((2, 3)))


def torch_module(name: str, params, state) -> nn.Module:
    """The case's model as an ``nn.Module`` holding copies of ``params`` and ``state``."""
    if name == "resnet20":
        net = ResNet(3, params["conv1"]["weight"].shape[0])
    else:
        sizes = [params["fc1"]["weight"].shape[1]] + [
            params[k]["weight"].shape[0] for k in model_registry.structure.numbered(params, "fc")
        ]
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            lin = nn.Linear(sizes[i], sizes[i + 1])
            layers += [lin, nn.ReLU()] if i < len(sizes) - 2 else [lin]
        net = nn.Sequential(*layers)
        names = model_registry.structure.numbered(params, "fc")
        sd = {}
        for i, k in enumerate(names):
            sd[f"{2 * i}.weight"], sd[f"{2 * i}.bias"] = params[k]["weight"], params[k]["bias"]
        net.load_state_dict(sd)
        return net
    flat = dict(zip(tree.paths(params), tree.leaves(params)))
    flat.update(zip(tree.paths(state), tree.leaves(state)))
    missing, unexpected = net.load_state_dict(flat, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
    return net


def torch_runner(net: nn.Module, batch, pruned: bool):
    if pruned:
        weights = [(m, "weight") for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        prune.global_unstructured(weights, prune.L1Unstructured, amount=SPARSITY)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    x, y = batch

    def one() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        return loss.detach()

    return one


# ------------------------------------------------------------------------------------------ JAX
def jax_runner(params, masks, batch):
    """The masked SGD-momentum step of an MLP in ``jax.numpy`` under ``jax.jit``; ``None`` without JAX."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    names = model_registry.structure.numbered(params, "fc")
    ps = [(jnp.asarray(params[k]["weight"].numpy()), jnp.asarray(params[k]["bias"].numpy())) for k in names]
    ms = [jnp.asarray(masks[k]["weight"].numpy().astype("float32")) for k in names]
    x, y = jnp.asarray(batch[0].numpy()), jnp.asarray(batch[1].numpy())

    def loss_fn(ps, ms, x, y):
        h = x
        for i, ((w, b), m) in enumerate(zip(ps, ms)):
            h = h @ (w * m).T + b
            if i < len(ps) - 1:
                h = jax.nn.relu(h)
        logp = jax.nn.log_softmax(h)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    @jax.jit
    def step(ps, mom, ms, x, y):
        loss, g = jax.value_and_grad(loss_fn)(ps, ms, x, y)
        new_mom = [(MOMENTUM * mw + gw * m, MOMENTUM * mb + gb) for (mw, mb), (gw, gb), m in zip(mom, g, ms)]
        new_ps = [((w - LR * mw) * m, b - LR * mb) for (w, b), (mw, mb), m in zip(ps, new_mom, ms)]
        return new_ps, new_mom, loss

    state = [
        [(w * m, b) for (w, b), m in zip(ps, ms)],
        [(jnp.zeros_like(w), jnp.zeros_like(b)) for w, b in ps],
    ]

    def one():
        state[0], state[1], loss = step(state[0], state[1], ms, x, y)
        return torch.tensor(float(loss.block_until_ready()))

    return one


# ------------------------------------------------------------------------------------------ main
def build(name: str, variants: bool):
    spec, params, state, batch = case_setup(name)
    masks = global_l1_masks(params)
    loss = losses.cross_entropy
    opt = optim.sgd(LR, momentum=MOMENTUM)
    raw = train.make_step(spec, loss, opt, compile=False)
    start = mask.apply(params, masks)
    compiled = {
        "pure_prune Compiled": stage.Compiled(raw),
        "pure_prune make_step": train.make_step(spec, loss, opt),
        "pure_prune pre-masked": stage.Compiled(pre_masked_step(spec, loss, opt)),
        "pure_prune pre-masked, float masks": stage.Compiled(float_mask_step(spec, loss, LR, MOMENTUM)),
    }
    if variants:
        compiled["Compiled min_chunk_size=32768"] = stage.Compiled(raw, options={"cpp.min_chunk_size": 32768})
        compiled["Compiled max-autotune"] = stage.Compiled(raw, mode="max-autotune-no-cudagraphs")
    keeps = tree.map(lambda m: None if m is None else m.to(torch.float32), masks)
    fns = {
        label: pure_runner(run, start, state, opt, keeps if "float" in label else masks, batch)
        for label, run in compiled.items()
    }
    fns["torch.nn.utils.prune + torch.optim"] = torch_runner(torch_module(name, params, state), batch, True)
    fns["dense eager"] = torch_runner(torch_module(name, params, state), batch, False)
    first_s, first_loss = {}, {}
    for label, f in fns.items():  # the first call compiles; every peer starts from the same weights
        t0 = time.perf_counter()
        first_loss[label] = float(f())
        first_s[label] = time.perf_counter() - t0
    return fns, first_s, first_loss


def jax_child(name: str, reps: int) -> None:
    """In a fresh process: time the JAX step of case ``name``; print ``{"first_loss", "first_call_s", "timing"}``."""
    _, params, _, batch = case_setup(name)
    run = jax_runner(params, global_l1_masks(params), batch)
    if run is None:
        print(json.dumps(None))
        return
    t0 = time.perf_counter()
    first = float(run())
    first_s = time.perf_counter() - t0
    timing = time_interleaved({"JAX jit": run}, reps=reps, warmup=5)["JAX jit"]
    print(json.dumps({"first_loss": first, "first_call_s": first_s, "timing": timing}))


def jax_in_subprocess(name: str, reps: int, threads: int) -> dict | None:
    """The JAX peer, timed in a process of its own: in one process on two cores, XLA's thread pool
    and libgomp's spinning OpenMP threads stall each other for hundreds of milliseconds."""
    env = dict(os.environ)
    if threads == 1:  # XLA's own thread pool, before jax is imported
        env.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    cmd = [sys.executable, __file__, "--jax-child", name, "--reps", str(reps), "--threads", str(threads)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--cases", nargs="+", default=["mlp", "lenet300", "resnet20"])
    ap.add_argument("--variants", action="store_true")
    ap.add_argument("--no-jax", action="store_true", help="leave the JAX peer out")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (the anchors used 2)")
    ap.add_argument("--jax-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    setup_threads(args.threads)
    if args.jax_child:
        jax_child(args.jax_child, args.reps)
        return
    results = {}
    for name in args.cases:
        fns, compile_s, first = build(name, args.variants and name == "lenet300")
        ref = first["pure_prune Compiled"]
        for k, v in first.items():
            if k != "dense eager":
                assert abs(v - ref) <= 1e-4 * max(1.0, abs(ref)), (
                    f"{name}: first loss of {k} is {v}, not {ref}"
                )
        reps = args.reps if name != "resnet20" else max(20, args.reps // 2)
        timing = time_interleaved(fns, reps=reps, warmup=5)
        jx = None if name == "resnet20" or args.no_jax else jax_in_subprocess(name, reps, args.threads)
        if jx is not None:
            assert abs(jx["first_loss"] - ref) <= 1e-4 * max(1.0, abs(ref)), f"{name}: JAX first loss {jx}"
            timing["JAX jit"], compile_s["JAX jit"], first["JAX jit"] = (
                jx["timing"],
                jx["first_call_s"],
                jx["first_loss"],
            )
        hooks = timing["torch.nn.utils.prune + torch.optim"]["median_ms"]
        jax_ms = timing.get("JAX jit", {}).get("median_ms")
        rows = [
            [
                label,
                t["median_ms"],
                t["min_ms"],
                t["cpu_median_ms"],
                hooks / t["median_ms"],
                jax_ms / t["median_ms"] if jax_ms else "-",
                compile_s.get(label, 0.0),
            ]
            for label, t in timing.items()
        ]
        print(
            table(
                f"\n{name}: masked SGD-momentum step, {int(SPARSITY * 100)}% global L1, "
                f"{torch.get_num_threads()} threads, {reps} reps (load {machine()['loadavg_1m']:.1f})",
                ["peer", "median ms", "min ms", "cpu ms", "hooks/this", "JAX/this", "first call s"],
                rows,
            )
        )
        results[name] = {"timing": timing, "first_call_s": compile_s, "first_loss": first}
    path = write_json(
        "train_step", {"sparsity": SPARSITY, "threads": args.threads, "cases": results}, args.out
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
