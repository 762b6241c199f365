"""Atomic outputs: replace by rename, leftovers of killed writers cleaned, sets of outputs
committed as one (a kill mid-commit is rolled forward at the next start)."""

from __future__ import annotations

import json
import os

import pytest

from pipeline import io
from pipeline.io import (
    JOURNAL,
    atomic_outputs,
    atomic_path,
    clean_leftovers,
    recover_outputs,
    write_json,
)


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
