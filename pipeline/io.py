"""Atomic output writers: every output is written to a temporary name in its directory, then
renamed into place, so a killed stage never leaves a half-written output behind.

A file replaces the old one in one ``os.replace``. A directory cannot be renamed onto a non-empty
one, so the old directory is first renamed aside (``.<name>.old-*``), the new one renamed in, and
the old one deleted: a kill between the two renames leaves the old output aside, and the next
write of that path (or :func:`clean_leftovers`) puts it back before anything else.

A directory never replaces a file nor a file a directory: ``--output results`` naming an
existing directory is refused, not turned into a file. A path that no temporary name can be
renamed onto (a FIFO, a device, ``/dev/stdout``, ``/proc/self/fd/1``) is written directly.

Several processes may write the same directory at once. Each temporary (and each old copy set
aside) is locked by its writer (``flock`` on the directory itself, so nothing else is written):
the lock is released when the writer ends, however it ends, so cleaning takes only unlocked
ones, those of writers gone. Creating, cleaning and renaming in a directory hold a lock on that
directory for the instant they take, so two writers' renames never interleave.

Several outputs that belong together (a member's model, predictions and metrics) are committed
as one by :func:`atomic_outputs`: all are staged, a journal naming them is written, then each is
renamed into place. A kill during the renames leaves the journal, and the next start rolls the
set forward from it, so a reader never finds a new model beside stale predictions for longer
than the killed run lasted.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import re
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.errors import UserError

TMP_MARK, OLD_MARK = ".tmp-", ".old-"
JOURNAL = ".outputs-commit.json"
STAGE = "outputs"  # a set's staging dir is `.outputs.tmp-*` in its directory


class OutputError(UserError):
    """An output path holding the other kind of thing (a directory where a file is written)."""


# flock excludes other open descriptions of a directory, this process's own too: the
# directories this process holds (those it writes in, its own temporaries) are remembered, so
# that a nested hold is a no-op.
_held: dict[str, int] = {}
_held_guard = threading.RLock()


def _unlock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)  # explicitly: a forked child may share the description
    os.close(fd)


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold ``directory`` against other processes creating, cleaning or renaming in it."""
    key = os.path.realpath(directory)
    with _held_guard:
        if key in _held:
            yield
            return
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _held[key] = fd
            yield
        finally:
            _held.pop(key, None)
            _unlock(fd)


def _new_aside(path: Path, mark: str) -> tuple[Path, str]:
    """A new directory ``.<name><mark>*`` beside ``path``, locked (the mark of a live writer)
    until :func:`_release` is given the key returned with it."""
    with _locked(path.parent):
        aside = Path(tempfile.mkdtemp(prefix=f".{path.name}{mark}", dir=path.parent))
        try:
            fd = os.open(aside, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            shutil.rmtree(aside, ignore_errors=True)
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # new: no one else can hold it
        except OSError:
            os.close(fd)
            shutil.rmtree(aside, ignore_errors=True)
            raise
    key = os.path.realpath(aside)
    with _held_guard:
        _held[key] = fd
    return aside, key


def _release(key: str) -> None:
    with _held_guard:
        _unlock(_held.pop(key))


def _claim(aside: Path) -> int | None:
    """The lock of ``aside`` when its writer is gone (then it is ours to clean), else None."""
    try:
        fd = os.open(aside, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # gone meanwhile, or not a directory of ours
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # a live writer's
        os.close(fd)
        return None
    return fd


def _leftovers(path: Path, mark: str) -> list[Path]:
    return sorted(path.parent.glob(f".{glob.escape(path.name)}{mark}*"))


def _is_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _refuse_kind_change(new: Path, path: Path) -> None:
    """Raise when ``new`` would replace a directory by a file or a file by a directory."""
    if not os.path.lexists(path) or _is_dir(path) == _is_dir(new):
        return
    found, wrote = ("a directory", "a file") if _is_dir(path) else ("a file", "a directory")
    raise OutputError(f"{path}: is {found}, and this output is {wrote}: refusing to replace "
                      f"{found} by {wrote}; move it away or choose another path")


# Other names of an open file descriptor: /dev/stdout, /dev/fd/1, /proc/self/fd/1, /proc/<pid>/fd/N.
_DESCRIPTOR = re.compile(r"/dev/(std(in|out|err)|fd/\d+)|/proc/[^/]+/fd/\d+")


def _through_descriptor(path: Path) -> bool:
    """Whether ``path`` is, or links through, a file descriptor's name (``/dev/stdout``,
    ``/proc/self/fd/1``): an open file, which must be written, not replaced. A regular file
    elsewhere under /dev (``/dev/shm``) is not one."""
    hop = Path(os.path.abspath(path))
    for _ in range(40):  # the kernel's own limit on a chain of links
        if _DESCRIPTOR.fullmatch(str(hop)):
            return True
        if not hop.is_symlink():
            return False
        hop = Path(os.path.abspath(hop.parent / os.readlink(hop)))
    return False


def written_in_place(path: str | Path) -> bool:
    """A FIFO, device, socket or descriptor (``/dev/stdout``, ``/proc/self/fd/1``, or a link
    through one, even when it leads to a regular file): nothing can be renamed onto it, so it is
    written directly."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    if stat.S_ISDIR(mode):
        return False
    return not stat.S_ISREG(mode) or _through_descriptor(Path(path))


def replace_path(new: Path, path: Path) -> None:
    """Rename ``new`` onto ``path`` (a file or a directory), never leaving ``path`` empty-handed
    but for the instant between two renames, which :func:`clean_leftovers` repairs. The kinds
    are checked under the same lock as the renames: another writer's renames in between would
    show ``path`` missing or half-swapped to a check made outside it."""
    with _locked(path.parent):
        _refuse_kind_change(new, path)
        if not os.path.lexists(path) or not (_is_dir(path) or _is_dir(new)):
            os.replace(new, path)
            return
        aside, key = _new_aside(path, OLD_MARK)
        try:
            os.replace(path, aside / path.name)
            os.replace(new, path)
            shutil.rmtree(aside, ignore_errors=True)
        finally:  # a failure between the renames leaves the old copy for clean_leftovers
            _release(key)


def clean_leftovers(path: str | Path) -> None:
    """Undo what a killed writer of ``path`` left: restore an old directory set aside and never
    replaced, delete temporary and old copies. A live writer's are left alone."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    with _locked(path.parent):
        for mark in (OLD_MARK, TMP_MARK):
            for aside in _leftovers(path, mark):
                fd = _claim(aside)
                if fd is None:
                    continue
                try:
                    old = aside / path.name
                    if mark == OLD_MARK and os.path.lexists(old) and not os.path.lexists(path):
                        os.replace(old, path)
                    shutil.rmtree(aside, ignore_errors=True)
                finally:  # a failed restore leaves the copy, unlocked, for the next clean
                    _unlock(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    Works for files and directories (a directory written at the temporary path replaces the old
    one whole); one kind never replaces the other. Leftovers of a killed
    earlier write of ``path`` are cleaned first. A special file is yielded itself.
    """
    path = Path(path)
    if written_in_place(path):
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(path)
    aside, key = _new_aside(path, TMP_MARK)
    try:
        tmp = aside / path.name
        yield tmp
        replace_path(tmp, path)
    finally:
        shutil.rmtree(aside, ignore_errors=True)
        _release(key)


def _roll_forward(directory: Path) -> None:
    """Rename the outputs staged by a set whose journal is in ``directory`` into place."""
    journal = directory / JOURNAL
    if not journal.exists():
        return
    entry = json.loads(journal.read_text())
    stage = directory / entry["stage"]
    for name in entry["names"]:
        clean_leftovers(directory / name)
        if os.path.lexists(stage / name):
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            replace_path(stage / name, directory / name)
    journal.unlink()


def recover_outputs(directory: str | Path) -> None:
    """Finish a set of outputs whose commit was killed (:func:`atomic_outputs`); remove the
    staging dirs of sets whose writer is gone before their commit."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    with _locked(directory):
        _roll_forward(directory)
        for stage in _leftovers(directory / STAGE, TMP_MARK):
            fd = _claim(stage)
            if fd is not None:
                shutil.rmtree(stage, ignore_errors=True)
                _unlock(fd)


@contextmanager
def atomic_outputs(directory: str | Path, names: Sequence[str]) -> Iterator[dict[str, Path]]:
    """Yield a temporary path for each of ``names`` (files or directories in ``directory``, or
    in its subdirectories: ``out/metrics.json``); on success all of them replace the old outputs
    as one set (see the module docstring). Each keeps its kind, file or directory."""
    directory = Path(directory)
    bad = [name for name in names if Path(name).is_absolute() or ".." in Path(name).parts]
    if bad:
        raise ValueError(f"atomic_outputs: {bad} are not paths inside {directory}")
    directory.mkdir(parents=True, exist_ok=True)
    recover_outputs(directory)
    for name in names:
        clean_leftovers(directory / name)
    stage, key = _new_aside(directory / STAGE, TMP_MARK)
    disposable = True  # no journal names the stage's contents
    try:
        paths = {name: stage / name for name in names}
        for tmp in paths.values():
            tmp.parent.mkdir(parents=True, exist_ok=True)
        yield paths
        missing = [name for name in names if not os.path.lexists(paths[name])]
        if missing:
            raise RuntimeError(f"atomic_outputs: {missing} not written under {stage}")
        with _locked(directory):
            for name in names:  # before the journal: a refused set commits nothing
                _refuse_kind_change(paths[name], directory / name)
            write_json({"stage": stage.name, "names": list(names)}, directory / JOURNAL)
            # The set is committed: a kill or failure from here leaves the journal and the
            # staged outputs to roll forward from.
            disposable = False
            _roll_forward(directory)
            disposable = True
    finally:
        if disposable:
            shutil.rmtree(stage, ignore_errors=True)
        _release(key)


def write_parquet(df: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def write_json(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_text(text: str, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
