"""sweep's compiled seed steps receive the masks as uint8 views (``mask.as_bytes``): the same
results as with the bool masks, which inductor loads one element at a time."""

from __future__ import annotations

import pytest
import torch

from pure_prune import losses, mask, optim, rng, seeds, train, tree
from pure_prune.models import mlp

pytestmark = pytest.mark.usefixtures("one_thread")

SEEDS = 2


def _setup():
    params, state = seeds.init_seeds(lambda k: mlp.init(k, sizes=(6, 8, 3)), rng.split(0, SEEDS))
    masks = seeds.masks_like_seeds(params)
    scores = tree.map(lambda p, m: None if m is None else p.abs(), params, masks)
    masks = seeds.select_seeds(scores, 0.5, masks=masks)
    x = rng.normal(1, (SEEDS, 5, 6))
    y = torch.randint(0, 3, (SEEDS, 5), generator=rng.generator(2))
    return mask.apply(params, masks), state, masks, (x, y)


def test_seed_step_of_hands_bytes_only_when_asked():
    params, state, masks, batch = _setup()
    opt = optim.sgd(0.1, momentum=0.9)
    single = train.make_step(mlp, losses.cross_entropy, opt, compile=False)
    seen = []

    def spy(p, s, o, m, b):
        seen.append({leaf.dtype for leaf in tree.leaves(m) if leaf is not None})
        return single(p, s, o, m, b)

    opt_state = seeds.init_opt_seeds(opt, params)
    for as_bytes in (False, True):
        step = seeds.seed_step_of(spy, per_seed_batches=True, compile=False, bytes_masks=as_bytes)
        step(params, state, opt_state, masks, batch)
    assert seen == [{torch.bool}, {torch.uint8}]


@pytest.mark.slow  # three dynamo compiles (~3 s on two idle cores)
def test_compiled_seed_steps_with_bytes_equal_bool_masks():
    """make_seed_step / make_seed_eval_step (compiled: bytes) against the same compiled body fed
    the bool masks, and against seed 0's single eager step: equal values."""
    params, state, masks, batch = _setup()
    opt = optim.sgd(0.1, momentum=0.9, weight_decay=0.01)
    opt_state = seeds.init_opt_seeds(opt, params)
    kw = dict(per_seed_batches=True, compile=True, backend="eager")  # dynamo's graphs, no codegen
    step = seeds.make_seed_step(mlp, losses.cross_entropy, opt, **kw)
    single = train.make_step(mlp, losses.cross_entropy, opt, compile=False)
    with_bool = seeds.seed_step_of(single, **kw)
    got = step(params, state, opt_state, masks, batch)
    want = with_bool(params, state, opt_state, masks, batch)
    for a, b in zip(tree.leaves(got), tree.leaves(want)):
        assert (a is None and b is None) or torch.equal(a, b)
    one = single(
        *(seeds.seed_slice(t, 0) for t in (params, state, opt_state, masks)), (batch[0][0], batch[1][0])
    )
    for a, b in zip(tree.leaves(seeds.seed_slice(got[0], 0)), tree.leaves(one[0])):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6 * float(b.abs().max()))
    evaluate = seeds.make_seed_eval_step(mlp, losses.cross_entropy, **kw)
    sums = evaluate(got[0], got[1], masks, batch)
    single_eval = train.make_eval_step(mlp, losses.cross_entropy, compile=False)
    for i in range(SEEDS):
        p, s, m = (seeds.seed_slice(t, i) for t in (got[0], got[1], masks))
        want_i = single_eval(p, s, m, (batch[0][i], batch[1][i]))
        assert int(sums["correct"][i]) == int(want_i["correct"])
        torch.testing.assert_close(sums["loss_sum"][i], want_i["loss_sum"], rtol=1e-6, atol=0.0)
