"""Tokenize once, batch by length, pad per batch.

Each dataset is tokenized a single time into unpadded id lists. Batches are drawn from
length-sorted windows of a shuffled order (windows of ``WINDOW_BATCHES`` batches, the batch
order then reshuffled), so a batch holds sequences of similar length and padding to the batch's
own longest sequence wastes little compute — unlike padding everything to ``max_length``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedTokenizerBase

from pipeline.model import Encoding
from pipeline.tasks import TaskSpec, task_spec

if TYPE_CHECKING:
    from pipeline.config import MemberConfig

WINDOW_BATCHES = 50


@dataclass(frozen=True)
class TokenizedTask:
    """One task's split, tokenized: ``sequences[k][i]`` holds the ids of sequence k of example i
    (k = 0 only, or 0 and 1 for separately encoded pairs); ``singles`` the two sentences of a
    concatenated pair tokenized alone (for the contrastive loss), when asked for."""

    task: str
    ids: list[str]
    sequences: list[list[list[int]]]
    token_types: list[list[list[int]]]
    labels: np.ndarray | None
    singles: list[list[list[int]]] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self) -> np.ndarray:
        return np.array([sum(len(seq[i]) for seq in self.sequences) for i in range(len(self))])

    def padded_lengths(self) -> np.ndarray:
        """Each example's length as padding sees it, which length grouping sorts by: its
        sequence's, or a separately encoded pair's longer sentence (each side of a batch is
        padded to its own longest; sorting by the sum would waste ~1/3 of the tokens)."""
        return np.array([max(len(seq[i]) for seq in self.sequences) for i in range(len(self))])

    def rows(self, start: int, stop: int) -> TokenizedTask:
        """Examples ``start`` to ``stop`` (a data-parallel rank's part of an evaluation)."""
        return self.take(np.arange(start, stop))

    def take(self, index: np.ndarray) -> TokenizedTask:
        """The examples at ``index``, in that order."""
        def pick(items: list) -> list:
            return [items[i] for i in index]

        return TokenizedTask(
            self.task, pick(self.ids), [pick(seq) for seq in self.sequences],
            [pick(types) for types in self.token_types],
            None if self.labels is None else self.labels[index],
            None if self.singles is None else [pick(seq) for seq in self.singles])


def tokenize_task(task: TaskSpec | str, frame: pd.DataFrame, tokenizer: PreTrainedTokenizerBase,
                  max_length: int, pair_encoding: str, with_singles: bool = False
                  ) -> TokenizedTask:
    """Tokenize a prepared table (``sentence`` or ``sentence1``/``sentence2`` columns)."""
    spec = task_spec(task)
    labels = None
    if "label" in frame and frame["label"].notna().all():
        labels = frame["label"].to_numpy(
            dtype=np.float32 if spec.kind == "regression" else np.int64)

    def encode(*texts: list[str]) -> tuple[list[list[int]], list[list[int]]]:
        if not texts[0]:
            return [], []
        enc = tokenizer(*texts, truncation=True, max_length=max_length,
                        return_token_type_ids=True, return_attention_mask=False)
        return enc["input_ids"], enc["token_type_ids"]

    if not spec.pair:
        ids, types = encode(frame["sentence"].tolist())
        sequences, token_types = [ids], [types]
    else:
        first, second = frame["sentence1"].tolist(), frame["sentence2"].tolist()
        if pair_encoding == "concat":
            ids, types = encode(first, second)
            sequences, token_types = [ids], [types]
        else:
            (ids1, types1), (ids2, types2) = encode(first), encode(second)
            sequences, token_types = [ids1, ids2], [types1, types2]
    singles = None
    if with_singles and spec.pair:
        singles = (sequences if pair_encoding == "separate"
                   else [encode(first)[0], encode(second)[0]])
    return TokenizedTask(spec.name, frame["id"].astype(str).tolist(), sequences, token_types,
                         labels, singles)


def pad(seqs: Sequence[list[int]], types: Sequence[list[int]] | None, pad_id: int) -> Encoding:
    """Pad a batch of id lists to its own longest sequence; a batch whose sequences all have
    that length gets no attention mask (``model.attention_mask``), so the encoder runs
    unmasked without checking the mask on the device."""
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    token_type = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        attention[row, : len(seq)] = 1
        if types is not None:
            token_type[row, : len(seq)] = torch.tensor(types[row])
    if all(len(seq) == width for seq in seqs):
        return {"input_ids": input_ids, "token_type_ids": token_type}
    return {"input_ids": input_ids, "attention_mask": attention, "token_type_ids": token_type}


@dataclass
class Batch:
    task: str
    index: np.ndarray
    inputs: list[Encoding]
    labels: torch.Tensor | None
    singles: list[Encoding] | None = None

    def to(self, device: torch.device) -> Batch:
        move = lambda enc: {k: v.to(device, non_blocking=True) for k, v in enc.items()}  # noqa: E731
        return Batch(
            self.task, self.index, [move(e) for e in self.inputs],
            None if self.labels is None else self.labels.to(device, non_blocking=True),
            None if self.singles is None else [move(e) for e in self.singles],
        )


def collate(data: TokenizedTask, index: np.ndarray, pad_id: int) -> Batch:
    inputs = [
        pad([seqs[i] for i in index], [types[i] for i in index], pad_id)
        for seqs, types in zip(data.sequences, data.token_types, strict=True)
    ]
    singles = None
    if data.singles is not None:
        singles = [pad([seqs[i] for i in index], None, pad_id) for seqs in data.singles]
    labels = None if data.labels is None else torch.from_numpy(data.labels[index])
    return Batch(data.task, index, inputs, labels, singles)


def batch_indices(lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None,
                  group_by_length: bool) -> list[np.ndarray]:
    """Split ``range(len(lengths))`` into batches.

    With an rng: a shuffled order, length-sorted within windows when ``group_by_length``, batch
    order reshuffled. Without: sorted by length (evaluation: order does not matter, speed does).
    """
    n = len(lengths)
    if rng is None:
        order = np.argsort(lengths, kind="stable")
        return [order[i: i + batch_size] for i in range(0, n, batch_size)]
    order = rng.permutation(n)
    if group_by_length:
        window = batch_size * WINDOW_BATCHES
        order = np.concatenate([
            chunk[np.argsort(lengths[chunk], kind="stable")]
            for chunk in np.split(order, range(window, n, window))
        ]) if n else order
    batches = [order[i: i + batch_size] for i in range(0, n, batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def epoch_batches(data: TokenizedTask, subset: np.ndarray, batch_size: int, steps: int,
                  seed: Sequence[int], group_by_length: bool) -> Iterator[np.ndarray]:
    """``steps`` batches of example indices drawn from ``subset``, pass after pass, each pass
    reshuffled from ``seed`` + its pass number (deterministic, so an epoch can be replayed)."""
    if steps > 0 and len(subset) == 0:
        raise ValueError(f"{data.task}: {steps} batches asked of an empty training subset")
    lengths = data.padded_lengths()[subset]
    produced, passes = 0, 0
    while produced < steps:
        rng = np.random.default_rng([*seed, passes])
        for local in batch_indices(lengths, batch_size, rng, group_by_length):
            if produced == steps:
                return
            yield subset[local]
            produced += 1
        passes += 1


@dataclass
class TaskData:
    """A member's tokenized data, per task and split (``train``, ``dev``, ``test``)."""

    splits: dict[str, dict[str, TokenizedTask]]

    def split(self, name: str) -> dict[str, TokenizedTask]:
        return {task: splits[name] for task, splits in self.splits.items() if name in splits}


def tokenize_member_data(frames: dict[str, dict[str, pd.DataFrame]], member: MemberConfig,
                         tokenizer) -> TaskData:
    """Every split of every task of ``member`` tokenized once; the sentences of a pair alone
    too (training split) when the contrastive loss needs them."""
    with_singles = member.loss.contrastive_weight > 0
    return TaskData({
        task: {
            split: tokenize_task(member.specs[task], frame, tokenizer, member.model.max_length,
                                 member.model.pair_encoding, with_singles and split == "train")
            for split, frame in splits.items()
        }
        for task, splits in frames.items()
    })
