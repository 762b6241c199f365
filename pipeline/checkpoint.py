"""Training state on disk without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is a directory of two files: ``tensors.safetensors`` (every tensor of the state, by
a path-like key) and ``state.json`` (the rest: numbers, strings, lists, dicts, with each tensor
replaced by ``{"__tensor__": key}``). Loading parses JSON and safetensors' header and raw buffers
only, so a crafted file can be rejected but never run code, unlike ``torch.load`` of a pickle.
Nested containers round-trip: tuples come back as lists, dicts with non-string keys (an
optimiser's per-parameter state is keyed by int) as ``{"__items__": [[key, value], …]}``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pipeline.errors import UserError, one_line
from pipeline.io import atomic_path

if TYPE_CHECKING:
    from pipeline.batching import TaskData, TokenizedTask
    from pipeline.config import MemberConfig

STATE_FILE, TENSORS_FILE = "state.json", "tensors.safetensors"


class CheckpointError(UserError):
    """A checkpoint on disk cannot be used; the message names it and says what to do."""


def _split(obj: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().contiguous().cpu()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _split(v, f"{key}/{k}", tensors) for k, v in obj.items()}
        return {"__items__": [[k, _split(v, f"{key}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [_split(v, f"{key}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    raise TypeError(f"checkpoint: {key}: cannot store a {type(obj).__name__} without pickle")


def _join(obj: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            if obj["__tensor__"] not in tensors:
                raise CheckpointError(f"{where}: tensor {obj['__tensor__']!r} is missing")
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__float__"}:
            return float(obj["__float__"])
        if set(obj) == {"__items__"}:
            return {k: _join(v, tensors, where) for k, v in obj["__items__"]}
        return {k: _join(v, tensors, where) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join(v, tensors, where) for v in obj]
    return obj


def save_state(state: dict[str, Any], directory: Path) -> None:
    """Write ``state`` (nested dicts, lists, numbers, strings and tensors) to ``directory``,
    atomically: a reader sees the previous checkpoint or this one, never a mix."""
    tensors: dict[str, torch.Tensor] = {}
    plain = _split(state, "", tensors)
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        save_file(tensors, str(tmp / TENSORS_FILE))
        (tmp / STATE_FILE).write_text(json.dumps(plain))


def _reason(exc: Exception) -> str:
    return one_line(exc) or type(exc).__name__


def load_state(directory: Path) -> dict[str, Any]:
    """Read a :func:`save_state` directory; anything unreadable is a :class:`CheckpointError`
    naming the directory and what to do. Every tensor comes back on the CPU, where the
    bookkeeping (batch-plan indices, RNG states) is used; ``load_state_dict`` moves the model's
    and optimiser's to their parameters' device."""
    advice = f"delete {directory} to start this run afresh"
    state_path, tensors_path = directory / STATE_FILE, directory / TENSORS_FILE
    for path in (state_path, tensors_path):
        if not path.is_file():
            what = "missing" if not path.exists() else "not a file"
            raise CheckpointError(f"{path}: incomplete checkpoint ({what}); {advice}")
    try:
        plain = json.loads(state_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{state_path}: unreadable checkpoint state ({_reason(exc)}); "
                              f"{advice}") from None
    try:
        tensors = load_file(str(tensors_path), device="cpu")
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"{tensors_path}: unreadable checkpoint tensors, not a complete "
                              f"safetensors file ({_reason(exc)}); {advice}") from None
    if not isinstance(plain, dict):
        raise CheckpointError(f"{directory}/{STATE_FILE}: expected a JSON object; {advice}")
    return _join(plain, tensors, str(directory))


def rows_digest(sets: dict[str, TokenizedTask]) -> str:
    """Identifies the rows of ``sets`` (task → one split): every row's id, token ids (its text
    as the model reads it) and label."""
    digest = hashlib.sha256()
    for task, data in sorted(sets.items()):
        digest.update(f"{task}\0{len(data)}\0".encode())
        digest.update("\0".join(data.ids).encode())
        for sequences in data.sequences:
            digest.update(np.array([len(s) for s in sequences], np.int64).tobytes())
            digest.update(np.fromiter(itertools.chain.from_iterable(sequences), np.int64)
                          .tobytes())
        if data.labels is not None:
            digest.update(data.labels.tobytes())
    return digest.hexdigest()


def config_fingerprint(member: MemberConfig, data: TaskData) -> str:
    """Identifies a run: a checkpoint is resumed only by a run with the same config and
    training rows. How often it checkpoints, and how a step is computed (processes,
    micro-batches, compiled or not: the same updates) are not part of it, so a run resumes on
    another N. The dev rows are not either: they pick the best epoch but train nothing, so a
    run whose dev rows changed resumes, and its best epoch is scored on the current ones."""
    train = dataclasses.replace(member.train, checkpoint_steps=None, checkpoint_minutes=None)
    config = dataclasses.asdict(dataclasses.replace(member, train=train))
    for how in ("processes", "grad_accum", "compile"):
        del config["train"][how]
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    digest.update(rows_digest(data.split("train")).encode())
    return digest.hexdigest()
