"""`bestfit-predict` on a trained member: one sentence from the command line, then files of
1,000 real dev examples per task; prints wall times and examples/s. ``--stream`` instead pipes
10k, 100k and 1M short lines through stdin and prints each run's peak memory.

    python bench/bench_predict.py models/multitask/seed_11/model --data ../shared/data/cs224n
    python bench/bench_predict.py --stream [MODEL] [--lines 10000,100000,1000000]

The command-line runs are timed whole (process start, model load, prediction, output), as a
user waits for them; the in-process figures time `predict_sentences` alone on a loaded model
(best of --repeats), which is what a script calling the library pays per batch of examples.

``--stream`` runs the command as a subprocess per line count, stdin a file of short sentences,
jsonl to /dev/null, and reads that process's own peak RSS (``os.wait4``'s ``ru_maxrss``): the
input is read, predicted and written a chunk at a time, so the peak should not grow with the
number of lines. Without MODEL it uses a tiny random member (2 layers, hidden 32, MiniLM's
vocabulary) written to a temporary directory: the figures are then the command's own costs
(reading, tokenising, writing), not a real encoder's. Lines/s is over the whole run and, net,
after the start-up of a one-line run (process start, imports, model load).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from pipeline.data import read_task_split
from pipeline.model import MultitaskModel, read_member_config
from pipeline.predict import predict_sentences

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the film was good and the plot a bit slow but the acting fun not great very bad "
         "story love hate best worst movie").split()


def command(model: Path, *args: str) -> tuple[float, str]:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "predict.py"), str(model),
                          *args], capture_output=True, text=True, check=True)
    return time.perf_counter() - started, out.stdout


def tiny_member(directory: Path) -> Path:
    """A randomly initialised 2-layer member of params.yaml's ``sst_single``, saved to
    ``directory / "model"`` with MiniLM's (bert-base-uncased's) tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from pipeline.config import parse_params
    from pipeline.model import resolve_backbone, save_member

    backbone = directory / "backbone"
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(backbone)
    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone("minilm"))
    tokenizer.save_pretrained(backbone)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["model"]["backbone"] = str(backbone)
    member = parse_params(raw).models["sst_single"]
    save_member(MultitaskModel(member.model, member.tasks), member, tokenizer,
                directory / "model")
    return directory / "model"


def write_lines(path: Path, count: int) -> None:
    """``count`` short sentences, 4–9 words each (about 40 bytes a line)."""
    with path.open("w") as out:
        for k in range(count):
            out.write(" ".join(WORDS[(k * 7 + j * 3) % len(WORDS)] for j in range(4 + k % 6))
                      + "\n")


def run_streaming(model: Path, lines: Path, threads: int) -> tuple[float, float]:
    """Seconds and peak RSS (MiB) of one command reading ``lines`` on stdin."""
    cmd = [sys.executable, str(ROOT / "scripts" / "predict.py"), str(model), "--task", "sst",
           "--format", "jsonl", "--quiet", "--threads", str(threads)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    with lines.open("rb") as stdin:
        proc = subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.DEVNULL, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"bestfit-predict exited {proc.returncode} on {lines}")
    return seconds, usage.ru_maxrss / 1024  # Linux: kB


def stream(args: argparse.Namespace) -> None:
    counts = [int(n) for n in args.lines.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or tiny_member(Path(tmp))
        print(f"model {model}, {args.threads} threads, jsonl to /dev/null")
        one = Path(tmp) / "one.txt"
        write_lines(one, 1)
        startup, rss = run_streaming(model, one, args.threads)
        print(f"{1:>9,} line : {startup:7.1f} s (start-up), peak RSS {rss:6.0f} MiB")
        for count in counts:
            path = Path(tmp) / f"{count}.txt"
            write_lines(path, count)
            seconds, rss = run_streaming(model, path, args.threads)
            net = count / max(seconds - startup, 1e-9)
            print(f"{count:>9,} lines: {seconds:7.1f} s, {count / seconds:8.0f} lines/s "
                  f"({net:.0f} net of start-up), peak RSS {rss:6.0f} MiB "
                  f"({path.stat().st_size / 2**20:.1f} MiB of input)")
            path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, nargs="?")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cs224n")
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stream", action="store_true",
                        help="peak memory and lines/s on stdin lines (MODEL optional)")
    parser.add_argument("--lines", default="10000,100000,1000000",
                        help="--stream: the line counts, comma-separated")
    args = parser.parse_args()
    if args.stream:
        stream(args)
        return
    if args.model is None:
        parser.error("a model directory is needed (or --stream)")
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
