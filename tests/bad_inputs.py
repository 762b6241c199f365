"""A corpus of broken inputs, each run as a real stage subprocess and classified by verdict.

    .venv/bin/python tests/bad_inputs.py [--only SUBSTRING] [--jobs N] [--keep] [--list]

Every case writes one broken thing (a params value, a data file, a review source, a checkpoint,
a killed run's leftovers) into a fresh copy of a minimal valid workspace (tiny CS224N files, a
tiny random BERT, a params.yaml sized so that training takes seconds), runs one stage with a
timeout and judges what it did against the project's conventions:

- ``error``: exit code != 0, no traceback, and the last stderr line is the one line
  ``<stage>: error: <message>`` holding every fragment the case expects (file, line, byte
  offset, params key, value);
- ``counted``: exit 0 and the stage's report counts the rejection;
- ``handled``: exit 0, the expected notice on stderr (if any) and correct outputs.

The bad verdicts: ``silent`` (exit 0 where an error, a count or a notice was expected),
``traceback`` (a Python traceback, or a failure without exactly one final error line),
``hang`` (timeout), ``misleading`` (a one-line error missing an expected fragment), ``wrong``
(wrong outputs afterwards, or an error where the input should have been accepted), ``unsafe``
(a crafted pickle ran code) and ``no-setup`` (the valid baseline the case needs failed).

The runner prints a table and per-verdict counts and exits 1 when any verdict is bad.
``tests/test_bad_inputs.py`` runs the cases that train nothing under pytest.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import AMAZON, CS224N, make_tiny_bert  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ROWS = 24  # data rows kept in each tiny CS224N file (line 1 is the header)
REVIEW_LINES = 60
PYTHON = sys.executable
TRAIN_TIMEOUT, OTHER_TIMEOUT = 120.0, 60.0
GOOD = ("error", "counted", "handled")
BAD = ("silent", "traceback", "hang", "misleading", "wrong", "unsafe", "no-setup")
MARKER = "PICKLE-RAN"  # created in the workspace if a crafted pickle is ever unpickled
JOURNAL = ".outputs-commit.json"  # the journal of a set of outputs being committed

SST_TRAIN, SST_DEV = "ids-sst-train.csv", "ids-sst-dev.csv"
QQP_TRAIN, QQP_DEV = "quora-train.csv", "quora-dev.csv"
STS_TRAIN, STS_DEV = "sts-train.csv", "sts-dev.csv"
NOT_FOUND = ("not found", "no such", "missing", "does not exist")
HEADER_ONLY = ("row", "empty", "header", "example")


def at_byte(offset: int) -> Fragment:
    """The real (0-based) byte offset in the file, however the message words it."""
    return (f"byte {offset}", f"offset {offset}")
ALLOWED_POSITIVE = ("≥ 1", ">= 1", "at least 1", "positive")

# Fragment: a string that must occur, or a tuple of alternatives of which one must occur
# (case-insensitive; a number never matches inside a longer number).
Fragment = str | tuple[str, ...]


# --- the minimal valid workspace ---------------------------------------------------------


def base_params() -> dict[str, Any]:
    """A params.yaml for seconds-long CPU training of a tiny BERT on the tiny files."""
    return {
        "data": {"source": "cs224n", "train_rows": {}, "dev_rows": {}, "seed": 11},
        "seeds": [11],
        "model": {"backbone": "tiny-bert", "max_length": 64,
                  "head": {"layers": 1, "hidden": None, "dropout": 0.1}},
        "train": {"epochs": 2, "batches_per_epoch": 2, "batch_size": 4, "eval_batch_size": 64,
                  "lr": 1.0e-3, "betas": [0.9, 0.999], "schedule": "custom",
                  "custom": {"task": "qqp", "fraction": 0.5, "epochs": 1},
                  "precision": "fp32", "device": "cpu", "num_threads": 1,
                  "checkpoint_minutes": None},
        "smart": {"lambda": 0.0},
        "augment": {"reviews": {"source": "reviews", "selection": "random", "per_label": 5,
                                "max_candidates_per_label": 50, "length_bins": 3,
                                "cache_dir": None, "device": "cpu"}},
        "models": {"multitask": {"tasks": ["sst", "qqp", "sts"], "augment": []},
                   "sst_single": {"tasks": ["sst"], "train": {"schedule": "round_robin"}}},
        "ensemble": {"sst": ["sst_single"], "qqp": ["multitask"], "sts": ["multitask"]},
    }


def write_params(ws: Path, params: dict[str, Any]) -> None:
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


# Each stage's command line in a workspace (relative paths; cwd is the workspace).
STAGE_ARGS: dict[str, tuple[str, list[str], dict[str, str]]] = {
    "prepare": ("stages/prepare.py", [],
                {"--source": "cs224n", "--out": "prep_out", "--params": "params.yaml"}),
    "train": ("stages/train.py", ["multitask", "--no-live"],
              {"--seed": "11", "--prepared": "prepared", "--augmented": "augmented",
               "--out": "out", "--checkpoints": "checkpoints", "--params": "params.yaml"}),
    "filter_reviews": ("stages/filter_reviews.py", ["--no-progress"],
                       {"--source": "reviews", "--prepared": "prepared", "--out": "augmented",
                        "--params": "params.yaml"}),
    # The predict CLI: a case gives its model dir, task and input through ``args``/``stdin``.
    "bestfit-predict": ("scripts/predict.py", [], {}),
    "ensemble": ("stages/ensemble.py", [],
                 {"--prepared": "prepared", "--models": "models", "--metrics": "metrics.json",
                  "--predictions": "predictions", "--submission": "submission",
                  "--plots": "plots", "--cards": "cards", "--params": "params.yaml"}),
}


def stage_command(stage: str, options: dict[str, str], args: Sequence[str] = ()) -> list[str]:
    script, flags, defaults = STAGE_ARGS[stage]
    cmd = [PYTHON, str(ROOT / script), *flags, *args]
    for option, value in {**defaults, **options}.items():
        cmd += [option, value]
    return cmd


def stage_env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@dataclass
class Proc:
    rc: int | None  # None: killed at the timeout
    stderr: str
    seconds: float


STDOUT = "stage.stdout"  # the stage's stdout, kept in its workspace for the checks


def run_stage(stage: str, ws: Path, options: dict[str, str], timeout: float,
              args: Sequence[str] = (), stdin: str = "") -> Proc:
    """Run ``stage`` in ``ws`` with ``stdin`` as its standard input (never the runner's own: a
    prompt must not wait on a terminal); at the timeout its whole process group is killed."""
    began = time.monotonic()
    with (ws / STDOUT).open("wb") as out:
        proc = subprocess.Popen(stage_command(stage, options, args), cwd=ws, env=stage_env(),
                                stdin=subprocess.PIPE, stdout=out, stderr=subprocess.PIPE,
                                text=True, errors="replace", start_new_session=True)
    try:
        _, stderr = proc.communicate(stdin, timeout=timeout)
        rc: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        rc = None
    return Proc(rc, stderr, time.monotonic() - began)


def head_lines(src: Path, dst: Path, rows: int) -> None:
    """The header and the first ``rows`` lines of ``src``."""
    with src.open(newline="") as fin:
        lines = [line for _, line in zip(range(rows + 1), fin, strict=False)]
    dst.write_text("".join(lines), newline="")


class Templates:
    """The valid workspaces cases start from, built once on first use: ``base`` (tiny files,
    reviews, params, prepared tables), ``model`` (base + the tiny BERT the params name) and
    ``trained`` (model + a finished run's ``out/`` and ``checkpoints/``)."""

    def __init__(self, root: Path):
        self.root = root
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()  # guards _locks
        self._built: dict[str, Path | str] = {}

    def get(self, name: str) -> Path:
        with self._lock:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:  # one lock per template: cases on a built one never wait for another
            if name not in self._built:
                try:
                    self._built[name] = getattr(self, f"_build_{name}")()
                except Exception as exc:  # a broken baseline: every case on it is no-setup
                    self._built[name] = f"{type(exc).__name__}: {exc}"
            built = self._built[name]
        if isinstance(built, str):
            raise SetupError(f"template {name!r}: {built}")
        return built

    def _build_base(self) -> Path:
        ws = self.root / "base"
        (ws / "cs224n").mkdir(parents=True)
        for src in sorted(CS224N.glob("*.csv")):
            head_lines(src, ws / "cs224n" / src.name, ROWS)
        (ws / "reviews").mkdir()
        for src in sorted(AMAZON.glob("*.jsonl")):
            head_lines(src, ws / "reviews" / src.name, REVIEW_LINES - 1)
        (ws / "augmented").mkdir()
        write_params(ws, base_params())
        proc = run_stage("prepare", ws, {"--out": "prepared"}, OTHER_TIMEOUT)
        if proc.rc != 0:
            raise SetupError(f"the valid baseline's prepare failed ({proc.rc}): "
                             f"{proc.stderr[-2000:]}")
        report = json.loads((ws / "prepared" / "report.json").read_text())
        for task, splits in report["tasks"].items():
            for split, r in splits.items():
                if not r["missing"] and (r["rows_read"], r["rows_rejected"]) != (ROWS, 0):
                    raise SetupError(f"baseline {task} {split}: {r}")
        return ws

    def _build_model(self) -> Path:
        from transformers.utils import logging as hf_logging

        ws = self.root / "model"
        shutil.copytree(self.get("base"), ws, symlinks=True)
        hf_logging.disable_progress_bar()  # no shard-writing bar in the runner's table
        make_tiny_bert(ws / "tiny-bert")
        return ws

    def _build_trained(self) -> Path:
        ws = self.root / "trained"
        shutil.copytree(self.get("model"), ws, symlinks=True)
        proc = run_stage("train", ws, {}, 3 * TRAIN_TIMEOUT)
        if proc.rc != 0 or not (ws / "checkpoints" / "last" / "state.json").is_file():
            raise SetupError(f"the valid baseline's training failed ({proc.rc}): "
                             f"{proc.stderr[-2000:]}")
        # As if killed after training, before its outputs were marked committed: its checkpoint
        # is resumed by the cases (a shipped run's is discarded, the stage training afresh).
        (ws / "checkpoints" / "shipped.json").unlink()
        return ws


class SetupError(RuntimeError):
    """The valid workspace a case starts from could not be built."""


# --- cases -------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    kind: str  # params / data file / review source / checkpoint / outputs
    stage: str
    expect: str  # error / counted / handled
    # Writes the broken thing into the workspace; may return extra fragments it computed.
    setup: Callable[[Path], list[Fragment] | None]
    fragments: tuple[Fragment, ...] = ()  # in the error line (error) or on stderr (handled)
    # The outputs afterwards (an error's too): a problem, or None when they are right.
    check: Callable[[Path], str | None] | None = None
    options: dict[str, str] = field(default_factory=dict)  # the stage's command-line overrides
    args: tuple[str, ...] = ()  # positional arguments and flags after the stage's own
    stdin: str = ""  # fed to the stage's standard input
    template: str = "base"
    trains: bool = False  # trains, or needs a trained workspace: not among the pytest cases
    quick: bool = True  # false: a variant left to the runner, to keep pytest's time short
    timeout: float = OTHER_TIMEOUT

    @property
    def cheap(self) -> bool:
        """Among the pytest cases: trains nothing and is not a redundant variant."""
        return self.quick and not self.trains


CASES: list[Case] = []


def case(name: str, kind: str, stage: str, expect: str, *fragments: Fragment, **kw: Any
         ) -> Callable[[Callable], Callable]:
    """Register the decorated setup function as a case."""
    if stage == "train":
        kw.setdefault("timeout", TRAIN_TIMEOUT)
        kw.setdefault("template", "model")

    def register(setup: Callable) -> Callable:
        CASES.append(Case(name, kind, stage, expect, setup, fragments, **kw))
        return setup

    return register


def edit_params(ws: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    params = yaml.safe_load((ws / "params.yaml").read_text())
    edit(params)
    write_params(ws, params)


def set_param(dotted: str, value: Any) -> Callable[[Path], None]:
    """A setup that sets params key ``dotted`` (``train.lr``) to ``value``."""

    def setup(ws: Path) -> None:
        def edit(params: dict[str, Any]) -> None:
            *parents, key = dotted.split(".")
            node = params
            for part in parents:
                node = node.setdefault(part, {})
            node[key] = value

        edit_params(ws, edit)

    return setup


def params_case(name: str, dotted: str, value: Any, *fragments: Fragment, stage: str = "prepare",
                quick: bool = True) -> None:
    case(name, "params", stage, "error", *fragments, quick=quick)(set_param(dotted, value))


# -- params: ranges, types, names (prepare validates the whole file; the keys that once made the
# trainer hang or loop are also run through the train stage).

params_case("params-batch-size-negative", "train.batch_size", -4,
            "train.batch_size", "-4", ALLOWED_POSITIVE, stage="train")
params_case("params-batches-per-epoch-zero", "train.batches_per_epoch", 0,
            "train.batches_per_epoch", "0", stage="train", quick=False)
params_case("params-epochs-zero", "train.epochs", 0, "train.epochs", "0", stage="train",
            quick=False)
params_case("params-lr-negative", "train.lr", -1e-5,
            "train.lr", ("-1e-05", "-1e-5", "-0.00001"))
params_case("params-lr-string", "train.lr", "fast", "train.lr", "fast")
params_case("params-lr-null", "train.lr", None, "train.lr", ("null", "none"), quick=False)
params_case("params-epochs-boolean", "train.epochs", True, "train.epochs", ("true", "yes"),
            quick=False)
params_case("params-unknown-key", "train.batchsize", 8, "train", "batchsize")
params_case("params-wrong-enum", "train.schedule", "round-robin",
            "train.schedule", "round-robin", "round_robin")
params_case("params-betas-out-of-range", "train.betas", [0.9, 1.5], "train.betas", "1.5")
params_case("params-warmup-ratio-over-one", "train.warmup_ratio", 1.5,
            "train.warmup_ratio", "1.5", quick=False)
params_case("params-device-gpu", "train.device", "gpu", "train.device", "gpu")
params_case("params-train-seed-key", "train.seed", 5, "train.seed", "seeds", quick=False)
params_case("params-dropout-one", "model.head.dropout", 1.0, "model.head.dropout", "1.0",
            quick=False)
params_case("params-train-rows-zero", "data.train_rows", {"sst": 0},
            "data.train_rows", "sst", "0")
params_case("params-dev-rows-unknown-task", "data.dev_rows", {"sentiment": 50},
            "data.dev_rows", "sentiment", quick=False)
params_case("params-data-seed-negative", "data.seed", -1, "data.seed", "-1", quick=False)
params_case("params-duplicate-seeds", "seeds", [11, 12, 11], "seeds", "11")
params_case("params-ensemble-unknown-member", "ensemble.sst", ["sst_single", "sst_big"],
            "ensemble.sst", "sst_big")
params_case("params-member-unknown-task", "models.multitask.tasks", ["sst", "nli"],
            "models.multitask.tasks", "nli")
params_case("params-member-override-zero", "models.sst_single.train.batch_size", 0,
            "models.sst_single.train.batch_size", "0", quick=False)
params_case("params-eda-unknown-operation", "augment.eda.operations", ["sr", "swap"],
            "augment.eda.operations", "swap", quick=False)
params_case("params-reviews-selection-enum", "augment.reviews.selection", "nearest",
            "augment.reviews.selection", "nearest", quick=False)


@case("params-custom-epochs-not-below-epochs", "params", "prepare", "error",
      "custom.epochs", "2")
def _custom_epochs(ws: Path) -> None:
    set_param("train.custom", {"task": "qqp", "fraction": 0.5, "epochs": 2})(ws)


@case("params-typo-section", "params", "prepare", "error", "trian")
def _typo_section(ws: Path) -> None:
    edit_params(ws, lambda p: p.update(trian={"epochs": 3}))


def _params_lines(ws: Path) -> list[str]:
    return (ws / "params.yaml").read_text().splitlines(keepends=True)


@case("params-invalid-yaml-tab", "params", "prepare", "error", "params.yaml")
def _yaml_tab(ws: Path) -> list[Fragment]:
    lines = _params_lines(ws)
    n = next(i for i, line in enumerate(lines) if line.startswith("  lr:"))
    lines[n] = "\t" + lines[n].lstrip()  # a tab where YAML needs spaces
    (ws / "params.yaml").write_text("".join(lines))
    return [f"line {n + 1}"]


@case("params-duplicate-key", "params", "prepare", "error",
      "params.yaml", "lr", ("duplicate", "twice", "more than once"))
def _yaml_duplicate(ws: Path) -> None:
    lines = _params_lines(ws)
    n = next(i for i, line in enumerate(lines) if line.startswith("  lr:"))
    lines.insert(n + 1, "  lr: 0.5\n")  # a hand edit that silently wins
    (ws / "params.yaml").write_text("".join(lines))


@case("params-not-utf8", "params", "prepare", "error", "params.yaml")
def _params_latin1(ws: Path) -> list[Fragment]:
    body = (ws / "params.yaml").read_bytes()
    comment = "# réglages du modèle\n".encode("latin-1")
    data = body.replace(b"train:\n", b"train:\n" + comment, 1)
    (ws / "params.yaml").write_bytes(data)
    return [at_byte(data.index(0xE9))]


@case("params-top-level-list", "params", "prepare", "error", "params.yaml", "mapping",
      quick=False)
def _params_list(ws: Path) -> None:
    (ws / "params.yaml").write_text("- train\n- data\n")


@case("params-missing-file", "params", "prepare", "error", "paramz.yaml", NOT_FOUND,
      options={"--params": "paramz.yaml"})
def _params_missing(ws: Path) -> None:
    pass


@case("params-path-is-directory", "params", "prepare", "error", "params-dir", "directory",
      options={"--params": "params-dir"})
def _params_dir(ws: Path) -> None:
    (ws / "params-dir").mkdir()


# -- data files (prepare: rows are 2..ROWS+1; line 1 is the header).


def data_file(ws: Path, name: str) -> Path:
    return ws / "cs224n" / name


def read_lines(path: Path) -> list[str]:
    with path.open(newline="") as fh:
        return fh.readlines()


def write_lines(path: Path, lines: list[str]) -> None:
    with path.open("w", newline="") as fh:
        fh.writelines(lines)


def edit_field(ws: Path, name: str, line: int, column: int, value: str) -> None:
    """Set tab-separated field ``column`` (0-based, the index column included) of ``line``."""
    path = data_file(ws, name)
    lines = read_lines(path)
    fields = lines[line - 1].rstrip("\n").split("\t")
    fields[column] = value
    lines[line - 1] = "\t".join(fields) + "\n"
    write_lines(path, lines)


def prep_report(ws: Path) -> dict[str, Any]:
    return json.loads((ws / "prep_out" / "report.json").read_text())


def rejected(task: str, split: str, reason: str, n: int = 1) -> Callable[[Path], str | None]:
    """A check: ``report.json`` counts ``n`` rejected rows of task/split, for ``reason``."""

    def check(ws: Path) -> str | None:
        r = prep_report(ws)["tasks"][task][split]
        reasons = {k: v for k, v in r["rejected"].items() if reason in k.lower()}
        if r["rows_rejected"] != n or sum(reasons.values()) != n:
            return (f"{task} {split}: expected {n} row(s) rejected for {reason!r}, report has "
                    f"{r['rows_rejected']} rejected: {r['rejected']}")
        if r["rows_kept"] != ROWS - n:
            return f"{task} {split}: {r['rows_kept']} rows kept, expected {ROWS - n}"
        return None

    return check


def kept_all(task: str, split: str, column: str | None = None, skipped: str = ""
             ) -> Callable[[Path], str | None]:
    """A check: every row of task/split is kept, and (``column``) its texts hold no CR;
    ``skipped``: rejections for this reason only (e.g. blank lines counted) are fine too."""

    def check(ws: Path) -> str | None:
        r = prep_report(ws)["tasks"][task][split]
        others = [k for k in r["rejected"] if not (skipped and skipped in k.lower())]
        if r["rows_kept"] != ROWS or others:
            return f"{task} {split}: kept {r['rows_kept']}, rejected {r['rejected']}"
        if column is not None:
            import pandas as pd

            table = pd.read_parquet(ws / "prep_out" / f"{task}_{split}.parquet")
            if table[column].str.contains("\r").any() or table["id"].str.contains("\r").any():
                return f"{task}_{split}.parquet: {column} or id still hold CR characters"
        return None

    return check


def data_case(name: str, expect: str, *fragments: Fragment, **kw: Any
              ) -> Callable[[Callable], Callable]:
    return case(name, "data file", "prepare", expect, *fragments, **kw)


@data_case("data-train-header-only", "error", SST_TRAIN, HEADER_ONLY)
def _train_header_only(ws: Path) -> None:
    path = data_file(ws, SST_TRAIN)
    write_lines(path, read_lines(path)[:1])


@data_case("data-dev-header-only", "error", STS_DEV, HEADER_ONLY)
def _dev_header_only(ws: Path) -> None:
    path = data_file(ws, STS_DEV)
    write_lines(path, read_lines(path)[:1])


@data_case("data-empty-file", "error", QQP_TRAIN, "empty")
def _empty_file(ws: Path) -> None:
    data_file(ws, QQP_TRAIN).write_bytes(b"")


@data_case("data-directory-for-file", "error", SST_DEV, "directory")
def _dir_for_file(ws: Path) -> None:
    path = data_file(ws, SST_DEV)
    path.unlink()
    path.mkdir()


@data_case("data-missing-required-file", "error", STS_TRAIN, NOT_FOUND)
def _missing_file(ws: Path) -> None:
    data_file(ws, STS_TRAIN).unlink()


@data_case("data-source-missing", "error", "cs224n-nowhere", NOT_FOUND,
           options={"--source": "cs224n-nowhere"}, quick=False)
def _source_missing(ws: Path) -> None:
    pass


@data_case("data-invalid-utf8-deep", "error", SST_TRAIN)
def _utf8_deep(ws: Path) -> list[Fragment]:
    # 400 real rows (~40 KB, past any decoder chunk); a Latin-1 byte in row 300's sentence.
    path = data_file(ws, SST_TRAIN)
    head_lines(CS224N / SST_TRAIN, path, 400)
    data = bytearray(path.read_bytes())
    start = sum(len(line) for line in data.splitlines(keepends=True)[:300])
    offset = data.index(b"\t ", data.index(b"\t", start) + 1) + 3  # inside the sentence
    data[offset] = 0xE9  # é in Latin-1
    path.write_bytes(bytes(data))
    return [at_byte(offset)]


@data_case("data-gzip-named-csv", "error", QQP_DEV, at_byte(1))
def _gzip_csv(ws: Path) -> None:
    path = data_file(ws, QQP_DEV)
    path.write_bytes(gzip.compress(path.read_bytes()))


@data_case("data-utf16-export", "error", SST_DEV, at_byte(0), quick=False)
def _utf16(ws: Path) -> None:
    path = data_file(ws, SST_DEV)
    path.write_bytes(path.read_text().encode("utf-16"))


@data_case("data-extra-field", "error", SST_TRAIN, "line 10")
def _extra_field(ws: Path) -> None:
    path = data_file(ws, SST_TRAIN)
    lines = read_lines(path)
    lines[9] = lines[9].rstrip("\n") + "\t3\n"
    write_lines(path, lines)


@data_case("data-missing-field", "error", STS_TRAIN, "line 7")
def _missing_field(ws: Path) -> None:
    path = data_file(ws, STS_TRAIN)
    lines = read_lines(path)
    lines[6] = lines[6].rsplit("\t", 1)[0] + "\n"  # the score is gone
    write_lines(path, lines)


@data_case("data-unclosed-quote", "error", SST_DEV, "line 6", "quot")
def _unclosed_quote(ws: Path) -> None:
    edit_field(ws, SST_DEV, 6, 2, '"Wow , what a film')


@data_case("data-quote-over-field-limit", "error", SST_TRAIN, "line 5", "never closed",
           ("file ends", "end of the file", "end of file"))
def _quote_over_limit(ws: Path) -> None:
    # An opening quote never closed swallows the following ~200 KB (past csv's default field
    # limit, which the reader lifts) up to the end of the file.
    path = data_file(ws, SST_TRAIN)
    head_lines(CS224N / SST_TRAIN, path, 2000)
    edit_field(ws, SST_TRAIN, 5, 2, '"A quote opened here')


@data_case("data-nul-byte", "error", STS_TRAIN, "line 9", quick=False)
def _nul_byte(ws: Path) -> None:
    edit_field(ws, STS_TRAIN, 9, 2, "A man\0 is playing")


@data_case("data-wrong-header", "error", SST_TRAIN, "line 1", "sentiment")
def _wrong_header(ws: Path) -> None:
    path = data_file(ws, SST_TRAIN)
    lines = read_lines(path)
    lines[0] = "\tid\tsentence\tlabel\n"
    write_lines(path, lines)


@data_case("data-comma-separated", "error", SST_TRAIN, "line 1", quick=False)
def _comma_separated(ws: Path) -> None:
    path = data_file(ws, SST_TRAIN)
    lines = read_lines(path)
    write_lines(path, [",".join(f'"{f}"' if "," in f else f
                                for f in line.rstrip("\n").split("\t")) + "\n"
                       for line in lines])


@data_case("data-sst-label-out-of-range", "counted", check=rejected("sst", "train", "range"))
def _sst_label(ws: Path) -> None:
    edit_field(ws, SST_TRAIN, 8, 3, "7")


@data_case("data-sst-all-labels-words", "error", SST_DEV, ("reject", "row", "usable", "empty"))
def _sst_all_words(ws: Path) -> None:
    for line in range(2, ROWS + 2):
        edit_field(ws, SST_DEV, line, 3, "positive")


@data_case("data-sts-score-not-number", "counted", check=rejected("sts", "train", "number"))
def _sts_word(ws: Path) -> None:
    edit_field(ws, STS_TRAIN, 4, 4, "high")


@data_case("data-sts-score-out-of-range", "counted", check=rejected("sts", "dev", "range"),
           quick=False)
def _sts_range(ws: Path) -> None:
    edit_field(ws, STS_DEV, 11, 4, "5.5")


@data_case("data-qqp-label-fraction", "counted", check=rejected("qqp", "train", "integer"),
           quick=False)
def _qqp_fraction(ws: Path) -> None:
    edit_field(ws, QQP_TRAIN, 3, 4, "0.5")


@data_case("data-empty-sentence", "counted", check=rejected("sst", "train", "empty"),
           quick=False)
def _empty_sentence(ws: Path) -> None:
    edit_field(ws, SST_TRAIN, 14, 2, "   ")


@data_case("data-duplicate-ids", "counted", check=rejected("sst", "train", "duplicate"))
def _duplicate_ids(ws: Path) -> None:
    first = read_lines(data_file(ws, SST_TRAIN))[2].split("\t")[1]
    edit_field(ws, SST_TRAIN, 12, 1, first)


@data_case("data-utf8-bom", "handled", check=kept_all("sst", "dev"))
def _bom(ws: Path) -> None:
    path = data_file(ws, SST_DEV)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())


@data_case("data-crlf-line-endings", "handled", check=kept_all("qqp", "train", "sentence2"))
def _crlf(ws: Path) -> None:
    path = data_file(ws, QQP_TRAIN)
    write_lines(path, [line.rstrip("\r\n") + "\r\n" for line in read_lines(path)])


@data_case("data-trailing-blank-lines", "handled", check=kept_all("sts", "dev", skipped="blank"))
def _blank_tail(ws: Path) -> None:
    path = data_file(ws, STS_DEV)
    path.write_text(path.read_text() + "\n\n")


# -- review sources (filter_reviews with selection: random, so no encoder is loaded).


def review_lines(n: int = REVIEW_LINES) -> list[str]:
    """``n`` real 2018-format review lines."""
    with (AMAZON / "movies_tv_ni2018_sample.jsonl").open() as fh:
        return [line for _, line in zip(range(n), fh, strict=False)]


def reviews_report(ws: Path) -> dict[str, Any]:
    return json.loads((ws / "augmented" / "reviews_report.json").read_text())


def reviews_check(test: Callable[[dict[str, Any]], str | None]) -> Callable[[Path], str | None]:
    def check(ws: Path) -> str | None:
        if not (ws / "augmented" / "amazon.parquet").is_file():
            return "amazon.parquet not written"
        return test(reviews_report(ws))

    return check


def file_error(name: str, min_lines: int = 0) -> Callable[[Path], str | None]:
    """A check: the report names a read error for file ``name`` after ``min_lines`` lines, and
    the good file's reviews were still read."""

    def test(report: dict[str, Any]) -> str | None:
        files = {f["file"]: f for f in report["files"]}
        if name not in files or not files[name].get("error"):
            return f"no read error reported for {name}: {report['files']}"
        if files[name]["lines"] < min_lines:
            return f"{name}: only {files[name]['lines']} lines kept before the error"
        if files.get("good.jsonl", {}).get("reviews", 0) == 0:
            return "the good file's reviews were not read"
        return None

    return reviews_check(test)


def malformed_at(lines: set[int]) -> Callable[[Path], str | None]:
    def test(report: dict[str, Any]) -> str | None:
        listed = {m["line"] for m in report["malformed"]}
        if report["malformed_lines"] != len(lines) or listed != lines:
            return (f"expected malformed lines {sorted(lines)}, report has "
                    f"{report['malformed_lines']}: {sorted(listed)}")
        return None

    return reviews_check(test)


def review_source(ws: Path, name: str, files: dict[str, bytes]) -> None:
    source = ws / name
    source.mkdir()
    for file, data in files.items():
        (source / file).write_bytes(data)


def review_case(name: str, expect: str, *fragments: Fragment, source: str = "reviews-bad",
                **kw: Any) -> Callable[[Callable], Callable]:
    return case(name, "review source", "filter_reviews", expect, *fragments,
                options={"--source": source}, **kw)


def good_jsonl() -> bytes:
    return "".join(review_lines()).encode()


@review_case("reviews-truncated-gzip", "counted", check=file_error("cut.jsonl.gz", 1))
def _truncated_gz(ws: Path) -> None:
    whole = gzip.compress("".join(review_lines() * 20).encode())
    review_source(ws, "reviews-bad", {"good.jsonl": good_jsonl(),
                                      "cut.jsonl.gz": whole[: len(whole) * 2 // 3]})


@review_case("reviews-gz-not-gzip", "error", "fake.jsonl.gz", "gzip")
def _fake_gz(ws: Path) -> None:
    review_source(ws, "reviews-bad", {"good.jsonl": good_jsonl(), "fake.jsonl.gz": good_jsonl()})


@review_case("reviews-only-unreadable-files", "error", "reviews-bad",
             ("unreadable", "no review", "not a gzip", "not gzip", "could not read",
              "cannot read", "no usable"))
def _only_unreadable(ws: Path) -> None:
    review_source(ws, "reviews-bad", {"a.jsonl.gz": good_jsonl(), "b.jsonl.gz": b"\x00" * 64})


@review_case("reviews-all-lines-malformed", "error", "reviews.json", quick=False)
def _pretty_json(ws: Path) -> None:
    array = [json.loads(line) for line in review_lines(10)]
    review_source(ws, "reviews-bad", {"reviews.json": json.dumps(array, indent=2).encode()})


def nothing_mined(ws: Path) -> str | None:
    """A check: no review source, so amazon.parquet has no rows and the report says why."""
    import pandas as pd

    if not (ws / "augmented" / "amazon.parquet").is_file():
        return "amazon.parquet not written"
    rows = len(pd.read_parquet(ws / "augmented" / "amazon.parquet"))
    note = reviews_report(ws).get("note", "")
    if rows or "no review source" not in note:
        return f"expected no rows and a 'no review source' note, got {rows} rows, note {note!r}"
    return None


@review_case("reviews-empty-directory", "handled", check=nothing_mined)
def _empty_dir(ws: Path) -> None:
    review_source(ws, "reviews-bad", {})


@review_case("reviews-only-a-readme", "handled", check=nothing_mined, quick=False)
def _readme_only(ws: Path) -> None:
    review_source(ws, "reviews-bad", {"README.md": b"Put Amazon review files here.\n"})


@review_case("reviews-csv-beside-a-readme", "error", "reviews-bad", "reviews.csv",
             "no review files")
def _csv_beside_readme(ws: Path) -> None:
    review_source(ws, "reviews-bad", {"README.md": b"reviews\n", "reviews.csv": b"stars,text\n"})


@review_case("reviews-missing-source", "error", "reviews-nowhere", NOT_FOUND,
             source="reviews-nowhere", quick=False)
def _missing_source(ws: Path) -> None:
    pass


@review_case("reviews-jsonl-and-gz-clash", "error", "reviews-bad", "movies", quick=False)
def _clash(ws: Path) -> None:
    review_source(ws, "reviews-bad", {"movies.jsonl": good_jsonl(),
                                      "movies.jsonl.gz": gzip.compress(good_jsonl())})


@review_case("reviews-invalid-json-lines", "counted", check=malformed_at({5, 9}))
def _bad_json(ws: Path) -> None:
    lines = review_lines()
    for n in (5, 9):
        lines[n - 1] = lines[n - 1][: len(lines[n - 1]) // 2] + "\n"  # cut mid-object
    review_source(ws, "reviews-bad", {"good.jsonl": "".join(lines).encode()})


@review_case("reviews-invalid-utf8-line", "counted", check=malformed_at({6}), quick=False)
def _bad_utf8(ws: Path) -> None:
    data = bytearray(good_jsonl())
    start = sum(len(line.encode()) for line in review_lines()[:5])
    data[data.index(b'"reviewText": "', start) + 16] = 0xE9
    review_source(ws, "reviews-bad", {"good.jsonl": bytes(data)})


@review_case("reviews-ratings-out-of-range", "counted", check=malformed_at({3, 7}))
def _ratings(ws: Path) -> None:
    lines = [json.loads(line) for line in review_lines()]
    lines[2]["overall"], lines[6]["overall"] = 6.0, 0.0
    review_source(ws, "reviews-bad",
                  {"good.jsonl": "".join(json.dumps(o) + "\n" for o in lines).encode()})


@review_case("reviews-missing-text", "counted",
             check=reviews_check(lambda r: None if r["reviews_without_text"] == 2 else
                                 f"reviews_without_text = {r['reviews_without_text']}, "
                                 f"expected 2"))
def _no_text(ws: Path) -> None:
    lines = [json.loads(line) for line in review_lines()]
    for obj in (lines[1], lines[3]):
        obj.pop("reviewText", None)
    review_source(ws, "reviews-bad",
                  {"good.jsonl": "".join(json.dumps(o) + "\n" for o in lines).encode()})


# -- checkpoints (train --checkpoints checkpoints; the trained template holds a finished run).


class _MakesMarker:
    """Unpickling this calls ``open(path, "w")``: the marker file shows that a pickle ran."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def crafted_pickle(ws: Path) -> bytes:
    return pickle.dumps({"model": _MakesMarker(str((ws / MARKER).resolve()))})


def ckpt(ws: Path) -> Path:
    return ws / "checkpoints"


def trained_outputs(ws: Path) -> str | None:
    """A check: this run wrote its outputs and a checkpoint of its own finished run."""
    out = ws / "out"
    for name in ("model", "predictions", "metrics.json"):
        if not (out / name).exists():
            return f"out/{name} not written"
    state = json.loads((ckpt(ws) / "last" / "state.json").read_text())
    if state.get("epoch") != 2:
        return f"checkpoints/last: epoch {state.get('epoch')}, expected 2"
    stamp = json.loads((ckpt(ws) / "best" / "run.json").read_text())
    if stamp.get("fingerprint") != state.get("fingerprint"):
        return "checkpoints/best is not this run's snapshot"
    return None


def no_leftovers(*dirs: str) -> Callable[[Path], str | None]:
    """A check: trained outputs, and no ``.*.tmp-*``/``.*.old-*``/journal left in ``dirs``."""

    def check(ws: Path) -> str | None:
        for d in dirs:
            left = sorted(p.name for p in (ws / d).iterdir()
                          if re.match(r"\..*\.(tmp|old)-", p.name)
                          or p.name == JOURNAL)
            if left:
                return f"{d}/ still holds {left}"
        return trained_outputs(ws)

    return check


def other_config(ws: Path) -> None:
    set_param("train.lr", 5.0e-4)(ws)


def ckpt_case(name: str, expect: str, *fragments: Fragment, template: str = "trained",
              **kw: Any) -> Callable[[Callable], Callable]:
    return case(name, "checkpoint", "train", expect, *fragments, template=template,
                trains=True, **kw)


@ckpt_case("ckpt-legacy-pickle-last-pt", "handled", "last.pt", template="model",
           check=trained_outputs)
def _legacy_pickle(ws: Path) -> None:
    ckpt(ws).mkdir()
    (ckpt(ws) / "last.pt").write_bytes(crafted_pickle(ws))


@ckpt_case("ckpt-pickle-as-safetensors", "error", "tensors.safetensors")
def _pickle_tensors(ws: Path) -> None:
    (ckpt(ws) / "last" / "tensors.safetensors").write_bytes(crafted_pickle(ws))


@ckpt_case("ckpt-truncated-safetensors", "error", "tensors.safetensors")
def _truncated_tensors(ws: Path) -> None:
    path = ckpt(ws) / "last" / "tensors.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@ckpt_case("ckpt-state-not-json", "error", "state.json")
def _state_not_json(ws: Path) -> None:
    path = ckpt(ws) / "last" / "state.json"
    path.write_text(path.read_text()[:-40])


@ckpt_case("ckpt-state-json-list", "error", "state.json")
def _state_list(ws: Path) -> None:
    (ckpt(ws) / "last" / "state.json").write_text("[1, 2, 3]\n")


@ckpt_case("ckpt-state-missing", "error", "state.json")
def _state_missing(ws: Path) -> None:
    (ckpt(ws) / "last" / "state.json").unlink()


@ckpt_case("ckpt-epoch-edited-99", "error", "checkpoints/last", "99")
def _epoch_99(ws: Path) -> None:
    path = ckpt(ws) / "last" / "state.json"
    state = json.loads(path.read_text())
    state["epoch"] = 99
    path.write_text(json.dumps(state))


@ckpt_case("ckpt-dir-is-a-file", "error", "ckpt-file", options={"--checkpoints": "ckpt-file"})
def _ckpt_file(ws: Path) -> None:
    (ws / "ckpt-file").write_text("not a directory\n")


@ckpt_case("ckpt-best-of-other-config-no-last", "handled", "checkpoints/best",
           check=trained_outputs)
def _best_no_last(ws: Path) -> None:
    shutil.rmtree(ckpt(ws) / "last")
    shutil.rmtree(ws / "out")
    other_config(ws)


@ckpt_case("ckpt-of-other-config", "handled", "checkpoints/last", "config",
           check=trained_outputs)
def _other_config(ws: Path) -> None:
    shutil.rmtree(ws / "out")
    other_config(ws)


# -- outputs of killed runs.


@case("outputs-prepare-leftover-tmp", "outputs", "prepare", "handled",
      options={"--out": "prepared"},
      check=lambda ws: next((f"prepared/{p.name} left behind"
                             for p in (ws / "prepared").iterdir() if ".tmp-" in p.name), None))
def _prepare_leftovers(ws: Path) -> None:
    for name in ("sst_train.parquet", "report.json"):
        tmp = ws / "prepared" / f".{name}.tmp-k1ll3d"
        tmp.mkdir()
        (tmp / name).write_bytes(b"half-written")


@case("outputs-train-leftover-tmp", "outputs", "train", "handled", trains=True,
      check=no_leftovers("out", "checkpoints"))
def _train_leftovers(ws: Path) -> None:
    for directory, name in (("out", "model"), ("out", "metrics.json"), ("out", "outputs"),
                            ("checkpoints", "last"), ("checkpoints", "best")):
        tmp = ws / directory / f".{name}.tmp-k1ll3d"
        (tmp / name).mkdir(parents=True)
        (tmp / name / "half-written").write_text("x")


def killed_commit(ws: Path, renamed: tuple[str, ...], aside: tuple[str, ...] = ()) -> None:
    """``out/`` as a kill during a set commit leaves it: an old set, a staged new set of which
    ``renamed`` are already in place, the journal; ``aside``: old dirs renamed aside only."""
    out = ws / "out"
    out.mkdir()
    stage = out / ".outputs.tmp-k1ll3d"
    stage.mkdir()
    for name in ("model", "predictions"):
        (stage / name).mkdir()
        (stage / name / "new").write_text("new")
        (out / name).mkdir()
        (out / name / "old").write_text("old")
    (stage / "metrics.json").write_text('{"set": "new"}\n')
    (out / "metrics.json").write_text('{"set": "old"}\n')
    for name in renamed:
        shutil.rmtree(out / name)
        (stage / name).rename(out / name)
    for name in aside:
        (out / f".{name}.old-k1ll3d").mkdir()
        (out / name).rename(out / f".{name}.old-k1ll3d" / name)
    (out / JOURNAL).write_text(json.dumps(
        {"stage": stage.name, "names": ["model", "predictions", "metrics.json"]}))


def output_set(ws: Path) -> str:
    """Which set ``out/`` holds: ``old``, ``new`` (the killed commit's), ``mixed``, or ``run``
    (none of the killed commit's files: this run's own outputs)."""
    out = ws / "out"
    found = {name: next((m for m in ("old", "new") if (out / name / m).exists()), "run")
             for name in ("model", "predictions")}
    found["metrics.json"] = json.loads((out / "metrics.json").read_text()).get("set", "run")
    sets = set(found.values())
    return sets.pop() if len(sets) == 1 else f"mixed {found}"


def holds_set(expected: str, check: Callable[[Path], str | None] | None = None
              ) -> Callable[[Path], str | None]:
    def test(ws: Path) -> str | None:
        got = output_set(ws)
        if got != expected:
            return f"out/ holds the {got} set, expected the {expected} one"
        return check(ws) if check else None

    return test


@case("outputs-journal-rolled-forward", "outputs", "train", "handled", trains=True,
      check=holds_set("run", no_leftovers("out")))
def _journal(ws: Path) -> None:
    killed_commit(ws, renamed=("model",))


@case("outputs-killed-between-renames", "outputs", "train", "handled", trains=True,
      check=holds_set("run", no_leftovers("out")))
def _between_renames(ws: Path) -> None:
    killed_commit(ws, renamed=(), aside=("model",))


@case("outputs-journal-then-bad-checkpoint", "outputs", "train", "error", "state.json",
      template="trained", trains=True,
      check=holds_set("new", lambda ws: None if not (ws / "out" / JOURNAL).exists()
                      else f"out/{JOURNAL} left"))
def _journal_then_error(ws: Path) -> None:
    # The next start rolls the killed set forward, even when it then stops on a user error.
    shutil.rmtree(ws / "out")
    killed_commit(ws, renamed=("model",))
    (ckpt(ws) / "last" / "state.json").write_text("[]\n")


@case("outputs-killed-before-writing", "outputs", "train", "handled", "resum",
      template="trained", trains=True, check=trained_outputs)
def _before_outputs(ws: Path) -> None:
    shutil.rmtree(ws / "out")


# --- judging -----------------------------------------------------------------------------


def matches(fragment: Fragment, text: str) -> bool:
    """``fragment`` (or one of its alternatives) occurs in ``text``, case-insensitively; a
    fragment starting or ending with a digit does not match inside a longer number."""
    for alt in (fragment,) if isinstance(fragment, str) else fragment:
        pattern = re.escape(alt.lower())
        if alt[:1].isdigit() or alt[:1] == "-":
            pattern = r"(?<![\d.])" + pattern
        if alt[-1:].isdigit():
            pattern += r"(?!\w)"
        if re.search(pattern, text.lower()):
            return True
    return False


def show(fragment: Fragment) -> str:
    return fragment if isinstance(fragment, str) else " | ".join(fragment)


@dataclass
class Result:
    case: Case
    verdict: str
    seconds: float = 0.0
    line: str = ""  # the stderr line that decided (error line, notice) or the last one
    why: str = ""  # what made a verdict bad
    rc: int | None = None
    stderr: str = ""
    workspace: Path | None = None

    @property
    def bad(self) -> bool:
        return self.verdict in BAD


def stderr_lines(stderr: str) -> list[str]:
    """Non-empty stderr lines; progress bars' carriage returns split lines too."""
    return [line.rstrip() for line in re.split(r"[\r\n]+", stderr) if line.strip()]


def outputs_problem(case: Case, ws: Path) -> str | None:
    try:
        return case.check(ws) if case.check else None
    except (OSError, ValueError, KeyError) as exc:
        return f"outputs unreadable: {type(exc).__name__}: {exc}"


def judge(case: Case, proc: Proc, ws: Path, fragments: list[Fragment]) -> Result:
    lines = stderr_lines(proc.stderr)
    result = Result(case, "", proc.seconds, lines[-1] if lines else "", rc=proc.rc,
                    stderr=proc.stderr, workspace=ws)
    if (ws / MARKER).exists():
        result.verdict, result.why = "unsafe", f"{MARKER} was created: a crafted pickle ran"
        return result
    if proc.rc is None:
        result.verdict, result.why = "hang", f"killed after {case.timeout:.0f} s"
        return result
    if "Traceback (most recent call last)" in proc.stderr:
        result.verdict, result.why = "traceback", "a Python traceback on stderr"
        return result
    prefix = f"{case.stage}: error:"
    errors = [line for line in lines if line.startswith(prefix)]
    if proc.rc != 0:
        if len(errors) != 1 or lines[-1] != errors[0]:
            result.verdict = "traceback"
            result.why = (f"exit {proc.rc} with {len(errors)} '{prefix}' line(s)"
                          + ("" if not errors else ", not the last stderr line"))
            return result
        result.line = errors[0]
        if case.expect != "error":
            result.verdict, result.why = "wrong", f"expected {case.expect}, the stage refused"
            return result
        missing = [show(f) for f in fragments if not matches(f, errors[0])]
        if missing:
            result.verdict, result.why = "misleading", f"the error line lacks {missing}"
            return result
        problem = outputs_problem(case, ws)
        result.verdict, result.why = ("wrong", problem) if problem else ("error", "")
        return result
    if case.expect == "error":
        result.verdict, result.why = "silent", "exit 0 where an error was expected"
        return result
    missing = [show(f) for f in fragments if not matches(f, proc.stderr)]
    if missing:
        result.verdict, result.why = "silent", f"no notice on stderr with {missing}"
        return result
    noticed = [line for line in lines if fragments and all(matches(f, line) for f in fragments)]
    result.line = noticed[0] if noticed else result.line
    problem = outputs_problem(case, ws)
    if problem:
        result.verdict = "silent" if case.expect == "counted" else "wrong"
        result.why = problem
        return result
    result.verdict = case.expect
    return result


def run_case(case: Case, templates: Templates, scratch: Path) -> Result:
    """Copy the case's template to a fresh workspace under ``scratch``, break it, run it."""
    ws = scratch / case.name
    try:
        shutil.copytree(templates.get(case.template), ws, symlinks=True)
    except SetupError as exc:
        return Result(case, "no-setup", why=str(exc)[:4000])
    fragments = list(case.fragments) + list(case.setup(ws) or [])
    proc = run_stage(case.stage, ws, case.options, case.timeout, case.args, case.stdin)
    return judge(case, proc, ws, fragments)


# --- the table ---------------------------------------------------------------------------


def format_row(r: Result, width: int = 150) -> str:
    line = r.line if len(r.line) <= width else r.line[: width - 1] + "…"
    return (f"{r.case.name:38} {r.case.kind:13} {r.case.expect:8} {r.verdict:10} "
            f"{r.seconds:6.1f}  {line}")


def describe(r: Result) -> str:
    """A bad result in full: the row, why, the exit code and stderr's tail."""
    tail = "\n".join("    " + line for line in stderr_lines(r.stderr)[-15:])
    return (f"{format_row(r, 10_000)}\n  why: {r.why}\n  exit code: {r.rc}\n"
            f"  command: {' '.join(stage_command(r.case.stage, r.case.options, r.case.args)[1:])}\n"
            f"  stderr:\n{tail}")


def print_table(results: list[Result]) -> None:
    print(f"{'case':38} {'class':13} {'expected':8} {'verdict':10} {'secs':>6}  stderr")
    for r in results:
        print(format_row(r))
    counts = Counter(r.verdict for r in results)
    print("\n" + "  ".join(f"{v}: {counts[v]}" for v in (*GOOD, *BAD) if counts[v]))
    bad = [r for r in results if r.bad]
    if bad:
        print(f"\n{len(bad)} bad verdict(s):\n")
        for r in bad:
            print(describe(r) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run the cases whose name holds this")
    parser.add_argument("--jobs", type=int, default=1, help="cases run at once")
    parser.add_argument("--keep", action="store_true", help="keep the workspaces")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args(argv)
    cases = [c for c in CASES if args.only in c.name]
    if args.list:
        for c in cases:
            print(f"{c.name:38} {c.kind:13} {c.stage:15} {c.expect}")
        return 0
    if not cases:
        print(f"no case matches {args.only!r}", file=sys.stderr)
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="bad-inputs-"))
    templates = Templates(scratch / "templates")
    try:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            results = list(pool.map(lambda c: run_case(c, templates, scratch), cases))
        print_table(results)
    finally:
        if args.keep:
            print(f"\nworkspaces kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return 1 if any(r.bad for r in results) else 0


# The corpus's other rooms register their cases on import (they import this module by name).
import bad_inputs_config  # noqa: E402, F401
import bad_inputs_data  # noqa: E402, F401
import bad_inputs_models  # noqa: E402, F401

if __name__ == "__main__":
    import bad_inputs  # run as the module the rooms registered into, not a second copy

    sys.exit(bad_inputs.main())
