"""DVC stage `train@<member>-<seed>`: train one member of params `models:` with one training
seed (an entry of the top-level `seeds:`) and write its outputs.

    python stages/train.py MEMBER --seed SEED --prepared data/prepared
        --augmented data/augmented --out models/MEMBER/seed_SEED
        --checkpoints checkpoints/MEMBER/seed_SEED [--params params.yaml]

Its params dep in dvc.yaml is the member's effective config, `data/members/MEMBER.json`
(stages/configure.py, resolved from params.yaml as here), so a variant that leaves the member's
config as it was does not re-run it.

Writes `--out`/{model/, predictions/, metrics.json, train_report.json, live/}, and the model card
`--out`/model/README.md (this seed's dev scores); keeps resumable checkpoints in
`--checkpoints` (a persistent DVC output), marked once the outputs are committed: run again
after that (forced, or changed code), the stage trains afresh. With `train.processes` > 1 it
relaunches itself on that many processes under torchrun; under a torchrun of one's own (several
nodes) it joins the launcher's world. Only rank 0 writes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import pandas as pd

from pipeline.aggregation import MTL_STEPS_FILE
from pipeline.config import load_params, member_for_seed
from pipeline.data import member_frames
from pipeline.device import check_processes
from pipeline.distributed import SINGLE, World, init_world, launched_by_torchrun, torchrun_command
from pipeline.errors import UserError, run_stage
from pipeline.export import export_member
from pipeline.io import atomic_outputs, recover_outputs, write_json, write_parquet, write_text
from pipeline.model_card import write_cards
from pipeline.pcgrad import PCGRAD_STEPS_FILE
from pipeline.seeds import METRICS_FILE, TRAIN_REPORT_FILE, split_run_metrics
from pipeline.train import (
    TASK_BEST_DIR,
    TrainedMember,
    discard_shipped,
    mark_shipped,
    train_member,
)


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


def write_outputs(trained: TrainedMember, out_dir: Path) -> None:
    """``out_dir``/{model/ (with its card), predictions/, metrics.json (scores, epochs,
    times), train_report.json (counts, how the epoch was picked)}, as one set: a kill
    never leaves this run's model beside an earlier run's predictions."""
    with atomic_outputs(out_dir, ["model", "predictions", METRICS_FILE, TRAIN_REPORT_FILE]
                        ) as tmp:
        shutil.copytree(trained.best_dir / "model", tmp["model"])
        shutil.copytree(trained.best_dir / "predictions", tmp["predictions"])
        for task, frame in trained.test_predictions.items():
            write_parquet(frame, tmp["predictions"] / f"{task}_test.parquet")
        for task, splits in trained.task_predictions.items():  # train.select_per_task
            for split, frame in splits.items():
                write_parquet(frame, tmp["predictions"] / f"{task}_{split}.parquet")
        metrics, report = split_run_metrics(trained.metrics)
        write_json(metrics, tmp[METRICS_FILE])
        write_json(report, tmp[TRAIN_REPORT_FILE])
        # This seed's scores; the ensemble stage's cards give mean ± sd over seeds.
        write_cards(tmp["model"], trained.member, trained.metrics, export_member(tmp["model"]))


def run(member, frames, out_dir: Path, checkpoint_dir: Path, live=None,
        world: World = SINGLE) -> dict:
    """Train ``member`` and write its outputs (rank 0 alone, under data parallelism); returns
    its metrics."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: not a directory; the output directory must be one "
                        f"(move the file away)")
    if world.is_main:
        recover_outputs(out_dir)  # a set whose commit a kill interrupted is finished first
        # A run whose outputs were committed is not resumed: the stage runs again because it is
        # forced or its code changed, and trains afresh. A kill before the commit resumes.
        discard_shipped(checkpoint_dir)
    world.barrier()  # before any rank reads the checkpoint dir
    trained = train_member(member, frames, checkpoint_dir, live, world)
    if not world.is_main:
        return trained.metrics
    if live is not None and trained.result.pcgrad_steps:
        name = MTL_STEPS_FILE if member.mtl.enabled else PCGRAD_STEPS_FILE
        write_text(pd.DataFrame(trained.result.pcgrad_steps).to_csv(sep="\t", index=False),
                   Path(live.dir) / name)
    write_outputs(trained, out_dir)
    mark_shipped(checkpoint_dir, out_dir)
    # The per-task snapshots served only the predictions now written (select_per_task).
    shutil.rmtree(checkpoint_dir / TASK_BEST_DIR, ignore_errors=True)
    return trained.metrics


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    params = load_params(args.params)
    member = member_for_seed(params, args.member, args.seed)
    if member.train.processes > 1 and not launched_by_torchrun():
        check_processes(member.train.device, member.train.processes)
        # train.processes: this stage on that many local processes, through torchrun, in this
        # process's place (a signal to the stage reaches torchrun, which stops its workers).
        command = torchrun_command(member.train.processes, __file__, argv)
        os.execv(command[0], command)
    world = init_world(member.train.device)
    frames = member_frames(member, args.prepared, args.augmented, params.augment.task)
    try:
        if args.no_live or not world.is_main:
            metrics = run(member, frames, args.out, args.checkpoints, world=world)
        else:
            # Imported here: a machine without DVC (a bare GPU box) trains with --no-live.
            from dvclive import Live

            with Live(dir=str(args.out / "live"), dvcyaml=None, save_dvc_exp=False) as live:
                metrics = run(member, frames, args.out, args.checkpoints, live, world)
    finally:
        world.close()
    if world.is_main:
        print({k: v for k, v in metrics.items() if not isinstance(v, dict)})


if __name__ == "__main__":
    run_stage("train", main)
