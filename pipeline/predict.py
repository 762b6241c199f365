"""Predictions of a saved member, for people and scripts: the ``bestfit-predict`` command.

    bestfit-predict MODEL_DIR --text "a great film" --text "a dull plot"
    bestfit-predict --member multitask --task qqp --pair "how do i cook rice?" "how to cook rice"
    bestfit-predict MODEL_DIR --task sts --input pairs.csv --format jsonl --output sts.jsonl
    cut -f2 sentences.tsv | bestfit-predict MODEL_DIR --task sst --format csv

Input: sentences on the command line (``--text``, ``--pair``), a file (``--input``: .csv, .tsv,
.jsonl, .parquet, or .txt with one example per line), or lines on stdin; on a line, a pair's two
sentences are separated by a tab. Output, one row per example in input order: its ``id`` (the
input's ``id`` column, else its 1-based position) and sentence(s), then by the task's kind: a
classification's ``label`` (the class name), ``class`` (0…N−1) and a probability per class
(SST); a binary task's ``p_<positive class>``, ``class`` (1 when p ≥ 0.5) and ``label`` (QQP:
``p_duplicate``); a regression's value clipped to the declared range, ``similarity`` for a pair
(STS, 0–5) and ``value`` for a sentence.

A file or stdin is streamed: read :data:`CHUNK_SIZE` examples at a time, each chunk predicted in
length-sorted batches (:func:`pipeline.evaluate.predict`, under inference mode) and written
before the next is read, so memory stays flat however long the input. ``--output`` that is a
regular file (or a new path) is written to a temporary name and renamed into place at the end;
one that is a FIFO, a terminal or another device (``/dev/stdout``) is written directly; an
existing directory is an error, left as it is. The table for people shows control characters of
the text as escapes (``\x1b``): a sentence cannot rewrite the terminal; jsonl and csv keep the
data as it is. Bad input stops with one line naming the file, line or row and column (on stdout,
the chunks before it are already written).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import stat
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, TextIO

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from pipeline import delimited
from pipeline.batching import tokenize_task
from pipeline.config import MemberConfig
from pipeline.errors import UserError, run_stage
from pipeline.evaluate import predict
from pipeline.io import atomic_path, written_in_place
from pipeline.model import MultitaskModel, read_member_config
from pipeline.seeds import seed_dir
from pipeline.tasks import TaskSpec, task_spec

FORMATS = ("table", "jsonl", "csv")
# The format an --output name implies when --format is not given.
FORMAT_OF_SUFFIX = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
STDIN = "-"
TABLE_TEXT_WIDTH = 48  # characters of a sentence shown in the table for people
# Examples read, predicted and written at a time: large enough that length-sorting within a
# chunk leaves little padding, small enough that a chunk's tables are a few MB.
CHUNK_SIZE = 4096
# What the table shows for each character a terminal would act on: C0 and C1 controls (ESC
# starts the ANSI sequences that move the cursor, recolour or retitle), DEL, line and paragraph
# separators, and the bidirectional marks and overrides that reorder what is shown.
TERMINAL_ESCAPES = {
    **{c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))},
    **{ord("\t"): "\\t", ord("\n"): "\\n", ord("\r"): "\\r"},
    **{c: f"\\u{c:04x}" for c in (0x061C, 0x200E, 0x200F, 0x2028, 0x2029,
                                   *range(0x202A, 0x202F), *range(0x2066, 0x206A))},
}

# Characters JSON leaves as they are inside a string but that many line readers (Python's
# str.splitlines among them) take for a line break: escaped in jsonl, the same value.
JSON_LINE_BREAKS = {c: f"\\u{c:04x}" for c in (0x85, 0x2028, 0x2029)}


class InputError(UserError):
    """Input sentences that cannot be read; the message names the file, line or row, and
    column."""


# --- reading the examples, a chunk at a time ---------------------------------------------------

# One example as a reader gives it: its line or row number, its id (None: none given) and its
# texts, one per column.
Example = tuple[int, object, Sequence[object]]


def _text_lines(stream: BinaryIO, source: str) -> Iterator[tuple[int, str]]:
    """Each line of a UTF-8 byte stream with its number, line ending kept (the CSV reader needs
    it) and a BOM dropped; a byte that is not UTF-8 is an error naming its offset."""
    offset = 0
    for number, raw in enumerate(stream, start=1):
        try:
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"{source}: line {number}, byte {offset + exc.start}: not UTF-8 "
                             f"text") from None
        offset += len(raw)
        yield number, line


def _file_lines(path: Path) -> Iterator[tuple[int, str]]:
    with path.open("rb") as stream:
        yield from _text_lines(stream, str(path))


def _check_text(value: object, where: str, column: str) -> None:
    if not isinstance(value, str):
        raise InputError(f"{where}, column {column!r}: {value!r} is not a string; expected a "
                         f"sentence")
    if not value or value.isspace():
        raise InputError(f"{where}, column {column!r}: empty; expected a sentence")
    if "\0" in value:  # UTF-16 text read as UTF-8 is mostly NULs; binary data too
        raise InputError(f"{where}, column {column!r}: holds a NUL character (UTF-16 or binary "
                         f"data?); expected UTF-8 text")


def _chunks(examples: Iterable[Example], place: Callable[[int], str], columns: Sequence[str],
            names: Sequence[str], size: int) -> Iterator[pd.DataFrame]:
    """Tables of ``size`` examples (the last one shorter): ``id`` (the example's, else its
    1-based position, counted across chunks) and the texts as ``names``, each checked;
    ``place(number)`` says where an example is, for errors about its ``columns``."""
    rows: list[tuple[object, ...]] = []
    position = 0
    for number, key, texts in examples:
        for column, value in zip(columns, texts, strict=True):
            if not isinstance(value, str) or not value or value.isspace() or "\0" in value:
                _check_text(value, place(number), column)
        position += 1
        rows.append((str(key) if key not in (None, "") else str(position), *texts))
        if len(rows) == size:
            yield pd.DataFrame(rows, columns=["id", *names])
            rows = []
    if rows:
        yield pd.DataFrame(rows, columns=["id", *names])


def _line_examples(lines: Iterable[tuple[int, str]], source: str, columns: Sequence[str]
                   ) -> Iterator[Example]:
    """One example per non-blank line; a pair's two sentences separated by a tab."""
    pair = len(columns) > 1
    for number, line in lines:
        text = line.rstrip("\r\n")
        if not text or text.isspace():
            continue
        fields = text.split("\t") if pair else (text,)
        if len(fields) != len(columns):
            raise InputError(f"{source}: line {number}: {len(fields)} tab-separated field(s), "
                             f"expected {len(columns)} ({', '.join(columns)})")
        yield number, None, fields


def _delimited_examples(lines: Iterable[tuple[int, str]], source: str, columns: Sequence[str],
                        delimiter: str) -> Iterator[Example]:
    """A CSV/TSV file with a header naming its columns; a field may be of any length."""
    reader = delimited.reader((line for _, line in lines), delimiter)
    try:
        header = next(reader, None)
        if header is None:
            raise InputError(f"{source}: empty file; expected a header line naming the columns")
        _require_columns(header, columns, source)
        twice = sorted({name for name in header if header.count(name) > 1} & {*columns, "id"})
        if twice:
            raise InputError(f"{source}: line 1: the header names column {twice[0]!r} more "
                             f"than once; expected each column once")
        at = [header.index(c) for c in columns]
        id_at = header.index("id") if "id" in header else None
        line = reader.line_num
        for row in reader:
            start, line = line + 1, reader.line_num
            if not row:
                continue
            if len(row) != len(header):
                raise InputError(f"{source}: line {start}: {len(row)} fields, expected "
                                 f"{len(header)} ({', '.join(map(repr, header))})")
            yield start, None if id_at is None else row[id_at], [row[k] for k in at]
    except csv.Error as exc:
        raise InputError(f"{source}: line {reader.line_num}: {exc}") from None


def _jsonl_examples(lines: Iterable[tuple[int, str]], source: str, columns: Sequence[str]
                    ) -> Iterator[Example]:
    """One JSON object per line, holding ``columns`` (and optionally ``id``)."""
    for number, line in lines:
        if not line or line.isspace():
            continue
        where = f"{source}: line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: not valid JSON ({exc.msg}, column {exc.colno})") from None
        if not isinstance(record, dict):
            raise InputError(f"{where}: a JSON {type(record).__name__}, expected an object with "
                             f"keys {', '.join(columns)}")
        missing = [c for c in columns if c not in record]
        if missing:
            raise InputError(f"{where}: no key {missing[0]!r}; expected keys "
                             f"{', '.join(columns)} (--columns)")
        yield number, record.get("id"), [record[c] for c in columns]


def _parquet_examples(path: Path, columns: Sequence[str], size: int) -> Iterator[Example]:
    """The rows of a parquet file, read ``size`` at a time (pyarrow record batches)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
        names = file.schema_arrow.names
        _require_columns(names, columns, str(path))
        for column in columns:
            kind = file.schema_arrow.field(column).type
            if pa.types.is_dictionary(kind):  # a pandas category column: its values' type
                kind = kind.value_type
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)
                    or pa.types.is_string_view(kind)):
                raise InputError(f"{path}: column {column!r} holds {kind}; expected strings "
                                 f"(sentences)")
        read = list(dict.fromkeys([*columns, *(["id"] if "id" in names else [])]))
        number = 0
        for batch in file.iter_batches(batch_size=size, columns=read):
            values = {name: batch.column(name).to_pylist() for name in read}
            ids = values.get("id") or [None] * batch.num_rows
            for key, *texts in zip(ids, *(values[c] for c in columns), strict=True):
                number += 1
                yield number, key, texts
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: not a readable parquet file ({exc})") from None


def _require_columns(header: Sequence[str], columns: Sequence[str], source: str) -> None:
    missing = [c for c in columns if c not in header]
    if missing:
        raise InputError(f"{source}: no column {missing[0]!r}; the columns are "
                         f"{', '.join(map(repr, header))}; name the sentence column(s) with "
                         f"--columns")


def read_examples(path: str, columns: Sequence[str], names: Sequence[str] | None = None,
                  chunk_size: int | None = None) -> Iterator[pd.DataFrame]:
    """The examples of ``path`` (``-``: stdin), by its suffix, ``chunk_size`` (default
    :data:`CHUNK_SIZE`) at a time: tables of ``id`` and the text ``columns``, renamed to
    ``names`` (default: as they are). Reading is lazy: a chunk is read when it is asked for."""
    names = columns if names is None else names
    chunk_size = chunk_size or CHUNK_SIZE
    if path == STDIN:
        examples = _line_examples(_text_lines(sys.stdin.buffer, "<stdin>"), "<stdin>", columns)
        return _chunks(examples, lambda n: f"<stdin>: line {n}", columns, names, chunk_size)
    file = Path(path)
    try:
        mode = file.stat().st_mode
    except OSError as exc:
        what = "not found" if isinstance(exc, FileNotFoundError) else exc.strerror
        raise InputError(f"{file}: {what}; expected the input sentences") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"{file}: a directory; expected a file of input sentences")
    if not stat.S_ISREG(mode):
        raise InputError(f"{file}: not a regular file; to read a pipe or a device, feed it to "
                         f"stdin (--input -)")
    suffix = file.suffix.lower()
    if suffix == ".parquet":
        return _chunks(_parquet_examples(file, columns, chunk_size), lambda n: f"{file}: row {n}",
                       columns, names, chunk_size)
    if suffix in (".jsonl", ".ndjson"):
        examples = _jsonl_examples(_file_lines(file), path, columns)
    elif suffix in (".tsv", ".tab"):
        examples = _delimited_examples(_file_lines(file), path, columns, "\t")
    elif suffix == ".csv":
        lines = _file_lines(file)
        first = next(lines, None)
        head = [] if first is None else [first]
        # The CS224N files are named .csv but tab-separated.
        delimiter = "\t" if head and "\t" in first[1] and "," not in first[1] else ","
        examples = _delimited_examples(itertools.chain(head, lines), path, columns, delimiter)
    elif suffix == ".txt":
        examples = _line_examples(_file_lines(file), path, columns)
    else:
        raise InputError(f"{file}: unknown kind of file {suffix or '(no suffix)'!r}; expected "
                         f".csv, .tsv, .jsonl, .parquet or .txt")
    return _chunks(examples, lambda n: f"{path}: line {n}", columns, names, chunk_size)


def sentence_frame(task: TaskSpec | str, sentences: Sequence[str] | Sequence[Sequence[str]]
                   ) -> pd.DataFrame:
    """A list of sentences (SST) or of (sentence1, sentence2) pairs as an examples table."""
    spec = task_spec(task)
    task, columns = spec.name, spec.text_columns
    examples = []
    for k, example in enumerate(sentences, start=1):
        fields = [example] if isinstance(example, str) else list(example)
        if len(fields) != len(columns):
            raise InputError(f"example {k}: {len(fields)} sentence(s); {task} takes "
                             f"{len(columns)} ({', '.join(columns)})")
        examples.append((k, None, fields))
    chunk = next(_chunks(examples, lambda k: f"example {k}", columns, columns,
                         max(1, len(examples))), None)
    return chunk if chunk is not None else pd.DataFrame(columns=["id", *columns])


# --- predicting --------------------------------------------------------------------------------


def readable_predictions(task: TaskSpec | str, examples: pd.DataFrame, outputs: pd.DataFrame
                         ) -> pd.DataFrame:
    """The examples with their predictions, from ``outputs_to_frame``'s ``pred``/``p*``."""
    spec = task_spec(task)
    table = examples[["id", *spec.text_columns]].reset_index(drop=True)
    pred = outputs["pred"].to_numpy()
    names = spec.class_names()
    if spec.kind == "classification":
        table["label"] = [names[k] for k in pred]
        table["class"] = pred.astype(np.int64)
        for k, name in enumerate(names):
            table[f"p_{name.replace(' ', '_')}"] = outputs[f"p{k}"].to_numpy()
    elif spec.kind == "binary":
        table[f"p_{names[1].replace(' ', '_')}"] = outputs["p1"].to_numpy()
        table["class"] = pred.astype(np.int64)
        table["label"] = [names[k] for k in pred]
    else:
        # Already clipped to the declared range, as every written prediction is (evaluate.py).
        table["similarity" if spec.pair else "value"] = pred
    return table


def predict_sentences(model: MultitaskModel, task: str,
                      examples: pd.DataFrame | Sequence[str] | Sequence[Sequence[str]],
                      batch_size: int = 64, precision: str = "fp32",
                      progress: Callable[[int], object] | None = None) -> pd.DataFrame:
    """Predictions of ``model`` (``MultitaskModel.from_pretrained``) for ``examples``: a list
    of sentences (SST), of (sentence1, sentence2) pairs (QQP, STS), or a table with those
    columns; returns the table described in the module docstring."""
    if model.member is None or model.tokenizer is None:
        raise ValueError("predict_sentences needs a loaded member: MultitaskModel.from_pretrained")
    if task not in model.tasks:
        raise UserError(f"member {model.member.name!r} has no {task} head; its tasks: "
                        f"{', '.join(model.tasks)}")
    spec = model.specs[task]
    if not isinstance(examples, pd.DataFrame):
        examples = sentence_frame(spec, examples)
    cfg = model.member.model
    data = tokenize_task(spec, examples, model.tokenizer, cfg.max_length, cfg.pair_encoding)
    device = next(model.parameters()).device
    outputs = predict(model, data, batch_size, device, precision, model.tokenizer.pad_token_id,
                      progress)
    return readable_predictions(spec, examples, outputs)


def visible(text: str) -> str:
    """``text`` with every character a terminal would act on written as an escape (``\\x1b``,
    ``\\u202e``): printed, it cannot move the cursor, recolour, retitle or reorder the screen."""
    return text.translate(TERMINAL_ESCAPES)


class PredictionWriter:
    """Writes tables of predictions to ``out`` one after the other, as one output of ``fmt``:
    ``table``, aligned columns for people (3 decimals, long sentences cut, control characters
    escaped), whose widths the first table sets, so that it is written before the rest is
    read; ``jsonl`` and ``csv``: every value in full, as it is, for scripts."""

    def __init__(self, out: TextIO, fmt: str):
        self.out, self.fmt = out, fmt
        self.rows = 0
        self.widths: list[int] | None = None

    def write(self, table: pd.DataFrame) -> None:
        if self.fmt == "jsonl":
            text = table.to_json(orient="records", lines=True, force_ascii=False)
            text = text.rstrip("\n").translate(JSON_LINE_BREAKS) + "\n"
        elif self.fmt == "csv":
            # csv quotes a field holding "\n" but not one holding a lone "\r", which readers
            # then take for a line end: a chunk with one quotes all its texts.
            cr = any(table[c].str.contains("\r", regex=False).any()
                     for c in table.columns if pd.api.types.is_string_dtype(table[c]))
            text = table.to_csv(index=False, header=self.rows == 0,
                                quoting=csv.QUOTE_NONNUMERIC if cr else csv.QUOTE_MINIMAL)
        else:
            text = self._table(table)
        self.out.write(text)
        self.rows += len(table)

    def _table(self, table: pd.DataFrame) -> str:
        columns = []  # (cells, right-aligned)
        for name in table.columns:
            values = table[name]
            if pd.api.types.is_float_dtype(values):
                columns.append(([f"{v:.3f}" for v in values], True))
            elif pd.api.types.is_integer_dtype(values):
                columns.append(([str(v) for v in values], True))
            else:
                cells = [visible(str(v)) for v in values]
                columns.append(([c if len(c) <= TABLE_TEXT_WIDTH else
                                 c[:TABLE_TEXT_WIDTH - 1] + "…" for c in cells], False))
        lines = []
        if self.widths is None:
            header = [visible(str(name)) for name in table.columns]
            self.widths = [max([len(h), *map(len, cells)])
                           for h, (cells, _) in zip(header, columns, strict=True)]
            lines.append("  ".join(h.ljust(w) for h, w in zip(header, self.widths, strict=True)))
        aligns = [(w, right) for w, (_, right) in zip(self.widths, columns, strict=True)]
        for row in zip(*(cells for cells, _ in columns), strict=True):
            lines.append("  ".join(c.rjust(w) if right else c.ljust(w)
                                   for c, (w, right) in zip(row, aligns, strict=True)))
        return "".join(line.rstrip() + "\n" for line in lines)


# --- the command -------------------------------------------------------------------------------


def resolve_model_dir(model_dir: Path | None, member: str | None, seed: int | None,
                      models: Path) -> Path:
    """The model directory given, or member ``member``'s under ``models`` (its only trained
    seed, or ``seed``)."""
    if model_dir is not None and member is not None:
        raise UserError("give a model directory or --member, not both")
    if model_dir is not None:
        return model_dir
    if member is None:
        raise UserError("no model: give a model directory (models/<member>/seed_<seed>/model) "
                        "or --member NAME")
    if seed is not None:
        return seed_dir(models, member, seed) / "model"
    trained = sorted(models.glob(f"{member}/seed_*/model"),
                     key=lambda d: d.parent.name.removeprefix("seed_").zfill(12))
    if not trained:
        raise UserError(f"{models / member}: no trained seed of member {member!r} "
                        f"(seed_<seed>/model); train it (dvc repro) or give a model directory")
    if len(trained) > 1:
        seeds = ", ".join(d.parent.name.removeprefix("seed_") for d in trained)
        raise UserError(f"{models / member}: seeds {seeds} are trained; pick one with --seed")
    return trained[0]


def choose_task(member: MemberConfig, task: str | None, model_dir: Path) -> str:
    if task is None:
        if len(member.tasks) > 1:
            raise UserError(f"{model_dir}: the model has tasks {', '.join(member.tasks)}; pick "
                            f"one with --task")
        return member.tasks[0]
    if task not in member.tasks:
        raise UserError(f"{model_dir}: no {task} head; the model's tasks: "
                        f"{', '.join(member.tasks)}")
    return task


def command_examples(args: argparse.Namespace, spec: TaskSpec
                     ) -> tuple[Iterator[pd.DataFrame], str | None]:
    """The examples of the command line, a file or stdin, a chunk at a time, and the file's
    name (``<stdin>``) when they came from one (it gets a progress bar)."""
    task, text_columns = spec.name, spec.text_columns
    given = [name for name in ("text", "pair", "input") if getattr(args, name)]
    if len(given) > 1:
        raise UserError(f"give one kind of input, not --{' and --'.join(given)}")
    pair = spec.pair
    if args.text:
        if pair:
            raise UserError(f"--text gives single sentences; {task} takes pairs: use --pair S1 S2")
        return iter([sentence_frame(spec, args.text)]), None
    if args.pair:
        if not pair:
            raise UserError(f"--pair gives sentence pairs; {task} takes one sentence: use --text")
        return iter([sentence_frame(spec, args.pair)]), None
    columns = text_columns
    if args.columns:
        columns = [c.strip() for c in args.columns.split(",")]
        if len(columns) != len(text_columns):
            raise UserError(f"--columns {args.columns}: {task} takes {len(text_columns)} "
                            f"column(s), e.g. {','.join(text_columns)}")
    source = args.input or STDIN
    if source == STDIN and sys.stdin.isatty():
        raise UserError("no input: give --text, --pair or --input FILE, or pipe lines to stdin")
    # Known names from here on: the tokenizer and the output read the prepared text columns.
    return read_examples(source, columns, text_columns), "<stdin>" if source == STDIN else source


def output_format(fmt: str | None, output: Path | None) -> str:
    """``--format``, else the one ``--output``'s suffix names, else ``table``; a format that
    contradicts the suffix is an error (a table in ``preds.csv`` would surprise its reader)."""
    implied = FORMAT_OF_SUFFIX.get(output.suffix.lower()) if output is not None else None
    if fmt is not None and implied is not None and fmt != implied:
        raise UserError(f"--output {output}: a {output.suffix} name, but --format {fmt}; give "
                        f"--format {implied} or another name")
    return fmt or implied or "table"


def output_target(path: Path) -> tuple[Path, bool]:
    """Where ``--output`` is written and whether atomically: a new path or a regular file (a
    link's target, so that the link stays) via a temporary name; a FIFO, a terminal, a device or
    ``/dev/stdout`` directly. An existing directory is an error: it is never replaced."""
    try:
        mode = path.stat().st_mode  # follows links: /dev/stdout leads to a terminal or a pipe
    except FileNotFoundError:
        return path, True
    except OSError as exc:
        raise UserError(f"--output {path}: cannot write ({exc.strerror})") from None
    if stat.S_ISDIR(mode):
        raise UserError(f"--output {path}: an existing directory (left as it is); expected a "
                        f"file name, e.g. {path / 'predictions.jsonl'}")
    if written_in_place(path):
        return path, False
    return path.resolve(), True


@contextmanager
def open_output(path: Path | None) -> Iterator[TextIO]:
    """stdout, or ``--output`` as :func:`output_target` says: a temporary file renamed into
    place once all is written (nothing is renamed when writing fails), or the file itself."""
    if path is None:
        yield sys.stdout
        return
    target, atomic = output_target(path)
    try:
        if atomic:
            with atomic_path(target) as tmp, tmp.open("w", encoding="utf-8", newline="") as out:
                yield out
        else:
            # Appending never truncates what a file behind /dev/stdout already holds.
            with target.open("a", encoding="utf-8", newline="") as out:
                yield out
    except BrokenPipeError:  # the reader behind /dev/stdout went away: main exits quietly
        raise
    except OSError as exc:
        raise UserError(f"--output {path}: cannot write ({exc.strerror or exc})") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bestfit-predict", description="Predict SST sentiment, QQP duplicates or STS "
        "similarity with a trained bestfit member.")
    parser.add_argument("model", nargs="?", type=Path,
                        help="a saved member's directory (models/<member>/seed_<seed>/model)")
    parser.add_argument("--member", help="or: a member name, found under --models")
    parser.add_argument("--seed", type=int, help="the member's training seed (needed when "
                        "several are trained)")
    parser.add_argument("--models", type=Path, default=Path("models"),
                        help="where --member is looked up (default: models)")
    parser.add_argument("--task",
                        help="the head to use (default: the model's only task)")
    parser.add_argument("--text", action="append", metavar="SENTENCE",
                        help="a sentence to classify (SST); repeat for more")
    parser.add_argument("--pair", action="append", nargs=2, metavar=("S1", "S2"),
                        help="a sentence pair (QQP, STS); repeat for more")
    parser.add_argument("--input", metavar="FILE", help="a .csv, .tsv, .jsonl, .parquet or "
                        ".txt file of examples ('-': stdin, the default without --text/--pair)")
    parser.add_argument("--columns", help="the sentence column(s) of --input, comma-separated "
                        "(default: sentence, or sentence1,sentence2)")
    parser.add_argument("--format", choices=FORMATS,
                        help="table (for people), jsonl or csv; default: what the --output name "
                        "ends in (.csv, .jsonl), else table")
    parser.add_argument("--output", type=Path, help="write here instead of stdout (a file "
                        "atomically; a FIFO or device such as /dev/stdout directly)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or mps")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16 autocast or fp32 (default)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or notices")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    for name in ("batch_size", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} {value}: expected an integer ≥ 1")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise UserError(f"--device {args.device}: not a torch device; expected cpu, cuda, "
                        f"cuda:N or mps") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    fmt = output_format(args.format, args.output)
    if args.output is not None:
        output_target(args.output)  # a directory fails here, before anything is read
    model_dir = resolve_model_dir(args.model, args.member, args.seed, args.models)
    # The member's config and the first chunk first: bad input fails before the weights load.
    member = read_member_config(model_dir)
    task = choose_task(member, args.task, model_dir)
    spec = member.specs[task]
    chunks, source = command_examples(args, spec)
    first = next(chunks, None)
    if first is None:
        raise InputError(f"{source}: no examples in it")
    model = MultitaskModel.from_pretrained(model_dir, device)
    written = 0
    try:
        with tqdm(unit=f" {'pairs' if spec.pair else 'sentences'}", file=sys.stderr,
                  disable=args.quiet or source is None) as bar, open_output(args.output) as out:
            writer = PredictionWriter(out, fmt)
            for examples in itertools.chain([first], chunks):
                writer.write(predict_sentences(model, task, examples, args.batch_size,
                                               args.precision, bar.update))
            written = writer.rows
    except BrokenPipeError:
        # The reader of stdout left (`| head`): stop quietly, as a shell pipeline expects.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None
    if args.output is not None and not args.quiet:
        print(f"wrote {written} {task} predictions to {args.output}", file=sys.stderr)


def cli() -> None:
    """The ``bestfit-predict`` console script."""
    run_stage("bestfit-predict", main)
