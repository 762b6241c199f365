"""The optimiser and its learning-rate schedule.

AdamW (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization"):
θ ← θ − η_t (m̂_t / (√v̂_t + ε) + λθ), with weight decay λ on weight matrices only (biases and
normalisation weights get none, as BERT's own recipe). η_t = η · f(t) with linear warmup then
linear decay (Devlin et al. 2019): f(t) = (t + 1)/W for t < W, else (T − t)/(T − W), W being
``warmup_ratio``·T for a run of T steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from pipeline.config import MemberConfig


def build_optimizer(model: torch.nn.Module, member: MemberConfig) -> torch.optim.AdamW:
    """AdamW; biases and normalisation weights get no weight decay."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    cfg = member.train
    on_gpu = all(p.is_cuda for p in decay + no_decay)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=tuple(cfg.betas),
        fused=True if on_gpu else None,  # one kernel for all parameters on CUDA
    )


def warmup_linear_decay(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    """LR multiplier: 0 → 1 over the warmup steps, then linearly 1 → 0 at ``total_steps``."""
    warmup = int(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer,
                                             warmup_linear_decay(total_steps, warmup_ratio))
