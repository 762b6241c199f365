"""Resume anywhere: a run killed at a step that is not an epoch boundary resumes to bitwise the
model, predictions and metrics of an uninterrupted run (plain, PCGrad, SMART); checkpoints and
best snapshots that are not this run's are never used; training that diverges is an error."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import PARAMS_YAML
from test_checkpoint import WritesMarker
from test_train import member_for, synthetic_frames

from pipeline.batching import tokenize_member_data
from pipeline.checkpoint import STATE_FILE, CheckpointError, save_state
from pipeline.data import SPLITS, prepared_path
from pipeline.errors import UserError
from pipeline.io import write_parquet
from pipeline.model import load_tokenizer
from pipeline.train import (
    BEST_DIR,
    CHECKPOINT_DIR,
    LEGACY_CHECKPOINT,
    Trainer,
    TrainingError,
    train_member,
)

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "plain": {},
    "pcgrad": {"pcgrad": {"enabled": True}},
    "smart": {"smart": {"lambda_": 1.0}},
}


def variant_member(tiny_bert, variant: str, **train):
    member = member_for(tiny_bert, batches_per_epoch=12, checkpoint_steps=2,
                        checkpoint_minutes=None, **train)
    for section, values in VARIANTS[variant].items():
        member = dataclasses.replace(
            member, **{section: dataclasses.replace(getattr(member, section), **values)})
    return member


def state_of(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def without_times(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_killed_mid_epoch_resumes_bitwise(tiny_bert, tmp_path, monkeypatch, variant):
    member = variant_member(tiny_bert, variant)
    tokenizer = load_tokenizer(member.model.backbone)
    data = tokenize_member_data(synthetic_frames(24, 1), member, tokenizer)

    straight = Trainer(member, data, tokenizer, tmp_path / "straight")
    expected_result = straight.fit()
    expected = state_of(straight)
    per_epoch = len(straight.plan.tasks[0])
    kill_at = per_epoch + 3  # within epoch 2, after its checkpoint at step 2 of it

    steps = []
    original = Trainer._step

    def killed(self, *args):
        if len(steps) == kill_at:
            raise KeyboardInterrupt("kill -9")
        steps.append(1)
        return original(self, *args)

    monkeypatch.setattr(Trainer, "_step", killed)
    with pytest.raises(KeyboardInterrupt):
        Trainer(member, data, tokenizer, tmp_path / "resumed").fit()
    saved = json.loads((tmp_path / "resumed" / CHECKPOINT_DIR / STATE_FILE).read_text())
    assert saved["epoch"] == 1 and saved["in_epoch"]["steps_done"] == 2

    steps.clear()
    monkeypatch.setattr(Trainer, "_step", lambda self, *a: steps.append(1) or original(self, *a))
    resumed = Trainer(member, data, tokenizer, tmp_path / "resumed")
    result = resumed.fit()
    assert len(steps) == resumed.plan.total_steps - per_epoch - 2  # nothing trained twice
    for name, tensor in state_of(resumed).items():
        assert torch.equal(tensor, expected[name]), name
    assert result.best_epoch == expected_result.best_epoch
    assert result.best_metrics == expected_result.best_metrics
    assert without_times(result.history) == without_times(expected_result.history)
    if variant == "pcgrad":
        assert result.pcgrad_steps == expected_result.pcgrad_steps


def fitted(tiny_bert, tmp_path, **train):
    member = member_for(tiny_bert, epochs=2, **train)
    tokenizer = load_tokenizer(member.model.backbone)
    data = tokenize_member_data(synthetic_frames(12, 2), member, tokenizer)
    Trainer(member, data, tokenizer, tmp_path).fit()
    return member, data, tokenizer


def edit_state(path: Path, **changes) -> None:
    state = json.loads((path / STATE_FILE).read_text())
    state.update(changes)
    (path / STATE_FILE).write_text(json.dumps(state))


def test_an_edited_epoch_counter_is_an_error_not_zero_epochs(tiny_bert, tmp_path):
    member, data, tokenizer = fitted(tiny_bert, tmp_path)
    edit_state(tmp_path / CHECKPOINT_DIR, epoch=99)
    with pytest.raises(CheckpointError, match=r"epoch 99 is not within 0…2.*delete"):
        Trainer(member, data, tokenizer, tmp_path).fit()


def test_a_best_snapshot_of_another_run_is_an_error(tiny_bert, tmp_path):
    member, data, tokenizer = fitted(tiny_bert, tmp_path)
    stamp = tmp_path / BEST_DIR / "run.json"
    stamp.write_text(json.dumps({"fingerprint": "another run", "epoch": 1}))
    with pytest.raises(CheckpointError, match="not the snapshot of its best epoch"):
        Trainer(member, data, tokenizer, tmp_path).fit()


def test_another_configs_best_is_never_shipped(tiny_bert, tmp_path, caplog):
    member, data, tokenizer = fitted(tiny_bert, tmp_path)
    other = dataclasses.replace(member, train=dataclasses.replace(member.train, lr=3e-4))
    trainer = Trainer(other, data, tokenizer, tmp_path)
    assert trainer._load_checkpoint() == (0, None)
    assert "another config" in caplog.text and not (tmp_path / BEST_DIR).exists()


def test_a_best_snapshot_without_its_checkpoint_is_dropped(tiny_bert, tmp_path, caplog):
    member, data, tokenizer = fitted(tiny_bert, tmp_path)
    os.rename(tmp_path / CHECKPOINT_DIR, tmp_path / "elsewhere")
    assert Trainer(member, data, tokenizer, tmp_path)._load_checkpoint() == (0, None)
    assert not (tmp_path / BEST_DIR).exists()
    assert "best snapshot without its run's checkpoint; removed" in caplog.text


def test_a_file_where_the_checkpoint_dir_should_be_is_an_error(tiny_bert, tmp_path):
    member = member_for(tiny_bert, epochs=1)
    (tmp_path / "ckpt").write_text("not a directory")
    with pytest.raises(UserError, match=r"ckpt: not a directory; the checkpoint directory"):
        train_member(member, synthetic_frames(12, 2), tmp_path / "ckpt")


def test_a_pickle_checkpoint_is_never_loaded(tiny_bert, tmp_path, caplog):
    member = member_for(tiny_bert, epochs=1)
    tokenizer = load_tokenizer(member.model.backbone)
    data = tokenize_member_data(synthetic_frames(12, 2), member, tokenizer)
    marker = tmp_path / "pwned"
    (tmp_path / LEGACY_CHECKPOINT).write_bytes(pickle.dumps({"model": WritesMarker(marker)}))
    result = Trainer(member, data, tokenizer, tmp_path).fit()
    assert not marker.exists() and result.best_epoch == 1
    assert "pickle checkpoint" in caplog.text and not (tmp_path / LEGACY_CHECKPOINT).exists()


def test_a_checkpoint_that_does_not_fit_the_model_is_an_error(tiny_bert, tmp_path):
    member, data, tokenizer = fitted(tiny_bert, tmp_path)
    trainer = Trainer(member, data, tokenizer, tmp_path)
    state = json.loads((tmp_path / CHECKPOINT_DIR / STATE_FILE).read_text())
    save_state({**state, "model": {"nonsense": torch.ones(1)}, "in_epoch": None,
                "optimizer": {}, "scheduler": {}, "rng": {}, "result": state["result"]},
               tmp_path / CHECKPOINT_DIR)
    with pytest.raises(CheckpointError, match="does not fit this run"):
        trainer.fit()


def test_a_diverging_run_is_an_error_not_a_nan_score(tiny_bert, tmp_path, monkeypatch):
    member = member_for(tiny_bert, epochs=1)
    tokenizer = load_tokenizer(member.model.backbone)
    data = tokenize_member_data(synthetic_frames(12, 2), member, tokenizer)
    import pipeline.train as train

    real = train.task_step_loss

    def nan_loss(model, batch, member):
        loss, output = real(model, batch, member)
        return loss * float("nan"), output

    monkeypatch.setattr(train, "task_step_loss", nan_loss)
    with pytest.raises(TrainingError, match="non-finite training loss.*lower train.lr"):
        Trainer(member, data, tokenizer, tmp_path).fit()


# -- a real kill -9 of the train stage ------------------------------------------------------
def write_prepared(directory: Path) -> None:
    for task, splits in synthetic_frames(32, 5).items():
        for split in SPLITS:
            write_parquet(splits[split], prepared_path(directory, task, split))


def train_command(work: Path, out: str) -> list[str]:
    return [sys.executable, str(ROOT / "stages" / "train.py"), "multitask", "--seed", "11",
            "--prepared", str(work / "prepared"), "--augmented", str(work / "augmented"),
            "--out", str(work / out), "--checkpoints", str(work / f"ckpt_{out}"),
            "--params", str(work / "params.yaml"), "--no-live"]


def test_kill_9_mid_epoch_then_rerun_gives_identical_outputs(tiny_bert, tmp_path):
    raw = yaml.safe_load(PARAMS_YAML.read_text())
    raw["model"]["backbone"] = str(tiny_bert)
    raw["smart"]["lambda"] = 0.0
    raw["train"].update({"epochs": 2, "batches_per_epoch": 40, "batch_size": 4,
                         "precision": "fp32", "schedule": "round_robin", "num_threads": 1,
                         "checkpoint_steps": 1, "checkpoint_minutes": None})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    write_prepared(tmp_path / "prepared")
    (tmp_path / "augmented").mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(train_command(tmp_path, "straight"), env=env, check=True,
                   capture_output=True)

    proc = subprocess.Popen(train_command(tmp_path, "killed"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_file = tmp_path / "ckpt_killed" / CHECKPOINT_DIR / STATE_FILE
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            state = None
        if state and state["in_epoch"] and state["in_epoch"]["epoch"] == 2 \
                and state["in_epoch"]["steps_done"] >= 7:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed mid-epoch"
    resumed = subprocess.run(train_command(tmp_path, "killed"), env=env, check=True,
                             capture_output=True, text=True)
    assert "resuming after epoch 1, step" in resumed.stderr

    for name in ("model.safetensors", "heads.safetensors"):
        assert (tmp_path / "straight" / "model" / name).read_bytes() == \
            (tmp_path / "killed" / "model" / name).read_bytes(), name
    for path in sorted((tmp_path / "straight" / "predictions").glob("*.parquet")):
        pd.testing.assert_frame_equal(pd.read_parquet(path),
                                      pd.read_parquet(tmp_path / "killed" / "predictions" /
                                                      path.name))
    metrics = [json.loads((tmp_path / d / "metrics.json").read_text())
               for d in ("straight", "killed")]
    for m in metrics:
        m.pop("train_seconds"), m.pop("tokenize_seconds")
    assert metrics[0] == metrics[1]

