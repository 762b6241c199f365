"""A batch split over ranks or micro-batches makes the update of the whole batch.

Data parallelism on torch.distributed (gloo, 2 CPU processes): with dropout off and fp32, two
processes sharing a global batch train the parameters one process trains (to ~1e-5) for a plain,
a PCGrad and a SMART member, through unequal and empty shards; sharded evaluation gathers the
same predictions; a 2-process run killed mid-epoch resumes on 2 processes or on 1. Gradient
accumulation does the same within a process; fp16 trains with a loss scale it checkpoints."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import load_stage
from test_train import member_for, synthetic_frames

import pipeline.smart
from pipeline.batching import tokenize_member_data
from pipeline.distributed import (
    SINGLE,
    GradientSync,
    World,
    init_world,
    launched_by_torchrun,
    shard,
    torchrun_command,
)
from pipeline.model import load_tokenizer
from pipeline.train import CHECKPOINT_DIR, Trainer

# 11 rows at batch 5: batches of 5, 5 and 1 — shards of 3 + 2 and of 1 + 0 (an empty one).
ROWS, BATCH = 11, 5
VARIANTS = ("plain", "pcgrad", "smart")


def input_noise(embeds: torch.Tensor, generator) -> torch.Tensor:
    """SMART's starting noise as a function of each token's own embedding: the same whichever
    rank an example lands on (its random draw is per rank by design)."""
    return torch.sin(1000.0 * embeds)


def variant_member(backbone: Path, variant: str, **train):
    # A PCGrad step takes a batch of each of the 3 tasks: 9 batches make 3 steps, one of them
    # on the 1-example batches.
    steps = 9 if variant == "pcgrad" else 3
    member = member_for(backbone, epochs=2, batches_per_epoch=steps, batch_size=BATCH,
                        num_threads=1, checkpoint_minutes=None, **train)
    member = dataclasses.replace(
        member, model=dataclasses.replace(
            member.model, head=dataclasses.replace(member.model.head, dropout=0.0)))
    if variant == "pcgrad":
        member = dataclasses.replace(
            member, pcgrad=dataclasses.replace(member.pcgrad, enabled=True))
    if variant == "smart":
        # Jiang et al.'s projected ascent normalises each example's gradient, so it does not
        # depend on how many examples share a batch; smart-pytorch's `normalize` step scales
        # with 1/batch (its ℓ_s is a batch mean), so per rank it differs slightly, by design.
        member = dataclasses.replace(member, smart=dataclasses.replace(
            member.smart, lambda_=2.0, perturbation="project", epsilon=1.0, step_size=1.0,
            noise_var=1e-2))
    return member


def fit(backbone: Path, variant: str, checkpoints: Path, world: World = SINGLE, **train):
    torch.set_num_threads(1)
    member = variant_member(backbone, variant, **train)
    tokenizer = load_tokenizer(member.model.backbone)
    data = tokenize_member_data(synthetic_frames(ROWS, 3), member, tokenizer)
    trainer = Trainer(member, data, tokenizer, checkpoints, world=world)
    result = trainer.fit()
    dev, _ = trainer.evaluate("dev")
    return trainer.model.state_dict(), result, dev


def join(rank: int, size: int, port: int) -> World:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(size), LOCAL_RANK=str(rank))
    return init_world("cpu")


def save_fit(path: Path, state, result, dev) -> None:
    torch.save({"state": state, "history": result.history, "best": result.best_metrics,
                "dev": {t: f.to_dict("list") for t, f in dev.items()}}, path)


def two_process_worker(rank: int, size: int, port: int, backbone: str, out: str) -> None:
    """On 2 processes: the three variants, a gradient sync by hand, then a run that dies right
    after its first checkpoint within an epoch, as a kill leaves it (last: it ends the
    process)."""
    world = join(rank, size, port)
    smart_noise = pipeline.smart.initial_noise
    pipeline.smart.initial_noise = input_noise
    for variant in VARIANTS:
        state, result, dev = fit(Path(backbone), variant, Path(out) / f"ck-{variant}", world)
        if world.is_main:
            save_fit(Path(out) / f"{variant}.pt", state, result, dev)
    pipeline.smart.initial_noise = smart_noise

    a, b, c = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    a.grad = torch.full((2,), float(rank + 1))  # both ranks: summed
    if rank == 1:
        b.grad = torch.tensor([5.0, 7.0])  # one rank only (an empty shard on the other)
    GradientSync([a, b, c], world)()  # c: no rank has a grad
    torch.save({"a": a.grad, "b": b.grad, "c": c.grad}, Path(out) / f"grads{rank}.pt")

    save = Trainer._save_checkpoint

    def save_then_die(self, epoch, progress=None):
        save(self, epoch, progress)
        if progress is not None:
            world.close()
            os._exit(0)

    Trainer._save_checkpoint = save_then_die
    fit(Path(backbone), "plain", Path(out) / "killed", world, checkpoint_steps=2)


def resumed_worker(rank: int, size: int, port: int, backbone: str, out: str) -> None:
    world = join(rank, size, port)
    try:
        state, result, dev = fit(Path(backbone), "plain", Path(out), world, checkpoint_steps=2)
        save_fit(Path(out) / f"resumed{rank}.pt", state, result, dev)  # every rank's
    finally:
        world.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(worker, size: int, *args) -> None:
    mp.start_processes(worker, args=(size, free_port(), *args), nprocs=size, join=True,
                       start_method="spawn")


def assert_same_fit(got: dict, state, result, dev) -> None:
    for name, value in state.items():
        torch.testing.assert_close(got["state"][name], value, atol=1e-5, rtol=1e-4, msg=name)
    assert got["best"] == pytest.approx(result.best_metrics, abs=1e-5)
    for mine, theirs in zip(got["history"], result.history, strict=True):
        for key in ("train_loss/sst", "train_loss/qqp", "train_loss/sts", "dev/overall"):
            assert mine[key] == pytest.approx(theirs[key], abs=1e-5), key
    for task, frame in dev.items():
        assert got["dev"][task]["id"] == frame["id"].tolist()  # gathered in the split's order
        assert got["dev"][task]["pred"] == pytest.approx(frame["pred"].tolist(), abs=1e-4)


@pytest.fixture(scope="module")
def two_processes(still_bert, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("two-processes")
    spawn(two_process_worker, 2, str(still_bert), str(out))
    return out


def test_two_processes_train_the_parameters_of_one(still_bert, two_processes, tmp_path,
                                                   monkeypatch):
    monkeypatch.setattr(pipeline.smart, "initial_noise", input_noise)
    member = variant_member(still_bert, "plain")
    tokenizer = load_tokenizer(member.model.backbone)
    data = tokenize_member_data(synthetic_frames(ROWS, 3), member, tokenizer)
    initial = {k: v.clone() for k, v in
               Trainer(member, data, tokenizer, tmp_path / "init").model.state_dict().items()}
    for variant in VARIANTS:
        state, result, dev = fit(still_bert, variant, tmp_path / f"one-{variant}")
        got = torch.load(two_processes / f"{variant}.pt", weights_only=False)
        assert_same_fit(got, state, result, dev)
        assert sum(not torch.equal(value, initial[name]) for name, value in state.items()
                   ) > len(state) // 2  # they trained: most tensors moved
        if variant == "pcgrad":
            assert result.history[0]["pcgrad/steps"] == 3


def test_gradient_sync_sums_and_keeps_untouched_parameters_without_grad(two_processes):
    for rank in range(2):
        grads = torch.load(two_processes / f"grads{rank}.pt")
        assert grads["a"].tolist() == [3.0, 3.0]
        assert grads["b"].tolist() == [5.0, 7.0]
        assert grads["c"] is None  # AdamW skips it, as in one process


@pytest.mark.parametrize("resume_on", [2, 1])
def test_a_two_process_run_killed_mid_epoch_resumes(still_bert, two_processes, tmp_path,
                                                    resume_on):
    shutil.copytree(two_processes / "killed", tmp_path / "run")
    saved = json.loads((tmp_path / "run" / CHECKPOINT_DIR / "state.json").read_text())
    assert saved["epoch"] == 0 and saved["in_epoch"]["steps_done"] == 2
    if resume_on == 2:
        spawn(resumed_worker, 2, str(still_bert), str(tmp_path / "run"))
        got = torch.load(tmp_path / "run" / "resumed0.pt", weights_only=False)
        other = torch.load(tmp_path / "run" / "resumed1.pt", weights_only=False)
        def scores(history):  # each rank's own clock aside
            return [{k: v for k, v in epoch.items() if k != "seconds"} for epoch in history]

        assert scores(other["history"]) == scores(got["history"])
        assert other["best"] == got["best"]
    else:
        state, result, dev = fit(still_bert, "plain", tmp_path / "run", checkpoint_steps=2)
        got = {"state": state, "history": result.history, "best": result.best_metrics,
               "dev": {t: f.to_dict("list") for t, f in dev.items()}}
    # the same run uninterrupted, on one process
    assert_same_fit(got, *fit(still_bert, "plain", tmp_path / "whole", checkpoint_steps=2))


def test_shards_split_a_batch_contiguously():
    index = torch.arange(5).numpy()
    parts = [shard(index, World(rank, 2)).tolist() for rank in range(2)]
    assert parts == [[0, 1, 2], [3, 4]]
    assert [shard(index[:1], World(rank, 2)).tolist() for rank in range(2)] == [[0], []]
    assert shard(index, World()).tolist() == [0, 1, 2, 3, 4]


def test_the_stage_launches_torchrun_for_train_processes(monkeypatch, tmp_path):
    assert not launched_by_torchrun()
    assert torchrun_command(2, "stages/train.py", ["multitask", "--seed", "1"])[1:] == [
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "stages/train.py", "multitask", "--seed", "1"]
    stage = load_stage("train")
    calls = []

    def execv(path, args):
        calls.append(args)
        raise SystemExit(0)  # execv does not return

    monkeypatch.setattr(stage.os, "execv", execv)
    params = tmp_path / "params.yaml"
    params.write_text((Path(__file__).resolve().parents[1] / "params.yaml").read_text()
                      .replace("  processes: 1 ", "  processes: 2 "))
    argv = ["multitask", "--seed", "11", "--prepared", "p", "--augmented", "a", "--out", "o",
            "--checkpoints", "c", "--params", str(params)]
    with pytest.raises(SystemExit) as done:
        stage.main(argv)
    assert done.value.code == 0
    assert calls == [torchrun_command(2, stage.__file__, argv)]


@pytest.mark.parametrize("variant", ["plain", "pcgrad"])
def test_micro_batches_make_the_update_of_the_whole_batch(still_bert, tmp_path, variant):
    whole = fit(still_bert, variant, tmp_path / "whole")
    state, result, dev = fit(still_bert, variant, tmp_path / "accum", grad_accum=3)
    got = {"state": state, "history": result.history, "best": result.best_metrics,
           "dev": {t: f.to_dict("list") for t, f in dev.items()}}
    assert_same_fit(got, *whole)


def test_fp16_trains_with_a_loss_scale_that_resumes(still_bert, tmp_path):
    member = variant_member(still_bert, "plain", precision="fp16")
    tokenizer = load_tokenizer(member.model.backbone)
    data = tokenize_member_data(synthetic_frames(ROWS, 3), member, tokenizer)
    trainer = Trainer(member, data, tokenizer, tmp_path)
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    result = trainer.fit()
    moved = [k for k, v in trainer.model.state_dict().items() if not torch.equal(v, initial[k])]
    assert len(moved) > len(initial) // 2  # steps were taken, not all skipped
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values())
    assert all(math.isfinite(v) for v in result.best_metrics.values())
    scale = trainer.scaler.state_dict()
    # 2^16 to start, halved on an overflow (its step skipped, the count of clean steps reset),
    # not yet grown (after 2000 clean steps): 6 clean steps or a halved scale
    assert scale["scale"] in {2.0 ** k for k in range(10, 17)}
    assert (scale["scale"] == 2.0 ** 16) == (scale["_growth_tracker"] == 6)
    saved = json.loads((tmp_path / CHECKPOINT_DIR / "state.json").read_text())
    assert saved["scaler"] == scale
    resumed = Trainer(member, data, tokenizer, tmp_path)
    assert resumed._load_checkpoint() == (2, None)
    assert resumed.scaler.state_dict() == scale


def test_how_a_step_is_computed_is_not_part_of_the_run(still_bert):
    from pipeline.checkpoint import config_fingerprint

    member = variant_member(still_bert, "plain")
    tokenizer = load_tokenizer(member.model.backbone)
    data = tokenize_member_data(synthetic_frames(ROWS, 3), member, tokenizer)
    same = [dataclasses.replace(member, train=dataclasses.replace(member.train, **how))
            for how in ({"processes": 4}, {"grad_accum": 2}, {"compile": True})]
    assert {config_fingerprint(m, data) for m in [member, *same]} == {
        config_fingerprint(member, data)}
    other = dataclasses.replace(member, train=dataclasses.replace(member.train, lr=1e-3))
    assert config_fingerprint(other, data) != config_fingerprint(member, data)
