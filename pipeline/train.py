"""The multitask training loop.

Reads top to bottom in the order it runs: data → model → optimiser → epochs (steps, dev
evaluation, checkpoint) → best model → predictions. AdamW (Loshchilov & Hutter 2019) with linear
warmup and linear decay, gradient clipping, bf16 autocast, per-epoch resumable checkpoints.
Each step's loss is one task's (``task_step_loss``), so regularisers (SMART) and gradient
surgery (PCGrad) work on per-task losses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from pipeline.batching import Batch, TokenizedTask, collate, epoch_batches, tokenize_task
from pipeline.config import MemberConfig
from pipeline.data import SPLITS, load_prepared
from pipeline.evaluate import (
    METRIC_NAMES,
    autocast,
    outputs_to_frame,
    predict,
    score_predictions,
    task_metric,
)
from pipeline.io import atomic_path, write_json, write_parquet, write_text
from pipeline.losses import contrastive_loss, task_loss
from pipeline.model import (
    PAIR_TASKS,
    MultitaskModel,
    cosine_distance,
    resolve_backbone,
)
from pipeline.pcgrad import PCGrad
from pipeline.schedule import data_fraction, epoch_tasks
from pipeline.smart import smart_regularizer

MEMBER_CONFIG_FILE = "bestfit.json"
HEADS_FILE = "heads.safetensors"
CHECKPOINT_FILE = "last.pt"
BEST_DIR = "best"
PCGRAD_STEPS_FILE = "pcgrad_steps.tsv"  # in the DVCLive dir, for the paper's Figure 4
PROGRESS_SECONDS = 30


@dataclass
class TaskData:
    """A member's tokenized data, per task and split (``train``, ``dev``, ``test``)."""

    splits: dict[str, dict[str, TokenizedTask]]

    def split(self, name: str) -> dict[str, TokenizedTask]:
        return {task: splits[name] for task, splits in self.splits.items() if name in splits}


# The extra SST training table each `augment:` source of a member names.
AUGMENT_FILES = {"eda": "eda.parquet", "amazon": "amazon.parquet", "llm": "reviews_labeled.parquet"}


def member_frames(member: MemberConfig, prepared_dir: Path, augmented_dir: Path
                  ) -> dict[str, dict[str, pd.DataFrame]]:
    """The member's tables per task and split; SST train gains the augmented rows it opts into."""
    frames = {task: {split: load_prepared(prepared_dir, task, split) for split in SPLITS}
              for task in member.tasks}
    if member.augment:
        extra = []
        for source in member.augment:
            path = Path(augmented_dir) / AUGMENT_FILES[source]
            if not path.exists():
                raise FileNotFoundError(f"{path}: member {member.name!r} asks for augment "
                                        f"source {source!r}; run its stage first (dvc repro)")
            extra.append(pd.read_parquet(path, columns=["id", "sentence", "label"]))
        base = frames["sst"]["train"]
        frames["sst"]["train"] = pd.concat([base[["id", "sentence", "label"]], *extra],
                                           ignore_index=True)
    return frames


def tokenize_member_data(frames: dict[str, dict[str, pd.DataFrame]], member: MemberConfig,
                         tokenizer) -> TaskData:
    with_singles = member.loss.contrastive_weight > 0
    return TaskData({
        task: {
            split: tokenize_task(task, frame, tokenizer, member.model.max_length,
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
    task = batch.task
    smart_lambda = member.smart.lambda_for(task)
    embeds = model.input_embeddings(batch.inputs) if smart_lambda > 0 else None
    output = model(task, batch.inputs, inputs_embeds=embeds)
    loss = task_loss(task, output, batch.labels, member.loss.ordered_ce_weight)
    if member.loss.contrastive_weight > 0 and task in PAIR_TASKS:
        u, v = (model.embed(enc) for enc in batch.singles)
        loss = loss + member.loss.contrastive_weight * contrastive_loss(
            task, cosine_distance(u, v), batch.labels, member.loss.contrastive_margin,
            member.loss.sts_contrastive_target)
    if smart_lambda > 0:
        regularizer = smart_regularizer(
            lambda perturbed: model(task, batch.inputs, inputs_embeds=perturbed),
            embeds, [enc["attention_mask"] for enc in batch.inputs], task, member.smart, model,
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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def config_fingerprint(member: MemberConfig, data: TaskData) -> str:
    """Identifies a run: a checkpoint is resumed only by a run with the same config and data."""
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(member), sort_keys=True).encode())
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


class Trainer:
    """Trains one member; ``fit`` resumes from ``checkpoint_dir`` when a matching checkpoint
    is there."""

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
        self.checkpoint_path = Path(checkpoint_dir) / CHECKPOINT_FILE
        self.live = live
        self.device = resolve_device(self.cfg.device)
        torch.manual_seed(self.cfg.seed)
        self.model = (model or MultitaskModel(member.model, member.tasks)).to(self.device)
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

    # -- checkpoints ---------------------------------------------------------------------
    def _save_checkpoint(self, epoch: int, result: TrainResult) -> None:
        state = {
            "fingerprint": self.fingerprint,
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "result": dataclasses.asdict(result),
        }
        with atomic_path(self.checkpoint_path) as tmp:
            torch.save(state, tmp)

    def _load_checkpoint(self) -> tuple[int, TrainResult | None]:
        if not self.checkpoint_path.exists():
            return 0, None
        state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
        if state["fingerprint"] != self.fingerprint:
            return 0, None
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        return state["epoch"], TrainResult(**state["result"])

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

    def _step(self, step_tasks: list[str], iterators: dict, loss_sums: dict,
              outputs: dict[str, list]) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        for task in step_tasks:
            index = next(iterators[task])
            batch = collate(self.train_sets[task], index, self.pad_id).to(self.device)
            with autocast(self.device, self.cfg.precision):
                loss, output = task_step_loss(self.model, batch, self.member)
            outputs[task].append((output.detach().float(), index))
            if self.pcgrad:
                self.pcgrad.accumulate(task, loss)
            else:
                loss.backward()
            loss_sums[task][0] += loss.detach().float()
            loss_sums[task][1] += 1
        if self.pcgrad:
            self.pcgrad.combine()
        if self.cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()

    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        # Dropout and PCGrad's task order replay exactly when a run resumes at this epoch.
        torch.manual_seed(self.cfg.seed * 1000 + epoch)
        self.pcgrad_generator.manual_seed(self.cfg.seed * 1000 + epoch)
        iterators = self._batches(epoch)
        zero = torch.zeros((), device=self.device)
        loss_sums = {task: [zero.clone(), 0] for task in self.train_sets}
        outputs = {task: [] for task in self.train_sets}
        steps = self.plan.tasks[epoch - 1]
        for step in tqdm(steps, desc=f"{self.member.name} epoch {epoch}/{self.cfg.epochs}",
                         unit="step", mininterval=PROGRESS_SECONDS):
            self._step(step.split(","), iterators, loss_sums, outputs)
        # The epoch's only host synchronisations (bar PCGrad's 3×3 Gram matrix per step).
        return {**{f"train_loss/{task}": float(total) / count
                   for task, (total, count) in loss_sums.items() if count},
                **self._train_metrics(outputs)}

    def _train_metrics(self, outputs: dict[str, list]) -> dict[str, float]:
        """The dev metrics' formulas (``train/sst_acc`` …) on the epoch's own training outputs,
        read back once. The model changes as it goes, so these are running scores (the training
        side of the paper's Figure 3, train vs dev accuracy), at no extra forward pass."""
        metrics = {}
        for task, batches in outputs.items():
            if batches:
                raw = torch.cat([out for out, _ in batches]).cpu().numpy()
                labels = self.train_sets[task].labels[np.concatenate([i for _, i in batches])]
                pred = outputs_to_frame(task, range(len(raw)), raw)["pred"].to_numpy()
                metrics[f"train/{METRIC_NAMES[task]}"] = task_metric(task, pred, labels)
        return metrics

    def evaluate(self, split: str) -> tuple[dict[str, pd.DataFrame], dict[str, float] | None]:
        sets = self.data.split(split)
        frames = {task: predict(self.model, data, self.cfg.eval_batch_size, self.device,
                                self.cfg.precision, self.pad_id) for task, data in sets.items()}
        labelled = {task: data.labels for task, data in sets.items() if data.labels is not None}
        if len(labelled) != len(sets):
            return frames, None
        return frames, score_predictions(frames, labelled)

    def fit(self) -> TrainResult:
        start_epoch, result = self._load_checkpoint()
        result = result or TrainResult(best_metrics={}, best_epoch=0)
        for past in result.history:
            self._log(past)
        select = self.cfg.select_by
        for epoch in range(start_epoch + 1, self.cfg.epochs + 1):
            began = time.perf_counter()
            losses = self.train_epoch(epoch)
            dev_predictions, metrics = self.evaluate("dev")
            result.train_seconds += time.perf_counter() - began
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
                self._save_best(dev_predictions)
            self._save_checkpoint(epoch, result)
        if self.live is not None and result.pcgrad_steps:
            write_text(pd.DataFrame(result.pcgrad_steps).to_csv(sep="\t", index=False),
                       Path(self.live.dir) / PCGRAD_STEPS_FILE)
        return result

    def _save_best(self, dev_predictions: dict[str, pd.DataFrame]) -> None:
        """Snapshot the model with its dev predictions, so they need not be computed again."""
        with atomic_path(self.best_dir) as tmp:
            save_member(self.model, self.member, self.tokenizer, tmp / "model")
            for task, frame in dev_predictions.items():
                write_parquet(frame, tmp / "predictions" / f"{task}_dev.parquet")

    def _log(self, record: dict[str, float]) -> None:
        if self.live is None:
            return
        for name, value in record.items():
            if name != "epoch":
                self.live.log_metric(name, value)
        self.live.next_step()


def save_member(model: MultitaskModel, member: MemberConfig, tokenizer, directory: Path) -> None:
    """An HF-format dir: the backbone (config + safetensors) and tokenizer, the heads and pooler
    as ``heads.safetensors``, and the member config as ``bestfit.json``."""
    with atomic_path(directory) as tmp:
        model.backbone.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        extra = {n: p.detach().contiguous().cpu() for n, p in model.state_dict().items()
                 if not n.startswith("backbone.")}
        save_file(extra, str(tmp / HEADS_FILE))
        (tmp / MEMBER_CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(member), indent=2))


def load_member_weights(model: MultitaskModel, directory: Path) -> MultitaskModel:
    """Load a saved member's backbone, heads and pooler into ``model`` (built from its config)."""
    # The backbone's own safetensors shards, read straight into the model built from its config.
    backbone_state = {}
    for shard in sorted(Path(directory).glob("model*.safetensors")):
        backbone_state.update(load_file(str(shard)))
    model.backbone.load_state_dict(backbone_state)
    missing, unexpected = model.load_state_dict(load_file(str(directory / HEADS_FILE)),
                                                strict=False)
    if unexpected or any(not n.startswith("backbone.") for n in missing):
        raise ValueError(f"{directory / HEADS_FILE}: does not match the model "
                         f"(missing {missing}, unexpected {unexpected})")
    return model


def load_tokenizer(backbone: str):
    return AutoTokenizer.from_pretrained(resolve_backbone(backbone))


def run_member(member: MemberConfig, frames: dict[str, dict[str, pd.DataFrame]], out_dir: Path,
               checkpoint_dir: Path, live=None) -> dict[str, float]:
    """Train ``member`` and write its model dir, dev/test predictions and metrics to ``out_dir``.

    Returns the metrics written to ``out_dir/metrics.json``.
    """
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
    with atomic_path(out_dir / "model") as tmp:
        shutil.copytree(best_model, tmp)
    with atomic_path(out_dir / "predictions") as tmp:
        shutil.copytree(best_predictions, tmp)
        test_predictions, _ = trainer.evaluate("test")
        for task, frame in test_predictions.items():
            write_parquet(frame, tmp / f"{task}_test.parquet")
    metrics = {
        **result.best_metrics,
        "best_epoch": result.best_epoch,
        "train_seconds": round(result.train_seconds, 1),
        "tokenize_seconds": round(tokenize_seconds, 1),
        "train_examples": {task: len(d) for task, d in trainer.train_sets.items()},
    }
    write_json(metrics, out_dir / "metrics.json")
    return metrics
