"""Few-shot relabeling of mined reviews by an LLM: scoring backends, a resumable cache, the table.

BEST-FiT relabels 5,000 of the reviews kept by the centroid filter with base Llama-3-8B and keeps
every label (here a seeded sample of ``max_reviews``, and an optional ``min_confidence`` filter).
The answer is not generated but *scored*: for review r and the five label continuations
a_0 … a_4 (one per SST label, :mod:`pipeline.augment.llm_prompt`),

    log p(a_j | x) = Σ_t log softmax(f(x ⊕ a_j[:t]))[a_j[t]],     x = prefix ⊕ r ⊕ suffix,
    p_j = softmax_j(log p(a_j | x)),

which is the model's distribution over the five labels given that it answers with one of them
(exact, since no label's tokens are a prefix of another's). The label is argmax_j p_j and its
confidence max_j p_j; whatever a review says, the answer is one of the five.

Both backends return the (n, 5) matrix of log p(a_j | x): ``transformers`` (any causal LM, CPU or
GPU, the few-shot prefix's KV cache computed once) and ``vllm`` (offline batch inference with
automatic prefix caching, CUDA only).
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import torch

from pipeline.augment.llm_prompt import LABEL_NAMES, EncodedPrompt, text_hash
from pipeline.config import LlmConfig
from pipeline.data import AUGMENTED_SCHEMA
from pipeline.device import resolve_device
from pipeline.errors import UserError, one_line

NUM_LABELS = len(LABEL_NAMES)
PROB_COLUMNS = [f"p{j}" for j in range(NUM_LABELS)]
# The `llm` augmentation table: the shared augmented columns (score: the label's probability),
# then its own.
COLUMNS = {
    **AUGMENTED_SCHEMA,
    "star_label": "Int8",
    **{c: "float32" for c in PROB_COLUMNS},
}
REVIEW_COLUMNS = ("id", "sentence", "star_label")


class LabelError(UserError):
    """An input table or the label cache is not what is expected; the message names the place."""


class Scorer(Protocol):
    """Scores the five answers for quoted reviews given as token ids (see module docstring)."""

    name: str

    def score(self, reviews: Sequence[Sequence[int]]) -> np.ndarray:
        """(len(reviews), 5) float64 log-likelihoods log p(a_j | prefix ⊕ review ⊕ suffix)."""
        ...


# ---------------------------------------------------------------------------------------------
# transformers backend


def load_causal_lm(name: str, device: str = "auto"):
    """An ``AutoModelForCausalLM`` in eval mode: bf16 on CUDA, fp32 on CPU."""
    from transformers import AutoModelForCausalLM

    dev = resolve_device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    try:  # never the model's own code: it would run, or ask on stdin whether to
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise LabelError(
            f"augment.llm.model: cannot load {name!r} ({one_line(exc)}); without "
            "hub access give a local directory holding the model"
        ) from exc
    return model.to(dev).eval()


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise LabelError(
            f"augment.llm.model: cannot load the tokenizer of {name!r} "
            f"({one_line(exc)}); without hub access give a local directory "
            "holding the model"
        ) from exc


class TransformersScorer:
    """Answer log-likelihoods under a ``transformers`` causal LM, ``batch_size`` reviews at once.

    The prefix (instruction and shots, shared by every review) is run once; its KV cache is
    copied and repeated for each batch (a ``DynamicCache`` grows in place, so the original is
    never handed to the model). Pass 1 runs ``review ⊕ suffix`` for the batch on top of it,
    *left*-padded so that every row ends at the same cache index: the last position's logits give
    each answer's first token. Pass 2 repeats each row's cache once per label and runs the
    answers' remaining tokens (right-padded). Padding sits between the prefix and the review, so
    the attention mask has holes there and position ids are given explicitly: a row's tokens get
    the positions they would have without padding.

    ``reuse_prefix=False`` runs the prefix again inside every row instead (for benchmarks).
    """

    name = "transformers"

    def __init__(self, model, prompt: EncodedPrompt, batch_size: int = 16,
                 reuse_prefix: bool = True) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        self.model = model.eval()
        self.prompt = prompt
        self.batch_size = batch_size
        self.reuse_prefix = reuse_prefix
        self.device = next(model.parameters()).device
        # transformers 5 renamed `past_key_values` to `cache`.
        params = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        answers = [list(a) for a in prompt.answer_ids]
        width = max(len(a) for a in answers) - 1
        self._first = torch.tensor([a[0] for a in answers], device=self.device)
        # Pass 2 feeds a[:-1] (right-padded) and scores a[1:].
        self._rest_in = self._pad([a[:-1] for a in answers], width)
        self._rest_target = self._pad([a[1:] for a in answers], width)
        self._rest_mask = self._pad([[1] * (len(a) - 1) for a in answers], width)
        self._prefix_cache = self._run_prefix() if reuse_prefix else None

    def _pad(self, rows: list[list[int]], width: int) -> torch.Tensor:
        return torch.tensor([r + [0] * (width - len(r)) for r in rows], device=self.device)

    def _new_cache(self):
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def _forward(self, ids, mask, positions, cache, logits_to_keep: int = 0) -> torch.Tensor:
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
            logits_to_keep=logits_to_keep, **{self._cache_kwarg: cache},
        )
        return out.logits

    @torch.inference_mode()
    def _run_prefix(self):
        cache = self._new_cache()
        ids = torch.tensor([self.prompt.prefix_ids], device=self.device)
        positions = torch.arange(ids.shape[1], device=self.device)[None]
        self._forward(ids, torch.ones_like(ids), positions, cache, logits_to_keep=1)
        return cache

    def score(self, reviews: Sequence[Sequence[int]]) -> np.ndarray:
        parts = [
            self._score_batch(reviews[start : start + self.batch_size])
            for start in range(0, len(reviews), self.batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, NUM_LABELS))

    @torch.inference_mode()
    def _score_batch(self, reviews: Sequence[Sequence[int]]) -> np.ndarray:
        suffix = list(self.prompt.suffix_ids)
        if self.reuse_prefix:
            offset = len(self.prompt.prefix_ids)
            bodies = [[*r, *suffix] for r in reviews]
            cache = copy.deepcopy(self._prefix_cache)
            cache.batch_repeat_interleave(len(bodies))
        else:
            offset = 0
            bodies = [[*self.prompt.prefix_ids, *r, *suffix] for r in reviews]
            cache = self._new_cache()
        n, dev = len(bodies), self.device
        lengths = torch.tensor([len(b) for b in bodies], device=dev)
        width = int(lengths.max())
        ids = torch.tensor([[0] * (width - len(b)) + b for b in bodies], device=dev)
        body_mask = torch.arange(width, device=dev)[None] >= (width - lengths)[:, None]
        mask = torch.cat([torch.ones(n, offset, dtype=torch.long, device=dev),
                          body_mask.long()], dim=1)
        positions = offset + (torch.arange(width, device=dev)[None]
                              - (width - lengths)[:, None]).clamp(min=0)
        last = self._forward(ids, mask, positions, cache, logits_to_keep=1)[:, -1]
        logp = last.float().log_softmax(-1)[:, self._first]  # (n, 5): each answer's first token
        if self._rest_in.shape[1] > 0:
            cache.batch_repeat_interleave(NUM_LABELS)  # row order: review-major, label-minor
            rest_in = self._rest_in.repeat(n, 1)
            rest_mask = self._rest_mask.repeat(n, 1)
            mask2 = torch.cat([mask.repeat_interleave(NUM_LABELS, 0), rest_mask], dim=1)
            start = (offset + lengths).repeat_interleave(NUM_LABELS)[:, None]
            positions2 = start + torch.arange(rest_in.shape[1], device=dev)[None]
            logits = self._forward(rest_in, mask2, positions2, cache).float().log_softmax(-1)
            token_logp = logits.gather(-1, self._rest_target.repeat(n, 1)[..., None])[..., 0]
            logp = logp + (token_logp * rest_mask).sum(-1).view(n, NUM_LABELS)
        return logp.double().cpu().numpy()


# ---------------------------------------------------------------------------------------------
# vLLM backend


def _answer_edges(prompt: EncodedPrompt) -> tuple[list[tuple[tuple[int, ...], int]], np.ndarray]:
    """The answers' token trie as edges (path so far, next token), and the (edges, 5) 0/1 matrix
    saying which edges each answer walks: log p(a_j) = Σ_e on a_j log p(e)."""
    edges: list[tuple[tuple[int, ...], int]] = []
    for answer in prompt.answer_ids:
        for t in range(len(answer)):
            edge = (tuple(answer[:t]), answer[t])
            if edge not in edges:
                edges.append(edge)
    walks = np.zeros((len(edges), NUM_LABELS))
    for j, answer in enumerate(prompt.answer_ids):
        for t in range(len(answer)):
            walks[edges.index((tuple(answer[:t]), answer[t])), j] = 1.0
    return edges, walks


class VllmScorer:
    """Answer log-likelihoods with vLLM's offline ``LLM`` (CUDA only; ``pip install '.[llm]'``).

    Each trie edge (path, token) of the answers is one request ``x ⊕ path`` with ``max_tokens=1``,
    the token forced by ``allowed_token_ids=[token]`` and ``logprobs=0``: vLLM returns the sampled
    token's log-probability computed from the raw logits (before the allowed-token mask and
    temperature), i.e. log p(token | x ⊕ path). Automatic prefix caching makes these requests
    cheap: the few-shot prefix is run once at start-up, each review's ``x`` once (the first root
    edge, sent before the others), and the other edges then recompute only the last partial KV
    block and the path. (``prompt_logprobs`` would give the same numbers but bypasses the prefix
    cache.)
    """

    name = "vllm"

    def __init__(self, model: str, prompt: EncodedPrompt, tensor_parallel_size: int = 1) -> None:
        require_vllm()
        from vllm import LLM

        self.prompt = prompt
        self.edges, self.walks = _answer_edges(prompt)
        self.llm = LLM(model=model, tensor_parallel_size=tensor_parallel_size,
                       enable_prefix_caching=True, trust_remote_code=False)
        # Runs (and caches) the shared few-shot prefix. Two different forced tokens cannot both
        # have probability 1 under the raw distribution: if they do, this vLLM reports logprobs
        # after the allowed-token mask and every label would look certain.
        first = sorted({a[0] for a in prompt.answer_ids} | {0, 1})[:2]
        probe = self._logprobs([list(prompt.prefix_ids)] * 2, first)
        if (probe > -1e-6).all():
            raise LabelError(
                "vLLM returned log-probabilities after the allowed-token mask (0 for forced "
                "tokens); use a vLLM with the V1 engine and logprobs_mode 'raw_logprobs' (the "
                "default), or set augment.llm.backend: transformers"
            )

    def _logprobs(self, prompts: list[list[int]], tokens: list[int]) -> np.ndarray:
        from vllm import SamplingParams

        params = [
            SamplingParams(max_tokens=1, temperature=0.0, logprobs=0, allowed_token_ids=[t],
                           detokenize=False)
            for t in tokens
        ]
        outputs = self.llm.generate(
            [{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False
        )
        return np.array([o.outputs[0].logprobs[0][t].logprob
                         for o, t in zip(outputs, tokens, strict=True)])

    def score(self, reviews: Sequence[Sequence[int]]) -> np.ndarray:
        bodies = [[*self.prompt.prefix_ids, *r, *self.prompt.suffix_ids] for r in reviews]
        edge_logp = np.zeros((len(bodies), len(self.edges)))
        (root_path, root_token), rest = self.edges[0], self.edges[1:]
        edge_logp[:, 0] = self._logprobs([b + list(root_path) for b in bodies],
                                         [root_token] * len(bodies))
        if rest:
            flat = self._logprobs([b + list(path) for b in bodies for path, _ in rest],
                                  [token for _ in bodies for _, token in rest])
            edge_logp[:, 1:] = flat.reshape(len(bodies), len(rest))
        return edge_logp @ self.walks


def require_vllm() -> None:
    """Fail with the way out when vLLM or a CUDA GPU is missing."""
    if importlib.util.find_spec("vllm") is None:
        raise LabelError(
            "augment.llm.backend is 'vllm' but vLLM is not installed: on a CUDA machine run "
            "`pip install '.[llm]'`, or set augment.llm.backend: transformers (CPU or GPU, "
            "slower), or augment.llm.enabled: false to skip relabeling"
        )
    if not torch.cuda.is_available():
        raise LabelError(
            "augment.llm.backend is 'vllm' but no CUDA GPU is visible (vLLM runs on CUDA only): "
            "set augment.llm.backend: transformers, or augment.llm.enabled: false to skip "
            "relabeling"
        )


def make_scorer(cfg: LlmConfig, prompt: EncodedPrompt) -> Scorer:
    """The backend ``augment.llm.backend`` names, loaded with ``augment.llm.model``."""
    if cfg.backend == "vllm":
        return VllmScorer(cfg.model, prompt, tensor_parallel_size=cfg.tensor_parallel_size)
    model = load_causal_lm(cfg.model, cfg.device)
    return TransformersScorer(model, prompt, batch_size=cfg.batch_size)


# ---------------------------------------------------------------------------------------------
# the resumable cache


@dataclass(frozen=True)
class CachedLabel:
    logp: tuple[float, ...]  # log p(a_j | x), j = 0 … 4
    truncated: bool


class LabelCache:
    """Append-only JSON lines, one per labeled review text, keyed by (model, prompt, text) hashes.

    A line is ``{"model", "prompt", "text", "logp", "truncated"}``; ``model`` is
    ``<backend>:<model name>``, ``prompt`` the prompt digest, ``text`` the review text's sha256.
    Lines are appended and fsynced batch by batch, so a killed run loses at most the batch in
    flight; a partially written last line is dropped on the next load.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self, model: str, prompt: str) -> dict[str, CachedLabel]:
        if not self.path.exists():
            return {}
        data = self.path.read_bytes()
        complete = data.rfind(b"\n") + 1
        if complete < len(data):
            # A run killed mid-write; cut the fragment so the next append starts a fresh line.
            with open(self.path, "r+b") as f:
                f.truncate(complete)
        found = {}
        for number, line in enumerate(data[:complete].decode("utf-8").splitlines(), start=1):
            try:
                rec = json.loads(line)
                key = (rec["model"], rec["prompt"], rec["text"])
                logp = tuple(float(v) for v in rec["logp"])
                truncated = bool(rec["truncated"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise LabelError(
                    f"{self.path}:{number}: expected a JSON object with model, prompt, text, "
                    f"logp (5 numbers) and truncated ({exc})"
                ) from exc
            if len(logp) != NUM_LABELS:
                raise LabelError(f"{self.path}:{number}: logp: expected {NUM_LABELS} numbers")
            if key[:2] == (model, prompt):
                found[key[2]] = CachedLabel(logp, truncated)
        return found

    def append(self, model: str, prompt: str, labels: dict[str, CachedLabel]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = "".join(
            json.dumps({"model": model, "prompt": prompt, "text": h, "logp": list(c.logp),
                        "truncated": c.truncated}) + "\n"
            for h, c in labels.items()
        )
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())


# ---------------------------------------------------------------------------------------------
# the stage's work


def check_reviews(reviews: pd.DataFrame, where: str) -> None:
    missing = [c for c in REVIEW_COLUMNS if c not in reviews.columns]
    if missing:
        raise LabelError(f"{where}: missing column(s) {missing}; expected {list(REVIEW_COLUMNS)}")
    null = np.flatnonzero(reviews["id"].isna().to_numpy())
    if len(null):
        raise LabelError(f"{where}: row {int(null[0])}: id is null; expected a review id")


def empty_table() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in COLUMNS.items()})


def probabilities(logp: np.ndarray) -> np.ndarray:
    """softmax over the five answers, row-wise."""
    z = logp - logp.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def sample_mask(ids: pd.Series, eligible: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """Row mask of ``n`` of the ``eligible`` rows drawn uniformly without replacement by ``seed``
    (all of them when ``n`` is None or at least their number). Rows are ordered by id first, so
    the draw depends on the table's content, not its order."""
    rows = np.flatnonzero(eligible)
    if n is None or n >= len(rows):
        return np.asarray(eligible, dtype=bool).copy()
    rows = rows[np.argsort(ids.to_numpy(dtype=str)[rows], kind="stable")]
    mask = np.zeros(len(ids), dtype=bool)
    mask[rows[np.random.default_rng(seed).permutation(len(rows))[:n]]] = True
    return mask


@dataclass(frozen=True)
class LabelResult:
    labeled: pd.DataFrame  # the sampled non-empty reviews, in the ``llm`` table's schema
    kept: pd.DataFrame  # the rows whose confidence is at least ``min_confidence`` (None: all)
    report: dict


def label_reviews(
    reviews: pd.DataFrame,
    *,
    tokenizer,
    prompt: EncodedPrompt,
    scorer: Scorer,
    cache: LabelCache,
    model: str,
    batch_size: int,
    max_reviews: int | None,
    seed: int,
    min_confidence: float | None,
) -> LabelResult:
    """Label ``max_reviews`` non-empty reviews drawn by ``seed`` (all when None; each distinct
    text once, cached ones not at all); keep those whose confidence is at least
    ``min_confidence`` (all when None); count what happened.

    Reviews are scored in order of token length so a batch pads little; each batch is appended to
    the cache before the next starts.
    """
    check_reviews(reviews, "reviews")
    if max_reviews is not None and max_reviews < 1:
        raise LabelError(f"augment.llm.max_reviews: expected null or >= 1, got {max_reviews}")
    key = f"{scorer.name}:{model}"
    texts = reviews["sentence"].astype("str").fillna("")
    empty = (texts.str.strip() == "").to_numpy()
    chosen = sample_mask(reviews["id"], ~empty, max_reviews, seed)
    hashes = [text_hash(t) if c else None for t, c in zip(texts, chosen, strict=True)]
    known = cache.load(key, prompt.digest)
    cached_hits = sum(h is not None and h in known for h in hashes)
    todo: dict[str, str] = {}
    for h, t in zip(hashes, texts, strict=True):
        if h is not None and h not in known:
            todo.setdefault(h, t)
    encoded = {h: prompt.review_ids(tokenizer, t) for h, t in todo.items()}
    order = sorted(encoded, key=lambda h: len(encoded[h][0]))
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        logp = scorer.score([encoded[h][0] for h in batch])
        bad = np.flatnonzero(~np.isfinite(logp.max(axis=1)))
        if len(bad):
            raise LabelError(f"{scorer.name}: no finite answer score for review text "
                             f"{todo[batch[bad[0]]]!r}")
        fresh = {h: CachedLabel(tuple(map(float, lp)), encoded[h][1])
                 for h, lp in zip(batch, logp, strict=True)}
        cache.append(key, prompt.digest, fresh)
        known.update(fresh)

    rows = reviews.loc[chosen]
    cached = [known[h] for h in hashes if h is not None]
    probs = probabilities(np.array([c.logp for c in cached]).reshape(-1, NUM_LABELS))
    labeled = pd.DataFrame({
        "id": ("llm-" + rows["id"].astype("str")).to_numpy(),
        "sentence": rows["sentence"].to_numpy(),
        "label": probs.argmax(axis=1),
        "source": "llm",
        "source_id": rows["id"].to_numpy(),
        "method": f"llm:{scorer.name}",
        "score": probs.max(axis=1, initial=0.0),
        "star_label": rows["star_label"].to_numpy(),
        **{c: probs[:, j] for j, c in enumerate(PROB_COLUMNS)},
    }).astype(COLUMNS)
    kept = (labeled if min_confidence is None
            else labeled[labeled["score"] >= min_confidence].reset_index(drop=True))
    report = {
        "backend": scorer.name,
        "model": model,
        "prompt_digest": prompt.digest,
        "max_reviews": max_reviews,
        "min_confidence": min_confidence,
        "counts": {
            "total": len(reviews),
            "empty_skipped": int(empty.sum()),
            "not_sampled": int((~empty & ~chosen).sum()),
            "truncated": sum(c.truncated for c in cached),
            "labeled": len(labeled),
            "kept": len(kept),
            "cached_hits": cached_hits,
            "scored": len(todo),
        },
        "kept_per_label": {name: int((kept["label"] == j).sum())
                           for j, name in enumerate(LABEL_NAMES)},
        "agreement_with_stars": {"labeled": agreement(labeled), "kept": agreement(kept)},
    }
    return LabelResult(labeled, kept, report)


def agreement(table: pd.DataFrame) -> dict:
    """Accuracy of the LLM label against the star-derived label, and the confusion matrix
    (rows: star label, columns: LLM label), over rows that have a star label."""
    rows = table.dropna(subset=["star_label"])
    stars = rows["star_label"].astype(int).to_numpy()
    llm = rows["label"].astype(int).to_numpy()
    confusion = np.zeros((NUM_LABELS, NUM_LABELS), dtype=int)
    np.add.at(confusion, (stars, llm), 1)
    return {
        "n": len(rows),
        "accuracy": float((stars == llm).mean()) if len(rows) else None,
        "confusion": confusion.tolist(),
    }


def confusion_rows(table: pd.DataFrame) -> pd.DataFrame:
    """One row per review with a star label: ``actual`` (stars) and ``predicted`` (LLM), the
    shape DVC's confusion plot template reads."""
    rows = table.dropna(subset=["star_label"])
    return pd.DataFrame({"actual": rows["star_label"].astype(int).to_numpy(),
                         "predicted": rows["label"].astype(int).to_numpy()})
