"""pipeline.ensemble on hand-made member tables, and stages/ensemble.py end to end in a tmp dir
(every expected number worked out by hand in the comments)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import PARAMS_YAML, load_stage

from pipeline.data import schema
from pipeline.ensemble import (
    average_predictions,
    ensemble_metrics,
    read_member_predictions,
    seed_report,
    submission_name,
    submission_text,
)
from pipeline.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
P = [f"p{k}" for k in range(5)]


def sst_member(ids: list[str], probs: list[list[float]]) -> pd.DataFrame:
    probs = np.array(probs, dtype=np.float32)
    frame = pd.DataFrame({"id": ids, "pred": probs.argmax(axis=1).astype(np.int8)})
    for k in range(5):
        frame[f"p{k}"] = probs[:, k]
    return frame


def qqp_member(ids: list[str], p1: list[float]) -> pd.DataFrame:
    p1 = np.array(p1, dtype=np.float32)
    return pd.DataFrame({"id": ids, "pred": (p1 >= 0.5).astype(np.int8), "p0": 1 - p1, "p1": p1})


def sts_member(ids: list[str], pred: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"id": ids, "pred": np.array(pred, dtype=np.float32)})


# -- average_predictions ----------------------------------------------------------------------

def test_sst_averages_probabilities_then_argmax():
    a = sst_member(["x", "y"], [[0.6, 0.35, 0.05, 0.0, 0.0],     # argmax 0
                                [0.1, 0.1, 0.1, 0.2, 0.5]])
    b = sst_member(["x", "y"], [[0.05, 0.35, 0.4, 0.1, 0.1],     # argmax 2
                                [0.0, 0.0, 0.2, 0.7, 0.1]])
    out = average_predictions("sst", {"a": a, "b": b})
    assert list(out.columns) == ["id", "pred", *P]
    assert out["id"].tolist() == ["x", "y"]
    # x: mean [0.325, 0.35, 0.225, 0.05, 0.05] → class 1, which neither member picked;
    # y: mean [0.05, 0.05, 0.15, 0.45, 0.30] → class 3, not member a's 4
    np.testing.assert_allclose(out[P].to_numpy(), [[0.325, 0.35, 0.225, 0.05, 0.05],
                                                   [0.05, 0.05, 0.15, 0.45, 0.30]], atol=1e-6)
    assert out["pred"].tolist() == [1, 3]
    assert out[P].to_numpy().dtype == np.float32


def test_rows_matched_by_id_across_member_orders():
    a = sst_member(["x", "y", "z"], [[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0, 0, 1]])
    b = sst_member(["z", "x", "y"], [[0, 0, 0, 0.6, 0.4], [0.8, 0, 0, 0, 0.2], [0, 0, 1, 0, 0]])
    out = average_predictions("sst", {"a": a, "b": b})
    assert out["id"].tolist() == ["x", "y", "z"]  # the first member's order
    np.testing.assert_allclose(out[P].to_numpy(), [[0.9, 0, 0, 0, 0.1],
                                                   [0, 0.5, 0.5, 0, 0],
                                                   [0, 0, 0, 0.3, 0.7]], atol=1e-6)
    assert out["pred"].tolist() == [0, 1, 4]  # y: tie 1/2, argmax takes the first

    qa = qqp_member(["1", "2", "3"], [0.9, 0.2, 0.6])
    qb = qqp_member(["3", "2", "1"], [0.3, 0.1, 0.3])
    q = average_predictions("qqp", {"a": qa, "b": qb})
    # p1 means: id 1 (0.9+0.3)/2 = 0.6, id 2 0.15, id 3 (0.6+0.3)/2 = 0.45 → a's 1 flips to 0
    assert list(q.columns) == ["id", "pred", "p0", "p1"]
    np.testing.assert_allclose(q["p1"], [0.6, 0.15, 0.45], atol=1e-6)
    np.testing.assert_allclose(q["p0"], [0.4, 0.85, 0.55], atol=1e-6)
    assert q["pred"].tolist() == [1, 0, 0]

    sa = sts_member(["u", "v"], [1.0, 2.5])
    sb = sts_member(["v", "u"], [4.5, 3.0])
    s = average_predictions("sts", {"a": sa, "b": sb})
    assert list(s.columns) == ["id", "pred"] and s["pred"].dtype == np.float32
    assert s["id"].tolist() == ["u", "v"] and s["pred"].tolist() == [2.0, 3.5]


def test_qqp_mean_of_one_half_is_a_duplicate():
    """Threshold ≥ 0.5 on the mean p1, as for a single model (σ(0) = 0.5 → duplicate)."""
    a = qqp_member(["1", "2"], [0.25, 0.5])
    b = qqp_member(["1", "2"], [0.75, 0.5])
    out = average_predictions("qqp", {"a": a, "b": b})
    np.testing.assert_array_equal(out["p1"], [0.5, 0.5])
    assert out["pred"].tolist() == [1, 1]
    # one member alone keeps its own predictions
    assert average_predictions("qqp", {"b": b})["pred"].tolist() == b["pred"].tolist()


def test_single_member_is_its_own_prediction():
    a = sst_member(["x", "y"], [[0.1, 0.2, 0.3, 0.4, 0.0], [0.5, 0.2, 0.1, 0.1, 0.1]])
    out = average_predictions("sst", {"only": a})
    pd.testing.assert_frame_equal(out, a)


@pytest.mark.parametrize("other_ids", [["x", "q"], ["x"], ["x", "y", "z"]])
def test_members_with_other_ids_name_the_member(other_ids):
    a = sts_member(["x", "y"], [1.0, 2.0])
    b = sts_member(other_ids, [3.0] * len(other_ids))
    with pytest.raises(ValueError, match=r"ensemble\.sts: member 'odd'.*'a'"):
        average_predictions("sts", {"a": a, "odd": b})


def test_no_member_is_an_error():
    with pytest.raises(UserError, match="ensemble.qqp: names no member"):
        average_predictions("qqp", {})


# -- ensemble_metrics -------------------------------------------------------------------------

def prepared(task: str, rows: list[tuple]) -> pd.DataFrame:
    """A prepared table in the schema of pipeline.data.schema(task)."""
    dtypes = schema(task)
    return pd.DataFrame({col: pd.Series([r[i] for r in rows], dtype=dtype)
                         for i, (col, dtype) in enumerate(dtypes.items())})


DEV = {
    "sst": prepared("sst", [("s1", "good", 4), ("s2", "bad", 0), ("s3", "ok", 2),
                            ("s4", "fine", 3)]),
    "qqp": prepared("qqp", [("q1", "a", "b", 1), ("q2", "c", "d", 0), ("q3", "e", "f", 0),
                            ("q4", "g", "h", 1), ("q5", "i", "j", 1)]),
    "sts": prepared("sts", [("t1", "a", "b", 1.0), ("t2", "c", "d", 3.0), ("t3", "e", "f", 2.0),
                            ("t4", "g", "h", 4.0)]),
}


def test_ensemble_metrics_by_hand():
    preds = {
        # labels by id: s3 2 ✓, s1 4 ✗ (3), s4 3 ✓, s2 0 ✗ (1) → 2/4
        "sst": pd.DataFrame({"id": ["s3", "s1", "s4", "s2"], "pred": [2, 3, 3, 1]}),
        # q5 1 ✓, q1 1 ✓, q2 0 ✓, q4 1 ✗ (0), q3 0 ✓ → 4/5
        "qqp": pd.DataFrame({"id": ["q5", "q1", "q2", "q4", "q3"], "pred": [1, 1, 0, 0, 0]}),
        # in id order t1..t4: pred [1, 2, 3, 4] vs labels [1, 3, 2, 4] → r = 4/5 (see
        # test_evaluate)
        "sts": pd.DataFrame({"id": ["t4", "t2", "t1", "t3"], "pred": [4.0, 2.0, 1.0, 3.0]}),
    }
    metrics = ensemble_metrics(preds, DEV)
    assert metrics["sst_acc"] == 0.5
    assert metrics["qqp_acc"] == 0.8
    assert metrics["sts_pearson"] == pytest.approx(0.8)
    assert metrics["overall"] == pytest.approx((0.5 + 0.8 + 0.9) / 3)


# -- submission files -------------------------------------------------------------------------

def test_submission_text_exact():
    sst = pd.DataFrame({"id": ["ab12", "cd34"], "pred": np.array([3, 0], np.int8)})
    assert submission_text("sst", sst) == (
        "id \t Predicted_Sentiment \nab12 , 3 \ncd34 , 0 \n")
    qqp = pd.DataFrame({"id": ["q9"], "pred": np.array([1], np.int8)})
    assert submission_text("qqp", qqp) == "id \t Predicted_Is_Paraphrase \nq9 , 1 \n"
    sts = pd.DataFrame({"id": ["t1", "t2"], "pred": np.array([2.5, 4.0], np.float32)})
    assert submission_text("sts", sts) == (
        "id \t Predicted_Similiarity \nt1 , 2.5 \nt2 , 4.0 \n")
    assert submission_text("sst", sst.iloc[:0]) == "id \t Predicted_Sentiment \n"


def test_submission_names():
    assert submission_name("sst", "dev") == "sst-dev-output.csv"
    assert submission_name("sst", "test") == "sst-test-output.csv"
    assert submission_name("qqp", "dev") == "para-dev-output.csv"
    assert submission_name("qqp", "test") == "para-test-output.csv"
    assert submission_name("sts", "test") == "sts-test-output.csv"


def test_read_member_predictions(tmp_path):
    with pytest.raises(UserError, match="'ghost' with seed 3.*train@ghost-3"):
        read_member_predictions(tmp_path, "ghost", 3, "sst", "dev")
    (tmp_path / "m" / "seed_7" / "predictions").mkdir(parents=True)
    table = sts_member(["a"], [1.5])
    table.to_parquet(tmp_path / "m" / "seed_7" / "predictions" / "sts_test.parquet", index=False)
    pd.testing.assert_frame_equal(read_member_predictions(tmp_path, "m", 7, "sts", "test"), table)
    with pytest.raises(UserError, match="seed_8"):
        read_member_predictions(tmp_path, "m", 8, "sts", "test")


def test_seed_report_by_hand(tmp_path):
    runs = {11: {"sst_acc": 0.5, "overall": 0.6, "train_examples": {"sst": 8}},
            12: {"sst_acc": 0.6, "overall": 0.7, "train_examples": {"sst": 8}},
            13: {"sst_acc": 0.7, "overall": 0.5, "train_examples": {"sst": 8}}}
    for seed, metrics in runs.items():
        (tmp_path / "m" / f"seed_{seed}").mkdir(parents=True)
        (tmp_path / "m" / f"seed_{seed}" / "metrics.json").write_text(json.dumps(metrics))
    report = seed_report(tmp_path, ["m"], [11, 12, 13])
    assert report["m"]["per_seed"] == {"11": {"sst_acc": 0.5, "overall": 0.6},
                                       "12": {"sst_acc": 0.6, "overall": 0.7},
                                       "13": {"sst_acc": 0.7, "overall": 0.5}}
    # sst_acc: mean 0.6, deviations ∓0.1, 0 → sd √(0.02 / 2) = 0.1; overall the same spread
    assert set(report["m"]["aggregate"]) == {"sst_acc", "overall"}
    for stats in report["m"]["aggregate"].values():
        assert stats == pytest.approx({"mean": 0.6, "sd": 0.1, "n": 3})
    # only the seeds asked for are read
    assert seed_report(tmp_path, ["m"], [12])["m"]["aggregate"]["sst_acc"] == {
        "mean": 0.6, "sd": None, "n": 1}
    with pytest.raises(UserError, match="seed_14"):
        seed_report(tmp_path, ["m"], [11, 14])


# -- stages/ensemble.py end to end ------------------------------------------------------------

MEMBERS = {
    "sst_single": {
        "sst_dev": sst_member(["s4", "s1", "s2", "s3"], [
            [0.0, 0.1, 0.2, 0.6, 0.1],    # s4
            [0.0, 0.0, 0.1, 0.5, 0.4],    # s1
            [0.7, 0.3, 0.0, 0.0, 0.0],    # s2
            [0.1, 0.1, 0.3, 0.5, 0.0]]),  # s3
        "sst_test": sst_member(["u2", "u1"], [[0.2, 0.2, 0.2, 0.2, 0.2], [0, 0, 0, 1, 0]]),
    },
    "multitask": {
        "sst_dev": sst_member(["s1", "s2", "s3", "s4"], [
            [0.0, 0.0, 0.0, 0.2, 0.8],    # s1
            [0.1, 0.9, 0.0, 0.0, 0.0],    # s2
            [0.0, 0.0, 0.9, 0.1, 0.0],    # s3
            [0.0, 0.0, 0.0, 0.9, 0.1]]),  # s4
        "sst_test": sst_member(["u1", "u2"], [[0, 0, 0, 0, 1], [0, 0.8, 0, 0, 0.2]]),
        "qqp_dev": qqp_member(["q2", "q1", "q5", "q3", "q4"], [0.1, 0.7, 0.4, 0.3, 0.9]),
        "qqp_test": qqp_member(["r1", "r2"], [0.75, 0.25]),
        "sts_dev": sts_member(["t1", "t2", "t3", "t4"], [1.0, 2.0, 3.0, 4.0]),
        "sts_test": sts_member(["v1"], [2.5]),
    },
}


# Each member's own dev scores, as its train stage writes them (read back per seed).
MEMBER_METRICS = {"sst_single": {"sst_acc": 0.5, "overall": 0.5, "best_epoch": 2},
                  "multitask": {"sst_acc": 0.25, "qqp_acc": 0.6, "sts_pearson": 0.8,
                                "overall": 0.5, "train_examples": {"sst": 4}}}


def run_stage(tmp: Path, members: dict[str, dict[int, tuple[dict, dict]]],
              ensemble: dict[str, list[str]], seeds: list[int]) -> subprocess.CompletedProcess:
    """stages/ensemble.py in ``tmp`` on the prepared DEV tables and ``members``:
    {member: {seed: (prediction tables by name, metrics)}}."""
    raw = yaml.safe_load(PARAMS_YAML.read_text())
    # The project's params, with the members this test provides (sst_single has the schedule
    # override the project gives it: the default custom schedule names qqp).
    raw["models"] = {"multitask": {"tasks": ["sst", "qqp", "sts"]},
                     "sst_single": {"tasks": ["sst"], "train": {"schedule": "round_robin"}}}
    raw["ensemble"] = ensemble
    raw["seeds"] = seeds
    (tmp / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (tmp / "prep").mkdir()
    for task, frame in DEV.items():
        # stored in another order than any member lists its rows
        frame.iloc[::-1].to_parquet(tmp / "prep" / f"{task}_dev.parquet", index=False)
    for member, runs in members.items():
        for seed, (tables, metrics) in runs.items():
            out = tmp / "mods" / member / f"seed_{seed}"
            (out / "predictions").mkdir(parents=True)
            for name, frame in tables.items():
                frame.to_parquet(out / "predictions" / f"{name}.parquet", index=False)
            (out / "metrics.json").write_text(json.dumps(metrics))
    return subprocess.run(
        [sys.executable, str(ROOT / "stages" / "ensemble.py"), "--params", "params.yaml",
         "--prepared", "prep", "--models", "mods", "--metrics", "metrics.json",
         "--predictions", "predictions", "--submission", "submission", "--plots", "plots",
         "--cards", "cards"],
        cwd=tmp, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def stage_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    tmp = tmp_path_factory.mktemp("ensemble-stage")
    members = {name: {11: (tables, MEMBER_METRICS[name])} for name, tables in MEMBERS.items()}
    result = run_stage(tmp, members, {"sst": ["sst_single", "multitask"], "qqp": ["multitask"],
                                      "sts": ["multitask"]}, seeds=[11])
    return tmp, result


def test_stage_metrics(stage_run):
    tmp, result = stage_run
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp / "metrics.json").read_text())
    # SST means (first member's order s4, s1, s2, s3):
    #   s4 [0, .05, .1, .75, .1] → 3 ✓ (3); s1 [0, 0, .05, .35, .6] → 4 ✓ (4);
    #   s2 [.4, .6, 0, 0, 0] → 1 ✗ (0); s3 [.05, .05, .6, .3, 0] → 2 ✓ (2)   → 3/4
    assert metrics["sst_acc"] == 0.75
    # QQP p1 ≥ 0.5: q2 0 ✓, q1 1 ✓, q5 0 ✗, q3 0 ✓, q4 1 ✓ → 4/5
    assert metrics["qqp_acc"] == 0.8
    # STS t1..t4 pred [1, 2, 3, 4], labels [1, 3, 2, 4] → r = 0.8
    assert metrics["sts_pearson"] == pytest.approx(0.8)
    assert metrics["overall"] == pytest.approx((0.75 + 0.8 + 0.9) / 3)
    assert metrics["members"] == {"sst": ["sst_single", "multitask"], "qqp": ["multitask"],
                                  "sts": ["multitask"]}
    # one seed: each member's scores as written, with no sd
    assert metrics["seeds"]["sst_single"] == {
        "per_seed": {"11": {"sst_acc": 0.5, "overall": 0.5, "best_epoch": 2}},
        "aggregate": {"sst_acc": {"mean": 0.5, "sd": None, "n": 1},
                      "overall": {"mean": 0.5, "sd": None, "n": 1},
                      "best_epoch": {"mean": 2.0, "sd": None, "n": 1}}}
    assert metrics["seeds"]["multitask"]["aggregate"]["sts_pearson"] == {
        "mean": 0.8, "sd": None, "n": 1}


def test_stage_averages_every_seed(tmp_path):
    ids = ["t1", "t2", "t3", "t4"]
    runs = {11: ({"sts_dev": sts_member(ids, [1.0, 2.0, 3.0, 4.0]),
                  "sts_test": sts_member(["v1"], [2.0])}, {"sts_pearson": 0.8}),
            12: ({"sts_dev": sts_member(ids[::-1], [4.0, 1.0, 2.0, 3.0]),
                  "sts_test": sts_member(["v1"], [3.0])}, {"sts_pearson": 0.4})}
    result = run_stage(tmp_path, {"multitask": runs}, {"sts": ["multitask"]}, seeds=[11, 12])
    assert result.returncode == 0, result.stderr
    # t1..t4: seed 11 [1, 2, 3, 4], seed 12 [3, 2, 1, 4] → mean [2, 2, 2, 4]; labels [1, 3, 2, 4]
    # deviations pred [−.5, −.5, −.5, 1.5], label [−1.5, .5, −.5, 1.5]: Σ products 3, Σ² 3 and 5
    # → r = 3 / √15
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["sts_pearson"] == pytest.approx(3 / 15 ** 0.5)
    dev = pd.read_parquet(tmp_path / "predictions" / "sts_dev.parquet")
    assert dev["pred"].tolist() == [2.0, 2.0, 2.0, 4.0]
    assert pd.read_parquet(tmp_path / "predictions" / "sts_test.parquet")["pred"].tolist() == [2.5]
    # seeds' own r 0.8 and 0.4: mean 0.6, sd √((0.2² + 0.2²) / 1) = √0.08
    assert metrics["seeds"]["multitask"]["per_seed"] == {"11": {"sts_pearson": 0.8},
                                                         "12": {"sts_pearson": 0.4}}
    assert metrics["seeds"]["multitask"]["aggregate"]["sts_pearson"] == pytest.approx(
        {"mean": 0.6, "sd": 0.08 ** 0.5, "n": 2})


def test_stage_warns_of_a_declared_test_split_with_no_rows(tmp_path):
    # quora-test-student.csv absent when prepare ran (as in ../shared/data): the qqp test table
    # is empty, its submission file a header alone, and a leaderboard scores every id wrong.
    tables = {**MEMBERS["multitask"], "qqp_test": qqp_member([], [])}
    result = run_stage(tmp_path, {"multitask": {11: (tables, MEMBER_METRICS["multitask"])}},
                       {"qqp": ["multitask"], "sts": ["multitask"]}, seeds=[11])
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "submission" / "para-test-output.csv").read_text() == (
        "id \t Predicted_Is_Paraphrase \n")
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warnings == [
        "ensemble: warning: qqp: no test rows: its declared test file quora-test-student.csv "
        "was absent when prepare ran (prep/report.json), so submission/para-test-output.csv "
        "holds no prediction; a leaderboard scores every missing id as wrong"]


def declared_plot_axes() -> dict[str, tuple[str, str]]:
    """(x, y) column names of each ensemble plot, as dvc.yaml declares them."""
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["ensemble"]["plots"]
    return {Path(path).name: (spec["x"], spec["y"]) for item in plots
            for path, spec in item.items()}


def test_stage_plots(stage_run):
    tmp, _ = stage_run
    axes = declared_plot_axes()
    x, y = axes["sst_confusion.csv"]  # predicted, actual
    confusion = pd.read_csv(tmp / "plots" / "sst_confusion.csv")
    assert sorted(confusion.columns) == sorted([x, y])
    assert confusion[x].tolist() == [3, 4, 1, 2]
    assert confusion[y].tolist() == [3, 4, 0, 2]
    # every classifier gets one, QQP too (same columns as SST's): q2, q1, q5, q3, q4
    confusion = pd.read_csv(tmp / "plots" / "qqp_confusion.csv")
    assert sorted(confusion.columns) == sorted([x, y])
    assert confusion[x].tolist() == [0, 1, 0, 0, 1]
    assert confusion[y].tolist() == [0, 1, 1, 0, 1]
    x, y = axes["sts_scatter.csv"]  # true, predicted similarity
    scatter = pd.read_csv(tmp / "plots" / "sts_scatter.csv")
    assert sorted(scatter.columns) == sorted([x, y])
    assert scatter[x].tolist() == [1.0, 3.0, 2.0, 4.0]
    assert scatter[y].tolist() == [1.0, 2.0, 3.0, 4.0]


def test_stage_predictions(stage_run):
    tmp, _ = stage_run
    names = sorted(p.name for p in (tmp / "predictions").iterdir())
    assert names == sorted(f"{t}_{s}.parquet" for t in ("sst", "qqp", "sts")
                           for s in ("dev", "test"))
    sst_test = pd.read_parquet(tmp / "predictions" / "sst_test.parquet")
    # u2: [.1, .5, .1, .1, .2] → 1; u1: [0, 0, 0, .5, .5] → tie, first class 3
    assert sst_test["id"].tolist() == ["u2", "u1"]
    np.testing.assert_allclose(sst_test[P].to_numpy(), [[0.1, 0.5, 0.1, 0.1, 0.2],
                                                        [0, 0, 0, 0.5, 0.5]], atol=1e-6)
    assert sst_test["pred"].tolist() == [1, 3]
    sts_dev = pd.read_parquet(tmp / "predictions" / "sts_dev.parquet")
    pd.testing.assert_frame_equal(sts_dev, MEMBERS["multitask"]["sts_dev"])


def test_stage_submission(stage_run):
    tmp, _ = stage_run
    sub = tmp / "submission"
    assert sorted(p.name for p in sub.iterdir()) == sorted(
        f"{name}-{split}-output.csv" for name in ("sst", "para", "sts")
        for split in ("dev", "test"))
    assert (sub / "sst-dev-output.csv").read_text() == (
        "id \t Predicted_Sentiment \ns4 , 3 \ns1 , 4 \ns2 , 1 \ns3 , 2 \n")
    assert (sub / "sst-test-output.csv").read_text() == (
        "id \t Predicted_Sentiment \nu2 , 1 \nu1 , 3 \n")
    assert (sub / "para-test-output.csv").read_text() == (
        "id \t Predicted_Is_Paraphrase \nr1 , 1 \nr2 , 0 \n")
    assert (sub / "sts-test-output.csv").read_text() == "id \t Predicted_Similiarity \nv1 , 2.5 \n"
    assert (sub / "sts-dev-output.csv").read_text() == (
        "id \t Predicted_Similiarity \nt1 , 1.0 \nt2 , 2.0 \nt3 , 3.0 \nt4 , 4.0 \n")


def test_stage_leaves_no_temp_files(stage_run):
    tmp, _ = stage_run
    assert sorted(p.name for p in tmp.iterdir()) == sorted(
        ["params.yaml", "prep", "mods", "metrics.json", "plots", "predictions", "submission",
         "cards"])
    hidden = [p for p in tmp.rglob("*") if p.name.startswith(".")]
    assert hidden == []
    assert sorted(p.name for p in (tmp / "plots").iterdir()) == [
        "qqp_confusion.csv", "sst_confusion.csv", "sts_scatter.csv"]


def outputs_of(tmp: Path) -> dict[str, str]:
    """Every output file of the stage in ``tmp`` and its content."""
    return {str(p.relative_to(tmp)): p.read_bytes().hex() for name in
            ("metrics.json", "predictions", "submission", "plots", "cards")
            for p in ([tmp / name] if name.endswith(".json") else sorted((tmp / name).rglob("*")))}


ARGV = ["--params", "params.yaml", "--prepared", "prep", "--models", "mods",
        "--metrics", "metrics.json", "--predictions", "predictions", "--submission", "submission",
        "--plots", "plots", "--cards", "cards"]


def test_a_stage_failing_midway_leaves_every_old_output(tmp_path, monkeypatch):
    members = {name: {11: (tables, MEMBER_METRICS[name])} for name, tables in MEMBERS.items()}
    ensemble = {"sst": ["sst_single", "multitask"], "qqp": ["multitask"], "sts": ["multitask"]}
    assert run_stage(tmp_path, members, ensemble, seeds=[11]).returncode == 0
    before = outputs_of(tmp_path)
    # new predictions, then a failure after metrics, predictions, submission and plots are
    # written, at the cards
    flipped = sts_member(["t1", "t2", "t3", "t4"], [4.0, 3.0, 2.0, 1.0])
    flipped.to_parquet(tmp_path / "mods" / "multitask" / "seed_11" / "predictions" /
                       "sts_dev.parquet", index=False)
    stage = load_stage("ensemble")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("kill")

    monkeypatch.setattr(stage, "model_card", killed)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        stage.main(ARGV)
    assert outputs_of(tmp_path) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # the next run commits the new set whole
    result = subprocess.run([sys.executable, str(ROOT / "stages" / "ensemble.py"), *ARGV],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "metrics.json").read_text())["sts_pearson"] == (
        pytest.approx(-0.8))
    assert pd.read_parquet(tmp_path / "predictions" / "sts_dev.parquet")["pred"].tolist() == [
        4.0, 3.0, 2.0, 1.0]


def test_outputs_that_nest_are_an_error(tmp_path):
    stage = load_stage("ensemble")
    args = stage.build_parser().parse_args([*ARGV[:-2], "--cards", "plots/cards"])
    with pytest.raises(UserError, match="--cards plots/cards is inside --plots plots"):
        stage.output_names(args)
    args = stage.build_parser().parse_args(
        [*ARGV[:-2], "--cards", "out/cards", "--plots", "elsewhere/plots"])
    directory, names = stage.output_names(args)
    assert directory == Path.cwd()
    assert names["cards"] == "out/cards" and names["plots"] == "elsewhere/plots"


def test_outputs_on_two_file_systems_are_an_error(tmp_path, monkeypatch):
    # The set is committed by renames, which cannot cross file systems: one line, up front.
    stage = load_stage("ensemble")
    args = stage.build_parser().parse_args([*ARGV[:-2], "--cards", str(tmp_path / "cards")])
    real = stage._device
    monkeypatch.setattr(stage, "_device", lambda path: -1 if path == str(tmp_path) else real(path))
    with pytest.raises(UserError, match="the outputs are on different file systems.*--cards"):
        stage.output_names(args)
