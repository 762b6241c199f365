"""Figures: each writes a readable PNG; PCA and the DVCLive reader against hand-made inputs; the
stage end to end on a tiny saved member and the real SST dev sentences."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import PARAMS_YAML
from matplotlib.image import imread

from pipeline import figures
from pipeline.batching import collate, tokenize_task
from pipeline.config import parse_params
from pipeline.data import prepared_path, read_task_split
from pipeline.io import write_parquet
from pipeline.model import MultitaskModel, load_tokenizer, save_member
from pipeline.pcgrad import PCGRAD_STEPS_FILE

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert path.stat().st_size > 5_000  # axes, marks and text, not a blank canvas
    height, width, _ = imread(path).shape
    assert height > 200 and width > 200
    assert not list(path.parent.glob(".*"))  # no temporary leftovers


def test_pca_of_points_on_a_line_is_their_position_along_it():
    t = np.array([-2.0, -1.0, 0.5, 1.0, 3.0])
    direction = np.array([2.0, -1.0, 2.0]) / 3.0  # unit length; largest loading +2/3
    points = np.array([5.0, 1.0, -4.0]) + t[:, None] * direction
    projected = figures.pca_2d(points)
    np.testing.assert_allclose(projected[:, 0], t - t.mean(), atol=1e-12)
    np.testing.assert_allclose(projected[:, 1], 0.0, atol=1e-12)
    np.testing.assert_allclose(figures.pca_2d(-points)[:, 0], -(t - t.mean()), atol=1e-12)


def test_pca_orders_axes_by_variance():
    # A cross: spread 2 along y, 1 along x → PC 1 is y, PC 2 is x (each oriented positive).
    points = np.array([[0.0, 2.0], [0.0, -2.0], [1.0, 0.0], [-1.0, 0.0]]) + [3.0, 7.0]
    np.testing.assert_allclose(figures.pca_2d(points),
                               [[2.0, 0.0], [-2.0, 0.0], [0.0, 1.0], [0.0, -1.0]], atol=1e-12)
    np.testing.assert_allclose(figures.pca_2d(np.array([[1.0], [3.0]])), [[-1, 0], [1, 0]])


def test_confusion_scatter_and_review_map_figures(tmp_path):
    rng = np.random.default_rng(0)
    actual = rng.integers(0, 5, 200)
    predicted = np.clip(actual + rng.integers(-1, 2, 200), 0, 4)
    figures.confusion_figure(pd.DataFrame({"actual": actual, "predicted": predicted}),
                             tmp_path / "confusion.png", "SST dev")
    truth = rng.uniform(0, 5, 100)
    figures.scatter_figure(pd.DataFrame({"true_similarity": truth,
                                         "predicted_similarity": truth + rng.normal(0, 1, 100)}),
                           tmp_path / "scatter.png")
    figures.review_map_figure(pd.DataFrame({"x": rng.normal(size=60), "y": rng.normal(size=60),
                                            "group": ["sst"] * 40 + ["amazon"] * 20,
                                            "label": rng.integers(0, 5, 60)}),
                              tmp_path / "review_map.png")
    for name in ("confusion", "scatter", "review_map"):
        assert_png(tmp_path / f"{name}.png")
    with pytest.raises(ValueError, match=r"STS scatter: missing column\(s\) \['true_similarity'"):
        figures.scatter_figure(pd.DataFrame({"truth": [1.0]}), tmp_path / "bad.png")


def log_runs(models: Path) -> None:
    """Two layouts DVCLive writes into: models/<member>/live and models/<member>/seed_<s>/live."""
    from dvclive import Live

    runs = {"multitask/seed_1": 0.1, "multitask/seed_2": 0.2, "sst_single": 0.3}
    for run, offset in runs.items():
        with Live(dir=str(models / run / "live"), dvcyaml=None, save_dvc_exp=False) as live:
            for epoch in range(3):
                live.log_metric("train/sst_acc", offset + 0.2 * epoch)
                live.log_metric("dev/sst_acc", offset + 0.1 * epoch)
                live.log_metric("dev/overall", offset)
                live.log_metric("train_loss/sst", 1.0)
                live.next_step()


def test_live_metrics_round_trip_and_curve_figures(tmp_path):
    log_runs(tmp_path / "models")
    dev = figures.read_live_metrics(tmp_path / "models", "dev")
    train = figures.read_live_metrics(tmp_path / "models", "train")
    assert sorted(dev["run"].unique()) == ["multitask/seed_1", "multitask/seed_2", "sst_single"]
    assert sorted(dev["metric"].unique()) == ["overall", "sst_acc"]
    seed_2 = train[train["run"] == "multitask/seed_2"].sort_values("epoch")
    assert list(seed_2["epoch"]) == [1, 2, 3]
    np.testing.assert_allclose(seed_2["value"], [0.2, 0.4, 0.6])
    assert figures.read_live_metrics(tmp_path / "models", "test").empty
    figures.curves_figure(dev, tmp_path / "dev.png")
    figures.train_dev_figure(train, dev, tmp_path / "train_dev.png")
    assert_png(tmp_path / "dev.png")
    assert_png(tmp_path / "train_dev.png")


def test_embedding_pcgrad_and_report_figures(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, 100)
    points = figures.pca_2d(rng.normal(size=(100, 8)) + labels[:, None])
    figures.embedding_figure(points, labels, tmp_path / "embeddings.png")
    steps = pd.DataFrame({"epoch": 1, "step": np.arange(1, 81)})
    for pair in ("sst_to_qqp", "qqp_to_sst"):
        steps[f"projections/{pair}"] = rng.integers(0, 2, 80)
        steps[f"norm_change_pct/{pair}"] = -rng.uniform(0, 40, 80) * steps[f"projections/{pair}"]
    figures.pcgrad_steps_figure(steps, tmp_path / "pcgrad.png", window=10)
    rows = [
        {"row": "baseline", "sst": {"mean": 0.5, "sd": 0.01, "n": 3},
         "qqp": {"mean": 0.83, "sd": 0.02, "n": 3}, "sts": {"mean": 0.85, "sd": None, "n": 1},
         "paper": {"sst": 0.508, "qqp": 0.833, "sts": 0.858}},
        {"row": "sst only", "sst": {"mean": 0.52, "sd": None, "n": 1},
         "paper": {"sst": 0.528, "qqp": None, "sts": None}},
    ]
    figures.report_figure(rows, tmp_path / "report.png")
    for name in ("embeddings", "pcgrad", "report"):
        assert_png(tmp_path / f"{name}.png")
    with pytest.raises(ValueError, match="expected \\(n, 2\\) points"):
        figures.embedding_figure(np.zeros((3, 3)), np.zeros(3), tmp_path / "bad.png")


def saved_member(tiny_bert: Path, directory: Path):
    raw = yaml.safe_load(PARAMS_YAML.read_text())
    raw["model"]["backbone"] = str(tiny_bert)
    member = parse_params(raw).models["sst_single"]
    torch.manual_seed(0)
    model = MultitaskModel(member.model, member.tasks).eval()
    save_member(model, member, load_tokenizer(str(tiny_bert)), directory)
    return model


def test_sentence_embeddings_are_the_saved_members_pooled_vectors(tiny_bert, tmp_path,
                                                                  cs224n_dir):
    model = saved_member(tiny_bert, tmp_path / "model")
    sst_dev = read_task_split(cs224n_dir, "sst", "dev")[0].head(12)
    vectors = figures.sentence_embeddings(tmp_path / "model", sst_dev, batch_size=5)
    tokenizer = load_tokenizer(str(tiny_bert))
    data = tokenize_task("sst", sst_dev, tokenizer, 128, "concat")
    batch = collate(data, np.arange(12), tokenizer.pad_token_id)
    with torch.no_grad():
        expected = model.embed(batch.inputs[0]).numpy()
    np.testing.assert_allclose(vectors, expected, rtol=1e-4, atol=1e-5)


def test_stage_writes_every_figure(tiny_bert, tmp_path, cs224n_dir):
    saved_member(tiny_bert, tmp_path / "models" / "sst_single" / "seed_1" / "model")
    log_runs(tmp_path / "models")
    steps = pd.DataFrame({"epoch": [2, 2], "step": [1, 2], "projections/sst_to_qqp": [1, 0],
                          "norm_change_pct/sst_to_qqp": [-12.0, 0.0]})
    steps.to_csv(tmp_path / "models" / "multitask" / "seed_1" / "live" / PCGRAD_STEPS_FILE,
                 sep="\t", index=False)
    sst_dev = read_task_split(cs224n_dir, "sst", "dev")[0].head(40)
    write_parquet(sst_dev, prepared_path(tmp_path / "prepared", "sst", "dev"))
    (tmp_path / "plots").mkdir()
    pd.DataFrame({"actual": sst_dev["label"], "predicted": 2}).to_csv(
        tmp_path / "plots" / "sst_confusion.csv", index=False)
    pd.DataFrame({"true_similarity": [1.0, 2.0, 4.5], "predicted_similarity": [1.5, 2.5, 4.0]}
                 ).to_csv(tmp_path / "plots" / "sts_scatter.csv", index=False)
    (tmp_path / "augmented").mkdir()
    pd.DataFrame({"x": [0.0, 1.0], "y": [1.0, 0.0], "group": ["sst", "amazon"], "label": [0, 4]}
                 ).to_csv(tmp_path / "augmented" / "review_map.csv", index=False)
    (tmp_path / "augmented" / "label_confusion.csv").write_text("actual,predicted\n")
    subprocess.run(
        [sys.executable, str(ROOT / "stages" / "figures.py"), "--plots", "plots",
         "--augmented", "augmented", "--models", "models", "--prepared", "prepared",
         "--embedding-member", "sst_single", "--out", "figures"],
        cwd=tmp_path, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    written = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert written == ["dev_curves.png", "pcgrad_steps_multitask_seed_1.png", "review_map.png",
                       "sst_confusion.png", "sst_embeddings.png", "sts_scatter.png",
                       "train_dev.png"]  # label_confusion is empty: skipped
    for name in written:
        assert_png(tmp_path / "figures" / name)
