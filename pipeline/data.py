"""The CS224N multitask splits: reading, validation, and the prepared parquet tables.

The CS224N default final project (github.com/gpoesia/minbert-default-final-project, ``data/``)
ships SST, QQP and STS-B as tab-separated files written by pandas: the first column is an unnamed
row index, fields holding a quote character are CSV-quoted with doubled quotes. Two quirks of
the real files are handled here rather than patched by hand:

- ``ids-sst-test-student.csv`` carries a second leading index column;
- QQP text was CSV-quoted twice (the Quora dump was itself quoted, then written again), so after
  one round of CSV decoding ``"What is ""staff work""?"`` must be decoded once more to read
  ``What is "staff work"?``. STS was quoted once; its quotes are genuine.

Rows that cannot serve as examples (blank or out-of-range label, empty text, repeated id, a
blank line) are rejected and counted in a report; a file whose shape is wrong (encoding, header,
field count, quoting) or that has no usable row stops with an error naming the file, line and
field. Windows line endings and a UTF-8 byte-order mark are accepted.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import http.client
import io
import math
import os
import re
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import TASKS
from pipeline.errors import UserError
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

# sha256 of the CS224N files at the default data.source (the upstream files: the data/ folder of
# github.com/gpoesia/minbert-default-final-project at commit 7ac8260). quora-train.csv and
# quora-test-student.csv are not pinned: no verified copy of those upstream files was at hand.
CS224N_SHA256 = {
    "ids-sst-train.csv": "03b2b625c090f94a6afd59f114cde5282e2053aab0b101e87ed695d8a0c5b1df",
    "ids-sst-dev.csv": "a186ce94577635fbe10beaaddd50f16cccf6c30973221cefdf90deed2a584bfe",
    "ids-sst-test-student.csv": "bdd5a767faa0c26782117e37767ece154c30d5d04fb8727d09c71e3850a55c7b",
    "quora-dev.csv": "bfa3cc954a9ba300ae776a980141de65f622a3c1b97e3fd905d63245bc36d5ad",
    "sts-train.csv": "15d12efc2d656fffb1d61ac1f08ec4227f43925fd16f420c037cbd063699c21b",
    "sts-dev.csv": "ce3cad6f16062586ac7ba462c28b010a9be10c530fd5074165860d7b7ab4e93d",
    "sts-test-student.csv": "dee455745b72e9ca3ff74e7c056bd73e34bad5b8d5641045a2c1e7e131866f47",
}

_QUOTED = re.compile(r'"((?:[^"]|"")*)"')


class DataError(UserError):
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


def _line_at(data: bytes, offset: int) -> tuple[int, int, int]:
    """(line, column, start of that line) of byte ``offset``, 1-based as an editor shows them.

    A line ends at ``\n``, ``\r\n`` or a lone ``\r``, as for the CSV reader; the column counts
    characters, not bytes.
    """
    before = data[:offset]
    line = before.count(b"\n") + before.count(b"\r") - before.count(b"\r\n") + 1
    line_start = max(before.rfind(b"\n"), before.rfind(b"\r")) + 1
    column = len(data[line_start:offset].decode("utf-8", errors="replace")) + 1
    return line, column, line_start


def _byte_place(path: Path, data: bytes, offset: int) -> str:
    """``<path>: line L, column C, field N ('name')`` of byte ``offset`` in ``data``.

    The field is found by counting tabs on the line (quoted tabs are rare enough to ignore), its
    name read from the header when the byte lies past it.
    """
    line, column, line_start = _line_at(data, offset)
    number = data[line_start:offset].count(b"\t") + 1
    header = re.split(rb"\r\n|\r|\n", data, maxsplit=1)[0].decode("utf-8", errors="replace")
    names = header.split("\t")
    name = f" ({names[number - 1].strip()!r})" if line > 1 and number <= len(names) else ""
    return f"{path}: line {line}, column {column}, field {number}{name}"


def _encoding_hint(data: bytes) -> str:
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "the file starts with a UTF-16 byte-order mark: save it as UTF-8"
    return "expected UTF-8 text; save the file as UTF-8 (it may be Latin-1 or Windows-1252)"


def _read_text(path: Path) -> str:
    """The text of ``path``: UTF-8, a leading byte-order mark dropped (spreadsheets write one).

    A byte that is not UTF-8, or a NUL (a UTF-16 or binary file), is reported with its line,
    column, field and byte offset in the file (0-based, as ``xxd`` or ``dd skip=`` count).
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file: {exc.strerror or exc}") from exc
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        text, bad = data[skip:].decode("utf-8"), None
    except UnicodeDecodeError as exc:
        text, bad = "", (skip + exc.start, exc.reason)
    nul = data.find(b"\x00")
    if nul != -1 and (bad is None or nul < bad[0]):
        raise DataError(
            f"{_byte_place(path, data, nul)}: NUL byte at offset {nul}; expected UTF-8 text, "
            "this looks like a UTF-16 or binary file"
        )
    if bad is not None:
        offset, reason = bad
        raise DataError(
            f"{_byte_place(path, data, offset)}: byte 0x{data[offset]:02x} at offset {offset} "
            f"is not UTF-8 ({reason}); {_encoding_hint(data)}"
        )
    return text


def _columns_hint(got: list[str], task: str, labelled: bool) -> str:
    """``; these are the columns of <another CS224N file>`` when ``got`` matches one exactly."""
    for other in TASKS:
        for other_labelled, splits in ((True, ("train", "dev")), (False, ("test",))):
            if (other, other_labelled) == (task, labelled):
                continue
            if got == _expected_columns(other, other_labelled):
                names = " or ".join(file_name(other, split) for split in splits)
                return f"; these are the columns of {names}: is it the wrong file?"
    return ""


def _expected_columns(task: str, labelled: bool) -> list[str]:
    """The named columns of a CS224N file, after its index column(s)."""
    return ["id", *TEXT_COLUMNS[task], *([LABELS[task].file_column] if labelled else [])]


def _check_header(path: Path, header: list[str], task: str, labelled: bool) -> list[str]:
    """Check the header line; return the column names of the file (index columns included).

    A file has one or two unnamed index columns, then exactly ``id``, the text column(s) and,
    in train and dev files, the label. The message names the first field that differs.
    """
    expected = _expected_columns(task, labelled)
    names = [name.strip() for name in header]
    where = f"{path}: line 1 (header)"
    wanted = f"expected the columns [index column], {', '.join(expected)}"
    if "id" not in names:
        if not any(names):
            hint = "; the line is blank"
        elif len(names) == 1:
            hint = "; the line has no tab: is the file comma-separated?"
        else:
            hint = "; is the header line missing?"
        raise DataError(f"{where}: no 'id' column; {wanted}, got {header}{hint}")
    n_index = names.index("id")
    if not 1 <= n_index <= MAX_INDEX_COLUMNS:
        raise DataError(
            f"{where}: {n_index} field(s) before 'id', expected 1 or {MAX_INDEX_COLUMNS} unnamed "
            f"index columns; {wanted}, got {header}"
        )
    for i, name in enumerate(names[:n_index]):
        if name and not name.isdigit():
            raise DataError(
                f"{where}: field {i + 1}: expected an unnamed index column, got {name!r}; {wanted}"
            )
    got = names[n_index:]
    hint = _columns_hint(got, task, labelled)
    for i, want in enumerate(expected):
        field_no = n_index + i + 1
        if i == len(got):
            raise DataError(
                f"{where}: field {field_no} ({want!r}) is missing: the header ends after "
                f"{got[-1]!r}; {wanted}{hint}"
            )
        if got[i] != want:
            raise DataError(
                f"{where}: field {field_no}: expected {want!r}, got {header[field_no - 1]!r}{hint}"
            )
    if len(got) > len(expected):
        extra = header[n_index + len(expected):]
        raise DataError(
            f"{where}: {len(header)} fields, expected {n_index + len(expected)}: an extra column "
            f"after {expected[-1]!r} (field {n_index + len(expected) + 1}): {extra}; {wanted}{hint}"
        )
    index = ["index"] if n_index == 1 else [f"index{i + 1}" for i in range(n_index)]
    return index + expected


def _bad_quote_field(line_text: str, names: list[str]) -> str:
    """`` field N ('name')``: the first field on the line opening a quote it does not close."""
    for i, value in enumerate(line_text.split("\t")):
        if value.startswith('"') and not _QUOTED.fullmatch(value.rstrip("\r\n")):
            name = f" ({names[i]!r})" if i < len(names) else ""
            return f", field {i + 1}{name}"
    return ""


def _csv_error(path: Path, text: str, start: int, end: int, exc: csv.Error,
               names: list[str]) -> DataError:
    """Turn the CSV reader's error on the record starting at line ``start`` into a DataError
    naming the line and field where the offending quote opens."""
    lines = re.split(r"\r\n|\r|\n", text, maxsplit=start)
    where = f"{path}: line {start}{_bad_quote_field(lines[start - 1], names)}"
    if "field larger than field limit" in str(exc):
        return DataError(
            f"{where}: a field longer than the limit of {csv.field_size_limit()} characters "
            f"(read up to line {end}); probably a quote (\") opened here is never closed"
        )
    if "unexpected end of data" in str(exc):
        return DataError(f"{where}: a quote (\") opened here is never closed before the file ends")
    return DataError(
        f"{where}: malformed quoting ({exc}): a field that starts with a quote must end with one, "
        'quotes inside it doubled ("")'
    )


def _records(path: Path, text: str, names: list[str]) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line, fields)`` for each record, ``line`` being where it starts (1-based).

    ``names`` (filled in by the caller once the header is read) name the field in an error.
    """
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", strict=True)
    line = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise _csv_error(path, text, line + 1, reader.line_num, exc, names) from exc
        yield line + 1, row
        line = reader.line_num


def _field_count_error(path: Path, line: int, row: list[str], names: list[str],
                       spec: LabelSpec | None) -> DataError:
    """Name the missing column(s), or the extra value(s) and where they fall, on a data line."""
    n, m = len(row), len(names)
    where = f"{path}: line {line}: {n} fields, expected {m} ({', '.join(names)})"
    if n < m:
        missing = ", ".join(repr(name) for name in names[n:])
        fields = f"field {n + 1} ({missing}) is" if n + 1 == m else (
            f"fields {n + 1}-{m} ({missing}) are")
        return DataError(f"{where}: {fields} missing")
    if spec is not None and _parse_label(row[-1], spec)[1] is None \
            and _parse_label(row[m - 1], spec)[1] is not None:
        return DataError(
            f"{where}: the last field is a label ({row[-1]!r}) but field {m} ({names[-1]!r}) "
            f"holds {row[m - 1]!r}: a text field probably contains a tab"
        )
    extra = row[m:]
    what = f"field {m + 1} holds" if len(extra) == 1 else f"fields {m + 1}-{n} hold"
    return DataError(
        f"{where}: an extra column after {names[-1]!r} ({row[m - 1]!r}): {what} "
        f"{', '.join(repr(value) for value in extra)}"
    )


def _source_file(source_dir: Path, task: str, split: str) -> Path | None:
    """The path of the file for ``task``/``split``, or None for an absent test file."""
    path = Path(source_dir) / file_name(task, split)
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a file (the {task} {split} split)")
    if not path.exists():
        if path.is_symlink():
            raise DataError(f"{path}: a symbolic link to {os.readlink(path)!r}, which is missing")
        if split == "test":
            return None
        raise DataError(f"{path}: not found; the {task} {split} split is required")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file; expected the {task} {split} split file")
    return path


def _no_rows_error(path: Path, task: str, split: str, report: SplitReport) -> DataError:
    if report.rows_read == 0:
        what = "no rows after the header"
    else:
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(report.rejected.items()))
        what = f"all {report.rows_read} rows rejected ({reasons})"
    need = "remove the file if the source has no test split" if split == "test" else (
        "a required split needs at least one usable row")
    return DataError(f"{path}: {what}; {need}")


def read_task_split(source_dir: Path, task: str, split: str) -> tuple[pd.DataFrame, SplitReport]:
    """Read and validate one CS224N file into the prepared schema of ``task``.

    A missing test file gives an empty table (its report says ``missing``); a missing train or
    dev file, a directory or unreadable file in its place, or a file present with no usable row
    is an error. Windows line endings and a leading byte-order mark are accepted.
    """
    if task not in TASKS or split not in SPLITS:
        raise ValueError(f"unknown task/split {task}/{split}; known: {TASKS} x {SPLITS}")
    path = _source_file(source_dir, task, split)
    report = SplitReport(file=file_name(task, split))
    if path is None:
        report.missing = True
        return empty_table(task), report
    labelled = split != "test"
    names: list[str] = []
    records = _records(path, _read_text(path), names)
    header = next(records, None)
    if header is None:
        raise DataError(f"{path}: empty file; expected a header line")
    names += _check_header(path, header[1], task, labelled)
    n_index = len(names) - len(_expected_columns(task, labelled))
    columns: dict[str, list[Any]] = {col: [] for col in SCHEMAS[task]}
    seen: set[str] = set()
    for line, row in records:
        report.rows_read += 1
        if not row or (len(row) == 1 and not row[0].strip()):
            report.reject(line, "", [("blank line", "".join(row))])
            continue
        if len(row) != len(names):
            raise _field_count_error(path, line, row, names, LABELS[task] if labelled else None)
        record = dict(zip(names[n_index:], row[n_index:], strict=True))
        values, problems = _parse_record(task, record, labelled)
        if values["id"] in seen:
            problems.insert(0, ("duplicate id", values["id"]))
        if problems:
            report.reject(line, values["id"], problems)
            continue
        seen.add(values["id"])
        for col, value in values.items():
            columns[col].append(value)
    report.rows_kept = len(columns["id"])
    if report.rows_kept == 0:
        raise _no_rows_error(path, task, split, report)
    table = pd.DataFrame(
        {col: pd.Series(columns[col], dtype=dtype) for col, dtype in SCHEMAS[task].items()}
    )
    return table, report


def load_prepared(prepared_dir: Path, task: str, split: str) -> pd.DataFrame:
    """Read a prepared table and check it has the schema of :data:`SCHEMAS` (extras allowed)."""
    path = prepared_path(prepared_dir, task, split)
    if not path.is_file():
        raise DataError(f"{path}: not found; run the prepare stage (`dvc repro prepare`)")
    try:
        table = pd.read_parquet(path)
    except (OSError, ValueError) as exc:  # pyarrow's errors for a truncated or foreign file
        raise DataError(
            f"{path}: not a readable parquet table ({exc}); run the prepare stage again"
        ) from exc
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_counted(url: str, resp, dest: Path) -> tuple[int, str]:
    """Copy the response body to ``dest``; return (bytes received, their sha256)."""
    size, digest = 0, hashlib.sha256()
    with open(dest, "wb") as fh:
        try:
            while chunk := resp.read(1 << 16):
                fh.write(chunk)
                digest.update(chunk)
                size += len(chunk)
        except http.client.IncompleteRead as exc:  # a chunked body cut short
            raise DataError(
                f"{dest.name}: download from {url} incomplete: the connection closed inside "
                "the body; nothing was kept, run the stage again"
            ) from exc
    return size, digest.hexdigest()


def _check_download(url: str, name: str, tmp: Path, announced: str | None, size: int,
                    digest: str) -> None:
    """Raise if the size differs from Content-Length, or from a pinned digest."""
    if announced is not None and announced.isdigit() and size != int(announced):
        raise DataError(
            f"{name}: download from {url} incomplete: received {size} of {int(announced)} bytes "
            "(Content-Length); nothing was kept, run the stage again"
        )
    expected = CS224N_SHA256.get(name)
    if expected is None or digest == expected:
        return
    with open(tmp, "rb") as fh:
        html = fh.read(512).lstrip().lower().startswith((b"<!doctype html", b"<html"))
    hint = (
        "the server sent an HTML page: data.source must be the base URL of the raw files"
        if html else
        "the server's file is not the CS224N release (or was corrupted on the way)"
    )
    raise DataError(
        f"{name}: download from {url} has sha256 {digest} ({size} bytes), expected {expected}: "
        f"{hint}; nothing was kept. To use another version of the file on purpose, download it "
        "yourself and point data.source at its directory"
    )


def _download(url: str, dest: Path) -> bool:
    """Fetch ``url`` to ``dest``; False when the server has no such file (404).

    The body goes to a temporary name and is renamed onto ``dest`` only once its size matches
    the Content-Length header and, for a file in :data:`CS224N_SHA256`, its digest matches: a
    broken or partial download leaves nothing behind.
    """
    try:
        with (
            urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp,
            atomic_path(dest) as tmp,
        ):
            size, digest = _copy_counted(url, resp, tmp)
            _check_download(url, dest.name, tmp, resp.headers.get("Content-Length"), size, digest)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return False
        raise DataError(f"could not download {url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DataError(
            f"could not download {url} ({reason}); no cached copy in {dest.parent}. "
            f"If this machine is offline, {OFFLINE_HINT}"
        ) from exc
    return True


def _source_dir(source: str) -> Path:
    """``data.source`` as a local directory, with a message for each way it can be wrong."""
    if not source.strip():
        raise DataError("data.source is empty; expected a directory or an http(s) URL base")
    if "://" in source:
        raise DataError(f"data.source: {source!r}: only http:// and https:// URLs are supported")
    directory = Path(source)
    if not directory.exists():
        tilde = "; '~' is not expanded, write the full path" if source.startswith("~") else ""
        raise DataError(
            f"data.source: directory {source!r} does not exist (a relative path is taken from "
            f"{Path.cwd()}){tilde}; expected the directory holding the CS224N files or an "
            "http(s) URL"
        )
    if not directory.is_dir():
        raise DataError(
            f"data.source: {source!r} is a file; expected the directory holding the CS224N files "
            f"({file_name('sst', 'train')}, ...)"
        )
    known = [file_name(task, split) for task in TASKS for split in SPLITS]
    if not any((directory / name).exists() for name in known):
        inner = " (its data/ subdirectory does)" if any(
            (directory / "data" / name).exists() for name in known) else ""
        raise DataError(
            f"data.source: directory {source!r} holds none of the CS224N files "
            f"({', '.join(known[:3])}, ...){inner}"
        )
    return directory


def fetch_source(source: str, cache_dir: Path) -> Path:
    """Return a local directory holding the CS224N files named by ``source``.

    ``source`` is a directory, or an http(s) URL base whose files are downloaded once into
    ``cache_dir`` (a ``.source`` file there records the URL, so changing it fetches afresh).
    Every file named in :data:`CS224N_SHA256` must match its digest, whatever the URL base (a
    mirror serves the same files); other files (e.g. ``quora-test-student.csv``) are checked
    against their Content-Length only. A cached file with a wrong digest is fetched again. A
    local directory is read as it is.
    """
    if not source.startswith(("http://", "https://")):
        return _source_dir(source)
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
            pinned = CS224N_SHA256.get(dest.name)
            if dest.is_file() and (pinned is None or _sha256(dest) == pinned):
                continue
            url = f"{base}/{dest.name}"
            if not _download(url, dest) and split != "test":  # a test file may be absent
                raise DataError(
                    f"{dest.name}: {url} answered 404 Not Found; the {task} {split} split is "
                    "required: is data.source the base URL of the raw CS224N files?"
                )
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
