"""No review source: a review directory holding only notes (the committed `data/reviews`, a
README) makes `filter_reviews` and `label_reviews` write their outputs with no rows, in the
schema of mined ones, and a report note saying nothing was mined or labelled; members that ask
for reviews then train on their prepared rows alone. A source the user named that is missing, or
holds anything that is not a review file, is still an error."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import PARAMS_YAML, load_stage
from test_train import synthetic_frames

from pipeline.augment.llm_label import COLUMNS as LLM_COLUMNS
from pipeline.augment.reviews import (
    REVIEW_SUFFIXES,
    ReviewsError,
    mine_reviews,
    review_files,
)
from pipeline.config import ReviewsConfig, load_params
from pipeline.data import AUGMENTED_SCHEMA, member_frames, prepared_path
from pipeline.errors import EXIT_USER_ERROR, run_stage
from pipeline.io import write_parquet
from pipeline.seeds import read_run

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "data" / "reviews"
ROWS = 12  # synthetic rows per task and split


def write_params(tmp: Path, tiny_bert: Path | None = None) -> Path:
    """params.yaml's defaults, but for a tiny CPU training run of `multitask` (all three tasks,
    asking for both review sources) when ``tiny_bert`` is given."""
    raw = yaml.safe_load(PARAMS_YAML.read_text())
    raw["augment"]["reviews"]["cache_dir"] = str(tmp / "cache" / "embeddings")
    raw["augment"]["llm"]["cache_dir"] = str(tmp / "cache" / "llm_labels")
    if tiny_bert is not None:
        raw["model"]["backbone"] = str(tiny_bert)
        raw["smart"]["lambda"] = 0.0
        raw["train"].update(epochs=1, batches_per_epoch=3, batch_size=4, eval_batch_size=16,
                            precision="fp32", schedule="round_robin", num_threads=1)
        raw["models"]["multitask"]["augment"] = ["amazon", "llm"]
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def write_prepared(tmp: Path) -> Path:
    prepared = tmp / "prepared"
    for task, splits in synthetic_frames(ROWS, seed=3).items():
        for split, frame in splits.items():
            write_parquet(frame, prepared_path(prepared, task, split))
    return prepared


def committed_copy(tmp: Path) -> Path:
    """A copy of the committed `data/reviews` as a fresh clone has it: its README alone."""
    reviews = tmp / "reviews"
    reviews.mkdir()
    shutil.copy(COMMITTED / "README.md", reviews / "README.md")
    return reviews


def filter_reviews(tmp: Path, source: Path, params: Path, monkeypatch) -> Path:
    """stages/filter_reviews.py on ``source``, with no sentence encoder to load; returns its
    output directory."""
    stage = load_stage("filter_reviews")

    def no_encoder(*args, **kwargs):
        raise AssertionError("an encoder was loaded with no review to embed")

    monkeypatch.setattr(stage, "sentence_encoder", no_encoder)
    out = tmp / "augmented"
    stage.main(["--source", str(source), "--prepared", str(write_prepared(tmp)), "--out",
                str(out), "--params", str(params), "--no-progress"])
    return out


def label_reviews(out: Path, params: Path, monkeypatch) -> None:
    """stages/label_reviews.py on ``out``/amazon.parquet, with no LLM to load."""
    stage = load_stage("label_reviews")

    def no_model(*args, **kwargs):
        raise AssertionError("an LLM was loaded with no review to label")

    monkeypatch.setattr(stage, "load_tokenizer", no_model)
    monkeypatch.setattr(stage, "make_scorer", no_model)
    stage.main(["--reviews", str(out / "amazon.parquet"),
                "--sst-train", str(out.parent / "prepared" / "sst_train.parquet"),
                "--out", str(out / "reviews_labeled.parquet"),
                "--report", str(out / "label_report.json"),
                "--confusion", str(out / "label_confusion.csv"), "--params", str(params)])


def mined_schema(tmp: Path) -> dict[str, str]:
    """The columns and dtypes of a table mined from real review lines (random selection)."""
    source = tmp / "some-reviews.jsonl"
    source.write_text("".join(
        json.dumps({"overall": 1 + i % 5, "reviewText": f"a film {'very ' * (i % 4)}good",
                    "asin": f"A{i}", "reviewerID": f"R{i}"}) + "\n" for i in range(20)))
    sst = pd.DataFrame({"sentence": [f"a film {'very ' * n}good" for n in range(4)] * 5,
                        "label": [lab for lab in range(5) for _ in range(4)]})
    cfg = ReviewsConfig(per_label=2, length_bins=2, selection="random", cache_dir=None,
                        max_candidates_per_label=None)
    table = mine_reviews(sst, [source], cfg, None, None, progress=False).table
    assert len(table) > 0
    return dict(table.dtypes.astype(str))


# --- which sources are no review source ---------------------------------------------------


def empty(d: Path) -> Path:
    return d


def readme_and_hidden_files(d: Path) -> Path:
    (d / "README.md").write_text("reviews go here")
    (d / "readme.txt").write_text("and here")
    (d / ".gitkeep").write_text("")
    (d / ".cache").mkdir()
    return d


@pytest.mark.parametrize("make", [empty, readme_and_hidden_files, committed_copy])
def test_a_directory_of_notes_is_no_review_source(tmp_path, make):
    assert review_files(make(tmp_path)) == []


def test_the_default_source_is_the_committed_directory_and_its_readme_gives_the_formats():
    params = load_params(PARAMS_YAML)
    assert params.augment.reviews.source == "data/reviews"
    readme = (COMMITTED / "README.md").read_text()
    for suffix in REVIEW_SUFFIXES:
        assert f"`*{suffix}`" in readme
    assert "`overall`" in readme and "`reviewText`" in readme


def csv_beside_readme(d: Path) -> Path:
    (d / "README.md").write_text("reviews")
    (d / "reviews.csv").write_text("stars,text\n5,great\n")
    return d


def reviews_in_a_subdirectory(d: Path) -> Path:
    (d / "README.md").write_text("reviews")
    (d / "movies").mkdir()
    (d / "movies" / "a.jsonl").write_text('{"overall": 5, "reviewText": "great"}\n')
    return d


def readme_named_like_reviews(d: Path) -> Path:
    (d / "README.jsonl").write_text("Put reviews here\n")
    return d


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "absent", r"absent: no such review file or directory"),
    (csv_beside_readme, r"no review files .* it holds README\.md, reviews\.csv$"),
    (reviews_in_a_subdirectory, r"it holds README\.md, movies/ \(subdirectories are not"),
    (readme_named_like_reviews, r"README\.jsonl: no usable review: 0 reviews in 1 lines"),
])
def test_a_named_source_missing_or_not_reviews_is_still_an_error(tmp_path, make, message):
    with pytest.raises(ReviewsError, match=message):
        paths = review_files(make(tmp_path))
        mine_reviews(pd.DataFrame({"sentence": ["a b"], "label": [0]}), paths,
                     ReviewsConfig(selection="random", cache_dir=None), None, None,
                     progress=False)


def test_the_stage_stops_on_a_missing_named_source_and_writes_nothing(tmp_path, capsys):
    stage = load_stage("filter_reviews")
    argv = ["--source", str(tmp_path / "amazon"), "--prepared", str(write_prepared(tmp_path)),
            "--out", str(tmp_path / "augmented"), "--params", str(write_params(tmp_path))]
    with pytest.raises(SystemExit) as exit_:
        run_stage("filter_reviews", stage.main, argv)
    assert exit_.value.code == EXIT_USER_ERROR
    assert capsys.readouterr().err == (f"filter_reviews: error: {tmp_path / 'amazon'}: no such "
                                       "review file or directory (augment.reviews.source)\n")
    assert not (tmp_path / "augmented").exists()


# --- the review stages without a source ---------------------------------------------------


def test_filter_reviews_without_a_source_writes_empty_outputs_and_says_so(
        tmp_path, monkeypatch, capsys):
    source = committed_copy(tmp_path)
    out = filter_reviews(tmp_path, source, write_params(tmp_path), monkeypatch)

    table = pd.read_parquet(out / "amazon.parquet")
    assert len(table) == 0
    assert list(table.columns)[:len(AUGMENTED_SCHEMA)] == list(AUGMENTED_SCHEMA)
    assert dict(table.dtypes.astype(str)) == mined_schema(tmp_path)
    report = json.loads((out / "reviews_report.json").read_text())
    assert report["note"].startswith(f"no review source was given: {source} holds no review "
                                     "files")
    assert "nothing was mined" in report["note"]
    assert (report["reviews"], report["candidates"], report["kept_per_label"]) == (0, 0, [0] * 5)
    assert (out / "review_map.csv").read_text() == "x,y,group,label\n"
    assert (tmp_path / "cache" / "embeddings").is_dir()  # a declared out, even when unused
    assert "no review source was given" in capsys.readouterr().out


@pytest.mark.parametrize("enabled", [True, False])
def test_label_reviews_with_no_reviews_labels_nothing_and_says_so(tmp_path, monkeypatch,
                                                                  enabled):
    params = write_params(tmp_path)
    raw = yaml.safe_load(params.read_text())
    raw["augment"]["llm"]["enabled"] = enabled
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = filter_reviews(tmp_path, committed_copy(tmp_path), params, monkeypatch)
    label_reviews(out, params, monkeypatch)

    table = pd.read_parquet(out / "reviews_labeled.parquet")
    assert len(table) == 0 and dict(table.dtypes.astype(str)) == LLM_COLUMNS
    report = json.loads((out / "label_report.json").read_text())
    assert report["enabled"] is enabled
    assert f"no reviews to label ({out / 'amazon.parquet'} has no rows)" in report["note"]
    assert report["note"].endswith("no review was relabeled and the table is empty")
    assert ("augment.llm.enabled is false" in report["note"]) is not enabled
    assert report["counts"] == {"total": 0, "labeled": 0, "kept": 0}
    assert (out / "label_confusion.csv").read_text() == "actual,predicted\n"


# --- members that ask for reviews ---------------------------------------------------------


def test_a_member_asking_for_reviews_trains_on_its_prepared_rows_alone(
        tmp_path, tiny_bert, monkeypatch, caplog):
    params_path = write_params(tmp_path, tiny_bert)
    out = filter_reviews(tmp_path, committed_copy(tmp_path), params_path, monkeypatch)
    label_reviews(out, params_path, monkeypatch)
    params = load_params(params_path)
    member = params.models["multitask"]
    assert member.augment == ["amazon", "llm"]

    prepared = tmp_path / "prepared"
    with caplog.at_level(logging.WARNING, logger="bestfit.data"):
        frames = member_frames(member, prepared, out, params.augment.task)
    alone = member_frames(replace(member, augment=[]), prepared, out, params.augment.task)
    pd.testing.assert_frame_equal(frames["sst"]["train"],
                                  alone["sst"]["train"][["id", "sentence", "label"]])
    assert [r.getMessage() for r in caplog.records] == [
        f"{out / name} has no rows: member 'multitask' trains without augment source "
        f"{source!r} (the note in its stage's report says why)"
        for source, name in (("amazon", "amazon.parquet"), ("llm", "reviews_labeled.parquet"))]

    stage = load_stage("train")
    model_dir = tmp_path / "models" / "multitask" / "seed_11"
    stage.main(["multitask", "--seed", "11", "--prepared", str(prepared), "--augmented",
                str(out), "--out", str(model_dir), "--checkpoints", str(tmp_path / "ckpt"),
                "--params", str(params_path), "--no-live"])
    metrics = read_run(model_dir)
    assert metrics["train_examples"] == {"sst": ROWS, "qqp": ROWS, "sts": ROWS}
    assert 0.0 <= metrics["sst_acc"] <= 1.0
    assert len(pd.read_parquet(model_dir / "predictions" / "sst_dev.parquet")) == ROWS
