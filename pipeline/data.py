"""Task data: reading, validation, and the prepared parquet tables.

Each task of params `tasks:` (pipeline/tasks.py) names its files and their format: the CS224N
TSVs (below), CSV, TSV, JSON lines or parquet with the declared text, label and id columns. A
classification label is a class index or a declared class name; a label outside the declared
classes or range, or a declared column missing from the file, stops with an error naming the
task, the file, the row and the field (in a CS224N file such a row is rejected and counted, as
the real files have a few).

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
a column named twice, field count, quoting) or that has no usable row stops with an error naming
the file, line and field. In a test split an empty text is kept (and counted): a submission must
hold every test id, and a leaderboard scores a missing one as wrong. Windows line endings and a
UTF-8 byte-order mark are accepted; a field may be of any length.

Values are taken as written, never coerced: a label is an ASCII number (``0_1`` and a fullwidth
``１``, which Python's ``float`` reads as 1, are not); in a JSON-lines or parquet file a text
that is a number, a boolean, a list or an object is an error, and so is a float id; an id
holding a line break, tab or control character is an error (each id is one submission line).

``prepare`` counts the rows of one split also in another (the same id, or the same example: the
sentence, a pair in either order, case and spacing aside) per task and pair of splits, and drops
such train rows when asked (``data.leakage``). Before it opens anything, a FIFO, socket or device
in a directory it reads stops it: reading one waits forever, and so does DVC, which hashes it.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import http.client
import io
import json
import logging
import math
import os
import re
import stat
import unicodedata
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import delimited
from pipeline.config import MemberConfig
from pipeline.errors import UserError, one_line
from pipeline.io import atomic_path, write_json, write_parquet
from pipeline.tasks import TaskSpec, default_tasks, task_spec

SPLITS = ("train", "dev", "test")

log = logging.getLogger("bestfit.data")


@dataclass(frozen=True)
class LabelSpec:
    file_column: str  # the label's column in the file
    integer: bool
    low: float
    high: float
    dtype: str  # pandas dtype of the prepared `label` column


# The augmented tables (data/augmented/eda.parquet, amazon.parquet, reviews_labeled.parquet):
# extra training rows of `augment.task`, then where each came from (source: eda, amazon, llm; the
# row it was made from; how; a similarity or confidence, null where there is none). A table's
# own columns follow these.
AUGMENTED_SCHEMA = {"id": "str", "sentence": "str", "label": "Int8", "source": "str",
                    "source_id": "str", "method": "str", "score": "Float32"}
AUGMENT_FILES = {"eda": "eda.parquet", "amazon": "amazon.parquet", "llm": "reviews_labeled.parquet"}


def augmented_table(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the shared columns first, in :data:`AUGMENTED_SCHEMA`'s dtypes."""
    missing = [c for c in AUGMENTED_SCHEMA if c not in frame.columns]
    if missing:
        raise ValueError(f"an augmented table needs the columns {missing}")
    own = [c for c in frame.columns if c not in AUGMENTED_SCHEMA]
    return frame.astype(AUGMENTED_SCHEMA)[[*AUGMENTED_SCHEMA, *own]]


def label_spec(task: TaskSpec | str) -> LabelSpec:
    spec = task_spec(task)
    low, high = spec.label_range
    integer = spec.kind != "regression"
    dtype = "float32" if not integer else ("Int8" if high <= 127 else "Int32")
    return LabelSpec(spec.data.label, integer=integer, low=low, high=high, dtype=dtype)


def schema(task: TaskSpec | str) -> dict[str, str]:
    """A prepared table's columns -> pandas dtype; labels are null in the test split."""
    spec = task_spec(task)
    return {"id": "str", **dict.fromkeys(spec.text_columns, "str"), "label": label_spec(spec).dtype}

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
# A label as a file writes a number: ASCII digits only (Python's float() would also read
# `0_1` as 1 and a fullwidth `１` as 1).
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)


class DataError(UserError):
    """A data file is missing or malformed; the message names the file, line and field."""


def file_name(task: TaskSpec | str, split: str) -> str | None:
    """The file of ``task``'s ``split`` as declared (None: an undeclared test split)."""
    return getattr(task_spec(task).data, split)


def task_dir(task: TaskSpec | str, source_dir: Path) -> Path:
    """The directory a task's file names are relative to: its ``data.dir``, else the CS224N
    source for the cs224n format and the project root for the others."""
    spec = task_spec(task)
    if spec.data.dir is not None:
        return Path(spec.data.dir)
    return Path(source_dir) if spec.data.format == "cs224n" else Path(".")


REPORT_FILE = "report.json"  # in the prepared dir: rows read, kept, rejected and why


def prepared_path(prepared_dir: Path, task: TaskSpec | str, split: str) -> Path:
    name = task if isinstance(task, str) else task.name
    return Path(prepared_dir) / f"{name}_{split}.parquet"


@dataclass
class SplitReport:
    """What reading one file kept and rejected, for ``report.json``."""

    file: str
    rows_read: int = 0
    rows_kept: int = 0
    rows_written: int | None = None  # after the `train_rows` cap; None until written
    missing: bool = False
    rows_rejected: int = 0
    rows_empty_text: int = 0  # test rows kept with an empty text (predicted from none)
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
            "rows_empty_text": self.rows_empty_text,
            # A row with several problems counts under each of them.
            "rejected": dict(sorted(self.rejected.items())),
            "rejected_examples": self.rejected_examples,
        }


def empty_table(task: TaskSpec | str) -> pd.DataFrame:
    return pd.DataFrame({col: pd.Series([], dtype=dt) for col, dt in schema(task).items()})


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
    if not _NUMBER.fullmatch(text):
        return None, "label not a number"
    value = float(text)
    if not math.isfinite(value):  # 1e999
        return None, "label not a number"
    if spec.integer:
        if not value.is_integer():
            return None, "label not an integer"
        value = int(value)
    if not spec.low <= value <= spec.high:
        return None, "label out of range"
    return value, None


def _check_id(row_id: str, where: str) -> None:
    """An id is one line of a submission file (``id , prediction``): a line break, tab or other
    control character in it would split or shift that line."""
    bad = next((c for c in row_id if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)
    if bad is None:
        return
    what = {"\n": "a line break (\\n)", "\r": "a carriage return (\\r)", "\t": "a tab"}.get(
        bad, f"the control character U+{ord(bad):04X}")
    raise DataError(f"{where}: id {row_id!r} holds {what}; an id is written as one line of the "
                    "submission file, so it must hold no line break, tab or control character")


def _parse_record(
    spec: TaskSpec, labels: LabelSpec, record: dict[str, str], labelled: bool
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Clean one row's fields; also return every (reason, raw value) that makes it unusable
    (an empty text only in a labelled split: a test row is predicted whatever its text)."""
    problems = []
    values: dict[str, Any] = {"id": record["id"].strip()}
    if not values["id"]:
        problems.append(("blank id", record["id"]))
    for file_col, col in zip(spec.data.text, spec.text_columns, strict=True):
        text = record[file_col].strip()
        if spec.data.twice_quoted:
            text = _unquote_twice_quoted(text).strip()
        values[col] = text
        if not text and labelled:
            problems.append((f"empty {col}", record[file_col]))
    values["label"] = None
    if labelled:
        values["label"], reason = _parse_label(record[labels.file_column], labels)
        if reason is not None:
            problems.append((reason, record[labels.file_column]))
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


def _columns_hint(got: list[str], task: TaskSpec, labelled: bool) -> str:
    """``; these are the columns of <another CS224N file>`` when ``got`` matches one exactly."""
    for other in default_tasks().values():
        for other_labelled, splits in ((True, ("train", "dev")), (False, ("test",))):
            if (other.data, other_labelled) == (task.data, labelled):
                continue
            if got == _expected_columns(other, other_labelled):
                names = " or ".join(file_name(other, split) for split in splits)
                return f"; these are the columns of {names}: is it the wrong file?"
    return ""


def _expected_columns(task: TaskSpec, labelled: bool) -> list[str]:
    """The named columns of a CS224N file, after its index column(s)."""
    return ["id", *task.data.text, *([task.data.label] if labelled else [])]


def _check_header(path: Path, header: list[str], task: TaskSpec, labelled: bool) -> list[str]:
    """Check the header line; return the column names of the file (index columns included).

    A file has one or two unnamed index columns, then exactly ``id``, the text column(s) and,
    in train and dev files, the label. The message names the first field that differs.
    """
    expected = _expected_columns(task, labelled)
    names = [name.strip() for name in header]
    where = f"{path}: line 1 (header)"
    _refuse_repeated_columns(where, names)
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


def _refuse_repeated_columns(where: str, names: list[str]) -> None:
    """Stop at a column name given twice (unnamed index columns aside): which of the two a
    reader would take is a guess."""
    first: dict[str, int] = {}
    for i, name in enumerate(names, 1):
        if name and name in first:
            raise DataError(f"{where}: column {name!r} appears twice (fields {first[name]} and "
                            f"{i}); each column needs a name of its own")
        first.setdefault(name, i)


def _bad_quote_field(line_text: str, names: list[str], delimiter: str) -> str:
    """`` field N ('name')``: the first field on the line opening a quote it does not close."""
    for i, value in enumerate(line_text.split(delimiter)):
        if value.startswith('"') and not _QUOTED.fullmatch(value.rstrip("\r\n")):
            name = f" ({names[i]!r})" if i < len(names) else ""
            return f", field {i + 1}{name}"
    return ""


def _csv_error(path: Path, text: str, start: int, exc: csv.Error, names: list[str],
               delimiter: str) -> DataError:
    """Turn the CSV reader's error on the record starting at line ``start`` into a DataError
    naming the line and field where the offending quote opens."""
    lines = re.split(r"\r\n|\r|\n", text, maxsplit=start)
    where = f"{path}: line {start}{_bad_quote_field(lines[start - 1], names, delimiter)}"
    if "unexpected end of data" in str(exc):
        return DataError(f"{where}: a quote (\") opened here is never closed before the file ends")
    return DataError(
        f"{where}: malformed quoting ({exc}): a field that starts with a quote must end with one, "
        'quotes inside it doubled ("")'
    )


def _records(path: Path, text: str, names: list[str], delimiter: str = "\t"
             ) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line, fields)`` for each record, ``line`` being where it starts (1-based).

    ``names`` (filled in by the caller once the header is read) name the field in an error. A
    field may be of any length (pipeline/delimited.py): a long sentence is read whole.
    """
    reader = delimited.reader(io.StringIO(text, newline=""), delimiter)
    line = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise _csv_error(path, text, line + 1, exc, names, delimiter) from exc
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


def _source_file(source_dir: Path, task: TaskSpec, split: str) -> Path | None:
    """The path of the file for ``task``/``split``, or None for an absent test file."""
    name = file_name(task, split)
    if name is None:
        return None
    path = task_dir(task, source_dir) / name
    task = task.name
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a file (the {task} {split} split)")
    if not path.exists():
        if path.is_symlink():
            raise DataError(f"{path}: a symbolic link to {os.readlink(path)!r}, which is missing")
        if split == "test":
            return None
        raise DataError(f"{path}: not found; the {task} {split} split is required")
    if not path.is_file():
        kind = special_file_kind(path) or "not a regular file"
        raise DataError(f"{path}: {kind}; expected the {task} {split} split file")
    return path


SPECIAL_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                 (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def special_file_kind(path: Path) -> str | None:
    """What ``path`` (followed if a link) is when it is a FIFO, socket or device, else None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return next((kind for test, kind in SPECIAL_KINDS if test(mode)), None)


def refuse_special_files(directory: Path, what: str) -> None:
    """Stop at a FIFO, socket or device under ``directory`` (walked, links not followed into
    directories; only listed when it is the working directory or holds it).

    Reading one waits for a writer forever, and DVC hashes every file of a directory it tracks
    or depends on: `dvc status` and `dvc repro` hang on it, with no word of why.
    """
    directory = Path(directory)
    here = Path.cwd().resolve()
    listed_only = directory.resolve() in (here, *here.parents)
    walk = [(str(directory), [], os.listdir(directory))] if listed_only else os.walk(directory)
    for root, dirs, files in walk:
        dirs.sort()
        for name in sorted(files):
            kind = special_file_kind(Path(root) / name)
            if kind is not None:
                raise DataError(
                    f"{Path(root) / name}: {kind}, not a regular file, in {what} ({directory}); "
                    "reading it waits forever and DVC hashes every file there (`dvc status`, "
                    "`dvc repro` hang): remove it or move it out")


def _no_rows_error(path: Path, task: str, split: str, report: SplitReport) -> DataError:
    if report.rows_read == 0:
        what = "no rows after the header"
    else:
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(report.rejected.items()))
        what = f"all {report.rows_read} rows rejected ({reasons})"
    need = "remove the file if the source has no test split" if split == "test" else (
        "a required split needs at least one usable row")
    return DataError(f"{path}: {what}; {need}")


def read_task_split(source_dir: Path, task: TaskSpec | str, split: str
                    ) -> tuple[pd.DataFrame, SplitReport]:
    """Read and validate one file of ``task`` into its prepared schema.

    ``source_dir`` is where the CS224N files are (``data.source``); a task's own ``data.dir``
    overrides it. A missing test file gives an empty table (its report says ``missing``); a
    missing train or dev file, a directory or unreadable file in its place, or a file present
    with no usable row is an error. Windows line endings and a leading byte-order mark are
    accepted.
    """
    spec = task_spec(task)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split}; known: {SPLITS}")
    path = _source_file(source_dir, spec, split)
    report = SplitReport(file=file_name(spec, split) or "")
    if path is None:
        report.missing = True
        return empty_table(spec), report
    if spec.data.format != "cs224n":
        table = read_tabular(path, spec, split, report)
        if report.rows_kept == 0:
            raise _no_rows_error(path, spec.name, split, report)
        return table, report
    task = spec
    labelled = split != "test"
    names: list[str] = []
    records = _records(path, _read_text(path), names)
    header = next(records, None)
    if header is None:
        raise DataError(f"{path}: empty file; expected a header line")
    names += _check_header(path, header[1], task, labelled)
    n_index = len(names) - len(_expected_columns(task, labelled))
    columns: dict[str, list[Any]] = {col: [] for col in schema(task)}
    labels = label_spec(task)
    seen: set[str] = set()
    for line, row in records:
        report.rows_read += 1
        if not row or (len(row) == 1 and not row[0].strip()):
            report.reject(line, "", [("blank line", "".join(row))])
            continue
        if len(row) != len(names):
            raise _field_count_error(path, line, row, names, labels if labelled else None)
        record = dict(zip(names[n_index:], row[n_index:], strict=True))
        values, problems = _parse_record(task, labels, record, labelled)
        _check_id(values["id"], f"{path}: line {line}, field {n_index + 1} ('id')")
        if values["id"] in seen:
            problems.insert(0, ("duplicate id", values["id"]))
        if problems:
            report.reject(line, values["id"], problems)
            continue
        if not all(values[col] for col in task.text_columns):
            report.rows_empty_text += 1
        seen.add(values["id"])
        for col, value in values.items():
            columns[col].append(value)
    report.rows_kept = len(columns["id"])
    if report.rows_kept == 0:
        raise _no_rows_error(path, task.name, split, report)
    table = pd.DataFrame(
        {col: pd.Series(columns[col], dtype=dtype) for col, dtype in schema(task).items()}
    )
    return table, report


class _RepeatedKey(Exception):
    """A JSON object naming one key twice (json.loads keeps the last silently)."""


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _RepeatedKey(key)
        obj[key] = value
    return obj


Records = Iterator[tuple[int, dict[str, Any] | None]]  # (line or row, the row; None: blank)


def _delimited_records(path: Path, spec: TaskSpec) -> tuple[list[str], Records]:
    """A CSV or TSV file's header names (spaces around them dropped) and its rows of strings."""
    delimiter = "," if spec.data.format == "csv" else "\t"
    text = _read_text(path)
    names: list[str] = []
    records = _records(path, text, names, delimiter)
    header = next(records, None)
    if header is None:
        raise DataError(f"{path}: task {spec.name}: empty file; expected a header line")
    names += [name.strip() for name in header[1]]
    _refuse_repeated_columns(f"{path}: line 1 (header)", names)

    def rows() -> Records:
        for line, row in records:
            if not row or (len(row) == 1 and not row[0].strip()):
                yield line, None
            elif len(row) != len(names):
                raise _field_count_error(path, line, row, names, None)
            else:
                yield line, dict(zip(names, row, strict=True))

    return names, rows()


def _jsonl_records(path: Path, spec: TaskSpec) -> tuple[list[str], Records]:
    """A JSON-lines file's keys (in order of first appearance) and its objects, as parsed: a
    text that is a number stays a number, for :func:`_cell_text` to refuse."""
    where = f"{path}: task {spec.name}: not a readable jsonl file (tasks.{spec.name}.data.format)"
    lines = _read_text(path).split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline ending the last line
    keys: dict[str, None] = {}
    rows: list[tuple[int, dict[str, Any] | None]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            rows.append((number, None))
            continue
        try:
            obj = json.loads(line, object_pairs_hook=_json_object)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: line {number}, column {exc.colno}: {exc.msg}") from None
        except _RepeatedKey as exc:
            raise DataError(f"{path}: task {spec.name}: line {number}: key {exc.args[0]!r} "
                            "appears twice in the object; which one is meant is a guess") from None
        if not isinstance(obj, dict):
            raise DataError(f"{where}: line {number}: {_kind(obj)}, expected a JSON object "
                            "({...}) per line")
        keys.update(dict.fromkeys(obj))
        rows.append((number, obj))
    return list(keys), iter(rows)


def _parquet_records(path: Path, spec: TaskSpec) -> tuple[list[str], Records]:
    """A parquet file's columns and its rows (0-based, as a parquet reader counts them), in the
    file's own types."""
    try:
        frame = pd.read_parquet(path)
    except (ValueError, OSError) as exc:  # pyarrow's errors for a truncated or foreign file
        raise DataError(f"{path}: task {spec.name}: not a readable parquet file "
                        f"(tasks.{spec.name}.data.format): {one_line(exc)}") from None
    names = [str(c) for c in frame.columns]
    _refuse_repeated_columns(f"{path}: schema", names)
    return names, enumerate(frame.to_dict("records"))


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _kind(value: Any) -> str:
    """What a cell holds, in JSON's words."""
    if isinstance(value, (bool, np.bool_)):
        return "a boolean"
    if isinstance(value, (int, float, np.number)):
        return "a number"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple, np.ndarray)):
        return "a list"
    return f"a {type(value).__name__}"


def _cell_text(value: Any, where: str) -> str:
    """A text cell, stripped ('' when missing); anything but a string is an error, not turned
    into one (a number where a sentence goes means a wrong column or a broken export)."""
    if _missing(value):
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: {_kind(value)} ({value!r}); expected text (a string)")
    return value.strip()


def _cell_id(value: Any, where: str) -> str:
    """An id cell: a string or an integer ('' when missing). A float id is an error: a column of
    integer ids with a missing value is stored as float, and 12.0 is not the id 12."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and not _missing(value):
        raise DataError(f"{where}: a number with a fraction part ({value!r}); expected an id, "
                        "a string or an integer (a column of integer ids with a missing value "
                        "is stored as float: write the ids as strings)")
    return _cell_text(value, where)


def _label_text(value: Any) -> str | None:
    """A label cell as text ('' when missing); None for a value no label can be (a boolean, a
    list, an object)."""
    if _missing(value):
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return None


def _declared_label(value: Any, spec: TaskSpec, labels: LabelSpec, where: str
                    ) -> tuple[float | int | None, str | None]:
    """(label, None), (None, "blank label"), or an error: the declaration says what a label is,
    so one outside it means the declaration or the file is wrong."""
    text = _label_text(value)
    if text == "":
        return None, "blank label"
    if text is not None:
        if spec.kind != "regression" and text in spec.classes:
            return spec.classes.index(text), None
        label, reason = _parse_label(text, labels)
        if reason is None:
            return label, None
    if spec.kind == "regression":
        expected = f"a number in tasks.{spec.name}.range {list(spec.range)}"
    else:
        names = f"one of tasks.{spec.name}.classes {spec.classes} or " if spec.classes else ""
        expected = f"{names}a class index 0…{int(labels.high)}"
    raise DataError(f"{where}: {value!r} is not a declared label; expected {expected}")


READERS = {"csv": _delimited_records, "tsv": _delimited_records, "jsonl": _jsonl_records,
           "parquet": _parquet_records}


def read_tabular(path: Path, spec: TaskSpec, split: str, report: SplitReport) -> pd.DataFrame:
    """Read a task's CSV, TSV, JSON-lines or parquet file into its prepared schema.

    Rows with a blank label, a repeated id, (train, dev) an empty text, or blank lines are
    rejected and counted; a declared column missing from the file, a column named twice, a
    label outside the declared classes or range, a text that is not a string or an id holding
    a line break is an error naming the task, the file, the row and the field.
    """
    columns, records = READERS[spec.data.format](path, spec)
    labelled = split != "test"
    files = spec.data
    declared = {f"text[{k}]": col for k, col in enumerate(files.text)}
    if files.id is not None:
        declared["id"] = files.id
    if labelled:
        declared["label"] = files.label
    for key, column in declared.items():
        if column not in columns:
            near = [c for c in columns if c.strip() == column]
            hint = f" ({near[0]!r} has spaces around its name)" if near else ""
            raise DataError(f"{path}: task {spec.name}: column {column!r} "
                            f"(tasks.{spec.name}.data.{key.split('[')[0]}) is not in the file; "
                            f"its columns: {columns}{hint}")
    labels = label_spec(spec)
    unit = "row" if files.format == "parquet" else "line"
    table: dict[str, list[Any]] = {col: [] for col in schema(spec)}
    seen: set[str] = set()
    for k, (line, record) in enumerate(records):
        report.rows_read += 1
        if record is None:
            report.reject(line, "", [("blank line", "")])
            continue
        at = f"{path}: task {spec.name}: {unit} {line}, field"
        id_at = f"{at} {files.id or 'id'!r}"
        row_id = _cell_id(record.get(files.id), id_at) if files.id is not None else str(k)
        _check_id(row_id, id_at)
        values: dict[str, Any] = {"id": row_id, "label": None}
        problems = [("blank id", "")] if not row_id else []
        if row_id in seen:
            problems.append(("duplicate id", row_id))
        for file_col, col in zip(files.text, spec.text_columns, strict=True):
            values[col] = _cell_text(record.get(file_col), f"{at} {file_col!r}")
            if not values[col] and labelled:
                problems.append((f"empty {col}", ""))
        if labelled:
            values["label"], reason = _declared_label(record.get(files.label), spec, labels,
                                                      f"{at} {files.label!r}")
            if reason is not None:
                problems.append((reason, ""))
        if problems:
            report.reject(line, row_id, problems)
            continue
        if not all(values[col] for col in spec.text_columns):
            report.rows_empty_text += 1
        seen.add(row_id)
        for col, value in values.items():
            table[col].append(value)
    report.rows_kept = len(table["id"])
    return pd.DataFrame(
        {col: pd.Series(table[col], dtype=dtype) for col, dtype in schema(spec).items()})


def load_prepared(prepared_dir: Path, task: TaskSpec | str, split: str) -> pd.DataFrame:
    """Read a prepared table and check it has the schema of :func:`schema` (extras allowed)."""
    path = prepared_path(prepared_dir, task, split)
    if not path.is_file():
        raise DataError(f"{path}: not found; run the prepare stage (`dvc repro prepare`)")
    try:
        table = pd.read_parquet(path)
    except (OSError, ValueError) as exc:  # pyarrow's errors for a truncated or foreign file
        raise DataError(
            f"{path}: not a readable parquet table ({exc}); run the prepare stage again"
        ) from exc
    expected = schema(task)
    for col, dtype in expected.items():
        if col not in table.columns:
            raise DataError(
                f"{path}: column {col!r} missing; expected {list(expected)}, "
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


def _source_tasks(tasks: dict[str, TaskSpec] | None) -> list[TaskSpec]:
    """The tasks whose files are read from ``data.source``: cs224n ones with no ``data.dir``."""
    return [spec for spec in (tasks or default_tasks()).values()
            if spec.data.format == "cs224n" and spec.data.dir is None]


def _source_dir(source: str, tasks: list[TaskSpec]) -> Path:
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
            f"({file_name(tasks[0], 'train')}, ...)"
        )
    known = [name for task in tasks for split in SPLITS if (name := file_name(task, split))]
    if not any((directory / name).exists() for name in known):
        inner = " (its data/ subdirectory does)" if any(
            (directory / "data" / name).exists() for name in known) else ""
        raise DataError(
            f"data.source: directory {source!r} holds none of the CS224N files "
            f"({', '.join(known[:3])}, ...){inner}"
        )
    return directory


def fetch_source(source: str, cache_dir: Path, tasks: dict[str, TaskSpec] | None = None) -> Path:
    """Return a local directory holding the CS224N files named by ``source``: those of the
    cs224n-format ``tasks`` (default: SST, QQP, STS) with no ``data.dir`` of their own.

    ``source`` is a directory, or an http(s) URL base whose files are downloaded once into
    ``cache_dir`` (a ``.source`` file there records the URL, so changing it fetches afresh).
    Every file named in :data:`CS224N_SHA256` must match its digest, whatever the URL base (a
    mirror serves the same files); other files (e.g. ``quora-test-student.csv``) are checked
    against their Content-Length only. A cached file with a wrong digest is fetched again. A
    local directory is read as it is.
    """
    specs = _source_tasks(tasks)
    if not source.startswith(("http://", "https://")):
        return _source_dir(source, specs)
    base = source.rstrip("/")
    cache_dir = Path(cache_dir)
    marker = cache_dir / ".source"
    fresh = not marker.is_file() or marker.read_text().strip() != base
    files = [(spec, split, name) for split in SPLITS for spec in specs
             if (name := file_name(spec, split))]
    if fresh and cache_dir.is_dir():
        for _, _, name in files:
            (cache_dir / name).unlink(missing_ok=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(base + "\n")
    for spec, split, name in files:  # train and dev first: they are required, so fail fast
        dest = cache_dir / name
        pinned = CS224N_SHA256.get(name)
        if dest.is_file() and (pinned is None or _sha256(dest) == pinned):
            continue
        url = f"{base}/{name}"
        if not _download(url, dest) and split != "test":  # a test file may be absent
            raise DataError(
                f"{name}: {url} answered 404 Not Found; the {spec.name} {split} split is "
                "required: is data.source the base URL of the raw CS224N files?"
            )
    return cache_dir


def capped_index(rows: int, cap: int | None, seed: int) -> np.ndarray | None:
    """A seeded uniform sample of ``cap`` of ``rows`` row indices without replacement, in
    order; None when the cap keeps every row."""
    if cap is None or cap >= rows:
        return None
    return np.sort(np.random.default_rng(seed).choice(rows, size=cap, replace=False))


def cap_rows(table: pd.DataFrame, cap: int | None, seed: int) -> pd.DataFrame:
    """A seeded uniform sample of ``cap`` rows without replacement, in file order."""
    keep = capped_index(len(table), cap, seed)
    return table if keep is None else table.iloc[keep].reset_index(drop=True)


# Leakage: a row of one split whose id, or whose example, is also in a later split. Only train
# rows are ever dropped (data.leakage: drop); dev and test stay the benchmark's own.
LEAKAGE = ("keep", "drop")
LEAKAGE_PAIRS = (("train", "dev"), ("train", "test"), ("dev", "test"))
LEAKAGE_EXAMPLES = 5


def _example_keys(table: pd.DataFrame, spec: TaskSpec) -> pd.Series:
    """Each row's example with case and spacing folded; a pair's sentences in sorted order,
    so that (a, b) and (b, a) are the same pair."""
    texts = [table[col].map(lambda text: " ".join(text.casefold().split()))
             for col in spec.text_columns]
    if len(texts) == 1:
        return texts[0]
    return pd.Series([f"{min(a, b)}\0{max(a, b)}" for a, b in zip(*texts, strict=True)],
                     index=table.index, dtype=object)


def leaked_rows(first: pd.DataFrame, second: pd.DataFrame, spec: TaskSpec
                ) -> tuple[np.ndarray, np.ndarray]:
    """Which rows of ``first`` have their id in ``second``, and which their example (the
    sentence, or the pair in either order, case and spacing aside)."""
    # Positional ids (no id column: a row's number) say nothing about which rows are shared.
    same_id = (first["id"].isin(set(second["id"])).to_numpy(bool) if spec.data.id is not None
               else np.zeros(len(first), bool))
    same_example = _example_keys(first, spec).isin(set(_example_keys(second, spec)))
    return same_id, same_example.to_numpy(bool)


def _leakage(tables: dict[str, pd.DataFrame], spec: TaskSpec
             ) -> tuple[dict[str, Any], np.ndarray]:
    """``report.json``'s leakage counts of one task, and which train rows leak into dev or
    test."""
    counts, train_leaks = {}, np.zeros(len(tables["train"]), bool)
    for first, second in LEAKAGE_PAIRS:
        same_id, same_example = leaked_rows(tables[first], tables[second], spec)
        leaked = same_id | same_example
        counts[f"{first}-{second}"] = {
            "rows": int(leaked.sum()), "same_id": int(same_id.sum()),
            "same_example": int(same_example.sum()),
            "examples": tables[first]["id"][leaked].head(LEAKAGE_EXAMPLES).tolist()}
        if first == "train":
            train_leaks |= leaked
    return counts, train_leaks


@dataclass
class Prepared:
    """Every split of every task, validated and capped, and the report of how (``report.json``:
    rows read, kept, rejected and why, per split)."""

    tables: dict[tuple[str, str], pd.DataFrame]  # (task, split) → table in its schema
    report: dict[str, Any]


def prepare(
    source: str, train_rows: dict[str, int], seed: int, cache_dir: Path,
    dev_rows: dict[str, int] | None = None, tasks: dict[str, TaskSpec] | None = None,
    leakage: str = "keep",
) -> Prepared:
    """Read every split of every task (default: the CS224N ones) from its files; ``source`` is
    where the cs224n-format files are (downloaded into ``cache_dir`` when a URL).

    Train rows also in dev or test (the same id, or the same example) are counted in the
    report, and dropped from train when ``leakage`` is ``drop``; dev rows also in test are
    counted. ``train_rows`` / ``dev_rows`` then cap a task's train / dev split to a seeded
    sample (CPU-sized runs: QQP's 20k dev pairs would cost more than a short epoch to score).
    Before any file is opened, a FIFO, socket or device beside the files stops it.
    """
    tasks = tasks or default_tasks()
    caps = {"train": train_rows, "dev": dev_rows or {}}
    for split, split_caps in caps.items():
        bad = {t: n for t, n in split_caps.items() if t not in tasks or n < 1}
        if bad:
            raise DataError(
                f"data.{split}_rows: expected positive caps for tasks {list(tasks)}, got {bad}")
    if leakage not in LEAKAGE:
        raise DataError(f"data.leakage: {leakage!r}; expected one of {list(LEAKAGE)}")
    source_dir = fetch_source(source, cache_dir, tasks) if _source_tasks(tasks) else Path(".")
    for directory in dict.fromkeys(
            (task_dir(spec, source_dir) / name).parent for spec in tasks.values()
            for split in SPLITS if (name := file_name(spec, split))):
        if directory.is_dir():
            refuse_special_files(directory, "a data directory prepare reads")
    tables, reports, leaks = {}, {}, {}
    for task, spec in tasks.items():
        read = {split: read_task_split(source_dir, spec, split) for split in SPLITS}
        split_tables = {split: table for split, (table, _) in read.items()}
        leaks[task], train_leaks = _leakage(split_tables, spec)
        if leakage == "drop":
            leaks[task]["train_rows_dropped"] = int(train_leaks.sum())
            if train_leaks.all():
                raise DataError(f"{task} train: all {len(train_leaks)} rows are also in dev or "
                                "test (data.leakage: drop leaves none)")
            split_tables["train"] = split_tables["train"][~train_leaks].reset_index(drop=True)
        for split in SPLITS:
            table, report = split_tables[split], read[split][1]
            if split in caps:
                table = cap_rows(table, caps[split].get(task), seed)
            report.rows_written = len(table)
            tables[task, split], reports[task, split] = table, report
    summary = {
        "source": source,
        "train_rows": dict(train_rows),
        "dev_rows": dict(caps["dev"]),
        "seed": seed,
        "tasks": {
            task: {split: reports[task, split].to_dict() for split in SPLITS} for task in tasks
        },
        # Counted on the splits as read, before the caps.
        "leakage": {"policy": leakage, "tasks": leaks},
    }
    return Prepared(tables, summary)


def write_prepared(prepared: Prepared, out_dir: Path) -> None:
    """The tables and ``report.json`` as the prepared dir, replaced whole (a table of a task
    no longer declared does not stay behind); ``load_prepared`` reads them back."""
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for (task, split), table in prepared.tables.items():
            write_parquet(table, prepared_path(tmp, task, split))
        write_json(prepared.report, tmp / REPORT_FILE)


def member_frames(member: MemberConfig, prepared_dir: Path, augmented_dir: Path,
                  augment_task: str = "sst") -> dict[str, dict[str, pd.DataFrame]]:
    """A member's prepared tables per task and split; ``augment_task``'s training set gains the
    augmented rows the member opts into (``models.<member>.augment``). A table with no rows (no
    review source, LLM labelling off) adds none, with a notice."""
    frames = {task: {split: load_prepared(prepared_dir, member.specs[task], split)
                     for split in SPLITS} for task in member.tasks}
    if member.augment:
        extra = []
        for source in member.augment:
            path = Path(augmented_dir) / AUGMENT_FILES[source]
            if not path.is_file():
                raise DataError(f"{path}: not found; member {member.name!r} asks for augment "
                                f"source {source!r}; run its stage first (dvc repro)")
            rows = pd.read_parquet(path, columns=["id", "sentence", "label"])
            if rows.empty:
                log.warning("%s has no rows: member %r trains without augment source %r (the "
                            "note in its stage's report says why)", path, member.name, source)
            extra.append(rows)
        base = frames[augment_task]["train"]
        frames[augment_task]["train"] = pd.concat([base[["id", "sentence", "label"]], *extra],
                                                  ignore_index=True)
    return frames
