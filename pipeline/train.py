"""The multitask training loop.

Reads top to bottom in the order it runs: data → model → optimiser → epochs (steps, dev
evaluation, checkpoint) → best model → predictions. AdamW (Loshchilov & Hutter 2019) with linear
warmup and linear decay, gradient clipping, bf16 autocast. Each step's loss is one task's
(``task_step_loss``), so regularisers (SMART) and gradient surgery (PCGrad) work on per-task
losses.

Resumable anywhere: a checkpoint (pickle-free, ``pipeline.checkpoint``) is written at every
epoch's end and every ``checkpoint_steps`` steps / ``checkpoint_minutes`` minutes within one,
with the model, optimiser and scheduler, the position in the epoch's batch plan, the RNG states
and the epoch's running sums, so a run killed at any step resumes to bitwise the outputs of an
uninterrupted one (on the same device and threads). The ``best/`` snapshot carries the
fingerprint of the run that wrote it and is never shipped by another.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from pipeline.batching import Batch, TokenizedTask, collate, epoch_batches, tokenize_task
from pipeline.checkpoint import CheckpointError, load_state, save_state
from pipeline.config import MemberConfig
from pipeline.device import autocast, resolve_device
from pipeline.errors import UserError
from pipeline.evaluate import (
    outputs_to_frame,
    predict,
    score_predictions,
    task_metric,
)
from pipeline.io import (
    atomic_outputs,
    atomic_path,
    recover_outputs,
    write_json,
    write_parquet,
    write_text,
)
from pipeline.losses import contrastive_loss, has_contrastive, task_loss
from pipeline.model import (
    MultitaskModel,
    cosine_distance,
    load_member_weights,
    load_tokenizer,
    save_member,
)
from pipeline.model_card import CARD_FILE, model_card
from pipeline.pcgrad import PCGrad
from pipeline.schedule import data_fraction, epoch_tasks
from pipeline.smart import smart_regularizer

CHECKPOINT_DIR = "last"  # in the member's checkpoint dir; pipeline.checkpoint's format
LEGACY_CHECKPOINT = "last.pt"  # a pickle of earlier versions: never loaded
BEST_DIR = "best"
BEST_STAMP = "run.json"  # in best/: the fingerprint and epoch of the run that wrote it
CHECKPOINT_FORMAT = 1
PCGRAD_STEPS_FILE = "pcgrad_steps.tsv"  # in the DVCLive dir, for the paper's Figure 4
PROGRESS_SECONDS = 30

log = logging.getLogger("bestfit.train")


def non_finite(values: dict[str, float]) -> dict[str, float]:
    return {name: value for name, value in values.items() if not math.isfinite(value)}


class TrainingError(UserError):
    """Training produced something unusable (a NaN loss or metric); the message says what."""


@dataclass
class TaskData:
    """A member's tokenized data, per task and split (``train``, ``dev``, ``test``)."""

    splits: dict[str, dict[str, TokenizedTask]]

    def split(self, name: str) -> dict[str, TokenizedTask]:
        return {task: splits[name] for task, splits in self.splits.items() if name in splits}


# The extra SST training table each `augment:` source of a member names.
def tokenize_member_data(frames: dict[str, dict[str, pd.DataFrame]], member: MemberConfig,
                         tokenizer) -> TaskData:
    with_singles = member.loss.contrastive_weight > 0
    return TaskData({
        task: {
            split: tokenize_task(member.specs[task], frame, tokenizer, member.model.max_length,
                                 member.model.pair_encoding, with_singles and split == "train")
            for split, frame in splits.items()
        }
        for task, splits in frames.items()
    })


def task_step_loss(model: MultitaskModel, batch: Batch, member: MemberConfig
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """One task's training loss on one batch: the supervised loss, plus the contrastive term
    (pair tasks, when weighted) and λ·R_s of SMART (when λ > 0), times the task weight.
    Also returns the task head's output, from which the trainer scores the training batches."""
    task, spec = batch.task, model.specs[batch.task]
    smart_lambda = member.smart.lambda_for(task)
    embeds = model.input_embeddings(batch.inputs) if smart_lambda > 0 else None
    output = model(task, batch.inputs, inputs_embeds=embeds)
    loss = task_loss(spec, output, batch.labels, member.loss.ordered_ce_weight)
    if member.loss.contrastive_weight > 0 and has_contrastive(spec):
        u, v = (model.embed(enc) for enc in batch.singles)
        loss = loss + member.loss.contrastive_weight * contrastive_loss(
            spec, cosine_distance(u, v), batch.labels, member.loss.contrastive_margin,
            member.loss.sts_contrastive_target)
    if smart_lambda > 0:
        regularizer = smart_regularizer(
            lambda perturbed: model(task, batch.inputs, inputs_embeds=perturbed),
            embeds, [enc["attention_mask"] for enc in batch.inputs], spec, member.smart, model,
            output=output)
        loss = loss + smart_lambda * regularizer
    return member.loss.task_weights.get(task, 1.0) * loss, output


def build_optimizer(model: MultitaskModel, member: MemberConfig) -> torch.optim.AdamW:
    """AdamW; biases and normalisation weights get no weight decay."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    cfg = member.train
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=tuple(cfg.betas),
    )


def warmup_linear_decay(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    """LR multiplier: 0 → 1 over the warmup steps, then linearly 1 → 0 at ``total_steps``."""
    warmup = int(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def config_fingerprint(member: MemberConfig, data: TaskData) -> str:
    """Identifies a run: a checkpoint is resumed only by a run with the same config and data
    (how often it checkpoints is not part of it)."""
    train = dataclasses.replace(member.train, checkpoint_steps=None, checkpoint_minutes=None)
    config = dataclasses.asdict(dataclasses.replace(member, train=train))
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for task, splits in sorted(data.splits.items()):
        train = splits["train"]
        digest.update(task.encode())
        digest.update("\0".join(train.ids).encode())
        if train.labels is not None:
            digest.update(train.labels.tobytes())
    return digest.hexdigest()


@dataclass
class EpochPlan:
    """Per epoch: the task of every step and the training subset of every task."""

    tasks: list[list[str]]
    subsets: list[dict[str, np.ndarray]]

    @property
    def total_steps(self) -> int:
        return sum(len(t) for t in self.tasks)


def plan_epochs(member: MemberConfig, train: dict[str, TokenizedTask]) -> EpochPlan:
    """Draw every epoch's schedule up front from the seed, so the LR schedule knows its length
    and a resumed run replays exactly the epochs it missed."""
    cfg = member.train
    tasks, subsets = [], []
    for epoch in range(1, cfg.epochs + 1):
        subset = {}
        for k, task in enumerate(train):
            n = len(train[task])
            keep = max(1, math.ceil(n * data_fraction(cfg, task, epoch)))
            order = np.random.default_rng([cfg.seed, k]).permutation(n)  # same subset each epoch
            subset[task] = np.sort(order[:keep])
        batches = {task: math.ceil(len(subset[task]) / cfg.batch_size) for task in train}
        steps = epoch_tasks(cfg, batches, epoch, np.random.default_rng([cfg.seed, epoch]))
        if member.pcgrad.enabled:
            # A PCGrad step takes one batch of every task active in this epoch.
            active = sorted(set(steps), key=list(train).index)
            steps = [",".join(active)] * max(1, len(steps) // len(active))
        tasks.append(steps)
        subsets.append(subset)
    return EpochPlan(tasks, subsets)


@dataclass
class TrainResult:
    best_metrics: dict[str, float]
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    # PCGrad's per-step table (PCGrad.step_table) of the first epoch that mixes tasks.
    pcgrad_steps: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class EpochProgress:
    """How far the current epoch got: its steps done, running loss sums and the training
    batches' outputs (for the epoch's train metrics), and its seconds so far."""

    epoch: int
    steps_done: int = 0
    loss_sums: dict[str, list] = field(default_factory=dict)  # task → [sum tensor, count]
    outputs: dict[str, list] = field(default_factory=dict)  # task → [(outputs, indices)]
    seconds: float = 0.0

    def to_state(self) -> dict:
        outputs = {}
        for task, batches in self.outputs.items():
            if batches:
                outputs[task] = {"raw": torch.cat([out for out, _ in batches]),
                                 "index": torch.from_numpy(np.concatenate([i for _, i in batches]))}
        return {"epoch": self.epoch, "steps_done": self.steps_done, "seconds": self.seconds,
                "loss_sums": self.loss_sums, "outputs": outputs}

    @classmethod
    def from_state(cls, state: dict, tasks: list[str], device: torch.device) -> EpochProgress:
        outputs = {task: [] for task in tasks}
        for task, saved in state["outputs"].items():
            outputs[task] = [(saved["raw"].to(device), saved["index"].numpy())]
        loss_sums = {task: [total.to(device), count]
                     for task, (total, count) in state["loss_sums"].items()}
        return cls(state["epoch"], state["steps_done"], loss_sums, outputs, state["seconds"])


class Trainer:
    """Trains one member; ``fit`` resumes from ``checkpoint_dir`` when a checkpoint of the same
    run is there (at an epoch's end or within one)."""

    def __init__(self, member: MemberConfig, data: TaskData, tokenizer, checkpoint_dir: Path,
                 live=None, model: MultitaskModel | None = None):
        self.member = member
        self.cfg = member.train
        self.data = data
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id
        # Both live in the persistent checkpoint dir: a run killed after training but before
        # writing its outputs resumes with nothing to redo.
        self.best_dir = Path(checkpoint_dir) / BEST_DIR
        self.checkpoint_path = Path(checkpoint_dir) / CHECKPOINT_DIR
        self.legacy_checkpoint = Path(checkpoint_dir) / LEGACY_CHECKPOINT
        self.live = live
        self.device = resolve_device(self.cfg.device)
        torch.manual_seed(self.cfg.seed)
        model = model or MultitaskModel(member.model, [member.specs[t] for t in member.tasks])
        self.model = model.to(self.device)
        self.optimizer = build_optimizer(self.model, member)
        self.train_sets = data.split("train")
        self.plan = plan_epochs(member, self.train_sets)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_linear_decay(self.plan.total_steps, self.cfg.warmup_ratio))
        self.pcgrad = None
        self.pcgrad_generator = torch.Generator()
        if member.pcgrad.enabled:
            self.pcgrad = PCGrad(self.model.shared_parameters(), member.tasks,
                                 self.pcgrad_generator)
        self.fingerprint = config_fingerprint(member, data)
        self.result = TrainResult(best_metrics={}, best_epoch=0)
        self._last_checkpoint = (0, time.monotonic())  # (global step, time) of the last one

    # -- checkpoints ---------------------------------------------------------------------
    def _rng_state(self) -> dict:
        state = {"torch": torch.get_rng_state()}  # PCGrad's generator: in its own state
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _save_checkpoint(self, epoch: int, progress: EpochProgress | None = None) -> None:
        """``epoch``: epochs complete; ``progress``: the next one's, when saved within it."""
        save_state({
            "format": CHECKPOINT_FORMAT,
            "fingerprint": self.fingerprint,
            "epoch": epoch,
            "in_epoch": progress.to_state() if progress else None,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": self._rng_state(),
            "pcgrad": self.pcgrad.state_dict() if self.pcgrad else None,
            "result": dataclasses.asdict(self.result),
        }, self.checkpoint_path)
        self.legacy_checkpoint.unlink(missing_ok=True)
        self._last_checkpoint = (self.scheduler.last_epoch, time.monotonic())

    def _checkpoint_due(self) -> bool:
        steps, since = self._last_checkpoint
        every_steps, every_minutes = self.cfg.checkpoint_steps, self.cfg.checkpoint_minutes
        return ((every_steps is not None and self.scheduler.last_epoch - steps >= every_steps)
                or (every_minutes is not None
                    and time.monotonic() - since >= 60 * every_minutes))

    def _best_stamp(self) -> dict | None:
        try:
            return json.loads((self.best_dir / BEST_STAMP).read_text())
        except (OSError, ValueError):
            return None

    def _check_resumable(self, state: dict) -> None:
        """A checkpoint of this run must also be consistent with itself and with best/."""
        epoch, history = state["epoch"], state["result"]["history"]
        best_epoch, in_epoch = state["result"]["best_epoch"], state["in_epoch"]
        problem = None
        if not isinstance(epoch, int) or not 0 <= epoch <= self.cfg.epochs:
            problem = f"epoch {epoch!r} is not within 0…{self.cfg.epochs}"
        elif len(history) != epoch:
            problem = f"{len(history)} epochs of history for epoch {epoch}"
        elif not (best_epoch == 0 if epoch == 0 else 1 <= best_epoch <= epoch):
            problem = f"best epoch {best_epoch} for epoch {epoch}"
        elif in_epoch is not None and not (
                in_epoch["epoch"] == epoch + 1 <= self.cfg.epochs
                and 0 < in_epoch["steps_done"] < len(self.plan.tasks[epoch])):
            problem = f"a position within epoch {in_epoch['epoch']} that its plan does not have"
        elif best_epoch and self._best_stamp() != {"fingerprint": self.fingerprint,
                                                   "epoch": best_epoch}:
            problem = f"{self.best_dir} is not the snapshot of its best epoch {best_epoch}"
        if problem:
            raise CheckpointError(f"{self.checkpoint_path}: inconsistent checkpoint ({problem}); "
                                  f"delete {self.checkpoint_path.parent} to start afresh")

    def _load_checkpoint(self) -> tuple[int, EpochProgress | None]:
        """Restore the run's state; (0, None) and a clean slate when there is none of this run."""
        if self.legacy_checkpoint.exists():
            log.warning("%s: a pickle checkpoint of an earlier version; not loaded (pickles can "
                        "run code), training from the start", self.legacy_checkpoint)
        if not self.checkpoint_path.exists():
            if self.best_dir.exists():  # not this run's: never ship it
                log.warning("%s: a best snapshot without its run's checkpoint; removed, "
                            "training from the start", self.best_dir)
                shutil.rmtree(self.best_dir)
            return 0, None
        state = load_state(self.checkpoint_path, self.device)
        if state.get("format") != CHECKPOINT_FORMAT or state.get("fingerprint") != self.fingerprint:
            log.warning("%s: a checkpoint of another config or data; training from the start",
                        self.checkpoint_path)
            shutil.rmtree(self.best_dir, ignore_errors=True)
            return 0, None
        try:
            self._check_resumable(state)
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.result = TrainResult(**state["result"])
            if self.pcgrad:
                self.pcgrad.load_state_dict(state["pcgrad"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(
                f"{self.checkpoint_path}: does not fit this run ({' '.join(str(exc).split())}"
                f"); delete {self.checkpoint_path.parent} to start afresh") from None
        progress = None
        if state["in_epoch"] is not None:
            progress = EpochProgress.from_state(state["in_epoch"], list(self.train_sets),
                                                self.device)
            # The RNG states of the moment it was saved: dropout and SMART's noise replay.
            torch.set_rng_state(state["rng"]["torch"].cpu())
            if "cuda" in state["rng"] and self.device.type == "cuda":
                torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), self.device)
        log.info("%s: resuming after epoch %d%s", self.checkpoint_path, state["epoch"],
                 f", step {progress.steps_done}" if progress else "")
        return state["epoch"], progress

    # -- training ------------------------------------------------------------------------
    def _batches(self, epoch: int) -> dict[str, object]:
        """An iterator of index batches per task for ``epoch``, as many as the plan uses."""
        steps = self.plan.tasks[epoch - 1]
        iterators = {}
        for k, (task, data) in enumerate(self.train_sets.items()):
            needed = sum(step.split(",").count(task) for step in steps)
            iterators[task] = epoch_batches(
                data, self.plan.subsets[epoch - 1][task], self.cfg.batch_size, needed,
                (self.cfg.seed, epoch, k), self.cfg.length_grouping)
        return iterators

    def _step(self, step_tasks: list[str], iterators: dict, progress: EpochProgress) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        for task in step_tasks:
            index = next(iterators[task])
            batch = collate(self.train_sets[task], index, self.pad_id).to(self.device)
            with autocast(self.device, self.cfg.precision):
                loss, output = task_step_loss(self.model, batch, self.member)
            progress.outputs[task].append((output.detach().float(), index))
            if self.pcgrad:
                self.pcgrad.accumulate(task, loss)
            else:
                loss.backward()
            progress.loss_sums[task][0] += loss.detach().float()
            progress.loss_sums[task][1] += 1
        if self.pcgrad:
            self.pcgrad.combine()
        if self.cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()

    def train_epoch(self, epoch: int, progress: EpochProgress | None = None) -> dict[str, float]:
        """Train ``epoch`` from its start, or from ``progress`` (a resumed checkpoint's)."""
        self.model.train()
        began = time.perf_counter()
        if progress is None:
            # Dropout and PCGrad's task order replay exactly when a run resumes at this epoch.
            torch.manual_seed(self.cfg.seed * 1000 + epoch)
            self.pcgrad_generator.manual_seed(self.cfg.seed * 1000 + epoch)
            zero = torch.zeros((), device=self.device)
            progress = EpochProgress(epoch, loss_sums={t: [zero.clone(), 0] for t in
                                                       self.train_sets},
                                     outputs={t: [] for t in self.train_sets})
        iterators = self._batches(epoch)
        steps = self.plan.tasks[epoch - 1]
        for step in steps[:progress.steps_done]:  # the batches the resumed run already took
            for task in step.split(","):
                next(iterators[task])
        for step in tqdm(steps[progress.steps_done:], initial=progress.steps_done,
                         total=len(steps), unit="step", mininterval=PROGRESS_SECONDS,
                         desc=f"{self.member.name} epoch {epoch}/{self.cfg.epochs}"):
            self._step(step.split(","), iterators, progress)
            progress.steps_done += 1
            if progress.steps_done < len(steps) and self._checkpoint_due():
                progress.seconds += time.perf_counter() - began
                began = time.perf_counter()
                self._save_checkpoint(epoch - 1, progress)
        self.result.train_seconds += progress.seconds + time.perf_counter() - began
        # The epoch's only host synchronisations (bar PCGrad's 3×3 Gram matrix per step).
        losses = {f"train_loss/{task}": float(total) / count
                  for task, (total, count) in progress.loss_sums.items() if count}
        bad = non_finite(losses)
        if bad:
            raise TrainingError(f"{self.member.name}: epoch {epoch}: non-finite training loss "
                                f"{bad}: training diverged; lower train.lr or check the data")
        return {**losses, **self._train_metrics(progress.outputs)}

    def _train_metrics(self, outputs: dict[str, list]) -> dict[str, float]:
        """The dev metrics' formulas (``train/sst_acc`` …) on the epoch's own training outputs,
        read back once. The model changes as it goes, so these are running scores (the training
        side of the paper's Figure 3, train vs dev accuracy), at no extra forward pass."""
        metrics = {}
        for task, batches in outputs.items():
            if batches:
                raw = torch.cat([out for out, _ in batches]).cpu().numpy()
                labels = self.train_sets[task].labels[np.concatenate([i for _, i in batches])]
                spec = self.member.specs[task]
                pred = outputs_to_frame(spec, range(len(raw)), raw)["pred"].to_numpy()
                metrics[f"train/{spec.metric_name}"] = task_metric(spec, pred, labels)
        return metrics

    def evaluate(self, split: str) -> tuple[dict[str, pd.DataFrame], dict[str, float] | None]:
        sets = self.data.split(split)
        frames = {task: predict(self.model, data, self.cfg.eval_batch_size, self.device,
                                self.cfg.precision, self.pad_id) for task, data in sets.items()}
        labelled = {task: data.labels for task, data in sets.items() if data.labels is not None}
        if len(labelled) != len(sets):
            return frames, None
        return frames, score_predictions(frames, labelled, self.member.specs)

    def fit(self) -> TrainResult:
        start_epoch, progress = self._load_checkpoint()
        result = self.result
        for past in result.history:
            self._log(past)
        select = self.cfg.select_by
        for epoch in range(start_epoch + 1, self.cfg.epochs + 1):
            losses = self.train_epoch(epoch, progress)
            progress = None
            began = time.perf_counter()
            dev_predictions, metrics = self.evaluate("dev")
            result.train_seconds += time.perf_counter() - began
            bad = non_finite(metrics)
            if bad:
                raise TrainingError(f"{self.member.name}: epoch {epoch}: dev metric(s) {bad} "
                                    f"not finite, a score that cannot be compared (non-finite "
                                    f"predictions: training diverged); lower train.lr")
            record = {"epoch": epoch, **losses, **{f"dev/{k}": v for k, v in metrics.items()},
                      "lr": self.scheduler.get_last_lr()[0], "seconds": result.train_seconds}
            if self.pcgrad:
                if not result.pcgrad_steps and "," in self.plan.tasks[epoch - 1][0]:
                    steps = self.pcgrad.step_table()
                    steps.insert(0, "epoch", epoch)
                    result.pcgrad_steps = steps.to_dict("list")
                record.update(self.pcgrad.epoch_stats())
            result.history.append(record)
            self._log(record)
            score = metrics.get(select, metrics["overall"])
            if not result.best_metrics or score > result.best_metrics.get(
                    select, result.best_metrics["overall"]):
                result.best_metrics, result.best_epoch = metrics, epoch
                self._save_best(dev_predictions, epoch)
            self._save_checkpoint(epoch)
        if self.live is not None and result.pcgrad_steps:
            write_text(pd.DataFrame(result.pcgrad_steps).to_csv(sep="\t", index=False),
                       Path(self.live.dir) / PCGRAD_STEPS_FILE)
        if self._best_stamp() != {"fingerprint": self.fingerprint, "epoch": result.best_epoch}:
            raise CheckpointError(f"{self.best_dir}: not this run's best snapshot (epoch "
                                  f"{result.best_epoch}); delete {self.best_dir.parent} and "
                                  f"run again")
        return result

    def _save_best(self, dev_predictions: dict[str, pd.DataFrame], epoch: int) -> None:
        """Snapshot the model with its dev predictions, so they need not be computed again,
        stamped with this run's fingerprint and the epoch."""
        with atomic_path(self.best_dir) as tmp:
            save_member(self.model, self.member, self.tokenizer, tmp / "model")
            for task, frame in dev_predictions.items():
                write_parquet(frame, tmp / "predictions" / f"{task}_dev.parquet")
            write_json({"fingerprint": self.fingerprint, "epoch": epoch}, tmp / BEST_STAMP)

    def _log(self, record: dict[str, float]) -> None:
        if self.live is None:
            return
        for name, value in record.items():
            if name != "epoch":
                self.live.log_metric(name, value)
        self.live.next_step()


def run_member(member: MemberConfig, frames: dict[str, dict[str, pd.DataFrame]], out_dir: Path,
               checkpoint_dir: Path, live=None) -> dict[str, float]:
    """Train ``member`` and write its model dir, dev/test predictions and metrics to ``out_dir``.

    Returns the metrics written to ``out_dir/metrics.json``.
    """
    for path, what in ((out_dir, "output"), (checkpoint_dir, "checkpoint")):
        if path.exists() and not path.is_dir():
            raise UserError(f"{path}: not a directory; the {what} directory must be one "
                            f"(move the file away)")
    recover_outputs(out_dir)  # a set whose commit a kill interrupted is finished first
    if member.train.num_threads:
        torch.set_num_threads(member.train.num_threads)
    tokenizer = load_tokenizer(member.model.backbone)
    began = time.perf_counter()
    data = tokenize_member_data(frames, member, tokenizer)
    tokenize_seconds = time.perf_counter() - began
    trainer = Trainer(member, data, tokenizer, checkpoint_dir, live)
    result = trainer.fit()
    best_model, best_predictions = trainer.best_dir / "model", trainer.best_dir / "predictions"
    load_member_weights(trainer.model, best_model)
    metrics = {
        **result.best_metrics,
        "best_epoch": result.best_epoch,
        "train_seconds": round(result.train_seconds, 1),
        "tokenize_seconds": round(tokenize_seconds, 1),
        "train_examples": {task: len(d) for task, d in trainer.train_sets.items()},
    }
    # One set: a kill never leaves this run's model beside an earlier run's predictions.
    with atomic_outputs(out_dir, ["model", "predictions", "metrics.json"]) as tmp:
        shutil.copytree(best_model, tmp["model"])
        shutil.copytree(best_predictions, tmp["predictions"])
        test_predictions, _ = trainer.evaluate("test")
        for task, frame in test_predictions.items():
            write_parquet(frame, tmp["predictions"] / f"{task}_test.parquet")
        write_json(metrics, tmp["metrics.json"])
        (tmp["model"] / CARD_FILE).write_text(model_card(member, metrics))  # this seed's scores
    return metrics
