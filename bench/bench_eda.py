"""EDA throughput on the full SST train set (8,544 sentences × num_aug), on one core.

    python bench/bench_eda.py [--num-aug 8] [--repeat 5] [--cpu 0] [--nltk-data data/nltk_data]

Pins the process to one CPU, loads WordNet through nltk once (timed apart: it is a one-off
~4 s read of the index files), then per repeat builds a fresh synonym memo and augments the
whole table, so every timing includes the WordNet look-ups (once per word type). Prints the
load time, each repeat's time and the median, as sentences/s (input) and rows/s (output).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from pipeline.augment.eda import augment_table
from pipeline.augment.wordnet import Synonyms, load_wordnet
from pipeline.config import EdaConfig
from pipeline.data import read_task_split

ROOT = Path(__file__).resolve().parents[1]
CS224N = ROOT.parent / "shared" / "data" / "cs224n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cs224n", type=Path, default=CS224N)
    parser.add_argument("--nltk-data", type=Path, default=ROOT / "data" / "nltk_data")
    parser.add_argument("--num-aug", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cpu", type=int, default=None, help="core to pin to (default: any one)")
    args = parser.parse_args()

    cpu = args.cpu if args.cpu is not None else min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    sst, _ = read_task_split(args.cs224n, "sst", "train")
    cfg = EdaConfig(num_aug=args.num_aug, alpha=args.alpha)

    started = time.perf_counter()
    wordnet = load_wordnet(args.nltk_data)
    print(f"WordNet load (nltk, once): {time.perf_counter() - started:.2f} s")

    times = []
    for i in range(args.repeat):
        started = time.perf_counter()
        synonyms = Synonyms(wordnet)
        table, _ = augment_table(sst, cfg, synonyms)
        times.append(time.perf_counter() - started)
        print(
            f"run {i + 1}: {times[-1]:.2f} s  {len(sst) / times[-1]:7.0f} sentences/s  "
            f"{len(table) / times[-1]:7.0f} rows/s  ({len(synonyms)} word types looked up)"
        )
    median = statistics.median(times)
    print(
        f"EDA on cpu {cpu}: {len(sst)} sentences x {args.num_aug} -> {len(table)} rows; "
        f"median {median:.2f} s = {len(sst) / median:.0f} sentences/s, "
        f"{len(table) / median:.0f} rows/s (best {min(times):.2f} s; load avg "
        f"{os.getloadavg()[0]:.1f})"
    )


if __name__ == "__main__":
    main()
