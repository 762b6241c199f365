"""Losses against numbers worked out by hand with `math` on scalars (never torch's own losses)."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.losses import (
    binary_cross_entropy,
    categorical_contrastive,
    continuous_contrastive,
    contrastive_loss,
    mse,
    ordered_cross_entropy,
    task_loss,
)
from pipeline.model import cosine_distance

LOGITS = [[2.0, 1.0, 0.0, -1.0, 0.5], [-0.5, 0.0, 0.3, 1.2, 2.2]]
LABELS = [0, 3]


def softmax(row: list[float]) -> list[float]:
    exps = [math.exp(z) for z in row]
    total = sum(exps)
    return [e / total for e in exps]


def ce_by_hand(row: list[float], label: int) -> float:
    return math.log(sum(math.exp(z) for z in row)) - row[label]


def ordered_ce_by_hand(rows: list[list[float]], labels: list[int], weight: float) -> float:
    per_example = []
    for row, y in zip(rows, labels, strict=True):
        expected = sum(j * p for j, p in enumerate(softmax(row)))
        per_example.append(ce_by_hand(row, y) + weight * (expected - y) ** 2)
    return sum(per_example) / len(per_example)


def test_cross_entropy_single_example_written_out():
    # logits (0, 0, 0, 0, ln 4): softmax = (1, 1, 1, 1, 4)/8, so CE for class 4 is ln 2.
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0, math.log(4.0)]])
    loss = ordered_cross_entropy(logits, torch.tensor([4]), weight=0.0)
    assert loss.item() == pytest.approx(math.log(2.0), rel=1e-6)


def test_plain_cross_entropy_is_batch_mean():
    loss = ordered_cross_entropy(torch.tensor(LOGITS), torch.tensor(LABELS), weight=0.0)
    expected = (ce_by_hand(LOGITS[0], 0) + ce_by_hand(LOGITS[1], 3)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_ordered_cross_entropy_written_out():
    # logits (0, 0, 0, 0, ln 4): E[j] = (0+1+2+3)/8 + 4·4/8 = 2.75; label 1: CE = ln 8,
    # penalty 0.1·(2.75 − 1)² = 0.30625.
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0, math.log(4.0)]])
    loss = ordered_cross_entropy(logits, torch.tensor([1]), weight=0.1)
    assert loss.item() == pytest.approx(math.log(8.0) + 0.30625, rel=1e-6)


@pytest.mark.parametrize("weight", [0.0, 0.1, 1.0])
def test_ordered_cross_entropy_batch(weight):
    loss = ordered_cross_entropy(torch.tensor(LOGITS), torch.tensor(LABELS), weight=weight)
    assert loss.item() == pytest.approx(ordered_ce_by_hand(LOGITS, LABELS, weight), rel=1e-6)


def test_ordered_penalty_grows_with_ordinal_distance():
    # Labels 1 and 4 have equal logits, so plain CE is the same for both; the ordered term
    # charges more for the label farther from where the prediction's mass sits (class 0).
    logits = torch.tensor([[5.0, 0.0, 0.0, 0.0, 0.0]])
    plain_near = ordered_cross_entropy(logits, torch.tensor([1]), 0.0)
    plain_far = ordered_cross_entropy(logits, torch.tensor([4]), 0.0)
    assert plain_near.item() == pytest.approx(plain_far.item(), rel=1e-6)
    near = ordered_cross_entropy(logits, torch.tensor([1]), 0.1)
    far = ordered_cross_entropy(logits, torch.tensor([4]), 0.1)
    assert near.item() == pytest.approx(ordered_ce_by_hand(logits.tolist(), [1], 0.1), rel=1e-6)
    assert far.item() == pytest.approx(ordered_ce_by_hand(logits.tolist(), [4], 0.1), rel=1e-6)
    assert far.item() > near.item()


def test_ordered_cross_entropy_gradient_matches_hand_derivation():
    # d/dz_k [CE + w(E − y)²] = p_k − 1[k = y] + 2w(E − y)·p_k·(k − E), averaged over the batch.
    weight = 0.1
    logits = torch.tensor(LOGITS, requires_grad=True)
    ordered_cross_entropy(logits, torch.tensor(LABELS), weight).backward()
    grad = logits.grad
    assert torch.isfinite(grad).all()
    assert grad.abs().sum().item() > 0
    for b, (row, y) in enumerate(zip(LOGITS, LABELS, strict=True)):
        p = softmax(row)
        expected = sum(j * pj for j, pj in enumerate(p))
        for k in range(5):
            want = (p[k] - (k == y) + 2 * weight * (expected - y) * p[k] * (k - expected)) / 2
            assert grad[b, k].item() == pytest.approx(want, abs=1e-6)


def test_ordered_cross_entropy_accepts_bf16_logits():
    loss = ordered_cross_entropy(torch.tensor(LOGITS).bfloat16(), torch.tensor(LABELS), 0.1)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ordered_ce_by_hand(LOGITS, LABELS, 0.1), rel=2e-2)


def bce_by_hand(x: float, y: float) -> float:
    sig = 1.0 / (1.0 + math.exp(-x))
    return -(y * math.log(sig) + (1 - y) * math.log(1 - sig))


def test_binary_cross_entropy_written_out():
    # logit 0 → σ = ½ → ln 2 whatever the label; logit ln 3 → σ = ¾ → label 1 costs ln(4/3).
    loss = binary_cross_entropy(torch.tensor([0.0, math.log(3.0)]), torch.tensor([1, 1]))
    assert loss.item() == pytest.approx((math.log(2.0) + math.log(4.0 / 3.0)) / 2, rel=1e-6)


def test_binary_cross_entropy_batch():
    xs, ys = [2.0, -1.5, 0.3, -0.2], [1, 0, 0, 1]
    loss = binary_cross_entropy(torch.tensor(xs), torch.tensor(ys, dtype=torch.int8))
    expected = sum(bce_by_hand(x, y) for x, y in zip(xs, ys, strict=True)) / len(xs)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_mse_written_out():
    # ((1 − 2)² + (3 − 0.5)²) / 2 = (1 + 6.25) / 2
    loss = mse(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 0.5]))
    assert loss.item() == pytest.approx(3.625, rel=1e-6)


def test_categorical_contrastive_similar_pair():
    # y = 1: ½·d² = ½·0.3² = 0.045
    loss = categorical_contrastive(torch.tensor([0.3]), torch.tensor([1]), margin=0.5)
    assert loss.item() == pytest.approx(0.045, rel=1e-6)


def test_categorical_contrastive_dissimilar_within_margin():
    # y = 0, d = 0.2 < m = 0.5: ½·(0.5 − 0.2)² = 0.045
    loss = categorical_contrastive(torch.tensor([0.2]), torch.tensor([0]), margin=0.5)
    assert loss.item() == pytest.approx(0.045, rel=1e-6)


def test_categorical_contrastive_dissimilar_beyond_margin_is_zero():
    loss = categorical_contrastive(torch.tensor([0.7, 1.9]), torch.tensor([0, 0]), margin=0.5)
    assert loss.item() == 0.0


def test_categorical_contrastive_batch_mean():
    # terms: ½·0.2² = 0.02, ½·(0.5 − 0.3)² = 0.02, 0 (d = 0.7 > m) → mean 0.04 / 3
    loss = categorical_contrastive(
        torch.tensor([0.2, 0.3, 0.7]), torch.tensor([1, 0, 0]), margin=0.5
    )
    assert loss.item() == pytest.approx(0.04 / 3, rel=1e-6)


STS_D, STS_Y = [0.5, 0.2, 0.1], [5.0, 0.0, 3.0]


def test_continuous_contrastive_paper_target_written_out():
    # |5/20 − 0.5²| = 0, |0/20 − 0.2²| = 0.04, |3/20 − 0.1²| = 0.14 → mean 0.06
    loss = continuous_contrastive(torch.tensor(STS_D), torch.tensor(STS_Y), "paper")
    assert loss.item() == pytest.approx(0.06, rel=1e-5)


def test_continuous_contrastive_similarity_target_written_out():
    # |0/20 − 0.5²| = 0.25, |5/20 − 0.2²| = 0.21, |2/20 − 0.1²| = 0.09 → mean 0.55 / 3
    loss = continuous_contrastive(torch.tensor(STS_D), torch.tensor(STS_Y), "similarity")
    assert loss.item() == pytest.approx(0.55 / 3, rel=1e-5)


def test_similarity_target_puts_equivalent_pairs_together_and_unrelated_at_cosine_half():
    # zero loss exactly where d² = (5 − y)/20: y = 5 at d = 0, y = 0 at d = 0.5 (cos 0.5),
    # y = 1 at d = √0.2; the paper's printed target costs |1/4 − 0|, |0 − 1/4|, |1/20 − 1/5| there
    distance, labels = torch.tensor([0.0, 0.5, math.sqrt(0.2)]), torch.tensor([5.0, 0.0, 1.0])
    assert continuous_contrastive(distance, labels, "similarity").item() == pytest.approx(
        0.0, abs=1e-7)
    assert continuous_contrastive(distance, labels, "paper").item() == pytest.approx(
        (0.25 + 0.25 + 0.15) / 3, rel=1e-5)


def test_continuous_contrastive_unknown_target():
    with pytest.raises(ValueError, match="cosine"):
        continuous_contrastive(torch.zeros(2), torch.zeros(2), "cosine")


def test_cosine_distance_written_out():
    u = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [3.0, 4.0]])
    v = torch.tensor([[0.0, 2.0], [1.0, 1.0], [-2.0, 0.0], [6.0, 8.0]])
    d = cosine_distance(u, v)
    expected = [1.0, 1.0 - 1.0 / math.sqrt(2.0), 2.0, 0.0]
    assert d.shape == (4,)
    for got, want in zip(d.tolist(), expected, strict=True):
        assert got == pytest.approx(want, abs=1e-6)


def test_task_loss_dispatch():
    sst = task_loss("sst", torch.tensor(LOGITS), torch.tensor(LABELS), ordered_ce_weight=0.1)
    assert sst.item() == pytest.approx(ordered_ce_by_hand(LOGITS, LABELS, 0.1), rel=1e-6)
    qqp = task_loss("qqp", torch.tensor([0.0, math.log(3.0)]), torch.tensor([0, 1]), 0.1)
    assert qqp.item() == pytest.approx((math.log(2.0) + math.log(4.0 / 3.0)) / 2, rel=1e-6)
    sts = task_loss("sts", torch.tensor([1.0, 3.0]), torch.tensor([2.0, 0.5]), 0.1)
    assert sts.item() == pytest.approx(3.625, rel=1e-6)


def test_task_loss_unknown_task():
    with pytest.raises(ValueError, match="mnli"):
        task_loss("mnli", torch.zeros(2), torch.zeros(2), 0.0)


def test_contrastive_loss_dispatch():
    qqp = contrastive_loss("qqp", torch.tensor([0.2, 0.3, 0.7]), torch.tensor([1, 0, 0]), 0.5)
    assert qqp.item() == pytest.approx(0.04 / 3, rel=1e-6)
    # the margin is passed through: with m = 1.0 the third pair now costs ½·0.3² = 0.045
    qqp_m1 = contrastive_loss("qqp", torch.tensor([0.7]), torch.tensor([0]), 1.0)
    assert qqp_m1.item() == pytest.approx(0.045, rel=1e-6)
    sts_d, sts_y = torch.tensor(STS_D), torch.tensor(STS_Y)
    assert contrastive_loss("sts", sts_d, sts_y, 0.5, "paper").item() == pytest.approx(
        0.06, rel=1e-5)
    assert contrastive_loss("sts", sts_d, sts_y, 0.5, "similarity").item() == pytest.approx(
        0.55 / 3, rel=1e-5)
    # the params default is the label-matching target
    assert contrastive_loss("sts", sts_d, sts_y, 0.5).item() == pytest.approx(0.55 / 3, rel=1e-5)


@pytest.mark.parametrize("task", ["sst", "mnli"])
def test_contrastive_loss_rejects_non_pair_tasks(task):
    with pytest.raises(ValueError, match=task):
        contrastive_loss(task, torch.zeros(2), torch.zeros(2), 0.5)
