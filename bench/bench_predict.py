"""`bestfit-predict` on a trained member: one sentence from the command line, then files of
1,000 real dev examples per task; prints wall times and examples/s.

    python bench/bench_predict.py models/multitask/seed_11/model --data ../shared/data/cs224n

The command-line runs are timed whole (process start, model load, prediction, output), as a
user waits for them; the in-process figures time `predict_sentences` alone on a loaded model
(best of --repeats), which is what a script calling the library pays per batch of examples.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from pipeline.data import read_task_split
from pipeline.model import MultitaskModel, read_member_config
from pipeline.predict import predict_sentences

ROOT = Path(__file__).resolve().parents[1]


def command(model: Path, *args: str) -> tuple[float, str]:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "predict.py"), str(model),
                          *args], capture_output=True, text=True, check=True)
    return time.perf_counter() - started, out.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cs224n")
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    member = read_member_config(args.model)
    threads = ["--threads", str(args.threads), "--quiet"]
    print(f"model {args.model} (tasks {', '.join(member.tasks)}), {args.threads} threads, "
          f"batch {args.batch_size}")

    single = next(t for t in member.tasks if not member.specs[t].pair)
    seconds, out = command(args.model, "--task", single, "--text", "a gripping, funny film",
                           *threads)
    print(f"command line, one {single} sentence: {seconds:.2f} s wall (start, load, predict)")
    print("  " + out.strip().splitlines()[-1])

    model = MultitaskModel.from_pretrained(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        for task in member.tasks:
            spec = member.specs[task]
            frame, _ = read_task_split(args.data, spec, "dev")
            frame = frame.head(args.rows)
            path = Path(tmp) / f"{task}.csv"
            frame.drop(columns="label").to_csv(path, index=False)
            seconds, _ = command(args.model, "--task", task, "--input", str(path),
                                 "--format", "csv", "--output", str(Path(tmp) / "out.csv"),
                                 "--batch-size", str(args.batch_size), *threads)
            best = float("inf")
            for _ in range(args.repeats):
                began = time.perf_counter()
                predict_sentences(model, task, frame, args.batch_size)
                best = min(best, time.perf_counter() - began)
            unit = "pairs" if spec.pair else "sentences"
            print(f"{task}: {len(frame)} {unit} from a file: command {seconds:.2f} s wall "
                  f"({len(frame) / seconds:.0f} {unit}/s end to end); in process "
                  f"{best:.2f} s ({len(frame) / best:.0f} {unit}/s)")


if __name__ == "__main__":
    main()
