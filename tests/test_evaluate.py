"""pipeline.evaluate: output tables (softmax/sigmoid worked by hand), metrics (scipy as the
Pearson reference), the overall score, and batched prediction against one-at-a-time forwards."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import pearsonr

from pipeline.batching import tokenize_task
from pipeline.config import ModelConfig, parse_params
from pipeline.evaluate import (
    outputs_to_frame,
    predict,
    score_predictions,
    selection_score,
    task_metric,
)
from pipeline.model import MultitaskModel
from pipeline.tasks import default_tasks, overall_score

CPU = torch.device("cpu")

# -- outputs_to_frame -------------------------------------------------------------------------


def test_sst_frame_softmax_by_hand():
    # exp(raw) ∝ [1, 2, 3, 4, 10] → probabilities /20; row 2 is shifted by +100 (stability)
    raw = np.log(np.array([[1, 2, 3, 4, 10], [4, 1, 1, 1, 1]], dtype=np.float64))
    raw[1] += 100.0
    frame = outputs_to_frame("sst", ["a", "b"], raw.astype(np.float32))
    assert list(frame.columns) == ["id", "pred", "p0", "p1", "p2", "p3", "p4"]
    assert frame["id"].tolist() == ["a", "b"]
    assert frame["pred"].tolist() == [4, 0]
    assert np.issubdtype(frame["pred"].dtype, np.integer)
    probs = frame[[f"p{k}" for k in range(5)]].to_numpy()
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs, [[0.05, 0.10, 0.15, 0.20, 0.50],
                                       [0.50, 0.125, 0.125, 0.125, 0.125]], atol=1e-5)


def test_qqp_frame_sigmoid_by_hand():
    # σ(0) = 1/2, σ(ln 3) = 3/4, σ(−ln 3) = 1/4; p = 1/2 counts as a duplicate (≥ 0.5)
    raw = np.array([0.0, math.log(3), -math.log(3)], dtype=np.float32)
    frame = outputs_to_frame("qqp", ["x", "y", "z"], raw)
    assert list(frame.columns) == ["id", "pred", "p0", "p1"]
    assert frame["pred"].tolist() == [1, 1, 0]
    np.testing.assert_allclose(frame["p1"], [0.5, 0.75, 0.25], atol=1e-6)
    np.testing.assert_allclose(frame["p0"], [0.5, 0.25, 0.75], atol=1e-6)
    assert frame["p1"].dtype == np.float32


def test_sts_frame_clips_values_to_the_declared_range():
    raw = np.array([1.5, -0.25, 4.0, 5.5], dtype=np.float32)
    frame = outputs_to_frame("sts", ["1", "2", "3", "4"], raw)
    assert list(frame.columns) == ["id", "pred"]
    assert frame["pred"].dtype == np.float32
    assert frame["pred"].tolist() == [1.5, 0.0, 4.0, 5.0]  # STS: [0, 5]
    spec = dataclasses.replace(default_tasks()["sts"], range=[-1.0, 1.0])
    assert outputs_to_frame(spec, ["1", "2", "3", "4"], raw)["pred"].tolist() == [
        1.0, -0.25, 1.0, 1.0]


def test_a_regression_is_scored_on_its_clipped_values():
    # raw [−2, −1, 3] → clipped [0, 0, 3]; labels [0, 1, 3] (mean 4/3).
    # Clipped: deviations [−1, −1, 2] and [−4/3, −1/3, 5/3]: Σ products 5, Σ² 6 and 42/9
    # → r = 5 / √(6 · 42/9) = 5 / √28 ≈ 0.9449. Unclipped: deviations [−2, −1, 3], Σ products 8,
    # Σ² 14 → r = 8 / √(14 · 42/9) ≈ 0.9897: here clipping lowers r.
    frame = outputs_to_frame("sts", ["a", "b", "c"], np.array([-2.0, -1.0, 3.0], np.float32))
    metrics = score_predictions({"sts": frame}, {"sts": np.array([0.0, 1.0, 3.0])})
    assert metrics["sts_pearson"] == pytest.approx(5 / math.sqrt(28))
    assert task_metric("sts", np.array([-2.0, -1.0, 3.0]), np.array([0.0, 1.0, 3.0])) == (
        pytest.approx(8 / math.sqrt(14 * 42 / 9)))


# -- task_metric / overall_score --------------------------------------------------------------


def test_accuracy_by_hand():
    assert task_metric("sst", np.array([1, 0, 2, 2, 4]), np.array([1, 1, 2, 3, 4])) == 0.6
    assert task_metric("qqp", np.array([1, 0, 0, 1]), np.array([1, 0, 1, 1])) == 0.75


def test_pearson_by_hand_and_against_scipy():
    # x = 1..4, y = [1, 3, 2, 4]: deviations ±1.5, ±0.5; Σdx·dy = 4, Σdx² = Σdy² = 5 → r = 0.8
    assert task_metric("sts", np.array([1, 2, 3, 4.0]), np.array([1, 3, 2, 4.0])) == \
        pytest.approx(0.8)
    rng = np.random.default_rng(0)
    labels = rng.uniform(0, 5, 200)
    pred = (0.7 * labels + rng.normal(0, 1, 200)).astype(np.float32)
    assert task_metric("sts", pred, labels) == pytest.approx(pearsonr(pred, labels)[0], abs=1e-9)
    assert task_metric("sts", -pred, labels) == pytest.approx(-pearsonr(pred, labels)[0])


def test_pearson_of_constant_is_zero():
    assert task_metric("sts", np.full(5, 2.5, np.float32), np.arange(5.0)) == 0.0
    assert task_metric("sts", np.arange(5.0), np.full(5, 1.0)) == 0.0


def test_overall_score_by_hand():
    metrics = {"sst_acc": 0.5, "qqp_acc": 0.8, "sts_pearson": 0.6}
    specs = default_tasks()
    assert overall_score(specs, metrics) == pytest.approx((0.5 + 0.8 + 1.6 / 2) / 3)
    # a member trained on fewer tasks: the mean of its own terms; other keys are ignored
    assert overall_score(specs, {"sst_acc": 0.5, "loss": 7.0}) == pytest.approx(0.5)
    assert overall_score(specs, {"qqp_acc": 0.8, "sts_pearson": -0.2}) == pytest.approx(
        (0.8 + 0.4) / 2)


def test_score_predictions_names_metrics():
    frames = {"sst": pd.DataFrame({"id": ["a", "b"], "pred": [1, 2]}),
              "sts": pd.DataFrame({"id": ["c", "d", "e"], "pred": [1.0, 2.0, 3.0]})}
    labels = {"sst": np.array([1, 0]), "sts": np.array([3.0, 2.0, 1.0])}
    metrics = score_predictions(frames, labels)
    assert set(metrics) == {"sst_acc", "sts_pearson", "overall"}
    assert metrics["sst_acc"] == 0.5
    assert metrics["sts_pearson"] == pytest.approx(-1.0)
    assert metrics["overall"] == pytest.approx((0.5 + 0.0) / 2)


def test_selection_score_by_hand():
    raw = {"train": {"select_by": "ensemble", "schedule": "round_robin"},
           "models": {"m": {}, "s": {"tasks": ["sst"]}},
           "ensemble": {"sst": ["s"], "qqp": ["m"], "sts": ["m"]}}
    # SST 0.9, QQP 0.5, STS r 0 → term 0.5; overall (0.9 + 0.5 + 0.5) / 3
    metrics = {"sst_acc": 0.9, "qqp_acc": 0.5, "sts_pearson": 0.0, "overall": 1.9 / 3}
    member = parse_params(raw).models["m"]
    assert selection_score(member, metrics) == pytest.approx((0.5 + 0.5) / 2)  # QQP, STS
    raw["models"]["m"] = {"train": {"select_by": "overall"}}
    assert selection_score(parse_params(raw).models["m"], metrics) == metrics["overall"]
    raw["models"]["m"] = {"train": {"select_by": "sts_pearson"}}
    assert selection_score(parse_params(raw).models["m"], metrics) == 0.0


# -- predict ----------------------------------------------------------------------------------

SENTENCES = ["the movie was good", "a very boring film and the story was bad",
             "i love this story !", "bad", "what a great film , the actor was fun",
             "the plot", "not good"]
SECONDS = ["the film was great", "no", "how is the story", "the worst movie",
           "a dog", "i hate the plot and the acting", "very very good"]


@pytest.fixture(scope="module")
def build(tiny_bert):
    """One model per (pair_encoding, pooling), built once with a fixed init."""
    cache: dict[tuple[str, str], MultitaskModel] = {}

    def make(pair_encoding: str, pooling: str) -> MultitaskModel:
        if (pair_encoding, pooling) not in cache:
            torch.manual_seed(0)
            cfg = ModelConfig(backbone=str(tiny_bert), pair_encoding=pair_encoding,
                              pooling=pooling)
            cache[pair_encoding, pooling] = MultitaskModel(cfg, ["sst", "qqp", "sts"])
        return cache[pair_encoding, pooling]

    return make


def frame_for(task: str) -> pd.DataFrame:
    ids = pd.Series([f"{task}{i}" for i in range(len(SENTENCES))], dtype="str")
    if task == "sst":
        return pd.DataFrame({"id": ids, "sentence": pd.Series(SENTENCES, dtype="str")})
    return pd.DataFrame({"id": ids, "sentence1": pd.Series(SENTENCES, dtype="str"),
                         "sentence2": pd.Series(SECONDS, dtype="str")})


def one_at_a_time(model: MultitaskModel, data, i: int) -> torch.Tensor:
    """The model's raw output for example ``i`` alone: no padding, no batch neighbours."""
    inputs = [{"input_ids": torch.tensor([seqs[i]]),
               "attention_mask": torch.ones((1, len(seqs[i])), dtype=torch.long),
               "token_type_ids": torch.tensor([types[i]])}
              for seqs, types in zip(data.sequences, data.token_types, strict=True)]
    with torch.no_grad():
        return model(data.task, inputs)[0]


@pytest.mark.parametrize("pair_encoding,pooling", [("concat", "cls"), ("separate", "mean")])
@pytest.mark.parametrize("task", ["sst", "qqp", "sts"])
@pytest.mark.parametrize("training", [True, False])
def test_predict_matches_single_examples_in_original_order(build, tokenizer, task,
                                                           pair_encoding, pooling, training):
    model = build(pair_encoding, pooling)
    data = tokenize_task(task, frame_for(task), tokenizer, 128, pair_encoding)
    assert len(set(map(len, data.sequences[0]))) > 3  # lengths differ: batches get reordered
    model.train(training)
    frame = predict(model, data, batch_size=3, device=CPU, precision="fp32", pad_id=0)
    assert model.training is training

    model.eval()
    reference = torch.stack([one_at_a_time(model, data, i) for i in range(len(data))]).numpy()
    assert frame["id"].tolist() == data.ids
    if task == "sst":
        probs = torch.softmax(torch.from_numpy(reference), dim=-1).numpy()
        np.testing.assert_allclose(frame[[f"p{k}" for k in range(5)]].to_numpy(), probs,
                                   atol=1e-5)
        np.testing.assert_array_equal(frame["pred"], probs.argmax(axis=1))
    elif task == "qqp":
        p1 = 1 / (1 + np.exp(-reference.astype(np.float64)))
        np.testing.assert_allclose(frame["p1"], p1, atol=1e-5)
        np.testing.assert_array_equal(frame["pred"], (p1 >= 0.5).astype(int))
    else:
        np.testing.assert_allclose(frame["pred"], np.clip(reference, 0, 5), atol=1e-5)


@pytest.mark.parametrize("shift, value", [(-100.0, 0.0), (100.0, 5.0)])
def test_predict_clips_a_regression_head_outside_its_range(tiny_bert, tokenizer, shift, value):
    # What every written prediction comes from (member dev/test tables, hence the ensemble's
    # and the submissions): a head far below or above STS's range predicts its end.
    torch.manual_seed(0)
    model = MultitaskModel(ModelConfig(backbone=str(tiny_bert)), ["sts"])
    last = [m for m in model.heads["sts"].modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.bias += shift
    data = tokenize_task("sts", frame_for("sts"), tokenizer, 128, "concat")
    frame = predict(model, data, batch_size=3, device=CPU, precision="fp32", pad_id=0)
    assert frame["pred"].tolist() == [value] * len(SENTENCES)


@pytest.mark.parametrize("pair_encoding", ["concat", "separate"])
def test_predict_a_test_row_with_an_empty_text(build, tokenizer, pair_encoding):
    # pipeline.data keeps a test row with an empty text: it is predicted from [CLS] [SEP]
    model = build(pair_encoding, "mean" if pair_encoding == "separate" else "cls").eval()
    frame = frame_for("sts")
    frame.loc[1, "sentence2"] = ""
    frame.loc[2, ["sentence1", "sentence2"]] = ""
    data = tokenize_task("sts", frame, tokenizer, 128, pair_encoding)
    predicted = predict(model, data, batch_size=3, device=CPU, precision="fp32", pad_id=0)
    assert predicted["id"].tolist() == frame["id"].tolist()
    reference = [one_at_a_time(model, data, i).item() for i in range(len(data))]
    np.testing.assert_allclose(predicted["pred"], np.clip(reference, 0, 5), atol=1e-5)


def test_predict_empty_task(tiny_bert, tokenizer):
    model = MultitaskModel(ModelConfig(backbone=str(tiny_bert)), ["sst"])
    empty = frame_for("sst").iloc[:0]
    frame = predict(model, tokenize_task("sst", empty, tokenizer, 128, "concat"), 4, CPU,
                    "fp32", 0)
    assert len(frame) == 0
    assert list(frame.columns) == ["id", "pred", "p0", "p1", "p2", "p3", "p4"]


@pytest.mark.parametrize("n, repeats", [(0, False), (1, False), (5, False), (5, True)])
def test_separate_pairs_embed_each_sentence_once_and_count_pairs(tiny_bert, tokenizer, n,
                                                                 repeats, monkeypatch):
    torch.manual_seed(0)
    cfg = ModelConfig(backbone=str(tiny_bert), pair_encoding="separate", pooling="mean",
                      cosine_heads=["sts"])
    model = MultitaskModel(cfg, ["qqp", "sts"]).eval()
    frame = frame_for("sts").iloc[:n].copy()
    if repeats:  # a sentence on both sides, one twice on the left, one on both of a pair
        frame.loc[frame.index[1], "sentence2"] = frame["sentence1"].iloc[0]
        frame.loc[frame.index[3], "sentence1"] = frame["sentence1"].iloc[2]
        frame.loc[frame.index[4], "sentence2"] = frame["sentence1"].iloc[4]
    data = tokenize_task("sts", frame, tokenizer, 128, "separate")
    embedded, counted = [], []
    original = MultitaskModel.embed
    monkeypatch.setattr(MultitaskModel, "embed", lambda self, enc: embedded.append(
        len(enc["input_ids"])) or original(self, enc))
    frame = predict(model, data, batch_size=2, device=CPU, precision="fp32", pad_id=0,
                    progress=counted.append)
    # The distinct sentences (2n, less 3 repeats), reported as n pairs.
    assert sum(embedded) == 2 * n - 3 * repeats and sum(counted) == n
    assert frame["id"].tolist() == data.ids
    monkeypatch.setattr(MultitaskModel, "embed", original)
    reference = [one_at_a_time(model, data, i).item() for i in range(n)]
    np.testing.assert_allclose(frame["pred"], np.clip(reference, 0, 5), atol=1e-5)
