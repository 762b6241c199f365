"""The training loop: resume after interruption, checkpoint matching, LR schedule, epoch plans,
saved-member round trip, the per-task step loss."""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import PARAMS_YAML, load_stage
from metric_bounds import assert_scores_follow_predictions

from pipeline.batching import collate, tokenize_member_data
from pipeline.checkpoint import CheckpointError, load_state
from pipeline.config import MtlConfig, parse_params
from pipeline.evaluate import predict, score_predictions
from pipeline.losses import contrastive_loss, task_loss
from pipeline.model import (
    MultitaskModel,
    cosine_distance,
    load_member_weights,
    load_tokenizer,
    save_member,
)
from pipeline.objective import task_step_loss
from pipeline.optim import warmup_linear_decay
from pipeline.pcgrad import PCGRAD_STEPS_FILE
from pipeline.schedule import EpochPlan, plan_epochs
from pipeline.tasks import overall_score
from pipeline.train import RunClock, Trainer, selection_sets, train_member

ROOT = Path(__file__).resolve().parents[1]
WORDS = "the movie is very good bad great boring fun plot story acting".split()


def synthetic_frames(n: int, seed: int) -> dict[str, dict[str, pd.DataFrame]]:
    rng = np.random.default_rng(seed)

    def sentence() -> str:
        return " ".join(rng.choice(WORDS, size=rng.integers(2, 9)))

    frames: dict[str, dict[str, pd.DataFrame]] = {}
    for split in ("train", "dev", "test"):
        labelled = split != "test"
        ids = [f"{split}{i}" for i in range(n)]
        frames.setdefault("sst", {})[split] = pd.DataFrame({
            "id": ids, "sentence": [sentence() for _ in ids],
            "label": pd.array(rng.integers(0, 5, n) if labelled else [None] * n, dtype="Int8")})
        frames.setdefault("qqp", {})[split] = pd.DataFrame({
            "id": ids, "sentence1": [sentence() for _ in ids],
            "sentence2": [sentence() for _ in ids],
            "label": pd.array(rng.integers(0, 2, n) if labelled else [None] * n, dtype="Int8")})
        frames.setdefault("sts", {})[split] = pd.DataFrame({
            "id": ids, "sentence1": [sentence() for _ in ids],
            "sentence2": [sentence() for _ in ids],
            "label": (rng.uniform(0, 5, n) if labelled else np.full(n, np.nan)).astype(np.float32)})
    return frames


def member_for(tiny_bert: Path, **train_overrides):
    raw = yaml.safe_load(PARAMS_YAML.read_text())
    raw["model"]["backbone"] = str(tiny_bert)
    raw["smart"]["lambda"] = 0.0  # the default recipe's SMART(10); tests opt in
    raw["train"].update({"epochs": 3, "batches_per_epoch": 6, "batch_size": 4,
                         "precision": "fp32", "schedule": "round_robin", **train_overrides})
    return parse_params(raw).models["multitask"]


def test_warmup_linear_decay_by_hand():
    factor = warmup_linear_decay(total_steps=10, warmup_ratio=0.2)  # 2 warmup steps
    assert [factor(s) for s in range(11)] == pytest.approx(
        [0.5, 1.0, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8, 0.0])


def test_run_clock_eta_by_hand_including_the_whole_dev_scoring():
    plan = EpochPlan(tasks=[["sst"] * 10, ["sst"] * 10], subsets=[{}, {}])
    clock = RunClock(plan, start_epoch=0, steps_done=0, final_eval_ratio=5.0)
    clock.trained(1, 20.0)  # 2 s a step
    clock.evaluated(3.0)
    # 10 steps × 2 s + (1 evaluation + 5 × one evaluation's rows at the end) × 3 s
    assert clock.eta() == pytest.approx(10 * 2 + 6 * 3)
    assert clock.summary() == "23 s so far (dev eval 3 s), ETA 38 s"
    clock.trained(2, 20.0)
    clock.evaluated(5.0)  # mean evaluation 4 s
    assert clock.eta() == pytest.approx(5 * 4)
    assert clock.summary().endswith(", ETA 20 s (scoring the best epoch on the whole dev set)")
    plain = RunClock(plan, start_epoch=1, steps_done=4)  # resumed in epoch 2, no sample
    plain.trained(2, 12.0)
    plain.evaluated(1.0)
    assert plain.summary() == "13 s so far (dev eval 1 s), done"


def test_plan_custom_schedule_trains_a_fixed_fraction_then_round_robin(tiny_bert):
    member = member_for(tiny_bert, schedule="custom", batches_per_epoch=None, epochs=3,
                        custom={"task": "qqp", "fraction": 0.5, "epochs": 1})
    tokenizer = load_tokenizer(member.model.backbone)
    data = tokenize_member_data(synthetic_frames(20, 0), member, tokenizer)
    plan = plan_epochs(member, data.split("train"))
    assert plan.tasks[0] == ["qqp"] * math.ceil(10 / 4)
    assert len(plan.subsets[0]["qqp"]) == 10 and len(plan.subsets[1]["qqp"]) == 20
    assert plan.tasks[1][:3] == ["sst", "qqp", "sts"] and len(plan.tasks[1]) == 3 * 5
    assert plan.total_steps == 3 + 15 + 15


def test_custom_phase_covers_its_fraction_in_full_whatever_the_epoch_length(tiny_bert, tmp_path):
    # 2 batches per epoch, but the QQP-only epoch must see all 16 rows of 80% of 20, once each.
    member = member_for(tiny_bert, schedule="custom", batches_per_epoch=2, epochs=2,
                        custom={"task": "qqp", "fraction": 0.8, "epochs": 1})
    tokenizer = load_tokenizer(member.model.backbone)
    data = tokenize_member_data(synthetic_frames(20, 0), member, tokenizer)
    trainer = Trainer(member, data, tokenizer, tmp_path)
    assert trainer.plan.tasks[0] == ["qqp"] * 4 and trainer.plan.tasks[1] == ["sst", "qqp"]
    seen = np.concatenate(list(trainer._batches(1)["qqp"]))
    assert sorted(seen) == sorted(trainer.plan.subsets[0]["qqp"]) and len(seen) == 16


def test_plan_with_pcgrad_takes_every_task_each_step(tiny_bert):
    member = member_for(tiny_bert)
    member = dataclasses.replace(member, pcgrad=dataclasses.replace(member.pcgrad, enabled=True))
    tokenizer = load_tokenizer(member.model.backbone)
    data = tokenize_member_data(synthetic_frames(20, 0), member, tokenizer)
    plan = plan_epochs(member, data.split("train"))
    assert plan.tasks[0] == ["sst,qqp,sts"] * 2  # 6 batches → 2 steps of 3 tasks


def trained_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def fit_killed_at_epoch_3(trainer: Trainer, monkeypatch) -> None:
    """``trainer.fit()`` killed as epoch 3 starts (after epoch 2's checkpoint)."""
    original = Trainer.train_epoch

    def killed_at_epoch_3(self, epoch, progress=None):
        if epoch == 3:
            raise KeyboardInterrupt("killed")
        return original(self, epoch, progress)

    monkeypatch.setattr(Trainer, "train_epoch", killed_at_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    monkeypatch.setattr(Trainer, "train_epoch", original)


RESUMED_MTL = {"plain": None,
               # UW's log-variances in the optimiser; GradVac's and DWA's running state
               "upgrad_uw": MtlConfig(aggregator="upgrad", weighting="uw", weighting_lr=0.05),
               "gradvac_dwa": MtlConfig(aggregator="gradvac", weighting="dwa"),
               # FAMO's own Adam and its losses recomputed after each update
               "mean_famo": MtlConfig(aggregator="mean", weighting="famo")}


@pytest.mark.parametrize("variant", RESUMED_MTL)
def test_resume_after_interruption_matches_an_uninterrupted_run(tiny_bert, tmp_path, monkeypatch,
                                                                variant):
    member = member_for(tiny_bert)
    if RESUMED_MTL[variant]:
        member = dataclasses.replace(member, mtl=RESUMED_MTL[variant])
    tokenizer = load_tokenizer(member.model.backbone)
    data = tokenize_member_data(synthetic_frames(24, 1), member, tokenizer)

    straight = Trainer(member, data, tokenizer, tmp_path / "straight")
    straight_result = straight.fit()
    expected = trained_state(straight)

    fit_killed_at_epoch_3(Trainer(member, data, tokenizer, tmp_path / "resumed"), monkeypatch)
    original = Trainer.train_epoch

    calls = []
    monkeypatch.setattr(Trainer, "train_epoch",
                        lambda self, epoch, progress=None: calls.append(epoch)
                        or original(self, epoch, progress))
    resumed = Trainer(member, data, tokenizer, tmp_path / "resumed")
    result = resumed.fit()
    assert calls == [3]  # epochs 1–2 came from the checkpoint
    for name, tensor in trained_state(resumed).items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=1e-6, msg=name)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    if variant != "plain":  # the third epoch's aggregation replayed: weights and statistics
        replayed, want = ({k: v for k, v in run.history[2].items() if k != "seconds"}
                          for run in (result, straight_result))
        assert replayed == pytest.approx(want)
    assert result.best_epoch == straight_result.best_epoch
    assert result.best_metrics == pytest.approx(straight_result.best_metrics)


def test_checkpoint_of_another_config_is_not_resumed(tiny_bert, tmp_path):
    member = member_for(tiny_bert, epochs=1)
    tokenizer = load_tokenizer(member.model.backbone)
    data = tokenize_member_data(synthetic_frames(12, 2), member, tokenizer)
    Trainer(member, data, tokenizer, tmp_path).fit()
    other = dataclasses.replace(member, train=dataclasses.replace(member.train, lr=3e-4))
    trainer = Trainer(other, data, tokenizer, tmp_path)
    assert trainer._load_checkpoint() == (0, None)


def test_saved_member_round_trips(tiny_bert, tmp_path):
    member = member_for(tiny_bert)
    member = dataclasses.replace(member, model=dataclasses.replace(member.model,
                                                                   pooling="attention"))
    tokenizer = load_tokenizer(member.model.backbone)
    torch.manual_seed(3)
    model = MultitaskModel(member.model, member.tasks)
    with torch.no_grad():
        model.attention_pool.query.normal_()
    save_member(model, member, tokenizer, tmp_path / "saved")
    torch.manual_seed(4)
    reloaded = load_member_weights(MultitaskModel(member.model, member.tasks), tmp_path / "saved")
    data = tokenize_member_data(synthetic_frames(6, 3), member, tokenizer)
    model.eval()
    reloaded.eval()
    for task, split in data.split("dev").items():
        batch = collate(split, np.arange(len(split)), tokenizer.pad_token_id)
        torch.testing.assert_close(reloaded(task, batch.inputs), model(task, batch.inputs))
    assert {p.name for p in (tmp_path / "saved").iterdir()} >= {
        "config.json", "model.safetensors", "heads.safetensors", "bestfit.json"}


def test_task_step_loss_adds_weighted_contrastive_term(tiny_bert):
    member = member_for(tiny_bert)
    member = dataclasses.replace(member, loss=dataclasses.replace(
        member.loss, contrastive_weight=0.5, task_weights={"sst": 1.0, "qqp": 2.0, "sts": 1.0}))
    tokenizer = load_tokenizer(member.model.backbone)
    data = tokenize_member_data(synthetic_frames(8, 4), member, tokenizer)
    torch.manual_seed(0)
    model = MultitaskModel(member.model, member.tasks).eval()
    batch = collate(data.splits["qqp"]["train"], np.arange(8), tokenizer.pad_token_id)
    u, v = (model.embed(enc) for enc in batch.singles)
    expected = 2.0 * (task_loss("qqp", model("qqp", batch.inputs), batch.labels, 0.0)
                      + 0.5 * contrastive_loss("qqp", cosine_distance(u, v), batch.labels, 0.5))
    loss, output = task_step_loss(model, batch, member)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(output, model("qqp", batch.inputs))


def test_the_train_stage_writes_the_outputs(tiny_bert, tmp_path):
    member = member_for(tiny_bert, epochs=2)
    metrics = load_stage("train").run(member, synthetic_frames(12, 5), tmp_path / "out",
                                      tmp_path / "ck")
    out = tmp_path / "out"
    assert {"sst_acc", "qqp_acc", "sts_pearson", "overall", "best_epoch"} <= set(metrics)
    expected_overall = (metrics["sst_acc"] + metrics["qqp_acc"]
                        + (metrics["sts_pearson"] + 1) / 2) / 3
    assert metrics["overall"] == pytest.approx(expected_overall)
    for task in ("sst", "qqp", "sts"):
        for split in ("dev", "test"):
            frame = pd.read_parquet(out / "predictions" / f"{task}_{split}.parquet")
            assert len(frame) == 12 and list(frame["id"]) == [f"{split}{i}" for i in range(12)]
    sst = pd.read_parquet(out / "predictions" / "sst_dev.parquet")
    np.testing.assert_allclose(sst[[f"p{k}" for k in range(5)]].sum(axis=1), 1.0, rtol=1e-5)
    assert (out / "model" / "heads.safetensors").exists()
    assert not [p for p in out.rglob(".*")]  # no temporary leftovers


def scripted_selection(monkeypatch, scores: dict[int, dict[str, float]]) -> None:
    """Per-epoch selection scores as given (epoch → metric → value), whatever the model
    predicts; every other evaluation (the whole dev set, test) is the model's own."""
    original = Trainer._evaluate
    epochs = iter(sorted(scores))

    def evaluate(self, sets):
        frames, metrics = original(self, sets)
        if sets is self.select_sets:
            metrics = {**metrics, **scores[next(epochs)]}
        return frames, metrics

    monkeypatch.setattr(Trainer, "_evaluate", evaluate)


def test_each_task_predicts_from_its_own_best_epoch(tiny_bert, tmp_path, monkeypatch):
    member = member_for(tiny_bert, epochs=3)
    member = dataclasses.replace(member, train=dataclasses.replace(
        member.train, select_per_task=True, select_by="overall"))
    # sst peaks at epoch 1, qqp at 2, sts and the overall ((sst + qqp + (sts + 1) / 2) / 3:
    # 0.52, 0.57, 0.68) at 3
    scripted_selection(monkeypatch, {
        1: {"sst_acc": 0.9, "qqp_acc": 0.1, "sts_pearson": 0.1},
        2: {"sst_acc": 0.2, "qqp_acc": 0.9, "sts_pearson": 0.2},
        3: {"sst_acc": 0.5, "qqp_acc": 0.6, "sts_pearson": 0.9}})
    frames = synthetic_frames(12, 5)
    ck, out = tmp_path / "ck", tmp_path / "out"
    at_checkpoint, after_drop = [], []
    save, drop = Trainer._save_checkpoint, Trainer._drop_task_snapshots

    def listing(self, epoch, progress=None):
        save(self, epoch, progress)
        if progress is None:
            at_checkpoint.append(sorted(p.name for p in self.task_best_dir.iterdir()))

    def dropping(self):
        drop(self)
        after_drop.append(sorted(p.name for p in self.task_best_dir.iterdir()))

    monkeypatch.setattr(Trainer, "_save_checkpoint", listing)
    monkeypatch.setattr(Trainer, "_drop_task_snapshots", dropping)
    metrics = load_stage("train").run(member, frames, out, ck)
    # a task's new snapshot is there when the checkpoint naming it is written; the one it
    # supersedes goes right after
    assert at_checkpoint == [["qqp-1", "sst-1", "sts-1"],
                             ["qqp-1", "qqp-2", "sst-1", "sts-1", "sts-2"],
                             ["qqp-2", "sst-1", "sts-2", "sts-3"]]
    assert after_drop == [["qqp-1", "sst-1", "sts-1"], ["qqp-2", "sst-1", "sts-2"],
                          ["qqp-2", "sst-1", "sts-3"]]
    assert metrics["best_epoch"] == 3
    assert metrics["task_best_epoch"] == {"sst": 1, "qqp": 2, "sts": 3}
    assert not (ck / "task_best").exists()  # kept only until the predictions were written
    # sst's and qqp's predictions are those of their epochs' models, not of the saved one
    tokenizer = load_tokenizer(member.model.backbone)
    data = tokenize_member_data(frames, member, tokenizer)
    shipped = {t: pd.read_parquet(out / "predictions" / f"{t}_dev.parquet") for t in member.tasks}
    final = MultitaskModel.from_pretrained(out / "model")
    for task in member.tasks:
        mine = predict(final, data.split("dev")[task], 64, torch.device("cpu"), "fp32",
                       tokenizer.pad_token_id)
        # every number a prediction holds (class probabilities, p_positive, the score)
        same = np.allclose(mine.select_dtypes("number").to_numpy(dtype=float),
                           shipped[task].select_dtypes("number").to_numpy(dtype=float),
                           rtol=0, atol=1e-6)
        assert same == (task == "sts"), task  # sts is the saved epoch's; the others are not
    labels = {t: data.split("dev")[t].labels for t in member.tasks}
    scores = score_predictions(shipped, labels, member.specs)
    for name in ("sst_acc", "qqp_acc"):  # (sts's is the scripted selection's: not scored)
        assert metrics[name] == pytest.approx(scores[name])  # the scores of what it ships
    assert metrics["overall"] == pytest.approx(overall_score(member.specs, metrics))
    card = (out / "model" / "README.md").read_text()
    assert "sst epoch 1, qqp epoch 2, sts epoch 3" in card


def test_a_resumed_run_keeps_the_snapshots_its_checkpoint_names(tiny_bert, tmp_path,
                                                                monkeypatch):
    member = member_for(tiny_bert, epochs=3)
    member = dataclasses.replace(member, train=dataclasses.replace(
        member.train, select_per_task=True, select_by="overall"))
    tokenizer = load_tokenizer(member.model.backbone)
    data = tokenize_member_data(synthetic_frames(12, 5), member, tokenizer)
    fit_killed_at_epoch_3(Trainer(member, data, tokenizer, tmp_path), monkeypatch)
    named = {f"{t}-{e}" for t, (_, e) in load_state(tmp_path / "last")["result"][
        "task_best"].items()}
    assert {p.name for p in (tmp_path / "task_best").iterdir()} == named
    stray = tmp_path / "task_best" / "sst-3"  # a killed epoch 3's, which no checkpoint names
    shutil.copytree(tmp_path / "task_best" / sorted(named)[0], stray)
    resumed = Trainer(member, data, tokenizer, tmp_path)
    resumed._load_checkpoint()
    assert {p.name for p in (tmp_path / "task_best").iterdir()} == named
    shutil.rmtree(tmp_path / "task_best" / sorted(named)[0])
    with pytest.raises(CheckpointError, match="no snapshot of the best epoch"):
        Trainer(member, data, tokenizer, tmp_path)._load_checkpoint()


def test_smart_and_pcgrad_train_through_the_trainer(tiny_bert, tmp_path):
    member = member_for(tiny_bert, epochs=1)
    member = dataclasses.replace(
        member, smart=dataclasses.replace(member.smart, lambda_=5.0, epsilon=1e-2),
        pcgrad=dataclasses.replace(member.pcgrad, enabled=True))
    tokenizer = load_tokenizer(member.model.backbone)
    data = tokenize_member_data(synthetic_frames(16, 6), member, tokenizer)
    trainer = Trainer(member, data, tokenizer, tmp_path)
    before = trained_state(trainer)
    result = trainer.fit()
    after = trained_state(trainer)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("backbone."))
    record = result.history[0]
    assert record["pcgrad/steps"] == 2
    assert {"pcgrad/projections/sst_to_qqp", "pcgrad/norm_change_pct/sts_to_sst"} <= set(record)
    assert all(math.isfinite(record[f"train_loss/{t}"]) for t in ("sst", "qqp", "sts"))


def test_an_aggregator_and_a_loss_weighting_train_through_the_trainer(tiny_bert, tmp_path):
    member = dataclasses.replace(member_for(tiny_bert, epochs=1), mtl=MtlConfig(
        aggregator="upgrad", weighting="uw", weighting_lr=0.1))
    tokenizer = load_tokenizer(member.model.backbone)
    data = tokenize_member_data(synthetic_frames(16, 6), member, tokenizer)
    trainer = Trainer(member, data, tokenizer, tmp_path)
    assert trainer.plan.tasks[0] == ["sst,qqp,sts"] * 2  # one batch of every task per step
    before = trained_state(trainer)
    log_var = trainer.pcgrad.scalarizer.log_var.detach().clone()
    record = trainer.fit().history[0]
    after = trained_state(trainer)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("backbone."))
    assert not torch.equal(trainer.pcgrad.scalarizer.log_var, log_var)  # UW's σ² learned
    assert record["mtl/steps"] == 2
    assert {"mtl/weight/sst", "mtl/cosine/qqp", "mtl/conflicts/sst_with_sts",
            "mtl/loss_scale/sts", "mtl/norm_change_pct"} <= set(record)
    assert not any(k.startswith("pcgrad/") for k in record)


def test_logged_train_metrics_score_the_training_outputs(tiny_bert, tmp_path, monkeypatch):
    from scipy.stats import pearsonr

    import pipeline.train as train_module

    member = member_for(tiny_bert, epochs=1)
    tokenizer = load_tokenizer(member.model.backbone)
    data = tokenize_member_data(synthetic_frames(16, 7), member, tokenizer)
    seen = {"sst": [], "qqp": [], "sts": []}

    def recording(model, batch, member):
        loss, output = task_step_loss(model, batch, member)
        seen[batch.task].append((output.detach().float(), batch.labels))
        return loss, output

    monkeypatch.setattr(train_module, "task_step_loss", recording)
    trainer = Trainer(member, data, tokenizer, tmp_path)
    with torch.no_grad():  # STS outputs inside [0, 5], so that clipping leaves them a spread
        trainer.model.heads["sts"][-1].bias.add_(2.5)
    logged = trainer.train_epoch(1)
    out, y = ({t: torch.cat([pair[k] for pair in seen[t]]) for t in seen} for k in (0, 1))
    assert logged["train/sst_acc"] == pytest.approx(
        (out["sst"].argmax(-1) == y["sst"]).double().mean().item())
    assert logged["train/qqp_acc"] == pytest.approx(
        ((torch.sigmoid(out["qqp"]) >= 0.5).long() == y["qqp"]).double().mean().item())
    # the reference in float64, as the trainer scores (scipy on float32 arrays computes in
    # float32: off by ~1e-8, which fails rel=1e-6 when the random tiny BERT's r is near 0), on
    # the values clipped to STS's range [0, 5], as every prediction is
    assert logged["train/sts_pearson"] == pytest.approx(
        pearsonr(out["sts"].double().clamp(0.0, 5.0).numpy(),
                 y["sts"].double().numpy()).statistic, rel=1e-6)


def test_pcgrad_steps_of_the_first_mixed_epoch_land_in_the_live_dir(tiny_bert, tmp_path):
    from dvclive import Live

    member = member_for(tiny_bert, epochs=2)
    member = dataclasses.replace(member, pcgrad=dataclasses.replace(member.pcgrad, enabled=True))
    tokenizer = load_tokenizer(member.model.backbone)
    data = tokenize_member_data(synthetic_frames(16, 6), member, tokenizer)
    with Live(dir=str(tmp_path / "live"), dvcyaml=None, save_dvc_exp=False) as live:
        result = Trainer(member, data, tokenizer, tmp_path / "ck", live).fit()
        assert not (tmp_path / "live" / PCGRAD_STEPS_FILE).exists()  # the stage writes it
        load_stage("train").run(member, synthetic_frames(16, 6), tmp_path / "out",
                                tmp_path / "ck", live)
    steps = pd.read_csv(tmp_path / "live" / PCGRAD_STEPS_FILE, sep="\t")
    assert list(steps["epoch"]) == [1, 1] and list(steps["step"]) == [1, 2]  # 6 batches / 3
    first = result.history[0]
    for column in steps.columns.drop(["epoch", "step"]):  # the epoch's figures, step by step
        if column.startswith("projections/"):
            assert steps[column].sum() == first[f"pcgrad/{column}"]
    assert (tmp_path / "live" / "plots" / "metrics" / "train" / "sst_acc.tsv").exists()


def test_selection_sets_sample_a_fixed_subset_in_order(tiny_bert):
    member = member_for(tiny_bert)
    tokenizer = load_tokenizer(member.model.backbone)
    dev = tokenize_member_data(synthetic_frames(20, 3), member, tokenizer).split("dev")
    sets = selection_sets(dev, {"qqp": 7, "sts": 20})
    again = selection_sets(dev, {"qqp": 7})
    assert sets["sst"] is dev["sst"] and sets["sts"] is dev["sts"]  # uncapped / cap ≥ rows
    picked = [int(i.removeprefix("dev")) for i in sets["qqp"].ids]
    assert len(picked) == 7 == len(set(picked)) and picked == sorted(picked)
    assert sets["qqp"].ids == again["qqp"].ids  # the same rows for every run
    rows = np.array(picked)
    np.testing.assert_array_equal(sets["qqp"].labels, dev["qqp"].labels[rows])
    assert sets["qqp"].sequences[0] == [dev["qqp"].sequences[0][i] for i in picked]


def test_best_epoch_picked_on_the_sample_is_scored_on_the_whole_dev_set(tiny_bert, tmp_path):
    member = member_for(tiny_bert, select_rows={"qqp": 6, "sts": 8}, select_by="overall")
    tokenizer = load_tokenizer(member.model.backbone)
    data = tokenize_member_data(synthetic_frames(16, 4), member, tokenizer)
    trainer = Trainer(member, data, tokenizer, tmp_path)
    result = trainer.fit()
    overall = [h["dev/overall"] for h in result.history]
    assert result.best_epoch == 1 + int(np.argmax(overall))  # picked on the sample's scores
    assert result.select_metrics["overall"] == overall[result.best_epoch - 1]
    # the best epoch's model, loaded afresh, scored on every dev row
    best = MultitaskModel.from_pretrained(tmp_path / "best" / "model")
    frames = {task: predict(best, d, 8, torch.device("cpu"), "fp32", tokenizer.pad_token_id)
              for task, d in data.split("dev").items()}
    labels = {task: d.labels for task, d in data.split("dev").items()}
    stored = {task: pd.read_parquet(tmp_path / "best" / "predictions" / f"{task}_dev.parquet")
              for task in frames}  # scores as close as the predictions are (metric_bounds)
    assert_scores_follow_predictions((result.best_metrics, stored), (score_predictions(
        frames, labels, member.specs), frames), member.specs, 1e-4)
    for task in ("sst", "qqp", "sts"):
        saved = pd.read_parquet(tmp_path / "best" / "predictions" / f"{task}_dev.parquet")
        assert len(saved) == 16
        np.testing.assert_allclose(saved["pred"], frames[task]["pred"], rtol=1e-5, atol=1e-6)
    assert result.select_metrics != pytest.approx(result.best_metrics)


def test_the_best_epoch_is_picked_on_the_tasks_the_ensemble_takes(tiny_bert, tmp_path,
                                                                  monkeypatch, capsys):
    # params.yaml's ensemble takes QQP and STS from multitask (train.select_by: ensemble).
    # Scripted dev scores: epoch 1 has the better overall (SST 0.9: (0.9 + 0.5 + 0.5) / 3 =
    # 0.633 against (0.1 + 0.6 + 0.6) / 3 = 0.433), epoch 2 the better QQP + STS (0.6 > 0.5).
    scripted = iter([{"sst_acc": 0.9, "qqp_acc": 0.5, "sts_pearson": 0.0},
                     {"sst_acc": 0.1, "qqp_acc": 0.6, "sts_pearson": 0.2}])
    original = Trainer._evaluate

    def evaluate(self, sets):
        frames, metrics = original(self, sets)
        if metrics is None:  # the unlabelled test split
            return frames, None
        metrics = next(scripted)
        return frames, {**metrics, "overall": overall_score(self.member.specs, metrics)}

    monkeypatch.setattr(Trainer, "_evaluate", evaluate)
    member = member_for(tiny_bert, epochs=2)
    assert (member.train.select_by, member.select_tasks) == ("ensemble", ["qqp", "sts"])
    trained = train_member(member, synthetic_frames(8, 6), tmp_path)
    assert trained.result.best_epoch == 2
    assert trained.metrics["overall"] == pytest.approx(1.3 / 3)  # still every task's
    assert trained.metrics["select"] == {"by": "ensemble", "tasks": ["qqp", "sts"],
                                         "score": pytest.approx(0.6)}
    out = capsys.readouterr().out
    assert "select overall(qqp, sts) 0.5000 (best)" in out
    assert "select overall(qqp, sts) 0.6000 (best)" in out
