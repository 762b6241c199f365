"""The CS224N multitask splits: reading, validation, and the prepared parquet tables.

The CS224N default final project (github.com/gpoesia/minbert-default-final-project, ``data/``)
ships SST, QQP and STS-B as tab-separated files written by pandas: the first column is an unnamed
row index, fields holding a quote character are CSV-quoted with doubled quotes. Two quirks of
the real files are handled here rather than patched by hand:

- ``ids-sst-test-student.csv`` carries a second leading index column;
- QQP text was CSV-quoted twice (the Quora dump was itself quoted, then written again), so after
  one round of CSV decoding ``"What is ""staff work""?"`` must be decoded once more to read
  ``What is "staff work"?``. STS was quoted once; its quotes are genuine.

Rows that cannot serve as examples (blank or out-of-range label, empty text, repeated id) are
rejected and counted in a report; a file whose shape is wrong (header, field count, quoting)
stops with an error naming the file, line and field.
"""

from __future__ import annotations

import csv
import math
import re
import shutil
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import TASKS
from pipeline.io import atomic_path, write_json, write_parquet

SPLITS = ("train", "dev", "test")
# The CS224N name of each split inside the file names.
FILE_SPLITS = {"train": "train", "dev": "dev", "test": "test-student"}
TASK_FILES = {"sst": "ids-sst-{split}.csv", "qqp": "quora-{split}.csv", "sts": "sts-{split}.csv"}
TEXT_COLUMNS = {
    "sst": ["sentence"],
    "qqp": ["sentence1", "sentence2"],
    "sts": ["sentence1", "sentence2"],
}


@dataclass(frozen=True)
class LabelSpec:
    file_column: str  # the label's name in the CS224N header
    integer: bool
    low: float
    high: float
    dtype: str  # pandas dtype of the prepared `label` column


LABELS = {
    "sst": LabelSpec("sentiment", integer=True, low=0, high=4, dtype="Int8"),
    "qqp": LabelSpec("is_duplicate", integer=True, low=0, high=1, dtype="Int8"),
    "sts": LabelSpec("similarity", integer=False, low=0.0, high=5.0, dtype="float32"),
}
# Prepared table schemas (column -> pandas dtype); labels are null in the test split.
SCHEMAS = {
    task: {"id": "str", **dict.fromkeys(TEXT_COLUMNS[task], "str"), "label": LABELS[task].dtype}
    for task in TASKS
}
# Index columns a file may carry before `id`: one normally, two in ids-sst-test-student.csv.
MAX_INDEX_COLUMNS = 2
REJECT_EXAMPLES = 5
DOWNLOAD_TIMEOUT_S = 20
OFFLINE_HINT = (
    "point data.source at a local copy of the CS224N files instead, e.g. "
    "`dvc exp run -S data.source=../shared/data/cs224n`, or edit data.source in params.yaml"
)

_QUOTED = re.compile(r'"((?:[^"]|"")*)"')


class DataError(ValueError):
    """A data file is missing or malformed; the message names the file, line and field."""


def file_name(task: str, split: str) -> str:
    return TASK_FILES[task].format(split=FILE_SPLITS[split])


def prepared_path(prepared_dir: Path, task: str, split: str) -> Path:
    return Path(prepared_dir) / f"{task}_{split}.parquet"


@dataclass
class SplitReport:
    """What reading one file kept and rejected, for ``report.json``."""

    file: str
    rows_read: int = 0
    rows_kept: int = 0
    rows_written: int | None = None  # after the `train_rows` cap; None until written
    missing: bool = False
    rows_rejected: int = 0
    rejected: Counter = field(default_factory=Counter)
    rejected_examples: list[dict[str, Any]] = field(default_factory=list)

    def reject(self, line: int, row_id: str, problems: list[tuple[str, str]]) -> None:
        self.rows_rejected += 1
        self.rejected.update(reason for reason, _ in problems)
        if len(self.rejected_examples) < REJECT_EXAMPLES:
            self.rejected_examples.append(
                {
                    "line": line,
                    "id": row_id,
                    "reasons": [reason for reason, _ in problems],
                    "values": [value for _, value in problems],
                }
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "missing": self.missing,
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "rows_written": self.rows_kept if self.rows_written is None else self.rows_written,
            "rows_rejected": self.rows_rejected,
            # A row with several problems counts under each of them.
            "rejected": dict(sorted(self.rejected.items())),
            "rejected_examples": self.rejected_examples,
        }


def empty_table(task: str) -> pd.DataFrame:
    return pd.DataFrame({col: pd.Series([], dtype=dt) for col, dt in SCHEMAS[task].items()})


def _unquote_twice_quoted(text: str) -> str:
    """Undo QQP's second CSV quoting layer: ``"a ""b"" c"`` -> ``a "b" c``.

    Only a field that is a well-formed quoted CSV field is decoded; anything else (two QQP dev
    rows open a quote they never close) is kept as it reads.
    """
    match = _QUOTED.fullmatch(text)
    return match.group(1).replace('""', '"') if match else text


def _parse_label(text: str, spec: LabelSpec) -> tuple[float | int | None, str | None]:
    """Return (label, None) or (None, reason). QQP's ``1.0`` is the integer 1."""
    text = text.strip()
    if not text:
        return None, "blank label"
    try:
        value = float(text)
    except ValueError:
        return None, "label not a number"
    if not math.isfinite(value):
        return None, "label not a number"
    if spec.integer:
        if not value.is_integer():
            return None, "label not an integer"
        value = int(value)
    if not spec.low <= value <= spec.high:
        return None, "label out of range"
    return value, None


def _parse_record(
    task: str, record: dict[str, str], labelled: bool
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Clean one row's fields; also return every (reason, raw value) that makes it unusable."""
    spec = LABELS[task]
    problems = []
    values: dict[str, Any] = {"id": record["id"].strip()}
    if not values["id"]:
        problems.append(("blank id", record["id"]))
    for col in TEXT_COLUMNS[task]:
        text = record[col].strip()
        if task == "qqp":
            text = _unquote_twice_quoted(text).strip()
        values[col] = text
        if not text:
            problems.append((f"empty {col}", record[col]))
    values["label"] = None
    if labelled:
        values["label"], reason = _parse_label(record[spec.file_column], spec)
        if reason is not None:
            problems.append((reason, record[spec.file_column]))
    return values, problems


def _check_header(path: Path, header: list[str], expected: list[str]) -> int:
    """Return how many leading index columns ``header`` has before the ``expected`` names."""
    n_index = len(header) - len(expected)
    names = f"[index column(s)], {', '.join(expected)}"
    if not 1 <= n_index <= MAX_INDEX_COLUMNS:
        raise DataError(f"{path}: line 1 (header): expected the columns {names}, got {header}")
    for i, name in enumerate(header[:n_index]):
        if name.strip() and not name.strip().isdigit():
            raise DataError(
                f"{path}: line 1 (header): field {i + 1}: expected an unnamed index column, "
                f"got {name!r}; expected the columns {names}"
            )
    for i, (got, want) in enumerate(zip(header[n_index:], expected, strict=True)):
        if got.strip() != want:
            raise DataError(
                f"{path}: line 1 (header): field {n_index + i + 1}: expected {want!r}, got {got!r}"
            )
    return n_index


def read_task_split(source_dir: Path, task: str, split: str) -> tuple[pd.DataFrame, SplitReport]:
    """Read and validate one CS224N file into the prepared schema of ``task``.

    A missing test file gives an empty table (its report says ``missing``); a missing train or
    dev file is an error.
    """
    if task not in TASKS or split not in SPLITS:
        raise ValueError(f"unknown task/split {task}/{split}; known: {TASKS} x {SPLITS}")
    path = Path(source_dir) / file_name(task, split)
    report = SplitReport(file=path.name)
    if not path.is_file():
        if split == "test":
            report.missing = True
            return empty_table(task), report
        raise DataError(f"{path}: not found; the {task} {split} split is required")

    labelled = split != "test"
    expected = ["id", *TEXT_COLUMNS[task], *([LABELS[task].file_column] if labelled else [])]
    columns: dict[str, list[Any]] = {col: [] for col in SCHEMAS[task]}
    seen: set[str] = set()
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh, delimiter="\t", strict=True)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: empty file; expected a header line")
            n_index = _check_header(path, header, expected)
            names = [f"index{i + 1}" for i in range(n_index)] + expected
            line = reader.line_num
            for row in reader:
                start, line = line + 1, reader.line_num
                if len(row) != len(names):
                    what = (
                        f"field {len(row) + 1} ({names[len(row)]!r}) is missing"
                        if len(row) < len(names)
                        else f"field {len(names) + 1} is unexpected"
                    )
                    raise DataError(
                        f"{path}: line {start}: {what}: expected {len(names)} tab-separated "
                        f"fields ({', '.join(names)}), got {len(row)}"
                    )
                report.rows_read += 1
                record = dict(zip(expected, row[n_index:], strict=True))
                values, problems = _parse_record(task, record, labelled)
                if values["id"] in seen:
                    problems.insert(0, ("duplicate id", values["id"]))
                if problems:
                    report.reject(start, values["id"], problems)
                    continue
                seen.add(values["id"])
                for col, value in values.items():
                    columns[col].append(value)
    except csv.Error as exc:
        raise DataError(f"{path}: line {reader.line_num}: malformed quoting: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}): {exc.reason}") from exc
    report.rows_kept = len(columns["id"])
    table = pd.DataFrame(
        {col: pd.Series(columns[col], dtype=dtype) for col, dtype in SCHEMAS[task].items()}
    )
    return table, report


def load_prepared(prepared_dir: Path, task: str, split: str) -> pd.DataFrame:
    """Read a prepared table and check it has the schema of :data:`SCHEMAS` (extras allowed)."""
    path = prepared_path(prepared_dir, task, split)
    if not path.is_file():
        raise DataError(f"{path}: not found; run the prepare stage (`dvc repro prepare`)")
    table = pd.read_parquet(path)
    for col, dtype in SCHEMAS[task].items():
        if col not in table.columns:
            raise DataError(
                f"{path}: column {col!r} missing; expected {list(SCHEMAS[task])}, "
                f"got {list(table.columns)}"
            )
        if table[col].dtype != dtype:
            raise DataError(
                f"{path}: column {col!r}: expected dtype {dtype}, got {table[col].dtype}"
            )
        if (col != "label" or split != "test") and table[col].isna().any():
            row = int(np.flatnonzero(table[col].isna().to_numpy())[0])
            raise DataError(f"{path}: row {row}: column {col!r} is null")
    return table


def _download(url: str, dest: Path) -> bool:
    """Fetch ``url`` to ``dest`` atomically; False when the server has no such file (404)."""
    try:
        with (
            urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp,
            atomic_path(dest) as tmp,
            open(tmp, "wb") as fh,
        ):
            shutil.copyfileobj(resp, fh)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return False
        raise DataError(f"could not download {url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(
            f"could not download {url} ({reason}); no cached copy in {dest.parent}. "
            f"If this machine is offline, {OFFLINE_HINT}"
        ) from exc
    return True


def fetch_source(source: str, cache_dir: Path) -> Path:
    """Return a local directory holding the CS224N files named by ``source``.

    ``source`` is a directory, or an http(s) URL base whose files are downloaded once into
    ``cache_dir`` (a ``.source`` file there records the URL, so changing it fetches afresh).
    """
    if not source.startswith(("http://", "https://")):
        directory = Path(source)
        if not directory.is_dir():
            raise DataError(f"data.source: {source!r} is not a directory nor an http(s) URL")
        return directory
    base = source.rstrip("/")
    cache_dir = Path(cache_dir)
    marker = cache_dir / ".source"
    fresh = not marker.is_file() or marker.read_text().strip() != base
    if fresh and cache_dir.is_dir():
        for task in TASKS:
            for split in SPLITS:
                (cache_dir / file_name(task, split)).unlink(missing_ok=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(base + "\n")
    for split in SPLITS:  # train and dev first: they are required, so fail fast on them
        for task in TASKS:
            dest = cache_dir / file_name(task, split)
            if not dest.is_file():
                _download(f"{base}/{dest.name}", dest)  # a test file may be absent upstream
    return cache_dir


def cap_rows(table: pd.DataFrame, cap: int | None, seed: int) -> pd.DataFrame:
    """A seeded uniform sample of ``cap`` rows without replacement, in file order."""
    if cap is None or cap >= len(table):
        return table
    keep = np.sort(np.random.default_rng(seed).choice(len(table), size=cap, replace=False))
    return table.iloc[keep].reset_index(drop=True)


def prepare(
    source: str, out_dir: Path, train_rows: dict[str, int], seed: int, cache_dir: Path,
    dev_rows: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Read every task and split from ``source``, write the parquet tables and ``report.json``.

    ``train_rows`` / ``dev_rows`` cap a task's train / dev split to a seeded sample (CPU-sized
    runs: QQP's 20k dev pairs would cost more than a short epoch to score).

    Every file is read and validated before anything is written, so a malformed file leaves
    the previous outputs untouched.
    """
    caps = {"train": train_rows, "dev": dev_rows or {}}
    for split, split_caps in caps.items():
        bad = {t: n for t, n in split_caps.items() if t not in TASKS or n < 1}
        if bad:
            raise DataError(
                f"data.{split}_rows: expected positive caps for tasks {TASKS}, got {bad}")
    source_dir = fetch_source(source, cache_dir)
    tables, reports = {}, {}
    for task in TASKS:
        for split in SPLITS:
            table, report = read_task_split(source_dir, task, split)
            if split in caps:
                table = cap_rows(table, caps[split].get(task), seed)
            report.rows_written = len(table)
            tables[task, split], reports[task, split] = table, report
    for (task, split), table in tables.items():
        write_parquet(table, prepared_path(out_dir, task, split))
    summary = {
        "source": source,
        "train_rows": dict(train_rows),
        "dev_rows": dict(caps["dev"]),
        "seed": seed,
        "tasks": {
            task: {split: reports[task, split].to_dict() for split in SPLITS} for task in TASKS
        },
    }
    write_json(summary, Path(out_dir) / "report.json")
    return summary
