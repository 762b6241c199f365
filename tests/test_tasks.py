"""Tasks declared in params `tasks:`: the declaration's checks, its files in every supported
format, and what each kind implies (head, loss, metric, ensemble, overall score, submission)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import PARAMS_YAML
from scipy.stats import spearmanr

from pipeline.config import ConfigError, load_params, parse_params
from pipeline.data import DataError, read_task_split, schema
from pipeline.ensemble import average_predictions, submission_name
from pipeline.evaluate import macro_f1, outputs_to_frame, task_metric
from pipeline.losses import contrastive_loss, has_contrastive, task_loss
from pipeline.model import MultitaskModel
from pipeline.tasks import CS224N_TASKS, default_tasks, overall_score

MODELS = {"models": {"m": {}}}


def declared(name: str = "nli", **spec) -> dict:
    """A params mapping with the CS224N tasks and one more."""
    base = {"kind": "classification", "classes": ["entail", "neutral", "contradict"],
            "data": {"format": "csv", "dir": "x", "train": "t.csv", "dev": "d.csv",
                     "text": ["premise", "hypothesis"], "label": "gold"}}
    for key, value in spec.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return {"tasks": {**CS224N_TASKS, name: base}, **MODELS}


def test_params_yaml_declares_exactly_the_built_in_cs224n_tasks():
    # Two homes for one fact would drift: params.yaml's section is what a user edits, the
    # built-in one what a params file without `tasks:` (or an older saved member) gets.
    assert load_params(PARAMS_YAML).tasks == default_tasks()


def test_kinds_fill_in_their_defaults():
    params = parse_params(declared())
    nli = params.tasks["nli"]
    assert (nli.loss, nli.smart_loss, nli.metric, nli.ensemble) == (
        "cross_entropy", "symmetric_kl", "accuracy", "mean_probability")
    assert nli.pair and nli.outputs == 3 and nli.metric_name == "nli_acc"
    assert nli.text_columns == ["sentence1", "sentence2"]
    assert params.models["m"].tasks == ["sst", "qqp", "sts", "nli"]
    sts = params.tasks["sts"]
    assert (sts.loss, sts.metric, sts.ensemble, sts.label_range) == (
        "mse", "pearson", "mean", (0.0, 5.0))


@pytest.mark.parametrize("spec, where, what", [
    ({"kind": "ranking"}, "tasks.nli.kind", "expected one of"),
    ({"classes": ["a"]}, "tasks.nli.classes", "at least two distinct"),
    ({"classes": ["a", "a"]}, "tasks.nli.classes", "at least two distinct"),
    ({"kind": "binary", "classes": ["a", "b", "c"]}, "tasks.nli.classes", "two classes"),
    ({"kind": "regression", "classes": []}, "tasks.nli.range", "[low, high]"),
    ({"kind": "regression", "classes": [], "range": [5, 1]}, "tasks.nli.range", "low < high"),
    ({"kind": "regression", "range": [0, 1]}, "tasks.nli.classes", "no classes"),
    ({"range": [0, 1]}, "tasks.nli.range", "only a regression"),
    ({"loss": "mse"}, "tasks.nli.loss", "does not suit a classification task"),
    ({"metric": "pearson"}, "tasks.nli.metric", "does not suit"),
    ({"ensemble": "median"}, "tasks.nli.ensemble", "does not suit"),
    ({"data": {"text": ["a", "b", "c"]}}, "tasks.nli.data.text", "one text column"),
    ({"data": {"text": []}}, "tasks.nli.data.text", "one text column"),
    ({"data": {"train": ""}}, "tasks.nli.data.train", "file name"),
    ({"data": {"format": "xlsx"}}, "tasks.nli.data.format", "expected one of"),
    ({"data": {"twice_quoted": True}}, "tasks.nli.data.twice_quoted", "cs224n"),
    ({"submission": {"file": "nli.csv"}}, "tasks.nli.submission.file", "{split}"),
    ({"overall_weight": -1}, "tasks.nli.overall_weight", "≥ 0"),
    ({"colour": "red"}, "tasks.nli", "unknown key"),
])
def test_bad_declarations_name_the_task_and_the_key(spec, where, what):
    with pytest.raises(ConfigError) as err:
        parse_params(declared(**spec))
    message = str(err.value)
    assert message.startswith(f"params.yaml: {where}") and what in message, message
    assert "\n" not in message


def test_a_task_name_must_be_a_lower_case_identifier():
    with pytest.raises(ConfigError, match=r"tasks.NLI: task name 'NLI'"):
        parse_params(declared("NLI"))


def test_two_tasks_with_one_name_are_an_error(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("tasks:\n  sst: {kind: binary}\n  sst: {kind: regression}\n"
                      "models: {m: {}}\n")
    with pytest.raises(ConfigError, match=r"key 'sst' appears twice"):
        load_params(params)


@pytest.mark.parametrize("section, value, what", [
    ("models", {"m": {"tasks": ["sst", "nlii"]}}, "models.m.tasks: expected distinct tasks"),
    ("ensemble", {"nlii": ["m"]}, "ensemble.nlii: unknown task"),
    ("loss", {"task_weights": {"nlii": 2.0}}, "loss.task_weights: unknown task(s) ['nlii']"),
    ("smart", {"task_lambda": {"nlii": 2.0}}, "smart.task_lambda: unknown task(s)"),
    ("data", {"train_rows": {"nlii": 5}}, "data.train_rows: unknown task(s)"),
    ("train", {"select_by": "nli_pearson"}, "train.select_by: 'nli_pearson' is not a dev metric"),
    ("train", {"schedule": "custom", "custom": {"task": "nlii", "epochs": 1}},
     "train.custom.task: expected one of the declared tasks"),
    ("augment", {"task": "sts"}, "augment.task: 'sts' is a pair task"),
    ("augment", {"task": "nlii"}, "augment.task: 'nlii' is not a declared task"),
])
def test_every_per_task_key_names_a_declared_task(section, value, what):
    raw = declared()
    raw[section] = value
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    assert what in str(err.value)


def test_select_by_a_declared_tasks_metric():
    raw = declared(metric="f1")
    raw["train"] = {"select_by": "nli_f1"}
    assert parse_params(raw).models["m"].train.select_by == "nli_f1"


# -- files -------------------------------------------------------------------------------------

ROWS = pd.DataFrame({"pid": ["a", "b", "c", "d"], "premise": ["p one", "p two", "p 3", "p 4"],
                     "hypothesis": ["h one", "h two", "h 3", "h 4"],
                     "gold": ["entail", "2", "contradict", "neutral"]})


def nli_spec(fmt: str, directory, **data):
    raw = declared(data={"format": fmt, "dir": str(directory), "id": "pid",
                         "train": f"train.{fmt}", "dev": f"dev.{fmt}", **data})
    return parse_params(raw).tasks["nli"]


def write(frame: pd.DataFrame, path, fmt: str) -> None:
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif fmt == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_each_format_reads_into_the_prepared_schema(tmp_path, fmt):
    write(ROWS, tmp_path / f"train.{fmt}", fmt)
    spec = nli_spec(fmt, tmp_path)
    table, report = read_task_split(tmp_path / "elsewhere", spec, "train")
    assert dict(table.dtypes.astype(str)) == schema(spec) == {
        "id": "str", "sentence1": "str", "sentence2": "str", "label": "Int8"}
    # labels by class name or by index
    assert table["label"].tolist() == [0, 2, 2, 1]
    assert table["id"].tolist() == ["a", "b", "c", "d"]
    assert table["sentence2"].tolist() == ["h one", "h two", "h 3", "h 4"]
    assert report.rows_kept == 4 and report.rows_rejected == 0


def test_rows_without_a_usable_example_are_counted_not_kept(tmp_path):
    rows = pd.concat([ROWS, pd.DataFrame({"pid": ["a", "e", "f"], "premise": ["x", "", "y"],
                                          "hypothesis": ["x", "z", "y"],
                                          "gold": ["entail", "entail", ""]})])
    write(rows, tmp_path / "train.csv", "csv")
    table, report = read_task_split(tmp_path, nli_spec("csv", tmp_path), "train")
    assert len(table) == 4
    assert dict(report.rejected) == {"duplicate id": 1, "empty sentence1": 1, "blank label": 1}
    assert [e["line"] for e in report.rejected_examples] == [6, 7, 8]


@pytest.mark.parametrize("fmt, place", [("csv", "line 4"), ("jsonl", "line 3"),
                                        ("parquet", "row 2")])
def test_a_label_outside_the_declared_classes_names_task_file_row_and_field(tmp_path, fmt, place):
    rows = ROWS.copy()
    rows.loc[2, "gold"] = "maybe"
    write(rows, tmp_path / f"train.{fmt}", fmt)
    with pytest.raises(DataError) as err:
        read_task_split(tmp_path, nli_spec(fmt, tmp_path), "train")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / f'train.{fmt}'}: task nli: {place}, field 'gold'")
    assert "'maybe' is not a declared label" in message and "'entail'" in message


def test_a_regression_label_outside_its_range_is_an_error(tmp_path):
    rows = pd.DataFrame({"id": ["1", "2"], "text": ["a b", "c d"], "score": ["0.5", "7"]})
    write(rows, tmp_path / "t.csv", "csv")
    raw = declared(kind="regression", classes=[], range=[0, 1],
                   data={"dir": str(tmp_path), "text": ["text"], "label": "score"})
    with pytest.raises(DataError, match=r"line 3, field 'score': '7' is not a declared label; "
                                        r"expected a number in tasks.nli.range \[0.0, 1.0\]"):
        read_task_split(tmp_path, parse_params(raw).tasks["nli"], "train")


def test_a_declared_column_missing_from_the_file_is_an_error(tmp_path):
    write(ROWS.drop(columns="hypothesis"), tmp_path / "train.csv", "csv")
    with pytest.raises(DataError) as err:
        read_task_split(tmp_path, nli_spec("csv", tmp_path), "train")
    assert str(err.value) == (
        f"{tmp_path / 'train.csv'}: task nli: column 'hypothesis' (tasks.nli.data.text) is not "
        f"in the file; its columns: ['pid', 'premise', 'gold']")


def test_a_file_that_is_not_its_format_is_an_error(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"pid": "a", "premise": \n')
    with pytest.raises(DataError, match=r"task nli: not a readable jsonl file"):
        read_task_split(tmp_path, nli_spec("jsonl", tmp_path), "train")


def test_no_id_column_numbers_the_rows_and_an_undeclared_test_split_is_empty(tmp_path):
    write(ROWS, tmp_path / "train.csv", "csv")
    spec = nli_spec("csv", tmp_path, id=None)
    table, _ = read_task_split(tmp_path, spec, "train")
    assert table["id"].tolist() == ["0", "1", "2", "3"]
    test, report = read_task_split(tmp_path, spec, "test")
    assert test.empty and report.missing and list(test.columns) == list(schema(spec))


def test_test_split_needs_no_label_column(tmp_path):
    write(ROWS.drop(columns="gold"), tmp_path / "test.csv", "csv")
    spec = nli_spec("csv", tmp_path, test="test.csv")
    table, _ = read_task_split(tmp_path, spec, "test")
    assert len(table) == 4 and table["label"].isna().all()


# -- what a kind implies -----------------------------------------------------------------------


def test_heads_follow_the_declared_kinds(tiny_bert):
    from pipeline.config import ModelConfig

    params = parse_params(declared())
    model = MultitaskModel(ModelConfig(backbone=str(tiny_bert)), list(params.tasks.values()))
    enc = {"input_ids": torch.tensor([[2, 5, 3], [2, 6, 3]]),
           "attention_mask": torch.ones(2, 3, dtype=torch.long)}
    shapes = {task: tuple(model(task, [enc]).shape) for task in model.tasks}
    assert shapes == {"sst": (2, 5), "qqp": (2,), "sts": (2,), "nli": (2, 3)}


def test_losses_follow_the_declaration():
    params = parse_params(declared(kind="regression", classes=[], range=[1.0, 3.0], loss="l1"))
    nli = params.tasks["nli"]
    out, y = torch.tensor([1.0, 2.5]), torch.tensor([2.0, 2.0])
    assert task_loss(nli, out, y, 0.0).item() == pytest.approx((1.0 + 0.5) / 2)
    # ordered CE applies to ordered classes only: SST is, an unordered classification is not
    logits, labels = torch.tensor([[2.0, 0.0, 1.0]]), torch.tensor([1])
    unordered = parse_params(declared()).tasks["nli"]
    ce = torch.nn.functional.cross_entropy(logits, labels).item()
    assert task_loss(unordered, logits, labels, 0.5).item() == pytest.approx(ce)
    # the regression contrastive target spans the declared range: (hi − y)/(4(hi − lo))
    d = torch.tensor([0.3])
    assert has_contrastive(nli) and not has_contrastive(default_tasks()["sst"])
    expected = abs((3.0 - 2.0) / 8.0 - 0.09)
    assert contrastive_loss(nli, d, torch.tensor([2.0]), 0.5, "similarity").item() == (
        pytest.approx(expected))


def test_declared_metrics_by_hand():
    pred, labels = np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 2, 0])
    # class 0: tp 1, fp 1, fn 1 → 0.5; class 1: tp 1, fn 1 → 2/3; class 2: tp 1, fp 1 → 2/3
    assert macro_f1(pred, labels) == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)
    f1 = parse_params(declared(metric="f1")).tasks["nli"]
    assert task_metric(f1, pred, labels) == pytest.approx(macro_f1(pred, labels))
    spearman = parse_params(declared(kind="regression", classes=[], range=[0, 1],
                                     metric="spearman")).tasks["nli"]
    x, y = np.array([0.1, 0.4, 0.2, 0.9]), np.array([0.0, 0.5, 0.7, 1.0])
    assert task_metric(spearman, x, y) == pytest.approx(spearmanr(x, y).statistic)
    assert spearman.metric_name == "nli_spearman"


def test_overall_is_the_declared_weighted_mean():
    specs = parse_params(declared(overall_weight=2.0, metric="f1")).tasks
    metrics = {"sst_acc": 0.5, "qqp_acc": 0.8, "sts_pearson": 0.6, "nli_f1": 0.2}
    assert overall_score(specs, metrics) == pytest.approx(
        (0.5 + 0.8 + (0.6 + 1) / 2 + 2 * 0.2) / 5)
    cs224n = {k: v for k, v in specs.items() if k != "nli"}
    assert overall_score(cs224n, metrics) == pytest.approx((0.5 + 0.8 + 0.8) / 3)


def test_majority_vote_ensemble_breaks_ties_by_mean_probability():
    spec = parse_params(declared(ensemble="majority_vote")).tasks["nli"]
    raw = {"a": [[3.0, 0.0, 0.0], [0.0, 2.0, 0.0]], "b": [[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
           "c": [[0.0, 0.0, 1.0], [0.0, 0.0, 5.0]]}
    frames = {run: outputs_to_frame(spec, ["x", "y"], np.array(r)) for run, r in raw.items()}
    out = average_predictions(spec, frames)
    # x: votes 0, 0, 2 → 0; y: votes 1, 2, 2 → 2
    assert out["pred"].tolist() == [0, 2]
    tie = average_predictions(spec, {k: frames[k] for k in ("a", "c")})
    # y: one vote each for 1 and 2; class 2's mean probability is the higher
    probs = np.mean([frames[k][["p0", "p1", "p2"]].to_numpy() for k in ("a", "c")], axis=0)
    assert tie["pred"].tolist()[1] == (1 if probs[1, 1] > probs[1, 2] else 2)
    median = parse_params(declared(kind="regression", classes=[], range=[0, 1],
                                   ensemble="median")).tasks["nli"]
    values = {r: pd.DataFrame({"id": ["x"], "pred": [v]})
              for r, v in zip("abc", [0.1, 0.9, 0.2], strict=True)}
    assert average_predictions(median, values)["pred"].item() == pytest.approx(0.2)


def test_submission_file_follows_the_declaration():
    specs = parse_params(declared()).tasks
    assert submission_name(specs["qqp"], "dev") == "para-dev-output.csv"
    assert submission_name(specs["nli"], "test") == "nli-test-output.csv"


def test_a_saved_member_of_an_older_version_gets_the_default_declarations(tmp_path):
    from pipeline.model import read_member_config

    member = parse_params({"models": {"m": {"tasks": ["sst", "qqp"]}}}).models["m"]
    from dataclasses import asdict

    saved = asdict(member)
    del saved["specs"]
    saved["smart"]["lambda"] = saved["smart"].pop("lambda_")
    (tmp_path / "bestfit.json").write_text(json.dumps(saved))
    assert read_member_config(tmp_path).specs == {t: default_tasks()[t] for t in ("sst", "qqp")}



# -- columns, submission files and names a declaration cannot work with -------------------------


@pytest.mark.parametrize("spec, where, what", [
    ({"data": {"label": "premise"}}, "tasks.nli.data.label",
     "'premise' is also a text column"),
    ({"data": {"text": ["premise"], "label": "premise"}}, "tasks.nli.data.label",
     "is also a text column"),
    ({"data": {"id": "gold"}}, "tasks.nli.data.id", "'gold' is also a text or the label"),
    ({"data": {"id": "hypothesis"}}, "tasks.nli.data.id", "is also a text or the label"),
    ({"data": {"text": ["premise", "premise"]}}, "tasks.nli.data.text", "one text column"),
    ({"submission": {"file": "../{split}.csv"}}, "tasks.nli.submission.file",
     "makes '../dev.csv'; expected a plain file name"),
    ({"submission": {"file": "/tmp/{task}-{split}.csv"}}, "tasks.nli.submission.file",
     "makes '/tmp/nli-dev.csv'"),
    ({"submission": {"file": "out/{split}.csv"}}, "tasks.nli.submission.file", "plain file"),
    ({"submission": {"file": "..\\{split}.csv"}}, "tasks.nli.submission.file", "plain file"),
    ({"submission": {"file": "{split}\n.csv"}}, "tasks.nli.submission.file",
     "control characters"),
    ({"submission": {"file": "x" * 300 + "{split}"}}, "tasks.nli.submission.file",
     "at most 255 bytes"),
    ({"submission": {"file": "{split}.csv\x00"}}, "tasks.nli.submission.file",
     "holds a NUL character"),
    ({"submission": {"file": "{name}-{split}.csv"}}, "tasks.nli.submission.file",
     "holds ['{name}']; expected only {task} and {split}"),
    ({"submission": {"file": "{split.upper}.csv"}}, "tasks.nli.submission.file",
     "holds ['{split.upper}']"),
    ({"submission": {"file": "{split!r}.csv"}}, "tasks.nli.submission.file", "holds"),
    ({"submission": {"file": "{split:>9}.csv"}}, "tasks.nli.submission.file", "holds"),
    ({"submission": {"file": "{split.csv"}}, "tasks.nli.submission.file", "expected a file name"),
    ({"submission": {"file": "{task}.csv"}}, "tasks.nli.submission.file", "must hold {split}"),
    ({"submission": {"column": "Predicted\tLabel"}}, "tasks.nli.submission.column",
     "without tabs or line breaks"),
    ({"submission": {"column": "a\nb"}}, "tasks.nli.submission.column", "line breaks"),
    ({"submission": {"column": " "}}, "tasks.nli.submission.column", "expected a header"),
    ({"overall_weight": float("nan")}, "tasks.nli.overall_weight", "finite number, got nan"),
    ({"overall_weight": 1e7}, "tasks.nli.overall_weight", "≤ 1e+06"),
    ({"kind": "regression", "classes": [], "range": [0, float("inf")]}, "tasks.nli.range[1]",
     "finite number, got inf"),
])
def test_declarations_that_would_mislead_or_escape_are_errors(spec, where, what):
    with pytest.raises(ConfigError) as err:
        parse_params(declared(**spec))
    message = str(err.value)
    assert message.startswith(f"params.yaml: {where}") and what in message, message
    assert "\n" not in message


def test_a_submission_file_is_a_plain_name_per_split():
    spec = parse_params(declared(submission={"file": "{task}.{split}.tsv"})).tasks["nli"]
    assert [spec.submission_file(s) for s in ("dev", "test")] == ["nli.dev.tsv", "nli.test.tsv"]
    assert submission_name(spec, "test") == "nli.test.tsv"


@pytest.mark.parametrize("file", ["sst-{split}-output.csv", "SST-{split}-OUTPUT.csv"],
                         ids=["same", "case"])
def test_two_tasks_writing_one_submission_file_are_an_error(file):
    # The second file would silently replace the first (on macOS and Windows also when the names
    # differ by case alone).
    with pytest.raises(ConfigError) as err:
        parse_params(declared(submission={"file": file}))
    assert str(err.value).startswith(
        "params.yaml: tasks.nli.submission.file: ") and "is also the file of tasks.sst" in str(
        err.value)


@pytest.mark.parametrize("name", ["задача", "nli" * 30, "nli-2", "2nli", "nli.x", ""])
def test_a_task_name_is_lower_case_ascii(name):
    with pytest.raises(ConfigError) as err:
        parse_params(declared(name))
    message = str(err.value)
    assert "task name" in message and "a-z, 0-9 and _" in message and len(message) < 400


def test_a_task_name_may_hold_digits_and_underscores():
    assert parse_params(declared("nli_2")).tasks["nli_2"].metric_name == "nli_2_acc"
