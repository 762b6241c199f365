"""DVC stage `prepare`: the CS224N files named by `data.source` -> validated parquet tables.

    python stages/prepare.py [--params params.yaml] [--out data/prepared]

Writes `{sst,qqp,sts}_{train,dev,test}.parquet` and `report.json` (rows read, kept, rejected and
why) to `--out`; files fetched from a URL source are cached in `data/raw/cs224n/`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pipeline.config import load_params
from pipeline.data import DataError, prepare

CACHE_DIR = Path("data/raw/cs224n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", type=Path, default=Path("data/prepared"))
    args = parser.parse_args()
    params = load_params(args.params)
    started = time.perf_counter()
    try:
        report = prepare(
            params.data.source,
            args.out,
            train_rows=params.data.train_rows,
            seed=params.train.seed,
            cache_dir=CACHE_DIR,
        )
    except DataError as exc:
        raise SystemExit(f"prepare: {exc}") from exc
    for task, splits in report["tasks"].items():
        for split, r in splits.items():
            note = " (file absent: empty table)" if r["missing"] else ""
            reasons = f" {r['rejected']}" if r["rejected"] else ""
            print(
                f"{task} {split:5}: read {r['rows_read']:6}  kept {r['rows_kept']:6}  "
                f"written {r['rows_written']:6}  rejected {r['rows_rejected']}{reasons}{note}"
            )
    print(f"wrote {args.out}/ in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
