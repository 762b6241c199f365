"""The paper's tables as DVC experiments: queue them, then write the report.

    python scripts/experiments.py queue --scale cpu --data ../shared/data [--runs sc,sc_cs]
    dvc queue start            # runs the queue; `dvc queue status` to follow it
    python scripts/experiments.py report --scale cpu

`queue` adds one `dvc exp run --queue` per run of experiments/paper.yaml at the scale (named
`<scale>-<run>`, its members' train stages for the scale's seeds as targets); `--data` is a
directory holding cs224n/ and amazon/, passed to the experiments as absolute paths (as is
the WordNet dir of EDA). `report`
reads `dvc exp show --json` (or `--exp-show FILE`, or `--results` files: `run`'s results.json or
an earlier report's JSON, so runs finished later extend a committed report) and writes
reports/paper_<scale>.{md,json,png}.

`run` runs the stage commands without DVC, `--jobs` runs at once. With several jobs on a machine
with GPUs each job trains on a GPU of its own (its commands' CUDA_VISIBLE_DEVICES, drawn from the
GPUs this process sees); more jobs than GPUs share them round-robin, at most ⌈jobs / GPUs⌉ per
GPU. With `--jobs 1` a run sees every GPU (for members with `train.processes` > 1, which need
that many).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import queue as queues
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path

import yaml

from pipeline.device import visible_gpus
from pipeline.errors import run_stage
from pipeline.experiments import (
    DEFAULT_MEMBER,
    apply_overrides,
    build_report,
    collect,
    dvc_executable,
    figure_rows,
    load_experiments,
    merge_results,
    queue_command,
    report_markdown,
    results_from_report,
    run_overrides,
    to_json,
)
from pipeline.figures import report_figure
from pipeline.io import write_text
from pipeline.seeds import scalar_metrics, seed_dir


def queue(args: argparse.Namespace) -> None:
    spec = load_experiments(args.experiments)
    runs = args.runs.split(",") if args.runs else spec.scale_runs(args.scale)
    for run in runs:
        command = queue_command(spec, args.scale, run, args.data, args.wordnet)
        print(" ".join(command), flush=True)
        if not args.dry_run:
            subprocess.run([dvc_executable(), *command[1:]], check=True)


def _digest(params: dict, keys: list[str]) -> str:
    text = json.dumps({k: params.get(k) for k in keys}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _sh(command: list[str], log: Path, gpu: str | None = None) -> None:
    """Run ``command``, its output appended to ``log``; ``gpu``: the only GPU it sees."""
    env = None if gpu is None else {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
    with log.open("a") as out:
        out.write("$ " + ("" if gpu is None else f"CUDA_VISIBLE_DEVICES={gpu} ")
                  + " ".join(command) + "\n")
        out.flush()
        if subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env).returncode:
            raise RuntimeError(f"{' '.join(command[:3])} failed; see {log}")


class GpuPool:
    """The GPU a running job trains on: ``jobs`` slots dealt round-robin over ``gpus``, so
    concurrent jobs get GPUs of their own while there are enough, and share them evenly when
    not. No GPUs: every job gets None (its commands see what this process sees)."""

    def __init__(self, gpus: list[str], jobs: int):
        self.slots: queues.Queue[str] | None = queues.Queue() if gpus else None
        for k in range(jobs if gpus else 0):
            self.slots.put(gpus[k % len(gpus)])

    @contextmanager
    def gpu(self) -> Iterator[str | None]:
        if self.slots is None:
            yield None
            return
        gpu = self.slots.get()
        try:
            yield gpu
        finally:
            self.slots.put(gpu)


def _upstream(params_file: Path, params: dict, members: list[str], root: Path
              ) -> tuple[Path, Path]:
    """prepare, and the augmentation stages the members use, for one params set, shared by
    every run whose data and augment sections are the same (the cmds of dvc.yaml)."""
    sources = {s for m in members for s in params["models"][m].get("augment") or []}
    data_dir = root / "_data" / _digest(params, ["data"])
    prepared = data_dir / "prepared"
    if not prepared.is_dir():
        _sh([sys.executable, "stages/prepare.py", "--source", params["data"]["source"],
             "--out", str(prepared), "--params", str(params_file)], root / "upstream.log")
    augmented = data_dir / _digest(params, ["augment"]) / "augmented"
    log = root / "upstream.log"
    if "eda" in sources and not (augmented / "eda.parquet").is_file():
        _sh([sys.executable, "stages/augment_eda.py", "--prepared", str(prepared),
             "--out", str(augmented), "--params", str(params_file)], log)
    if sources & {"amazon", "llm"} and not (augmented / "amazon.parquet").is_file():
        _sh([sys.executable, "stages/filter_reviews.py", "--source",
             params["augment"]["reviews"]["source"], "--prepared", str(prepared), "--out",
             str(augmented), "--params", str(params_file), "--no-progress"], log)
    if "llm" in sources and not (augmented / "reviews_labeled.parquet").is_file():
        _sh([sys.executable, "stages/label_reviews.py", "--reviews",
             str(augmented / "amazon.parquet"), "--sst-train",
             str(prepared / "sst_train.parquet"), "--out",
             str(augmented / "reviews_labeled.parquet"), "--report",
             str(augmented / "label_report.json"), "--confusion",
             str(augmented / "label_confusion.csv"), "--params", str(params_file)], log)
    return prepared, augmented


def run_direct(args: argparse.Namespace) -> None:
    spec = load_experiments(args.experiments)
    runs = args.runs.split(",") if args.runs else spec.scale_runs(args.scale)
    raw = yaml.safe_load(Path(args.params).read_text())
    root = args.out.resolve()
    plans = []
    for run in runs:
        overrides = run_overrides(spec, args.scale, run, args.data, args.wordnet)
        for assignment in args.set:
            key, _, value = assignment.partition("=")
            overrides[key] = yaml.safe_load(value)
        params = apply_overrides(raw, overrides)
        run_dir = root / run
        run_dir.mkdir(parents=True, exist_ok=True)
        params_file = run_dir / "params.yaml"
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        plans.append((run, params, params_file, run_dir))
    # Upstream stages first, one at a time (runs share them), then the trainings in parallel.
    upstream = {run: _upstream(params_file, params, spec.members.get(run, [DEFAULT_MEMBER]),
                               root) for run, params, params_file, _ in plans}

    # One GPU per concurrent job; one job alone sees them all (train.processes may use them).
    gpus = GpuPool(visible_gpus() if args.jobs > 1 else [], args.jobs)

    def train(plan: tuple) -> None:
        with gpus.gpu() as gpu:
            train_on(plan, gpu)

    def train_on(plan: tuple, gpu: str | None) -> None:
        run, params, params_file, run_dir = plan
        prepared, augmented = upstream[run]
        for member in spec.members.get(run, [DEFAULT_MEMBER]):
            for seed in params["seeds"]:
                out = seed_dir(run_dir / "models", member, seed)
                if (out / "metrics.json").is_file():
                    continue
                _sh([sys.executable, "stages/train.py", member, "--seed", str(seed),
                     "--prepared", str(prepared), "--augmented", str(augmented),
                     "--out", str(out),
                     "--checkpoints", str(seed_dir(run_dir / "checkpoints", member, seed)),
                     "--params", str(params_file), *(["--no-live"] if args.no_live else [])],
                    run_dir / "train.log", gpu)
                print(f"{run} {member} seed {seed}: done"
                      + ("" if gpu is None else f" (GPU {gpu})"), flush=True)

    lock = threading.Lock()

    def write_results() -> int:
        """results.json from every finished seed so far under ``root``, of this invocation's
        runs and of the scale's others run earlier (``--runs`` adds to a matrix, never drops
        its results); rewritten as runs finish, so a run cut short keeps what it finished."""
        results: dict = {}
        for run in dict.fromkeys([*spec.scale_runs(args.scale), *runs]):
            for path in sorted((root / run).glob("models/*/seed_*/metrics.json")):
                member, seed = path.parent.parent.name, int(path.parent.name[len("seed_"):])
                metrics = json.loads(path.read_text())
                results.setdefault(run, {}).setdefault(member, {})[seed] = scalar_metrics(metrics)
        with lock:
            write_text(json.dumps(results, indent=2) + "\n", root / "results.json")
        return len(results)

    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(train, plan): plan[0] for plan in plans}
        for future in as_completed(futures):
            try:
                future.result()
            except RuntimeError as exc:
                print(f"{futures[future]} failed: {exc}", flush=True)
            write_results()
    print(f"wrote {root / 'results.json'} ({write_results()} runs)")


def _results_file(path: Path, spec, scale: str) -> dict:
    """A results.json of `run`, or a report's JSON (its rows' per-seed scores)."""
    data = json.loads(path.read_text())
    if isinstance(data.get("rows"), list):
        return results_from_report(data, spec, scale)
    return data


def report(args: argparse.Namespace) -> None:
    spec = load_experiments(args.experiments)
    spec.scale_runs(args.scale)  # an unknown scale is an error before any work
    if args.results:
        results = merge_results(*(_results_file(Path(path), spec, args.scale)
                                  for path in args.results))
    else:
        exp_show = json.loads(Path(args.exp_show).read_text()) if args.exp_show else json.loads(
            subprocess.run([dvc_executable(), "exp", "show", "--json", "--all-commits"], check=True,
                           capture_output=True, text=True).stdout)
        results = collect(exp_show, args.scale)
    built = build_report(spec, args.scale, results)
    out = Path(args.out or f"reports/paper_{args.scale}")
    heading = spec.title or "BEST-FiT's dev tables"
    header = (f"## {heading} at the `{args.scale}` scale\n\n"
              f"Runs: `{args.experiments}` (scale `{args.scale}`); dev scores of the best epoch, "
              f"mean ± sd over seeds. {args.title}".rstrip())
    write_text(to_json(built), out.with_suffix(".json"))
    write_text(report_markdown(built, header), out.with_suffix(".md"))
    report_figure(figure_rows(built), out.with_suffix(".png"))
    print(f"wrote {out}.md, .json, .png ({len(results)} runs with results)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", default="experiments/paper.yaml")
    commands = parser.add_subparsers(dest="command", required=True)
    q = commands.add_parser("queue", help="queue every run of a scale as a DVC experiment")
    q.add_argument("--scale", required=True)
    q.add_argument("--data", type=Path, help="directory holding cs224n/ and amazon/")
    q.add_argument("--wordnet", type=Path, default=Path("data/nltk_data"),
                   help="the NLTK data dir EDA reads (scripts/setup_wordnet.sh writes it)")
    q.add_argument("--runs", help="comma-separated runs (default: every run of the scale)")
    q.add_argument("--dry-run", action="store_true", help="print the commands only")
    r = commands.add_parser("report", help="write the report from dvc exp show")
    r.add_argument("--scale", required=True)
    r.add_argument("--exp-show", help="a saved `dvc exp show --json` output")
    r.add_argument("--results", action="append",
                   help="results.json of `run` (instead of dvc exp show), or a report's .json; "
                        "repeatable: later files' seeds replace earlier ones'")
    r.add_argument("--title", default="", help="a line under the heading (e.g. the machine)")
    r.add_argument("--out", help="output path without suffix (default reports/paper_<scale>)")
    d = commands.add_parser("run", help="run a scale's runs without DVC, in parallel jobs")
    d.add_argument("--scale", required=True)
    d.add_argument("--data", type=Path, required=True,
                   help="directory holding cs224n/ and amazon/")
    d.add_argument("--wordnet", type=Path, default=Path("data/nltk_data"))
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--runs", help="comma-separated runs (default: every run of the scale)")
    d.add_argument("--jobs", type=int, default=1,
                   help="runs trained at once (each on a GPU of its own while there are enough)")
    d.add_argument("--params", default="params.yaml")
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an override applied after the run's (e.g. a local backbone dir)")
    d.add_argument("--no-live", action="store_true", help="train without DVCLive")
    args = parser.parse_args(argv)
    {"queue": queue, "report": report, "run": run_direct}[args.command](args)


if __name__ == "__main__":
    run_stage("experiments", main)
