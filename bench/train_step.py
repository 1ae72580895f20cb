"""One masked SGD-momentum training step (80% global L1 sparsity): pure_prune vs its peers.

Peers, float32, ``--threads`` intra-op threads (default 2):

* ``pure_prune make_step``: ``train.make_step(...)`` as it ships (``compile=True``, inductor):
  eager tree checks, the bool masks passed to the compiled step as their uint8 views
  (``mask.as_bytes``, no copy), ``where(M, W, 0)`` in the forward pass;
* ``pure_prune make_step, premasked=True``: the same for params already zero at pruned entries
  (``mask.apply`` once per round, as the runner's algorithms do): the forward pass reads the
  params directly; the optimizer still masks gradients, state and updates (same results);
* ``pure_prune make_step, compile=False``: the eager step (``optim.Optimizer.update_leaves`` with
  ``torch._foreach_*`` kernels, ``W * M`` mask factors, ``torch.autograd.grad``), also premasked
  and with ``F.cross_entropy`` as the loss (the hooks' loss) in place of ``losses.cross_entropy``;
* ``torch.nn.utils.prune + torch.optim``: ``global_unstructured(L1Unstructured, 0.8)`` hooks and
  ``torch.optim.SGD`` in eager mode (the usual PyTorch way); ``dense eager``: the same
  ``nn.Module`` without pruning;
* ``JAX jit``: the same masked step in ``jax.numpy`` (MLPs only; skipped without JAX), in a
  process of its own (in one process XLA's pool and libgomp's threads stall each other), timed in
  ``--blocks`` blocks alternating with the torch peers, each side idle while the other runs, so
  that both meet the same load. At ``--threads 1`` XLA gets one thread too, and both processes are
  pinned to the same ``--threads`` cores (``pin_cores``: XLA's dispatch thread would use another).

The torch peers are timed interleaved (``_common.time_interleaved``); ``per block`` is the median
over the ``--blocks`` blocks of the hooks' block median over the peer's (peers of one block met
the same load). ``--batch`` sets the MLPs' batch rows (default 128). Before timing, every peer
runs the same first step from the same weights and masks and the losses are checked to agree.
``--variants`` adds rows that explain the time: the step compiled with the bool masks as graph
inputs (the library before this change), the premasked step without the eager wrapper and with
inductor's ``cpp.min_chunk_size=65536`` (fewer OpenMP regions), and the step's GEMMs alone.

    OMP_WAIT_POLICY=PASSIVE python bench/train_step.py --threads 1 --variants
    OMP_WAIT_POLICY=PASSIVE python bench/train_step.py --threads 1 --cases mlp --batch 64 \
        --blocks 8 --reps 320 --no-jax     # the eager step (bench/results/train_step_eager_1thread.json)

Findings (2-core AMD EPYC VM shared with other jobs, load 3-5, torch 2.13 CPU, JAX 0.10;
``bench/results/train_step_1thread.json``, ``train_step.json`` (2 threads, PASSIVE),
``train_step_spin.json`` (2 threads, libgomp's default spin-then-sleep policy)):

* **Bool masks were the largest avoidable cost.** Inductor loads a bool tensor into a vector mask
  element by element with a data-dependent branch (``VecMask::from(bool*)``); every masked weight
  is read that way twice per step (forward ``where`` and the fused update). Handing the compiled
  step the masks' uint8 views and testing ``int32(m) != 0`` in the graph vectorises the load:
  LeNet-300-100 at one thread 3.01 -> 2.47 ms, the MLP 1.26 -> 1.19 ms. ``premasked=True`` saves
  the forward ``where`` (2.47 -> 2.33, 1.19 -> 1.10 ms).
* **Timing each torch peer's calls back to back** (the default; ``--interleaved`` for call-by-call
  turns) matters as much as any kernel: taking turns, each peer finds the others' weights in cache
  and pays to reload its own, while the JAX process always ran its calls back to back. Timed the
  same way on both sides (one thread, load 0.9-1.7, two runs of 80 and 160 calls), the shipped
  step is 1.31-1.34x the hooks on the digits MLP (0.90-0.99 ms; hooks 1.20-1.29, JAX 1.00-1.12)
  and 1.20-1.28x on LeNet-300-100 (2.04-2.11 ms; hooks 2.44-2.69, JAX 1.99-2.13): faster than
  JAX on the MLP, level with it on LeNet-300-100. Taking turns, the same step read 0.81-0.92x JAX.
* **Where LeNet-300-100's time goes**: the GEMMs alone take about 1.75 ms (XLA's GEMMs of the same
  shapes are not faster: 1.6 ms against MKL's 1.55 measured back to back); ~0.13 ms is per-call
  Python (eager checks and uint8 views ~20 µs, dynamo guards ~30 µs, inductor's runtime wrapper
  and kernel launches the rest); the fused elementwise update ~0.1 ms. The compiled step
  allocates fresh output trees each call (pure functions, no donation), where ``torch.optim``
  updates in place.
* **Two threads with OMP_WAIT_POLICY=PASSIVE** lose to one: every OpenMP parallel region (each
  inductor kernel, each MKL GEMM: ~18 per step) becomes a futex wake-up of the other thread. The
  MLP step is 1.9-2.2 ms (GEMMs alone 1.17 ms) against 1.1 ms at one thread; fewer regions
  (``cpp.min_chunk_size=65536``) recover ~12% (part of it the eager wrapper that row skips).
  JAX's thread pool does not pay this.
* **Two threads with the default policy** (threads spin before sleeping) are fastest on an idle
  machine (the MLP step before the uint8 change: 0.80 ms at load 0.6, 1.16 ms at one thread) but
  collapse when other jobs hold the cores: medians of 9-14 ms for every torch peer, while JAX
  stays at 2-3 ms. On a shared or small CPU, run small models with ``torch.set_num_threads(1)``
  (or ``OMP_NUM_THREADS=1``); ``GOMP_SPINCOUNT=10000`` made it worse here (17-26 ms).
* ResNet-20 (width 8) is convolution-bound: all peers 150-165 ms at one thread, the compiled step
  on par with the hooks.
* **The eager step** (``compile=False``; digits MLP 64-256-256-10, batch 64, one thread, load
  1.2-1.5, two runs, each against the library before the change run right after it with this
  same script): 2.36-2.51 ms, 0.34-0.36x the hooks, before; 1.05-1.12 ms, 0.80x (per block
  0.79-0.80x), now; premasked 0.83x; with ``F.cross_entropy`` as the loss 0.85-0.87x. The hooks
  took 0.84-0.90 ms, the dense ``nn.Module`` 0.72-0.76. ``torch.func.grad_and_value`` cost
  0.5-0.7 ms of wrapping per step, ``where`` on bool masks ~50 µs per 256x256 leaf against ~11 µs for a
  product with float factors, and per-leaf ``tree.map`` updates the rest. What is left (~0.2 ms):
  ``losses.cross_entropy`` (forward and backward ~330 µs against ~130 µs for
  ``F.cross_entropy``: einops reshapes, gather and negation nodes), the accuracy metric (~25 µs),
  the schedule's learning rate as tensor ops (~20 µs), the per-step tree checks (~30 µs), and
  the new params and momentum tensors a pure step allocates where ``torch.optim`` writes in place.
  The compiled step is unchanged by it: 0.61-0.64 ms, 1.37x the hooks before, 1.39-1.40x now.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import setup_threads, table, time_interleaved, write_json  # noqa: E402

from pure_prune import losses, mask, optim, select, train, tree
from pure_prune import models as model_registry  # noqa: E402
from pure_prune.app import data

LR, MOMENTUM, SPARSITY = 0.05, 0.9, 0.8


# ------------------------------------------------------------------------------------------ data
def case_setup(name: str, batch_size: int = 128):
    """``(spec, params, state, batch)`` of a case, deterministic (``batch_size`` rows for the MLPs)."""
    if name == "mlp":
        ds = data.load("digits")
        spec = model_registry.get("mlp")
        batch = (ds.x_train[:batch_size].contiguous(), ds.y_train[:batch_size].contiguous())
        params, state = spec.init(0)
    elif name == "lenet300":
        spec = model_registry.get("lenet300")
        g = torch.Generator().manual_seed(0)
        batch = (torch.randn(batch_size, 784, generator=g), torch.randint(0, 10, (batch_size,), generator=g))
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
def pure_runner(run, params, state, opt, masks, batch):
    """A closure doing one step in place of its own trees; returns the step's loss."""
    trees = [params, state, opt.init(params)]

    def one() -> torch.Tensor:
        trees[0], trees[1], trees[2], metrics = run(trees[0], trees[1], trees[2], masks, batch)
        return metrics["loss"]

    return one


def gemm_floor(params, batch):
    """The GEMMs of one MLP step alone (eager ``addmm``/``mm`` of the same shapes): a lower bound."""
    names = model_registry.structure.numbered(params, "fc")
    ws = [params[k]["weight"] for k in names]
    bs = [params[k]["bias"] for k in names]
    acts = [batch[0].flatten(1)] + [torch.randn(batch[0].shape[0], w.shape[0]) for w in ws]

    def one() -> torch.Tensor:
        for i, w in enumerate(ws):
            torch.addmm(bs[i], acts[i], w.t())
        for i, w in enumerate(ws):
            torch.mm(acts[i + 1].t(), acts[i])
            if i > 0:
                torch.mm(acts[i + 1], w)
        return torch.zeros(())

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
HOOKS = "torch.nn.utils.prune + torch.optim"
SHIPPED = "pure_prune make_step"
EAGER = f"{SHIPPED}, compile=False"


def build(name: str, variants: bool, batch_size: int = 128):
    """``(fns, first_call_s, first_loss)``: one closure per peer, each already past its first call."""
    spec, params, state, batch = case_setup(name, batch_size)
    masks = global_l1_masks(params)
    loss = losses.cross_entropy
    opt = optim.sgd(LR, momentum=MOMENTUM)
    start = mask.apply(params, masks)
    runs = {
        SHIPPED: (train.make_step(spec, loss, opt), masks),
        f"{SHIPPED}, premasked=True": (train.make_step(spec, loss, opt, premasked=True), masks),
        EAGER: (train.make_step(spec, loss, opt, compile=False), masks),
        f"{EAGER}, premasked=True": (train.make_step(spec, loss, opt, compile=False, premasked=True), masks),
        f"{EAGER}, loss=F.cross_entropy": (train.make_step(spec, F.cross_entropy, opt, compile=False), masks),
    }
    if variants:
        raw = train.make_step(spec, loss, opt, compile=False)
        runs["bool masks into the graph (before)"] = (torch.compile(raw, fullgraph=True), masks)
        runs["premasked, cpp.min_chunk_size=65536"] = (
            torch.compile(
                train.make_step(spec, loss, opt, compile=False, premasked=True),
                fullgraph=True,
                options={"cpp.min_chunk_size": 65536},
            ),
            mask.as_bytes(masks),
        )
    fns = {label: pure_runner(run, start, state, opt, m, batch) for label, (run, m) in runs.items()}
    fns[HOOKS] = torch_runner(torch_module(name, params, state), batch, True)
    fns["dense eager"] = torch_runner(torch_module(name, params, state), batch, False)
    if variants and name != "resnet20":
        fns["GEMMs alone (eager, same shapes)"] = gemm_floor(params, batch)
    first_s, first_loss = {}, {}
    for label, f in fns.items():  # the first call compiles; every peer starts from the same weights
        t0 = time.perf_counter()
        first_loss[label] = float(f())
        first_s[label] = time.perf_counter() - t0
    return fns, first_s, first_loss


def jax_child(name: str, batch_size: int) -> None:
    """In a fresh process: build the JAX step of case ``name``, print ``{"first_loss", "first_call_s"}``,
    then for every stdin line ``"<n>"`` run ``n`` timed calls and print ``[[wall_s, cpu_s], ...]``."""
    _, params, _, batch = case_setup(name, batch_size)
    run = jax_runner(params, global_l1_masks(params), batch)
    if run is None:
        print(json.dumps(None), flush=True)
        return
    t0 = time.perf_counter()
    first = float(run())
    print(json.dumps({"first_loss": first, "first_call_s": time.perf_counter() - t0}), flush=True)
    for line in sys.stdin:
        out = []
        for _ in range(int(line)):
            c0, w0 = time.process_time(), time.perf_counter()
            run()
            out.append([time.perf_counter() - w0, time.process_time() - c0])
        print(json.dumps(out), flush=True)


def jax_process(name: str, threads: int, batch_size: int) -> tuple[subprocess.Popen, dict] | None:
    """The JAX peer in a process of its own (in one process, XLA's thread pool and libgomp's
    OpenMP threads stall each other on two cores), waiting for work on stdin."""
    env = dict(os.environ)
    if threads == 1:  # XLA's own thread pool, before jax is imported
        env.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    cmd = [
        sys.executable,
        __file__,
        "--jax-child",
        name,
        "--threads",
        str(threads),
        "--batch",
        str(batch_size),
    ]
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    head = json.loads(proc.stdout.readline())
    if head is None:
        proc.communicate()
        return None
    return proc, head


def time_alternating(
    fns, jax: subprocess.Popen | None, *, reps: int, blocks: int, warmup: int = 5, consecutive: bool = True
):
    """Time the in-process peers in ``blocks`` blocks of ``reps / blocks`` calls each, every block
    followed by as many calls of the JAX process, which waits on its stdin meanwhile (and the torch
    threads while JAX runs): both meet the same load, neither runs while the other does. With
    ``consecutive`` each torch peer's calls of a block run back to back (peer order rotating per
    block), as JAX's do, so every peer runs with its own data in cache; otherwise the peers take
    turns call by call (``_common.time_interleaved``), which evicts each other's weights between
    calls. Returns ``time_interleaved``'s dict, ``"JAX jit"`` included."""
    per = max(1, reps // blocks)
    samples: dict[str, list[dict]] = {}
    if jax is not None:
        jax.stdin.write(f"{warmup}\n")
        jax.stdin.flush()
        jax.stdout.readline()
    names = list(fns)
    for b in range(blocks):
        if consecutive:  # each peer's calls back to back, as the JAX process's are
            order = names[b % len(names) :] + names[: b % len(names)]
            block = {
                n: time_interleaved({n: fns[n]}, reps=per, warmup=warmup if b == 0 else 2, raw=True)[n]
                for n in order
            }
        else:
            block = time_interleaved(fns, reps=per, warmup=warmup if b == 0 else 1, raw=True)
        for label, t in block.items():
            samples.setdefault(label, []).append(t)
        if jax is not None:
            jax.stdin.write(f"{per}\n")
            jax.stdin.flush()
            samples.setdefault("JAX jit", []).append({"raw": json.loads(jax.stdout.readline())})
    out = {}
    for label, parts in samples.items():
        if label == "JAX jit":
            wall = [w for p in parts for w, _ in p["raw"]]
            cpu = [c for p in parts for _, c in p["raw"]]
        else:
            wall = [w for p in parts for w in p["wall_s"]]
            cpu = [c for p in parts for c in p["cpu_s"]]
        if label == "JAX jit":
            blocks_ms = [statistics.median(w for w, _ in p["raw"]) * 1e3 for p in parts]
        else:
            blocks_ms = [statistics.median(p["wall_s"]) * 1e3 for p in parts]
        out[label] = {
            "median_ms": statistics.median(wall) * 1e3,
            "min_ms": min(wall) * 1e3,
            "cpu_median_ms": statistics.median(cpu) * 1e3,
            "reps": len(wall),
            "block_medians_ms": blocks_ms,
        }
    return out


def block_ratio(timing: dict, base: str, label: str) -> float:
    """The median over blocks of ``base``'s block median over ``label``'s: a ratio of peers that
    met the same load (each block is a few hundred milliseconds)."""
    pairs = zip(timing[base]["block_medians_ms"], timing[label]["block_medians_ms"])
    return statistics.median(b / t for b, t in pairs)


def pin_cores(threads: int) -> list[int]:
    """Pin this process (torch's side, and the JAX child, which runs this too) to the first
    ``threads`` cores it may use, so both sides get the same CPUs whatever threads their runtimes
    start: XLA at one intra-op thread still runs its dispatch on another thread (about 1.2-1.7
    cores of CPU time per wall second, unpinned). Returns the cores (all of them where
    ``threads`` is not below their count, or where the platform cannot pin)."""
    if not hasattr(os, "sched_setaffinity"):
        return list(range(os.cpu_count() or 1))
    allowed = sorted(os.sched_getaffinity(0))
    if threads < len(allowed):
        os.sched_setaffinity(0, allowed[:threads])
    return sorted(os.sched_getaffinity(0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=80)
    ap.add_argument("--blocks", type=int, default=4, help="alternations between torch and JAX")
    ap.add_argument("--cases", nargs="+", default=["mlp", "lenet300", "resnet20"])
    ap.add_argument("--variants", action="store_true", help="add the rows that explain the time")
    ap.add_argument("--no-jax", action="store_true", help="leave the JAX peer out")
    ap.add_argument(
        "--interleaved",
        action="store_true",
        help="torch peers take turns call by call (each evicts the others' data); default: back to back",
    )
    ap.add_argument("--batch", type=int, default=128, help="batch rows of the MLP cases")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (and XLA's, at 1)")
    ap.add_argument("--jax-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    cores = pin_cores(args.threads)
    setup_threads(args.threads)
    if args.jax_child:
        jax_child(args.jax_child, args.batch)
        return
    results = {}
    for name in args.cases:
        fns, first_s, first = build(name, args.variants and name != "resnet20", args.batch)
        ref = first[SHIPPED]
        for k, v in first.items():
            if k not in ("dense eager", "GEMMs alone (eager, same shapes)"):
                assert abs(v - ref) <= 1e-4 * max(1.0, abs(ref)), (
                    f"{name}: first loss of {k} is {v}, not {ref}"
                )
        jx = None if name == "resnet20" or args.no_jax else jax_process(name, args.threads, args.batch)
        proc = None
        if jx is not None:
            proc, head = jx
            assert abs(head["first_loss"] - ref) <= 1e-4 * max(1.0, abs(ref)), (
                f"{name}: JAX first loss {head}"
            )
            first_s["JAX jit"], first["JAX jit"] = head["first_call_s"], head["first_loss"]
        reps = args.reps if name != "resnet20" else max(20, args.reps // 2)
        load0 = os.getloadavg()[0]
        timing = time_alternating(fns, proc, reps=reps, blocks=args.blocks, consecutive=not args.interleaved)
        if proc is not None:
            proc.communicate()
        hooks = timing[HOOKS]["median_ms"]
        jax_ms = timing.get("JAX jit", {}).get("median_ms")
        rows = [
            [
                label,
                t["median_ms"],
                t["min_ms"],
                t["cpu_median_ms"],
                hooks / t["median_ms"],
                block_ratio(timing, HOOKS, label),
                jax_ms / t["median_ms"] if jax_ms else "-",
                first_s.get(label, 0.0),
            ]
            for label, t in timing.items()
        ]
        load = f"load {load0:.1f} -> {os.getloadavg()[0]:.1f}"
        policy = os.environ.get("OMP_WAIT_POLICY", "unset")
        print(
            table(
                f"\n{name}: masked SGD-momentum step, {int(SPARSITY * 100)}% global L1, "
                f"{torch.get_num_threads()} threads on cores {cores} (both sides), "
                f"OMP_WAIT_POLICY={policy}, {reps} reps ({load})",
                [
                    "peer",
                    "median ms",
                    "min ms",
                    "cpu ms",
                    "hooks/this",
                    "per block",
                    "JAX/this",
                    "first call s",
                ],
                rows,
            )
        )
        results[name] = {
            "timing": timing,
            "hooks_over_this_per_block": {label: block_ratio(timing, HOOKS, label) for label in timing},
            "first_call_s": first_s,
            "first_loss": first,
            "load": [load0, os.getloadavg()[0]],
        }
    path = write_json(
        "train_step",
        {
            "sparsity": SPARSITY,
            "threads": args.threads,
            "cores": cores,
            "batch": args.batch,
            "cases": results,
        },
        args.out,
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
