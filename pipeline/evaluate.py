"""Predictions and metrics.

SST: accuracy of argmax over 5 classes; QQP: accuracy of p(duplicate) ≥ 0.5; STS: Pearson r.
Overall (CS224N): (SST acc + QQP acc + (STS r + 1)/2) / 3; a member trained on fewer tasks gets
the mean of the same per-task terms over its own tasks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from scipy.special import expit

from pipeline.batching import TokenizedTask, batch_indices, collate
from pipeline.model import MultitaskModel

METRIC_NAMES = {"sst": "sst_acc", "qqp": "qqp_acc", "sts": "sts_pearson"}
# What the classifiers' ``pred`` values 0…K mean.
CLASS_NAMES = {
    "sst": ("negative", "somewhat negative", "neutral", "somewhat positive", "positive"),
    "qqp": ("not duplicate", "duplicate"),
}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def outputs_to_frame(task: str, ids: list[str], raw: np.ndarray) -> pd.DataFrame:
    """Turn raw head outputs into the predictions table: ``id``, ``pred`` and, for the
    classifiers, class probabilities ``p0``…``pK``."""
    frame = pd.DataFrame({"id": ids})
    if task == "sst":
        shifted = np.exp(raw - raw.max(axis=1, keepdims=True))
        probs = shifted / shifted.sum(axis=1, keepdims=True)
        frame["pred"] = probs.argmax(axis=1).astype(np.int8)
        for k in range(probs.shape[1]):
            frame[f"p{k}"] = probs[:, k].astype(np.float32)
    elif task == "qqp":
        p1 = expit(raw)
        frame["pred"] = (p1 >= 0.5).astype(np.int8)
        frame["p0"] = (1.0 - p1).astype(np.float32)
        frame["p1"] = p1.astype(np.float32)
    else:
        frame["pred"] = raw.astype(np.float32)
    return frame


@torch.inference_mode()
def predict(model: MultitaskModel, data: TokenizedTask, batch_size: int, device: torch.device,
            precision: str, pad_id: int,
            progress: Callable[[int], object] | None = None) -> pd.DataFrame:
    """Predictions for every example of ``data``, in its original order, in length-sorted
    batches (little padding). ``progress`` is called with each batch's size as it is queued."""
    was_training = model.training
    model.eval()
    width = 5 if data.task == "sst" else None
    raw = np.zeros((len(data), width) if width else len(data), dtype=np.float32)
    chunks = []
    try:
        for index in batch_indices(data.lengths(), batch_size, rng=None, group_by_length=True):
            batch = collate(data, index, pad_id).to(device)
            with autocast(device, precision):
                out = model(data.task, batch.inputs)
            chunks.append((index, out.float()))
            if progress is not None:
                progress(len(index))
    finally:
        model.train(was_training)
    # One host transfer per batch, after all batches are queued.
    for index, out in chunks:
        raw[index] = out.cpu().numpy()
    return outputs_to_frame(data.task, data.ids, raw)


def task_metric(task: str, pred: np.ndarray, labels: np.ndarray) -> float:
    if task == "sts":
        pred, labels = np.asarray(pred, np.float64), np.asarray(labels, np.float64)
        if pred.std() == 0 or labels.std() == 0:
            return 0.0
        return float(np.corrcoef(pred, labels)[0, 1])
    return float((np.asarray(pred) == np.asarray(labels)).mean())


def overall_score(metrics: dict[str, float]) -> float:
    terms = []
    for task, name in METRIC_NAMES.items():
        if name in metrics:
            value = metrics[name]
            terms.append((value + 1) / 2 if task == "sts" else value)
    return float(np.mean(terms))


def score_predictions(frames: dict[str, pd.DataFrame], labels: dict[str, np.ndarray]
                      ) -> dict[str, float]:
    metrics = {METRIC_NAMES[task]: task_metric(task, frames[task]["pred"].to_numpy(),
                                               labels[task]) for task in frames}
    metrics["overall"] = overall_score(metrics)
    return metrics
