"""Ensembling members' predictions, and the submission files.

Per task, every seed's run of each member named in params `ensemble:` is combined by the task's
declared ``ensemble`` rule (pipeline/tasks.py): ``mean_probability``, the mean of the class
probabilities, then argmax (classification, SST) or p(positive) ≥ 0.5 (binary, QQP);
``majority_vote``, the most frequent predicted class (ties to the one with the highest mean
probability); ``mean`` (regression, STS) or ``median`` of the predicted values (each clipped to
the task's range by pipeline/evaluate.py, so their mean and median are too). Every member
has the same seeds, so one mean over (member, seed) runs is the mean over members of each
member's seed ensemble.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import UserError
from pipeline.evaluate import score_predictions
from pipeline.seeds import aggregate, scalar_metrics, seed_dir
from pipeline.tasks import TaskSpec, specs_for, task_spec


def average_predictions(task: TaskSpec | str, frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Combine runs' prediction tables, keyed by run name (rows matched by id), into one table
    of the same schema, by the task's ensemble rule."""
    spec = task_spec(task)
    task = spec.name
    names = list(frames)
    if not names:
        raise UserError(f"ensemble.{task}: names no member; expected a list of at least one "
                        f"member of `models`")
    first = frames[names[0]]
    ids = first["id"].astype(str)
    aligned = []
    for name in names:
        frame = frames[name].set_index(frames[name]["id"].astype(str))
        same_ids = (frame.index.is_unique and len(frame) == len(ids)
                    and frame.index.isin(ids).all() and ids.isin(frame.index).all())
        if not same_ids:
            raise UserError(f"ensemble.{task}: member {name!r} predicted other ids than "
                            f"member {names[0]!r}; re-run its train stage on this data")
        aligned.append(frame.loc[ids])
    out = pd.DataFrame({"id": ids.to_numpy()})
    if spec.kind == "regression":
        combine = np.median if spec.ensemble == "median" else np.mean
        out["pred"] = combine([f["pred"].to_numpy(np.float64) for f in aligned], axis=0
                              ).astype(np.float32)
        return out
    columns = [c for c in first.columns if c.startswith("p") and c[1:].isdigit()]
    probs = np.mean([f[columns].to_numpy(np.float64) for f in aligned], axis=0)
    if spec.ensemble == "majority_vote":
        votes = np.stack([f["pred"].to_numpy(np.int64) for f in aligned])
        counts = np.stack([(votes == k).sum(0) for k in range(len(columns))], axis=1)
        # The most votes; among tied classes the highest mean probability.
        pred = np.where(counts == counts.max(1, keepdims=True), probs, -1.0).argmax(axis=1)
    elif spec.kind == "binary":
        # p(positive) ≥ 0.5, as in outputs_to_frame: argmax would break ties to 0.
        pred = probs[:, 1] >= 0.5
    else:
        pred = probs.argmax(axis=1)
    out["pred"] = pred.astype(np.int8)
    for k, column in enumerate(columns):
        out[column] = probs[:, k].astype(np.float32)
    return out


def labels_for(task: TaskSpec | str, frame: pd.DataFrame, dev: pd.DataFrame) -> np.ndarray:
    """The prepared dev labels of ``frame``'s rows, matched by id."""
    truth = dev.set_index(dev["id"].astype(str))["label"]
    dtype = np.float64 if task_spec(task).kind == "regression" else np.int64
    return truth.loc[frame["id"].astype(str)].to_numpy(dtype)


def ensemble_metrics(preds: dict[str, pd.DataFrame], dev: dict[str, pd.DataFrame],
                     specs: dict[str, TaskSpec] | None = None) -> dict[str, float]:
    """Dev metrics of the ensembled predictions against the prepared dev labels (by id)."""
    specs = specs_for(preds, specs)
    labels = {task: labels_for(specs[task], frame, dev[task]) for task, frame in preds.items()}
    return score_predictions(preds, labels, specs)


def empty_test_splits(specs: dict[str, TaskSpec], test: dict[str, pd.DataFrame]) -> list[str]:
    """The tasks that declare a test file but have no test predictions: the file was absent
    when prepare ran (a present file without a usable row stops prepare), so their test
    submission would be a header alone, every id of the leaderboard's missing."""
    return [task for task, frame in test.items() if specs[task].data.test and frame.empty]


def submission_text(task: TaskSpec | str, frame: pd.DataFrame) -> str:
    """One file in the CS224N starter code's format: a header, then ``id , prediction``."""
    header = task_spec(task).submission.column
    lines = [f"id \t {header} "]
    lines += [f"{i} , {p} " for i, p in zip(frame["id"], frame["pred"], strict=True)]
    return "\n".join(lines) + "\n"


def submission_name(task: TaskSpec | str, split: str) -> str:
    """The file name of ``split``'s submission (its template is checked where the task is
    declared, :mod:`pipeline.tasks`: a plain name inside the submission directory)."""
    return task_spec(task).submission_file(split)


def _member_file(models_dir: Path, member: str, seed: int, name: str) -> Path:
    path = seed_dir(models_dir, member, seed) / name
    if not path.exists():
        raise UserError(f"{path}: missing; train member {member!r} with seed {seed} first "
                        f"(dvc repro train@{member}-{seed})")
    return path


def read_member_predictions(models_dir: Path, member: str, seed: int, task: str, split: str
                            ) -> pd.DataFrame:
    return pd.read_parquet(_member_file(models_dir, member, seed,
                                        f"predictions/{task}_{split}.parquet"))


def seed_report(models_dir: Path, members: list[str], seeds: list[int]
                ) -> dict[str, dict[str, Any]]:
    """Each member's dev metrics per seed and their mean, sd and n over the seeds:
    ``{member: {"per_seed": {seed: metrics}, "aggregate": {metric: {mean, sd, n}}}}``."""
    report = {}
    for member in members:
        per_seed = {seed: json.loads(_member_file(models_dir, member, seed, "metrics.json")
                                     .read_text()) for seed in seeds}
        report[member] = {"per_seed": {str(s): scalar_metrics(m) for s, m in per_seed.items()},
                          "aggregate": aggregate(per_seed.values())}
    return report
