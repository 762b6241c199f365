"""pipeline.seeds: the per-seed output layout and mean ± sample sd over seeds (worked by hand)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.seeds import aggregate, scalar_metrics, seed_dir


def test_seed_dir_layout():
    assert seed_dir("models", "multitask", 11) == Path("models/multitask/seed_11")


def test_aggregate_by_hand():
    runs = [
        {"sst_acc": 0.50, "qqp_acc": 0.80, "best_epoch": 1, "train_examples": {"sst": 10}},
        {"sst_acc": 0.52, "qqp_acc": 0.90, "best_epoch": 2, "train_examples": {"sst": 10}},
        {"sst_acc": 0.54, "best_epoch": 2},
    ]
    out = aggregate(runs)
    # sst_acc: mean 0.52; deviations −0.02, 0, 0.02 → Σ² = 0.0008, / (3 − 1) = 0.0004 → sd 0.02
    assert out["sst_acc"]["mean"] == pytest.approx(0.52)
    assert out["sst_acc"]["sd"] == pytest.approx(0.02)
    assert out["sst_acc"]["n"] == 3
    # qqp_acc, in two runs only: mean 0.85; deviations ±0.05 → Σ² = 0.005, / 1 → sd √0.005
    assert out["qqp_acc"] == pytest.approx({"mean": 0.85, "sd": 0.005 ** 0.5, "n": 2})
    # best_epoch 1, 2, 2: mean 5/3; deviations −2/3, 1/3, 1/3 → Σ² = 6/9, / 2 → sd √(1/3)
    assert out["best_epoch"] == pytest.approx({"mean": 5 / 3, "sd": (1 / 3) ** 0.5, "n": 3})
    assert "train_examples" not in out  # nested values are not metrics to average


def test_one_seed_has_no_sd():
    assert aggregate([{"overall": 0.7}]) == {"overall": {"mean": 0.7, "sd": None, "n": 1}}


def test_equal_seeds_have_zero_sd():
    assert aggregate([{"x": 2.0}, {"x": 2.0}])["x"] == {"mean": 2.0, "sd": 0.0, "n": 2}


def test_no_runs_no_metrics():
    assert aggregate([]) == {}


def test_scalar_metrics_drops_nested_and_booleans():
    assert scalar_metrics({"a": 1, "b": 0.5, "c": {"d": 1}, "e": True, "f": "x"}) == {
        "a": 1, "b": 0.5}
