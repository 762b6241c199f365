"""Training throughput of bestfit's loop vs. a plain loop that pads every batch to 128 tokens.

    python bench/bench_train.py [--backbone minilm] [--steps 30] [--batch-size 16]

Both loops train the same model on the same real SST, QQP and STS training batches (round robin,
AdamW, grad clipping). bestfit's is the real trainer (`Trainer.train_epoch`): tokenized once,
length-grouped batches, padding to each batch's longest sequence, bf16 autocast. The plain loop
tokenizes each batch with ``padding="max_length", max_length=128`` and runs in fp32. Each loop
runs in its own process, so peak memory (max RSS on CPU, max allocated on CUDA) is its own.
Prints samples/s, real (non-pad) tokens/s, the mean real tokens per example, the share of padding
in the tokens computed on, and peak memory per loop, and the speed-up.
``bench/bench_hf_trainer.py`` times the same bestfit loop (``run_bestfit``) against Hugging
Face's ``Trainer``.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from pipeline.batching import tokenize_member_data
from pipeline.config import MemberConfig, ModelConfig, TrainConfig, parse_params
from pipeline.data import member_frames, prepare, write_prepared
from pipeline.device import resolve_device
from pipeline.losses import task_loss
from pipeline.model import MultitaskModel, attention_mask, load_tokenizer
from pipeline.train import Trainer

TASKS = ["sst", "qqp", "sts"]
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cs224n"


def bench_member(backbone: str, steps: int, batch_size: int, precision: str, device: str
                 ) -> MemberConfig:
    params = parse_params({"models": {"bench": {"tasks": TASKS}}})
    member = params.models["bench"]
    return dataclasses.replace(
        member,
        model=dataclasses.replace(ModelConfig(), backbone=backbone),
        train=dataclasses.replace(TrainConfig(), epochs=1, batches_per_epoch=steps + WARMUP,
                                  batch_size=batch_size, schedule="round_robin",
                                  precision=precision, device=device, warmup_ratio=0.0),
    )


WARMUP = 3


class Measurement(NamedTuple):
    """One loop's timed steps: what it trained on and how long it took."""

    loop: str
    samples: int
    tokens: int  # real (non-pad) tokens
    padded: int  # tokens computed on: batch size × the batch's padded width, summed
    seconds: float
    peak_mb: float
    threads: int  # torch's intra-op threads as the loop ran

    @property
    def rate(self) -> float:
        return self.samples / self.seconds

    def line(self, ratio: float) -> str:
        """A row under ``table_header``."""
        return (f"{self.loop:<30}{self.rate:>11.1f}{self.tokens / self.seconds:>10.0f}"
                f"{self.tokens / self.samples:>8.1f}{100 * (1 - self.tokens / self.padded):>6.0f}%"
                f"{self.peak_mb:>9.0f}{ratio:>10.2f}x")


def table_header(ratio: str) -> str:
    """The column heads of ``Measurement.line``, the last one ``ratio``: ``len`` is the timed
    batches' mean real tokens per example, ``pad`` the share of padding in the tokens computed."""
    return (f"{'loop':<30}{'samples/s':>11}{'tokens/s':>10}{'len':>8}{'pad':>7}{'peak MB':>9}"
            f"{ratio:>11}")


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_bestfit(args: argparse.Namespace, precision: str, queue: mp.Queue) -> None:
    torch.set_num_threads(args.threads)
    member = bench_member(args.backbone, args.steps, args.batch_size, precision, args.device)
    frames = member_frames(member, args.prepared, args.prepared)
    tokenizer = load_tokenizer(member.model.backbone)
    data = tokenize_member_data(frames, member, tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(member, data, tokenizer, Path(tmp))
        order = trainer.plan.tasks[0]
        iterators = trainer._batches(1)
        progress = trainer._new_progress(1)
        trainer.model.train()
        lengths = {t: d.lengths() for t, d in trainer.train_sets.items()}
        for step in order[:WARMUP]:
            trainer._step([step], iterators, progress)
        samples = tokens = padded = 0
        sync(trainer.device)
        began = time.perf_counter()
        # Same code path as train_epoch, with the batch sizes and lengths counted on the way.
        for step in order[WARMUP:]:
            index = next(iterators[step])
            iterators_one = {step: iter([index])}
            trainer._step([step], iterators_one, progress)
            samples += len(index)
            tokens += int(lengths[step][index].sum())
            padded += len(index) * int(lengths[step][index].max())
        sync(trainer.device)
        seconds = time.perf_counter() - began
    queue.put(Measurement("bestfit " + precision, samples, tokens, padded, seconds,
                          peak_memory_mb(trainer.device), torch.get_num_threads()))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_plain(args: argparse.Namespace, queue: mp.Queue) -> None:
    torch.set_num_threads(args.threads)
    member = bench_member(args.backbone, args.steps, args.batch_size, "fp32", args.device)
    frames = member_frames(member, args.prepared, args.prepared)
    tokenizer = load_tokenizer(member.model.backbone)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = MultitaskModel(member.model, TASKS).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.1)
    rng = np.random.default_rng(0)
    model.train()
    samples = tokens = padded = 0
    began = 0.0
    for step in range(args.steps + WARMUP):
        if step == WARMUP:
            sync(device)
            samples = tokens = padded = 0
            began = time.perf_counter()
        task = TASKS[step % len(TASKS)]
        frame = frames[task]["train"]
        rows = frame.iloc[rng.choice(len(frame), args.batch_size, replace=False)]
        texts = ([rows["sentence"].tolist()] if task == "sst"
                 else [rows["sentence1"].tolist(), rows["sentence2"].tolist()])
        enc = tokenizer(*texts, padding="max_length", truncation=True, max_length=128,
                        return_tensors="pt")
        inputs = [{k: v.to(device) for k, v in enc.items()}]
        labels = torch.tensor(rows["label"].to_numpy(np.float32 if task == "sts" else np.int64),
                              device=device)
        loss = task_loss(task, model(task, inputs), labels, 0.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        samples += len(rows)
        tokens += int(attention_mask(enc).sum())
        padded += attention_mask(enc).numel()
    sync(device)
    seconds = time.perf_counter() - began
    queue.put(Measurement("plain fp32, pad 128", samples, tokens, padded, seconds,
                          peak_memory_mb(device), torch.get_num_threads()))


def loop_arguments(doc: str, backbone: str = "minilm", steps: int = 30,
                   batch_size: int = 16) -> argparse.ArgumentParser:
    """The options every training-loop bench takes (``run_bestfit`` reads them)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--backbone", default=backbone)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data", type=Path, default=DATA)
    return parser


def main() -> None:
    args = loop_arguments(__doc__).parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        args.prepared = Path(tmp)
        write_prepared(prepare(str(args.data), {}, 0, args.prepared / "raw"), args.prepared)
        ctx = mp.get_context("spawn")
        results = []
        jobs = [(run_plain, (args,)), (run_bestfit, (args, "fp32")),
                (run_bestfit, (args, "bf16"))]
        for target, job_args in jobs:
            queue = ctx.Queue()
            proc = ctx.Process(target=target, args=(*job_args, queue))
            proc.start()
            results.append(queue.get())
            proc.join()

    device = resolve_device(args.device)
    print(f"backbone={args.backbone} device={device} threads={args.threads} "
          f"batch={args.batch_size} steps={args.steps} (SST/QQP/STS round robin, real data)")
    print(table_header("speed-up"))
    for result in results:
        print(result.line(result.rate / results[0].rate))


if __name__ == "__main__":
    main()
