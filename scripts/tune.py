"""An Optuna study over the DVC pipeline: every trial one DVC experiment (pipeline/tune.py).

    python scripts/tune.py run --spec experiments/tune_cpu.yaml --data ../shared/data \
        [--trials N] [--wordnet data/nltk_data]
    python scripts/tune.py show --spec experiments/tune_cpu.yaml [--out reports/tune_cpu]

`run` runs trials until the study (its storage: the spec's, SQLite by default) holds the spec's
number of finished trials, over every worker: start `run` again in another shell (or on another
machine with a shared RDB storage) for a second worker, or after a kill to resume. `show` prints
every trial and the best, and writes `<out>.json` and `<out>.png` (the optimisation history, or
the Pareto front of a multi-objective study). `optuna-dashboard <storage URL>` browses the same
study live.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import matplotlib
import yaml

from pipeline.errors import run_stage
from pipeline.experiments import dvc_executable, local_inputs
from pipeline.io import atomic_path, write_text
from pipeline.tune import (
    TrialRun,
    build_study,
    exp_command,
    exp_metrics,
    format_summary,
    load_spec,
    run_study,
    summary,
)

ROOT = Path(".")  # the DVC repository the study runs in: run from its root


def run(args: argparse.Namespace) -> None:
    params = yaml.safe_load(Path("params.yaml").read_text())
    spec = load_spec(args.spec, ROOT, params)
    spec = dataclasses.replace(spec, set={**spec.set, **local_inputs(args.data, args.wordnet)})
    dvc = dvc_executable()
    # The stages' `python` is this one (the project's environment), as `source .venv/bin/activate`
    # would make it.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    trial_run = TrialRun(command=lambda name, overrides: exp_command(name, overrides, dvc),
                         metrics=lambda name: exp_metrics(name, dvc), env={"PATH": path})
    study = run_study(spec, trial_run, params, args.trials)
    print(format_summary(summary(study, spec)))


def show(args: argparse.Namespace) -> None:
    spec = load_spec(args.spec, ROOT)
    study = build_study(spec)
    report = summary(study, spec)
    print(format_summary(report))
    out = Path(args.out or f"reports/tune_{spec.study}")
    write_text(json.dumps(report, indent=2) + "\n", out.with_suffix(".json"))
    if not any(t["state"] == "COMPLETE" for t in report["trials"]):
        return
    matplotlib.use("Agg")
    import optuna.visualization.matplotlib as plots

    ax = (plots.plot_optimization_history(study) if len(spec.objectives) == 1
          else plots.plot_pareto_front(study, target_names=spec.objectives))
    with atomic_path(out.with_suffix(".png")) as tmp:
        ax.figure.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    print(f"wrote {out}.json, {out}.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    r = commands.add_parser("run", help="run trials until the study has enough")
    r.add_argument("--spec", type=Path, required=True)
    r.add_argument("--data", type=Path, help="directory holding cs224n/ and amazon/")
    r.add_argument("--wordnet", type=Path, default=Path("data/nltk_data"),
                   help="the NLTK data dir EDA reads (scripts/setup_wordnet.sh writes it)")
    r.add_argument("--trials", type=int, help="finished trials to reach (default the spec's)")
    s = commands.add_parser("show", help="print the trials; write the JSON and the PNG")
    s.add_argument("--spec", type=Path, required=True)
    s.add_argument("--out", help="output path without suffix (default reports/tune_<study>)")
    args = parser.parse_args(argv)
    {"run": run, "show": show}[args.command](args)


if __name__ == "__main__":
    run_stage("tune", main)
