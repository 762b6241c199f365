"""DVC stage `ensemble`: average every seed of the members named in params `ensemble:` per task.

    python stages/ensemble.py --prepared data/prepared --models models --metrics metrics.json
        --predictions predictions --submission submission --plots plots --cards cards
        [--params params.yaml]

Reads `--models`/<member>/seed_<seed>/{predictions/, metrics.json} for every seed of params
`seeds`. Writes `--metrics` (the ensemble's dev scores, the members per task, and under `seeds`
each member's per-seed scores with their mean, sd and n), `--plots`/<task>_confusion.csv
(classifiers) and <task>_scatter.csv (regressions), `--predictions` (the ensembled dev/test
tables), `--submission` (CS224N format; file names and headers from params `tasks`) and
`--cards`/<member>.md: each member's model card with the mean ± sd over its seeds (each seed's
own card is in its model dir, written by its train stage). The outputs are committed as one
set: a failure or a kill midway leaves the old ones together. A task that declares a test file
but has no test rows (the file was absent when prepare ran) gets a warning on stderr: its test
submission holds a header alone.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pandas as pd

from pipeline.config import load_params, member_for_seed
from pipeline.data import REPORT_FILE, load_prepared
from pipeline.ensemble import (
    average_predictions,
    empty_test_splits,
    ensemble_metrics,
    labels_for,
    read_member_predictions,
    seed_report,
    submission_name,
    submission_text,
)
from pipeline.errors import UserError, run_stage
from pipeline.export import read_exports
from pipeline.io import atomic_outputs, write_json, write_parquet
from pipeline.model_card import model_card
from pipeline.seeds import read_run, seed_dir

OUTPUTS = ("metrics", "predictions", "submission", "plots", "cards")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("--prepared", "--models", *(f"--{key}" for key in OUTPUTS)):
        parser.add_argument(name, type=Path, required=True)
    parser.add_argument("--params", default="params.yaml")
    return parser


def output_names(args: argparse.Namespace) -> tuple[Path, dict[str, str]]:
    """The directory holding every output, and each output's path in it (``atomic_outputs``
    commits them as one set there); two outputs must not share a path nor nest."""
    paths = {key: os.path.abspath(getattr(args, key)) for key in OUTPUTS}
    for key, path in paths.items():
        for other, inner in paths.items():
            if other != key and (inner == path or inner.startswith(path + os.sep)):
                raise UserError(f"--{other} {getattr(args, other)} is inside --{key} "
                                f"{getattr(args, key)}: every output needs a path of its own")
    devices = {key: _device(os.path.dirname(path)) for key, path in paths.items()}
    if len(set(devices.values())) > 1:  # a rename cannot cross file systems
        raise UserError("the outputs are on different file systems ("
                        + ", ".join(f"--{key} {getattr(args, key)}" for key in paths)
                        + "): they are committed as one set by renames, so put them on one")
    base = os.path.commonpath([os.path.dirname(path) for path in paths.values()])
    return Path(base), {key: os.path.relpath(path, base) for key, path in paths.items()}


def _device(path: str) -> int:
    """The file system of ``path``'s nearest existing ancestor (an output dir may be new)."""
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return os.stat(path).st_dev


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    params = load_params(args.params)
    specs = params.tasks
    directory, outputs = output_names(args)
    preds = {split: {task: average_predictions(specs[task], {
        f"{member}/seed_{seed}": read_member_predictions(args.models, member, seed, task, split)
        for member in members for seed in params.seeds})
        for task, members in params.ensemble.items()} for split in ("dev", "test")}
    dev = {task: load_prepared(args.prepared, specs[task], "dev") for task in params.ensemble}
    metrics = ensemble_metrics(preds["dev"], dev, specs)
    metrics["members"] = {task: members for task, members in params.ensemble.items()}
    members = list(dict.fromkeys(m for names in params.ensemble.values() for m in names))
    metrics["seeds"] = seed_report(args.models, members, params.seeds)

    # One set: a failure or a kill before the commit leaves every old output as it was, never
    # new metrics beside old predictions (pipeline/io.py).
    with atomic_outputs(directory, list(outputs.values())) as staged:
        out = {key: staged[name] for key, name in outputs.items()}
        write_json(metrics, out["metrics"])
        out["predictions"].mkdir()
        for split, tables in preds.items():
            for task, frame in tables.items():
                write_parquet(frame, out["predictions"] / f"{task}_{split}.parquet")
        out["submission"].mkdir()
        for split, tables in preds.items():
            for task, frame in tables.items():
                (out["submission"] / submission_name(specs[task], split)).write_text(
                    submission_text(specs[task], frame))
        out["plots"].mkdir()
        # DVC plots: (label, prediction) per dev row of every task — a confusion matrix for
        # a classifier (sst_confusion.csv), a scatter for a regression (sts_scatter.csv).
        for task, frame in preds["dev"].items():
            name, truth_column, pred_column = (
                (f"{task}_scatter.csv", "true_similarity", "predicted_similarity")
                if specs[task].kind == "regression" else
                (f"{task}_confusion.csv", "actual", "predicted"))
            pd.DataFrame({truth_column: labels_for(specs[task], frame, dev[task]),
                          pred_column: frame["pred"].to_numpy()}
                         ).to_csv(out["plots"] / name, index=False)
        out["cards"].mkdir()
        for member in members:
            # The member as its first seed was trained, with that run's metrics (row counts).
            run = seed_dir(args.models, member, params.seeds[0])
            card = model_card(member_for_seed(params, member, params.seeds[0]),
                              read_run(run),
                              metrics["seeds"][member], read_exports(run / "model"))
            (out["cards"] / f"{member}.md").write_text(card)
    for task in empty_test_splits(specs, preds["test"]):
        print(f"ensemble: warning: {task}: no test rows: its declared test file "
              f"{specs[task].data.test} was absent when prepare ran "
              f"({args.prepared / REPORT_FILE}), so "
              f"{args.submission / submission_name(specs[task], 'test')} holds no prediction; a "
              f"leaderboard scores every missing id as wrong", file=sys.stderr)
    print({k: v for k, v in metrics.items() if not isinstance(v, dict)})


if __name__ == "__main__":
    run_stage("ensemble", main)
