"""bench/gpu_check.py --small end to end on the CPU: every part runs (MFU, SMART/PCGrad step
cost, fp16 steps, a kill -9 of the train stage and its resume, the default recipe's
projection) and its JSON holds the figures; the resumed run's outputs are the uninterrupted
run's, bitwise."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from conftest import PARAMS_YAML, ROOT

from pipeline.config import load_params

PEAK = 0.5  # TFLOP/s: a CPU has no known peak; the MFU is then achieved / this


@pytest.fixture(scope="module")
def check(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("gpu-check")
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--small",
                           "--threads", "1", "--peak-tflops", str(PEAK), "--out", str(out),
                           "--params", str(PARAMS_YAML)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads((out / "gpu_check.json").read_text()), done.stdout


def test_every_part_ran_and_printed(check):
    figures, stdout = check
    assert figures["failures"] == {}
    assert figures["device"] == "cpu" and figures["small"] is True
    for part in ("mfu", "step cost", "fp16", "resume", "projection"):
        assert any(line.startswith(part) for line in stdout.splitlines()), part


def test_mfu_and_step_cost(check):
    mfu, cost = check[0]["mfu"], check[0]["step_cost"]
    assert mfu["batch"] == 32 and mfu["steps"] >= 1
    assert mfu["samples_per_s"] == pytest.approx(32 / mfu["step_seconds"])
    assert mfu["tokens_per_s"] >= mfu["real_tokens_per_s"] > 0
    assert mfu["peak_tflops"] == PEAK and mfu["mfu"] == pytest.approx(mfu["tflops"] / PEAK)
    assert set(cost["ratio"]) == {"plain", "smart", "pcgrad"} and cost["ratio"]["plain"] == 1.0
    for mode, ratio in cost["ratio"].items():
        assert ratio == pytest.approx(cost["seconds"][mode] / cost["seconds"]["plain"])


def test_fp16_took_steps_with_a_loss_scale(check):
    fp16 = check[0]["fp16"]
    assert fp16["finite"] and all(math.isfinite(v) for v in fp16["losses"].values())
    assert 1 <= fp16["optimizer_steps"] <= fp16["steps"]
    # 2^16 to start, halved per overflow (that step skipped), not yet grown (2000 clean steps)
    assert fp16["scale"] == 2.0 ** (16 - (fp16["steps"] - fp16["optimizer_steps"]))
    assert fp16["moved_fraction"] > 0.5


def test_the_killed_run_resumed_to_the_uninterrupted_runs_outputs(check):
    resume = check[0]["resume"]
    assert resume["killed_at"]["epoch"] == 2 and resume["killed_at"]["steps_done"] >= 1
    step = resume["killed_at"]["steps_done"]
    assert f"resuming after epoch 1, step {step}" in resume["resumed"]
    assert resume["matched"] and all(resume["identical"].values())
    assert {"model.safetensors", "heads.safetensors", "metrics.json"} <= set(resume["identical"])
    assert resume["difference"] == {"predictions": 0.0, "metrics": 0.0}


def test_the_projection_counts_the_default_recipes_steps(check):
    figures = check[0]
    projection = figures["projection"]
    rows = projection["train_rows"]
    for name, member in load_params(PARAMS_YAML).models.items():
        cfg, got = member.train, projection["members"][name]
        full_pass = {t: math.ceil(rows[t] / cfg.batch_size) for t in member.tasks}
        if cfg.schedule == "custom":  # its epochs on a fraction of one task, then round robin
            phase = math.ceil(math.ceil(cfg.custom.fraction * rows[cfg.custom.task])
                              / cfg.batch_size)
            steps = cfg.custom.epochs * phase + (cfg.epochs - cfg.custom.epochs) * (
                cfg.batches_per_epoch or sum(full_pass.values()))
        else:
            steps = cfg.epochs * (cfg.batches_per_epoch or sum(full_pass.values()))
        assert got["steps"] == steps == sum(got["steps_by_task"].values()), name
        assert got["smart"] == (member.smart.lambda_ > 0)
        ratio = figures["step_cost"]["ratio"]["smart"] if got["smart"] else 1.0
        if cfg.batch_size == figures["mfu"]["batch"]:
            assert got["step_seconds"] == pytest.approx(figures["mfu"]["step_seconds"] * ratio)
        assert got["train_hours"] == pytest.approx(steps * got["step_seconds"] / 3600)
    assert projection["total_hours"] == pytest.approx(
        sum(m["hours"] for m in projection["members"].values()))
