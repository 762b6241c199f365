"""Training seeds: where a member's run of one seed lives, and the mean ± sd of its metrics.

Seeds are the train stage's DVC matrix axis (params.yaml's top-level ``seeds:``): stage
``train@<member>-<seed>`` writes ``models/<member>/seed_<seed>/``. Over the n seeds' values x_i
of a metric,

    mean = Σ x_i / n,    sd = √( Σ (x_i − mean)² / (n − 1) )

the sample standard deviation (ddof = 1, as seed noise is estimated from a sample of seeds). One
seed gives no estimate of the spread: its sd is None.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def seed_dir(models_dir: str | Path, member: str, seed: int) -> Path:
    """The output directory of ``member`` trained with ``seed`` (dvc.yaml's train outs)."""
    return Path(models_dir) / member / f"seed_{seed}"


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
