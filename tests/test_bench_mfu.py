"""bench/bench_mfu.py's arithmetic: training FLOPs per token 6·N + 12·L·H·S, the encoder's
non-embedding parameters, and the peak by device name."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest
from conftest import ROOT


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(ROOT / "bench"))
        return importlib.import_module("bench_mfu")


def test_training_flops_by_hand(bench):
    # 10 tokens, 85M parameters, 12 layers of 768 at length 40:
    # 10·(6·85e6 + 12·12·768·40) = 10·(510e6 + 4,423,680)
    assert bench.training_flops(10, 40.0, 85_000_000, 12, 768) == 10 * (510e6 + 4_423_680)


def test_the_encoder_shape_excludes_embeddings_and_pooler(bench, tiny_bert):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_bert)
    layers = sum(p.numel() for p in model.encoder.parameters())
    assert bench.encoder_shape(str(tiny_bert)) == (layers, 2, 32)


def test_device_peaks_by_name(bench):
    assert bench.device_peak("NVIDIA H100 80GB HBM3", "bf16") == 989.0
    assert bench.device_peak("NVIDIA H100 PCIe", "bf16") == 756.0
    assert bench.device_peak("Tesla T4", "fp16") == 65.0
    assert bench.device_peak("Tesla T4", "bf16") is None  # no fast bf16: no peak to claim
    assert bench.device_peak("cpu", "fp32") is None
