"""The prepared GPU check: one command, a few minutes on one H100/H200, offline.

    python bench/gpu_check.py [--device auto|cuda|cuda:N|cpu] [--out DIR] [--data CS224N_DIR]
                              [--minilm DIR] [--peak-tflops N] [--small]

Needs CUDA PyTorch, transformers, numpy, pandas with pyarrow, scipy and PyYAML; no hub, no
network, no dvc or dvclive (the train stage runs with ``--no-live``). It prints, and writes to
``--out``/gpu_check.json:

- ``mfu``: samples/s, tokens/s and MFU of the trainer's plain step (``bench_train.run_bestfit``,
  ``bench_mfu``'s FLOP count) on a randomly initialised bert-base built from a ``BertConfig``,
  at the paper's batch (32, bf16);
- ``step_cost``: a SMART (``normalize`` at the embeddings, the default) and a PCGrad step
  against a plain one on the same batches (``bench_smart_pcgrad``'s runners), 3 tasks × 32;
- ``fp16``: the trainer's fp16 steps under ``GradScaler``: optimiser steps taken (an overflow
  skips one), losses finite, the loss scale;
- ``resume``: ``stages/train.py`` (a small random BERT, or ``--minilm``) killed by SIGKILL in
  epoch 2 after a checkpoint there, run again, and compared with the same run left alone
  (``bench_resume``'s functions): bitwise; if not, a second uninterrupted run says whether the
  device's own nondeterminism explains the difference;
- ``projection``: the members' steps of ``--params`` (default the checkout's ``params.yaml``;
  ``plan_epochs`` over CS224N's full training sets: multitask's 4 QQP epochs over 80% of QQP
  then 8 × 2000 round-robin batches, sst_single's 12 × 2000) times the measured plain step at
  each member's batch, × the SMART ratio where SMART is on; dev and test scoring estimated as a
  forward pass (1/3 of a training step) per example.

Without ``--data`` (a directory of the CS224N files) it trains on synthetic CS224N-format files
of the real files' sentence lengths. Without ``--minilm`` (a MiniLM copy: its tokenizer is
bert-base-uncased's) the tokenizer is word-level over the data's words, one token per word: a
sentence is somewhat shorter than under WordPiece, so tokens/s and step times are for those.
``--small``: tiny sizes on the CPU in seconds (the test suite runs it). A part that fails is
reported under ``failures``; the exit status is 1 then, or when the resumed run differs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from bench_mfu import device_peak, encoder_shape, mfu_figures, random_bert_base
from bench_resume import kill_mid_epoch, same_outputs, train_command, write_params
from bench_smart_pcgrad import make_runner, step_batches, step_members, time_modes
from bench_train import WARMUP, bench_member, run_bestfit
from transformers import AutoTokenizer, BertConfig, BertModel, BertTokenizer

from pipeline.batching import tokenize_member_data
from pipeline.checkpoint import STATE_FILE
from pipeline.config import ModelConfig, load_params
from pipeline.data import member_frames, prepare, write_prepared
from pipeline.device import resolve_device
from pipeline.io import write_json, write_text
from pipeline.model import load_tokenizer
from pipeline.schedule import plan_epochs
from pipeline.train import CHECKPOINT_DIR, Trainer

ROOT = Path(__file__).resolve().parents[1]
# CS224N's full splits (its handout's counts; the copy beside the checkout holds 13,507 of the
# 141,506 QQP training pairs): what the default recipe's step counts are drawn from.
CS224N_ROWS = {"train": {"sst": 8544, "qqp": 141_506, "sts": 6040},
               "dev": {"sst": 1101, "qqp": 20_215, "sts": 864},
               "test": {"sst": 2210, "qqp": 40_431, "sts": 1726}}
STEP_MODES = ("plain", "smart", "pcgrad")
BERT_BASE_VOCABULARY = 30522
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Sizes per mode: the GPU check's, and --small's (seconds on a CPU).
SIZES = {
    "full": {"rows": 2000, "precision": "bf16", "mfu_steps": 50, "cost_steps": 6,
             "cost_batch": 32, "fp16_steps": 20, "fp16_batch": 32, "resume_batches": 120,
             "resume_checkpoint": 2, "resume_kill": 10, "resume_threads": 4, "hidden": 64},
    # fp32: a CPU without bf16 units emulates it, slowly
    "small": {"rows": 160, "precision": "fp32", "mfu_steps": 4, "cost_steps": 2,
              "cost_batch": 8, "fp16_steps": 3, "fp16_batch": 8, "resume_batches": 30,
              "resume_checkpoint": 1, "resume_kill": 4, "resume_threads": 1, "hidden": 32},
}
BATCH = 32  # the paper's, in bf16


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, help="writes gpu_check.json there")
    parser.add_argument("--data", type=Path, help="the CS224N files (default: synthetic ones)")
    parser.add_argument("--minilm", type=Path, help="a MiniLM directory: its tokenizer, and the "
                                                    "backbone of the resume check")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak "
                                                          "(default: by its name)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--small", action="store_true", help="tiny sizes, on the CPU: seconds")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml",
                        help="the recipe the projection counts (default: the checkout's)")
    return parser.parse_args(argv)


# -- data and backbones ----------------------------------------------------------------------
WORDS = ("the a an movie film story plot acting actor director scene it this that is was "
         "very too so not quite good bad great terrible funny boring dull moving smart "
         "what how why when where who can do does should i you we my your best way to of in on "
         "for with from about learn make get find money time life people india computer phone "
         "man woman dog cat child plays playing guitar runs eats rides horse car street water "
         ", . ? ! ' s and or but").split()


def synthetic_cs224n(directory: Path, rows: int, seed: int = 0) -> Path:
    """CS224N-format train and dev files of random sentences near the real files' mean lengths
    (an SST sentence ~19 words, a QQP question ~11, an STS sentence ~10): for a machine
    without the data. No test files (a prepared test split is then empty)."""
    rng = np.random.default_rng(seed)

    def text(mean: int) -> str:
        return " ".join(rng.choice(WORDS, max(2, int(rng.poisson(mean)))))

    for split, n in (("train", rows), ("dev", max(16, rows // 5))):
        ids = [f"{rng.integers(16 ** 12):012x}{k:013x}" for k in range(n)]
        files = {
            f"ids-sst-{split}.csv": ("\tid\tsentence\tsentiment",
                                     [f" {text(19)}\t{rng.integers(5)}" for _ in ids]),
            f"quora-{split}.csv": ("\tid\tsentence1\tsentence2\tis_duplicate",
                                   [f"{text(11)}\t{text(11)}\t{float(rng.integers(2))}"
                                    for _ in ids]),
            f"sts-{split}.csv": ("\tid\tsentence1\tsentence2\tsimilarity",
                                 [f"{text(10)}\t{text(10)}\t{rng.integers(51) / 10}"
                                  for _ in ids]),
        }
        for name, (header, lines) in files.items():
            body = [f"{k}\t{i}\t{line}" for k, (i, line) in enumerate(zip(ids, lines,
                                                                           strict=True))]
            write_text("\n".join([header, *body]) + "\n", directory / name)
    return directory


def prepared_tables(source: Path, out: Path, train_rows: dict, dev_rows: dict) -> Path:
    write_prepared(prepare(str(source), train_rows, 0, out.parent / "raw", dev_rows), out)
    return out


def word_tokenizer(directory: Path, prepared: Path, size: int) -> Path:
    """A BERT tokenizer whose vocabulary is the prepared data's own words and punctuation
    (then ``[unusedK]`` up to ``size``): one token per word, for want of a WordPiece
    vocabulary offline."""
    words: Counter[str] = Counter()
    for path in prepared.glob("*_train.parquet"):
        frame = pd.read_parquet(path)
        for column in {"sentence", "sentence1", "sentence2"} & set(frame.columns):
            for text in frame[column]:
                words.update(re.findall(r"\w+|[^\w\s]", text.lower()))
    vocab = SPECIAL_TOKENS + [w for w, _ in words.most_common(size - len(SPECIAL_TOKENS))]
    vocab += [f"[unused{k}]" for k in range(size - len(vocab))]
    directory.mkdir(parents=True, exist_ok=True)
    write_text("\n".join(vocab) + "\n", directory / "vocab.txt")
    BertTokenizer(vocab=str(directory / "vocab.txt"), do_lower_case=True).save_pretrained(
        directory)
    return directory


def small_bert(directory: Path, tokenizer: Path, hidden: int) -> Path:
    """A 2-layer randomly initialised BERT of width ``hidden`` with ``tokenizer``'s files."""
    words = AutoTokenizer.from_pretrained(tokenizer)
    words.save_pretrained(directory)
    config = BertConfig(vocab_size=len(words), hidden_size=hidden, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=2 * hidden)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(directory)
    return directory


# -- the parts -------------------------------------------------------------------------------
def measure_mfu(backbone: Path, prepared: Path, args: argparse.Namespace, steps: int,
                precision: str, batch: int = BATCH) -> dict:
    """The trainer's plain step on ``backbone``, timed as bench_mfu times it."""
    loop = argparse.Namespace(backbone=str(backbone), steps=steps, batch_size=batch,
                              threads=args.threads or torch.get_num_threads(),
                              device=args.device, prepared=prepared)
    results = queue.SimpleQueue()
    run_bestfit(loop, precision, results)
    result = results.get()
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or device_peak(name, precision)
    return {"device_name": name, "batch": batch, "precision": precision, "steps": steps,
            "step_seconds": result.seconds / steps,
            **mfu_figures(result, encoder_shape(str(backbone)), peak)}


def measure_step_cost(backbone: Path, source: Path, args: argparse.Namespace, steps: int,
                      batch: int, precision: str) -> dict:
    """Median step time of plain, SMART and PCGrad steps, one batch of each task per step."""
    model_cfg = ModelConfig(backbone=str(backbone))
    batches = step_batches(argparse.Namespace(warmup=1, steps=steps, batch_size=batch,
                                              data=source),
                           load_tokenizer(str(backbone)), model_cfg.max_length)
    device = resolve_device(args.device)
    members = step_members(model_cfg, batch, precision, str(device))
    runners = {mode: make_runner(members[mode], str(backbone), device) for mode in STEP_MODES}
    time_modes(runners, batches, device, warmup=1)
    seconds = {mode: statistics.median(runner.times) for mode, runner in runners.items()}
    return {"batch_per_task": batch, "precision": precision, "steps": steps, "seconds": seconds,
            "ratio": {mode: seconds[mode] / seconds["plain"] for mode in STEP_MODES}}


def check_fp16(backbone: Path, prepared: Path, args: argparse.Namespace, steps: int,
               batch: int) -> dict:
    """One fp16 epoch of the trainer's own steps (GradScaler): did they step, stay finite?"""
    member = bench_member(str(backbone), steps - WARMUP, batch, "fp16", args.device)
    tokenizer = load_tokenizer(member.model.backbone)
    data = tokenize_member_data(member_frames(member, prepared, prepared), member, tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(member, data, tokenizer, Path(tmp))
        before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        losses = trainer.train_epoch(1)  # a non-finite loss is a TrainingError
    after = trainer.model.state_dict()
    taken = max((int(state["step"]) for state in trainer.optimizer.state.values()), default=0)
    moved = sum(not torch.equal(after[k], v) for k, v in before.items()) / len(before)
    return {"steps": len(trainer.plan.tasks[0]), "optimizer_steps": taken,
            "losses": losses, "finite": all(math.isfinite(v) for v in losses.values()),
            "scale": trainer.scaler.get_scale(),
            "clean_steps": trainer.scaler.state_dict()["_growth_tracker"],
            "moved_fraction": moved}


def stage(command: list[str], env: dict) -> subprocess.CompletedProcess:
    """The train stage to its end; a failure raised with its last stderr line."""
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        lines = done.stderr.strip().splitlines() or ["(no output)"]
        raise RuntimeError(f"train stage exited {done.returncode}: {lines[-1]}")
    return done


def largest_difference(a: Path, b: Path) -> dict[str, float]:
    """The largest |a − b| over two outputs' numeric prediction columns and scalar scores."""
    predictions = 0.0
    for path in sorted((a / "predictions").glob("*.parquet")):
        x, y = pd.read_parquet(path), pd.read_parquet(b / "predictions" / path.name)
        numeric = x.select_dtypes("number").columns
        if len(numeric) and len(x):
            predictions = max(predictions, float(np.abs(
                x[numeric].to_numpy(np.float64) - y[numeric].to_numpy(np.float64)).max()))
    scores = [json.loads((d / "metrics.json").read_text()) for d in (a, b)]
    metrics = max((abs(v - scores[1][k]) for k, v in scores[0].items()
                   if isinstance(v, float) and not k.endswith("_seconds")), default=0.0)
    return {"predictions": predictions, "metrics": metrics}


def check_resume(work: Path, source: Path, backbone: Path, args: argparse.Namespace,
                 sizes: dict) -> dict:
    """A SIGKILL mid-epoch 2, the rerun resumes; its outputs against an uninterrupted run's."""
    work.mkdir(parents=True)
    run = argparse.Namespace(backbone=str(backbone), variant="plain",
                             batches=sizes["resume_batches"],
                             checkpoint_steps=sizes["resume_checkpoint"],
                             threads=args.threads or sizes["resume_threads"])
    write_params(work / "params.yaml", run)
    raw = yaml.safe_load((work / "params.yaml").read_text())
    raw["train"]["device"] = args.device
    write_text(yaml.safe_dump(raw), work / "params.yaml")
    params = load_params(work / "params.yaml")
    prepared_tables(source, work / "prepared", params.data.train_rows, params.data.dev_rows)
    (work / "augmented").mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    stage(train_command(work, "straight"), env)
    state_file = work / "checkpoints_killed" / CHECKPOINT_DIR / STATE_FILE
    kill_mid_epoch(train_command(work, "killed"), state_file, sizes["resume_kill"], env)
    killed_at = json.loads(state_file.read_text())["in_epoch"]
    rerun = stage(train_command(work, "killed"), env)
    same = same_outputs(work / "straight", work / "killed")
    result = {"matched": all(same.values()), "identical": same,
              "killed_at": {"epoch": killed_at["epoch"], "steps_done": killed_at["steps_done"]},
              "resumed": next((line.strip() for line in rerun.stderr.splitlines()
                               if "resuming" in line), None),
              "difference": largest_difference(work / "straight", work / "killed")}
    if not result["matched"]:  # the device's own run-to-run difference, for comparison
        stage(train_command(work, "again"), env)
        result["uninterrupted_identical"] = all(
            same_outputs(work / "straight", work / "again").values())
        result["uninterrupted_difference"] = largest_difference(work / "straight",
                                                                work / "again")
    return result


def project(step_seconds: dict[int, float], ratio: dict[str, float], params_file: Path) -> dict:
    """The default recipe's wall time from the measured steps (module docstring)."""
    params = load_params(params_file)
    members = {}
    for name, member in params.models.items():
        plan = plan_epochs(member, {t: range(CS224N_ROWS["train"][t]) for t in member.tasks})
        steps = Counter(t for epoch in plan.tasks for step in epoch for t in step.split(","))
        smart = member.smart.lambda_ > 0 or any(member.smart.task_lambda.values())
        factor = (ratio["smart"] if smart else 1.0) * (
            ratio["pcgrad"] if member.pcgrad.enabled else 1.0)
        step = step_seconds[member.train.batch_size]
        scored = (member.train.epochs * sum(CS224N_ROWS["dev"][t] for t in member.tasks)
                  + sum(CS224N_ROWS["test"][t] for t in member.tasks))
        train_s = plan.total_steps * step * factor
        eval_s = scored * step / member.train.batch_size / 3
        members[name] = {"steps": plan.total_steps, "steps_by_task": dict(steps),
                         "batch_size": member.train.batch_size, "smart": smart,
                         "pcgrad": member.pcgrad.enabled, "step_seconds": step * factor,
                         "train_hours": train_s / 3600, "eval_hours_estimate": eval_s / 3600,
                         "hours": (train_s + eval_s) / 3600}
    return {"train_rows": CS224N_ROWS["train"], "members": members,
            "total_hours": sum(m["hours"] for m in members.values())}


# -- the run ---------------------------------------------------------------------------------
def attempt(name: str, failures: dict, part: Callable[[], dict]) -> dict | None:
    """A part's figures, or None with its failure recorded: the other parts still run."""
    began = time.perf_counter()
    try:
        figures = part()
    except (Exception, SystemExit) as exc:  # bench_resume stops with SystemExit
        failures[name] = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        print(f"{name}: FAILED: {failures[name]}", flush=True)
        return None
    figures["wall_seconds"] = time.perf_counter() - began
    return figures


def report(figures: dict) -> None:
    mfu, cost, fp16 = figures["mfu"], figures["step_cost"], figures["fp16"]
    resume, projection = figures["resume"], figures["projection"]
    print(f"\ndevice {figures['device']} ({figures['device_name']}), torch {figures['torch']}, "
          f"{figures['backbone']}, tokenizer {figures['tokenizer']}, data {figures['data']}")
    if mfu:
        mfu_text = (f"MFU {100 * mfu['mfu']:.1f}% (real tokens {100 * mfu['real_mfu']:.1f}%) "
                    f"of {mfu['peak_tflops']:g} TFLOP/s" if mfu["mfu"] is not None
                    else "MFU: peak unknown (--peak-tflops)")
        print(f"mfu        batch {mfu['batch']} {mfu['precision']}: step "
              f"{1000 * mfu['step_seconds']:.1f} ms, {mfu['samples_per_s']:.0f} samples/s, "
              f"{mfu['tokens_per_s']:.0f} tokens/s (mean padded length "
              f"{mfu['mean_padded_length']:.1f}), {mfu['tflops']:.1f} TFLOP/s, {mfu_text}")
    if cost:
        print(f"step cost  3 tasks x {cost['batch_per_task']} {cost['precision']}: "
              + ", ".join(f"{mode} {1000 * cost['seconds'][mode]:.1f} ms "
                          f"({cost['ratio'][mode]:.2f}x)" for mode in STEP_MODES))
    if fp16:
        print(f"fp16       {fp16['optimizer_steps']} of {fp16['steps']} steps taken, losses "
              f"{'finite' if fp16['finite'] else 'NOT FINITE'}, scale {fp16['scale']:g} after "
              f"{fp16['clean_steps']} clean steps, {100 * fp16['moved_fraction']:.0f}% of "
              f"tensors moved")
    if resume:
        at = resume["killed_at"]
        verdict = "identical to the uninterrupted run" if resume["matched"] else (
            f"DIFFERENT ({', '.join(k for k, v in resume['identical'].items() if not v)}; "
            f"largest difference {resume['difference']}; two uninterrupted runs "
            f"{'identical' if resume['uninterrupted_identical'] else 'differ too'}: "
            f"{resume['uninterrupted_difference']})")
        print(f"resume     SIGKILL at epoch {at['epoch']} step {at['steps_done']}+, rerun "
              f"({resume['resumed']}): {verdict}")
    if projection:
        for name, m in projection["members"].items():
            print(f"projection {name}: {m['steps']} steps of {m['batch_size']} "
                  f"({', '.join(f'{t} {n}' for t, n in m['steps_by_task'].items())})"
                  f"{', SMART' if m['smart'] else ''} at {1000 * m['step_seconds']:.1f} ms: "
                  f"{m['train_hours']:.2f} h + ~{m['eval_hours_estimate']:.2f} h scoring")
        print(f"projection the default recipe: {projection['total_hours']:.2f} h on this "
              f"device, its members one after the other")
    for name, failure in figures["failures"].items():
        print(f"FAILED {name}: {failure}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.small and args.device == "auto":
        args.device = "cpu"
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = SIZES["small" if args.small else "full"]
    device = resolve_device(args.device)
    began = time.perf_counter()
    failures: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        source = args.data.resolve() if args.data else synthetic_cs224n(
            work / "cs224n", sizes["rows"])
        # Dev rows are only tokenized here (no part but resume scores them).
        caps = dict.fromkeys(CS224N_ROWS["train"], sizes["rows"]) if args.small else {}
        prepared = prepared_tables(source, work / "prepared", caps,
                                   dict.fromkeys(CS224N_ROWS["dev"], 64))
        tokenizer = args.minilm.resolve() if args.minilm else word_tokenizer(
            work / "words", prepared, BERT_BASE_VOCABULARY)
        if args.small:
            throughput = small_bert(work / "tiny-bert", tokenizer, sizes["hidden"])
        else:
            throughput = random_bert_base(work / "bert-base-random", str(tokenizer))
        resume_backbone = args.minilm.resolve() if args.minilm else (
            throughput if args.small else small_bert(work / "small-bert", tokenizer,
                                                     sizes["hidden"]))
        figures = {"device": str(device), "small": args.small, "torch": torch.__version__,
                   "backbone": "tiny random BERT" if args.small else
                   "bert-base, random init (BertConfig)",
                   "tokenizer": str(args.minilm) if args.minilm else "word-level",
                   "data": str(args.data) if args.data else "synthetic", "failures": failures}
        precision = sizes["precision"]
        figures["mfu"] = attempt("mfu", failures, lambda: measure_mfu(
            throughput, prepared, args, sizes["mfu_steps"], precision))
        figures["device_name"] = figures["mfu"]["device_name"] if figures["mfu"] else "?"
        figures["step_cost"] = attempt("step_cost", failures, lambda: measure_step_cost(
            throughput, source, args, sizes["cost_steps"], sizes["cost_batch"], precision))
        figures["fp16"] = attempt("fp16", failures, lambda: check_fp16(
            throughput, prepared, args, sizes["fp16_steps"], sizes["fp16_batch"]))
        figures["resume"] = attempt("resume", failures, lambda: check_resume(
            work / "resume", source, resume_backbone, args, sizes))

        def projection() -> dict:
            batches = {m.train.batch_size for m in load_params(args.params).models.values()}
            step = {b: measure_mfu(throughput, prepared, args, sizes["mfu_steps"], precision,
                                   b)["step_seconds"] for b in batches - {BATCH}}
            if BATCH in batches:
                step[BATCH] = figures["mfu"]["step_seconds"]
            return project(step, figures["step_cost"]["ratio"], args.params)

        figures["projection"] = attempt("projection", failures, projection)
    figures["seconds"] = time.perf_counter() - began
    report(figures)
    if args.out:
        write_json(figures, args.out / "gpu_check.json")
        print(f"wrote {args.out / 'gpu_check.json'} ({figures['seconds']:.0f} s)")
    return int(bool(failures) or not figures["resume"]["matched"])  # resume ran: no failure


if __name__ == "__main__":
    sys.exit(main())
