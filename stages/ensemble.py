"""DVC stage `ensemble`: average the members named in params `ensemble:` per task.

    python stages/ensemble.py [--params params.yaml]

Writes metrics.json (dev), plots/sst_confusion.csv, plots/sts_scatter.csv, predictions/ (the
ensembled dev/test tables) and submission/ (CS224N format).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from pipeline.config import load_params
from pipeline.data import load_prepared
from pipeline.ensemble import (
    average_predictions,
    ensemble_metrics,
    labels_for,
    read_member_predictions,
    submission_name,
    submission_text,
)
from pipeline.io import atomic_path, write_json, write_parquet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", default="data/prepared", type=Path)
    parser.add_argument("--models", default="models", type=Path)
    args = parser.parse_args()

    params = load_params(args.params)
    preds = {split: {task: average_predictions(task, {
        member: read_member_predictions(args.models, member, task, split) for member in members})
        for task, members in params.ensemble.items()} for split in ("dev", "test")}
    dev = {task: load_prepared(args.prepared, task, "dev") for task in params.ensemble}
    metrics = ensemble_metrics(preds["dev"], dev)
    metrics["members"] = {task: members for task, members in params.ensemble.items()}
    write_json(metrics, "metrics.json")

    with atomic_path("predictions") as tmp:
        tmp.mkdir()
        for split, tables in preds.items():
            for task, frame in tables.items():
                write_parquet(frame, tmp / f"{task}_{split}.parquet")
    with atomic_path("submission") as tmp:
        tmp.mkdir()
        for split, tables in preds.items():
            for task, frame in tables.items():
                (tmp / submission_name(task, split)).write_text(submission_text(task, frame))
    with atomic_path("plots") as tmp:
        tmp.mkdir()
        # DVC plots: (label, prediction) per dev row — SST confusion matrix, STS scatter.
        plots = {"sst": ("sst_confusion.csv", "actual", "predicted"),
                 "sts": ("sts_scatter.csv", "true_similarity", "predicted_similarity")}
        for task, (name, truth_column, pred_column) in plots.items():
            if task in preds["dev"]:
                frame = preds["dev"][task]
                pd.DataFrame({truth_column: labels_for(task, frame, dev[task]),
                              pred_column: frame["pred"].to_numpy()}).to_csv(tmp / name,
                                                                             index=False)
    print({k: v for k, v in metrics.items() if not isinstance(v, dict)})


if __name__ == "__main__":
    main()
