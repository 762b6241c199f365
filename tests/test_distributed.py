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

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import PARAMS_YAML, load_stage
from metric_bounds import assert_scores_follow_predictions
from test_train import member_for, synthetic_frames

import pipeline.smart
from pipeline.batching import tokenize_member_data
from pipeline.config import ConfigError, MtlConfig
from pipeline.device import check_processes, resolve_device
from pipeline.distributed import (
    SINGLE,
    GradientSync,
    World,
    init_world,
    launched_by_torchrun,
    shard,
    torchrun_command,
)
from pipeline.errors import EXIT_USER_ERROR, UserError, run_stage
from pipeline.evaluate import outputs_to_frame, score_predictions
from pipeline.model import load_tokenizer
from pipeline.tasks import task_spec
from pipeline.train import CHECKPOINT_DIR, Trainer

# 11 rows at batch 5: batches of 5, 5 and 1 — shards of 3 + 2 and of 1 + 0 (an empty one).
ROWS, BATCH = 11, 5
VARIANTS = ("plain", "pcgrad", "smart", "upgrad_uw", "random_dwa", "mean_famo")
# TorchJD's aggregator and loss weighting of each per-task-gradient variant (pipeline/aggregation)
MTL_VARIANTS = {"upgrad_uw": MtlConfig(aggregator="upgrad", weighting="uw", weighting_lr=0.05),
                "random_dwa": MtlConfig(aggregator="random", weighting="dwa"),
                "mean_famo": MtlConfig(aggregator="mean", weighting="famo")}
# How far two runs' dev predictions (values, class probabilities) may differ; their scores may
# then differ as much as those predictions allow (metric_bounds).
PREDICTIONS = 1e-4


def input_noise(embeds: torch.Tensor, generator) -> torch.Tensor:
    """SMART's starting noise as a function of each token's own embedding: the same whichever
    rank an example lands on (its random draw is per rank by design)."""
    return torch.sin(1000.0 * embeds)


def variant_member(backbone: Path, variant: str, **train):
    # A PCGrad (or mtl) step takes a batch of each of the 3 tasks: 9 batches make 3 steps, one
    # of them on the 1-example batches.
    steps = 9 if variant == "pcgrad" or variant in MTL_VARIANTS else 3
    member = member_for(backbone, epochs=2, batches_per_epoch=steps, batch_size=BATCH,
                        num_threads=1, checkpoint_minutes=None, **train)
    member = dataclasses.replace(
        member, model=dataclasses.replace(
            member.model, head=dataclasses.replace(member.model.head, dropout=0.0)))
    if variant == "pcgrad":
        member = dataclasses.replace(
            member, pcgrad=dataclasses.replace(member.pcgrad, enabled=True))
    if variant in MTL_VARIANTS:
        member = dataclasses.replace(member, mtl=MTL_VARIANTS[variant])
    if variant == "smart":
        # Jiang et al.'s projected ascent normalises each example's gradient, so it does not
        # depend on how many examples share a batch; smart-pytorch's `normalize` step scales
        # with 1/batch (its ℓ_s is a batch mean), so per rank it differs slightly, by design.
        member = dataclasses.replace(member, smart=dataclasses.replace(
            member.smart, lambda_=2.0, perturbation="project", epsilon=1.0, step_size=1.0,
            noise_var=1e-2))
    return member


class RecordingTrainer(Trainer):
    """A trainer that keeps what each dev evaluation predicted and scored."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.evaluations: list[tuple[dict, dict]] = []

    def _evaluate(self, sets):
        frames, scores = super()._evaluate(sets)
        self.evaluations.append((scores, {t: f.to_dict("list") for t, f in frames.items()}))
        return frames, scores


def fit(backbone: Path, variant: str, checkpoints: Path, world: World = SINGLE, **train) -> dict:
    """A run's trained parameters, history and best scores, and each dev evaluation's scores
    and predictions: its epochs' (by epoch; a resumed run has those after its checkpoint), then
    the trained model's (``dev``)."""
    torch.set_num_threads(1)
    member = variant_member(backbone, variant, **train)
    tokenizer = load_tokenizer(member.model.backbone)
    data = tokenize_member_data(synthetic_frames(ROWS, 3), member, tokenizer)
    trainer = RecordingTrainer(member, data, tokenizer, checkpoints, world=world)
    result = trainer.fit()
    trainer.evaluate("dev")
    *epochs, dev = trainer.evaluations
    first = len(result.history) - len(epochs) + 1
    return {"state": trainer.model.state_dict(), "history": result.history,
            "best": result.best_metrics, "best_epoch": result.best_epoch,
            "epochs": dict(enumerate(epochs, start=first)), "dev": dev}


def join(rank: int, size: int, port: int) -> World:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(size), LOCAL_RANK=str(rank))
    return init_world("cpu")


def two_process_worker(rank: int, size: int, port: int, backbone: str, out: str) -> None:
    """On 2 processes: the three variants, a gradient sync by hand, then a run that dies right
    after its first checkpoint within an epoch, as a kill leaves it (last: it ends the
    process)."""
    world = join(rank, size, port)
    smart_noise = pipeline.smart.initial_noise
    pipeline.smart.initial_noise = input_noise
    for variant in VARIANTS:
        run = fit(Path(backbone), variant, Path(out) / f"ck-{variant}", world)
        if world.is_main:
            torch.save(run, Path(out) / f"{variant}.pt")
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
        run = fit(Path(backbone), "plain", Path(out), world, checkpoint_steps=2)
        torch.save(run, Path(out) / f"resumed{rank}.pt")  # every rank's
    finally:
        world.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(worker, size: int, *args) -> None:
    mp.start_processes(worker, args=(size, free_port(), *args), nprocs=size, join=True,
                       start_method="spawn")


def assert_same_fit(got: dict, want: dict) -> None:
    """The same parameters and training losses (to float rounding), the same dev predictions
    to ``PREDICTIONS``, and dev scores as close as those predictions make them
    (``metric_bounds``: not a fixed tolerance, which Pearson r of flat predictions exceeds)."""
    for name, value in want["state"].items():
        torch.testing.assert_close(got["state"][name], value, atol=1e-5, rtol=1e-4, msg=name)
    for mine, theirs in zip(got["history"], want["history"], strict=True):
        for key in ("train_loss/sst", "train_loss/qqp", "train_loss/sts"):
            assert mine[key] == pytest.approx(theirs[key], abs=1e-5), key
        weights = [k for k in theirs if k.startswith(("mtl/weight/", "mtl/loss_scale/"))]
        for key in weights:  # every rank combined the same reduced rows as one process
            assert mine[key] == pytest.approx(theirs[key], abs=1e-5), key
    for run in (got, want):  # its history and best scores are what its predictions scored
        for epoch, (scores, _) in run["epochs"].items():
            assert scored(scores) <= run["history"][epoch - 1].items()
        assert scored(run["best"]) <= run["history"][run["best_epoch"] - 1].items()
    assert got["best_epoch"] == want["best_epoch"]
    assert got["epochs"] and got["epochs"].keys() <= want["epochs"].keys()
    specs = {task: task_spec(task) for task in want["dev"][1]}
    for epoch, evaluation in got["epochs"].items():
        assert_scores_follow_predictions(evaluation, want["epochs"][epoch], specs, PREDICTIONS)
    assert_scores_follow_predictions(got["dev"], want["dev"], specs, PREDICTIONS)


def scored(scores: dict) -> set:
    """Scores as the history records them (``dev/<name>``)."""
    return {(f"dev/{name}", value) for name, value in scores.items()}


def synthetic_fit(outputs: dict, labels: dict) -> dict:
    """A one-epoch fit whose dev evaluation predicted ``outputs`` (raw head outputs)."""
    ids = [f"dev{i}" for i in range(ROWS)]
    frames = {task: outputs_to_frame(task, ids, raw) for task, raw in outputs.items()}
    scores = score_predictions(frames, labels)
    evaluation = (scores, {task: frame.to_dict("list") for task, frame in frames.items()})
    return {"state": {"w": torch.ones(3)}, "best": scores, "best_epoch": 1,
            "history": [{"epoch": 1, "train_loss/sst": 1.6, "train_loss/qqp": 0.7,
                         "train_loss/sts": 3.0, **{f"dev/{k}": v for k, v in scores.items()}}],
            "epochs": {1: evaluation}, "dev": evaluation}


def test_scores_differ_as_far_as_their_predictions_allow_and_no_further():
    """The machine-dependent failure: parameters and predictions within their tolerances,
    STS r 1.3e-5 apart. A barely spread STS head (a tiny random BERT's) is turned that far by
    predictions 3e-6 apart; a score its predictions do not allow still fails."""
    rng = np.random.default_rng(0)
    labels = {"sst": rng.integers(0, 5, ROWS), "qqp": rng.integers(0, 2, ROWS),
              "sts": rng.uniform(0, 5, ROWS)}
    outputs = {"sst": rng.normal(size=(ROWS, 5)), "qqp": rng.normal(size=ROWS),
               "sts": 2.5 + 1e-3 * rng.normal(size=ROWS)}
    want = synthetic_fit(outputs, labels)
    got = synthetic_fit({**outputs, "sts": outputs["sts"] + 3e-6 * rng.uniform(-1, 1, ROWS)},
                        labels)
    assert got["best"]["sts_pearson"] != pytest.approx(want["best"]["sts_pearson"], abs=1e-5)
    assert_same_fit(got, want)
    for name, off in (("sts_pearson", 0.05), ("overall", 0.05), ("sst_acc", 1 / ROWS),
                      ("qqp_acc", 1 / ROWS)):
        scores = {**got["best"], name: got["best"][name] + off}  # not what was predicted
        with pytest.raises(AssertionError):
            assert_scores_follow_predictions((scores, got["dev"][1]), want["dev"],
                                             {t: task_spec(t) for t in outputs}, PREDICTIONS)
    shifted = {**outputs, "sts": outputs["sts"] + 2e-4}  # predictions beyond PREDICTIONS
    with pytest.raises(AssertionError):
        assert_same_fit(synthetic_fit(shifted, labels), want)


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
        one = fit(still_bert, variant, tmp_path / f"one-{variant}")
        assert_same_fit(torch.load(two_processes / f"{variant}.pt", weights_only=False), one)
        state = one["state"]
        assert sum(not torch.equal(value, initial[name]) for name, value in state.items()
                   ) > len(state) // 2  # they trained: most tensors moved
        if variant == "pcgrad":
            assert one["history"][0]["pcgrad/steps"] == 3


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
        got = fit(still_bert, "plain", tmp_path / "run", checkpoint_steps=2)
    # the same run uninterrupted, on one process
    assert_same_fit(got, fit(still_bert, "plain", tmp_path / "whole", checkpoint_steps=2))


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
    params.write_text(PARAMS_YAML.read_text()
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
    assert_same_fit(fit(still_bert, variant, tmp_path / "accum", grad_accum=3), whole)


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


# -- which GPU a rank takes (CI has none: torch's view of the GPUs is patched) ---------------
@pytest.fixture
def four_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_a_rank_takes_the_gpu_of_its_local_rank_counted_from_the_named_one(four_gpus):
    assert resolve_device("cuda:1", local_rank=2) == torch.device("cuda", 3)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cuda", local_rank=3) == torch.device("cuda", 3)
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cpu", local_rank=3) == torch.device("cpu")
    with pytest.raises(UserError, match=r"'cuda:2' for local rank 2: cuda:4 does not exist; "
                                        r"this process sees 4 GPU"):
        resolve_device("cuda:2", local_rank=2)


def test_processes_beyond_the_visible_gpus_are_a_config_error(four_gpus, monkeypatch):
    check_processes("cuda:1", 3)  # cuda:1 … cuda:3
    check_processes("auto", 4)
    check_processes("cpu", 16)  # gloo processes need no GPU
    with pytest.raises(ConfigError, match=r"^train.processes: 4 processes from train.device "
                                          r"cuda:1 take cuda:1…cuda:4 .* but 4 GPU\(s\) are "
                                          r"visible") as error:
        check_processes("cuda:1", 4)
    assert "\n" not in str(error.value)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")  # what a job runner hands a child
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match="but 2 GPU"):
        check_processes("auto", 3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    check_processes("auto", 8)  # no GPU: auto is the CPU


@pytest.mark.parametrize(("device", "local_rank", "gpu"),
                         [("cuda:2", 1, 3), ("auto", 0, 0), ("cuda", 0, 0), ("auto", 2, 2)])
def test_nccl_binds_the_gpu_the_trainer_runs_on(four_gpus, monkeypatch, device, local_rank, gpu):
    import pipeline.distributed as distributed

    bound, joined = [], []
    monkeypatch.setattr(torch.cuda, "set_device", bound.append)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group",
                        lambda backend, **kw: joined.append((backend, kw["device_id"])))
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 3)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 4)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(name, "0")
    world = init_world(device)
    assert world == World(3, 4, local_rank)
    # what the trainer runs on (a bare `cuda` is the current device, cuda:0 here)
    trainer_device = resolve_device(device, world.local_rank)
    assert trainer_device.type == "cuda" and (trainer_device.index or 0) == gpu
    # set_device and init_process_group take an indexed device only
    assert bound == [torch.device("cuda", gpu)]
    assert joined == [("nccl", torch.device("cuda", gpu))]


def test_the_stage_refuses_more_processes_than_gpus_before_launching(four_gpus, monkeypatch,
                                                                     tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    stage = load_stage("train")
    monkeypatch.setattr(stage.os, "execv", lambda *a: pytest.fail("launched torchrun"))
    params = tmp_path / "params.yaml"
    params.write_text(PARAMS_YAML.read_text()
                      .replace("  processes: 1 ", "  processes: 2 "))
    with pytest.raises(SystemExit) as done:
        run_stage("train", stage.main, ["multitask", "--seed", "11", "--prepared", "p",
                                        "--augmented", "a", "--out", "o", "--checkpoints", "c",
                                        "--params", str(params)])
    assert done.value.code == EXIT_USER_ERROR
    assert capsys.readouterr().err.splitlines() == [
        "train: error: train.processes: 2 processes from train.device auto take cuda:0…cuda:1 "
        "(local rank r on cuda:0+r), but 1 GPU(s) are visible; lower train.processes or set "
        "CUDA_VISIBLE_DEVICES"]
