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

Batches are sorted by length (:func:`pipeline.evaluate.predict`, under inference mode), so a
batch carries little padding. Bad input stops with one line naming the file, line or row and
column.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from pipeline.batching import tokenize_task
from pipeline.config import MemberConfig
from pipeline.errors import UserError, run_stage
from pipeline.evaluate import predict
from pipeline.io import write_text
from pipeline.model import MultitaskModel, read_member_config
from pipeline.seeds import seed_dir
from pipeline.tasks import TaskSpec, task_spec

FORMATS = ("table", "jsonl", "csv")
STDIN = "-"
TABLE_TEXT_WIDTH = 48  # characters of a sentence shown in the table for people


class InputError(UserError):
    """Input sentences that cannot be read; the message names the file, line or row, and
    column."""


# --- reading the examples ----------------------------------------------------------------------


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{source}: byte {exc.start}: not UTF-8 text") from None


def _check_text(value: object, where: str, column: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"{where}, column {column!r}: {value!r} is not a string; expected a "
                         f"sentence")
    if not value.strip():
        raise InputError(f"{where}, column {column!r}: empty; expected a sentence")
    return value


def _table(records: list[dict], columns: Sequence[str], places: list[str]) -> pd.DataFrame:
    """The examples as a table: ``id`` (the input's, else the position) and ``columns``, each
    cell checked; ``places`` says where each record came from, for errors."""
    for record, where in zip(records, places, strict=True):
        for column in columns:
            _check_text(record[column], where, column)
    ids = [str(r["id"]) if r.get("id") not in (None, "") else str(k)
           for k, r in enumerate(records, start=1)]
    return pd.DataFrame({"id": ids, **{c: [r[c] for r in records] for c in columns}})


def read_lines(text: str, source: str, columns: Sequence[str]) -> pd.DataFrame:
    """One example per non-blank line; a pair's two sentences separated by a tab."""
    records, places = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t") if len(columns) > 1 else [line]
        if len(fields) != len(columns):
            raise InputError(f"{source}: line {number}: {len(fields)} tab-separated field(s), "
                             f"expected {len(columns)} ({', '.join(columns)})")
        records.append(dict(zip(columns, fields, strict=True)))
        places.append(f"{source}: line {number}")
    return _table(records, columns, places)


def read_delimited(text: str, source: str, columns: Sequence[str], delimiter: str
                   ) -> pd.DataFrame:
    """A CSV/TSV file with a header naming its columns."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise InputError(f"{source}: empty file; expected a header line naming the columns")
        _require_columns(header, columns, source)
        records, places, line = [], [], reader.line_num
        for row in reader:
            start, line = line + 1, reader.line_num
            if not row:
                continue
            if len(row) != len(header):
                raise InputError(f"{source}: line {start}: {len(row)} fields, expected "
                                 f"{len(header)} ({', '.join(header)})")
            records.append(dict(zip(header, row, strict=True)))
            places.append(f"{source}: line {start}")
    except csv.Error as exc:
        raise InputError(f"{source}: line {reader.line_num}: {exc}") from None
    return _table(records, columns, places)


def read_jsonl(text: str, source: str, columns: Sequence[str]) -> pd.DataFrame:
    """One JSON object per line, holding ``columns`` (and optionally ``id``)."""
    records, places = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
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
        records.append(record)
        places.append(where)
    return _table(records, columns, places)


def read_parquet(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable parquet file ({exc})") from None
    _require_columns(list(frame.columns), columns, str(path))
    records = frame.to_dict("records")
    return _table(records, columns, [f"{path}: row {k}" for k in range(1, len(records) + 1)])


def _require_columns(header: Sequence[str], columns: Sequence[str], source: str) -> None:
    missing = [c for c in columns if c not in header]
    if missing:
        raise InputError(f"{source}: no column {missing[0]!r}; the columns are "
                         f"{', '.join(map(str, header))}; name the sentence column(s) with "
                         f"--columns")


def read_examples(path: str, columns: Sequence[str]) -> pd.DataFrame:
    """The examples of ``path`` (``-``: stdin), by its suffix; see the module docstring."""
    if path == STDIN:
        return read_lines(_decode(sys.stdin.buffer.read(), "<stdin>"), "<stdin>", columns)
    file = Path(path)
    if not file.is_file():
        raise InputError(f"{file}: {'not a file' if file.exists() else 'not found'}; expected "
                         f"the input sentences")
    suffix = file.suffix.lower()
    if suffix == ".parquet":
        return read_parquet(file, columns)
    text = _decode(file.read_bytes(), path)
    if suffix in (".jsonl", ".ndjson"):
        return read_jsonl(text, path, columns)
    if suffix in (".tsv", ".tab"):
        return read_delimited(text, path, columns, "\t")
    if suffix == ".csv":
        # The CS224N files are named .csv but tab-separated.
        first = text.split("\n", 1)[0]
        return read_delimited(text, path, columns, "\t" if "\t" in first and "," not in first
                              else ",")
    if suffix == ".txt":
        return read_lines(text, path, columns)
    raise InputError(f"{file}: unknown kind of file {suffix or '(no suffix)'!r}; expected .csv, "
                     f".tsv, .jsonl, .parquet or .txt")


def sentence_frame(task: TaskSpec | str, sentences: Sequence[str] | Sequence[Sequence[str]]
                   ) -> pd.DataFrame:
    """A list of sentences (SST) or of (sentence1, sentence2) pairs as an examples table."""
    spec = task_spec(task)
    task, columns = spec.name, spec.text_columns
    records = []
    for k, example in enumerate(sentences, start=1):
        fields = [example] if isinstance(example, str) else list(example)
        if len(fields) != len(columns):
            raise InputError(f"example {k}: {len(fields)} sentence(s); {task} takes "
                             f"{len(columns)} ({', '.join(columns)})")
        records.append(dict(zip(columns, fields, strict=True)))
    return _table(records, columns, [f"example {k}" for k in range(1, len(records) + 1)])


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


def format_predictions(table: pd.DataFrame, fmt: str) -> str:
    """``table``: aligned columns for people (3 decimals, long sentences cut); ``jsonl`` and
    ``csv``: every value in full, for scripts."""
    if fmt == "jsonl":
        return table.to_json(orient="records", lines=True, force_ascii=False).rstrip("\n") + "\n"
    if fmt == "csv":
        return table.to_csv(index=False)
    shown = table.copy()
    formatters = {}
    for column in shown.columns:
        if pd.api.types.is_string_dtype(shown[column]):
            shown[column] = [s if len(s) <= TABLE_TEXT_WIDTH else s[:TABLE_TEXT_WIDTH - 1] + "…"
                             for s in shown[column]]
            width = max(len(column), *(len(s) for s in shown[column]))
            formatters[column] = f"{{:<{width}}}".format  # text reads left-aligned
    return shown.to_string(index=False, float_format="{:.3f}".format, formatters=formatters,
                           justify="left") + "\n"


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


def command_examples(args: argparse.Namespace, spec: TaskSpec) -> tuple[pd.DataFrame, bool]:
    """The examples of the command line, a file or stdin, and whether they came from a file or
    stdin (which gets a progress bar)."""
    task, text_columns = spec.name, spec.text_columns
    given = [name for name in ("text", "pair", "input") if getattr(args, name)]
    if len(given) > 1:
        raise UserError(f"give one kind of input, not --{' and --'.join(given)}")
    pair = spec.pair
    if args.text:
        if pair:
            raise UserError(f"--text gives single sentences; {task} takes pairs: use --pair S1 S2")
        return sentence_frame(spec, args.text), False
    if args.pair:
        if not pair:
            raise UserError(f"--pair gives sentence pairs; {task} takes one sentence: use --text")
        return sentence_frame(spec, args.pair), False
    columns = text_columns
    if args.columns:
        columns = [c.strip() for c in args.columns.split(",")]
        if len(columns) != len(text_columns):
            raise UserError(f"--columns {args.columns}: {task} takes {len(text_columns)} "
                            f"column(s), e.g. {','.join(text_columns)}")
    source = args.input or STDIN
    if source == STDIN and sys.stdin.isatty():
        raise UserError("no input: give --text, --pair or --input FILE, or pipe lines to stdin")
    examples = read_examples(source, columns)
    if examples.empty:
        raise InputError(f"{'<stdin>' if source == STDIN else source}: no examples in it")
    # Known names from here on: the tokenizer and the output read the prepared text columns.
    return examples.rename(columns=dict(zip(columns, text_columns, strict=True))), True


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
    parser.add_argument("--format", choices=FORMATS, default="table",
                        help="table (for people, the default), jsonl or csv")
    parser.add_argument("--output", type=Path, help="write here (atomically) instead of stdout")
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
    model_dir = resolve_model_dir(args.model, args.member, args.seed, args.models)
    # The member's config first: bad input fails before the weights are read.
    member = read_member_config(model_dir)
    task = choose_task(member, args.task, model_dir)
    examples, from_file = command_examples(args, member.specs[task])
    model = MultitaskModel.from_pretrained(model_dir, device)
    unit = "pairs" if member.specs[task].pair else "sentences"
    with tqdm(total=len(examples), unit=f" {unit}", file=sys.stderr,
              disable=args.quiet or not from_file) as bar:
        table = predict_sentences(model, task, examples, args.batch_size, args.precision,
                                  bar.update)
    text = format_predictions(table, args.format)
    if args.output is None:
        sys.stdout.write(text)
        return
    write_text(text, args.output)
    if not args.quiet:
        print(f"wrote {len(table)} {task} predictions to {args.output}", file=sys.stderr)


def cli() -> None:
    """The ``bestfit-predict`` console script."""
    run_stage("bestfit-predict", main)
