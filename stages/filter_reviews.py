"""DVC stage `filter_reviews`: Amazon reviews -> extra SST rows picked by MiniLM centroid
similarity, with SST's length and label distribution.

    python stages/filter_reviews.py --source PATH --prepared data/prepared --out data/augmented
                                    [--params params.yaml] [--no-progress]

Reads the review file or directory `--source` (dvc.yaml passes `augment.reviews.source`). A file
damaged partway (e.g. a truncated .gz) gives every line before the damage, with a warning on
stderr; a source that is missing, holds a file that does not open as what its name says, or gives
no usable review stops the stage (one line on stderr, exit 2) before anything is written. A
directory with no review file and nothing but notes (a README; the default `data/reviews`) is no
review source: the outputs are written with no rows and the report's `note` says nothing was
mined. Writes to `--out`:
`amazon.parquet` (SST columns + source, source_id, method = `augment.reviews.selection`,
score = cosine similarity (null for `selection: random`), asin, reviewer, file, line,
star_label), `reviews_report.json` (the selection, lines read, read errors, malformed lines by
reason and with their numbers, candidates, quotas and kept counts per label and length bin) and
`review_map.csv` (x, y, group, label: PCA of SST train and kept-review embeddings; no rows for
`selection: random`).
Embeddings are cached under `augment.reviews.cache_dir`/<encoder>.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

from pipeline.augment.reviews import (
    MinedReviews,
    cache_dir_for,
    mine_reviews,
    no_reviews,
    review_files,
    sentence_encoder,
)
from pipeline.config import load_params
from pipeline.data import load_prepared
from pipeline.errors import run_stage
from pipeline.io import atomic_path, write_json, write_parquet
from pipeline.model import resolve_backbone


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True,
                        help="a .jsonl[.gz] review file or a directory of them")
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def write_outputs(mined: MinedReviews, out: Path) -> None:
    write_parquet(mined.table, out / "amazon.parquet")
    write_json(mined.report, out / "reviews_report.json")
    with atomic_path(out / "review_map.csv") as tmp:
        mined.review_map.to_csv(tmp, index=False)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    params = load_params(args.params)
    cfg = params.augment.reviews
    sst = load_prepared(args.prepared, params.tasks[params.augment.task], "train")
    paths = review_files(args.source)
    if cfg.cache_dir is not None:
        # A declared (persistent) DVC out: it must exist even when nothing is embedded
        # (`selection: random`, no review source), or DVC fails the stage.
        Path(cfg.cache_dir).mkdir(parents=True, exist_ok=True)
    if not paths:
        mined = no_reviews(args.source, cfg.selection)
        write_outputs(mined, args.out)
        print(f"filter_reviews: {mined.report['note']}; wrote {args.out}/")
        return

    started = time.perf_counter()
    # `selection: random` embeds nothing: no encoder is loaded.
    encode = (sentence_encoder(resolve_backbone(cfg.encoder), cfg.device, cfg.batch_size,
                               progress=not args.no_progress)
              if cfg.selection == "centroid" else None)
    cache = cache_dir_for(cfg.cache_dir, cfg.encoder) if cfg.cache_dir is not None else None
    mined = mine_reviews(sst, paths, cfg, encode, cache, progress=not args.no_progress)
    seconds = time.perf_counter() - started

    write_outputs(mined, args.out)
    r = mined.report
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    damaged = (f" ({len(r['read_errors'])} of {len(r['files'])} files cut short by a read "
               "error, see the warnings)" if r["read_errors"] else "")
    print(
        f"filter_reviews: {r['lines']} lines{damaged}, {r['reviews']} reviews, "
        f"{r['malformed_lines']} malformed, {r['candidates']} candidates "
        f"({r['newly_embedded']['candidates']} newly embedded) -> kept per label "
        f"{r['kept_per_label']} (quota {r['quota_per_label']}) in {seconds:.1f} s "
        f"(peak RSS {rss_mib:.0f} MiB); wrote {args.out}/"
    )


if __name__ == "__main__":
    run_stage("filter_reviews", main)
