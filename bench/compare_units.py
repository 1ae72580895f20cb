"""The enhanced scheme's comparison mode: one-shot unit pruning without fine-tuning, HAP vs enhanced vs L1.

For every seed a model is trained densely once (eager Adam steps), then each criterion scores the
units of every prunable channel group (``importance.get(name)``) on a little training data (MLP:
2 batches of 128 samples; LSTM: 8 sequences of 16 tokens, as its token-level Hessian diagonal is
costly), the lowest ``rate`` of every group are removed (``select.units(scope="layer")``) and
the pruned model is evaluated as is, with no fine-tuning:

* ``mlp``: MLP 64-128-128-10 on sklearn digits, test accuracy (higher is better);
* ``lstm``: a 1-layer char-level LSTM LM (embed 64, hidden 128) on ``data.text_corpus("char")``,
  test perplexity ``exp(mean token cross-entropy)`` (lower is better).

Prints one table per task (criterion x rate: mean ± std over seeds; std with Bessel correction)
and writes ``bench/results/compare_units.json`` with the machine information.

    python bench/compare_units.py [--seeds 3] [--steps 300] [--mlp-steps 600] [--out PATH]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

import pure_prune.models as models  # noqa: E402
from pure_prune import importance, losses, mask, optim, select, train
from pure_prune.app import data
from pure_prune.importance.registry import ScoreInput  # noqa: E402

RATES = (0.1, 0.3, 0.5, 0.7)
CRITERIA = ("hap", "enhanced", "l1_units")
SCORE_BATCHES = 2  # training batches (128 samples each) the MLP's criteria look at
LM_SCORE_SEQUENCES, LM_SCORE_TOKENS = 8, 16  # the LSTM's criteria look at 8 sequences of 16 tokens


def _train(spec: Any, params: Any, state: Any, batches: Iterable[Any], lr: float) -> tuple[Any, Any]:
    """Dense Adam training over ``batches`` with eager steps; returns the trained ``(params, state)``."""
    opt = optim.adam(lr)
    step = train.make_step(spec, losses.cross_entropy, opt, compile=False)
    opt_state = opt.init(params)
    for batch in batches:
        params, state, opt_state, _ = step(params, state, opt_state, None, batch)
    return params, state


def _prune_and_eval(
    spec: Any,
    params: Any,
    state: Any,
    score_batches: tuple[Any, ...],
    key: int,
    evaluate: Callable[[Any], float],
) -> dict[str, dict[float, float]]:
    """``{criterion: {rate: metric}}`` of one-shot unit pruning of the trained ``params``."""
    masks = mask.ones_like(params)
    groups = spec.groups(params)
    prunable = [g for g in groups if g.prunable]
    out: dict[str, dict[float, float]] = {}
    for name in CRITERIA:
        inp = ScoreInput(spec.apply, params, state, masks, score_batches, key=key, groups=groups)
        scores = importance.get(name)(inp)
        out[name] = {
            rate: evaluate(select.units(scores, rate, prunable, params, scope="layer", masks=masks))
            for rate in RATES
        }
    return out


def run_mlp(seed: int, steps: int) -> tuple[float, dict[str, dict[float, float]]]:
    """Digits MLP 64-128-128-10: dense test accuracy and ``{criterion: {rate: accuracy}}``."""
    ds = data.load("digits")
    spec = models.get("mlp")
    params, state = spec.init(seed, sizes=(64, 128, 128, 10))
    epochs = -(-steps // data.num_batches(len(ds.x_train), 64))

    def stream():
        for e in range(epochs):
            yield from data.batches(ds.x_train, ds.y_train, 64, key=data.epoch_key(seed, e))

    params, state = _train(spec, params, state, (b for _, b in zip(range(steps), stream())), 1e-3)
    ev = train.make_eval_step(spec, losses.cross_entropy, compile=False)

    def accuracy(masks: Any) -> float:
        return train.evaluate(ev, params, state, masks, [(ds.x_test, ds.y_test)])["accuracy"]

    score = tuple(data.batches(ds.x_train, ds.y_train, 128, key=seed + 1000))[:SCORE_BATCHES]
    return accuracy(None), _prune_and_eval(spec, params, state, score, seed, accuracy)


def run_lstm(seed: int, steps: int, seq_len: int = 32, batch_size: int = 32) -> tuple[float, dict]:
    """Char-level LSTM LM: dense test perplexity and ``{criterion: {rate: perplexity}}``."""
    corpus = data.text_corpus("char")
    spec = models.get("lstm_lm")
    params, state = spec.init(seed, vocab=len(corpus.vocab), embed=64, hidden=128, num_layers=1)
    windows = data.num_lm_batches(len(corpus.train), batch_size, seq_len)

    def stream():
        for _ in range(-(-steps // windows)):
            yield from data.lm_batches(corpus.train, batch_size, seq_len)

    params, state = _train(spec, params, state, (b for _, b in zip(range(steps), stream())), 3e-3)
    ev = train.make_eval_step(spec, losses.cross_entropy, compile=False)
    test = tuple(data.lm_batches(corpus.test, batch_size, seq_len))

    def perplexity(masks: Any) -> float:
        return math.exp(train.evaluate(ev, params, state, masks, test)["loss"])

    # 8 sequences of 16 tokens from one training window: the token-level Hessian diagonal (Hutchinson
    # over the LSTM, T*C vjps per sequence for the decoder's GGN) costs ~7 s per HAP call here
    windows = tuple(data.lm_batches(corpus.train, batch_size, seq_len))
    x, y = windows[(97 * seed + 13) % len(windows)]
    score = ((x[:LM_SCORE_SEQUENCES, :LM_SCORE_TOKENS], y[:LM_SCORE_SEQUENCES, :LM_SCORE_TOKENS]),)
    return perplexity(None), _prune_and_eval(spec, params, state, score, seed, perplexity)


def _summary(runs: list[dict[str, dict[float, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name in CRITERIA:
        out[name] = {}
        for rate in RATES:
            vals = [r[name][rate] for r in runs]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            out[name][str(rate)] = {"mean": statistics.fmean(vals), "std": sd, "values": vals}
    return out


def _table(title: str, dense: list[float], summary: dict) -> str:
    sd = statistics.stdev(dense) if len(dense) > 1 else 0.0
    rows = [[f"dense: {statistics.fmean(dense):.3f} ± {sd:.3f}"] + [""] * len(RATES)]
    for name in CRITERIA:
        cells = [f"{summary[name][str(r)]['mean']:.3f} ± {summary[name][str(r)]['std']:.3f}" for r in RATES]
        rows.append([name, *cells])
    return _common.table(title, ["criterion", *(f"rate {r}" for r in RATES)], rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="seeds per task (mean ± std over them)")
    ap.add_argument("--steps", type=int, default=300, help="Adam steps of the LSTM LM")
    ap.add_argument("--mlp-steps", type=int, default=600, help="Adam steps of the digits MLP")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/compare_units.json)")
    args = ap.parse_args(argv)
    _common.setup_threads()
    payload: dict[str, Any] = {"rates": list(RATES), "criteria": list(CRITERIA), "seeds": args.seeds}
    tasks = {
        "mlp_digits_accuracy": (run_mlp, args.mlp_steps, "MLP 64-128-128-10, digits: test accuracy"),
        "lstm_text_perplexity": (run_lstm, args.steps, "LSTM LM (char, 64/128, 1 layer): test perplexity"),
    }
    for key, (fn, steps, title) in tasks.items():
        start = time.perf_counter()
        dense, runs = [], []
        for seed in range(args.seeds):
            d, r = fn(seed, steps)
            dense.append(d)
            runs.append(r)
        summary = _summary(runs)
        seconds = time.perf_counter() - start
        print(_table(f"{title} ({args.seeds} seeds, {steps} steps, {seconds:.0f} s)", dense, summary))
        print()
        payload[key] = {"steps": steps, "dense": dense, "pruned": summary, "seconds": seconds}
    path = _common.write_json("compare_units", payload, args.out)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
