"""A saved member in the formats the field's own loaders read, beside bestfit's own files.

- **sentence-transformers**: the member's directory itself loads with
  ``SentenceTransformer(dir)``: its encoder (the backbone files at the root) and the member's
  pooling (``cls``, ``mean`` or ``max``; Reimers & Gurevych 2019's Pooling module), with no
  normalisation, as the member was trained. The files are written by the installed
  sentence-transformers' own ``save`` (``modules.json``, ``1_Pooling/``, its configs), and the
  tokenizer's ``model_max_length`` is the member's ``model.max_length``, where
  sentence-transformers reads its truncation length. A learned ``attention`` pooling has no
  sentence-transformers module, so that member is not exported (without ``modules.json``
  sentence-transformers would silently pool by the mean instead).
- **transformers**: one ``*ForSequenceClassification`` directory per task whose head that
  architecture computes exactly, ``transformers/<task>/``, loadable by
  ``AutoModelForSequenceClassification``, ``pipeline("text-classification")`` and
  sentence-transformers' ``CrossEncoder``. A head reads one sequence's first token:
  dropout → dense(h→h) → activation → dropout → linear, which is BERT's pooler (tanh) and
  classifier, RoBERTa's classification head (tanh) and ELECTRA's (gelu); in eval mode the
  dropouts are the identity, so the member's ``cls`` pooling and 2-layer ``tanh`` (or ``gelu``)
  MLP of hidden size h is that head exactly. ELECTRA's encoder is BERT's layer for layer (with
  ``embedding_size`` = h), so a BERT encoder with a gelu head exports as ELECTRA. A binary task's
  one logit z becomes the two logits (0, z): softmax gives (1 − σ(z), σ(z)), bestfit's
  probabilities; a regression is ``problem_type: regression`` with one output (unclipped:
  bestfit clips its predictions to the declared range). Every other head (another pooling, a
  separately encoded pair, a cosine head, another activation or depth) is not exported, and
  :func:`plan` says why; the model card repeats it.

Every export is checked before it is written: it is loaded back with that library's loader and
its outputs on a few sentences must equal bestfit's (``EXACT_ATOL``), or the export fails.
``exports.json`` records what was written, and why each missing export is missing; the model
card claims only what it lists. ``bestfit-export MODEL_DIR`` adds the exports to a member saved
before they existed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import CONFIG_MAPPING, AutoModelForSequenceClassification, PreTrainedModel

from pipeline.batching import pad
from pipeline.errors import UserError, run_stage
from pipeline.io import atomic_path
from pipeline.model import MultitaskModel, load_dir_tokenizer, read_member_config
from pipeline.model_card import write_cards
from pipeline.seeds import METRICS_FILE, read_run

EXPORTS_FILE = "exports.json"
CLASSIFIERS_DIR = "transformers"  # transformers/<task>/: one sequence classifier per task
# What sentence-transformers' save writes beside the encoder files it shares with the member.
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json",
                               "config_sentence_transformers.json")
SENTENCE_TRANSFORMERS_POOLING = ("cls", "mean", "max")
# fp32 outputs of the same weights through another library's code: the order of additions
# differs (fused attention kernels, einsum against sum), nothing else may.
EXACT_ATOL = 1e-5
PROBES = ("a gripping, funny film", "the plot is dull and the acting is worse",
          "How do I learn to cook rice?", "A man is playing a guitar on the street.")


@dataclasses.dataclass(frozen=True)
class Classifier:
    """A ``*ForSequenceClassification`` that computes a bestfit head exactly: its model type,
    and the modules that take the head's first and last linear layers."""

    model_type: str
    dense: str
    output: str


# (the encoder's model_type, the head's activation) → the architecture that is that head.
EXACT_CLASSIFIERS = {
    ("bert", "tanh"): Classifier("bert", "bert.pooler.dense", "classifier"),
    ("bert", "gelu"): Classifier("electra", "classifier.dense", "classifier.out_proj"),
    ("electra", "gelu"): Classifier("electra", "classifier.dense", "classifier.out_proj"),
    **{(kind, "tanh"): Classifier(kind, "classifier.dense", "classifier.out_proj")
       for kind in ("roberta", "xlm-roberta", "camembert")},
}


class ExportError(UserError):
    """An export whose outputs, loaded back by its library, differ from the member's."""


def sentence_transformers_reason(model: MultitaskModel) -> str | None:
    """None when the member exports to sentence-transformers, else why not."""
    if model.cfg.pooling not in SENTENCE_TRANSFORMERS_POOLING:
        return (f"{model.cfg.pooling} pooling has no sentence-transformers module (it has "
                f"{', '.join(SENTENCE_TRANSFORMERS_POOLING)}); load it with bestfit")
    return None


def classifier_reason(model: MultitaskModel, task: str) -> str | None:
    """None when ``task``'s head exports exactly as a transformers sequence classifier, else
    why not (the module docstring gives the rule)."""
    cfg, spec = model.cfg, model.specs[task]
    if spec.pair and cfg.pair_encoding == "separate":
        scored = ("scored a·cos(u, v) + b of the sentence-transformers embeddings"
                  if task in cfg.cosine_heads else
                  f"its head reads [{', '.join(cfg.pair_features)}] of the two embeddings")
        return ("each sentence is encoded alone (a bi-encoder), while a sequence classifier "
                f"reads the pair as one sequence; {scored}")
    if task in cfg.cosine_heads:
        return "a cosine head scores two embeddings; a sequence classifier reads one sequence"
    if cfg.pooling != "cls":
        return (f"{cfg.pooling} pooling: transformers' sequence classifiers read the first "
                f"token's state (train with model.pooling=cls)")
    hidden = model.backbone.config.hidden_size
    if cfg.head.layers != 2 or (cfg.head.hidden or hidden) != hidden:
        return (f"a {cfg.head.layers}-layer head of width {cfg.head.hidden or hidden}: "
                f"transformers' classifiers are dense({hidden}→{hidden}) → activation → linear")
    model_type = model.backbone.config.model_type
    if (model_type, cfg.head.activation) not in EXACT_CLASSIFIERS:
        offered = sorted(a for t, a in EXACT_CLASSIFIERS if t == model_type)
        return (f"no transformers sequence classifier of a {model_type} encoder applies "
                f"{cfg.head.activation} in its head"
                + (f" (train with model.head.activation {' or '.join(offered)})" if offered
                   else ""))
    return None


def plan(model: MultitaskModel) -> dict[str, Any]:
    """What :func:`export_member` writes for ``model``: per format, the path or why not."""
    reason = sentence_transformers_reason(model)
    tasks = {}
    for task in model.tasks:
        why = classifier_reason(model, task)
        tasks[task] = {"path": f"{CLASSIFIERS_DIR}/{task}"} if why is None else {"reason": why}
    # A cosine head's prediction is a·cos(u, v) + b of the exported embeddings: its a and b.
    cosine = {task: {"scale": model.heads[task].scale.item(),
                     "shift": model.heads[task].shift.item()} for task in model.cfg.cosine_heads
              if task in model.heads}
    encoder = ({"path": ".", **({"cosine_heads": cosine} if cosine else {})} if reason is None
               else {"reason": reason})
    return {"sentence_transformers": encoder, "transformers": tasks}


def _labels(model: MultitaskModel, task: str) -> list[str]:
    spec = model.specs[task]
    return [task] if spec.kind == "regression" else spec.class_names()


def sequence_classifier(model: MultitaskModel, task: str) -> PreTrainedModel:
    """``task``'s head on the member's encoder as a transformers sequence classifier that
    computes it exactly (:func:`classifier_reason` must be None), in eval mode."""
    spec, base = model.specs[task], model.backbone.config
    kind = EXACT_CLASSIFIERS[base.model_type, model.cfg.head.activation]
    labels = _labels(model, task)
    settings = {k: v for k, v in base.to_dict().items()
                if k not in ("model_type", "architectures", "transformers_version", "dtype",
                             "torch_dtype", "id2label", "label2id", "problem_type", "num_labels",
                             "classifier_dropout")}
    if kind.model_type == "electra":
        settings.setdefault("embedding_size", base.hidden_size)
    config = CONFIG_MAPPING[kind.model_type](
        **settings, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={name: k for k, name in enumerate(labels)},
        problem_type=("regression" if spec.kind == "regression"
                      else "single_label_classification"),
        classifier_dropout=model.cfg.head.dropout)
    if spec.kind == "regression":
        # CrossEncoder applies a sigmoid to a single output unless the config says otherwise.
        config.sentence_transformers = {"activation_fn": "torch.nn.modules.linear.Identity"}
    with torch.random.fork_rng(devices=[]):  # the layers' draws are overwritten below
        classifier = AutoModelForSequenceClassification.from_config(
            config, dtype=torch.float32, trust_remote_code=False)
    head = [layer for layer in model.heads[task] if isinstance(layer, nn.Linear)]
    dense, output = head
    weight, bias = output.weight.detach(), output.bias.detach()
    if spec.kind == "binary":  # logits (0, z): softmax = (1 − σ(z), σ(z))
        weight = torch.cat([torch.zeros_like(weight), weight])
        bias = torch.cat([torch.zeros_like(bias), bias])
    prefix = f"{classifier.base_model_prefix}."
    state = {prefix + name: tensor for name, tensor in model.backbone.state_dict().items()}
    state |= {f"{kind.dense}.weight": dense.weight.detach(), f"{kind.dense}.bias":
              dense.bias.detach(), f"{kind.output}.weight": weight, f"{kind.output}.bias": bias}
    missing, unexpected = classifier.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ExportError(f"{task}: the member's weights do not fill {type(classifier).__name__}:"
                          f" missing {missing}, unexpected {unexpected}")
    return classifier.eval()


@torch.inference_mode()
def member_outputs(model: MultitaskModel, task: str, texts: list[list[str]]) -> torch.Tensor:
    """bestfit's raw head outputs (logits; a regression's unclipped value) for ``texts``, one
    list of a pair's sentences per example, encoded as the member encodes them."""
    tokenizer, cfg = model.tokenizer, model.cfg
    columns = list(zip(*texts, strict=True))
    if len(columns) == 2 and cfg.pair_encoding == "separate":
        sequences = [list(columns[0]), list(columns[1])]
        encoded = [tokenizer(s, truncation=True, max_length=cfg.max_length,
                             return_token_type_ids=True) for s in sequences]
    else:
        encoded = [tokenizer(*map(list, columns), truncation=True, max_length=cfg.max_length,
                             return_token_type_ids=True)]
    inputs = [pad(e["input_ids"], e["token_type_ids"], tokenizer.pad_token_id) for e in encoded]
    return model(task, inputs)


@torch.inference_mode()
def member_embeddings(model: MultitaskModel, sentences: list[str]) -> torch.Tensor:
    """The member's pooled sentence embeddings: what its heads read for one sentence."""
    tokenizer = model.tokenizer
    enc = tokenizer(sentences, truncation=True, max_length=model.cfg.max_length,
                    return_token_type_ids=True)
    batch = pad(enc["input_ids"], enc["token_type_ids"], tokenizer.pad_token_id)
    return model.embed(batch)


def _check(what: str, ours: torch.Tensor, theirs: torch.Tensor) -> None:
    theirs = torch.as_tensor(theirs, dtype=torch.float32).reshape(ours.shape)
    gap = (ours.float() - theirs).abs().max().item()
    if not gap <= EXACT_ATOL:
        raise ExportError(f"{what}: its outputs differ from the member's by {gap:.3g} "
                          f"(allowed {EXACT_ATOL:g}); nothing was exported")


def _probe_texts(model: MultitaskModel, task: str) -> list[list[str]]:
    if not model.specs[task].pair:
        return [[s] for s in PROBES]
    return [[a, b] for a, b in zip(PROBES, PROBES[1:] + PROBES[:1], strict=True)]


def write_sentence_transformers(model: MultitaskModel, directory: Path) -> None:
    """sentence-transformers' files for the member saved in ``directory`` (its encoder and
    tokenizer at the root), written by the library itself and checked by loading them."""
    from sentence_transformers import SentenceTransformer
    try:  # sentence-transformers ≥ 6
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:
        from sentence_transformers.models import Pooling, Transformer

    encoder = Transformer(str(directory), max_seq_length=model.cfg.max_length)
    module = SentenceTransformer(modules=[encoder, Pooling(
        model.backbone.config.hidden_size, pooling_mode=model.cfg.pooling)], device="cpu",
        trust_remote_code=False)
    with tempfile.TemporaryDirectory(dir=directory.parent) as scratch:
        module.save(scratch)
        for name in SENTENCE_TRANSFORMERS_FILES:
            shutil.move(Path(scratch) / name, directory / name)
        for pooling in Path(scratch).glob("*_Pooling"):
            shutil.move(pooling, directory / pooling.name)
    loaded = SentenceTransformer(str(directory), device="cpu", trust_remote_code=False)
    _check(f"{directory}: SentenceTransformer", member_embeddings(model, list(PROBES)),
           loaded.encode(list(PROBES), convert_to_tensor=True))


def write_classifier(model: MultitaskModel, task: str, directory: Path) -> str:
    """``task``'s sequence classifier and the tokenizer in ``directory``, checked by loading
    it with ``AutoModelForSequenceClassification``; returns its architecture's name."""
    classifier = sequence_classifier(model, task)
    classifier.save_pretrained(directory, safe_serialization=True)
    model.tokenizer.save_pretrained(directory)
    loaded = AutoModelForSequenceClassification.from_pretrained(
        directory, dtype=torch.float32, trust_remote_code=False).eval()
    texts = _probe_texts(model, task)
    columns = list(map(list, zip(*texts, strict=True)))
    enc = model.tokenizer(*columns, truncation=True, padding=True, return_tensors="pt")
    with torch.inference_mode():
        logits = loaded(**enc).logits
    ours = member_outputs(model, task, texts)
    if model.specs[task].kind == "binary":
        logits = logits[:, 1] - logits[:, 0]
    _check(f"{directory}: {type(loaded).__name__}", ours, logits)
    return type(classifier).__name__


def export_member(directory: str | Path) -> dict[str, Any]:
    """Write every export :func:`plan` allows into the saved member ``directory`` (in place:
    the caller writes it to a temporary path) and ``exports.json``; returns that record."""
    directory = Path(directory)
    model = MultitaskModel.from_pretrained(directory)
    # sentence-transformers truncates at the tokenizer's model_max_length; bestfit at max_length.
    model.tokenizer.model_max_length = model.cfg.max_length
    model.tokenizer.save_pretrained(directory)
    model.tokenizer = load_dir_tokenizer(directory)
    record = plan(model)
    if "path" in record["sentence_transformers"]:
        write_sentence_transformers(model, directory)
    for task, entry in record["transformers"].items():
        if "path" in entry:
            entry["architecture"] = write_classifier(model, task, directory / entry["path"])
    (directory / EXPORTS_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def read_exports(directory: str | Path) -> Mapping[str, Any] | None:
    """A saved member's ``exports.json``, or None for a member saved before exports."""
    path = Path(directory) / EXPORTS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bestfit-export",
        description="Add the sentence-transformers and transformers exports to a saved member's "
                    "model directory (models/<member>/seed_<seed>/model), replacing it whole.")
    parser.add_argument("model_dir", type=Path)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # The run's metrics.json, beside the model dir, gives the cards their scores.
    metrics_path = args.model_dir.parent / METRICS_FILE
    with atomic_path(args.model_dir) as tmp:
        MultitaskModel.from_pretrained(args.model_dir)  # a clear error before any copy
        shutil.copytree(args.model_dir, tmp)
        record = export_member(tmp)
        if metrics_path.is_file():
            write_cards(tmp, read_member_config(tmp), read_run(args.model_dir.parent), record)
    if not metrics_path.is_file():
        print(f"{metrics_path}: not found, so the model card was left as it was")
    for name, entry in [("sentence-transformers", record["sentence_transformers"]),
                        *((f"transformers {t}", e) for t, e in record["transformers"].items())]:
        print(f"{name}: " + (f"{args.model_dir / entry['path']}" if "path" in entry
                             else f"not exported: {entry['reason']}"))


def cli() -> None:
    run_stage("bestfit-export", main)
