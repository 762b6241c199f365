"""Time of one AdamW step over a member's parameters: PyTorch's three implementations.

    python bench/bench_optimizer.py [--backbone minilm] [--threads 2] [--steps 20]

The parameters are those of a multitask model (SST, QQP, STS heads) on ``--backbone`` with random
gradients; each implementation gets ``pipeline.optim.build_optimizer``'s parameter groups (decay,
no decay, heads' lr), differing only in ``foreach``/``fused``. Prints ms per step and the speed-up
over the for-loop. bestfit uses ``fused`` on CPU and CUDA (``pipeline.optim``).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from pipeline.config import MemberConfig, parse_params
from pipeline.device import resolve_device
from pipeline.model import MultitaskModel
from pipeline.optim import build_optimizer

TASKS = ["sst", "qqp", "sts"]
IMPLEMENTATIONS = {"for-loop": {"foreach": False}, "foreach (multi-tensor)": {"foreach": True},
                   "fused": {"fused": True}}


def time_step(model: torch.nn.Module, member: MemberConfig, options: dict, steps: int,
              device: torch.device) -> float:
    groups = [{"params": g["params"], "lr": g["lr"], "weight_decay": g["weight_decay"]}
              for g in build_optimizer(model, member).param_groups]
    optimizer = torch.optim.AdamW(groups, lr=member.train.lr, **options)
    params = [p for g in groups for p in g["params"]]
    for p in params:
        p.grad = torch.randn_like(p)
    for _ in range(3):  # state allocation and first-call overheads
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - began) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="minilm")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    member = parse_params({"models": {"m": {"tasks": TASKS}}}).models["m"]
    member = dataclasses.replace(member, model=dataclasses.replace(member.model,
                                                                    backbone=args.backbone))
    model = MultitaskModel(member.model, TASKS).to(device)
    count = sum(p.numel() for p in model.parameters())
    print(f"AdamW step over {count / 1e6:.1f}M parameters ({args.backbone}), {device}, "
          f"{torch.get_num_threads()} threads, {args.steps} steps")
    print(f"{'implementation':<26}{'ms/step':>10}{'speed-up':>10}")
    baseline = None
    for name, options in IMPLEMENTATIONS.items():
        seconds = time_step(model, member, options, args.steps, device)
        baseline = baseline or seconds
        print(f"{name:<26}{seconds * 1000:>10.1f}{baseline / seconds:>9.2f}x")


if __name__ == "__main__":
    main()
