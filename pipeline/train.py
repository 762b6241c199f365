"""The multitask training loop.

Reads top to bottom in the order it runs: data → model → optimiser → epochs (steps, dev
evaluation, checkpoint) → best model → test predictions, returned to the stage that writes them.
The parts it puts together live with their concepts: the objective of one step
(``pipeline.objective``), the optimiser and LR schedule (``pipeline.optim``), the epochs' task
plan (``pipeline.schedule``), the tokenized data and batches (``pipeline.batching``), PCGrad's
gradient surgery (``pipeline.pcgrad``), the device and autocast (``pipeline.device``).

Resumable anywhere: a checkpoint (pickle-free, ``pipeline.checkpoint``) is written at every
epoch's end and every ``checkpoint_steps`` steps / ``checkpoint_minutes`` minutes within one,
with the model, optimiser and scheduler, the position in the epoch's batch plan, the RNG states
and the epoch's running sums, so a run killed at any step resumes to bitwise the outputs of an
uninterrupted one (on the same device and threads). The ``best/`` snapshot carries the
fingerprint of the run that wrote it and is never shipped by another; it is written after its
epoch's checkpoint, which holds the same model, so a kill between the two is repaired from the
checkpoint. Its dev predictions and metrics are those of the dev rows of the current data (a
run whose dev rows changed rescores its best epoch).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from pipeline.aggregation import AggregatedGradients
from pipeline.batching import (
    TaskData,
    TokenizedTask,
    collate,
    epoch_batches,
    tokenize_member_data,
)
from pipeline.checkpoint import (
    CheckpointError,
    config_fingerprint,
    load_state,
    rows_digest,
    save_state,
)
from pipeline.config import MemberConfig, check_max_length
from pipeline.data import capped_index
from pipeline.device import autocast, grad_scaler, resolve_device, resolve_precision
from pipeline.distributed import SINGLE, GradientSync, World, all_reduce_sum, gather, shard
from pipeline.errors import UserError, one_line
from pipeline.evaluate import (
    outputs_to_frame,
    predict,
    score_predictions,
    selection_score,
    task_metric,
)
from pipeline.io import atomic_path, clean_leftovers, write_json, write_parquet
from pipeline.model import MultitaskModel, load_member_weights, load_tokenizer, save_member
from pipeline.objective import task_step_loss
from pipeline.optim import build_optimizer, build_scheduler
from pipeline.pcgrad import PCGrad
from pipeline.schedule import EpochPlan, plan_epochs
from pipeline.tasks import overall_score
from pipeline.trial_channel import STOPPED, report_epoch, stop_requested, trial_dir

CHECKPOINT_DIR = "last"  # in the member's checkpoint dir; pipeline.checkpoint's format
LEGACY_CHECKPOINT = "last.pt"  # a pickle of earlier versions: never loaded
BEST_DIR = "best"
TASK_BEST_DIR = "task_best"  # train.select_per_task: <task>-<epoch>/model, one per task
BEST_STAMP = "run.json"  # in best/: the run's fingerprint, epoch, and its predictions' dev rows
SHIPPED = "shipped.json"  # in the checkpoint dir: the finished run's outputs were committed
CHECKPOINT_FORMAT = 1
CLOCK_STEPS = 20  # under data parallelism, the ranks agree on a time-based checkpoint this often
RANK_SEED_STRIDE = 1_000_003  # rank r's dropout seed: one process's + r·this (a prime)
PROGRESS_SECONDS = 30
SELECT_SEED = 0  # draws train.select_rows' dev sample

log = logging.getLogger("bestfit.train")


def non_finite(values: dict[str, float]) -> dict[str, float]:
    return {name: value for name, value in values.items() if not math.isfinite(value)}


class TrainingError(UserError):
    """Training produced something unusable (a NaN loss or metric); the message says what."""


@dataclass
class TrainResult:
    best_metrics: dict[str, float]
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    # With train.select_rows: the best epoch's scores on the selection sample (best_metrics are
    # then the whole dev set's).
    select_metrics: dict[str, float] = field(default_factory=dict)
    # PCGrad's per-step table (PCGrad.step_table) of the first epoch that mixes tasks.
    pcgrad_steps: dict[str, list[float]] = field(default_factory=dict)
    # The epoch after which a tuning study stopped the run (pipeline/trial_channel.py).
    stopped_after_epoch: int | None = None
    # train.select_per_task: each task's best [score, epoch] by its own metric so far.
    task_best: dict[str, list] = field(default_factory=dict)


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
        """``state`` as ``load_state`` returns it, on the host (the batch indices are used
        there); the outputs and loss sums move to ``device``."""
        outputs = {task: [] for task in tasks}
        for task, saved in state["outputs"].items():
            outputs[task] = [(saved["raw"].to(device), saved["index"].numpy())]
        loss_sums = {task: [total.to(device), count]
                     for task, (total, count) in state["loss_sums"].items()}
        return cls(state["epoch"], state["steps_done"], loss_sums, outputs, state["seconds"])


def selection_sets(dev: dict[str, TokenizedTask], select_rows: dict[str, int]
                   ) -> dict[str, TokenizedTask]:
    """The dev sets the per-epoch evaluation reads: a task capped by ``select_rows`` keeps a
    uniform sample of that many rows, in file order, drawn with a fixed seed (every run, seed
    and variant picks its best epoch on the same rows)."""
    sets = {}
    for task, data in dev.items():
        keep = capped_index(len(data), select_rows.get(task), SELECT_SEED)
        sets[task] = data if keep is None else data.take(keep)
    return sets


def duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


class RunClock:
    """The ETA of the whole run: the steps left at this process's seconds per training step,
    plus the dev evaluations left at their mean so far, plus, under ``train.select_rows``, the
    best epoch's scoring on the whole dev set: a per-epoch evaluation's mean time scaled by
    ``final_eval_ratio``, the whole dev set's rows over the sample's."""

    def __init__(self, plan: EpochPlan, start_epoch: int, steps_done: int,
                 final_eval_ratio: float = 0.0):
        self.plan = plan
        self.epochs_left = len(plan.tasks) - start_epoch
        self.steps_left = sum(len(t) for t in plan.tasks[start_epoch:]) - steps_done
        self.train_seconds = self.eval_seconds = 0.0
        self.steps = self.evals = 0
        self._steps_done = steps_done
        self.final_eval_ratio = final_eval_ratio

    def trained(self, epoch: int, seconds: float) -> None:
        steps = len(self.plan.tasks[epoch - 1]) - self._steps_done
        self._steps_done = 0
        self.steps += steps
        self.steps_left -= steps
        self.train_seconds += seconds

    def evaluated(self, seconds: float) -> None:
        self.evals += 1
        self.epochs_left -= 1
        self.eval_seconds += seconds

    def eta(self) -> float:
        per_step = self.train_seconds / max(1, self.steps)
        per_eval = self.eval_seconds / max(1, self.evals)
        return (self.steps_left * per_step
                + (self.epochs_left + self.final_eval_ratio) * per_eval)

    def summary(self) -> str:
        took = self.train_seconds + self.eval_seconds
        if self.epochs_left:
            left = f", ETA {duration(self.eta())}"
        elif self.final_eval_ratio:
            left = f", ETA {duration(self.eta())} (scoring the best epoch on the whole dev set)"
        else:
            left = ", done"
        return f"{duration(took)} so far (dev eval {duration(self.eval_seconds)})" + left


class Trainer:
    """Trains one member; ``fit`` resumes from ``checkpoint_dir`` when a checkpoint of the same
    run is there (at an epoch's end or within one)."""

    def __init__(self, member: MemberConfig, data: TaskData, tokenizer, checkpoint_dir: Path,
                 live=None, model: MultitaskModel | None = None, world: World = SINGLE):
        self.member = member
        self.world = world
        self.cfg = member.train
        self.data = data
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id
        # Both live in the persistent checkpoint dir: a run killed after training but before
        # writing its outputs resumes with nothing to redo.
        self.best_dir = Path(checkpoint_dir) / BEST_DIR
        self.task_best_dir = Path(checkpoint_dir) / TASK_BEST_DIR
        self.checkpoint_path = Path(checkpoint_dir) / CHECKPOINT_DIR
        self.legacy_checkpoint = Path(checkpoint_dir) / LEGACY_CHECKPOINT
        self.live = live
        self.device = resolve_device(self.cfg.device, world.local_rank)
        torch.manual_seed(self.cfg.seed)  # the same initial heads on every rank
        model = model or MultitaskModel(member.model, [member.specs[t] for t in member.tasks])
        check_max_length(member, getattr(model.backbone.config, "max_position_embeddings", None),
                         getattr(tokenizer, "model_max_length", None))
        self.model = model.to(self.device)
        if self.cfg.compile:  # in place: parameter names (checkpoints, saved members) unchanged
            self.model.backbone.compile(dynamic=True)
        self.optimizer = build_optimizer(self.model, member)
        self.precision = resolve_precision(self.cfg.precision, self.device)
        self.scaler = grad_scaler(self.device, self.precision)
        self.train_sets = data.split("train")
        self.select_sets = selection_sets(data.split("dev"), self.cfg.select_rows)
        self.sampled = [task for task, d in data.split("dev").items()
                        if len(self.select_sets[task]) < len(d)]
        self.plan = plan_epochs(member, self.train_sets)
        # Per-task gradients of the shared parameters, combined by PCGrad or by a TorchJD
        # aggregator / loss weighting (mtl); None: one task's batch per step.
        self.pcgrad: PCGrad | None = None
        self.pcgrad_generator = torch.Generator()
        params = list(self.model.parameters())
        if member.pcgrad.enabled:
            self.pcgrad = PCGrad(self.model.shared_parameters(), member.tasks,
                                 self.pcgrad_generator)
        elif member.mtl.enabled:
            self.pcgrad = AggregatedGradients(
                self.model.shared_parameters(), member.tasks, self.pcgrad_generator, member.mtl,
                heads={t: self.model.head_parameters(t) for t in member.tasks})
            if self.pcgrad.scalarizer_parameters():
                # UW's log-variances learn with the model (on the host, where λ is computed:
                # K numbers), without weight decay, under the same LR schedule.
                self.optimizer.add_param_group(
                    {"params": self.pcgrad.scalarizer_parameters(), "weight_decay": 0.0,
                     "lr": member.mtl.weighting_lr or self.cfg.lr})
        if self.pcgrad is not None:
            shared = {id(q) for q in self.model.shared_parameters()}
            params = [q for q in params if id(q) not in shared]  # the heads: PCGrad.reduce
        self.scheduler = build_scheduler(self.optimizer, self.plan.total_steps,
                                         self.cfg.warmup_ratio)
        self.sync_gradients = GradientSync(params, world)
        self.fingerprint = config_fingerprint(member, data)
        self.dev_digest = rows_digest(data.split("dev"))
        self.result = TrainResult(best_metrics={}, best_epoch=0)
        self._last_checkpoint = (0, time.monotonic())  # (global step, time) of the last one

    # -- checkpoints ---------------------------------------------------------------------
    def _rng_state(self) -> dict:
        state = {"torch": torch.get_rng_state()}  # PCGrad's generator: in its own state
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _save_checkpoint(self, epoch: int, progress: EpochProgress | None = None) -> None:
        """``epoch``: epochs complete; ``progress``: the next one's, when saved within it.
        Collective under data parallelism (every rank's progress is gathered); rank 0 writes."""
        in_epoch = self._global_progress(progress).to_state() if progress else None
        if self.world.is_main:
            self._write_checkpoint(epoch, in_epoch)
        self.world.barrier()
        self._last_checkpoint = (self.scheduler.last_epoch, time.monotonic())

    def _write_checkpoint(self, epoch: int, in_epoch: dict | None) -> None:
        save_state({
            "format": CHECKPOINT_FORMAT,
            "fingerprint": self.fingerprint,
            "epoch": epoch,
            "in_epoch": in_epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": self._rng_state(),
            "pcgrad": self.pcgrad.state_dict() if self.pcgrad else None,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "result": dataclasses.asdict(self.result),
        }, self.checkpoint_path)
        self.legacy_checkpoint.unlink(missing_ok=True)

    def _global_progress(self, progress: EpochProgress) -> EpochProgress:
        """The epoch's progress over all ranks: loss sums summed, training outputs gathered
        (what one process would hold; a resumed run of any size starts from it on rank 0)."""
        if not self.world.distributed:
            return progress
        sums = {}
        for task, (total, count) in progress.loss_sums.items():
            sums[task] = [all_reduce_sum(total.clone(), self.world), count]
        local = {task: [(out.cpu(), index) for out, index in batches]
                 for task, batches in progress.outputs.items()}
        outputs = {task: [] for task in progress.outputs}
        for part in gather(local, self.world):
            for task, batches in part.items():
                outputs[task].extend((out.to(self.device), index) for out, index in batches)
        return EpochProgress(progress.epoch, progress.steps_done, sums, outputs,
                             progress.seconds)

    def _checkpoint_due(self) -> bool:
        steps, since = self._last_checkpoint
        every_steps, every_minutes = self.cfg.checkpoint_steps, self.cfg.checkpoint_minutes
        step = self.scheduler.last_epoch
        if every_steps is not None and step - steps >= every_steps:
            return True
        if every_minutes is None:
            return False
        due = time.monotonic() - since >= 60 * every_minutes
        if self.world.distributed:
            # Clocks differ between ranks and a checkpoint is collective: all decide together,
            # every CLOCK_STEPS steps (a blocking all-reduce each step would cost a host sync).
            if step % CLOCK_STEPS:
                return False
            flag = torch.tensor([float(due)], device=self.device)
            due = bool(all_reduce_sum(flag, self.world).item() > 0)
        return due

    def _best_stamp(self) -> dict | None:
        try:
            stamp = json.loads((self.best_dir / BEST_STAMP).read_text())
        except (OSError, ValueError):
            return None
        return stamp if isinstance(stamp, dict) else None

    def _is_best_of(self, stamp: dict | None, epoch: int) -> bool:
        return bool(stamp) and (stamp.get("fingerprint"), stamp.get("epoch")) == (
            self.fingerprint, epoch)

    def _check_resumable(self, state: dict, stamp: dict | None) -> bool:
        """A checkpoint of this run must also be consistent with itself and with best/ (its
        ``stamp``). True when best/ is to be rebuilt from it: a run killed after writing an
        epoch's checkpoint, before that new best epoch's snapshot (best/ absent or this run's of
        an earlier epoch)."""
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
        rebuild = bool(best_epoch) and best_epoch == epoch and in_epoch is None and (
            stamp is None or (stamp.get("fingerprint") == self.fingerprint
                              and isinstance(stamp.get("epoch"), int) and stamp["epoch"] < epoch))
        if not problem and best_epoch and not self._is_best_of(stamp, best_epoch) \
                and not rebuild:
            problem = f"{self.best_dir} is not the snapshot of its best epoch {best_epoch}"
        if problem:
            raise CheckpointError(f"{self.checkpoint_path}: inconsistent checkpoint ({problem}); "
                                  f"delete {self.checkpoint_path.parent} to start afresh")
        return rebuild

    def _load_checkpoint(self) -> tuple[int, EpochProgress | None]:
        """Restore the run's state; (0, None) and a clean slate when there is none of this run."""
        if self.world.is_main:  # a kill between a write's two renames left the old copy aside
            clean_leftovers(self.checkpoint_path)
            clean_leftovers(self.best_dir)
        self.world.barrier()
        if self.legacy_checkpoint.exists():
            log.warning("%s: a pickle checkpoint of an earlier version; not loaded (pickles can "
                        "run code), training from the start", self.legacy_checkpoint)
        if not self.checkpoint_path.exists():
            if self.world.is_main:
                shutil.rmtree(self.task_best_dir, ignore_errors=True)
            if self.best_dir.exists():  # not this run's: never ship it
                log.warning("%s: a best snapshot without its run's checkpoint; removed, "
                            "training from the start", self.best_dir)
                if self.world.is_main:
                    shutil.rmtree(self.best_dir)
            return 0, None
        state = load_state(self.checkpoint_path)
        if state.get("format") != CHECKPOINT_FORMAT or state.get("fingerprint") != self.fingerprint:
            log.warning("%s: a checkpoint of another config or data; training from the start",
                        self.checkpoint_path)
            if self.world.is_main:
                shutil.rmtree(self.best_dir, ignore_errors=True)
                shutil.rmtree(self.task_best_dir, ignore_errors=True)
            return 0, None
        try:
            rebuild = self._check_resumable(state, self._best_stamp())
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.result = TrainResult(**state["result"])
            if self.pcgrad:
                self.pcgrad.load_state_dict(state["pcgrad"])
            if self.scaler.is_enabled():
                self.scaler.load_state_dict(state["scaler"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(
                f"{self.checkpoint_path}: does not fit this run ({one_line(exc)}"
                f"); delete {self.checkpoint_path.parent} to start afresh") from None
        missing = [f"{t} (epoch {e})" for t, e in self.task_epochs().items()
                   if not (self.task_snapshot(t, e) / "model").is_dir()]
        if missing:
            raise CheckpointError(f"{self.task_best_dir}: no snapshot of the best epoch of "
                                  f"{', '.join(missing)}; delete {self.checkpoint_path.parent} "
                                  f"to start afresh")
        self.world.barrier()  # every rank has read best/'s stamp before rank 0 rewrites it
        self._drop_task_snapshots()
        if rebuild:  # the checkpoint's model is its best epoch's; scored at the end of fit
            log.info("%s: rebuilt from the checkpoint of its best epoch %d", self.best_dir,
                     state["epoch"])
            self._save_best(None, state["epoch"])
        progress = None
        if state["in_epoch"] is not None:
            progress = EpochProgress.from_state(state["in_epoch"], list(self.train_sets),
                                                self.device)
            if self.world.is_main:
                # The RNG states of the moment it was saved: dropout and SMART's noise replay
                # (bitwise in one process; rank 0's state under data parallelism).
                torch.set_rng_state(state["rng"]["torch"].cpu())
                if "cuda" in state["rng"] and self.device.type == "cuda":
                    torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), self.device)
            else:  # the saved outputs and loss sums are every rank's: held once, by rank 0
                progress = self._new_progress(progress.epoch, progress.steps_done,
                                              counts=progress.loss_sums)
                torch.manual_seed(int(np.random.SeedSequence(
                    [self.cfg.seed, progress.epoch, self.world.rank, progress.steps_done]
                ).generate_state(1)[0]))
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

    def _rank_seed(self, epoch: int) -> int:
        """Dropout's seed for ``epoch``: rank 0's is one process's, the others' differ."""
        return self.cfg.seed * 1000 + epoch + RANK_SEED_STRIDE * self.world.rank

    def _new_progress(self, epoch: int, steps_done: int = 0,
                      counts: dict[str, list] | None = None) -> EpochProgress:
        """An epoch's progress with zero loss sums, the batch ``counts`` of a resumed one (the
        same on every rank) kept."""
        zero = torch.zeros((), device=self.device)
        return EpochProgress(epoch, steps_done,
                             loss_sums={t: [zero.clone(), counts[t][1] if counts else 0]
                                        for t in self.train_sets},
                             outputs={t: [] for t in self.train_sets})

    def _step(self, step_tasks: list[str], iterators: dict, progress: EpochProgress) -> None:
        """One optimiser step: per task one batch of ``batch_size``, this rank's share of it
        (``pipeline.distributed``) in ``grad_accum`` micro-batches. A part of n examples of a
        batch of B weighs its mean loss by n/B, so the summed gradients are the batch mean's."""
        self.optimizer.zero_grad(set_to_none=True)
        taken = []  # (task, this rank's parts, the batch's size): FAMO reads them again
        for task in step_tasks:
            batch_index = next(iterators[task])
            index = shard(batch_index, self.world)
            progress.loss_sums[task][1] += 1
            parts = [part for part in np.array_split(index, self.cfg.grad_accum) if len(part)]
            taken.append((task, parts, len(batch_index)))
            if not parts and self.pcgrad:  # fewer examples than ranks: zero gradients here
                self.pcgrad.accumulate(task, None)
            for part in parts:
                batch = collate(self.train_sets[task], part, self.pad_id).to(self.device)
                with autocast(self.device, self.precision):
                    loss, output = task_step_loss(self.model, batch, self.member)
                if len(part) != len(batch_index):
                    loss = loss * (len(part) / len(batch_index))
                progress.outputs[task].append((output.detach().float(), part))
                if self.pcgrad:
                    self.pcgrad.accumulate(task, self.scaler.scale(loss), loss)
                else:
                    self.scaler.scale(loss).backward()
                progress.loss_sums[task][0] += loss.detach().float()
        if self.pcgrad:
            self.pcgrad.reduce(self.world)
        self.sync_gradients()
        if self.pcgrad:
            if isinstance(self.pcgrad, AggregatedGradients) and self.scaler.is_enabled():
                # a loss weighting's own gradient carries the loss scale, as the rows do
                self.pcgrad.grad_scale = float(self.scaler.get_scale())
            self.pcgrad.combine()
        self.scaler.unscale_(self.optimizer)
        if self.cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        self.scaler.step(self.optimizer)  # skipped when an fp16 gradient overflowed
        self.scaler.update()
        self.scheduler.step()
        if isinstance(self.pcgrad, AggregatedGradients) and self.pcgrad.needs_losses_after:
            self.pcgrad.update_after(self._losses_after(taken), self.world)

    def _losses_after(self, taken: list) -> dict[str, torch.Tensor]:
        """The step's task losses on the same batches after its update (FAMO), weighed as the
        step weighed its parts; no gradient."""
        losses = {task: torch.zeros((), device=self.device) for task in self.member.tasks}
        with torch.no_grad():
            for task, parts, size in taken:
                for part in parts:
                    batch = collate(self.train_sets[task], part, self.pad_id).to(self.device)
                    with autocast(self.device, self.precision):
                        loss, _ = task_step_loss(self.model, batch, self.member)
                    losses[task] += loss.float() * (len(part) / size)
        return losses

    def train_epoch(self, epoch: int, progress: EpochProgress | None = None) -> dict[str, float]:
        """Train ``epoch`` from its start, or from ``progress`` (a resumed checkpoint's)."""
        self.model.train()
        began = time.perf_counter()
        if progress is None:
            # Dropout and PCGrad's task order replay exactly when a run resumes at this epoch;
            # PCGrad's orders are the same on every rank.
            torch.manual_seed(self._rank_seed(epoch))
            self.pcgrad_generator.manual_seed(self.cfg.seed * 1000 + epoch)
            progress = self._new_progress(epoch)
        iterators = self._batches(epoch)
        steps = self.plan.tasks[epoch - 1]
        for step in steps[:progress.steps_done]:  # the batches the resumed run already took
            for task in step.split(","):
                next(iterators[task])
        for step in tqdm(steps[progress.steps_done:], initial=progress.steps_done,
                         total=len(steps), unit="step", mininterval=PROGRESS_SECONDS,
                         desc=f"{self.member.name} epoch {epoch}/{self.cfg.epochs}",
                         disable=not self.world.is_main):
            self._step(step.split(","), iterators, progress)
            progress.steps_done += 1
            if progress.steps_done < len(steps) and self._checkpoint_due():
                progress.seconds += time.perf_counter() - began
                began = time.perf_counter()
                self._save_checkpoint(epoch - 1, progress)
        self.result.train_seconds += progress.seconds + time.perf_counter() - began
        if isinstance(self.pcgrad, AggregatedGradients):
            self.pcgrad.end_epoch()
        progress = self._global_progress(progress)
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
        """Predictions for every example of ``split`` and, when labelled, the scores."""
        return self._evaluate(self.data.split(split))

    def _evaluate(self, sets: dict[str, TokenizedTask]
                  ) -> tuple[dict[str, pd.DataFrame], dict[str, float] | None]:
        """Predictions for every example of ``sets`` (each rank predicts its contiguous part,
        gathered in rank order: the sets' own order) and, when labelled, the scores."""
        frames = {}
        for task, data in sets.items():
            rows = shard(np.arange(len(data)), self.world)
            part = (data.rows(int(rows[0]), int(rows[-1]) + 1) if len(rows) else data.rows(0, 0)
                    ) if self.world.distributed else data
            frame = predict(self.model, part, self.cfg.eval_batch_size, self.device,
                            self.precision, self.pad_id)
            frames[task] = (pd.concat(gather(frame, self.world), ignore_index=True)
                            if self.world.distributed else frame)
        labelled = {task: data.labels for task, data in sets.items() if data.labels is not None}
        if len(labelled) != len(sets):
            return frames, None
        return frames, score_predictions(frames, labelled, self.member.specs)

    def fit(self) -> TrainResult:
        start_epoch, progress = self._load_checkpoint()
        self.world.barrier()  # rank 0 may have removed a stale best/ meanwhile
        result = self.result
        dev_rows = sum(len(d) for d in self.data.split("dev").values())
        select_rows = max(1, sum(len(d) for d in self.select_sets.values()))
        clock = RunClock(self.plan, start_epoch, progress.steps_done if progress else 0,
                         dev_rows / select_rows if self.sampled else 0.0)
        for past in result.history:
            self._log(past)
        for epoch in range(start_epoch + 1, self.cfg.epochs + 1):
            began = time.perf_counter()
            losses = self.train_epoch(epoch, progress)
            progress = None
            clock.trained(epoch, time.perf_counter() - began)
            began = time.perf_counter()
            dev_predictions, metrics = self._evaluate(self.select_sets)
            clock.evaluated(time.perf_counter() - began)
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
            score = selection_score(self.member, metrics)
            best = not result.best_metrics or score > selection_score(self.member,
                                                                      result.best_metrics)
            if best:
                result.best_metrics, result.best_epoch = metrics, epoch
            # A task's new best snapshot before the checkpoint that names it: a kill between
            # leaves a snapshot no checkpoint names, removed on resume.
            improved = self._task_improvements(metrics, epoch)
            for task in improved:
                self._save_task_snapshot(task, epoch)
            # The checkpoint first: it holds the new best epoch's model, so a kill before its
            # snapshot is written is repaired from it on resume (_load_checkpoint).
            self._save_checkpoint(epoch)
            if improved:
                self._drop_task_snapshots()
            if best:
                self._save_best(None if self.sampled else dev_predictions, epoch)
            if self.world.is_main:  # what a user waits for, as it comes
                tqdm.write(f"{self.member.name} epoch {epoch}/{self.cfg.epochs}: dev"
                           + (f" (sample of {', '.join(self.sampled)})" if self.sampled else "")
                           + " " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                           + f" · select {self.member.selection_label} {score:.4f}"
                           + (" (best)" if best else "") + f" · {clock.summary()}")
                report_epoch(self.member.name, self.cfg.seed, {**record, "select": score})
            if epoch < self.cfg.epochs and self._stop_requested():
                result.stopped_after_epoch = epoch
                if self.world.is_main:
                    report_epoch(self.member.name, self.cfg.seed, {STOPPED: epoch})
                    tqdm.write(f"{self.member.name}: the tuning study pruned this trial; "
                               f"training ends after epoch {epoch}")
                break
        stamp = self._best_stamp()
        if not self._is_best_of(stamp, result.best_epoch):
            raise CheckpointError(f"{self.best_dir}: not this run's best snapshot (epoch "
                                  f"{result.best_epoch}); delete {self.best_dir.parent} and "
                                  f"run again")
        if stamp.get("dev") != self.dev_digest:  # sampled, rebuilt, or the dev rows changed
            self._score_best_on_dev()
        return result

    # -- train.select_per_task ------------------------------------------------------------
    def _task_improvements(self, metrics: dict[str, float], epoch: int) -> list[str]:
        """The tasks whose own metric is the best so far at ``epoch`` (recorded in the result,
        which the epoch's checkpoint holds)."""
        if not self.cfg.select_per_task:
            return []
        improved = []
        for task in self.member.tasks:
            score = metrics[self.member.specs[task].metric_name]
            best = self.result.task_best.get(task)
            if best is None or score > best[0]:
                self.result.task_best[task] = [score, epoch]
                improved.append(task)
        return improved

    def task_snapshot(self, task: str, epoch: int) -> Path:
        return self.task_best_dir / f"{task}-{epoch}"

    def _save_task_snapshot(self, task: str, epoch: int) -> None:
        if self.world.is_main:
            with atomic_path(self.task_snapshot(task, epoch)) as tmp:
                save_member(self.model, self.member, self.tokenizer, tmp / "model")
        self.world.barrier()

    def _drop_task_snapshots(self) -> None:
        """Remove the snapshots no task's best epoch names (superseded, or a killed epoch's)."""
        if self.world.is_main and self.task_best_dir.is_dir():
            kept = {self.task_snapshot(t, e).name for t, (_, e) in self.result.task_best.items()}
            for path in self.task_best_dir.iterdir():
                if path.name not in kept:
                    shutil.rmtree(path, ignore_errors=True)
        self.world.barrier()

    def task_epochs(self) -> dict[str, int]:
        """Each task's own best epoch (train.select_per_task), else {}."""
        return {t: e for t, (_, e) in self.result.task_best.items()}

    def _stop_requested(self) -> bool:
        """The study's stop, seen alike by every rank (one may see the file before another)."""
        if trial_dir() is None:  # not a trial: every rank has the same environment
            return False
        flag = torch.tensor([float(stop_requested(self.member.name, self.cfg.seed))],
                            device=self.device)
        if self.world.distributed:
            all_reduce_sum(flag, self.world)
        return bool(flag.item() > 0)

    def _score_best_on_dev(self) -> None:
        """The best epoch's model scored on the whole, current dev set, once: it was picked on
        the selection sample, its snapshot was rebuilt without predictions, or its predictions
        are of dev rows that have since changed. Its predictions join the best snapshot (rank 0
        writes)."""
        result = self.result
        load_member_weights(self.model, self.best_dir / "model")
        began = time.perf_counter()
        dev_predictions, metrics = self.evaluate("dev")
        result.train_seconds += time.perf_counter() - began
        if self.world.is_main:
            with atomic_path(self.best_dir / "predictions") as tmp:
                for task, frame in dev_predictions.items():
                    write_parquet(frame, tmp / f"{task}_dev.parquet")
            tqdm.write(f"{self.member.name} best epoch {result.best_epoch} on the whole dev set: "
                       + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                       + f" ({duration(time.perf_counter() - began)})")
        self.world.barrier()
        if self.sampled:
            result.select_metrics = result.best_metrics
        result.best_metrics = metrics

    def _save_best(self, dev_predictions: dict[str, pd.DataFrame] | None, epoch: int) -> None:
        """Snapshot the model with its dev predictions (None: scored later, on the whole dev
        set), stamped with this run's fingerprint, the epoch and the dev rows the predictions
        are of (rank 0 writes, the others wait)."""
        if self.world.is_main:
            with atomic_path(self.best_dir) as tmp:
                save_member(self.model, self.member, self.tokenizer, tmp / "model")
                for task, frame in (dev_predictions or {}).items():
                    write_parquet(frame, tmp / "predictions" / f"{task}_dev.parquet")
                write_json({"fingerprint": self.fingerprint, "epoch": epoch,
                            "dev": None if dev_predictions is None else self.dev_digest},
                           tmp / BEST_STAMP)
        self.world.barrier()

    def _log(self, record: dict[str, float]) -> None:
        if self.live is None:
            return
        for name, value in record.items():
            if name != "epoch":
                self.live.log_metric(name, value)
        self.live.next_step()


def mark_shipped(checkpoint_dir: Path, out_dir: Path) -> None:
    """Record that the finished run in ``checkpoint_dir`` has its outputs committed (in
    ``out_dir``): the stage run again (``dvc repro -f``, changed code) then trains afresh."""
    write_json({"outputs": str(out_dir)}, Path(checkpoint_dir) / SHIPPED)


def discard_shipped(checkpoint_dir: Path) -> None:
    """Remove a shipped run's checkpoint and best snapshot, nothing else of it being needed;
    the marker goes last, so a kill midway leaves it to finish the job."""
    marker = Path(checkpoint_dir) / SHIPPED
    if not marker.is_file():
        return
    log.warning("%s: a finished run whose outputs were committed (%s); not resumed, training "
                "afresh", checkpoint_dir, marker.name)
    for name in (CHECKPOINT_DIR, BEST_DIR, TASK_BEST_DIR):
        clean_leftovers(Path(checkpoint_dir) / name)  # no old copy set aside to come back
        shutil.rmtree(Path(checkpoint_dir) / name, ignore_errors=True)
    marker.unlink()


@dataclass
class TrainedMember:
    """A trained member with its best epoch's weights loaded, and what its stage writes: the
    metrics, the best snapshot (``best_dir``: ``model/`` and the dev ``predictions/``) and the
    test predictions."""

    member: MemberConfig
    model: MultitaskModel
    result: TrainResult
    metrics: dict[str, object]
    best_dir: Path
    test_predictions: dict[str, pd.DataFrame]
    # train.select_per_task: a task's dev and test predictions from its own best epoch, where
    # that is not the saved model's epoch ({task: {"dev": frame, "test": frame}}).
    task_predictions: dict[str, dict[str, pd.DataFrame]] = field(default_factory=dict)


def train_member(member: MemberConfig, frames: dict[str, dict[str, pd.DataFrame]],
                 checkpoint_dir: Path, live=None, world: World = SINGLE) -> TrainedMember:
    """Train ``member`` on ``frames`` (task → split → table), resuming from ``checkpoint_dir``
    when it holds this run's checkpoint; writes nothing but the checkpoints and the best
    snapshot there. Under data parallelism every rank calls it and gets the same result."""
    if checkpoint_dir.exists() and not checkpoint_dir.is_dir():
        raise UserError(f"{checkpoint_dir}: not a directory; the checkpoint directory must be "
                        f"one (move the file away)")
    if member.train.num_threads:
        torch.set_num_threads(member.train.num_threads)
    tokenizer = load_tokenizer(member.model.backbone)
    began = time.perf_counter()
    data = tokenize_member_data(frames, member, tokenizer)
    tokenize_seconds = time.perf_counter() - began
    trainer = Trainer(member, data, tokenizer, checkpoint_dir, live, world=world)
    result = trainer.fit()
    load_member_weights(trainer.model, trainer.best_dir / "model")
    metrics = {
        **result.best_metrics,
        "best_epoch": result.best_epoch,
        "train_seconds": round(result.train_seconds, 1),
        "tokenize_seconds": round(tokenize_seconds, 1),
        "precision": trainer.precision,  # train.precision as it ran (auto: bf16 or fp32)
        "train_examples": {task: len(d) for task, d in trainer.train_sets.items()},
        # What picked the best epoch, and its score on the rows that picked it; `overall`
        # above stays the score over every task of the member.
        "select": {"by": member.train.select_by, "tasks": member.select_tasks,
                   "score": selection_score(member, result.select_metrics or result.best_metrics)},
    }
    if result.stopped_after_epoch is not None:
        metrics["stopped_after_epoch"] = result.stopped_after_epoch
    if result.select_metrics:  # the best epoch's scores on the rows that picked it
        metrics["select_sample"] = {**result.select_metrics,
                                    "rows": {t: len(d) for t, d in trainer.select_sets.items()}}
    test_predictions, _ = trainer.evaluate("test")
    task_predictions = per_task_predictions(trainer, metrics)
    return TrainedMember(member, trainer.model, result, metrics, trainer.best_dir,
                         test_predictions, task_predictions)


def per_task_predictions(trainer: Trainer, metrics: dict) -> dict[str, dict[str, pd.DataFrame]]:
    """train.select_per_task: every task whose own best epoch is not the saved model's is
    predicted (dev, test) by that epoch's snapshot, and its dev score in ``metrics`` replaced
    by that one's (``overall`` recomputed, ``task_best_epoch`` added); the model is then that
    of the best epoch again. Collective under data parallelism."""
    epochs = trainer.task_epochs()
    if not epochs:
        return {}
    member, result = trainer.member, trainer.result
    metrics["task_best_epoch"] = epochs
    found = {}
    for task, epoch in epochs.items():
        if epoch == result.best_epoch:
            continue
        load_member_weights(trainer.model, trainer.task_snapshot(task, epoch) / "model")
        frames, scores = trainer._evaluate({task: trainer.data.split("dev")[task]})
        found[task] = {"dev": frames[task]}
        test = trainer.data.split("test")
        if task in test:
            found[task]["test"] = trainer._evaluate({task: test[task]})[0][task]
        name = member.specs[task].metric_name
        metrics[name] = scores[name]
    if found:
        metrics["overall"] = overall_score(member.specs, metrics)
        load_member_weights(trainer.model, trainer.best_dir / "model")
    return found
