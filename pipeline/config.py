"""Typed configuration built once from ``params.yaml``.

Every knob of every variant lives in ``params.yaml``; stages call :func:`load_params` and hand
the typed section objects to the library, which never reads YAML or the environment itself.

A member of ``models:`` is a small set of overrides: its config is the global sections deep-merged
with the member's own (``defaults ⊕ overrides``), so ``dvc exp run -S smart.lambda=8`` changes
every member that does not override ``smart.lambda``.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

TASKS = ("sst", "qqp", "sts")
Task = Literal["sst", "qqp", "sts"]


class ConfigError(ValueError):
    """A params value is missing, unknown or of the wrong type; the message names the key."""


@dataclass(frozen=True)
class DataConfig:
    # A local directory holding the CS224N files, or an http(s) URL base they are fetched from.
    source: str = "https://raw.githubusercontent.com/gpoesia/minbert-default-final-project/main/data"
    # Optional cap on training rows per task (a seeded sample), for CPU-sized runs; null = all.
    train_rows: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class HeadConfig:
    layers: int = 2
    hidden: int | None = None  # null: the backbone's hidden size
    activation: Literal["relu", "gelu", "tanh"] = "relu"
    dropout: float = 0.3


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "bert-base-uncased"
    pair_encoding: Literal["concat", "separate"] = "concat"
    pooling: Literal["cls", "mean", "max", "attention"] = "cls"
    max_length: int = 128
    head: HeadConfig = field(default_factory=HeadConfig)


@dataclass(frozen=True)
class LossConfig:
    task_weights: dict[str, float] = field(
        default_factory=lambda: {"sst": 1.0, "qqp": 1.0, "sts": 1.0}
    )
    # Weight of the contrastive loss on cosine distance added to the QQP and STS losses; 0 = off.
    contrastive_weight: float = 0.0
    contrastive_margin: float = 0.5
    # Weight of the squared ordinal error added to SST's CE; 0 = plain CE (paper: 0.1).
    ordered_ce_weight: float = 0.0


@dataclass(frozen=True)
class CustomScheduleConfig:
    task: Task = "qqp"
    fraction: float = 0.8
    epochs: int = 2


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batches_per_epoch: int | None = 2000  # null: one full pass over every task's data
    batch_size: int = 16
    eval_batch_size: int = 128
    lr: float = 1e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.1
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    schedule: Literal["round_robin", "random", "annealed", "custom"] = "custom"
    custom: CustomScheduleConfig = field(default_factory=CustomScheduleConfig)
    length_grouping: bool = True
    precision: Literal["bf16", "fp32"] = "bf16"
    device: str = "auto"  # auto: cuda when available, else cpu
    num_threads: int | None = None  # torch CPU threads; null: torch's default
    select_by: Literal["overall", "sst_acc", "qqp_acc", "sts_pearson"] = "overall"
    seed: int = 11


@dataclass(frozen=True)
class SmartConfig:
    # λ_s; 0 turns the regularizer off. Per-task overrides in `task_lambda`.
    lambda_: float = 0.0
    task_lambda: dict[str, float] = field(default_factory=dict)
    epsilon: float = 1e-6
    step_size: float = 1e-3
    noise_var: float = 1e-5
    steps: int = 1
    norm: Literal["inf", "l2"] = "inf"
    # false: f(x) is a constant target (as in VAT): no backward through it, a ~20% cheaper step.
    clean_grad: bool = True

    def lambda_for(self, task: str) -> float:
        return self.task_lambda.get(task, self.lambda_)


@dataclass(frozen=True)
class PcgradConfig:
    enabled: bool = False


@dataclass(frozen=True)
class EdaConfig:
    num_aug: int = 8
    alpha: float = 0.1
    operations: list[str] = field(default_factory=lambda: ["sr", "ri", "rs", "rd"])
    seed: int = 11
    wordnet_dir: str | None = None  # an NLTK data dir holding corpora/wordnet; null: NLTK_DATA


@dataclass(frozen=True)
class ReviewsConfig:
    source: str = "data/raw/amazon"  # a .jsonl / .jsonl.gz file, or a directory of them
    encoder: str = "minilm"
    # Reviews kept for SST's most frequent label; the other labels get a share in proportion to
    # their SST counts (match_label_counts), or per_label each (false: the paper's).
    per_label: int = 3000
    match_label_counts: bool = True
    length_bins: int = 10  # SST length quantile bins that the kept reviews' lengths follow
    chunk_size: int = 10000  # lines read per chunk of the stream
    batch_size: int = 256  # encoder batch size
    # Reviews sampled per label (reservoir, same shares as per_label) before embedding; bounds
    # memory and embedding work. null: every review in SST's length range (memory then grows
    # with the file).
    max_candidates_per_label: int | None = 30000
    cache_dir: str | None = "data/cache/embeddings"  # embeddings by text hash; null: no cache
    device: str = "auto"  # auto: cuda when available, else cpu
    seed: int = 11


@dataclass(frozen=True)
class LlmConfig:
    enabled: bool = False
    backend: Literal["vllm", "transformers"] = "vllm"
    model: str = "meta-llama/Meta-Llama-3-8B-Instruct"
    shots: int = 11
    seed: int = 11
    min_confidence: float = 0.5
    max_review_tokens: int = 256
    batch_size: int = 16
    tensor_parallel_size: int = 1
    device: str = "auto"
    cache_dir: str = "data/cache/llm_labels"  # append-only label cache, resumes killed runs


@dataclass(frozen=True)
class AugmentConfig:
    eda: EdaConfig = field(default_factory=EdaConfig)
    reviews: ReviewsConfig = field(default_factory=ReviewsConfig)
    llm: LlmConfig = field(default_factory=LlmConfig)


@dataclass(frozen=True)
class MemberConfig:
    """One trained member: the global sections with this member's overrides merged in."""

    name: str
    tasks: list[str]
    augment: list[str]
    model: ModelConfig
    loss: LossConfig
    train: TrainConfig
    smart: SmartConfig
    pcgrad: PcgradConfig


@dataclass(frozen=True)
class Params:
    data: DataConfig
    model: ModelConfig
    loss: LossConfig
    train: TrainConfig
    smart: SmartConfig
    pcgrad: PcgradConfig
    augment: AugmentConfig
    models: dict[str, MemberConfig]
    ensemble: dict[str, list[str]]


# Sections a member may override, by params key.
MEMBER_SECTIONS = {
    "model": ModelConfig,
    "loss": LossConfig,
    "train": TrainConfig,
    "smart": SmartConfig,
    "pcgrad": PcgradConfig,
}
AUGMENT_SOURCES = ("eda", "amazon", "llm")


def _yaml_key(name: str) -> str:
    # `lambda` is a Python keyword, so the field is `lambda_`.
    return name.rstrip("_")


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Return ``value`` converted to ``tp`` or raise ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: unexpected null")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_check_type(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {
            _check_type(k, args[0], f"{where} key"): _check_type(v, args[1], f"{where}.{k}")
            for k, v in value.items()
        }
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {where}")


def build(cls: type, data: Mapping[str, Any] | None, where: str) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {_yaml_key(f.name): f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    kwargs = {}
    for key, f in fields.items():
        if key in data:
            kwargs[f.name] = _check_type(data[key], hints[f.name], f"{where}.{key}")
    return cls(**kwargs)


def _check_task_keys(mapping: Mapping[str, Any], where: str) -> None:
    unknown = sorted(set(mapping) - set(TASKS))
    if unknown:
        raise ConfigError(f"{where}: unknown task(s) {unknown}; known: {list(TASKS)}")


def _check_section_tasks(built: Mapping[str, Any], prefix: str) -> None:
    """Per-task maps must name real tasks: a typo would silently leave a knob at its default."""
    _check_task_keys(built["loss"].task_weights, f"{prefix}loss.task_weights")
    _check_task_keys(built["smart"].task_lambda, f"{prefix}smart.task_lambda")


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _build_member(name: str, raw: Mapping[str, Any], sections: Mapping[str, Any]) -> MemberConfig:
    where = f"params.yaml: models.{name}"
    raw = {} if raw is None else raw
    allowed = {"tasks", "augment", *MEMBER_SECTIONS}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(allowed)}")
    tasks = _check_type(raw.get("tasks", list(TASKS)), list[str], f"{where}.tasks")
    if not tasks or any(t not in TASKS for t in tasks) or len(set(tasks)) != len(tasks):
        raise ConfigError(f"{where}.tasks: expected distinct tasks from {list(TASKS)}, got {tasks}")
    augment = _check_type(raw.get("augment", []), list[str], f"{where}.augment")
    bad = [a for a in augment if a not in AUGMENT_SOURCES]
    if bad:
        raise ConfigError(
            f"{where}.augment: unknown source(s) {bad}; known: {list(AUGMENT_SOURCES)}")
    if augment and "sst" not in tasks:
        raise ConfigError(f"{where}.augment: augmented data is SST data, but tasks has no sst")
    built = {
        key: build(cls, _deep_merge(sections.get(key) or {}, raw.get(key) or {}), f"{where}.{key}")
        for key, cls in MEMBER_SECTIONS.items()
    }
    _check_section_tasks(built, f"{where}.")
    if built["train"].schedule == "custom" and built["train"].custom.task not in tasks:
        raise ConfigError(
            f"{where}.train.custom.task: {built['train'].custom.task!r} is not among tasks {tasks}"
        )
    return MemberConfig(name=name, tasks=tasks, augment=augment, **built)


def parse_params(raw: Mapping[str, Any]) -> Params:
    """Build and validate :class:`Params` from the parsed YAML mapping."""
    if not isinstance(raw, Mapping):
        raise ConfigError("params.yaml: expected a mapping at the top level")
    known = {"data", "augment", "models", "ensemble", *MEMBER_SECTIONS}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"params.yaml: unknown top-level key(s) {unknown}; known: {sorted(known)}")
    sections = {key: build(cls, raw.get(key), f"params.yaml: {key}") for key, cls in
                MEMBER_SECTIONS.items()}
    _check_section_tasks(sections, "params.yaml: ")
    models_raw = raw.get("models") or {}
    if not isinstance(models_raw, Mapping) or not models_raw:
        raise ConfigError("params.yaml: models: expected a mapping of at least one member")
    models = {name: _build_member(name, spec, raw) for name, spec in models_raw.items()}
    ensemble = _check_type(raw.get("ensemble") or {}, dict[str, list[str]], "params.yaml: ensemble")
    for task, members in ensemble.items():
        if task not in TASKS:
            raise ConfigError(f"params.yaml: ensemble.{task}: unknown task; known: {list(TASKS)}")
        for member in members:
            if member not in models:
                raise ConfigError(f"params.yaml: ensemble.{task}: {member!r} is not in models")
            if task not in models[member].tasks:
                raise ConfigError(
                    f"params.yaml: ensemble.{task}: member {member!r} is not trained on {task}"
                )
    data = build(DataConfig, raw.get("data"), "params.yaml: data")
    _check_task_keys(data.train_rows, "params.yaml: data.train_rows")
    return Params(
        data=data,
        augment=build(AugmentConfig, raw.get("augment"), "params.yaml: augment"),
        models=models,
        ensemble=ensemble,
        **sections,
    )


class _ParamsLoader(yaml.SafeLoader):
    """YAML 1.1 reads ``2e-05`` (no decimal point), the form DVC writes for ``-S train.lr=2e-5``,
    as a string; this loader reads it as the float it is."""


_ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_ParamsLoader)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: not found; run from the project root") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return parse_params(raw or {})
