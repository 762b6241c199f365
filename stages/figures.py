"""DVC stage `figures`: the project's plots and the paper's analysis figures as PNG files.

    python stages/figures.py --plots plots --augmented data/augmented --models models
        --prepared data/prepared --embedding-member MEMBER --out figures

Writes to `--out` (PNG, readable offline): sst_confusion, sts_scatter (the ensemble's dev
plots), review_map, label_confusion (the augmentation stages' plots), dev_curves (every run's
per-epoch dev metrics), train_dev (train vs dev per epoch, paper Figure 3), sst_embeddings (SST
dev embeddings of MEMBER's first saved model, PCA, paper Figure 5) and pcgrad_steps_<run> for
every run trained with PCGrad (paper Figure 4). A figure whose input is empty is skipped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from pipeline import figures
from pipeline.data import load_prepared
from pipeline.device import resolve_device
from pipeline.errors import run_stage
from pipeline.io import atomic_path
from pipeline.model import MEMBER_CONFIG_FILE
from pipeline.pcgrad import PCGRAD_STEPS_FILE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plots", type=Path, required=True)
    parser.add_argument("--augmented", type=Path, required=True)
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--embedding-member", required=True)
    parser.add_argument("--out", type=Path, required=True)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)

    def table(path: Path) -> pd.DataFrame:
        return pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",")

    with atomic_path(args.out) as out:
        out.mkdir()
        drawn, skipped = [], []

        def draw(name: str, data: pd.DataFrame, plot, *extra) -> None:
            if data.empty:
                skipped.append(name)
                return
            plot(data, out / f"{name}.png", *extra)
            drawn.append(name)

        draw("sst_confusion", table(args.plots / "sst_confusion.csv"), figures.confusion_figure,
             "SST dev, ensemble")
        draw("sts_scatter", table(args.plots / "sts_scatter.csv"), figures.scatter_figure)
        draw("review_map", table(args.augmented / "review_map.csv"), figures.review_map_figure)
        draw("label_confusion", table(args.augmented / "label_confusion.csv"),
             figures.confusion_figure, "LLM label (predicted) vs star label (actual)")
        dev = figures.read_live_metrics(args.models, "dev")
        draw("dev_curves", dev, figures.curves_figure)
        train = figures.read_live_metrics(args.models, "train")
        draw("train_dev", train, lambda t, path: figures.train_dev_figure(t, dev, path))
        for steps in sorted(args.models.glob(f"*/**/live/{PCGRAD_STEPS_FILE}")):
            run = steps.parent.parent.relative_to(args.models).as_posix().replace("/", "_")
            draw(f"pcgrad_steps_{run}", table(steps), figures.pcgrad_steps_figure)

        saved = sorted((args.models / args.embedding_member).glob(f"**/{MEMBER_CONFIG_FILE}"))
        if not saved:
            parser.error(f"{args.models / args.embedding_member}: no saved model "
                         f"({MEMBER_CONFIG_FILE}) of member {args.embedding_member!r}")
        model_dir = saved[0].parent
        sst_dev = load_prepared(args.prepared, "sst", "dev")
        vectors = figures.sentence_embeddings(model_dir, sst_dev,
                                              device=str(resolve_device("auto")))
        run = model_dir.parent.relative_to(args.models).as_posix()
        figures.embedding_figure(figures.pca_2d(vectors), sst_dev["label"].to_numpy(int),
                                 out / "sst_embeddings.png", f"SST dev embeddings, {run} (PCA)")
        drawn.append("sst_embeddings")
    print(f"wrote {args.out}/: {', '.join(drawn)}" + (
        f"; skipped (no data): {', '.join(skipped)}" if skipped else ""))


if __name__ == "__main__":
    run_stage("figures", main)
