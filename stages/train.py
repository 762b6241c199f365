"""DVC stage `train@<member>`: train one member of params `models:` and write its outputs.

    python stages/train.py MEMBER [--params params.yaml]

Writes models/MEMBER/{model/, predictions/, metrics.json, live/}; keeps resumable checkpoints in
checkpoints/MEMBER/ (a persistent DVC output).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dvclive import Live

from pipeline.config import load_params
from pipeline.train import member_frames, run_member


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("member")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", default="data/prepared", type=Path)
    parser.add_argument("--augmented", default="data/augmented", type=Path)
    parser.add_argument("--models", default="models", type=Path)
    parser.add_argument("--checkpoints", default="checkpoints", type=Path)
    args = parser.parse_args()

    params = load_params(args.params)
    if args.member not in params.models:
        parser.error(f"{args.params}: models has no member {args.member!r}; "
                     f"known: {sorted(params.models)}")
    member = params.models[args.member]
    frames = member_frames(member, args.prepared, args.augmented)
    out_dir = args.models / member.name
    with Live(dir=str(out_dir / "live"), dvcyaml=None, save_dvc_exp=False) as live:
        metrics = run_member(member, frames, out_dir, args.checkpoints / member.name, live)
    print({k: v for k, v in metrics.items() if not isinstance(v, dict)})


if __name__ == "__main__":
    main()
