"""The eager peer of ``pure-prune run --method imp --model mlp --data digits``: the same lottery-ticket
run written the usual way, ``nn.Module`` + ``torch.nn.utils.prune`` hooks + ``torch.optim.SGD``.

IMP (Frankle & Carbin, 2019, "The Lottery Ticket Hypothesis"): train, prune ``--rate`` of the
remaining weights by global magnitude, rewind the survivors to their initial values, repeat for
``--rounds`` pruning rounds (``rounds + 1`` trainings). Same MLP 64-256-256-10 (biases never
pruned), digits split (``pure_prune.app.data.load("digits")``: 1437 train / 360 test), full batches of
``--batch-size``, SGD lr 0.05 momentum 0.9 (a fresh optimizer per round), test accuracy after every
epoch as the run does. Threads: ``OMP_NUM_THREADS``. Prints the final accuracy and wall time.
"""

import argparse
import copy
import time

import torch
from torch import nn
from torch.nn.utils import prune

from pure_prune.app import data

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--rounds", type=int, default=20, help="pruning rounds (default: %(default)s)")
ap.add_argument("--epochs", type=int, default=30, help="epochs per round (default: %(default)s)")
ap.add_argument("--rate", type=float, default=0.2, help="share pruned per round (default: %(default)s)")
ap.add_argument("--batch-size", type=int, default=64, help="batch size (default: %(default)s)")
ap.add_argument("--seed", type=int, default=0, help="torch.manual_seed (default: %(default)s)")
args = ap.parse_args()

t0 = time.perf_counter()
torch.manual_seed(args.seed)
ds = data.load("digits")
x, y, x_test, y_test = ds.x_train, ds.y_train, ds.x_test, ds.y_test
model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
layers = [(m, "weight") for m in model if isinstance(m, nn.Linear)]
init = copy.deepcopy(model.state_dict())  # keys "0.weight", ... before the hooks rename them
loss_fn = nn.CrossEntropyLoss()
for r in range(args.rounds + 1):
    if r > 0:  # prune `rate` of the surviving weights (global |w|), rewind the rest to the init
        prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=args.rate)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(init[name.removesuffix("_orig")])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(y))
        for i in range(len(y) // args.batch_size):
            idx = order[i * args.batch_size : (i + 1) * args.batch_size]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            acc = (model(x_test).argmax(1) == y_test).float().mean().item()
kept = sum(int(m.weight.count_nonzero()) for m, _ in layers) / sum(m.weight.numel() for m, _ in layers)
print(f"peer: {args.rounds} rounds, test accuracy {100 * acc:.2f}%, weights kept {100 * kept:.2f}%, "
      f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
