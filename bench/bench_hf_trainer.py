"""Training throughput of bestfit's loop vs. Hugging Face's ``transformers.Trainer``.

    python bench/bench_hf_trainer.py [--backbone minilm] [--steps 30] [--batch-size 16]
                                     [--threads 2] [--device auto] [--precision auto]
                                     [--repeats 1]

HF's Trainer runs on ``accelerate``: ``pip install -e '.[bench]'``.

Both loops train the same model (``MultitaskModel``, the same backbone and the same initial
heads) on the same objective (``pipeline.objective.task_step_loss``), on the same real SST, QQP
and STS training data tokenized the same way (``model.max_length``, pairs concatenated), in the
same round robin of single-task batches of ``--batch-size``, with the same optimiser and LR
schedule (``pipeline.optim``'s AdamW and linear schedule: HF's Trainer is handed them), the
same gradient clipping (``train.max_grad_norm``) and precision (fp32 on CPU, bf16 autocast on
CUDA, unless ``--precision`` says otherwise). What differs is the loop and its data path:

- bestfit: its own ``Trainer`` steps (``bench_train.run_bestfit``): tokenized once, batches
  grouped by length, each padded to its own longest sequence.
- HF Trainer: ``transformers.Trainer`` the way a HF user sets it up for this model: the model
  wrapped to take a keyword batch and return ``{"loss": ...}`` (``TaskLossModel``), a
  ``torch.utils.data.Dataset`` of tokenized examples per task, and ``DataCollatorWithPadding``
  (padding to each batch's longest sequence). HF's Trainer draws plain batches from one
  dataset, so the tasks' datasets are concatenated and its training sampler is replaced by
  ``RoundRobinSampler``, which orders the indices so that every ``batch_size`` of them is one
  task's batch, drawn by the sampler HF's Trainer itself builds for that task's dataset:
  ``train_sampling_strategy="random"`` (HF's default) and ``"group_by_length"`` (HF's own answer
  to padding waste, ``LengthGroupedSampler``) are both run. TrainingArguments: no evaluation,
  saving or logging (``report_to="none"``), no progress bar, ``dataloader_num_workers=0``, the
  rest at HF's defaults.

Each loop runs in its own spawned process (its own thread pool and allocator) with
``--threads`` torch threads; with ``--repeats`` the loops take turns. The timed part of a loop
starts after ``bench_train.WARMUP`` steps (one per task) and covers ``--steps`` whole steps: for
HF's Trainer from the end of step WARMUP to the end of the last step (``on_step_end``, after a
device sync), which includes fetching and collating every batch and the Trainer's own per-step
work, as bestfit's timing includes its collation; set-up and tear-down are in neither. Prints
samples/s, real (non-pad) tokens/s, the timed batches' mean real tokens per example, the share of
padding in the tokens computed on, peak memory (max RSS on CPU, max allocated on CUDA) and
bestfit's samples/s over each loop's.

HF's ``LengthGroupedSampler`` sorts each mega-batch of 50 batches longest first and does not
shuffle the batches back, so in a window shorter than a mega-batch per task (``--steps`` under
150) its timed batches are the longer part of the data (column ``len``) and its samples/s is
understated; its tokens/s is the figure to compare then. bestfit shuffles its length-sorted
batches, and HF's ``random`` draws plain random batches: their ``len`` is the data's.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import multiprocessing as mp
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import transformers
from bench_train import (
    TASKS,
    WARMUP,
    Measurement,
    bench_member,
    loop_arguments,
    peak_memory_mb,
    run_bestfit,
    sync,
    table_header,
)
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, Dataset, Sampler
from transformers import DataCollatorWithPadding, TrainerCallback, TrainingArguments

from pipeline.batching import Batch, TokenizedTask, tokenize_member_data
from pipeline.config import MemberConfig
from pipeline.data import member_frames, prepare, write_prepared
from pipeline.device import resolve_device
from pipeline.model import MultitaskModel, load_tokenizer
from pipeline.objective import task_step_loss
from pipeline.optim import build_optimizer, build_scheduler

HF_STRATEGIES = ["random", "group_by_length"]
MEGA_BATCH = 50  # batches in a mega-batch of HF's LengthGroupedSampler (for datasets this size)


class TokenizedExamples(Dataset):
    """One task's tokenized examples as HF's collators take them: per example a dict of
    ``input_ids``, ``token_type_ids``, ``attention_mask`` and ``labels``, and the ``task``."""

    def __init__(self, data: TokenizedTask):
        if len(data.sequences) != 1:
            raise ValueError(f"{data.task}: a separately encoded pair is two sequences per "
                             f"example; DataCollatorWithPadding pads one (model.pair_encoding: "
                             f"concat)")
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        ids = self.data.sequences[0][i]
        return {"task": self.data.task, "input_ids": ids,
                "token_type_ids": self.data.token_types[0][i], "attention_mask": [1] * len(ids),
                "labels": self.data.labels[i].item()}


class TaskBatchCollator:
    """``DataCollatorWithPadding`` on a batch of one task's examples, the task passed on."""

    def __init__(self, tokenizer):
        self.pad = DataCollatorWithPadding(tokenizer)

    def __call__(self, features: list[dict]) -> dict:
        tasks = {feature["task"] for feature in features}
        if len(tasks) != 1:
            raise ValueError(f"a batch mixes the tasks {sorted(tasks)}; each must be one task's")
        batch = self.pad([{k: v for k, v in f.items() if k != "task"} for f in features])
        return {**batch, "task": tasks.pop()}


def task_batches(sampler: Sampler[int], batch_size: int) -> Iterator[list[int]]:
    """Full batches of ``sampler``'s indices, pass after pass (a pass's short tail dropped)."""
    if len(sampler) < batch_size:
        raise ValueError(f"{len(sampler)} examples cannot make a batch of {batch_size}")
    while True:
        batch = []
        for index in sampler:
            batch.append(index)
            if len(batch) == batch_size:
                yield batch
                batch = []


class RoundRobinSampler(Sampler[int]):
    """Indices into a ``ConcatDataset`` of per-task datasets for ``steps`` batches, tasks taking
    turns: every ``batch_size`` consecutive indices are one task's batch, drawn by that task's
    own sampler, so a DataLoader's plain batching yields a round robin of single-task batches.
    ``batches`` holds them as (part, indices within the part)."""

    def __init__(self, samplers: list[Sampler[int]], offsets: list[int], batch_size: int,
                 steps: int):
        streams = [task_batches(sampler, batch_size) for sampler in samplers]
        self.offsets = offsets
        self.batches = [(step % len(streams), next(streams[step % len(streams)]))
                        for step in range(steps)]

    def __iter__(self) -> Iterator[int]:
        for part, indices in self.batches:
            yield from (self.offsets[part] + i for i in indices)

    def __len__(self) -> int:
        return sum(len(indices) for _, indices in self.batches)


class RoundRobinTrainer(transformers.Trainer):
    """HF's Trainer on a ``ConcatDataset`` of per-task datasets, in single-task batches that
    take turns, each task's drawn by the sampler HF's Trainer builds for it
    (``train_sampling_strategy``)."""

    round_robin: RoundRobinSampler | None = None

    def _get_train_sampler(self, train_dataset: Dataset | None = None) -> RoundRobinSampler:
        dataset = self.train_dataset if train_dataset is None else train_dataset
        samplers = []
        for part in dataset.datasets:
            samplers.append(super()._get_train_sampler(part))
        offsets = [0, *dataset.cumulative_sizes[:-1]]
        self.round_robin = RoundRobinSampler(samplers, offsets, self.args.train_batch_size,
                                             self.args.max_steps)
        return self.round_robin


class TaskLossModel(nn.Module):
    """A ``MultitaskModel`` as HF's Trainer calls a model: a keyword batch of one task in,
    ``{"loss": ...}`` out, the loss being bestfit's objective (``task_step_loss``)."""

    def __init__(self, model: MultitaskModel, member: MemberConfig):
        super().__init__()
        self.model = model
        self.member = member

    def forward(self, task: str, input_ids: Tensor, attention_mask: Tensor,
                token_type_ids: Tensor, labels: Tensor) -> dict[str, Tensor]:
        inputs = [{"input_ids": input_ids, "attention_mask": attention_mask,
                   "token_type_ids": token_type_ids}]
        batch = Batch(task, np.arange(len(labels)), inputs, labels)
        loss, _ = task_step_loss(self.model, batch, self.member)
        return {"loss": loss}


class StepClock(TrainerCallback):
    """The wall time from the end of optimiser step ``start`` to the end of step ``stop``."""

    def __init__(self, start: int, stop: int, device: torch.device):
        self.start, self.stop, self.device = start, stop, device
        self.marks: dict[int, float] = {}

    def on_step_end(self, args, state, control, **kwargs) -> None:
        if state.global_step in (self.start, self.stop):
            sync(self.device)
            self.marks[state.global_step] = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.marks[self.stop] - self.marks[self.start]


def training_arguments(output_dir: str, member: MemberConfig, steps: int, strategy: str,
                       device: torch.device) -> TrainingArguments:
    """HF's defaults but for the run's length, batch, sampler, clipping, precision and seed, and
    nothing evaluated, saved, logged or shown."""
    cfg = member.train
    return TrainingArguments(
        output_dir=output_dir, max_steps=steps, per_device_train_batch_size=cfg.batch_size,
        train_sampling_strategy=strategy, max_grad_norm=cfg.max_grad_norm,
        bf16=cfg.precision == "bf16", use_cpu=device.type == "cpu", seed=cfg.seed,
        eval_strategy="no", save_strategy="no", logging_strategy="no", report_to="none",
        disable_tqdm=True, dataloader_num_workers=0,
    )


def run_hf(args: argparse.Namespace, strategy: str, queue: mp.Queue) -> None:
    torch.set_num_threads(args.threads)
    member = bench_member(args.backbone, args.steps, args.batch_size, args.precision, args.device)
    frames = member_frames(member, args.prepared, args.prepared)
    tokenizer = load_tokenizer(member.model.backbone)
    data = tokenize_member_data(frames, member, tokenizer).split("train")
    parts = [data[task] for task in member.tasks]
    device = resolve_device(args.device)
    steps = args.steps + WARMUP
    torch.manual_seed(member.train.seed)  # the initial heads bestfit's Trainer draws
    model = MultitaskModel(member.model, [member.specs[t] for t in member.tasks])
    optimizer = build_optimizer(model, member)
    scheduler = build_scheduler(optimizer, steps, member.train.warmup_ratio)
    clock = StepClock(WARMUP, steps, device)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = RoundRobinTrainer(
            model=TaskLossModel(model, member),
            args=training_arguments(tmp, member, steps, strategy, device),
            train_dataset=ConcatDataset([TokenizedExamples(part) for part in parts]),
            data_collator=TaskBatchCollator(tokenizer),
            processing_class=tokenizer,
            optimizers=(optimizer, scheduler),
            callbacks=[clock],
        )
        # With the progress bar off HF prints its end-of-run summary (whose samples/s counts
        # set-up): not this bench's figures.
        trainer.remove_callback(transformers.PrinterCallback)
        trainer.train()
    samples = tokens = padded = 0
    for part, indices in trainer.round_robin.batches[WARMUP:]:
        lengths = parts[part].lengths()[indices]
        samples += len(indices)
        tokens += int(lengths.sum())
        padded += len(indices) * int(lengths.max())
    queue.put(Measurement(f"HF Trainer, {strategy}", samples, tokens, padded, clock.seconds,
                          peak_memory_mb(device), torch.get_num_threads()))


def total(runs: list[Measurement]) -> Measurement:
    """Repeats of one loop summed: their rate is the total samples over the total seconds."""
    first = runs[0]
    return first._replace(samples=sum(r.samples for r in runs), tokens=sum(r.tokens for r in runs),
                          padded=sum(r.padded for r in runs), seconds=sum(r.seconds for r in runs),
                          peak_mb=max(r.peak_mb for r in runs))


def main() -> None:
    parser = loop_arguments(__doc__)
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                        help="auto: bf16 autocast on CUDA, fp32 elsewhere")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of the loops, in turn")
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.precision == "auto":
        args.precision = "bf16" if device.type == "cuda" else "fp32"

    jobs = [(run_bestfit, (args, args.precision))]
    jobs += [(run_hf, (args, strategy)) for strategy in HF_STRATEGIES]
    runs: list[list[Measurement]] = [[] for _ in jobs]
    with tempfile.TemporaryDirectory() as tmp:
        args.prepared = Path(tmp)
        write_prepared(prepare(str(args.data), {}, 0, args.prepared / "raw"), args.prepared)
        ctx = mp.get_context("spawn")
        for _ in range(args.repeats):
            for k, (target, job_args) in enumerate(jobs):
                queue = ctx.Queue()
                proc = ctx.Process(target=target, args=(*job_args, queue))
                proc.start()
                runs[k].append(queue.get())
                proc.join()

    results = [total(r) for r in runs]
    print(f"backbone={args.backbone} device={device} precision={args.precision} "
          f"batch={args.batch_size} steps={args.steps} after {WARMUP} warm-up, "
          f"repeats={args.repeats} (SST/QQP/STS round robin, real data)")
    print(f"threads={args.threads} (torch threads seen in each loop: "
          f"{', '.join(str(r.threads) for r in results)}); torch {torch.__version__}, "
          f"transformers {transformers.__version__}, "
          f"accelerate {importlib.metadata.version('accelerate')}")
    print("HF Trainer: TaskLossModel over MultitaskModel, Dataset of tokenized examples + "
          "DataCollatorWithPadding, train_sampling_strategy as named, bestfit's AdamW and "
          "schedule passed as optimizers, dataloader_num_workers=0, no eval/save/logging")
    print(table_header("bestfit/x"))
    for result in results:
        print(result.line(results[0].rate / result.rate))
    if args.steps < MEGA_BATCH * len(TASKS):
        print(f"group_by_length: fewer than {MEGA_BATCH * len(TASKS)} timed steps take the long "
              f"end of each task's first mega-batch (see len): compare its tokens/s")
    if args.repeats > 1:
        for result, loop_runs in zip(results, runs, strict=True):
            print(f"{result.loop}: samples/s per repeat "
                  + " ".join(f"{r.rate:.1f}" for r in loop_runs))


if __name__ == "__main__":
    main()
