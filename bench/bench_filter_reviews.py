"""filter_reviews at two sizes: the real Amazon samples and a synthetic file `--scale` times larger
made from them; throughput and peak RSS, to show that memory does not grow with the file.

    python bench/bench_filter_reviews.py [--scale 50] [--per-label 100] [--max-candidates 300]
                                         [--cache-dir data/cache/embeddings/minilm]

The synthetic file (gzip JSON lines, both formats as in the samples) holds `scale` reviews per
sample review: copy k of a review keeps its fields and star rating, with its text rebuilt from as
many sentences as it had, drawn at random from reviews of the same rating, so texts are distinct
and lengths realistic; one line in 5,000 is cut short (malformed). Each measurement runs in a
fresh process, which reports its own peak RSS:

- `stream`: the streaming pass alone (read, parse, clean, length/label reservoir sampling);
- `full`: the whole mining step with all-MiniLM-L6-v2 on CPU, candidate embedding capped by
  `--max-candidates` per label. Each size starts from the same embedding cache holding only the
  SST train embeddings (copied from `--cache-dir`, embedded there first when missing), so both
  embed all their candidates.

Prints lines, reviews, seconds, reviews/s and peak RSS per size and mode.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def make_synthetic(samples: list[Path], scale: int, out: Path, seed: int = 0) -> int:
    """Write ``scale`` synthetic reviews per sample review to gzip file ``out``; return lines."""
    rng = random.Random(seed)
    reviews = [
        json.loads(line)
        for path in samples
        for line in path.read_text().splitlines()
        if line.strip()
    ]
    pool: dict[float, list[str]] = {}
    for review in reviews:
        pool.setdefault(review["overall"], []).extend(
            s for s in _SENTENCE_END.split(review.get("reviewText", "")) if s
        )
    lines = 0
    with gzip.open(out, "wt", compresslevel=1) as fh:
        for k in range(scale):
            for review in reviews:
                n = max(1, len(_SENTENCE_END.split(review.get("reviewText", ""))))
                copy = dict(review, reviewerID=f"{review.get('reviewerID', '')}-{k}")
                copy["reviewText"] = " ".join(rng.choices(pool[review["overall"]], k=n))
                line = json.dumps(copy)
                lines += 1
                fh.write((line[: len(line) // 2] if lines % 5000 == 0 else line) + "\n")
    return lines


def child(mode: str, source: Path, args: argparse.Namespace) -> None:
    """Run one measurement in this process and print it as one JSON line."""
    import numpy as np

    from pipeline.augment.reviews import (
        LengthLabelTargets,
        embed_cached,
        mine_reviews,
        plan_quotas,
        review_files,
        sample_candidates,
        sentence_encoder,
    )
    from pipeline.config import ReviewsConfig
    from pipeline.data import read_task_split

    sst, _ = read_task_split(args.cs224n, "sst", "train")
    cfg = replace(ReviewsConfig(), per_label=args.per_label,
                  max_candidates_per_label=args.max_candidates)
    if mode != "stream":
        # Imported here so that the stream measurement's RSS holds no torch.
        from pipeline.model import resolve_backbone

        encode = sentence_encoder(resolve_backbone("minilm"), "cpu", cfg.batch_size,
                                  progress=False)
    if mode == "seed":
        # Copy SST's embeddings from the project cache (embedding any missing) into `source`.
        texts = list(sst.sentence)
        emb, _ = embed_cached(texts, encode, args.cache_dir)
        by_text = dict(zip(texts, emb, strict=True))
        embed_cached(texts, lambda ts: np.stack([by_text[t] for t in ts]), source)
        return
    paths = review_files(source)
    if mode == "stream":
        targets = LengthLabelTargets.from_sst(list(sst.sentence), sst.label.to_numpy(),
                                              cfg.length_bins)
        _, _, caps = plan_quotas(targets, cfg)
        started = time.perf_counter()
        _, stats, counts = sample_candidates(paths, targets, caps, cfg.chunk_size, cfg.seed,
                                             progress=False)
        seconds = time.perf_counter() - started
        result = {"reviews": stats.total("reviews"), "malformed": stats.total("malformed")}
    else:
        started = time.perf_counter()
        mined = mine_reviews(sst, paths, cfg, encode, args.work_cache, progress=False)
        seconds = time.perf_counter() - started
        r = mined.report
        result = {"reviews": r["reviews"], "malformed": r["malformed_lines"],
                  "candidates": r["candidates"], "kept": len(mined.table),
                  "embedded_new": sum(r["newly_embedded"].values())}
    result |= {"seconds": seconds,
               "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print(json.dumps(result))


def measure(mode: str, source: Path, args: argparse.Namespace, work_cache: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--source", str(source),
           "--per-label", str(args.per_label), "--max-candidates", str(args.max_candidates),
           "--cache-dir", str(args.cache_dir), "--work-cache", str(work_cache),
           "--cs224n", str(args.cs224n)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1]) if mode != "seed" else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amazon", type=Path, default=SHARED / "amazon")
    parser.add_argument("--cs224n", type=Path, default=SHARED / "cs224n")
    parser.add_argument("--scale", type=int, default=50)
    parser.add_argument("--per-label", type=int, default=100)
    parser.add_argument("--max-candidates", type=int, default=300)
    parser.add_argument("--cache-dir", type=Path,
                        default=ROOT / "data" / "cache" / "embeddings" / "minilm")
    parser.add_argument("--modes", default="stream,full")
    parser.add_argument("--child", choices=["stream", "full", "seed"], default=None)
    parser.add_argument("--work-cache", type=Path, default=None)
    parser.add_argument("--source", type=Path, default=None)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.source, args)
        return

    samples = sorted(args.amazon.glob("*.jsonl"))
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / f"synthetic_x{args.scale}.jsonl.gz"
        started = time.perf_counter()
        lines = make_synthetic(samples, args.scale, big)
        print(f"made {big.name}: {lines} lines, {big.stat().st_size / 2**20:.1f} MiB gzip, "
              f"in {time.perf_counter() - started:.1f} s")
        seeded = Path(tmp) / "sst-cache"
        modes = args.modes.split(",")
        if "full" in modes:
            measure("seed", seeded, args, seeded)
        for mode in modes:
            for name, source in (("sample x1", args.amazon), (f"synthetic x{args.scale}", big)):
                work_cache = Path(tmp) / f"cache-{mode}-{source.name}"
                if mode == "full":
                    shutil.copytree(seeded, work_cache)
                r = measure(mode, source, args, work_cache)
                extra = (f", {r['candidates']} candidates, {r['embedded_new']} newly embedded, "
                         f"{r['kept']} kept" if mode == "full" else "")
                print(f"{mode:6} {name:14}: {r['reviews']:7} reviews ({r['malformed']} malformed)"
                      f" in {r['seconds']:6.1f} s = {r['reviews'] / r['seconds']:7.0f} reviews/s,"
                      f" peak RSS {r['peak_rss_mib']:6.0f} MiB{extra}")


if __name__ == "__main__":
    main()
