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


def test_mfu_figures_by_hand(bench):
    # 10 samples of 400 tokens computed (200 real) in 2 s: length 40; 85M parameters, 12 × 768
    result = bench.Measurement("x", samples=10, tokens=200, padded=400, seconds=2.0,
                               peak_mb=0.0, threads=1)
    figures = bench.mfu_figures(result, (85_000_000, 12, 768), peak=100.0)
    per_token = 6 * 85e6 + 12 * 12 * 768 * 40
    assert figures["samples_per_s"] == 5.0 and figures["mean_padded_length"] == 40.0
    assert figures["tokens_per_s"] == 200.0 and figures["real_tokens_per_s"] == 100.0
    assert figures["tflops"] == pytest.approx(400 * per_token / 2 / 1e12)
    assert figures["real_tflops"] == pytest.approx(200 * per_token / 2 / 1e12)
    assert figures["mfu"] == pytest.approx(figures["tflops"] / 100.0)
    assert bench.mfu_figures(result, (85_000_000, 12, 768), peak=None)["mfu"] is None
