"""Training seeds: where a member's run of one seed lives, and the mean ± sd of its metrics.

Seeds are the train stage's DVC matrix axis (params.yaml's top-level ``seeds:``): stage
``train@<member>-<seed>`` writes ``models/<member>/seed_<seed>/``. Over the n seeds' values x_i
of a metric,

    mean = Σ x_i / n,    sd = √( Σ (x_i − mean)² / (n − 1) )

the sample standard deviation (ddof = 1, as seed noise is estimated from a sample of seeds). One
seed gives no estimate of the spread: its sd is None.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def seed_dir(models_dir: str | Path, member: str, seed: int) -> Path:
    """The output directory of ``member`` trained with ``seed`` (dvc.yaml's train outs)."""
    return Path(models_dir) / member / f"seed_{seed}"


METRICS_FILE = "metrics.json"
# What a run's metrics leave to its report: counts and how the best epoch was picked. DVC lists
# every leaf of a metrics file as a `dvc exp show` column, and these are not scores to compare.
TRAIN_REPORT_FILE = "train_report.json"
TRAIN_REPORT_KEYS = ("train_examples", "select", "select_sample", "precision",
                     "stopped_after_epoch")


def split_run_metrics(metrics: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A run's metrics as (its ``metrics.json``: scores, epochs, times; its
    ``train_report.json``: the rest)."""
    report = {key: metrics[key] for key in TRAIN_REPORT_KEYS if key in metrics}
    return {k: v for k, v in metrics.items() if k not in report}, report


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """A seed run's metrics with its report (a run written before reports: its metrics)."""
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    report = run_dir / TRAIN_REPORT_FILE
    return {**metrics, **(json.loads(report.read_text()) if report.is_file() else {})}


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric scalars of a metrics dict; nested values (per-task counts) are left out."""
    return {key: value for key, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def aggregate(runs: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, float | int | None]]:
    """``{metric: {"mean", "sd", "n"}}`` over ``runs``, one metrics dict per seed.

    Every numeric scalar metric is aggregated over the runs that report it (``n`` of them);
    ``sd`` is the sample standard deviation, None when n = 1.
    """
    values: dict[str, list[float]] = {}
    for run in runs:
        for key, value in scalar_metrics(run).items():
            values.setdefault(key, []).append(float(value))
    return {key: {"mean": statistics.fmean(v), "sd": statistics.stdev(v) if len(v) > 1 else None,
                  "n": len(v)}
            for key, v in values.items()}
