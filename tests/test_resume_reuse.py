"""What a rerun reuses: a checkpoint resumes on an accelerator (its bookkeeping read on the
host), after a kill at any write of an epoch's end, with the dev rows of the current data; a
stage whose outputs were committed trains afresh when it is run again."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import load_stage
from test_train import member_for, synthetic_frames

import pipeline.checkpoint as checkpoint
import pipeline.io as io
from pipeline.batching import tokenize_member_data
from pipeline.model import load_member_weights, load_tokenizer
from pipeline.train import BEST_DIR, CHECKPOINT_DIR, Trainer, train_member


class Killed(BaseException):
    """A kill -9 at a chosen point: no handler takes it, nothing after it runs."""


def counted_steps(monkeypatch) -> list[int]:
    """Every optimiser step taken from now on leaves a 1 in the returned list."""
    steps, real = [], Trainer._step
    monkeypatch.setattr(Trainer, "_step", lambda self, *a: steps.append(1) or real(self, *a))
    return steps


def test_a_resume_on_an_accelerator_reads_its_bookkeeping_on_the_host(tiny_bert, tmp_path,
                                                                       monkeypatch):
    member = member_for(tiny_bert, epochs=2, checkpoint_steps=2, checkpoint_minutes=None)
    tokenizer = load_tokenizer(member.model.backbone)
    data = tokenize_member_data(synthetic_frames(24, 1), member, tokenizer)
    steps, real_step = [], Trainer._step

    def killed(self, *args):
        if len(steps) == 3:  # after the checkpoint at step 2 of epoch 1
            raise Killed
        steps.append(1)
        return real_step(self, *args)

    monkeypatch.setattr(Trainer, "_step", killed)
    with pytest.raises(Killed):
        Trainer(member, data, tokenizer, tmp_path).fit()
    monkeypatch.setattr(Trainer, "_step", real_step)

    # The stand-in accelerator: meta tensors, like CUDA's, have no .numpy() (a TypeError).
    accelerator = torch.device("meta")
    real_load = checkpoint.load_file
    monkeypatch.setattr(checkpoint, "load_file", lambda path, device="cpu": {
        key: tensor.to(device) for key, tensor in real_load(path).items()})
    resumed = Trainer(member, data, tokenizer, tmp_path)
    resumed.device = accelerator
    epoch, progress = resumed._load_checkpoint()
    assert (epoch, progress.epoch, progress.steps_done) == (0, 1, 2)
    saved = [(task, *batch) for task, batches in progress.outputs.items() for batch in batches]
    assert saved
    for task, raw, index in saved:
        assert raw.device == accelerator and len(index) == len(raw), task
        assert set(index) <= set(range(len(data.splits[task]["train"]))), task
    assert all(total.device == accelerator for total, _ in progress.loss_sums.values())


# -- a kill at each write of an epoch's end --------------------------------------------------
def without_times(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def outcome(trained) -> dict:
    """What a run ships: the best snapshot's model and dev predictions (not its stamp, which
    is bookkeeping), its metrics and history, test predictions."""
    files = {str(p.relative_to(trained.best_dir)): p.read_bytes()
             for p in sorted(trained.best_dir.glob("*/*")) if p.is_file()}
    metrics = {k: v for k, v in trained.metrics.items()
               if k not in ("train_seconds", "tokenize_seconds")}
    return {"files": files, "metrics": metrics, "history": without_times(trained.result.history),
            "test": {t: f.to_dict("list") for t, f in trained.test_predictions.items()}}


def commits(monkeypatch, ckpt: Path, kill_at: int | None = None, midway: bool = False
            ) -> list[str]:
    """The commits of ``last/`` and ``best/`` in ``ckpt``, as they come; a kill right after the
    ``kill_at``-th (``midway``: between its two renames, the old directory set aside)."""
    seen, real = [], io.replace_path

    def replace(new: Path, path: Path) -> None:
        if path.parent == ckpt and path.name in (CHECKPOINT_DIR, BEST_DIR):
            seen.append(path.name)
            if len(seen) == kill_at:
                if not midway:
                    real(new, path)
                elif path.is_dir():  # (a first write has no old directory: a kill before it)
                    aside = tempfile.mkdtemp(prefix=f".{path.name}{io.OLD_MARK}", dir=ckpt)
                    os.replace(path, Path(aside) / path.name)
                raise Killed
        real(new, path)

    monkeypatch.setattr(io, "replace_path", replace)
    return seen


def test_a_kill_at_any_write_of_an_epochs_end_resumes_to_the_same_outputs(tiny_bert, tmp_path,
                                                                            monkeypatch):
    member = member_for(tiny_bert, epochs=2, batches_per_epoch=3, select_by="sst_acc",
                        checkpoint_steps=None, checkpoint_minutes=None)
    frames = synthetic_frames(12, 2)
    real_evaluate = Trainer._evaluate

    def improving(self, sets):
        """Every epoch a new best (its score: the share of the run's steps taken), so every
        epoch's end writes both and replaces an earlier best/."""
        predictions, metrics = real_evaluate(self, sets)
        if metrics:
            metrics["sst_acc"] = self.scheduler.last_epoch / self.plan.total_steps
        return predictions, metrics

    monkeypatch.setattr(Trainer, "_evaluate", improving)
    steps = counted_steps(monkeypatch)
    seen = commits(monkeypatch, tmp_path / "straight")
    expected = outcome(train_member(member, frames, tmp_path / "straight"))
    per_epoch, order = len(steps) // 2, list(seen)
    assert sorted(order) == [BEST_DIR] * 2 + [CHECKPOINT_DIR] * 2, order  # both, each epoch

    for kill_at in range(1, len(order) + 1):
        for midway in (False, True):
            ckpt = tmp_path / f"killed_{kill_at}_{midway}"
            seen = commits(monkeypatch, ckpt, kill_at, midway)
            with pytest.raises(Killed):
                train_member(member, frames, ckpt)
            kept = seen.count(CHECKPOINT_DIR) - (midway and seen[-1] == CHECKPOINT_DIR)
            steps.clear()
            commits(monkeypatch, ckpt)
            where = f"killed {'within' if midway else 'after'} write {kill_at} of {order}"
            assert outcome(train_member(member, frames, ckpt)) == expected, where
            assert len(steps) == per_epoch * (2 - kept), where  # no epoch trained twice


# -- the dev rows a run ships are those of the current data --------------------------------
def test_changed_dev_rows_are_scored_not_shipped_stale(tiny_bert, tmp_path, monkeypatch):
    member = member_for(tiny_bert, epochs=2)
    frames = synthetic_frames(12, 2)
    first = train_member(member, frames, tmp_path / "ckpt")
    shipped = {p.name: p.read_bytes() for p in (first.best_dir / "model").iterdir()}

    changed = synthetic_frames(16, 7)
    for task, splits in frames.items():
        for split in ("dev", "test"):
            splits[split] = changed[task][split].assign(id=lambda f: "new-" + f["id"])
    steps = counted_steps(monkeypatch)
    second = train_member(member, frames, tmp_path / "ckpt")
    assert not steps and second.result.best_epoch == first.result.best_epoch  # training reused
    assert {p.name: p.read_bytes() for p in (second.best_dir / "model").iterdir()} == shipped

    # The shipped model scored on the new rows, by the same evaluation
    tokenizer = load_tokenizer(member.model.backbone)
    scorer = Trainer(member, tokenize_member_data(frames, member, tokenizer), tokenizer,
                     tmp_path / "scorer")
    load_member_weights(scorer.model, second.best_dir / "model")
    dev, metrics = scorer.evaluate("dev")
    for task, frame in dev.items():
        got = pd.read_parquet(second.best_dir / "predictions" / f"{task}_dev.parquet")
        assert got["id"].tolist() == frames[task]["dev"]["id"].tolist()
        pd.testing.assert_frame_equal(got, frame)
        assert second.test_predictions[task]["id"].tolist() == \
            frames[task]["test"]["id"].tolist()
    assert {k: second.metrics[k] for k in metrics} == metrics


# -- a stage run again after its outputs were committed trains afresh -----------------------
def test_a_rerun_after_the_outputs_were_committed_trains_afresh(tiny_bert, tmp_path,
                                                                monkeypatch, caplog):
    stage = load_stage("train")
    member = member_for(tiny_bert, epochs=2)
    frames = synthetic_frames(12, 2)
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    steps = counted_steps(monkeypatch)
    real_write = stage.write_outputs

    def killed(*args):
        raise Killed

    monkeypatch.setattr(stage, "write_outputs", killed)
    with pytest.raises(Killed):  # trained, killed before its outputs were committed
        stage.run(member, frames, out, ckpt)
    total = len(steps)
    monkeypatch.setattr(stage, "write_outputs", real_write)
    caplog.set_level(logging.INFO, logger="bestfit.train")
    stage.run(member, frames, out, ckpt)
    assert len(steps) == total and "resuming after epoch 2" in caplog.text  # nothing retrained
    first = {p.name: p.read_bytes() for p in (out / "model").glob("*.safetensors")}

    caplog.clear()
    stage.run(member, frames, out, ckpt)  # dvc repro -f: the command again, after its commit
    assert len(steps) == 2 * total and "resuming" not in caplog.text
    assert {p.name: p.read_bytes() for p in (out / "model").glob("*.safetensors")} == first
