"""DVC stage `label_reviews`: relabel the mined reviews few-shot with an LLM (BEST-FiT: Llama-3-8B).

    python stages/label_reviews.py --reviews data/augmented/amazon.parquet
        --sst-train data/prepared/sst_train.parquet --out data/augmented/reviews_labeled.parquet
        --report data/augmented/label_report.json --confusion data/augmented/label_confusion.csv
        [--params params.yaml]

Reads `augment.llm`; labels a seeded sample of `max_reviews` reviews (the paper: 5,000). Writes
the kept reviews as extra SST training rows (source `llm`), a report (counts, agreement with the
star-derived labels) and one `actual,predicted` row per labeled review for DVC's confusion plot.
Labels are appended to `<augment.llm.cache_dir>/labels.jsonl` as they are produced, so a killed
run resumes where it stopped. With `augment.llm.enabled: false`, or no review to label (no
review source: `--reviews` has no rows), the table and the confusion rows are empty (right
schema), no model is loaded and the report's `note` says why: the DAG still runs without a GPU or
reviews.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from pipeline.augment.llm_label import (
    LabelCache,
    confusion_rows,
    empty_table,
    label_reviews,
    load_tokenizer,
    make_scorer,
)
from pipeline.augment.llm_prompt import build_template, encode_template, select_shots
from pipeline.config import load_params
from pipeline.errors import run_stage
from pipeline.io import write_json, write_parquet, write_text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("--reviews", "--sst-train", "--out", "--report", "--confusion"):
        parser.add_argument(name, type=Path, required=True)
    parser.add_argument("--params", default="params.yaml")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    cfg = load_params(args.params).augment.llm
    started = time.perf_counter()
    reviews = pd.read_parquet(args.reviews)
    # The cache dir is a declared (persistent) output, so it exists even when nothing is cached.
    Path(cfg.cache_dir).mkdir(parents=True, exist_ok=True)

    skipped = []  # why nothing is labelled
    if not cfg.enabled:
        skipped.append("augment.llm.enabled is false (set it to true to relabel: vLLM on a GPU, "
                       "or backend: transformers)")
    if reviews.empty:
        skipped.append(f"no reviews to label ({args.reviews} has no rows)")
    if skipped:
        note = f"{'; '.join(skipped)}: no review was relabeled and the table is empty"
        write_parquet(empty_table(), args.out)
        write_json({"enabled": cfg.enabled, "note": note, "counts": {"total": len(reviews),
                    "labeled": 0, "kept": 0}}, args.report)
        write_text(confusion_rows(empty_table()).to_csv(index=False), args.confusion)
        print(f"label_reviews: {note}")
        return

    tokenizer = load_tokenizer(cfg.model)
    shots = select_shots(pd.read_parquet(args.sst_train), cfg.shots, cfg.seed,
                         where=str(args.sst_train))
    template = build_template(tokenizer, shots, chat=cfg.prompt_format == "chat")
    prompt = encode_template(tokenizer, template, cfg.max_review_tokens)
    scorer = make_scorer(cfg, prompt)
    result = label_reviews(
        reviews, tokenizer=tokenizer, prompt=prompt, scorer=scorer,
        cache=LabelCache(Path(cfg.cache_dir) / "labels.jsonl"), model=cfg.model,
        batch_size=cfg.batch_size, max_reviews=cfg.max_reviews, seed=cfg.seed,
        min_confidence=cfg.min_confidence,
    )

    write_parquet(result.kept, args.out)
    write_json({"enabled": True, "shots": len(shots), "prompt_tokens": len(prompt.prefix_ids),
                **result.report}, args.report)
    write_text(confusion_rows(result.labeled).to_csv(index=False), args.confusion)
    counts = result.report["counts"]
    accuracy = result.report["agreement_with_stars"]["labeled"]["accuracy"]
    print(
        f"label_reviews ({scorer.name}, {cfg.model}): {counts['total']} reviews, "
        f"{counts['empty_skipped']} empty, {counts['truncated']} truncated, "
        f"{counts['not_sampled']} not sampled, {counts['labeled']} labeled "
        f"({counts['cached_hits']} from cache), {counts['kept']} kept"
        f"{'' if cfg.min_confidence is None else f' at p >= {cfg.min_confidence}'}; "
        f"agreement with stars "
        f"{'n/a' if accuracy is None else f'{accuracy:.3f}'}; "
        f"{time.perf_counter() - started:.1f} s"
    )


if __name__ == "__main__":
    run_stage("label_reviews", main)
