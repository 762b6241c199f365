"""The paper's tables as DVC experiments: queue them, then write the report.

    python scripts/experiments.py queue --scale cpu --data ../shared/data [--runs sc,sc_cs]
    dvc queue start            # runs the queue; `dvc queue status` to follow it
    python scripts/experiments.py report --scale cpu

`queue` adds one `dvc exp run --queue` per run of experiments/paper.yaml at the scale (named
`<scale>-<run>`, its members' train stages for the scale's seeds as targets); `--data` is a
directory holding cs224n/ and amazon/, passed to the experiments as absolute paths (as is
the WordNet dir of EDA). `report`
reads `dvc exp show --json` (or `--exp-show FILE`) and writes reports/paper_<scale>.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from pipeline.experiments import (
    ExperimentsError,
    build_report,
    collect,
    figure_rows,
    load_experiments,
    queue_command,
    report_markdown,
    to_json,
)
from pipeline.figures import report_figure
from pipeline.io import write_text


def queue(args: argparse.Namespace) -> None:
    spec = load_experiments(args.experiments)
    runs = args.runs.split(",") if args.runs else spec.scale_runs(args.scale)
    for run in runs:
        command = queue_command(spec, args.scale, run, args.data, args.wordnet)
        print(" ".join(command), flush=True)
        if not args.dry_run:
            subprocess.run(command, check=True)


def report(args: argparse.Namespace) -> None:
    spec = load_experiments(args.experiments)
    if args.exp_show:
        exp_show = json.loads(Path(args.exp_show).read_text())
    else:
        exp_show = json.loads(subprocess.run(
            ["dvc", "exp", "show", "--json", "--all-commits"], check=True, capture_output=True,
            text=True).stdout)
    results = collect(exp_show, args.scale)
    built = build_report(spec, args.scale, results)
    out = Path(args.out or f"reports/paper_{args.scale}")
    header = (f"## BEST-FiT's dev tables at the `{args.scale}` scale\n\n"
              f"Runs: `{args.experiments}` (scale `{args.scale}`); dev scores of the best epoch, "
              "mean ± sd over seeds.")
    write_text(to_json(built), out.with_suffix(".json"))
    write_text(report_markdown(built, header), out.with_suffix(".md"))
    report_figure(figure_rows(built), out.with_suffix(".png"))
    print(f"wrote {out}.md, .json, .png ({len(results)} runs with results)")


def main() -> None:
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
    r.add_argument("--out", help="output path without suffix (default reports/paper_<scale>)")
    args = parser.parse_args()
    try:
        (queue if args.command == "queue" else report)(args)
    except ExperimentsError as exc:
        sys.exit(f"experiments: {exc}")


if __name__ == "__main__":
    main()
