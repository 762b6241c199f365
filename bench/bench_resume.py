"""A real `kill -9` mid-epoch: the train stage on the CS224N data, killed at a step that is not
an epoch boundary and run again, against the same run left alone. Prints whether the model files,
predictions and metrics are bitwise identical, the wall times and the checkpoint's size and cost.

    python bench/bench_resume.py --data ../shared/data/cs224n [--variant plain|pcgrad|smart]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"plain": {}, "pcgrad": {"pcgrad": {"enabled": True}},
            "smart": {"smart": {"lambda": 1.0}}}


def write_params(path: Path, args: argparse.Namespace) -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["model"].update({"backbone": args.backbone, "pooling": "mean"})
    raw["train"].update({"epochs": 2, "batches_per_epoch": args.batches, "batch_size": 16,
                         "lr": 5e-5, "schedule": "round_robin", "precision": "fp32",
                         "num_threads": args.threads, "checkpoint_steps": args.checkpoint_steps,
                         "checkpoint_minutes": None})
    raw["smart"]["lambda"] = 0.0
    for section, values in VARIANTS[args.variant].items():
        raw[section].update(values)
    raw["data"].update({"train_rows": {"sst": 2000, "qqp": 2000, "sts": 2000},
                        "dev_rows": {"sst": 400, "qqp": 400, "sts": 400}})
    path.write_text(yaml.safe_dump(raw))


def train_command(work: Path, name: str) -> list[str]:
    return [sys.executable, str(ROOT / "stages" / "train.py"), "multitask", "--seed", "11",
            "--prepared", str(work / "prepared"), "--augmented", str(work / "augmented"),
            "--out", str(work / name), "--checkpoints", str(work / f"checkpoints_{name}"),
            "--params", str(work / "params.yaml"), "--no-live"]


def kill_mid_epoch(command: list[str], state_file: Path, step: int, env: dict) -> float:
    """Start the run, SIGKILL it once its checkpoint is ``step`` steps into epoch 2."""
    began = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    while proc.poll() is None:
        try:
            in_epoch = json.loads(state_file.read_text())["in_epoch"]
        except (OSError, ValueError, KeyError):
            in_epoch = None
        if in_epoch and in_epoch["epoch"] == 2 and in_epoch["steps_done"] >= step:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.2)
    if proc.wait() != -signal.SIGKILL:
        raise SystemExit("the run ended before it was killed; lower --kill-step")
    return time.perf_counter() - began


def same_outputs(a: Path, b: Path) -> dict[str, bool]:
    same = {name: (a / "model" / name).read_bytes() == (b / "model" / name).read_bytes()
            for name in ("model.safetensors", "heads.safetensors")}
    for path in sorted((a / "predictions").glob("*.parquet")):
        same[path.name] = pd.read_parquet(path).equals(
            pd.read_parquet(b / "predictions" / path.name))
    metrics = [{k: v for k, v in json.loads((d / "metrics.json").read_text()).items()
                if not k.endswith("_seconds")} for d in (a, b)]
    same["metrics.json"] = metrics[0] == metrics[1]
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the CS224N directory")
    parser.add_argument("--backbone", default="minilm")
    parser.add_argument("--variant", choices=list(VARIANTS), default="plain")
    parser.add_argument("--batches", type=int, default=60, help="steps per epoch")
    parser.add_argument("--checkpoint-steps", type=int, default=10)
    parser.add_argument("--kill-step", type=int, default=25, help="steps into epoch 2")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory(prefix="bench-resume-") as tmp:
        work = Path(tmp)
        write_params(work / "params.yaml", args)
        subprocess.run([sys.executable, str(ROOT / "stages" / "prepare.py"), "--source",
                        str(args.data.resolve()), "--out", str(work / "prepared"), "--params",
                        str(work / "params.yaml")], env=env, check=True, capture_output=True)
        (work / "augmented").mkdir()

        began = time.perf_counter()
        subprocess.run(train_command(work, "straight"), env=env, check=True,
                       capture_output=True)
        straight_s = time.perf_counter() - began
        state_file = work / "checkpoints_killed" / "last" / "state.json"
        killed_s = kill_mid_epoch(train_command(work, "killed"), state_file, args.kill_step, env)
        saved = json.loads(state_file.read_text())["in_epoch"]
        began = time.perf_counter()
        rerun = subprocess.run(train_command(work, "killed"), env=env, check=True,
                               capture_output=True, text=True)
        rerun_s = time.perf_counter() - began
        ckpt = work / "checkpoints_killed" / "last"
        size_mb = sum(p.stat().st_size for p in ckpt.iterdir()) / 2**20
        metrics = json.loads((work / "straight" / "metrics.json").read_text())
        same = same_outputs(work / "straight", work / "killed")

    resumed = [line for line in rerun.stderr.splitlines() if "resuming" in line]
    print(f"variant {args.variant}, {args.backbone}, 2 epochs × {args.batches} steps, "
          f"checkpoint every {args.checkpoint_steps} steps ({size_mb:.0f} MiB)")
    print(f"uninterrupted: {straight_s:.0f} s; killed (SIGKILL) at epoch 2 step "
          f"{saved['steps_done']}+ after {killed_s:.0f} s; rerun {rerun_s:.0f} s")
    print(f"rerun log: {resumed[0] if resumed else 'NO RESUME LINE'}")
    print(f"dev: SST {metrics['sst_acc']:.4f}  QQP {metrics['qqp_acc']:.4f}  "
          f"STS {metrics['sts_pearson']:.4f}")
    for name, equal in same.items():
        print(f"  {name:24} {'identical' if equal else 'DIFFERENT'}")
    if not all(same.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
