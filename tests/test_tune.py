"""The Optuna study over DVC experiments (pipeline/tune.py): the study file, the trial loop with
a stand-in for `dvc exp run` (a process that trains nothing but speaks the trial channel), pruning,
repeated values, resuming, two workers on one SQLite storage, and the trainer's side of the
channel."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import PARAMS_YAML

from pipeline.trial_channel import (
    STOPPED,
    TRIAL_DIR_ENV,
    read_epochs,
    report_epoch,
    stop_file,
    stop_requested,
)
from pipeline.tune import (
    TrialRun,
    TuneError,
    exp_command,
    format_summary,
    load_spec,
    run_study,
    summary,
    trial_name,
)

ROOT = Path(__file__).resolve().parents[1]
SPAWN = multiprocessing.get_context("spawn")

# A stand-in for one trial's `dvc exp run`: 3 epochs of the "multitask" member whose per-epoch
# score is x·epoch/3 (x the trial's `train.lr`), stopping after an epoch when the study asks;
# its "ensemble metrics" (overall = x, sst = 1 − x) land in <out>/<name>.json.
FAKE_RUN = """
import json, os, sys, time
from pathlib import Path
from pipeline.trial_channel import report_epoch, stop_requested
out, name, x = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
epochs = 0
for epoch in (1, 2, 3):
    report_epoch("multitask", 11, {"epoch": epoch, "select": x * epoch / 3})
    epochs = epoch
    time.sleep(0.2)  # the tuner polls every 0.01 s: its stop file comes in time, or late
    if epoch < 3 and stop_requested("multitask", 11):
        report_epoch("multitask", 11, {"stopped_after_epoch": epoch})
        break
(out / f"{name}.json").write_text(json.dumps({"overall": x, "sst_acc": 1 - x, "epochs": epochs}))
"""


def write_spec(tmp_path: Path, **changes) -> Path:
    spec = {"study": "s", "storage": "sqlite:///tune.db", "objectives": ["overall"],
            "trials": 4, "space": {"train.lr": {"low": 0.1, "high": 0.9}},
            "sampler": {"seed": 0}, **changes}
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def fake_run(tmp_path: Path) -> TrialRun:
    script = tmp_path / "fake_run.py"
    script.write_text(FAKE_RUN)
    return TrialRun(
        command=lambda name, o: [sys.executable, str(script), str(tmp_path), name,
                                 str(o["train.lr"])],
        metrics=lambda name: json.loads((tmp_path / f"{name}.json").read_text()),
        poll_seconds=0.01, env={"PYTHONPATH": str(ROOT)})


def test_the_committed_study_is_valid_params():
    params = yaml.safe_load(PARAMS_YAML.read_text())
    spec = load_spec(ROOT / "experiments" / "tune_cpu.yaml", ROOT / "runs-test-unused", params)
    assert spec.set["model.backbone"] == "minilm"  # from experiments/cpu_main.yaml
    assert spec.prune.member == "multitask" and spec.objectives == ["overall"]


@pytest.mark.parametrize(("changes", "message"), [
    ({"space": {}}, "space: required"),
    ({"space": {"train.lr": {"low": 2, "high": 1}}}, "low < high"),
    ({"space": {"train.lr": {"low": 0, "high": 1, "log": True}}}, "log range needs low > 0"),
    ({"space": {"train.lr": {"choices": []}}}, "expected a list"),
    ({"space": {"train.lr": {"low": 0.1, "high": 1, "scale": 2}}}, "unknown key(s) ['scale']"),
    ({"objectives": ["overall", "sst_acc"], "prune": {"member": "multitask"}},
     "single-objective"),
    ({"prune": {"member": "multitask", "pruner": "hyperband"}}, "expected median or"),
    ({"sampler_seed": 1}, "unknown key(s) ['sampler_seed']"),
])
def test_a_wrong_study_file_names_the_key(tmp_path, changes, message):
    with pytest.raises(TuneError, match="tune.yaml") as caught:
        load_spec(write_spec(tmp_path, **changes), tmp_path)
    assert message in str(caught.value)


def test_a_value_params_refuse_is_refused_before_any_trial(tmp_path):
    params = yaml.safe_load(PARAMS_YAML.read_text())
    path = write_spec(tmp_path, space={"mtl.aggregator": {"choices": [None, "adam"]}})
    with pytest.raises(TuneError, match=r"space.mtl.aggregator = 'adam'"):
        load_spec(path, tmp_path, params)


def test_each_trial_is_one_named_experiment_with_its_values(tmp_path):
    spec = load_spec(write_spec(tmp_path, set={"seeds": [11]}), tmp_path)
    assert spec.storage == f"sqlite:///{(tmp_path / 'tune.db').resolve()}"
    command = exp_command(trial_name("s", 7), {**spec.set, "train.lr": 2e-4, "mtl.aggregator":
                                                None})
    assert command == ["dvc", "exp", "run", "--temp", "--name", "s-007", "-S", "++seeds=[11]",
                       "-S", "++train.lr=0.0002", "-S", "++mtl.aggregator=null"]


def test_a_study_runs_prunes_and_records_its_trials(tmp_path):
    spec = load_spec(write_spec(tmp_path, trials=6, prune={
        "member": "multitask", "seed": 11, "n_startup_trials": 2, "n_warmup_steps": 0}),
        tmp_path)
    study = run_study(spec, fake_run(tmp_path), {})
    report = summary(study, spec)
    states = [t["state"] for t in report["trials"]]
    assert len(states) == 6 and states[:2] == ["COMPLETE", "COMPLETE"]  # the startup trials
    for t in report["trials"]:
        ran = json.loads((tmp_path / f"{t['experiment']}.json").read_text())
        x = t["params"]["train.lr"]
        assert t["overall"] == pytest.approx(x)  # the objective read back from its metrics
        if t["state"] == "PRUNED":  # stopped early: below the median at its first epoch
            # the run stops at the first epoch end after the pruner's call (a later one when
            # the stop file comes late), and the trial records both
            assert t["pruned_after_epoch"] <= t["stopped_after_epoch"] == ran["epochs"] < 3
            assert study.trials[t["number"]].intermediate_values
        else:
            assert ran["epochs"] == 3 and t["values"] == [pytest.approx(x)]
    assert "PRUNED" in states  # the seeded sampler draws values below the median
    best = study.best_trial
    assert best.value == max(t.value for t in study.trials if t.value is not None)


def test_a_resumed_study_runs_only_the_trials_it_lacks_and_repeats_none(tmp_path):
    spec = load_spec(write_spec(tmp_path, space={"train.lr": {"choices": [0.2, 0.7]}}),
                     tmp_path)
    run = fake_run(tmp_path)
    study = run_study(spec, run, {}, trials=2)
    assert len(study.trials) == 2
    study = run_study(spec, run, {}, trials=4)  # resumed from the SQLite storage
    trials = study.trials
    assert len(trials) == 4 and [t.number for t in trials] == [0, 1, 2, 3]
    ran = sorted(p.stem for p in tmp_path.glob("s-*.json"))
    # two values only: a repeated one takes the earlier trial's result instead of a run
    assert len(ran) == len({t.params["train.lr"] for t in trials}) <= 2
    for t in trials:
        if "same_as" in t.user_attrs:
            twin = trials[t.user_attrs["same_as"]]
            assert twin.params == t.params and twin.value == t.value
            assert f"s-{t.number:03d}" not in ran


def worker(spec_path: str, root: str) -> None:
    spec = load_spec(spec_path, root)
    run_study(spec, fake_run(Path(root)), {})


def test_two_workers_on_one_storage_share_the_study(tmp_path):
    path = write_spec(tmp_path, trials=6, space={"train.lr": {"low": 0.1, "high": 0.9}})
    load_spec(path, tmp_path)
    optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'tune.db'}",
                        direction="maximize")  # created before both start, as a user would
    workers = [SPAWN.Process(target=worker, args=(str(path), str(tmp_path))) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert [w.exitcode for w in workers] == [0, 0]
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'tune.db'}")
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers)) >= 6  # every trial its own number and experiment
    names = {t.user_attrs["experiment"] for t in study.trials}
    assert len(names) == len(numbers)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def test_a_failed_experiment_fails_its_trial_and_the_study_goes_on(tmp_path):
    spec = load_spec(write_spec(tmp_path, trials=2), tmp_path)
    run = fake_run(tmp_path)
    calls = []

    def failing_first(name, overrides):
        calls.append(name)
        if len(calls) == 1:
            return [sys.executable, "-c", "raise SystemExit(3)"]
        return run.command(name, overrides)

    study = run_study(spec, dataclasses.replace(run, command=failing_first), {})
    states = [t.state.name for t in study.trials]
    assert states == ["FAIL", "COMPLETE", "COMPLETE"]
    assert study.trials[0].user_attrs["experiment"] == "s-000"


def test_the_summary_says_where_a_pruned_trial_stopped():
    trial = {"number": 2, "state": "PRUNED", "params": {"train.lr": 1e-4}, "values": None,
             "pruned_after_epoch": 1, "stopped_after_epoch": 1}
    report = {"study": "s", "objectives": ["overall"], "trials": [trial], "best": []}
    line = format_summary(report).splitlines()[1]
    assert line.split() == ["#2", "PRUNED", "—", "train.lr=0.0001", "(pruned", "after",
                            "epoch", "1)"]
    trial["stopped_after_epoch"] = 2  # the stop file came after the run's next epoch began
    assert format_summary(report).splitlines()[1].endswith(
        "(pruned after epoch 1, stopped after epoch 2)")


def test_the_channel_reads_complete_lines_only(tmp_path, monkeypatch):
    monkeypatch.setenv(TRIAL_DIR_ENV, str(tmp_path))
    report_epoch("m", 3, {"epoch": 1, "select": 0.5})
    (tmp_path / "m-3.jsonl").open("a").write('{"epoch": 2, "sel')  # a line being written
    assert read_epochs(tmp_path, "m", 3) == [{"epoch": 1, "select": 0.5}]
    monkeypatch.delenv(TRIAL_DIR_ENV)
    report_epoch("m", 3, {"epoch": 9})  # not a trial: nothing written
    assert len(read_epochs(tmp_path, "m", 3)) == 1


def test_a_stop_is_the_pruned_runs_own(tmp_path, monkeypatch):
    """The study prunes from one member's records: the trial's other members and seeds, which
    the same `dvc exp run` trains after it (and DVC's run cache keeps), train in full."""
    monkeypatch.setenv(TRIAL_DIR_ENV, str(tmp_path))
    stop_file(tmp_path, "multitask", 11).touch()
    assert stop_requested("multitask", 11)
    assert not stop_requested("sst_single", 11) and not stop_requested("multitask", 12)
    monkeypatch.delenv(TRIAL_DIR_ENV)
    assert not stop_requested("multitask", 11)  # not a trial


def test_the_trainer_reports_each_epoch_and_stops_when_asked(tiny_bert, tmp_path, monkeypatch):
    from test_train import member_for, synthetic_frames

    from pipeline.batching import tokenize_member_data
    from pipeline.evaluate import selection_score
    from pipeline.model import load_tokenizer
    from pipeline.train import Trainer

    channel = tmp_path / "channel"
    channel.mkdir()
    monkeypatch.setenv(TRIAL_DIR_ENV, str(channel))
    member = member_for(tiny_bert, epochs=3)
    tokenizer = load_tokenizer(member.model.backbone)
    data = tokenize_member_data(synthetic_frames(12, 3), member, tokenizer)
    trainer = Trainer(member, data, tokenizer, tmp_path / "ck")
    original = trainer.train_epoch

    def stop_after_first(epoch, progress=None):
        logged = original(epoch, progress)
        stop_file(channel, member.name, member.train.seed).touch()  # pruned in epoch 1
        return logged

    trainer.train_epoch = stop_after_first
    result = trainer.fit()
    assert [h["epoch"] for h in result.history] == [1] and result.stopped_after_epoch == 1
    records = read_epochs(channel, member.name, member.train.seed)
    assert [r.get("epoch") for r in records] == [1, None]
    assert records[1] == {STOPPED: 1}
    dev = {k.removeprefix("dev/"): v for k, v in result.history[0].items()
           if k.startswith("dev/")}
    assert records[0]["select"] == pytest.approx(selection_score(member, dev))


def test_a_broken_setup_stops_the_study_after_three_failures(tmp_path):
    spec = load_spec(write_spec(tmp_path, trials=5), tmp_path)
    run = dataclasses.replace(fake_run(tmp_path),
                              command=lambda name, o: [sys.executable, "-c", "raise SystemExit(1)"])
    with pytest.raises(TuneError, match="3 trials in a row failed"):
        run_study(spec, run, {})
    study = optuna.load_study(study_name="s", storage=spec.storage)
    assert [t.state.name for t in study.trials] == ["FAIL"] * 3
