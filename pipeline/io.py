"""Atomic output writers: every output is written to a temporary name in its directory, then
renamed into place, so a killed stage never leaves a half-written output behind.

A file replaces the old one in one ``os.replace``. A directory cannot be renamed onto a non-empty
one, so the old directory is first renamed aside (``.<name>.old-*``), the new one renamed in, and
the old one deleted: a kill between the two renames leaves the old output aside, and the next
write of that path (or :func:`clean_leftovers`) puts it back before anything else.

Several outputs that belong together (a member's model, predictions and metrics) are committed
as one by :func:`atomic_outputs`: all are staged, a journal naming them is written, then each is
renamed into place. A kill during the renames leaves the journal, and the next start rolls the
set forward from it, so a reader never finds a new model beside stale predictions for longer
than the killed run lasted.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

TMP_MARK, OLD_MARK = ".tmp-", ".old-"
JOURNAL = ".outputs-commit.json"


def _aside(path: Path, mark: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f".{path.name}{mark}", dir=path.parent))


def replace_path(new: Path, path: Path) -> None:
    """Rename ``new`` onto ``path`` (a file or a directory), never leaving ``path`` empty-handed
    but for the instant between two renames, which :func:`clean_leftovers` repairs."""
    if path.is_dir() and not path.is_symlink():
        old = _aside(path, OLD_MARK) / path.name
        os.replace(path, old)
        os.replace(new, path)
        shutil.rmtree(old.parent, ignore_errors=True)
    else:
        os.replace(new, path)


def clean_leftovers(path: str | Path) -> None:
    """Undo what a killed writer of ``path`` left: restore an old directory set aside and never
    replaced, delete temporary and old copies."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    for aside in sorted(path.parent.glob(f".{path.name}{OLD_MARK}*")):
        old = aside / path.name
        if old.exists() and not path.exists():
            os.replace(old, path)
        shutil.rmtree(aside, ignore_errors=True)
    for tmp in path.parent.glob(f".{path.name}{TMP_MARK}*"):
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    Works for files and directories (a directory written at the temporary path replaces the old
    one whole). Leftovers of a killed earlier write of ``path`` are cleaned first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(path)
    tmp = _aside(path, TMP_MARK) / path.name
    try:
        yield tmp
        replace_path(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def recover_outputs(directory: str | Path) -> None:
    """Finish a set of outputs whose commit was killed (:func:`atomic_outputs`); remove the
    staging dirs of sets killed before their commit."""
    directory = Path(directory)
    journal = directory / JOURNAL
    if journal.exists():
        entry = json.loads(journal.read_text())
        stage = directory / entry["stage"]
        for name in entry["names"]:
            clean_leftovers(directory / name)
            if (stage / name).exists():
                replace_path(stage / name, directory / name)
        journal.unlink()
    for stage in directory.glob(f".outputs{TMP_MARK}*"):
        shutil.rmtree(stage, ignore_errors=True)


@contextmanager
def atomic_outputs(directory: str | Path, names: Sequence[str]) -> Iterator[dict[str, Path]]:
    """Yield a temporary path for each of ``names`` (files or directories in ``directory``); on
    success all of them replace the old outputs as one set (see the module docstring)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    recover_outputs(directory)
    stage = Path(tempfile.mkdtemp(prefix=f".outputs{TMP_MARK}", dir=directory))
    try:
        yield {name: stage / name for name in names}
        missing = [name for name in names if not (stage / name).exists()]
        if missing:
            raise RuntimeError(f"atomic_outputs: {missing} not written under {stage}")
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    # From here on the set is committed: a kill leaves the journal to roll forward from.
    write_json({"stage": stage.name, "names": list(names)}, directory / JOURNAL)
    recover_outputs(directory)


def write_parquet(df: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def write_json(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_text(text: str, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
