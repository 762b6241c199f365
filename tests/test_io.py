"""Atomic outputs: replace by rename, leftovers of killed writers cleaned (a live writer's
kept, even in another process), a file never in place of a directory nor the reverse, special
files written in place, sets of outputs committed as one (a kill mid-commit is rolled forward at
the next start)."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import stat
import threading

import pytest

from pipeline import io
from pipeline.io import (
    JOURNAL,
    OutputError,
    atomic_outputs,
    atomic_path,
    clean_leftovers,
    recover_outputs,
    write_json,
    write_text,
)

SPAWN = multiprocessing.get_context("spawn")  # a fresh interpreter, as a second stage would be


def listing(directory):
    return sorted(p.name for p in directory.iterdir())


def test_directory_is_replaced_whole_and_nothing_is_left_beside_it(tmp_path):
    out = tmp_path / "model"
    for version in ("one", "two"):
        with atomic_path(out) as tmp:
            tmp.mkdir()
            (tmp / f"{version}.txt").write_text(version)
    assert listing(out) == ["two.txt"]
    assert listing(tmp_path) == ["model"]


def test_a_failed_write_keeps_the_old_output(tmp_path):
    out = tmp_path / "metrics.json"
    write_json({"a": 1}, out)
    with pytest.raises(RuntimeError), atomic_path(out) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert json.loads(out.read_text()) == {"a": 1}
    assert listing(tmp_path) == ["metrics.json"]


def test_kill_between_the_renames_leaves_the_old_directory_to_restore(tmp_path, monkeypatch):
    out = tmp_path / "model"
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "old.txt").write_text("old")
    real_replace, calls = os.replace, []

    def killed_after_first_rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the new one would go in now
            raise KeyboardInterrupt("kill -9")
        real_replace(src, dst)

    monkeypatch.setattr(io.os, "replace", killed_after_first_rename)
    with pytest.raises(KeyboardInterrupt), atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
    monkeypatch.setattr(io.os, "replace", real_replace)
    assert not out.exists()  # the instant between the two renames
    clean_leftovers(out)
    assert listing(out) == ["old.txt"]
    assert listing(tmp_path) == ["model"]


def test_temporary_dirs_of_killed_writers_are_removed_at_the_next_write(tmp_path):
    stale = tmp_path / ".predictions.tmp-abc123"
    (stale / "predictions").mkdir(parents=True)
    (stale / "predictions" / "sst_dev.parquet").write_text("half")
    unrelated = tmp_path / ".other.tmp-x"
    unrelated.mkdir()
    with atomic_path(tmp_path / "predictions") as tmp:
        tmp.mkdir()
    assert listing(tmp_path) == [".other.tmp-x", "predictions"]


def write_set(directory, version, fail_at=None):
    with atomic_outputs(directory, ["model", "predictions", "metrics.json"]) as tmp:
        for name in ("model", "predictions"):
            tmp[name].mkdir()
            (tmp[name] / "version").write_text(version)
        tmp["metrics.json"].write_text(json.dumps({"version": version}))


def versions(directory):
    return ((directory / "model" / "version").read_text(),
            (directory / "predictions" / "version").read_text(),
            json.loads((directory / "metrics.json").read_text())["version"])


def test_a_set_replaces_all_its_outputs(tmp_path):
    write_set(tmp_path, "1")
    write_set(tmp_path, "2")
    assert versions(tmp_path) == ("2", "2", "2")
    assert listing(tmp_path) == ["metrics.json", "model", "predictions"]


def test_a_set_killed_before_its_commit_keeps_every_old_output(tmp_path):
    write_set(tmp_path, "1")
    with pytest.raises(KeyboardInterrupt), \
            atomic_outputs(tmp_path, ["model", "predictions", "metrics.json"]) as tmp:
        tmp["model"].mkdir()
        raise KeyboardInterrupt("kill")
    assert versions(tmp_path) == ("1", "1", "1")


def test_a_set_killed_mid_commit_is_rolled_forward_at_the_next_start(tmp_path, monkeypatch):
    write_set(tmp_path, "1")
    real_replace, renamed = io.replace_path, []

    def killed_after_the_model(new, path):
        if path.name == JOURNAL:
            return real_replace(new, path)
        if renamed:
            raise KeyboardInterrupt("kill -9")
        renamed.append(path.name)
        real_replace(new, path)

    monkeypatch.setattr(io, "replace_path", killed_after_the_model)
    with pytest.raises(KeyboardInterrupt):
        write_set(tmp_path, "2")
    monkeypatch.setattr(io, "replace_path", real_replace)
    assert renamed == ["model"] and (tmp_path / JOURNAL).exists()
    assert versions(tmp_path) == ("2", "1", "1")  # what a reader sees until the next start
    recover_outputs(tmp_path)
    assert versions(tmp_path) == ("2", "2", "2")
    assert listing(tmp_path) == ["metrics.json", "model", "predictions"]


def test_a_set_may_name_outputs_in_subdirectories(tmp_path):
    for version in ("1", "2"):
        with atomic_outputs(tmp_path, ["metrics.json", "plots/sst.csv", "predictions"]) as tmp:
            tmp["metrics.json"].write_text(version)
            tmp["plots/sst.csv"].write_text(version)
            tmp["predictions"].mkdir()
            (tmp["predictions"] / "v").write_text(version)
    assert [(tmp_path / name).read_text() for name in
            ("metrics.json", "plots/sst.csv", "predictions/v")] == ["2", "2", "2"]
    assert listing(tmp_path) == ["metrics.json", "plots", "predictions"]
    with pytest.raises(ValueError, match="not paths inside"), \
            atomic_outputs(tmp_path, ["../escape.json"]):
        pass


# -- a file never replaces a directory, nor a directory a file --------------------------------


def test_a_file_never_replaces_a_directory(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "kept.txt").write_text("the user's data")
    with pytest.raises(OutputError) as err:
        write_text("predictions", out)
    assert str(err.value) == (
        f"{out}: is a directory, and this output is a file: refusing to replace a directory by "
        "a file; move it away or choose another path")
    assert listing(out) == ["kept.txt"] and listing(tmp_path) == ["results"]


def test_a_directory_never_replaces_a_file(tmp_path):
    out = tmp_path / "prepared"
    out.write_text("a file of the user's")
    with pytest.raises(OutputError, match="is a file, and this output is a directory"), \
            atomic_path(out) as tmp:
        tmp.mkdir()
    assert out.read_text() == "a file of the user's" and listing(tmp_path) == ["prepared"]


def test_a_set_with_a_kind_change_commits_nothing(tmp_path):
    write_set(tmp_path, "1")
    (tmp_path / "metrics.json").unlink()
    (tmp_path / "metrics.json").mkdir()  # where the set writes a file
    with pytest.raises(OutputError, match="metrics.json: is a directory"):
        write_set(tmp_path, "2")
    assert (tmp_path / "model" / "version").read_text() == "1"
    assert (tmp_path / "predictions" / "version").read_text() == "1"
    assert listing(tmp_path) == ["metrics.json", "model", "predictions"]


# -- special files are written in place ------------------------------------------------------


def test_a_fifo_is_written_in_place(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    write_text("id,pred\na,1\n", fifo)
    reader.join(timeout=30)
    assert got == ["id,pred\na,1\n"]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and listing(tmp_path) == ["pipe"]


def test_a_descriptor_is_written_in_place():
    # /proc/self/fd/N, as `--output /dev/stdout` leads to (a pipe's here: a regression fails to
    # create its temporary in /proc and replaces nothing)
    read_end, write_end = os.pipe()
    with os.fdopen(read_end) as pipe:
        write_json({"a": 1}, f"/proc/self/fd/{write_end}")
        os.close(write_end)
        assert json.loads(pipe.read()) == {"a": 1}


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")
def test_a_regular_file_under_dev_is_replaced_not_appended_to():
    # /dev/shm is a file system of regular files: only a descriptor's name is written in place.
    import tempfile

    directory = tempfile.mkdtemp(dir="/dev/shm")
    try:
        path = os.path.join(directory, "p.csv")
        write_text("old\n", path)
        assert not io.written_in_place(path)  # predict's --output would append to it
        write_text("new\n", path)
        assert open(path).read() == "new\n" and os.listdir(directory) == ["p.csv"]
    finally:
        shutil.rmtree(directory)


# -- several writers of one directory: only a gone writer's leftovers are cleaned -------------


def write_slowly(path, started, proceed):
    """Write the directory ``path`` in two halves, waiting for ``proceed`` between them."""
    with atomic_path(path) as tmp:
        tmp.mkdir()
        (tmp / "first").write_text("slow")
        started.set()
        proceed.wait(60)
        (tmp / "second").write_text("slow")


def test_a_live_writers_temporary_survives_another_writers_cleaning(tmp_path):
    out = tmp_path / "predictions"
    started, proceed = SPAWN.Event(), SPAWN.Event()
    slow = SPAWN.Process(target=write_slowly, args=(out, started, proceed))
    slow.start()
    try:
        assert started.wait(60)
        with atomic_path(out) as tmp:  # cleans the leftovers of out first
            tmp.mkdir()
            (tmp / "quick").write_text("quick")
        assert listing(out) == ["quick"]
        others = [p.name for p in tmp_path.iterdir() if p.name != "predictions"]
        assert len(others) == 1 and others[0].startswith(".predictions.tmp-")  # kept
    finally:
        proceed.set()
        slow.join(60)
    assert slow.exitcode == 0
    assert listing(out) == ["first", "second"]  # the slow one committed last
    assert listing(tmp_path) == ["predictions"]


def test_a_killed_writers_temporary_is_cleaned(tmp_path):
    out = tmp_path / "predictions"
    started, never = SPAWN.Event(), SPAWN.Event()
    writer = SPAWN.Process(target=write_slowly, args=(out, started, never))
    writer.start()
    assert started.wait(60)
    os.kill(writer.pid, signal.SIGKILL)
    writer.join(60)
    assert len(listing(tmp_path)) == 1  # its temporary, half written
    with atomic_path(out) as tmp:
        tmp.mkdir()
    assert listing(tmp_path) == ["predictions"]


TABLES = [f"t{k}.parquet" for k in range(9)]


def write_tables(path, writer: str, times: int) -> None:
    for n in range(times):
        with atomic_path(path) as tmp:
            tmp.mkdir()
            for name in TABLES:
                (tmp / name).write_text(f"{writer} {n}")


def test_two_processes_writing_one_directory_both_finish_whole(tmp_path):
    out = tmp_path / "prepared"
    writers = [SPAWN.Process(target=write_tables, args=(out, name, 40)) for name in "ab"]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(120)
    assert [writer.exitcode for writer in writers] == [0, 0]
    assert listing(out) == TABLES
    # the last commit, whole: every table from one writer's last write
    assert len({(out / name).read_text() for name in TABLES}) == 1
    assert listing(tmp_path) == ["prepared"]
