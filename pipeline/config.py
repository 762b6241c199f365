"""Typed configuration built once from ``params.yaml``.

Every knob of every variant lives in ``params.yaml``; stages call :func:`load_params` and hand
the typed section objects to the library, which never reads YAML or the environment itself.

A member of ``models:`` is a small set of overrides: its config is the global sections deep-merged
with the member's own (``defaults ⊕ overrides``), so ``dvc exp run -S smart.lambda=8`` changes
every member that does not override ``smart.lambda``. A per-task map (``train.select_rows``,
``train.sampling_weights``, ``loss.task_weights``, ``smart.task_lambda``) merges key by key when
the member's is non-empty; the member's ``{}`` or null replaces the global map (clears it).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from pipeline.errors import UserError, one_line
from pipeline.tasks import (
    CS224N_TASKS,
    SUBMISSION_SPLITS,
    TaskError,
    TaskSpec,
    check_task_name,
    resolve_task,
)

log = logging.getLogger("bestfit.config")

# Parts of a separately encoded pair's feature: u, v, |u − v|, u ⊙ v (formulas in model.py).
PairFeature = Literal["u", "v", "diff", "prod"]
# EDA's operations: synonym replacement, random insertion, random swap, random deletion.
EdaOperation = Literal["sr", "ri", "rs", "rd"]


class ConfigError(UserError):
    """A params value is missing, unknown, of the wrong type or out of range; the message names
    the file, the key, the value and what is allowed."""


@dataclass(frozen=True)
class Range:
    """The allowed interval of a numeric param: ``Annotated[int, Range(ge=1)]``."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def allows(self, value: float) -> bool:
        return not ((self.ge is not None and value < self.ge)
                    or (self.gt is not None and value <= self.gt)
                    or (self.le is not None and value > self.le)
                    or (self.lt is not None and value >= self.lt))

    def describe(self) -> str:
        bounds = (("≥", self.ge), (">", self.gt), ("≤", self.le), ("<", self.lt))
        return " and ".join(f"{sign} {int(bound) if float(bound).is_integer() else bound:}"
                            for sign, bound in bounds if bound is not None)


@dataclass(frozen=True)
class Pattern:
    """The allowed form of a string param: ``Annotated[str, Pattern(r"...", "what it is")]``."""

    regex: str
    describe: str


# Every integer knob has an upper bound: far above any real run, it stops a typo (2**63) here in
# one line instead of exhausting memory or time later. MAX_COUNT bounds the counts and caps that
# only limit something (rows sampled, reviews kept): a trillion is more rows than any corpus a
# stage reads, and every such count stays inside numpy's int64.
MAX_COUNT = 10**12
# Steps of a run (epochs × batches_per_epoch): 400× the paper's 12 × 2000. The schedule lists
# every step up front (pipeline/schedule.py), 8 bytes each.
MAX_STEPS = 10**7
# Examples in one batch: LAMB pre-trained BERT at 65,536 (You et al., 2020), the largest batch
# reported; a batch is held on the device at once.
MAX_BATCH = 2**16
Positive = Annotated[int, Range(ge=1, le=MAX_COUNT)]
BatchSize = Annotated[int, Range(ge=1, le=MAX_BATCH)]
# Epochs: the paper trains 10–12; each epoch's training subsets are drawn up front
# (pipeline/schedule.py), a row index per training example, so 1,000 full passes over QQP
# already hold 2 GB.
Epochs = Annotated[int, Range(ge=1, le=1000)]
# CPU threads, processes, tensor-parallel GPUs: beyond any machine (the largest CPUs have a few
# hundred hardware threads, a node 8–16 GPUs).
Workers = Annotated[int, Range(ge=1, le=1024)]
Seed = Annotated[int, Range(ge=0, lt=2**32)]  # numpy's and torch's seed range
# Seeds in `seeds:`: every one trains every member once; seed ensembles in the literature take 3–10.
MAX_SEEDS = 1000
# A string knob is a name, a path or a title: PATH_MAX (4096) is longer than any of them.
MAX_STRING = 4096
Weight = Annotated[float, Range(ge=0)]
Rate = Annotated[float, Range(gt=0)]
Fraction = Annotated[float, Range(gt=0, le=1)]
Probability = Annotated[float, Range(ge=0, lt=1)]
Device = Annotated[str, Pattern(r"auto|cpu|mps|cuda(:\d+)?", "auto, cpu, mps, cuda or cuda:N")]


@dataclass(frozen=True)
class DataConfig:
    # A local directory holding the CS224N files, or an http(s) URL base they are fetched from.
    source: str = "https://raw.githubusercontent.com/gpoesia/minbert-default-final-project/main/data"
    # Optional cap on training rows per task (a seeded sample), for CPU-sized runs; null = all.
    train_rows: dict[str, Positive] = field(default_factory=dict)
    # The same for the dev split (scores then come from a fixed seeded sample of dev); null = all.
    dev_rows: dict[str, Positive] = field(default_factory=dict)
    # Seeds the train_rows / dev_rows samples. Apart from the training seeds, so that training
    # another seed never re-runs `prepare` nor trains on other rows.
    seed: Seed = 11
    # Train rows that are also in dev or test (the same id, or the same example: case and
    # spacing folded, a pair in either order): `keep` trains on them (the CS224N splits are the
    # benchmark's own, and its published figures are on them), `drop` removes them from train.
    # prepare's report counts them either way.
    leakage: Literal["keep", "drop"] = "keep"


@dataclass(frozen=True)
class HeadConfig:
    # A head is a small MLP (the paper's: 2 layers) of hidden × hidden weights per layer; 2**16
    # is 64× BERT-large's width.
    layers: Annotated[int, Range(ge=1, le=64)] = 2
    hidden: Annotated[int, Range(ge=1, le=2**16)] | None = None  # null: the backbone's hidden size
    activation: Literal["relu", "gelu", "tanh"] = "relu"
    dropout: Probability = 0.3


@dataclass(frozen=True)
class ModelConfig:
    # Not blank: an empty name would resolve to the working directory.
    backbone: Annotated[str, Pattern(r"(?s).*\S.*", "a hub id, a local directory or minilm")] = (
        "bert-base-uncased")
    pair_encoding: Literal["concat", "separate"] = "concat"
    # `separate` only: the parts concatenated into the pair tasks' head input, in this order.
    pair_features: list[PairFeature] = field(default_factory=lambda: ["u", "v", "diff", "prod"])
    pooling: Literal["cls", "mean", "max", "attention"] = "cls"
    # `separate` only: pair tasks scored by the cosine of their two embeddings (model.py's
    # CosineHead) instead of an MLP over pair_features.
    cosine_heads: list[str] = field(default_factory=list)
    # At least [CLS] a [SEP] b [SEP]; at most what the backbone's position table and tokenizer
    # take (check_max_length, once the backbone is known), and never above 2**16 (8× ModernBERT's
    # 8,192, the longest BERT-family table).
    max_length: Annotated[int, Range(ge=4, le=2**16)] = 128
    head: HeadConfig = field(default_factory=HeadConfig)

    def __post_init__(self) -> None:
        if not self.pair_features or len(set(self.pair_features)) != len(self.pair_features):
            raise ConfigError(f"pair_features: expected distinct parts from "
                              f"{list(typing.get_args(PairFeature))}, got {self.pair_features}")


@dataclass(frozen=True)
class LossConfig:
    task_weights: dict[str, Weight] = field(default_factory=dict)  # a task not named: 1.0
    # Weight of the contrastive loss on cosine distance added to the binary and regression pair
    # tasks' losses (QQP and STS); 0 = off.
    contrastive_weight: Weight = 0.0
    contrastive_margin: Weight = 0.5
    # Regression target d² = (high − y)/(4·(high − low)) (`similarity`: similar pairs close) or
    # (y − low)/(4·(high − low)) (`paper`, as printed); for STS (5 − y)/20 and y/20.
    sts_contrastive_target: Literal["similarity", "paper"] = "similarity"
    # Weight of the squared ordinal error added to an ordered classification task's CE (SST);
    # 0 = plain CE (paper: 0.1).
    ordered_ce_weight: Weight = 0.0


@dataclass(frozen=True)
class CustomScheduleConfig:
    task: str = "qqp"
    fraction: Fraction = 0.8
    epochs: Epochs = 2


@dataclass(frozen=True)
class TrainConfig:
    epochs: Epochs = 10
    # null: one full pass over every task's data
    batches_per_epoch: Annotated[int, Range(ge=1, le=MAX_STEPS)] | None = 2000
    batch_size: BatchSize = 16
    eval_batch_size: BatchSize = 128
    lr: Rate = 1e-5
    head_lr_scale: Rate = 1.0  # heads and pooling (not the pretrained backbone) at lr × this
    betas: list[Probability] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: Weight = 0.1
    warmup_ratio: Probability = 0.1
    max_grad_norm: Weight = 1.0  # 0: no clipping
    schedule: Literal["round_robin", "random", "annealed", "custom"] = "custom"
    custom: CustomScheduleConfig = field(default_factory=CustomScheduleConfig)
    # random/annealed: task i is drawn with p_i ∝ w_i · (its schedule's weight), w_i from here
    # (default 1), e.g. {sts: 0.6} to spend fewer steps on a task that starts near its peak.
    sampling_weights: dict[str, Rate] = field(default_factory=dict)
    length_grouping: bool = True
    # bf16 autocast; fp16 autocast with a dynamic loss scale (GPUs without fast bf16: T4, V100);
    # fp32 as is; auto: bf16 where the device computes it natively, else fp32 (device.py).
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "bf16"
    # Micro-batches per step: a batch_size batch in grad_accum forward/backward passes (the same
    # update in less activation memory, but for SMART normalize's 1/batch-scaled ascent step).
    grad_accum: BatchSize = 1
    # torch.compile the encoder (dynamic shapes: every batch is padded to its own length).
    compile: bool = False
    device: Device = "auto"  # auto: cuda when available, else cpu
    num_threads: Workers | None = None  # torch CPU threads (per process); null: torch's default
    # Data-parallel processes for a member (torchrun's --nproc_per_node, one per GPU): the train
    # stage launches them itself; under a torchrun of your own (several nodes) its world is
    # used as it is. batch_size stays the global batch, split over the processes.
    processes: Workers = 1
    # The dev score that picks the best epoch: `overall` (over every task of the member, as in
    # metrics.json), `ensemble` (the overall over the tasks params `ensemble:` takes from the
    # member; every task when it takes none) or a task's metric (sst_acc, qqp_acc, sts_pearson).
    select_by: str = "overall"
    # Rows of a task's dev set that the per-epoch evaluation reads (a fixed seeded sample, the
    # same for every run), e.g. {qqp: 2000}: the best epoch is picked on them and its model is
    # then scored on the whole dev set once. {}: every epoch on the whole dev set.
    select_rows: dict[str, Positive] = field(default_factory=dict)
    # Each task's predictions from that task's own best epoch (its metric on the same rows),
    # instead of all from the epoch select_by picks; the model saved stays that epoch's.
    select_per_task: bool = False
    # A resumable checkpoint (model, optimiser, data position, RNG states) every this many steps
    # and/or minutes, and at every epoch's end; null turns that trigger off.
    checkpoint_steps: Positive | None = None
    checkpoint_minutes: Rate | None = 10.0

    def __post_init__(self) -> None:
        if len(self.betas) != 2:
            raise ConfigError(f"betas: expected two numbers [β1, β2], got {_show(self.betas)}")
        if self.grad_accum > self.batch_size:
            raise ConfigError(f"grad_accum: {self.grad_accum} micro-batches of a batch of "
                              f"batch_size = {self.batch_size} examples; expected grad_accum ≤ "
                              f"batch_size")
        steps = self.epochs * (self.batches_per_epoch or 0)
        if steps > MAX_STEPS:
            raise ConfigError(f"batches_per_epoch: {self.epochs} epochs × "
                              f"{self.batches_per_epoch} batches are {steps:,} steps; expected "
                              f"at most {MAX_STEPS:,} (the schedule lists every step up front)")
    # Not a params.yaml key: the train stage sets it from its DVC matrix item, one run per entry
    # of the top-level `seeds:` list (member_for_seed).
    seed: Seed = 11


@dataclass(frozen=True)
class SmartConfig:
    # λ_s; 0 turns the regularizer off. Per-task overrides in `task_lambda`.
    lambda_: Weight = 0.0
    task_lambda: dict[str, Weight] = field(default_factory=dict)
    # normalize: smart-pytorch's unit-norm perturbation per token, which the paper ran; project:
    # Jiang et al.'s ε-ball. ε, σ² and the λ scale mean different things in each (smart.py).
    perturbation: Literal["normalize", "project"] = "normalize"
    # Where δ is added: the embedding layer's output (word + position + type → LayerNorm, the
    # encoder's input: what minBERT's embed() returns) or the word embeddings before them.
    perturb_at: Literal["embeddings", "word_embeddings"] = "embeddings"
    epsilon: Rate = 1e-6
    step_size: Rate = 1e-3
    noise_var: Rate = 1e-5
    # Ascent steps per batch, each a forward and backward pass more; the paper takes 1.
    steps: Annotated[int, Range(ge=0, le=100)] = 1
    norm: Literal["inf", "l2"] = "inf"
    # false: f(x) is a constant target (as in VAT); under `project` that skips a backward pass.
    clean_grad: bool = True

    def lambda_for(self, task: str) -> float:
        return self.task_lambda.get(task, self.lambda_)


@dataclass(frozen=True)
class PcgradConfig:
    enabled: bool = False


# TorchJD's aggregators and loss weightings that bestfit wires (pipeline/aggregation.py).
Aggregator = Literal["sum", "mean", "random", "upgrad", "mgda", "dualproj", "imtl_g",
                     "aligned_mtl", "pcgrad", "gradvac", "pcd", "fairgrad", "cagrad", "nash_mtl"]
LossWeighting = Literal["fixed", "uw", "dwa", "famo"]


@dataclass(frozen=True)
class MtlConfig:
    """How the per-task gradients are combined (pipeline/aggregation.py): null and fixed, one
    task's batch per step as before (or PCGrad, pcgrad.enabled); otherwise every step takes one
    batch of every task, as PCGrad does."""

    aggregator: Aggregator | None = None
    aggregator_options: dict[str, int | float] = field(default_factory=dict)
    weighting: LossWeighting = "fixed"
    weighting_options: dict[str, int | float] = field(default_factory=dict)
    # The learning rate of a weighting's own parameters (UW's log-variances); null: train.lr.
    weighting_lr: Rate | None = None

    @property
    def enabled(self) -> bool:
        return self.aggregator is not None or self.weighting != "fixed"


@dataclass(frozen=True)
class EdaConfig:
    num_aug: Annotated[int, Range(ge=1, le=100)] = 8  # new sentences per sentence; EDA tried ≤ 32
    alpha: Fraction = 0.1
    operations: list[EdaOperation] = field(
        default_factory=lambda: list(typing.get_args(EdaOperation)))
    seed: Seed = 11
    wordnet_dir: str | None = None  # an NLTK data dir holding corpora/wordnet; null: NLTK_DATA

    def __post_init__(self) -> None:
        if not self.operations:
            raise ConfigError(f"operations: expected a non-empty list from "
                              f"{list(typing.get_args(EdaOperation))}, got []")


@dataclass(frozen=True)
class ReviewsConfig:
    source: str = "data/reviews"  # a .jsonl / .jsonl.gz file, or a directory of them
    encoder: str = "minilm"
    # Reviews kept for SST's most frequent label; the other labels get a share in proportion to
    # their SST counts (match_label_counts), or per_label each (false: the paper's).
    per_label: Positive = 3000
    match_label_counts: bool = True
    # SST length quantile bins that the kept reviews' lengths follow: of SST's 8,544 sentences a
    # thousand bins hold eight each.
    length_bins: Annotated[int, Range(ge=1, le=1000)] = 10
    # How each (label, length bin) cell's quota is filled from its candidates: the reviews nearest
    # SST's label centroid, or a seeded random draw with no embedding (Table 3's random reviews).
    selection: Literal["centroid", "random"] = "centroid"
    chunk_size: Positive = 10000  # lines between progress-bar updates
    batch_size: BatchSize = 256  # encoder batch size
    # Reviews sampled per label (reservoir, same shares as per_label) before embedding; bounds
    # memory and embedding work. null: every review in SST's length range (memory then grows
    # with the file).
    max_candidates_per_label: Positive | None = 30000
    # SST train sentences per label embedded for its centroid (a seeded sample); null: all of
    # them. A few hundred give the direction; all 8,544 cost a minute on 2 cores.
    centroid_rows: Positive | None = None
    cache_dir: str | None = "data/cache/embeddings"  # embeddings by text hash; null: no cache
    device: Device = "auto"  # auto: cuda when available, else cpu
    seed: Seed = 11


@dataclass(frozen=True)
class LlmConfig:
    enabled: bool = False
    backend: Literal["vllm", "transformers"] = "vllm"
    model: str = "meta-llama/Meta-Llama-3-8B"  # the paper's: the base model, not Instruct
    # plain: a few-shot "Sentence: … / Label: …" continuation (base or instruct models); chat:
    # the tokenizer's chat template (instruct models only: a base model never learnt its tokens).
    prompt_format: Literal["plain", "chat"] = "plain"
    shots: Annotated[int, Range(ge=0, le=256)] = 11  # 256 shots already fill an 8k-token prompt
    seed: Seed = 11  # draws the shots and the max_reviews sample
    max_reviews: Positive | None = 5000  # a seeded sample of the reviews is labeled; null: all
    # Keep labels with max_j p_j >= this; null: keep all.
    min_confidence: Annotated[float, Range(ge=0, le=1)] | None = None
    max_review_tokens: Annotated[int, Range(ge=1, le=2**20)] = 256  # above any LLM's context
    batch_size: BatchSize = 16
    tensor_parallel_size: Workers = 1
    device: Device = "auto"
    cache_dir: str = "data/cache/llm_labels"  # append-only label cache, resumes killed runs


@dataclass(frozen=True)
class AugmentConfig:
    # The single-sentence classification task whose training set the augment stages extend
    # (reviews and LLM labels need its 5 classes to be star ratings 1–5).
    task: str = "sst"
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
    # Default: a member saved before mtl existed loads as it trained.
    mtl: MtlConfig = field(default_factory=MtlConfig)
    # The declarations of this member's tasks (saved with the model, so it predicts alone); a
    # CS224N task left out gets its default declaration.
    specs: dict[str, TaskSpec] = field(default_factory=dict)
    # The tasks whose dev scores pick the best epoch (train.select_by): a metric's own task,
    # every task for `overall`; for `ensemble`, filled in from params `ensemble:`. Not a params
    # key; empty (a member saved before it existed): from select_by.
    select_tasks: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        missing = [t for t in self.tasks if t not in self.specs]
        if missing:
            from pipeline.tasks import default_tasks

            defaults = default_tasks()
            unknown = [t for t in missing if t not in defaults]
            if unknown:
                raise ConfigError(f"tasks {unknown}: no declaration (specs) for them")
            object.__setattr__(self, "specs", {**self.specs, **{t: defaults[t] for t in missing}})
        if not self.select_tasks:
            own = [t for t in self.tasks if self.specs[t].metric_name == self.train.select_by]
            object.__setattr__(self, "select_tasks", own or list(self.tasks))
        if not set(self.select_tasks) <= set(self.tasks):
            raise ConfigError(f"select_tasks {self.select_tasks}: not among tasks {self.tasks}")

    @property
    def per_task_step(self) -> bool:
        """Whether every step takes one batch of every task (PCGrad, an aggregator, a loss
        weighting) instead of one task's batch."""
        return self.pcgrad.enabled or self.mtl.enabled

    @property
    def selection_label(self) -> str:
        """What picks the best epoch, for logs and the model card: the metric's name,
        ``overall``, or ``overall(qqp, sts)`` over some of the member's tasks."""
        if self.train.select_by not in SELECT_OVERALL:
            return self.train.select_by
        if self.select_tasks == self.tasks:
            return "overall"
        return f"overall({', '.join(self.select_tasks)})"


@dataclass(frozen=True)
class Params:
    data: DataConfig
    model: ModelConfig
    loss: LossConfig
    train: TrainConfig
    smart: SmartConfig
    pcgrad: PcgradConfig
    mtl: MtlConfig
    augment: AugmentConfig
    tasks: dict[str, TaskSpec]
    models: dict[str, MemberConfig]
    ensemble: dict[str, list[str]]
    # Training seeds: every member is trained once per seed (the train stage's matrix axis).
    seeds: list[int] = field(default_factory=lambda: [TrainConfig.seed])


# train.select_by values that pick the best epoch on the overall score of some of the tasks.
SELECT_OVERALL = ("overall", "ensemble")
# Sections a member may override, by params key.
MEMBER_SECTIONS = {
    "model": ModelConfig,
    "loss": LossConfig,
    "train": TrainConfig,
    "smart": SmartConfig,
    "pcgrad": PcgradConfig,
    "mtl": MtlConfig,
}
AUGMENT_SOURCES = ("eda", "amazon", "llm")


def _yaml_key(name: str) -> str:
    # `lambda` is a Python keyword, so the field is `lambda_`.
    return name.rstrip("_")


def _show(value: Any, room: int = 160, depth: int = 0) -> str:
    """``repr(value)`` cut to about ``room`` characters and built only as far as it is shown:
    a message must not render a megabyte string or an alias-expanded list whole."""
    if isinstance(value, (list, Mapping)):
        if depth >= 4:
            return "{…}" if isinstance(value, Mapping) else "[…]"
        items = value.items() if isinstance(value, Mapping) else value
        parts, used = [], 0
        for item in items:
            if used > room:
                parts.append("…")
                break
            part = (f"{_show(item[0], room - used, depth + 1)}: "
                    f"{_show(item[1], room - used, depth + 1)}" if isinstance(value, Mapping)
                    else _show(item, room - used, depth + 1))
            parts.append(part)
            used += len(part) + 2
        body = ", ".join(parts)
        return f"{{{body}}}" if isinstance(value, Mapping) else f"[{body}]"
    if isinstance(value, str) and len(value) > max(room, 16):
        return f"{value[:max(room, 16)]!r}… ({len(value):,} characters)"
    if isinstance(value, int) and value.bit_length() > 128:
        return f"an integer of {value.bit_length():,} bits"
    return repr(value)


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Return ``value`` converted to ``tp`` or raise ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Annotated:
        value = _check_type(value, args[0], where)
        for rule in tp.__metadata__:
            _check_rule(value, args[0], rule, where)
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
            raise ConfigError(f"{where}: expected one of {list(args)}, got {_show(value)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {_show(value)}")
        return [_check_type(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {_show(value)}")
        return {
            _check_type(k, args[0], f"{where} key"): _check_type(v, args[1], f"{where}.{k}")
            for k, v in value.items()
        }
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {_show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {_show(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {_show(value)}")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            number = math.inf
        # NaN fails every comparison, so no range would stop it; ±inf is no setting either.
        if not math.isfinite(number):
            raise ConfigError(f"{where}: expected a finite number, got {_show(value)}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {_show(value)}")
        if len(value) > MAX_STRING:
            raise ConfigError(f"{where}: {_show(value, 40)} is too long; expected at most "
                              f"{MAX_STRING} characters")
        if "\x00" in value:
            raise ConfigError(f"{where}: {_show(value)} holds a NUL character; no name or path "
                              f"can")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {where}")


def _check_rule(value: Any, base: Any, rule: Range | Pattern, where: str) -> None:
    if isinstance(rule, Range) and not rule.allows(value):
        kind = "an integer" if base is int else "a number"
        raise ConfigError(f"{where}: {_show(value)} is out of range; expected {kind} "
                          f"{rule.describe()}")
    if isinstance(rule, Pattern) and not re.fullmatch(rule.regex, value):
        raise ConfigError(f"{where}: {_show(value)} is not allowed; expected {rule.describe}")


def build(cls: type, data: Mapping[str, Any] | None, where: str) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {_show(data)}")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {_yaml_key(f.name): f for f in dataclasses.fields(cls)}
    unknown = _unknown(data, fields)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    kwargs = {}
    for key, f in fields.items():
        if key in data:
            kwargs[f.name] = _check_type(data[key], hints[f.name], f"{where}.{key}")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        # A dataclass's own check (__post_init__) names its field; prefix where it sits.
        raise ConfigError(f"{where}.{exc}") from None


def _key(name: Any) -> str:
    """A params key as it is written in a dotted path, or shown cut when it is odd or long."""
    return name if isinstance(name, str) and len(name) <= 64 else _show(name, 64)


def _unknown(data: Mapping[Any, Any], known: Any) -> str:
    """The keys of ``data`` not in ``known``, sorted and shown ('' when none): YAML keys may be
    numbers or null beside strings."""
    unknown = [key for key in data if key not in known]
    return _show(sorted(unknown, key=str)) if unknown else ""


def _check_task_keys(mapping: Mapping[str, Any], where: str, known: Mapping[str, Any]) -> None:
    unknown = sorted(set(mapping) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown task(s) {unknown}; known: {list(known)}")


def _check_section_tasks(built: Mapping[str, Any], prefix: str, known: Mapping[str, Any]) -> None:
    """Per-task maps must name real tasks: a typo would silently leave a knob at its default."""
    _check_task_keys(built["loss"].task_weights, f"{prefix}loss.task_weights", known)
    _check_task_keys(built["smart"].task_lambda, f"{prefix}smart.task_lambda", known)
    train = built["train"]
    _check_task_keys(train.select_rows, f"{prefix}train.select_rows", known)
    _check_task_keys(train.sampling_weights, f"{prefix}train.sampling_weights", known)
    if train.sampling_weights and train.schedule not in ("random", "annealed"):
        raise ConfigError(f"{prefix}train.sampling_weights: {dict(train.sampling_weights)} weigh "
                          f"the random and annealed schedules' draws; train.schedule is "
                          f"{train.schedule!r}")
    model = built["model"]
    _check_task_keys(dict.fromkeys(model.cosine_heads), f"{prefix}model.cosine_heads", known)
    if len(set(model.cosine_heads)) != len(model.cosine_heads):
        raise ConfigError(f"{prefix}model.cosine_heads: {model.cosine_heads} names a task twice; "
                          f"expected distinct tasks")
    if model.cosine_heads and model.pair_encoding != "separate":
        raise ConfigError(f"{prefix}model.cosine_heads: {model.cosine_heads} need "
                          f"model.pair_encoding: separate (a cosine compares two embeddings)")
    unfit = [t for t in model.cosine_heads
             if not known[t].pair or known[t].kind not in ("binary", "regression")]
    if unfit:
        raise ConfigError(f"{prefix}model.cosine_heads: {unfit}: a cosine head scores a pair "
                          f"task of kind binary or regression")
    # Checked whatever the schedule, as its Literal type once did: a typo must not lie in wait.
    custom_task = built["train"].custom.task
    if custom_task not in known:
        raise ConfigError(f"{prefix}train.custom.task: expected one of the declared tasks "
                          f"{list(known)}, got {custom_task!r}")


def build_tasks(raw: Any) -> dict[str, TaskSpec]:
    """The `tasks:` section: each entry checked and completed from its kind (pipeline/tasks.py);
    absent, the CS224N tasks. No two tasks may write the same submission file."""
    raw = CS224N_TASKS if raw is None else raw
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError("params.yaml: tasks: expected a mapping of at least one task")
    tasks: dict[str, TaskSpec] = {}
    writers: dict[str, str] = {}  # a submission file's name, case-folded → the task writing it
    for name, spec in raw.items():
        try:
            where = f"params.yaml: tasks.{_key(name)}"
            check_task_name(name, where)
            if isinstance(spec, Mapping) and "name" in spec:
                raise ConfigError(f"{where}.name: a task's name is its key in tasks:")
            tasks[name] = resolve_task(name, build(TaskSpec, spec, where), where)
        except TaskError as exc:
            raise ConfigError(str(exc)) from None
        for split in SUBMISSION_SPLITS:
            file = tasks[name].submission_file(split)
            other = writers.setdefault(file.casefold(), name)
            if other != name:
                raise ConfigError(f"{where}.submission.file: {file!r} is also the file of "
                                  f"tasks.{other} (names compared ignoring case); expected one "
                                  f"file per task, e.g. with {{task}} in its name")
    return tasks


def _merge_section(cls: type, base: Mapping[str, Any], override: Mapping[str, Any]
                   ) -> dict[str, Any]:
    """A member's section: ``base`` (the global one) with ``override`` merged in, nested
    sections merged deeply. A per-task map (a dict field) merges key by key, but an empty one
    or null replaces it: otherwise a member could not clear a global map. Keys and types are
    checked later, by :func:`build`."""
    hints = typing.get_type_hints(cls)
    fields = {_yaml_key(f.name): hints[f.name] for f in dataclasses.fields(cls)}
    merged = dict(base)
    for key, value in override.items():
        tp, current = fields.get(key), merged.get(key)
        if not (isinstance(value, Mapping) and isinstance(current, Mapping)):
            merged[key] = value
        elif dataclasses.is_dataclass(tp):
            merged[key] = _merge_section(tp, current, value)
        elif typing.get_origin(tp) is dict:
            merged[key] = {**current, **value} if value else {}
        else:
            merged[key] = value
    return merged


def _reject_train_seed(train: Any, where: str) -> None:
    """Training seeds are the train stage's DVC matrix axis, so a `train.seed` key would be
    silently overridden by it."""
    if isinstance(train, Mapping) and "seed" in train:
        raise ConfigError(f"{where}.seed: training seeds are not set here; list them in the "
                          f"top-level `seeds:` (e.g. seeds: [11, 12, 13]), one run per seed")


def _check_seeds(value: Any) -> list[int]:
    seeds = _check_type(value, list[Seed], "params.yaml: seeds")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"params.yaml: seeds: expected a non-empty list of distinct integers, "
                          f"got {_show(seeds)}")
    if len(seeds) > MAX_SEEDS:
        raise ConfigError(f"params.yaml: seeds: {len(seeds):,} seeds; expected at most "
                          f"{MAX_SEEDS} (each trains every member once)")
    return seeds


# A member's name names its DVC stages (train@<name>-<seed>), its directory (models/<name>/) and
# the params key DVC tracks for it (models.<name>): ASCII letters, digits, _ and -, as DVC's
# stage names and every file system take them, not a leading - (it would read as an option); no
# dot (DVC would read models.a.b as a nested key), no path separator, no space.
MEMBER_NAME = r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}"
MEMBER_SHAPE = ("a mapping of its tasks and optional overrides, e.g. "
                "{tasks: [sst, qqp], train: {lr: 2.0e-5}}")


def _check_member_names(names: Iterable[Any]) -> None:
    """Every name is safe for DVC and file systems, and no two differ by case alone (their
    directories would be one on macOS and Windows)."""
    seen: dict[str, str] = {}
    for name in names:
        if not isinstance(name, str) or not re.fullmatch(MEMBER_NAME, name):
            raise ConfigError(f"params.yaml: models: member name {_show(name, 64)}: expected "
                              f"letters, digits, _ and -, starting with a letter or _, at most "
                              f"64 characters (it names the stage train@<name>-<seed> and the "
                              f"directory models/<name>)")
        other = seen.setdefault(name.lower(), name)
        if other != name:
            raise ConfigError(f"params.yaml: models.{name}: differs from models.{other} only by "
                              f"case; their directories collide on a case-insensitive file "
                              f"system: rename one")


def _build_member(name: str, raw: Any, sections: Mapping[str, Any],
                  known: dict[str, TaskSpec], augment_task: str) -> MemberConfig:
    where = f"params.yaml: models.{name}"
    raw = {} if raw is None else raw
    allowed = {"tasks", "augment", *MEMBER_SECTIONS}
    if not isinstance(raw, Mapping):
        hint = ""
        if isinstance(raw, list) and raw and all(isinstance(t, str) and t in known for t in raw):
            hint = f"; for a member of these tasks write {{tasks: [{', '.join(raw)}]}}"
        raise ConfigError(f"{where}: expected {MEMBER_SHAPE}; keys: {sorted(allowed)}; got "
                          f"{_show(raw)}{hint}")
    unknown = _unknown(raw, allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; a member is {MEMBER_SHAPE}; "
                          f"known: {sorted(allowed)}")
    for key in MEMBER_SECTIONS:
        if raw.get(key) is not None and not isinstance(raw[key], Mapping):
            raise ConfigError(f"{where}.{key}: expected a mapping of the {key} keys this member "
                              f"overrides, got {_show(raw[key])}")
    _reject_train_seed(raw.get("train"), f"{where}.train")
    tasks = _check_type(raw.get("tasks", list(known)), list[str], f"{where}.tasks")
    if not tasks or any(t not in known for t in tasks) or len(set(tasks)) != len(tasks):
        raise ConfigError(f"{where}.tasks: expected distinct tasks from {list(known)}, got "
                          f"{_show(tasks)}")
    augment = _check_type(raw.get("augment", []), list[str], f"{where}.augment")
    bad = [a for a in augment if a not in AUGMENT_SOURCES]
    if bad:
        raise ConfigError(
            f"{where}.augment: unknown source(s) {_show(bad)}; known: {list(AUGMENT_SOURCES)}")
    if len(set(augment)) != len(augment):
        raise ConfigError(f"{where}.augment: {augment} names a source twice; expected distinct "
                          f"sources (each adds its rows once)")
    if augment and augment_task not in tasks:
        raise ConfigError(f"{where}.augment: augmented data extends {augment_task} (augment.task), "
                          f"which is not among tasks {tasks}")
    built = {
        key: build(cls, _merge_section(cls, sections.get(key) or {}, raw.get(key) or {}),
                   f"{where}.{key}")
        for key, cls in MEMBER_SECTIONS.items()
    }
    _check_section_tasks(built, f"{where}.", known)
    specs = {t: known[t] for t in tasks}
    metric_names = [*SELECT_OVERALL, *(spec.metric_name for spec in specs.values())]
    if built["train"].select_by not in metric_names:
        raise ConfigError(f"{where}.train.select_by: {_show(built['train'].select_by)} is not a "
                          f"dev metric of this member; expected one of {metric_names}")
    if built["train"].schedule == "custom" and built["train"].custom.task not in tasks:
        raise ConfigError(
            f"{where}.train.custom.task: {built['train'].custom.task!r} is not among tasks {tasks}"
        )
    if built["pcgrad"].enabled and built["mtl"].enabled:
        raise ConfigError(f"{where}: pcgrad.enabled and mtl (aggregator "
                          f"{built['mtl'].aggregator}, weighting {built['mtl'].weighting}) both "
                          f"combine the task gradients; choose one (mtl.aggregator: pcgrad is "
                          f"TorchJD's PCGrad, and takes a weighting)")
    train = built["train"]
    if train.schedule == "custom" and train.custom.epochs >= train.epochs:
        raise ConfigError(
            f"{where}.train.custom.epochs: {train.custom.epochs} leaves no multitask epoch of "
            f"train.epochs = {train.epochs}; expected custom.epochs < epochs")
    return MemberConfig(name=name, tasks=tasks, augment=augment, specs=specs, **built)


def parse_params(raw: Mapping[str, Any]) -> Params:
    """Build and validate :class:`Params` from the parsed YAML mapping."""
    if not isinstance(raw, Mapping):
        raise ConfigError("params.yaml: expected a mapping at the top level")
    known = {"data", "tasks", "augment", "models", "ensemble", "seeds", *MEMBER_SECTIONS}
    unknown = _unknown(raw, known)
    if unknown:
        raise ConfigError(
            f"params.yaml: unknown top-level key(s) {unknown}; known: {sorted(known)}")
    _reject_train_seed(raw.get("train"), "params.yaml: train")
    sections = {key: build(cls, raw.get(key), f"params.yaml: {key}") for key, cls in
                MEMBER_SECTIONS.items()}
    tasks = build_tasks(raw.get("tasks"))
    _check_section_tasks(sections, "params.yaml: ", tasks)
    augment = build(AugmentConfig, raw.get("augment"), "params.yaml: augment")
    _check_augment_task(augment, tasks)
    models_raw = raw.get("models") or {}
    if not isinstance(models_raw, Mapping) or not models_raw:
        raise ConfigError(f"params.yaml: models: expected a mapping of at least one member "
                          f"(name: {MEMBER_SHAPE}), got {_show(models_raw)}")
    _check_member_names(models_raw)
    models = {name: _build_member(name, spec, raw, tasks, augment.task)
              for name, spec in models_raw.items()}
    ensemble = _build_ensemble(raw, tasks, models)
    models = {name: _ensemble_selection(member, ensemble) for name, member in models.items()}
    data = build(DataConfig, raw.get("data"), "params.yaml: data")
    _check_task_keys(data.train_rows, "params.yaml: data.train_rows", tasks)
    _check_task_keys(data.dev_rows, "params.yaml: data.dev_rows", tasks)
    return Params(
        data=data,
        tasks=tasks,
        augment=augment,
        models=models,
        ensemble=ensemble,
        seeds=_check_seeds(raw.get("seeds", [TrainConfig.seed])),
        **sections,
    )


ENSEMBLE_SHAPE = "a mapping of tasks to the members averaged for each, e.g. {sst: [a], qqp: [a, b]}"


def _build_ensemble(raw: Mapping[str, Any], tasks: dict[str, TaskSpec],
                    models: dict[str, MemberConfig]) -> dict[str, list[str]]:
    """params `ensemble:`: per task, the distinct members whose predictions it averages, each
    trained on the task. Absent, every member trained on a task, for every task. Given, it names
    at least one task (an ensemble of none scores an overall of 0.0); a declared task it leaves
    out is noticed, not refused: a member may train on a task only to help the others."""
    if raw.get("ensemble") is None:  # absent, or a key whose entries are all commented out
        return {task: trained for task in tasks
                if (trained := [name for name, m in models.items() if task in m.tasks])}
    value = raw["ensemble"]
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(f"params.yaml: ensemble: expected {ENSEMBLE_SHAPE}, got {_show(value)} "
                          f"(no task: nothing would be ensembled or scored)")
    ensemble = {}
    for task, members in value.items():
        where = f"params.yaml: ensemble.{_key(task)}"
        if task not in tasks:
            raise ConfigError(f"{where}: unknown task; known: {list(tasks)}")
        if members is None or members == []:
            raise ConfigError(f"{where}: expected a list of at least one member, got "
                              f"{_show(members)}; leave the task out to ensemble none")
        members = _check_type(members, list[str], where)
        for member in members:
            if member not in models:
                raise ConfigError(f"{where}: {_show(member, 64)} is not in models; known: "
                                  f"{list(models)}")
            if task not in models[member].tasks:
                raise ConfigError(f"{where}: member {member!r} is not trained on {task}")
        if len(set(members)) != len(members):
            raise ConfigError(f"{where}: {members} names a member twice; expected distinct "
                              f"members (each is averaged over all of its seeds)")
        ensemble[task] = members
    left_out = [task for task in tasks if task not in ensemble]
    if left_out:
        log.info("params.yaml: ensemble: no member for declared task(s) %s: the ensemble stage "
                 "writes no predictions, score or submission for them", left_out)
    return ensemble


def _ensemble_selection(member: MemberConfig, ensemble: dict[str, list[str]]) -> MemberConfig:
    """Under ``train.select_by: ensemble``, the member's best epoch is picked on the tasks the
    ensemble takes from it (all of its tasks when it takes none)."""
    if member.train.select_by != "ensemble":
        return member
    taken = [t for t in member.tasks if member.name in ensemble.get(t, [])]
    return dataclasses.replace(member, select_tasks=taken or list(member.tasks))


def _check_augment_task(augment: AugmentConfig, tasks: dict[str, TaskSpec]) -> None:
    spec = tasks.get(augment.task)
    if spec is None:
        raise ConfigError(f"params.yaml: augment.task: {augment.task!r} is not a declared task; "
                          f"known: {list(tasks)}")
    if spec.pair or spec.kind == "regression":
        raise ConfigError(f"params.yaml: augment.task: {augment.task!r} is a "
                          f"{'pair' if spec.pair else spec.kind} task; augmentation makes "
                          f"labelled single sentences for a classification task")


def member_for_seed(params: Params, name: str, seed: int) -> MemberConfig:
    """Member ``name`` of ``params.models`` trained with ``seed`` (a train stage matrix item)."""
    if name not in params.models:
        raise ConfigError(
            f"params.yaml: models has no member {name!r}; known: {sorted(params.models)}")
    member = params.models[name]
    return dataclasses.replace(member, train=dataclasses.replace(member.train, seed=seed))


def check_max_length(member: MemberConfig, positions: int | None, tokenizer_limit: int | None,
                     where: str = "params.yaml") -> None:
    """``model.max_length`` against what the member's backbone encodes: its position table
    (``max_position_embeddings``) and its tokenizer's ``model_max_length`` where that is smaller
    (RoBERTa's table has 514 rows for 512 tokens). Checked once the backbone is known, before
    any batch: above them the encoder fails on the first long batch with a tensor-size error.
    ``where`` names the file the value came from (a saved member's ``bestfit.json``)."""
    limits = [(n, what) for n, what in ((positions, "max_position_embeddings"),
                                        (tokenizer_limit, "tokenizer's model_max_length"))
              if isinstance(n, int) and n > 0]
    if not limits:
        return
    limit, what = min(limits)
    if member.model.max_length > limit:
        raise ConfigError(f"{where}: model.max_length of member {member.name!r}: "
                          f"{member.model.max_length} is above what backbone "
                          f"{member.model.backbone!r} encodes ({what} {limit}); expected "
                          f"≤ {limit}")


# Bounds on the params file itself: params.yaml is ~12 KB with ~500 nodes and nests 5 deep. A
# "billion laughs" document (aliases of aliases) expands a few lines into 10⁹ nodes, which every
# reader of it (these checks, DVC's own reading of params) would walk; the nodes are counted
# expanded, before anything is built.
MAX_PARAMS_BYTES = 10 * 2**20
MAX_NODES = 100_000
MAX_DEPTH = 64


def _check_node_graph(root: yaml.Node) -> None:
    """Refuse a composed document whose alias-expanded tree exceeds MAX_NODES or MAX_DEPTH, or
    that holds itself (a recursive alias); shared nodes are measured once, so this is quick on
    any bomb."""
    size: dict[int, int] = {}
    height: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, leaving = stack.pop()
        children = ([part for pair in node.value for part in pair]
                    if isinstance(node, yaml.MappingNode)
                    else node.value if isinstance(node, yaml.SequenceNode) else [])
        if leaving:
            on_path.discard(id(node))
            size[id(node)] = 1 + sum(size[id(c)] for c in children)
            height[id(node)] = 1 + max((height[id(c)] for c in children), default=0)
            line = node.start_mark.line + 1
            if size[id(node)] > MAX_NODES:
                raise ConfigError(f"line {line}: this value expands (aliases included) to more "
                                  f"than {MAX_NODES:,} values; expected a params file, not an "
                                  f"alias bomb")
            if height[id(node)] > MAX_DEPTH:
                raise ConfigError(f"line {line}: values nested more than {MAX_DEPTH} deep "
                                  f"(aliases included); params.yaml nests 5")
            continue
        if id(node) in size:
            continue
        if id(node) in on_path:
            raise ConfigError(f"line {node.start_mark.line + 1}: a value that holds itself (a "
                              f"recursive alias); expected a tree")
        on_path.add(id(node))
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in size)


class _ParamsLoader(yaml.SafeLoader):
    """YAML 1.1 reads ``2e-05`` (no decimal point), the form DVC writes for ``-S train.lr=2e-5``,
    as a string; this loader reads it as the float it is."""


def _unique_keys_mapping(loader: _ParamsLoader, node: yaml.MappingNode, deep: bool = False):
    """A mapping whose keys are unique: YAML would let a repeated key silently win. A merge key
    (``<<: *base``) is standard YAML: the keys written beside it override the merged ones, and
    SafeLoader's construct_mapping merges them."""
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"line {key_node.start_mark.line + 1}: key {_show(key, 64)} "
                              f"appears twice in one mapping (first on line {seen[key]}); keep "
                              f"one")
        seen[key] = key_node.start_mark.line + 1
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_ParamsLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                              lambda loader, node: _unique_keys_mapping(loader, node))
_ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _read_yaml(text: str) -> Any:
    """The document in ``text``, its node graph checked (_check_node_graph) before it is built."""
    loader = _ParamsLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_node_graph(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_PARAMS_BYTES + 1)
        if len(data) > MAX_PARAMS_BYTES:
            raise ConfigError(f"larger than {MAX_PARAMS_BYTES // 2**20} MiB; expected a params "
                              f"file (params.yaml is a few KB)")
        raw = _read_yaml(data.decode("utf-8"))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: not found; run from the project root") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"{path}: is a directory; expected the params YAML file") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: byte {exc.start}: not UTF-8 text") from exc
    except yaml.YAMLError as exc:
        # One line: PyYAML's message spans several, with the position on its own line.
        raise ConfigError(f"{path}: not valid YAML: {one_line(exc)}") from exc
    except RecursionError as exc:
        raise ConfigError(f"{path}: values nested too deeply to read; expected at most "
                          f"{MAX_DEPTH} levels") from exc
    except ValueError as exc:  # a scalar PyYAML cannot build: an int of 5,000 digits, a 13th month
        raise ConfigError(f"{path}: a value cannot be read: {str(exc).split(':')[0]}") from exc
    try:
        return parse_params(raw or {})
    except ConfigError as exc:
        message = str(exc)
        if path.name != "params.yaml" and message.startswith("params.yaml"):
            message = str(path) + message.removeprefix("params.yaml")
        raise ConfigError(message) from None
