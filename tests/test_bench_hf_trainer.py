"""bench/bench_hf_trainer.py: HF's data path (Dataset, DataCollatorWithPadding, the round-robin
sampler) gives HF's Trainer the batches bestfit's own ``collate`` makes of the same indices, and
the wrapped model's loss is bestfit's ``task_step_loss`` on them."""

from __future__ import annotations

import importlib
from itertools import islice
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT, TINY_WORDS
from torch.utils.data import ConcatDataset, DataLoader, RandomSampler, SequentialSampler

from pipeline.batching import collate, tokenize_task
from pipeline.config import parse_params
from pipeline.model import MultitaskModel
from pipeline.objective import task_step_loss

TASKS = ["sst", "qqp", "sts"]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(ROOT / "bench"))
        return importlib.import_module("bench_hf_trainer")


def frames(n: int) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(0)

    def sentences() -> list[str]:
        return [" ".join(rng.choice(TINY_WORDS, size=rng.integers(1, 12))) for _ in range(n)]

    ids = [str(i) for i in range(n)]
    return {
        "sst": pd.DataFrame({"id": ids, "sentence": sentences(), "label": rng.integers(0, 5, n)}),
        "qqp": pd.DataFrame({"id": ids, "sentence1": sentences(), "sentence2": sentences(),
                             "label": rng.integers(0, 2, n)}),
        "sts": pd.DataFrame({"id": ids, "sentence1": sentences(), "sentence2": sentences(),
                             "label": rng.uniform(0, 5, n).astype(np.float32)}),
    }


def test_task_batches_are_full_and_start_a_new_pass_after_the_tail(bench):
    batches = bench.task_batches(SequentialSampler(range(10)), 4)
    assert list(islice(batches, 3)) == [[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 2, 3]]


def test_hf_batches_and_loss_are_bestfits(bench, tiny_bert, tokenizer):
    member = parse_params({"model": {"backbone": str(tiny_bert)},
                           "models": {"m": {"tasks": TASKS}}}).models["m"]
    parts = [tokenize_task(member.specs[task], frame, tokenizer, member.model.max_length,
                           member.model.pair_encoding)
             for task, frame in frames(13).items()]
    samplers = [RandomSampler(part, generator=torch.Generator().manual_seed(k))
                for k, part in enumerate(parts)]
    dataset = ConcatDataset([bench.TokenizedExamples(part) for part in parts])
    sampler = bench.RoundRobinSampler(samplers, [0, 13, 26], batch_size=4, steps=8)
    loader = DataLoader(dataset, batch_size=4, sampler=sampler,
                        collate_fn=bench.TaskBatchCollator(tokenizer))
    torch.manual_seed(0)
    model = MultitaskModel(member.model, [member.specs[t] for t in member.tasks]).eval()
    wrapped = bench.TaskLossModel(model, member)

    batches = list(loader)
    assert [batch["task"] for batch in batches] == [TASKS[step % 3] for step in range(8)]
    for batch, (part, indices) in zip(batches, sampler.batches, strict=True):
        expected = collate(parts[part], np.array(indices), tokenizer.pad_token_id)
        for key, value in expected.inputs[0].items():
            assert torch.equal(batch[key], value), key
        assert torch.equal(batch["labels"], expected.labels)
        loss, _ = task_step_loss(model, expected, member)
        assert torch.equal(wrapped(**batch)["loss"], loss)
