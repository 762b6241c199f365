"""Where a model runs and in which precision: the one home of the device choice and autocast.

``auto`` is CUDA when torch sees a GPU, else the CPU. ``bf16`` is autocast to bfloat16 (weights
stay fp32); ``fp16`` autocast to float16 with a dynamic loss scale (``grad_scaler``: the loss is
multiplied by S before backward, the gradients divided by S before the step, which is skipped and
S halved when they overflow, S doubled after 2000 clean steps); ``fp32`` runs as is.
"""

from __future__ import annotations

import contextlib

import torch


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N`` as a torch device; a data-parallel
    rank takes the GPU of its ``local_rank`` (torchrun's one process per GPU of a node)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and local_rank:
        return torch.device("cuda", local_rank)
    return torch.device(name)


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision in AUTOCAST_DTYPES:
        return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])
    return contextlib.nullcontext()


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """fp16's dynamic loss scale (its gradients would underflow unscaled); a no-op otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
