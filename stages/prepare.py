"""DVC stage `prepare`: every declared task's files -> validated parquet tables.

    python stages/prepare.py --source DIR_OR_URL --out data/prepared [--params params.yaml]

`--source` (dvc.yaml passes `data.source`) is a local directory or the URL base the CS224N files are
downloaded from, afresh on every run: DVC re-runs the stage when a file's ETag (URL) or content
(directory) changes, so no download is kept between runs to go stale. A download must match its
Content-Length and, for the files in `pipeline.data.CS224N_SHA256`, its pinned digest. A broken
file stops the stage with one line naming the file, line and field; nothing is written. Writes
`<task>_{train,dev,test}.parquet` for every declared task and `report.json` (rows read, kept,
rejected and why; rows of one split also in another) to `--out`; `data.train_rows` /
`data.dev_rows` cap splits to a sample drawn with `data.seed`.

Leakage: a train row whose id or example (the sentence; a pair in either order) is also in dev
or test, and a dev row also in test, is counted in `report.json` and named in a notice on
stderr. `data.leakage: keep` (the default) trains on them anyway: the CS224N splits are the
benchmark's own, the paper's and the leaderboard's figures are on them as they are, and the
real files do hold a few (17 STS train pairs are also in dev); `drop` removes them from train.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from pipeline.config import load_params
from pipeline.data import LEAKAGE_PAIRS, prepare, write_prepared
from pipeline.errors import run_stage


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="a directory or an http(s) URL base")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--params", default="params.yaml")
    return parser


def leakage_notices(report: dict, pairs: dict[str, bool]) -> list[str]:
    """One line per task and pair of splits sharing rows; ``pairs``: task → is a pair task."""
    policy = report["leakage"]["policy"]
    lines = []
    for task, counts in report["leakage"]["tasks"].items():
        example = "sentence pair (either order)" if pairs[task] else "sentence"
        for first, second in LEAKAGE_PAIRS:
            c = counts[f"{first}-{second}"]
            if not c["rows"]:
                continue
            ids = ", ".join(repr(i) for i in c["examples"])
            done = ("counted (only train rows are ever dropped)" if first != "train" else
                    "dropped from train (data.leakage: drop)" if policy == "drop" else
                    "kept in train (data.leakage: keep; `drop` removes them)")
            lines.append(f"prepare: notice: {task}: {c['rows']} {first} row(s) also in {second} "
                         f"(same id: {c['same_id']}, same {example}: {c['same_example']}), "
                         f"e.g. ids {ids}; {done}")
    return lines


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    params = load_params(args.params)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cs224n-") as download_dir:
        prepared = prepare(
            args.source,
            train_rows=params.data.train_rows,
            dev_rows=params.data.dev_rows,
            seed=params.data.seed,
            cache_dir=Path(download_dir),
            tasks=params.tasks,
            leakage=params.data.leakage,
        )
    # Every file was read and validated before this point: a malformed one leaves the
    # previous outputs as they were.
    write_prepared(prepared, args.out)
    report = prepared.report
    for task, splits in report["tasks"].items():
        for split, r in splits.items():
            note = " (file absent: empty table)" if r["missing"] else ""
            reasons = f" {r['rejected']}" if r["rejected"] else ""
            print(
                f"{task} {split:5}: read {r['rows_read']:6}  kept {r['rows_kept']:6}  "
                f"written {r['rows_written']:6}  rejected {r['rows_rejected']}{reasons}{note}"
            )
    for line in leakage_notices(report, {task: spec.pair for task, spec in params.tasks.items()}):
        print(line, file=sys.stderr)
    print(f"wrote {args.out}/ in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    run_stage("prepare", main)
