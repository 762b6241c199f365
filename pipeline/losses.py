"""Task losses of BEST-FiT, chosen by a task's declared kind (pipeline/tasks.py).

- classification (SST): cross-entropy, or for ordered classes ordered CE (CE + w·(Σ_j p_j·j −
  y)², which also penalises how far the expected class lands from the true one; BEST-FiT uses
  w = 0.1).
- binary (QQP): binary cross-entropy on the logit.
- regression (STS): mean squared error (or mean absolute error) on the predicted value.
- Contrastive loss on cosine distance d = 1 − cos(e1, e2) of separately encoded sentences
  (Hadsell, Chopra & LeCun 2006), in the two forms BEST-FiT uses: categorical
  ½[y·d² + (1−y)·max(m − d, 0)²] with margin m for a binary pair task (QQP), and continuous
  |t(y) − d²| for a regression pair task (STS, y in 0–5). All losses are means over the batch.

STS's target t(y) (for a range [lo, hi]: (hi − y)/(4(hi − lo)) and (y − lo)/(4(hi − lo))):
BEST-FiT §4.3.1 prints t = y/20 (``paper``) and restates it as d = 0 at y = 0,
d = 0.5 at y = 5, which pulls unrelated pairs together and pushes equivalent ones apart. Its own
motivation (similar sentences, similar embeddings) and its stated aim of cosine 0.5 for unrelated
pairs, matching QQP's m = 0.5, describe t = (5 − y)/20 (``similarity``, the default): d = 0.5 at
y = 0, d = 0 at y = 5. With no code published, the printed formula and its restatement agree, so
the paper's "Contrastive Learning" row (Table 4, on separately encoded baseBERT) is taken to
have used ``paper``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.config import LossConfig
from pipeline.tasks import TaskSpec, task_spec


def ordered_cross_entropy(logits: Tensor, labels: Tensor, weight: float) -> Tensor:
    """CE + weight · mean((Σ_j softmax(logits)_j · j − y)²); weight 0 gives plain CE."""
    logits = logits.float()
    ce = F.cross_entropy(logits, labels)
    if weight == 0.0:
        return ce
    classes = torch.arange(logits.shape[-1], device=logits.device, dtype=logits.dtype)
    expected = (logits.softmax(-1) * classes).sum(-1)
    return ce + weight * (expected - labels.to(logits.dtype)).pow(2).mean()


def binary_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


def mse(pred: Tensor, labels: Tensor) -> Tensor:
    return F.mse_loss(pred.float(), labels.float())


def categorical_contrastive(distance: Tensor, labels: Tensor, margin: float) -> Tensor:
    """½·mean[y·d² + (1−y)·max(m − d, 0)²] for binary labels y (1 = same meaning)."""
    y = labels.to(distance.dtype)
    return 0.5 * (y * distance.pow(2) + (1 - y) * (margin - distance).clamp(min=0).pow(2)).mean()


def continuous_contrastive(distance: Tensor, labels: Tensor, target: str,
                           low: float = 0.0, high: float = 5.0) -> Tensor:
    """mean |t(y) − d²| for similarities y in [low, high]: t = (high − y)/(4(high − low))
    (``similarity``) or (y − low)/(4(high − low)) (``paper``, BEST-FiT §4.3.1 as printed); for
    STS (0–5) (5 − y)/20 and y/20."""
    y = labels.to(distance.dtype)
    if target == "similarity":
        goal = (high - y) / (4.0 * (high - low))
    elif target == "paper":
        goal = (y - low) / (4.0 * (high - low))
    else:
        raise ValueError(f"unknown STS contrastive target {target!r}; expected similarity or paper")
    return (goal - distance.pow(2)).abs().mean()


def task_loss(task: TaskSpec | str, output: Tensor, labels: Tensor,
              ordered_ce_weight: float) -> Tensor:
    """The supervised loss of one task's batch (its declared ``loss``); the ordinal term
    applies to ordered classes only."""
    spec = task_spec(task)
    if spec.loss == "cross_entropy":
        return ordered_cross_entropy(output, labels, ordered_ce_weight if spec.ordered else 0.0)
    if spec.loss == "bce":
        return binary_cross_entropy(output, labels)
    if spec.loss == "mse":
        return mse(output, labels)
    if spec.loss == "l1":
        return F.l1_loss(output.float(), labels.float())
    raise ValueError(f"task {spec.name}: unknown loss {spec.loss!r}")


def has_contrastive(task: TaskSpec | str) -> bool:
    """The contrastive loss is defined for binary and regression pair tasks."""
    spec = task_spec(task)
    return spec.pair and spec.kind in ("binary", "regression")


def contrastive_loss(task: TaskSpec | str, distance: Tensor, labels: Tensor, margin: float,
                     sts_target: str = LossConfig.sts_contrastive_target) -> Tensor:
    """A binary pair task's categorical loss with ``margin`` (QQP), or a regression pair task's
    continuous one with ``sts_target`` over its range (STS)."""
    spec = task_spec(task)
    if not has_contrastive(spec):
        raise ValueError(f"the contrastive loss applies to binary or regression pair tasks, "
                         f"not {spec.name!r}")
    if spec.kind == "binary":
        return categorical_contrastive(distance, labels, margin)
    return continuous_contrastive(distance, labels, sts_target, *spec.label_range)
