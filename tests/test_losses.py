"""pure_prune.losses: cross-entropy, accuracy and KD loss by hand and against torch.nn.functional."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounter

from pure_prune import losses, rng

LN3 = math.log(3.0)


def test_cross_entropy_by_hand():
    logits = torch.tensor([[0.0, LN3], [0.0, LN3]])  # softmax = [0.25, 0.75]
    labels = torch.tensor([1, 0])
    expected = (-math.log(0.75) - math.log(0.25)) / 2
    assert float(losses.cross_entropy(logits, labels)) == pytest.approx(expected, rel=1e-6)
    # label smoothing e: (1 - e) * nll + e * mean over classes of -log p
    smooth = 0.8 * expected + 0.2 * (-math.log(0.25) - math.log(0.75)) / 2
    assert float(losses.cross_entropy(logits, labels, label_smoothing=0.2)) == pytest.approx(smooth, rel=1e-6)


def test_cross_entropy_gradient_by_hand():
    logits = torch.tensor([[0.0, LN3], [LN3, 0.0]])
    labels = torch.tensor([1, 1])
    grad = torch.func.grad(losses.cross_entropy)(logits, labels)
    # d/dlogits of the mean NLL = (softmax - one_hot) / N
    expected = torch.tensor([[0.25, 0.75 - 1.0], [0.75, 0.25 - 1.0]]) / 2
    assert torch.allclose(grad, expected, atol=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 1.0])
def test_cross_entropy_equals_torch(smoothing):
    logits = rng.normal(0, (6, 5)) * 3
    labels = torch.randint(0, 5, (6,), generator=rng.generator(1))
    ours = losses.cross_entropy(logits, labels, label_smoothing=smoothing)
    assert torch.allclose(ours, F.cross_entropy(logits, labels, label_smoothing=smoothing), atol=1e-6)
    seq = rng.normal(2, (3, 4, 5))
    seq_labels = torch.randint(0, 5, (3, 4), generator=rng.generator(3))
    theirs = F.cross_entropy(seq.permute(0, 2, 1), seq_labels, label_smoothing=smoothing)
    assert torch.allclose(losses.cross_entropy(seq, seq_labels, label_smoothing=smoothing), theirs, atol=1e-6)


def test_correct_and_accuracy_by_hand():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    labels = torch.tensor([0, 0, 0])
    assert losses.correct(logits, labels).item() == 2
    assert losses.correct(logits, labels).dtype == torch.int64
    assert float(losses.accuracy(logits, labels)) == pytest.approx(2 / 3)
    seq = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]])  # (N=2, T=2, C=2)
    seq_labels = torch.tensor([[0, 0], [1, 1]])
    assert losses.correct(seq, seq_labels).item() == 3
    assert float(losses.accuracy(seq, seq_labels)) == pytest.approx(0.75)


def test_kd_loss_by_hand():
    T = 2.0
    student = torch.tensor([[0.0, 0.0]])  # p_s = [0.5, 0.5]
    teacher = torch.tensor([[0.0, T * LN3]])  # p_t = [0.25, 0.75]
    labels = torch.tensor([1])
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    ce = math.log(2.0)
    got = losses.kd_loss(student, teacher, labels, alpha=0.3, T=T)
    assert float(got) == pytest.approx(0.3 * kl * T * T + 0.7 * ce, rel=1e-6)
    assert float(losses.kd_loss(student, teacher, labels, alpha=0.0, T=T)) == pytest.approx(ce, rel=1e-6)
    assert float(losses.kd_loss(teacher, teacher, labels, alpha=1.0)) == pytest.approx(0.0, abs=1e-7)


def test_kd_loss_equals_torch_and_ignores_teacher_grad():
    s, t = rng.normal(0, (8, 4)) * 2, rng.normal(1, (8, 4)) * 2
    labels = torch.randint(0, 4, (8,), generator=rng.generator(2))
    kl = F.kl_div(F.log_softmax(s / 3.0, dim=-1), F.softmax(t / 3.0, dim=-1), reduction="batchmean")
    expected = 0.5 * kl * 9.0 + 0.5 * F.cross_entropy(s, labels)
    assert torch.allclose(losses.kd_loss(s, t, labels), expected, atol=1e-6)
    # (N, T, C): the KL is averaged over all N * T entries, as the flattened (N * T, C) case
    s3, t3, l3 = s.reshape(2, 4, 4), t.reshape(2, 4, 4), labels.reshape(2, 4)
    assert torch.allclose(
        losses.kd_loss(s3, t3, l3, alpha=0.7, T=1.5), losses.kd_loss(s, t, labels, alpha=0.7, T=1.5)
    )
    assert torch.equal(torch.func.grad(lambda tt: losses.kd_loss(s, tt, labels))(t), torch.zeros_like(t))


@pytest.mark.parametrize(
    "call, error, match",
    [
        (
            lambda: losses.cross_entropy(
                torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), label_smoothing=1.5
            ),
            ValueError,
            r"label_smoothing must be a number in \[0, 1\], got 1.5",
        ),
        (
            lambda: losses.cross_entropy(torch.zeros(2, 3), torch.zeros(2)),
            TypeError,
            "labels must be an integer",
        ),
        (
            lambda: losses.cross_entropy(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long)),
            ValueError,
            r"labels of shape \(3,\) do not fit logits of shape \(2, 3\)",
        ),
        (
            lambda: losses.cross_entropy(torch.zeros(3), torch.zeros((), dtype=torch.long)),
            ValueError,
            r"logits must be a float tensor \(N, C\) or \(N, T, C\), got shape \(3,\)",
        ),
        (
            lambda: losses.accuracy(torch.zeros(2, 3), torch.zeros(2, 1, dtype=torch.long)),
            ValueError,
            "do not fit",
        ),
        (
            lambda: losses.kd_loss(
                torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), alpha=2.0
            ),
            ValueError,
            "alpha must be a number in",
        ),
        (
            lambda: losses.kd_loss(
                torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), T=0.0
            ),
            ValueError,
            "T \\(temperature\\) must be a finite number > 0, got 0.0",
        ),
        (
            lambda: losses.kd_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, dtype=torch.long)),
            ValueError,
            r"teacher_logits of shape \(2, 4\) differ",
        ),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_losses_compile_once_whatever_the_values():
    counter = CompileCounter()
    ce = torch.compile(
        lambda x, y: losses.cross_entropy(x, y, label_smoothing=0.1), fullgraph=True, backend=counter
    )
    kd = torch.compile(lambda s, t, y: losses.kd_loss(s, t, y), fullgraph=True, backend=counter)
    for key in range(3):
        logits = rng.normal(key, (4, 3)) * (10.0**key)
        labels = torch.randint(0, 3, (4,), generator=rng.generator(key))
        assert torch.allclose(
            ce(logits, labels), F.cross_entropy(logits, labels, label_smoothing=0.1), atol=1e-5
        )
        assert torch.allclose(
            kd(logits, logits.flip(0), labels), losses.kd_loss(logits, logits.flip(0), labels)
        )
    assert counter.frame_count == 2  # one graph each


# ------------------------------------------------------------------------------------- model_loss


def _per_sample_hessians(ml: losses.ModelLoss, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N, K, K): the Hessian of each one-row loss w.r.t. that row's outputs, by torch.func."""
    k = out[0].numel()
    hs = [
        torch.func.hessian(lambda o, n=n: ml.loss(o[None], y[n : n + 1]))(out[n]).reshape(k, k)
        for n in range(out.shape[0])
    ]
    return torch.stack(hs)


@pytest.mark.parametrize("name", ["cross_entropy", "mse", "callable"])
def test_hessian_factor_squares_to_the_output_hessian(name):
    """sum_r rows[n, r] ⊗ rows[n, r] = (E / N) d²l_n/do_n² for every output loss."""
    out = rng.normal(1, (4, 3), dtype=torch.float64)
    if name == "cross_entropy":
        y, loss = torch.tensor([0, 2, 1, 1]), "cross_entropy"
    else:
        y = rng.normal(2, (4, 3), dtype=torch.float64)
        loss = "mse" if name == "mse" else (lambda o, t: (torch.cosh(o - t).log().sum(-1)).mean())
    ml = losses.model_loss(lambda p, x: x, loss)
    rows = ml.hessian_factor(out, y)
    got = torch.einsum("nrk,nrl->nkl", rows.reshape(4, -1, 3), rows.reshape(4, -1, 3))
    want = _per_sample_hessians(ml, out, y) * ml.ggn_entries(out, y) / out.shape[0]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12 * float(want.abs().max()))


def test_model_loss_batches_and_values():
    w = torch.tensor([[2.0, -1.0]])
    ml = losses.model_loss(lambda p, x: x @ p.T, "mse", keys=("inputs", "targets"))
    batch = {
        "inputs": torch.tensor([[1.0, 1.0], [0.0, 2.0]]),
        "targets": torch.tensor([[0.0], [0.0]]),
        "id": 7,
    }
    assert float(ml(w, batch)) == pytest.approx((1.0 + 4.0) / 2)
    assert ml.split(batch)[1] is batch["targets"]
    joined = ml.join(batch, batch["inputs"], batch["targets"] + 1)
    assert (
        joined["id"] == 7 and float(joined["targets"].sum()) == 2.0 and float(batch["targets"].sum()) == 0.0
    )
    pair = losses.model_loss(lambda p, x: x, "cross_entropy")
    assert isinstance(pair.join((1, 2, 3), "x", "y"), tuple) and pair.join([1, 2], "x", "y") == ["x", "y"]
    assert pair.classes and not ml.classes and ml.name == "mse"
    assert losses.class_labels(torch.zeros(2, 3), torch.tensor([0, 1]))
    assert not losses.class_labels(torch.zeros(2, 3), torch.zeros(2, 3))
    assert not losses.class_labels(torch.zeros(2), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="model_fn must be callable"):
        losses.model_loss(3, "mse")
    with pytest.raises(TypeError, match="batch key must be an int index or a str"):
        losses.model_loss(lambda p, x: x, "mse", keys=(0, 1.5))
    with pytest.raises(
        ValueError, match=r"mse: targets must be a float tensor of the outputs' shape \(2, 1\)"
    ):
        losses.mse(torch.zeros(2, 1), torch.zeros(2))
