"""DVC stage `train@<member>-<seed>`: train one member of params `models:` with one training
seed (an entry of the top-level `seeds:`) and write its outputs.

    python stages/train.py MEMBER --seed SEED --prepared data/prepared
        --augmented data/augmented --out models/MEMBER/seed_SEED
        --checkpoints checkpoints/MEMBER/seed_SEED [--params params.yaml]

Writes `--out`/{model/, predictions/, metrics.json, live/}, and the model card
`--out`/model/README.md (this seed's dev scores); keeps resumable checkpoints in
`--checkpoints` (a persistent DVC output).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import load_params, member_for_seed
from pipeline.data import member_frames
from pipeline.errors import run_stage
from pipeline.train import run_member


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("member")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--augmented", type=Path, required=True,
                        help="the directory of the augmented tables a member may use")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoints", type=Path, required=True)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--no-live", action="store_true",
                        help="no DVCLive per-epoch log (for machines without dvclive)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    params = load_params(args.params)
    member = member_for_seed(params, args.member, args.seed)
    frames = member_frames(member, args.prepared, args.augmented, params.augment.task)
    if args.no_live:
        metrics = run_member(member, frames, args.out, args.checkpoints)
    else:
        # Imported here: a machine without DVC (a bare GPU box) trains with --no-live.
        from dvclive import Live

        with Live(dir=str(args.out / "live"), dvcyaml=None, save_dvc_exp=False) as live:
            metrics = run_member(member, frames, args.out, args.checkpoints, live)
    print({k: v for k, v in metrics.items() if not isinstance(v, dict)})


if __name__ == "__main__":
    run_stage("train", main)
