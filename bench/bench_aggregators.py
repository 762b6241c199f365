"""Cost of combining a step's per-task gradients: bestfit's PCGrad against each TorchJD
aggregator and loss weighting (pipeline/aggregation.py), on the shared parameters of a real
backbone.

    python bench/bench_aggregators.py [--backbone minilm|bert-base-random|DIR] [--steps 20]
                                      [--threads N] [--device cpu|cuda] [--aggregators NAME ...]

What differs between the methods is ``combine`` (the Gramian's K(K+1)/2 dot products over the
shared parameters, the weighting's solve on the K×K Gramian or the K×P rows, and the weighted
sum written into ``.grad``); the forward and backward passes before it are the same for all,
so they are not timed. Each step refills the K = 3 task rows (SST, QQP, STS) with gradients
drawn around a shared direction (task scales 1, 3 and 0.5, pairwise cosines from −0.3 to 0.6,
so that some pairs conflict) and times ``combine`` alone: the median over ``--steps`` after 2
warm-up steps, in ms, and its ratio to PCGrad's. A method whose optional dependency is missing
is listed as skipped.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pipeline.aggregation import AggregatedGradients
from pipeline.config import ConfigError, ModelConfig, MtlConfig
from pipeline.model import MultitaskModel
from pipeline.mtl_methods import AGGREGATORS
from pipeline.pcgrad import PCGrad
from pipeline.tasks import default_tasks

TASKS = ["sst", "qqp", "sts"]
OPTIONS = {"cagrad": {"c": 0.5}, "fairgrad": {"alpha": 1.0}}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="minilm")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--aggregators", nargs="+", default=sorted(AGGREGATORS),
                        choices=sorted(AGGREGATORS))
    return parser.parse_args()


def task_grads(shared: list[torch.nn.Parameter], step: int) -> list[list[torch.Tensor]]:
    """Per task, one gradient per shared parameter: a·common + b·own, scaled per task."""
    gen = torch.Generator().manual_seed(step)
    mix = [(1.0, 0.8), (3.0, -0.5), (0.5, 0.4)]  # (scale, weight of the common direction)
    grads = [[] for _ in TASKS]
    for p in shared:
        common = torch.randn(p.shape, generator=gen)
        for k, (scale, a) in enumerate(mix):
            own = torch.randn(p.shape, generator=gen)
            grads[k].append((scale * (a * common + (1 - a * a) ** 0.5 * own)).to(p.device))
    return grads


def time_combine(combiner: PCGrad, shared: list[torch.nn.Parameter], steps: int,
                 device: torch.device) -> float:
    times = []
    for step in range(steps + 2):
        grads = task_grads(shared, step % 4)
        for task, rows in zip(TASKS, grads, strict=True):
            for p, g in zip(shared, rows, strict=True):
                p.grad = g.clone()
            combiner.accumulate(task, None, torch.tensor(1.0 + step % 3, device=device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        combiner.combine()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= 2:
            times.append(time.perf_counter() - began)
    return 1000 * statistics.median(times)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    specs = default_tasks()
    model = MultitaskModel(ModelConfig(backbone=args.backbone), {t: specs[t] for t in TASKS})
    model.to(device)
    shared = model.shared_parameters()
    print(f"{args.backbone}: {sum(p.numel() for p in shared) / 1e6:.1f}M shared parameters, "
          f"{len(TASKS)} tasks, {device}, {torch.get_num_threads()} threads; median combine "
          f"over {args.steps} steps")
    base = time_combine(PCGrad(shared, TASKS, torch.Generator().manual_seed(0)), shared,
                        args.steps, device)
    print(f"{'pcgrad (bestfit)':<24} {base:8.1f} ms  1.00×")
    runs = [MtlConfig(aggregator=name, aggregator_options=OPTIONS.get(name, {}))
            for name in args.aggregators]
    runs += [MtlConfig(weighting="uw"), MtlConfig(weighting="dwa"),
             MtlConfig(aggregator="upgrad", weighting="uw")]
    for mtl in runs:
        label = "+".join(x for x in (mtl.aggregator, mtl.weighting if mtl.weighting != "fixed"
                                     else None) if x)
        try:
            combiner = AggregatedGradients(shared, TASKS, torch.Generator().manual_seed(0), mtl)
        except ConfigError as exc:
            print(f"{label:<24} skipped: {exc}")
            continue
        ms = time_combine(combiner, shared, args.steps, device)
        print(f"{label:<24} {ms:8.1f} ms  {ms / base:.2f}×")


if __name__ == "__main__":
    main()
