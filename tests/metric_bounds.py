"""How far a task's dev score can move when its predictions move: the tolerance for comparing the
scores of two runs computed differently (ranks, micro-batches, eval batch sizes).

A fixed tolerance on a score does not follow from one on the parameters or the predictions.
Pearson r is the cosine of the centred predictions x − x̄ with the centred labels, so a change δ
of the predictions turns it by at most the angle arcsin(‖δ − δ̄‖ / ‖x − x̄‖): large when a barely
trained model's predictions barely spread (a tiny random BERT's STS outputs), where parameters
within 1e-5 moved r by 1.3e-5. An accuracy moves by 1/n per example whose class can flip, one
whose two top probabilities are within twice its change (a binary task: p within its change of
½). Each score is then checked against the bound its own predictions give, so a score that does
not follow from them (one rank's share, another epoch's) still fails.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipeline.tasks import TaskSpec, overall_score

# float32 predictions and probabilities: what rounding alone may move (not a tolerance on them).
ROUNDING = 1e-6


def compared_columns(spec: TaskSpec, frame: pd.DataFrame) -> list[str]:
    """What a score reads: a classifier's class probabilities, a regression's values."""
    return [c for c in frame.columns if c.startswith("p") and c[1:].isdigit()] if (
        spec.kind != "regression") else ["pred"]


def flippable(spec: TaskSpec, frame: pd.DataFrame, change: np.ndarray) -> np.ndarray:
    """The examples whose predicted class a change of ``change`` per probability can flip."""
    probs = frame[compared_columns(spec, frame)].to_numpy(np.float64)
    top = np.sort(probs, axis=1)
    margin = top[:, -1] - top[:, -2]  # binary: |p1 − p0| = 2·|p1 − ½|
    return margin <= 2 * change + ROUNDING


def score_bound(spec: TaskSpec, a: pd.DataFrame, b: pd.DataFrame) -> float:
    """The most ``spec``'s score can differ between predictions ``a`` and ``b`` of the same
    examples (module docstring)."""
    cols = compared_columns(spec, a)
    change = np.abs(a[cols].to_numpy(np.float64) - b[cols].to_numpy(np.float64)).max(axis=1)
    if spec.metric == "pearson":
        x = a["pred"].to_numpy(np.float64)
        delta = b["pred"].to_numpy(np.float64) - x
        spread = np.linalg.norm(x - x.mean())
        moved = np.linalg.norm(delta - delta.mean())
        # r is a cosine of the centred predictions: it turns by at most asin(moved/spread)
        # while the change is smaller than the spread; past that, r can take any value
        return math.asin(moved / spread) if moved < spread else 2.0
    if spec.metric == "accuracy":
        return flippable(spec, a, change).sum() / len(a)
    raise NotImplementedError(f"no bound derived for {spec.metric}")


def assert_scores_follow_predictions(got: tuple[dict, dict], want: tuple[dict, dict],
                                     specs: dict[str, TaskSpec], tolerance: float) -> None:
    """Two runs' (scores, predictions) of one evaluation: the same examples in the same order,
    predictions within ``tolerance``, a class differing only where it could flip, and every
    score, ``overall`` too, within the bound those predictions give."""
    (got_scores, got_frames), (want_scores, want_frames) = got, want
    bounds = {}
    for task, a in want_frames.items():
        a, b, spec = pd.DataFrame(a), pd.DataFrame(got_frames[task]), specs[task]
        assert b["id"].tolist() == a["id"].tolist(), task  # gathered in the split's order
        cols = compared_columns(spec, a)
        change = np.abs(a[cols].to_numpy(np.float64) - b[cols].to_numpy(np.float64))
        assert change.max() <= tolerance, (task, change.max())
        if spec.kind != "regression":
            moved = a["pred"].to_numpy() != b["pred"].to_numpy()
            assert not (moved & ~flippable(spec, a, change.max(axis=1))).any(), task
        bounds[spec.metric_name] = score_bound(spec, a, b)
    shifted = {name: want_scores[name] + bound for name, bound in bounds.items()}
    bounds["overall"] = overall_score(specs, shifted) - overall_score(
        specs, {name: want_scores[name] for name in shifted})
    for name, bound in bounds.items():
        assert got_scores[name] == pytest.approx(want_scores[name], abs=bound + 1e-12), (
            name, bound)
