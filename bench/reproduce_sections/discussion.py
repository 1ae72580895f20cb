"""Section 5's prose: every checked conclusion, those that failed grouped under the best explanation
this project has for them, then those that held."""

from __future__ import annotations

import re
from typing import Any

from .common import Checks


def results_discussion(checks: Checks) -> str:
    """Section 5: every check that failed, grouped under its explanation, then every check that held."""
    lines = []
    ok = [c for c in checks.items if c["holds"]]
    bad = [c for c in checks.items if not c["holds"]]
    lines.append(f"{len(ok)} of {len(checks.items)} checked conclusions hold on this run.\n")
    if bad:
        lines.append("### Did not reproduce, or contradicted the literature\n")
        groups: dict[str, list[dict[str, Any]]] = {}
        for c in bad:
            groups.setdefault(explain(c["claim"]), []).append(c)
        for why, items in groups.items():
            for c in items:
                lines.append(f"- *{c['section']}* — {c['claim']}: {c['evidence']}.")
            lines.append(f"\n  *Best explanation:* {why}\n")
        lines.append("")
    lines.append("### Reproduced\n")
    for c in ok:
        lines.append(f"- *{c['section']}* — {c['claim']}: {c['evidence']}.")
    lines.append("")
    return "\n".join(lines) + "\n"


def explain(claim: str) -> str:
    """The best explanation this project has for a conclusion that fails (keyed by what the claim is about)."""
    if "ranks weights for OBD" in claim:
        probes = re.search(r"K=(\d+)", claim)
        at = f"at K={probes.group(1)}" if probes else "at the largest K measured"
        return (
            f"Hutchinson is unbiased, but its error per entry falls only as 1/√K and {at} is still of the order "
            "of the diagonal itself (see the table), and a large share of its entries come out negative where the "
            "true diagonal of a ReLU net with cross-entropy is never negative; OBD's ½ h w² then puts large weights "
            "with a negative estimate first in line for removal. Hutchinson is accurate for sums of many entries "
            "(the trace of a layer, as HAP and PyHessian use it), not for single entries."
        )
    if "GraSP >= SNIP" in claim:
        return (
            "Wang et al.'s advantage of GraSP over SNIP appears at very high sparsity in deep nets, where SNIP "
            "disconnects layers; on a 3-layer MLP neither collapses, and the two means lie within the seeds' spread."
        )
    if "layer collapse" in claim:
        return (
            "Layer collapse needs a layer whose init scale is well below the others (fan-in scaling); where the "
            "layers start at similar scales, global magnitude at init behaves like random pruning with per-layer "
            "sparsities instead."
        )
    if "initialisation" in claim and "missing the mark" in claim:
        return (
            "At this compression the net that is pruned at initialisation and trained with its mask gets the same "
            "number of epochs as the dense net, while the pruned trained net starts from the dense solution; on "
            "small, easy data a sparse net trained from scratch can close the gap."
        )
    if "initialisation" in claim:
        return (
            "Compare the other rows of the same table: where every mask chosen before training, random included, "
            "falls short of dense at the same compression, the net has no capacity to spare (the 1-D CNN has 32 "
            "channels per layer), and no at-init score can recover what the missing weights would have learnt. "
            "GraSP's own advantage shows at high compression, where it keeps the net trainable and random does not."
        )
    if "GraSP" in claim:
        return (
            "GraSP (Wang et al. 2020) is a pruning-at-initialisation method: it scores −θ ⊙ Hg to keep the gradient "
            "flowing through an untrained net. Applied after training, g is close to zero, Hg is noise, and the "
            "score is signed, so it is not a proxy for |w|: it removes large weights whose θ ⊙ Hg happens to be "
            "negative. The paper never claims it works on trained weights; the grid applies it there because "
            "ShrinkBench compares all criteria on the same trained net."
        )
    if "gradient SNR" in claim:
        return (
            "Gradient SNR (mean² / variance of per-sample gradients) measures how consistently the data pushes a "
            "weight, not how much the loss needs it; at a trained minimum the mean gradient is near zero for "
            "almost every weight, so the ranking is dominated by noise and ignores the weight's size."
        )
    if "match the dense net" in claim:
        return (
            "The tickets stay close to dense all the way down (see the table) but drift below the dense mean by "
            "more than one dense std before the few-percent mark; the bar (one std of five seeds, about half a "
            "point) is strict. Frankle & Carbin trained LeNet-300-100 for 50K Adam iterations per round on 60K "
            "MNIST images; each round here is a few hundred SGD steps on a few thousand samples, so the sparsest "
            "tickets may simply be undertrained."
        )
    if "controls" in claim or "ticket" in claim.lower():
        return (
            "On a net this small and data this easy, many sparse sub-networks train well: the advantage of the "
            "ticket over the controls only opens at the sparsest rounds, and with few seeds it can sit within the "
            "seed spread. Frankle & Carbin's gaps were measured on MNIST with 50K iterations per round."
        )
    if "1/sqrt(K)" in claim:
        return "With few probes and few seeds the fitted slope is noisy; the estimator is unbiased with variance ∝ 1/K."
    if "CSR" in claim or "speed" in claim or "masked" in claim:
        return "Timings on a shared 2-core machine move with the neighbours' load; the ratios within one run are what counts."
    if "OBD" in claim:
        return (
            "OBD's ½ h w² rests on an accurate Hessian diagonal at a minimum; measured on a few scoring batches "
            "after a few epochs of SGD it is probably noisier than |w|, which summarises the whole training run, "
            "and the gap grows with compression. LeCun et al. retrained after each "
            "small deletion step, which this one-shot grid does not do."
        )
    if "enhanced" in claim:
        return (
            "The enhanced scheme was written for an LSTM/SNN language model; its fused statistics "
            "(activations, gradients, cooperation) add terms that on a small MLP or CNN mostly re-rank "
            "units HAP already ranks, with weights chosen by hand rather than tuned here."
        )
    if "Taylor" in claim:
        return (
            "The first-order term |g ⊙ w| vanishes at a minimum: after training the gradient on a few batches "
            "is small and noisy, so the score is a noisy reweighting of |w|; on the 1-D CNN, whose conv layers "
            "share each weight over many positions, the noise decides which filters lose their inputs."
        )
    if "layer-wise" in claim:
        return (
            "Global and layer-wise magnitude differ by less than the seed spread on a 3-layer MLP whose layers "
            "have similar weight scales; ShrinkBench's gap came from deeper nets with very different layer sizes."
        )
    return "See the section above for the numbers."
