"""Exports of a saved member, each loaded by its own library's loader on real sentences and
compared with bestfit's outputs (fp32, ≤ 1e-5); the unexportable heads say why; the cards claim
only what loads, and every snippet a card shows runs; old member dirs keep loading and gain the
exports with ``bestfit-export``."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import PARAMS_YAML

from pipeline.batching import pad, tokenize_task
from pipeline.config import parse_params
from pipeline.export import EXACT_ATOL, EXPORTS_FILE, export_member, main, read_exports
from pipeline.model import MultitaskModel, load_tokenizer, save_member
from pipeline.model_card import write_cards
from pipeline.predict import main as predict_main
from pipeline.predict import predict_sentences

ROOT = Path(__file__).resolve().parents[1]
ROWS = 12  # real dev examples per task
SOFTMAX_PIPELINE_ATOL = EXACT_ATOL  # probabilities ≤ 1 from logits equal to EXACT_ATOL
METRICS = {"sst_acc": 0.5, "qqp_acc": 0.8, "sts_pearson": 0.85, "overall": 0.74}


@pytest.fixture(scope="module")
def real(cs224n_dir) -> dict[str, pd.DataFrame]:
    """The first dev rows of each real CS224N file, as the prepared tables name them."""
    frames = {}
    for task, name in (("sst", "ids-sst-dev.csv"), ("qqp", "quora-dev.csv"),
                       ("sts", "sts-dev.csv")):
        frame = pd.read_csv(cs224n_dir / name, sep="\t", nrows=ROWS).dropna()
        frames[task] = frame.assign(id=frame["id"].astype(str))
    return frames


def texts(frame: pd.DataFrame) -> list:
    if "sentence" in frame:
        return frame["sentence"].tolist()
    return list(zip(frame["sentence1"], frame["sentence2"], strict=True))


def member(backbone: str = "minilm", **model):
    raw = yaml.safe_load(PARAMS_YAML.read_text())
    head = model.pop("head", {})
    raw["model"].update(backbone=backbone, **model)
    raw["model"]["head"].update(head)
    return parse_params(raw).models["multitask"]


def save(directory: Path, backbone: str = "minilm", **model) -> MultitaskModel:
    """A multitask member (on the real MiniLM unless told) with seeded random heads, saved and
    exported."""
    config = member(backbone, **model)
    torch.manual_seed(0)
    net = MultitaskModel(config.model, config.tasks).eval()
    save_member(net, config, load_tokenizer(backbone), directory)
    export_member(directory)
    return MultitaskModel.from_pretrained(directory)


def raw_outputs(model: MultitaskModel, task: str, frame: pd.DataFrame) -> torch.Tensor:
    """bestfit's unclipped head outputs, through its own tokenization and padding."""
    data = tokenize_task(task, frame, model.tokenizer, model.cfg.max_length,
                         model.cfg.pair_encoding)
    inputs = [pad(seqs, types, model.tokenizer.pad_token_id)
              for seqs, types in zip(data.sequences, data.token_types, strict=True)]
    with torch.inference_mode():
        return model(task, inputs)


def pooled(model: MultitaskModel, sentences: list[str]) -> torch.Tensor:
    enc = model.tokenizer(sentences, truncation=True, max_length=model.cfg.max_length,
                          return_token_type_ids=True)
    with torch.inference_mode():
        return model.embed(pad(enc["input_ids"], enc["token_type_ids"],
                               model.tokenizer.pad_token_id))


# --- sentence-transformers ---------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["cls", "mean", "max"])
def test_sentence_transformer_is_the_members_embedding(tmp_path, real, pooling):
    from sentence_transformers import SentenceTransformer

    # max_length 16 truncates real sentences: the export truncates where bestfit does
    model = save(tmp_path / "model", pooling=pooling, pair_encoding="separate",
                 cosine_heads=["sts"], max_length=16)
    loaded = SentenceTransformer(str(tmp_path / "model"), device="cpu")
    sentences = real["sst"]["sentence"].tolist()
    assert max(len(model.tokenizer(s)["input_ids"]) for s in sentences) > 16
    embeddings = loaded.encode(sentences, convert_to_tensor=True)
    torch.testing.assert_close(embeddings, pooled(model, sentences), rtol=0, atol=EXACT_ATOL)
    # STS's cosine head is a·cos(u, v) + b of those embeddings, a and b in exports.json
    affine = read_exports(tmp_path / "model")["sentence_transformers"]["cosine_heads"]["sts"]
    u = loaded.encode(real["sts"]["sentence1"].tolist(), convert_to_tensor=True)
    v = loaded.encode(real["sts"]["sentence2"].tolist(), convert_to_tensor=True)
    cosine = loaded.similarity_pairwise(u, v)
    torch.testing.assert_close(affine["scale"] * cosine + affine["shift"],
                               raw_outputs(model, "sts", real["sts"]), rtol=0,
                               atol=EXACT_ATOL * 5)  # a·cos with a = 5: cos to 1e-5 → 5e-5


def test_attention_pooling_is_not_a_sentence_transformer(tmp_path, tiny_bert):
    save(tmp_path / "model", str(tiny_bert), pooling="attention")
    record = json.loads((tmp_path / "model" / EXPORTS_FILE).read_text())
    assert "attention pooling" in record["sentence_transformers"]["reason"]
    assert not (tmp_path / "model" / "modules.json").exists()
    assert all("reason" in entry for entry in record["transformers"].values())


# --- transformers sequence classifiers ---------------------------------------------------------


@pytest.fixture(scope="module", params=[("tanh", "BertForSequenceClassification"),
                                        ("gelu", "ElectraForSequenceClassification")])
def classifier_member(request, tmp_path_factory):
    activation, architecture = request.param
    directory = tmp_path_factory.mktemp(f"classifiers-{activation}") / "model"
    model = save(directory, pooling="cls", pair_encoding="concat",
                 head={"activation": activation}, max_length=24)
    return directory, model, architecture


@pytest.mark.parametrize("task", ["sst", "qqp", "sts"])
def test_auto_model_for_sequence_classification_is_the_head(classifier_member, real, task):
    from transformers import AutoModelForSequenceClassification

    directory, model, architecture = classifier_member
    path = directory / "transformers" / task
    loaded = AutoModelForSequenceClassification.from_pretrained(path).eval()
    assert type(loaded).__name__ == architecture
    frame = real[task]
    columns = ([frame["sentence"].tolist()] if task == "sst"
               else [frame["sentence1"].tolist(), frame["sentence2"].tolist()])
    enc = model.tokenizer(*columns, truncation=True, max_length=24, padding=True,
                          return_tensors="pt")
    with torch.inference_mode():
        logits = loaded(**enc).logits
    ours = raw_outputs(model, task, frame)
    config = loaded.config
    if task == "sst":
        assert config.id2label[4] == "positive" and config.num_labels == 5
        torch.testing.assert_close(logits, ours, rtol=0, atol=EXACT_ATOL)
    elif task == "qqp":  # logits (0, z): softmax is bestfit's (1 − p, p)
        assert config.id2label == {0: "not duplicate", 1: "duplicate"}
        assert torch.equal(logits[:, 0], torch.zeros(len(frame)))
        torch.testing.assert_close(logits[:, 1], ours, rtol=0, atol=EXACT_ATOL)
    else:
        assert config.problem_type == "regression" and config.num_labels == 1
        torch.testing.assert_close(logits[:, 0], ours, rtol=0, atol=EXACT_ATOL)


@pytest.mark.parametrize("task", ["sst", "qqp", "sts"])
def test_pipeline_and_cross_encoder_give_bestfits_predictions(classifier_member, real, task):
    from sentence_transformers import CrossEncoder
    from transformers import pipeline

    directory, model, _ = classifier_member
    path = str(directory / "transformers" / task)
    frame = real[task]
    classify = pipeline("text-classification", model=path, device="cpu")
    inputs = ([{"text": a, "text_pair": b} for a, b in texts(frame)] if task != "sst"
              else texts(frame))
    scored = classify(inputs, top_k=None, truncation=True)
    got = pd.DataFrame([{row["label"]: row["score"] for row in rows} for rows in scored])
    if task == "sts":
        ours = raw_outputs(model, task, frame).numpy()
        np.testing.assert_allclose(got["sts"], ours, rtol=0, atol=EXACT_ATOL)
    else:
        table = predict_sentences(model, task, frame)
        names = model.specs[task].class_names()
        want = ({name: table[f"p_{name.replace(' ', '_')}"] for name in names} if task == "sst"
                else {"duplicate": table["p_duplicate"], "not duplicate":
                      1 - table["p_duplicate"]})
        for name, column in want.items():
            np.testing.assert_allclose(got[name], column, rtol=0, atol=SOFTMAX_PIPELINE_ATOL)
    if task != "sst":  # a cross-encoder scores pairs
        cross = CrossEncoder(path, device="cpu")
        scores = torch.as_tensor(cross.predict(texts(frame)))
        ours = raw_outputs(model, task, frame)
        if task == "qqp":
            scores = scores[:, 1] - scores[:, 0]
        torch.testing.assert_close(scores.float(), ours, rtol=0, atol=EXACT_ATOL)


@pytest.mark.parametrize(("model", "reasons"), [
    ({"pooling": "mean"}, {"sst": "mean pooling", "qqp": "mean pooling"}),
    ({"pooling": "cls", "head": {"activation": "relu"}},
     {"sst": "applies relu", "sts": "train with model.head.activation gelu or tanh"}),
    ({"pooling": "cls", "head": {"activation": "tanh", "layers": 1}},
     {"sst": "a 1-layer head"}),
    ({"pooling": "cls", "head": {"activation": "tanh"}, "pair_encoding": "separate",
      "cosine_heads": ["sts"]},
     {"qqp": "its head reads [u, v, diff, prod]", "sts": "scored a·cos(u, v) + b"}),
])
def test_a_head_no_classifier_computes_is_not_exported_and_says_why(tmp_path, tiny_bert,
                                                                     model, reasons):
    save(tmp_path / "model", str(tiny_bert), **model)
    record = read_exports(tmp_path / "model")
    for task, reason in reasons.items():
        assert reason in record["transformers"][task]["reason"]
        assert not (tmp_path / "model" / "transformers" / task).exists()


# --- the cards claim only what loads, and every snippet runs -----------------------------------


def card_parts(card: str) -> tuple[dict, list[str], list[str]]:
    meta, body = card[4:].split("\n---\n", 1)
    blocks = re.findall(r"```(python|bash)\n(.*?)```", body, flags=re.S)
    return (yaml.safe_load(meta), [code for lang, code in blocks if lang == "python"],
            [code for lang, code in blocks if lang == "bash"])


def run_snippets(card: Path, checkout: Path, monkeypatch) -> tuple[dict, int]:
    """Run every snippet of ``card`` from ``checkout`` (where its relative paths lead), in this
    process (the imports are paid once): Python as it is, and each ``bestfit-predict`` line as
    its console script runs it (``pipeline.predict:cli``); the front matter and the number of
    snippets run."""
    meta, python, bash = card_parts(card.read_text())
    monkeypatch.chdir(checkout)
    for code in python:
        exec(compile(code, f"{card} snippet", "exec"), {"__name__": "__snippet__"})
    for code in bash:
        for line in code.strip().splitlines():
            command, *argv = shlex.split(line)
            assert command == "bestfit-predict", line
            (script,) = entry_points(group="console_scripts", name=command)
            assert script.value == "pipeline.predict:cli"
            predict_main(argv)
    return meta, len(python) + len(bash)


@pytest.mark.parametrize("model", [
    {"pooling": "cls", "pair_encoding": "concat", "head": {"activation": "tanh"}},
    {"pooling": "mean", "pair_encoding": "separate", "cosine_heads": ["sts"]},
    {"pooling": "attention"},
])
def test_every_snippet_of_every_card_runs(tmp_path, tiny_bert, monkeypatch, model):
    checkout = tmp_path / "checkout"
    directory = checkout / "models" / "multitask" / "seed_11" / "model"
    backbone = str(tiny_bert) if model["pooling"] == "attention" else "minilm"
    loaded = save(directory, backbone, **model)
    record = read_exports(directory)
    write_cards(directory, loaded.member, METRICS, record)
    (checkout / "examples.csv").write_text("sentence\na great film\na dull plot\n")
    meta, count = run_snippets(directory / "README.md", checkout, monkeypatch)
    assert (checkout / "predictions.jsonl").read_text().count("\n") == 2
    body = (directory / "README.md").read_text()
    exported = "path" in record["sentence_transformers"]
    assert meta["library_name"] == ("sentence-transformers" if exported else "transformers")
    assert meta["pipeline_tag"] == ("sentence-similarity" if exported else "feature-extraction")
    assert ("SentenceTransformer(" in body) == exported and ("widget" in meta) == exported
    classifiers = [t for t, e in record["transformers"].items() if "path" in e]
    for task in classifiers:
        task_meta, task_count = run_snippets(directory / "transformers" / task / "README.md",
                                             checkout, monkeypatch)
        assert task_meta["library_name"] == "transformers"
        assert task_meta["pipeline_tag"] == "text-classification"
        assert task_count == 1 and "model-index" in task_meta
    for task, entry in record["transformers"].items():
        assert (f"transformers/{task}" in body) == ("path" in entry)
        if "reason" in entry:
            assert entry["reason"] in body
    assert count == 2 + exported + len(classifiers)


# --- old dirs ----------------------------------------------------------------------------------


def test_an_old_member_loads_predicts_and_gains_its_exports(tmp_path, real):
    config = member(pooling="mean", pair_encoding="separate", cosine_heads=["sts"])
    torch.manual_seed(0)
    net = MultitaskModel(config.model, config.tasks).eval()
    run = tmp_path / "models" / "multitask" / "seed_11"
    save_member(net, config, load_tokenizer("minilm"), run / "model")  # as before exports
    (run / "metrics.json").write_text(json.dumps(METRICS))
    old = MultitaskModel.from_pretrained(run / "model")
    before = {task: predict_sentences(old, task, real[task]) for task in old.tasks}
    assert read_exports(run / "model") is None

    main([str(run / "model")])
    new = MultitaskModel.from_pretrained(run / "model")
    for task, table in before.items():
        pd.testing.assert_frame_equal(predict_sentences(new, task, real[task]), table)
    assert read_exports(run / "model")["sentence_transformers"]["path"] == "."
    meta, _, _ = card_parts((run / "model" / "README.md").read_text())
    assert meta["library_name"] == "sentence-transformers"
    shutil.rmtree(run / "model" / "1_Pooling")  # bestfit never needs the exports
    assert MultitaskModel.from_pretrained(run / "model").tasks == ["sst", "qqp", "sts"]
