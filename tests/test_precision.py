"""train.precision: auto — bf16 where the device computes it natively, fp32 elsewhere."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_train import member_for, synthetic_frames

from pipeline import device as device_module
from pipeline.batching import tokenize_member_data
from pipeline.device import cpu_flags, native_bf16, resolve_precision
from pipeline.model import load_tokenizer
from pipeline.model_card import precision_text
from pipeline.train import Trainer

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu vme avx2 avx512f avx512_bf16 avx512_vnni
processor\t: 1
flags\t\t: fpu vme avx2 avx512f avx512_bf16 avx512_vnni
"""


def test_cpu_flags_read_the_flags_lines(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    assert cpu_flags(path) == {"fpu", "vme", "avx2", "avx512f", "avx512_bf16", "avx512_vnni"}
    assert cpu_flags(tmp_path / "absent") == set()  # macOS, Windows: no such file


@pytest.mark.parametrize(("flags", "expected"), [
    ({"avx2", "avx512f", "avx512_bf16"}, "bf16"),
    ({"avx2", "amx_tile", "amx_bf16"}, "bf16"),
    ({"avx2", "avx512f", "avx512_vnni"}, "fp32"),  # AVX-512 without its bf16 instructions
    (set(), "fp32"),
])
def test_auto_on_the_cpu_follows_its_bf16_instructions(flags, expected, monkeypatch):
    monkeypatch.setattr(device_module, "cpu_flags", lambda: flags)
    assert native_bf16(torch.device("cpu"), flags) == (expected == "bf16")
    assert resolve_precision("auto", torch.device("cpu")) == expected


@pytest.mark.parametrize("supported", [True, False])
def test_auto_on_a_gpu_asks_cuda(supported, monkeypatch):
    asked = []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: asked.append(including_emulation)
                        or supported)
    assert resolve_precision("auto", torch.device("cuda", 0)) == ("bf16" if supported else "fp32")
    assert asked == [False]  # emulated bf16 (pre-Ampere) is no speed-up


def test_a_named_precision_is_kept_and_other_devices_run_fp32(monkeypatch):
    monkeypatch.setattr(device_module, "cpu_flags", lambda: {"avx512_bf16"})
    for precision in ("bf16", "fp16", "fp32"):
        assert resolve_precision(precision, torch.device("cpu")) == precision
    assert resolve_precision("auto", torch.device("mps")) == "fp32"


def test_the_card_says_what_auto_became():
    assert precision_text("auto", "bf16") == "auto: bf16 autocast (heads in fp32)"
    assert precision_text("auto", None).startswith("auto (bf16 where")
    assert precision_text("fp32", "fp32") == "fp32"


def test_the_trainer_runs_what_auto_resolves_to(tiny_bert, tmp_path, monkeypatch):
    member = member_for(tiny_bert, epochs=1)
    member = dataclasses.replace(member, train=dataclasses.replace(member.train,
                                                                   precision="auto"))
    tokenizer = load_tokenizer(member.model.backbone)
    data = tokenize_member_data(synthetic_frames(8, 0), member, tokenizer)
    for flags, expected in (({"avx512_bf16"}, "bf16"), (set(), "fp32")):
        monkeypatch.setattr(device_module, "cpu_flags", lambda flags=flags: flags)
        trainer = Trainer(member, data, tokenizer, tmp_path / expected)
        assert trainer.precision == expected
        assert not trainer.scaler.is_enabled()
