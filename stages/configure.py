"""DVC stage `configure@<member>`: the member's effective config, resolved from params.yaml.

    python stages/configure.py MEMBER --out data/members/MEMBER.json [--params params.yaml]

Writes the member of params `models:` as it trains — the global sections (`model`, `loss`,
`train`, `smart`, `pcgrad`, `mtl`) with the member's overrides merged in, its tasks' declarations,
the tasks that pick its best epoch and `augment.task` — as JSON. Each `train@<member>-<seed>`
stage depends on its member's file instead of on params.yaml's sections, so a change of a
shared section (`-S smart.lambda=8`) re-runs only the members whose effective config it
changes: this stage re-runs for every member, and DVC skips a train stage whose file came out
the same (e.g. `sst_single` with its own `smart.lambda: 0`). The train stage resolves the same
config from params.yaml with the same function.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from pipeline.config import MemberConfig, load_params, member_for_seed
from pipeline.errors import run_stage
from pipeline.io import write_text
from pipeline.mtl_methods import check_mtl


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("member")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--params", default="params.yaml")
    return parser


def resolved_config(member: MemberConfig, augment_task: str) -> dict:
    """The member's config as JSON-ready data, without the training seed (each train stage
    gets its seed on its command line), with the task its augmented rows are for."""
    config = dataclasses.asdict(member)
    del config["train"]["seed"]
    return {**config, "augment_task": augment_task}


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    params = load_params(args.params)
    member = member_for_seed(params, args.member, params.seeds[0])
    # here, not in load_params: every stage reads params, only training builds these
    check_mtl(member.mtl, f"params.yaml: models.{args.member}.mtl")
    text = json.dumps(resolved_config(member, params.augment.task), indent=2, sort_keys=True) + "\n"
    write_text(text, args.out)


if __name__ == "__main__":
    run_stage("configure", main)
