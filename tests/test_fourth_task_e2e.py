"""A fourth task through params alone: a binary polarity task derived from SST, declared in
params `tasks:` with its own CSV files under data/tasks, trains in the multitask member, is
scored, ensembled, submitted, carded and predicted by `dvc repro` and `bestfit-predict` on tiny
data, with no code change; editing its file re-runs prepare.

The same `dvc repro` runs as a fresh clone has it (one repro for both: each costs minutes):
params.yaml's default review source, the committed `data/reviews` holding only its README. The
review stages write empty tables and say why, the member that asks for reviews trains on SST
alone, and `figures` skips the review plots."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import PARAMS_YAML
from test_pipeline_e2e import commit_and_repro, run, tiny_project

from pipeline.config import load_params
from pipeline.data import SPLITS, load_prepared, read_task_split
from pipeline.predict import main as predict_main
from pipeline.seeds import read_run

ROOT = Path(__file__).resolve().parents[1]

POLARITY = {
    "kind": "binary",
    "title": "Polarity (SST without neutral)",
    "classes": ["negative", "positive"],
    "metric": "f1",
    "ensemble": "majority_vote",
    "overall_weight": 2.0,
    "data": {"format": "csv", "dir": "data/tasks", "train": "polarity_train.csv",
             "dev": "polarity_dev.csv", "text": ["text"], "label": "polarity", "id": "uid"},
}


def polarity_file(cs224n_dir: Path, split: str, rows: int) -> pd.DataFrame:
    """SST's non-neutral sentences, labelled by class name (the reader maps names to 0/1)."""
    sst, _ = read_task_split(cs224n_dir, "sst", split)
    sst = sst[sst["label"] != 2].head(rows)
    names = ["negative" if y < 2 else "positive" for y in sst["label"]]
    return pd.DataFrame({"uid": "p-" + sst["id"], "text": sst["sentence"], "polarity": names})


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_bert, cs224n_dir, amazon_dir) -> Path:
    proj, params = tiny_project(tmp_path_factory.mktemp("fourth"), tiny_bert, cs224n_dir,
                                amazon_dir)
    for split, rows in (("train", 40), ("dev", 30)):
        polarity_file(cs224n_dir, split, rows).to_csv(
            proj / "data" / "tasks" / f"polarity_{split}.csv", index=False)
    default = yaml.safe_load(PARAMS_YAML.read_text())["augment"]["reviews"]["source"]
    params["augment"]["reviews"]["source"] = default
    (proj / default).mkdir(parents=True)
    shutil.copy(ROOT / "data" / "reviews" / "README.md", proj / default / "README.md")
    params["tasks"]["polarity"] = POLARITY
    params["models"]["multitask"]["tasks"] = ["sst", "qqp", "sts", "polarity"]
    params["models"]["multitask"]["augment"] = ["amazon", "llm"]
    params["smart"]["task_lambda"] = {"polarity": 0.5}
    params["ensemble"]["polarity"] = ["multitask"]
    params["seeds"] = [11]
    commit_and_repro(proj, params)
    return proj


def test_the_fourth_task_is_prepared_trained_scored_and_ensembled(project):
    prepared = project / "data" / "prepared"
    tables = {split: load_prepared(prepared, load_params(project / "params.yaml")
                                   .tasks["polarity"], split) for split in SPLITS}
    assert (len(tables["train"]), len(tables["dev"]), len(tables["test"])) == (40, 30, 0)
    assert set(tables["train"]["label"]) <= {0, 1}
    member = read_run(project / "models/multitask/seed_11")
    assert member["train_examples"]["polarity"] == 40
    # overall: the declared weighted mean, polarity's F1 counted twice
    assert member["overall"] == pytest.approx(
        (member["sst_acc"] + member["qqp_acc"] + (member["sts_pearson"] + 1) / 2
         + 2 * member["polarity_f1"]) / 5)
    ensemble = json.loads((project / "metrics.json").read_text())
    assert 0.0 <= ensemble["polarity_f1"] <= 1.0
    assert ensemble["members"]["polarity"] == ["multitask"]
    dev_out = (project / "submission" / "polarity-dev-output.csv").read_text().splitlines()
    assert dev_out[0] == "id \t Predicted_Label " and len(dev_out) == 31
    assert dev_out[1].startswith("p-")
    confusion = pd.read_csv(project / "plots" / "polarity_confusion.csv")
    assert len(confusion) == 30 and set(confusion["predicted"]) <= {0, 1}
    card = (project / "models/multitask/seed_11/model/README.md").read_text()
    assert "Polarity (SST without neutral)" in card and "polarity_f1" in card
    assert json.loads(run(["dvc", "status", "--json"], project)) == {}


def test_the_fourth_task_predicts_from_the_saved_member(project):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        predict_main([str(project / "models/multitask/seed_11/model"), "--task", "polarity",
                      "--text", "a gripping, funny film", "--text", "a dull mess",
                      "--format", "jsonl"])
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["sentence"] for r in rows] == ["a gripping, funny film", "a dull mess"]
    for row in rows:
        assert set(row) >= {"p_positive", "class", "label"}
        assert row["label"] == ["negative", "positive"][row["class"]]
        assert (row["p_positive"] >= 0.5) == (row["class"] == 1)


def test_editing_the_tasks_file_re_runs_prepare(project):
    path = project / "data" / "tasks" / "polarity_dev.csv"
    saved = path.read_text()
    try:
        path.write_text(saved + "p-extra,a late extra sentence,positive\n")
        stale = set(json.loads(run(["dvc", "status", "--json"], project)))
    finally:
        path.write_text(saved)
    assert "prepare" in stale


def test_repro_without_reviews_runs_every_stage_with_empty_review_tables(project):
    augmented = project / "data" / "augmented"
    for name in ("amazon.parquet", "reviews_labeled.parquet"):
        assert len(pd.read_parquet(augmented / name)) == 0
    reviews = json.loads((augmented / "reviews_report.json").read_text())
    assert reviews["note"].startswith("no review source was given: data/reviews holds no "
                                      "review files")
    labels = json.loads((augmented / "label_report.json").read_text())
    assert "no reviews to label" in labels["note"] and labels["counts"]["labeled"] == 0
    assert (augmented / "review_map.csv").read_text() == "x,y,group,label\n"
    assert (augmented / "label_confusion.csv").read_text() == "actual,predicted\n"

    sst_train = load_prepared(project / "data" / "prepared", "sst", "train")
    member = read_run(project / "models/multitask/seed_11")
    assert member["train_examples"]["sst"] == len(sst_train)
    assert set(json.loads((project / "metrics.json").read_text())) >= {"overall", "sst_acc"}
    figures = {p.stem for p in (project / "figures").glob("*.png")}
    assert {"sst_confusion", "sts_scatter", "sst_embeddings"} <= figures
    assert not figures & {"review_map", "label_confusion"}
    assert json.loads(run(["dvc", "status", "--json"], project)) == {}
