"""DVC stage `augment_eda`: the prepared SST train set -> EDA-augmented rows (Wei & Zou 2019).

    python stages/augment_eda.py --prepared data/prepared --out data/augmented
                                 [--params params.yaml]

Writes `eda.parquet` (SST columns + source, source_id, method, score) and `eda_report.json`
(rows made per operation, slots left empty, word types looked up) to `--out`. Needs WordNet:
`scripts/setup_wordnet.sh` puts it in data/nltk_data, where `augment.eda.wordnet_dir` points.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pipeline.augment.eda import augment_table
from pipeline.augment.wordnet import Synonyms, load_wordnet
from pipeline.config import load_params
from pipeline.data import load_prepared
from pipeline.errors import run_stage
from pipeline.io import write_json, write_parquet


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--params", default="params.yaml")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    params = load_params(args.params)
    cfg = params.augment.eda
    sst = load_prepared(args.prepared, params.tasks[params.augment.task], "train")
    wordnet = load_wordnet(cfg.wordnet_dir)
    synonyms = Synonyms(wordnet)
    started = time.perf_counter()
    table, report = augment_table(sst, cfg, synonyms)
    seconds = time.perf_counter() - started
    report["word_types_looked_up"] = len(synonyms)
    write_parquet(table, args.out / "eda.parquet")
    write_json(report, args.out / "eda_report.json")
    made = ", ".join(f"{op} {r['made']}" for op, r in report["per_operation"].items())
    print(
        f"eda: {len(sst)} sentences -> {len(table)} rows ({made}) in {seconds:.2f} s "
        f"({len(sst) / seconds:.0f} sentences/s); wrote {args.out}/eda.parquet"
    )


if __name__ == "__main__":
    run_stage("augment_eda", main)
