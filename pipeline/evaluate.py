"""Predictions and metrics, by a task's declared kind and metric (pipeline/tasks.py).

classification (SST): argmax over the classes; binary (QQP): p(positive) ≥ 0.5; regression
(STS): the value clipped to the task's declared range (the head regresses freely; a value outside
the range has no meaning). Every prediction written (a member's dev and test tables, hence the
ensemble's and the submissions, and ``bestfit-predict``'s) comes from :func:`outputs_to_frame`,
and metrics score those clipped values, what is submitted (clipping can lower a correlation as
well as raise it). Metrics: accuracy, macro F1, Pearson r, Spearman ρ; the overall score is
pipeline.tasks.overall_score (CS224N's by default); a member trained on fewer tasks gets the
same formula over its own tasks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from scipy.special import expit
from scipy.stats import spearmanr

from pipeline.batching import TokenizedTask, batch_indices, collate, pad
from pipeline.config import SELECT_OVERALL, MemberConfig
from pipeline.device import autocast
from pipeline.model import MultitaskModel
from pipeline.tasks import TaskSpec, overall_score, specs_for, task_spec


def outputs_to_frame(task: TaskSpec | str, ids: list[str], raw: np.ndarray) -> pd.DataFrame:
    """Turn raw head outputs into the predictions table: ``id``, ``pred`` (a regression's
    clipped to its declared range) and, for the classifiers, class probabilities ``p0``…``pK``."""
    spec = task_spec(task)
    frame = pd.DataFrame({"id": ids})
    if spec.kind == "classification":
        shifted = np.exp(raw - raw.max(axis=1, keepdims=True))
        probs = shifted / shifted.sum(axis=1, keepdims=True)
        frame["pred"] = probs.argmax(axis=1).astype(np.int8)
        for k in range(probs.shape[1]):
            frame[f"p{k}"] = probs[:, k].astype(np.float32)
    elif spec.kind == "binary":
        p1 = expit(raw)
        frame["pred"] = (p1 >= 0.5).astype(np.int8)
        frame["p0"] = (1.0 - p1).astype(np.float32)
        frame["p1"] = p1.astype(np.float32)
    else:
        frame["pred"] = np.clip(raw, *spec.label_range).astype(np.float32)
    return frame


@torch.inference_mode()
def predict(model: MultitaskModel, data: TokenizedTask, batch_size: int, device: torch.device,
            precision: str, pad_id: int,
            progress: Callable[[int], object] | None = None) -> pd.DataFrame:
    """Predictions for every example of ``data``, in its original order, in length-sorted
    batches (little padding). ``progress`` is called with each batch's size as it is queued."""
    was_training = model.training
    model.eval()
    spec = model.specs[data.task]
    width = spec.outputs if spec.kind == "classification" else None
    raw = np.zeros((len(data), width) if width else len(data), dtype=np.float32)
    chunks = []
    try:
        if len(data.sequences) == 2:
            chunks = _separate_pair_outputs(model, data, batch_size, device, precision, pad_id,
                                            progress)
        else:
            for index in batch_indices(data.lengths(), batch_size, rng=None,
                                       group_by_length=True):
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
    return outputs_to_frame(spec, data.ids, raw)


def _separate_pair_outputs(model: MultitaskModel, data: TokenizedTask, batch_size: int,
                           device: torch.device, precision: str, pad_id: int,
                           progress: Callable[[int], object] | None
                           ) -> list[tuple[np.ndarray, torch.Tensor]]:
    """A separately encoded pair task's outputs: every distinct sentence of either side embedded
    once (QQP's questions recur: 38,084 distinct of the dev set's 40,424), in batches sorted by
    its own length, then the head on each pair's two vectors. (A batch of pairs pads each side
    to its longest sentence: on the QQP dev set ~1.5× the real tokens at batch 128, against
    ~1.02× for sentences sorted alone.)"""
    n = len(data)
    sequences = data.sequences[0] + data.sequences[1]
    types = data.token_types[0] + data.token_types[1]
    slot_of: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}
    slots = np.array([slot_of.setdefault((tuple(seq), tuple(typ)), len(slot_of))
                      for seq, typ in zip(sequences, types, strict=True)], dtype=np.int64)
    distinct = np.unique(slots, return_index=True)[1]  # each sentence's first position
    lengths = np.array([len(sequences[i]) for i in distinct])
    vectors: torch.Tensor | None = None
    embedded = 0
    for index in batch_indices(lengths, batch_size, rng=None, group_by_length=True):
        encoding = pad([sequences[distinct[i]] for i in index], [types[distinct[i]] for i in index],
                       pad_id)
        with autocast(device, precision):
            pooled = model.embed({k: v.to(device, non_blocking=True) for k, v in encoding.items()})
        if vectors is None:
            vectors = pooled.new_empty((len(distinct), pooled.shape[-1]))
        vectors[torch.from_numpy(index).to(device)] = pooled
        if progress is not None:  # in pairs, as the other tasks count: n when all are embedded
            progress((embedded + len(index)) * n // len(distinct) - embedded * n // len(distinct))
        embedded += len(index)
    if vectors is not None:
        vectors = vectors[torch.from_numpy(slots).to(device)]
    chunks = []
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        with autocast(device, precision):
            features = model.combine(data.task, [vectors[start:stop], vectors[n + start:n + stop]])
        chunks.append((np.arange(start, stop), model.score(data.task, features).float()))
    return chunks


def macro_f1(pred: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the classes present in labels or predictions of 2·TP / (2·TP + FP + FN)."""
    scores = []
    for k in np.union1d(pred, labels):
        tp = np.sum((pred == k) & (labels == k))
        scores.append(2 * tp / (2 * tp + np.sum((pred == k) != (labels == k))))
    return float(np.mean(scores))


def pearson(pred: np.ndarray, labels: np.ndarray) -> float:
    """Pearson r; 0 (not NaN) when either side is constant."""
    pred, labels = np.asarray(pred, np.float64), np.asarray(labels, np.float64)
    if pred.std() == 0 or labels.std() == 0:
        return 0.0
    return float(np.corrcoef(pred, labels)[0, 1])


def task_metric(task: TaskSpec | str, pred: np.ndarray, labels: np.ndarray) -> float:
    """The task's declared metric; a correlation of a constant is 0, not NaN."""
    metric = task_spec(task).metric
    if metric in ("pearson", "spearman"):
        pred, labels = np.asarray(pred, np.float64), np.asarray(labels, np.float64)
        if pred.std() == 0 or labels.std() == 0:
            return 0.0
        if metric == "spearman":
            return float(spearmanr(pred, labels).statistic)
        return pearson(pred, labels)
    pred, labels = np.asarray(pred), np.asarray(labels)
    if metric == "f1":
        return macro_f1(pred, labels)
    return float((pred == labels).mean())


def score_predictions(frames: dict[str, pd.DataFrame], labels: dict[str, np.ndarray],
                      specs: dict[str, TaskSpec] | None = None) -> dict[str, float]:
    """Each task's metric (``<task>_<metric>``) and the overall score; ``specs`` default to
    the CS224N tasks of those names."""
    specs = specs_for(frames, specs)
    metrics = {specs[task].metric_name: task_metric(specs[task], frames[task]["pred"].to_numpy(),
                                                    labels[task]) for task in frames}
    metrics["overall"] = overall_score(specs, metrics)
    return metrics


def selection_score(member: MemberConfig, metrics: dict[str, float]) -> float:
    """The dev score that picks ``member``'s best epoch (``train.select_by``): a task's metric as
    it is; for ``overall`` and ``ensemble``, the overall score over ``member.select_tasks``
    (every task of the member, or those the ensemble takes from it)."""
    if member.train.select_by not in SELECT_OVERALL:
        return metrics[member.train.select_by]
    return overall_score({t: member.specs[t] for t in member.select_tasks}, metrics)
