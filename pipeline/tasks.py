"""Tasks as data: each task's kind, files and what follows from its kind, declared in params.yaml.

A task of ``tasks:`` is one of three kinds, and its kind decides the rest unless overridden:

- classification (SST): N named classes, labels 0…N−1; N logits; CE (+ ordered CE for ordered
  classes); SMART ℓ_s symmetric KL; accuracy (or macro F1); ensemble: mean probabilities, argmax.
- binary (QQP): labels 0/1; 1 logit; BCE; symmetric Bernoulli KL; accuracy of p ≥ ½ (or F1);
  ensemble: mean p, ≥ ½.
- regression (STS): a number in [low, high]; 1 value, clipped to [low, high] wherever a
  prediction is written and scored (pipeline/evaluate.py); MSE (or L1); squared difference;
  Pearson r (or Spearman ρ); ensemble: mean (or median).

A task is a single sentence or a pair: the number of its text columns. The overall score is
Σ_t w_t·s_t / Σ_t w_t with s_t the task's metric on a 0–1 scale (accuracy and F1 as they are,
a correlation r as (r + 1)/2) and w_t its ``overall_weight``: with weights 1 this is the CS224N
score (SST acc + QQP acc + (STS r + 1)/2) / 3. SST, QQP and STS-B are the default entries
(:data:`CS224N_TASKS`), with the CS224N files' quirks (pipeline/data.py).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from pipeline.errors import UserError

Kind = Literal["classification", "binary", "regression"]
Metric = Literal["accuracy", "f1", "pearson", "spearman"]
Loss = Literal["cross_entropy", "bce", "mse", "l1"]
SmartLoss = Literal["symmetric_kl", "mse"]
EnsembleRule = Literal["mean_probability", "majority_vote", "mean", "median"]
DataFormat = Literal["cs224n", "csv", "tsv", "jsonl", "parquet"]

# What a kind allows, its default first.
ALLOWED: dict[str, dict[str, tuple[str, ...]]] = {
    "classification": {"loss": ("cross_entropy",), "smart_loss": ("symmetric_kl",),
                       "metric": ("accuracy", "f1"),
                       "ensemble": ("mean_probability", "majority_vote")},
    "binary": {"loss": ("bce",), "smart_loss": ("symmetric_kl",), "metric": ("accuracy", "f1"),
               "ensemble": ("mean_probability", "majority_vote")},
    "regression": {"loss": ("mse", "l1"), "smart_loss": ("mse",),
                   "metric": ("pearson", "spearman"), "ensemble": ("mean", "median")},
}
# A metric's name in metrics.json: `<task>_<suffix>` (sst_acc, qqp_acc, sts_pearson).
METRIC_SUFFIX = {"accuracy": "acc", "f1": "f1", "pearson": "pearson", "spearman": "spearman"}
CORRELATIONS = ("pearson", "spearman")
# The prepared tables' text columns, by the number of sentences of an example.
PREPARED_TEXT = {1: ["sentence"], 2: ["sentence1", "sentence2"]}
# The splits a task's submission file is written for (pipeline/ensemble.py).
SUBMISSION_SPLITS = ("dev", "test")
# An overall_weight's bound: relative weights, so a million to one already silences a task.
MAX_WEIGHT = 1e6
# A task's name names files (sst_train.parquet), metrics (sst_acc) and DVC paths: lower-case
# ASCII, so that no file system folds or normalises two names into one.
TASK_NAME = r"[a-z_][a-z0-9_]{0,63}"


class TaskError(UserError):
    """A task declaration that cannot work; the message names the task, the key and the value."""


@dataclass(frozen=True)
class TaskFiles:
    """Where a task's examples are and which columns hold them."""

    format: DataFormat = "csv"
    # The directory the files are in; null: `data.source` for `cs224n`, the project root else.
    dir: str | None = None
    train: str = ""
    dev: str = ""
    test: str | None = None  # optional: no test file, no test predictions
    text: list[str] = field(default_factory=list)  # one column: a sentence; two: a pair
    label: str = "label"
    id: str | None = "id"  # null: the row number is the id
    # cs224n only: QQP's text was CSV-quoted twice (pipeline/data.py).
    twice_quoted: bool = False


@dataclass(frozen=True)
class Submission:
    """One predictions file per split in the CS224N starter code's format."""

    file: str = "{task}-{split}-output.csv"
    column: str = "Predicted_Label"


@dataclass(frozen=True)
class TaskSpec:
    kind: Kind = "classification"
    title: str = ""  # what the model card and figures call it; empty: the task's name
    classes: list[str] = field(default_factory=list)  # classification/binary: names, label order
    ordered: bool = False  # classification: the classes are ordinal (ordered CE applies)
    range: list[float] = field(default_factory=list)  # regression: [low, high]
    data: TaskFiles = field(default_factory=TaskFiles)
    # Overrides of what the kind implies (null: the kind's default, ALLOWED's first).
    loss: Loss | None = None
    smart_loss: SmartLoss | None = None
    metric: Metric | None = None
    ensemble: EnsembleRule | None = None
    overall_weight: float = 1.0  # its weight in the overall score; ≥ 0
    submission: Submission = field(default_factory=Submission)
    dataset: str | None = None  # a Hugging Face dataset id, for the model card
    name: str = ""  # the key in `tasks:`; set when the section is read

    @property
    def pair(self) -> bool:
        return len(self.data.text) == 2

    @property
    def text_columns(self) -> list[str]:
        """The prepared table's text columns."""
        return PREPARED_TEXT[len(self.data.text)]

    @property
    def outputs(self) -> int:
        """The head's width: one logit per class, else one value."""
        return len(self.classes) if self.kind == "classification" else 1

    @property
    def metric_name(self) -> str:
        return f"{self.name}_{METRIC_SUFFIX[self.metric]}"

    @property
    def label_range(self) -> tuple[float, float]:
        if self.kind == "regression":
            return self.range[0], self.range[1]
        return 0, (len(self.classes) - 1 if self.kind == "classification" else 1)

    @property
    def display(self) -> str:
        return self.title or self.name

    def class_names(self) -> list[str]:
        """Names of the predicted values 0…K (binary: [negative, positive])."""
        return list(self.classes) if self.classes else ["0", "1"]

    def submission_file(self, split: str) -> str:
        """The file name of ``split``'s predictions in the submission directory."""
        return self.submission.file.format(task=self.name, split=split)


def check_task_name(name: object, where: str) -> None:
    """A task's name (its key in ``tasks:``) is lower-case ASCII (:data:`TASK_NAME`)."""
    if not isinstance(name, str) or not re.fullmatch(TASK_NAME, name):
        shown = repr(name[:64]) + "…" if isinstance(name, str) and len(name) > 64 else repr(name)
        raise TaskError(f"{where}: task name {shown}: expected a lower-case identifier of "
                        f"a-z, 0-9 and _, at most 64 characters (it names files and metrics, "
                        f"e.g. sst_train.parquet, sst_acc)")


def _check_columns(files: TaskFiles, where: str) -> None:
    """The text, label and id columns are distinct: a label read from a text column would be
    learnt from the text itself."""
    if files.label in files.text:
        raise TaskError(f"{where}.data.label: {files.label!r} is also a text column (data.text "
                        f"{files.text}); expected the label's own column")
    if files.id is not None and files.id in (*files.text, files.label):
        raise TaskError(f"{where}.data.id: {files.id!r} is also a text or the label column; "
                        f"expected the id's own column, or null (the row number is the id)")


def _check_submission(name: str, submission: Submission, where: str) -> None:
    """The submission file is a plain name inside the submission directory, one per split, and
    its column a header that keeps the file's one-line header."""
    template = submission.file
    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template)
                  if f is not None]
    except ValueError as exc:
        raise TaskError(f"{where}.submission.file: {template!r}: {exc}; expected a file name "
                        f"with {{split}} (and optionally {{task}}) in it") from None
    odd = [f"{{{f}}}" for f, spec, conv in fields if f not in ("task", "split") or spec or conv]
    if odd:
        raise TaskError(f"{where}.submission.file: {template!r} holds {odd}; expected only "
                        f"{{task}} and {{split}}")
    if "split" not in [f for f, _, _ in fields]:
        raise TaskError(f"{where}.submission.file: {template!r} must hold {{split}} (one file "
                        f"per split)")
    for split in SUBMISSION_SPLITS:
        file = template.format(task=name, split=split)
        if (file in (".", "..") or "/" in file or "\\" in file or len(file.encode()) > 255
                or any(ord(c) < 32 for c in file)):
            raise TaskError(f"{where}.submission.file: {template!r} makes {file!r}; expected a "
                            f"plain file name inside the submission directory (no /, \\, . "
                            f"or .., control characters, at most 255 bytes)")
    column = submission.column
    if not column.strip() or any(ord(c) < 32 for c in column):
        raise TaskError(f"{where}.submission.column: {column!r}: expected a header without "
                        f"tabs or line breaks (the file's first line is `id \\t <column>`)")


def resolve_task(name: str, spec: TaskSpec, where: str) -> TaskSpec:
    """Check a declared task and fill in what its kind implies; errors name ``where``."""
    check_task_name(name, where)
    files = spec.data
    for split in ("train", "dev"):
        if not getattr(files, split):
            raise TaskError(f"{where}.data.{split}: expected the {split} split's file name")
    if len(files.text) not in PREPARED_TEXT or len(set(files.text)) != len(files.text):
        raise TaskError(f"{where}.data.text: expected one text column (a sentence) or two "
                        f"(a pair), got {files.text}")
    _check_columns(files, where)
    if files.twice_quoted and files.format != "cs224n":
        raise TaskError(f"{where}.data.twice_quoted: a quirk of the cs224n format only")
    if spec.kind == "classification":
        if len(spec.classes) < 2 or len(set(spec.classes)) != len(spec.classes):
            raise TaskError(f"{where}.classes: a classification task needs at least two distinct "
                            f"class names (label 0 first), got {spec.classes}")
    elif spec.kind == "binary":
        if spec.classes and len(spec.classes) != 2:
            raise TaskError(f"{where}.classes: a binary task has two classes [label 0, label 1], "
                            f"got {spec.classes}")
    elif spec.classes:
        raise TaskError(f"{where}.classes: a regression task has no classes; declare its range")
    if spec.kind == "regression":
        if len(spec.range) != 2 or not spec.range[0] < spec.range[1]:
            raise TaskError(f"{where}.range: a regression task needs [low, high] with low < high, "
                            f"got {spec.range}")
    elif spec.range:
        raise TaskError(f"{where}.range: only a regression task has a range")
    if spec.ordered and spec.kind != "classification":
        raise TaskError(f"{where}.ordered: only a classification task's classes are ordered")
    resolved = {}
    for key, allowed in ALLOWED[spec.kind].items():
        value = getattr(spec, key)
        if value is None:
            value = allowed[0]
        elif value not in allowed:
            raise TaskError(f"{where}.{key}: {value!r} does not suit a {spec.kind} task; "
                            f"expected one of {list(allowed)}")
        resolved[key] = value
    if not 0 <= spec.overall_weight <= MAX_WEIGHT:
        raise TaskError(f"{where}.overall_weight: {spec.overall_weight!r} is out of range; "
                        f"expected a number ≥ 0 and ≤ {MAX_WEIGHT:g}")
    _check_submission(name, spec.submission, where)
    return dataclasses.replace(spec, name=name, **resolved)


def overall_term(spec: TaskSpec, value: float) -> float:
    """A task's metric on the 0–1 scale of the overall score."""
    return (value + 1) / 2 if spec.metric in CORRELATIONS else value


def overall_score(specs: dict[str, TaskSpec], metrics: dict[str, float]) -> float:
    """Σ w_t·s_t / Σ w_t over the tasks whose metric is in ``metrics`` (module docstring)."""
    terms = [(spec.overall_weight, overall_term(spec, metrics[spec.metric_name]))
             for spec in specs.values() if spec.metric_name in metrics]
    total = sum(w for w, _ in terms)
    if not terms or total == 0:
        return sum(s for _, s in terms) / max(len(terms), 1)
    return sum(w * s for w, s in terms) / total


def _cs224n(kind: str, title: str, files: dict, **rest) -> dict:
    return {"kind": kind, "title": title, "data": {"format": "cs224n", **files}, **rest}


# The CS224N default final project's tasks, as params.yaml declares them by default.
CS224N_TASKS: dict[str, dict] = {
    "sst": _cs224n(
        "classification", "Sentiment, 5 classes (SST)",
        {"train": "ids-sst-train.csv", "dev": "ids-sst-dev.csv",
         "test": "ids-sst-test-student.csv", "text": ["sentence"], "label": "sentiment"},
        classes=["negative", "somewhat negative", "neutral", "somewhat positive", "positive"],
        ordered=True, dataset="stanfordnlp/sst",
        submission={"file": "sst-{split}-output.csv", "column": "Predicted_Sentiment"}),
    "qqp": _cs224n(
        "binary", "Paraphrase detection (Quora Question Pairs)",
        {"train": "quora-train.csv", "dev": "quora-dev.csv", "test": "quora-test-student.csv",
         "text": ["sentence1", "sentence2"], "label": "is_duplicate", "twice_quoted": True},
        classes=["not duplicate", "duplicate"], dataset="nyu-mll/glue:qqp",
        submission={"file": "para-{split}-output.csv", "column": "Predicted_Is_Paraphrase"}),
    "sts": _cs224n(
        "regression", "Semantic textual similarity (STS-B)",
        {"train": "sts-train.csv", "dev": "sts-dev.csv", "test": "sts-test-student.csv",
         "text": ["sentence1", "sentence2"], "label": "similarity"},
        range=[0.0, 5.0], dataset="nyu-mll/glue:stsb",
        # The starter code's spelling.
        submission={"file": "sts-{split}-output.csv", "column": "Predicted_Similiarity"}),
}


@functools.cache
def default_tasks() -> dict[str, TaskSpec]:
    """The CS224N tasks, checked and completed as params.yaml's would be."""
    from pipeline.config import build_tasks  # config builds tasks: import it at call time

    return build_tasks(CS224N_TASKS)


def specs_for(names: Iterable[str], specs: dict[str, TaskSpec] | None = None
              ) -> dict[str, TaskSpec]:
    """The declaration of each of ``names``: from ``specs``, else the CS224N default."""
    return {name: (specs or {}).get(name) or task_spec(name) for name in names}


def task_spec(task: TaskSpec | str) -> TaskSpec:
    """``task`` itself, or the CS224N task of that name (a shorthand for the default tasks)."""
    if isinstance(task, TaskSpec):
        return task
    specs = default_tasks()
    if task not in specs:
        raise ValueError(f"unknown task {task!r}: pass its TaskSpec (params.tasks[...]); the "
                         f"default tasks are {list(specs)}")
    return specs[task]
