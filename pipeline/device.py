"""Where a model runs and in which precision: the one home of the device choice and autocast.

``auto`` is CUDA when torch sees a GPU, else the CPU. Under data parallelism a node's ranks take
consecutive GPUs from the one the device names: local rank r runs on ``cuda:N+r`` for
``cuda:N`` (``cuda`` and ``auto``: N = 0), the GPU ``init_world`` binds NCCL to, so N
processes need GPUs N … N+P−1 to exist (``check_processes`` says so before any is launched).

``auto`` precision is ``bf16`` where the device computes bfloat16 natively (a CUDA GPU that
supports it; a CPU with AVX512-BF16 or AMX-BF16, whose matmuls run bf16 in hardware) and
``fp32`` elsewhere, where bf16 autocast only adds conversions and is slower than fp32.
``bf16`` is autocast to bfloat16 (weights stay fp32); ``fp16`` autocast to float16 with a
dynamic loss scale (``grad_scaler``: the loss is multiplied by S before backward, the gradients
divided by S before the step, which is skipped and S halved when they overflow, S doubled after
2000 clean steps); ``fp32`` runs as is.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from pipeline.config import ConfigError
from pipeline.errors import UserError


def visible_gpus() -> list[str]:
    """The GPUs this process sees, by the ids a child's ``CUDA_VISIBLE_DEVICES`` takes: those
    ours names (CUDA ignores entries past the devices it found), else 0 … n−1."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    named = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
             if d.strip()]
    return (named or [str(i) for i in range(count)])[:count]


def _first_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N`` as a torch device; a data-parallel
    rank takes the GPU of its ``local_rank`` counted from the named one (module docstring). A
    GPU that is not there is a :class:`UserError`, not a CUDA traceback later."""
    device = _first_device(name)
    if device.type != "cuda":
        return device
    index = (device.index or 0) + local_rank
    count = len(visible_gpus())
    if index >= count:
        rank = f" for local rank {local_rank}" if local_rank else ""
        raise UserError(f"device {name!r}{rank}: cuda:{index} does not exist; this process "
                        f"sees {count} GPU(s)")
    if device.index is None and not local_rank:
        return device  # plain `cuda`: the current device, as torch means it
    return torch.device("cuda", index)


def check_processes(name: str, processes: int) -> None:
    """``train.processes`` local ranks fit on the GPUs from ``train.device``'s: a one-line
    :class:`ConfigError` before they are launched. Ranks on the CPU (gloo) need no GPU."""
    device = _first_device(name)
    if device.type != "cuda":
        return
    first, count = device.index or 0, len(visible_gpus())
    if first + processes > count:
        raise ConfigError(f"train.processes: {processes} processes from train.device {name} "
                          f"take cuda:{first}…cuda:{first + processes - 1} (local rank r on "
                          f"cuda:{first}+r), but {count} GPU(s) are visible; lower "
                          f"train.processes or set CUDA_VISIBLE_DEVICES")


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo's names


def cpu_flags(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags as Linux lists them; none where there is no such file."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.split(":")[0].strip() == "flags"
            for flag in line.split(":", 1)[1].split()}


def native_bf16(device: torch.device, flags: set[str] | None = None) -> bool:
    """Whether ``device`` computes bfloat16 in hardware (the module docstring)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return bool(set(CPU_BF16_FLAGS) & (cpu_flags() if flags is None else flags))
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``train.precision`` as it runs on ``device``: ``auto`` becomes bf16 or fp32."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision in AUTOCAST_DTYPES:
        return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])
    return contextlib.nullcontext()


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """fp16's dynamic loss scale (its gradients would underflow unscaled); a no-op otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
