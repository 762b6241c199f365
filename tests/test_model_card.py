"""Model cards and model artifacts: the card's front matter is YAML holding the dev scores it was
given (or their mean over seeds); the train stage writes one card per seed into the model dir,
the ensemble stage one per member with mean ± sd; dvc.yaml declares the model dirs as
artifacts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import PARAMS_YAML, load_stage
from test_dvc_deps import STAGES, entry_paths, substitute
from test_train import synthetic_frames

from pipeline.config import parse_params
from pipeline.data import SPLITS, prepared_path
from pipeline.export import read_exports
from pipeline.io import write_parquet
from pipeline.model import MultitaskModel
from pipeline.model_card import model_card
from pipeline.predict import predict_sentences
from pipeline.seeds import aggregate

ROOT = Path(__file__).resolve().parents[1]
METRICS = {"sst_acc": 0.51234, "qqp_acc": 0.8871, "sts_pearson": 0.86549, "overall": 0.7876,
           "best_epoch": 7, "train_seconds": 1234.5,
           "train_examples": {"sst": 8544, "qqp": 13507, "sts": 6040}}


def params(backbone: str, **train) -> dict:
    raw = yaml.safe_load(PARAMS_YAML.read_text())
    raw["model"]["backbone"] = backbone
    raw["train"].update(train)
    return raw


def split_card(card: str) -> tuple[dict, str]:
    assert card.startswith("---\n")
    meta, body = card[4:].split("\n---\n", 1)
    return yaml.safe_load(meta), body.lstrip("\n")


def index_values(meta: dict) -> dict[str, float]:
    """model-index metric values by task name."""
    (entry,) = meta["model-index"]
    return {r["task"]["name"].split("(")[-1].rstrip(")"): r["metrics"][0]["value"]
            for r in entry["results"]}


def test_front_matter_is_yaml_holding_the_dev_metrics():
    member = parse_params(params("bert-base-uncased")).models["multitask"]
    meta, body = split_card(model_card(member, METRICS))
    assert meta["language"] == ["en"] and meta["base_model"] == "bert-base-uncased"
    assert meta["library_name"] == "transformers" and meta["license"] == "other"
    assert set(meta["metrics"]) == {"accuracy", "pearsonr"}
    assert index_values(meta) == {"SST": 0.5123, "Quora Question Pairs": 0.8871,
                                  "STS-B": 0.8655}
    (entry,) = meta["model-index"]
    assert entry["name"] == "bestfit-multitask"
    assert [r["metrics"][0]["type"] for r in entry["results"]] == ["accuracy", "accuracy",
                                                                    "pearsonr"]
    assert all(r["dataset"]["split"] == "dev" for r in entry["results"])
    assert "| sst_acc | 0.5123 |" in body and "| overall | 0.7876 |" in body
    assert "| sst | 8,544 |" in body and "| qqp | 13,507 |" in body
    assert "epoch 7 of 12" in body
    for section in ("## Tasks and heads", "## Training", "## Data", "## How to use",
                    "## Limits and biases"):
        assert section in body
    assert "MultitaskModel.from_pretrained(\"models/multitask/seed_11/model\")" in body
    assert "bestfit-predict models/multitask/seed_11/model --task sst" in body
    assert "λ = 10" in body  # SMART of the default recipe


def test_a_local_backbone_leaves_no_path_in_the_card(tiny_bert):
    member = parse_params(params(str(tiny_bert))).models["sst_single"]
    card = model_card(member, {"sst_acc": 0.4, "overall": 0.4})
    meta, body = split_card(card)
    assert "base_model" not in meta and str(tiny_bert.parent) not in card
    assert f"a local model directory (`{tiny_bert.name}`)" in body
    assert index_values(meta) == {"SST": 0.4} and meta["datasets"] == ["stanfordnlp/sst"]
    assert "This member used no augmented data." in body


def test_minilm_names_its_hub_id():
    member = parse_params(params("minilm")).models["multitask"]
    meta, _ = split_card(model_card(member, METRICS))
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"


def test_a_card_over_seeds_reports_mean_and_sd():
    member = parse_params(params("bert-base-uncased")).models["sst_single"]
    per_seed = {"11": {"sst_acc": 0.50, "overall": 0.50}, "12": {"sst_acc": 0.52, "overall": 0.52},
                "13": {"sst_acc": 0.54, "overall": 0.54}}
    seeds = {"per_seed": per_seed, "aggregate": aggregate(per_seed.values())}
    meta, body = split_card(model_card(member, {"sst_acc": 0.50, "overall": 0.50}, seeds))
    assert index_values(meta) == {"SST": 0.52}
    assert meta["model-index"][0]["results"][0]["metrics"][0]["name"] == \
        "dev accuracy, mean of 3 seeds"
    # mean 0.52, sd √((0.02² + 0 + 0.02²) / 2) = 0.02
    assert "| sst_acc | 0.5000 | 0.5200 | 0.5400 | 0.5200 ± 0.0200 (3) |" in body
    assert body.startswith("# bestfit `sst_single`, 3 seeds")


# --- the stages write them ---------------------------------------------------------------------


def stage_main(name: str):
    return load_stage(name).main


def test_train_and_ensemble_stages_write_the_cards(tiny_bert, tmp_path):
    raw = params(str(tiny_bert), epochs=2, batches_per_epoch=4, batch_size=4,
                 precision="fp32", schedule="round_robin", num_threads=1)
    raw["smart"]["lambda"] = 0.0
    raw["models"] = {"multitask": {"tasks": ["sst", "qqp", "sts"]}}
    raw["ensemble"] = {"sst": ["multitask"], "qqp": ["multitask"], "sts": ["multitask"]}
    raw["seeds"] = [11, 12]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    for task, splits in synthetic_frames(16, 8).items():
        for split in SPLITS:
            write_parquet(splits[split], prepared_path(tmp_path / "prepared", task, split))
    (tmp_path / "augmented").mkdir()
    models = tmp_path / "models"
    for seed in raw["seeds"]:
        out = models / "multitask" / f"seed_{seed}"
        stage_main("train")(["multitask", "--seed", str(seed), "--prepared",
                             str(tmp_path / "prepared"), "--augmented",
                             str(tmp_path / "augmented"), "--out", str(out), "--checkpoints",
                             str(tmp_path / "ck" / str(seed)), "--params",
                             str(tmp_path / "params.yaml"), "--no-live"])
    runs = [json.loads((models / "multitask" / f"seed_{s}" / "metrics.json").read_text())
            for s in raw["seeds"]]

    meta, body = split_card((models / "multitask" / "seed_11" / "model" / "README.md")
                            .read_text())
    assert index_values(meta) == {"SST": round(runs[0]["sst_acc"], 4),
                                  "Quora Question Pairs": round(runs[0]["qqp_acc"], 4),
                                  "STS-B": round(runs[0]["sts_pearson"], 4)}
    assert body.startswith("# bestfit `multitask`, seed 11")
    assert "| sst | 16 |" in body
    # cls pooling exports to sentence-transformers; the relu heads have no exact classifier
    exports = read_exports(models / "multitask" / "seed_11" / "model")
    assert exports["sentence_transformers"] == {"path": "."}
    assert all("relu" in entry["reason"] for entry in exports["transformers"].values())
    assert meta["library_name"] == "sentence-transformers"

    # The saved model predicts what the stage predicted on dev.
    model = MultitaskModel.from_pretrained(models / "multitask" / "seed_11" / "model")
    dev = pd.read_parquet(prepared_path(tmp_path / "prepared", "sst", "dev"))
    table = predict_sentences(model, "sst", dev, batch_size=5)
    stage = pd.read_parquet(models / "multitask" / "seed_11" / "predictions" / "sst_dev.parquet")
    assert list(table["id"]) == list(stage["id"])
    for k, name in enumerate(["negative", "somewhat_negative", "neutral", "somewhat_positive",
                              "positive"]):
        pd.testing.assert_series_equal(table[f"p_{name}"], stage[f"p{k}"], check_names=False,
                                       rtol=1e-5, atol=1e-6)

    stage_main("ensemble")(["--prepared", str(tmp_path / "prepared"), "--models", str(models),
                            "--metrics", str(tmp_path / "metrics.json"), "--predictions",
                            str(tmp_path / "predictions"), "--submission",
                            str(tmp_path / "submission"), "--plots", str(tmp_path / "plots"),
                            "--cards", str(tmp_path / "cards"), "--params",
                            str(tmp_path / "params.yaml")])
    assert [p.name for p in (tmp_path / "cards").iterdir()] == ["multitask.md"]
    meta, body = split_card((tmp_path / "cards" / "multitask.md").read_text())
    a, b = (run["sts_pearson"] for run in runs)
    assert index_values(meta)["STS-B"] == round((a + b) / 2, 4)
    assert f"{(a + b) / 2:.4f} ± {abs(a - b) / math.sqrt(2):.4f} (2)" in body
    assert body.startswith("# bestfit `multitask`, 2 seeds")
    assert meta["library_name"] == "sentence-transformers" and "SentenceTransformer(" in body


# --- dvc.yaml artifacts ------------------------------------------------------------------------


def test_artifacts_are_the_train_stages_model_outs():
    current = yaml.safe_load(PARAMS_YAML.read_text())
    artifacts = substitute(yaml.safe_load((ROOT / "dvc.yaml").read_text())["artifacts"],
                           current)
    assert set(artifacts) == set(current["models"])  # every member is an artifact
    model_outs = {path: stage for stage, spec in STAGES.items() if stage.startswith("train@")
                  for path in entry_paths(spec["outs"]) if path.endswith("/model")}
    for name, artifact in artifacts.items():
        assert artifact["type"] == "model"
        path = artifact["path"]
        assert model_outs.get(path) == f"train@{name}-{current['seeds'][0]}", (name, path)


@pytest.mark.parametrize("seeds", [[13, 11]])
def test_artifact_paths_follow_the_first_seed(seeds):
    current = yaml.safe_load(PARAMS_YAML.read_text())
    artifacts = substitute(yaml.safe_load((ROOT / "dvc.yaml").read_text())["artifacts"],
                           {**current, "seeds": seeds})
    assert {a["path"] for a in artifacts.values()} == {
        f"models/{member}/seed_13/model" for member in current["models"]}


def test_the_card_names_cosine_heads_and_the_selection_sample():
    raw = params("bert-base-uncased", select_rows={"qqp": 2000})
    raw["model"].update(pair_encoding="separate", cosine_heads=["sts"])
    member = parse_params(raw).models["multitask"]
    _, body = split_card(model_card(member, METRICS))
    rows = {line.split(" | ")[0].lstrip("| "): line for line in body.splitlines()
            if line.startswith("| ")}
    assert "a·cos(u, v) + b" in rows["Semantic textual similarity (STS-B)"]
    assert "a·cos(u, v) + b" not in rows["Paraphrase detection (Quora Question Pairs)"]
    assert ("epoch 7 of 12) on a fixed sample of the dev rows (qqp: 2000); its model was then "
            "scored on the whole dev set") in " ".join(body.split())


@pytest.mark.parametrize("scale, text", [(1.0, "AdamW, lr 2e-05, betas"),
                                         (50.0, "AdamW, lr 2e-05 (heads 0.001), betas")])
def test_the_card_gives_the_heads_learning_rate_when_it_differs(scale, text):
    member = parse_params(params("minilm", head_lr_scale=scale)).models["multitask"]
    _, body = split_card(model_card(member, METRICS))
    assert text in body


def test_a_selection_sample_of_another_members_task_is_not_claimed():
    raw = params("minilm", select_rows={"qqp": 2000})
    member = parse_params(raw).models["sst_single"]
    _, body = split_card(model_card(member, METRICS))
    assert "sample of the dev rows" not in body and "dev `overall`" in " ".join(body.split())


@pytest.mark.parametrize("precision, text", [
    ("bf16", "| precision | bf16 autocast (heads in fp32) |"),
    ("fp16", "| precision | fp16 autocast with a dynamic loss scale (heads in fp32) |"),
    ("fp32", "| precision | fp32 |")])
def test_the_card_states_the_precision_the_member_trained_in(precision, text):
    member = parse_params(params("minilm", precision=precision)).models["multitask"]
    _, body = split_card(model_card(member, METRICS))
    assert text in body.splitlines()
