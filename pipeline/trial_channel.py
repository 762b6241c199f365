"""The side channel between a tuning study (``pipeline/tune.py``) and the training runs of one
of its trials, which DVC runs as stage commands (so nothing but the environment reaches them).

A run started with ``BESTFIT_TRIAL_DIR`` set appends each epoch's record (its dev scores) to
``<dir>/<member>-<seed>.jsonl``, one JSON object per line, and ends its training after the epoch
at which ``<dir>/<member>-<seed>.stop`` exists: the study pruned the trial from that run's
records. The stop is the run's own: the trial's other members (trained later by the same
``dvc exp run``) train in full. Its last line then says after which
epoch it stopped, and it writes its outputs as usual from the best epoch so far (its report
says so too). A stop asked after a run's last epoch changes nothing. Without the
variable, nothing is read or written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

TRIAL_DIR_ENV = "BESTFIT_TRIAL_DIR"
STOPPED = "stopped_after_epoch"  # the key of the last line of a run that stopped


def trial_dir() -> Path | None:
    value = os.environ.get(TRIAL_DIR_ENV)
    return Path(value) if value else None


def epochs_file(directory: Path, member: str, seed: int) -> Path:
    return directory / f"{member}-{seed}.jsonl"


def stop_file(directory: Path, member: str, seed: int) -> Path:
    return directory / f"{member}-{seed}.stop"


def report_epoch(member: str, seed: int, record: Mapping[str, float]) -> None:
    """Append one epoch's record (a line, flushed whole: the study reads complete lines)."""
    directory = trial_dir()
    if directory is None:
        return
    directory.mkdir(parents=True, exist_ok=True)
    with epochs_file(directory, member, seed).open("a") as out:
        out.write(json.dumps(dict(record)) + "\n")


def stop_requested(member: str, seed: int) -> bool:
    directory = trial_dir()
    return directory is not None and stop_file(directory, member, seed).exists()


def read_epochs(directory: Path, member: str, seed: int) -> list[dict[str, float]]:
    """The complete lines written so far (a line being written is left for the next read)."""
    path = epochs_file(directory, member, seed)
    if not path.is_file():
        return []
    text = path.read_text()
    lines = text.split("\n")[:-1] if not text.endswith("\n") else text.split("\n")
    return [json.loads(line) for line in lines if line.strip()]
