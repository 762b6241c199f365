"""Tuning as tracked experiments: an Optuna study whose every trial is one DVC experiment.

A study is declared in a YAML file (``experiments/tune_cpu.yaml``): ranges and choices of
``params.yaml`` keys (``space``), the objective(s) read from the trial's ensemble metrics
(``objectives``: one score, maximised; several: a Pareto front, Optuna's multi-objective
samplers), fixed overrides for every trial (``set``), the storage (SQLite by default, or any
Optuna RDB URL such as ``postgresql://…`` for workers on several machines), and pruning.

Each trial runs ``dvc exp run --temp --name <study>-<number> -S key=value …``: a DVC experiment
of the workspace's params with the trial's values set, in a temporary copy (so that several
workers run at once beside the user's workspace), visible in ``dvc exp show`` and reproducible
with ``dvc exp apply``. Pruning (Optuna's median or successive-halving pruner, single objective)
reads the per-epoch dev scores the trial's training runs write to the side channel of
``pipeline/trial_channel.py``; a pruned trial's runs end after the current epoch and the trial is
recorded as pruned. A trial whose values equal a finished trial's is not run again: it takes
that trial's result (``same_as``). Workers on one storage share the study (trial numbers are
the storage's); a worker killed mid-trial leaves it RUNNING until its heartbeat expires, when
the next worker marks it failed and queues its values again (``RetryFailedTrialCallback``), so
a killed study resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml

from pipeline.errors import UserError
from pipeline.experiments import apply_overrides, flatten, load_overrides, override_args
from pipeline.trial_channel import STOPPED, TRIAL_DIR_ENV, read_epochs, stop_file

HEARTBEAT_SECONDS, GRACE_SECONDS = 60, 180
POLL_SECONDS = 5.0
FAILURES_IN_A_ROW = 3


class TuneError(UserError):
    """The study file is inconsistent, or a trial's experiment could not be read."""


@dataclass(frozen=True)
class Dimension:
    """One params key's range (``low``/``high``, ``log``, ``step``; int when both bounds are)
    or its ``choices``."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple | None = None

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        if all(isinstance(v, int) for v in (self.low, self.high, self.step or 1)):
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1,
                                     log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)


@dataclass(frozen=True)
class Pruning:
    member: str
    seed: int | None = None  # None: the first of the trial's seeds
    metric: str = "select"   # the epoch record's key: select (train.select_by's score), dev/<m>
    pruner: str = "median"   # median | successive_halving
    n_startup_trials: int = 2
    n_warmup_steps: int = 1


@dataclass(frozen=True)
class TuneSpec:
    study: str
    storage: str
    objectives: list[str]
    space: list[Dimension]
    trials: int
    set: dict[str, Any] = field(default_factory=dict)
    prune: Pruning | None = None
    sampler_seed: int | None = None

    @property
    def directions(self) -> list[str]:
        return ["maximize"] * len(self.objectives)


def _where(path: Path, key: str) -> str:
    return f"{path}: {key}"


def load_spec(path: str | Path, root: str | Path = ".", params: Mapping | None = None
              ) -> TuneSpec:
    """The study file, checked: known keys, a non-empty space whose keys are params keys (each
    value of a range's ends and every choice is a valid params set when ``params`` is given),
    pruning only for one objective. A relative SQLite path is taken from ``root``."""
    path = Path(path)
    raw = yaml.safe_load(path.read_text()) or {}
    known = {"study", "storage", "objectives", "space", "trials", "base", "set", "prune",
             "sampler"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise TuneError(f"{path}: unknown key(s) {unknown}; known: {sorted(known)}")
    for key in ("study", "space", "objectives"):
        if not raw.get(key):
            raise TuneError(f"{_where(path, key)}: required")
    objectives = raw["objectives"]
    objectives = [objectives] if isinstance(objectives, str) else list(objectives)
    space = []
    for key, spec in raw["space"].items():
        if not isinstance(spec, Mapping):
            raise TuneError(f"{_where(path, f'space.{key}')}: expected {{low, high}} or "
                            f"{{choices: [...]}}, got {spec!r}")
        extra = sorted(set(spec) - {"low", "high", "log", "step", "choices"})
        if extra:
            raise TuneError(f"{_where(path, f'space.{key}')}: unknown key(s) {extra}")
        if "choices" in spec:
            if not isinstance(spec["choices"], list) or not spec["choices"]:
                raise TuneError(f"{_where(path, f'space.{key}.choices')}: expected a list")
            space.append(Dimension(key, choices=tuple(spec["choices"])))
            continue
        low, high = spec.get("low"), spec.get("high")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)
                   ) or not low < high:
            raise TuneError(f"{_where(path, f'space.{key}')}: expected numbers low < high, got "
                            f"low {low!r}, high {high!r}")
        if spec.get("log") and low <= 0:
            raise TuneError(f"{_where(path, f'space.{key}')}: a log range needs low > 0")
        space.append(Dimension(key, low=low, high=high, log=bool(spec.get("log")),
                               step=spec.get("step")))
    prune = None
    if raw.get("prune"):
        if len(objectives) > 1:
            raise TuneError(f"{_where(path, 'prune')}: Optuna prunes single-objective studies "
                            f"only; these are {objectives}")
        try:
            prune = Pruning(**raw["prune"])
        except TypeError as exc:
            raise TuneError(f"{_where(path, 'prune')}: {exc}") from None
        if prune.pruner not in ("median", "successive_halving"):
            raise TuneError(f"{_where(path, 'prune.pruner')}: expected median or "
                            f"successive_halving, got {prune.pruner!r}")
    storage = str(raw.get("storage") or f"sqlite:///runs/tune/{raw['study']}.db")
    if storage.startswith("sqlite:///") and not storage.startswith("sqlite:////"):
        local = Path(root) / storage.removeprefix("sqlite:///")
        local.parent.mkdir(parents=True, exist_ok=True)
        storage = f"sqlite:///{local.resolve()}"
    fixed = load_overrides(path.parent / raw["base"]) if raw.get("base") else {}
    fixed.update(flatten(raw.get("set") or {}))
    spec = TuneSpec(study=str(raw["study"]), storage=storage, objectives=objectives,
                    space=space, trials=int(raw.get("trials") or 10), set=fixed, prune=prune,
                    sampler_seed=(raw.get("sampler") or {}).get("seed"))
    if params is not None:
        check_space(spec, params, path)
    return spec


def check_space(spec: TuneSpec, params: Mapping, where: Path) -> None:
    """Every end of every range and every choice makes a valid params set."""
    from pipeline.config import ConfigError, parse_params

    for dim in spec.space:
        values = dim.choices if dim.choices is not None else (dim.low, dim.high)
        for value in values:
            try:
                parse_params(apply_overrides(params, {**spec.set, dim.key: value}))
            except ConfigError as exc:
                raise TuneError(f"{where}: space.{dim.key} = {value!r}: {exc}") from None


def trial_name(study: str, number: int) -> str:
    return f"{study}-{number:03d}"


def exp_command(name: str, overrides: Mapping[str, Any], dvc: str = "dvc") -> list[str]:
    command = [dvc, "exp", "run", "--temp", "--name", name]
    for arg in override_args(overrides):
        command += ["-S", arg]
    return command


def exp_metrics(name: str, dvc: str = "dvc", metrics_file: str = "metrics.json"
                ) -> dict[str, Any]:
    """The ensemble's metrics of experiment ``name`` (``dvc exp show --json``)."""
    shown = json.loads(subprocess.run([dvc, "exp", "show", "--json"], check=True,
                                      capture_output=True, text=True).stdout)
    found: list[dict] = []

    def visit(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                visit(item)
        elif isinstance(node, Mapping):
            if node.get("name") == name and isinstance(node.get("data"), Mapping):
                found.append(node["data"])
            for value in node.values():
                visit(value)

    visit(shown)
    for data in found:
        entry = (data.get("metrics") or {}).get(metrics_file) or {}
        if isinstance(entry.get("data"), Mapping):
            return dict(entry["data"])
    raise TuneError(f"dvc exp show: no experiment {name!r} with {metrics_file}")


@dataclass
class TrialRun:
    """What running one trial needs: a command, its metrics once done, the prune reads."""

    command: Callable[[str, dict[str, Any]], list[str]]
    metrics: Callable[[str], dict[str, Any]]
    poll_seconds: float = POLL_SECONDS
    env: dict[str, str] = field(default_factory=dict)


def _values(metrics: Mapping[str, Any], objectives: Sequence[str], name: str) -> list[float]:
    missing = [o for o in objectives if not isinstance(metrics.get(o), (int, float))]
    if missing:
        raise TuneError(f"{name}: its metrics have no {missing}; they have "
                        f"{sorted(k for k, v in metrics.items() if isinstance(v, (int, float)))}")
    return [float(metrics[o]) for o in objectives]


def _same_as(study: optuna.Study, trial: optuna.Trial) -> optuna.trial.FrozenTrial | None:
    for other in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if other.number != trial.number and other.params == trial.params:
            return other
    return None


def _prune_seed(spec: TuneSpec, overrides: Mapping[str, Any], params: Mapping) -> int:
    if spec.prune.seed is not None:
        return spec.prune.seed
    seeds = overrides.get("seeds", params.get("seeds", [11]))
    return int(seeds[0])


def run_trial(spec: TuneSpec, trial: optuna.Trial, run: TrialRun, params: Mapping
              ) -> float | list[float]:
    """One trial: its values suggested, its experiment run (pruned from its epochs), its
    objective value(s) read back."""
    values = {dim.key: dim.suggest(trial) for dim in spec.space}
    name = trial_name(spec.study, trial.number)
    trial.set_user_attr("experiment", name)
    twin = _same_as(trial.study, trial)
    if twin is not None:  # values seen before (a categorical space, a retried trial)
        trial.set_user_attr("same_as", twin.number)
        return twin.values if len(twin.values) > 1 else twin.value
    overrides = {**spec.set, **values}
    channel = Path(tempfile.mkdtemp(prefix=f"bestfit-{name}-"))
    env = {**os.environ, **run.env, TRIAL_DIR_ENV: str(channel)}
    pruned_at = None
    process = subprocess.Popen(run.command(name, overrides), env=env, start_new_session=True)
    try:
        reported = 0
        while True:
            done = process.poll() is not None
            if spec.prune and pruned_at is None:
                seed = _prune_seed(spec, overrides, params)
                epochs = read_epochs(channel, spec.prune.member, seed)
                for record in epochs[reported:]:
                    if STOPPED in record:
                        continue
                    step = int(record["epoch"])
                    trial.report(float(record[spec.prune.metric]), step)
                    if trial.should_prune():
                        pruned_at = step
                        stop_file(channel, spec.prune.member, seed).touch()
                        break
                reported = len(epochs)
            if done:
                break
            time.sleep(run.poll_seconds)
    except BaseException:  # a killed worker takes its trial's experiment with it
        os.killpg(process.pid, signal.SIGTERM)
        process.wait()
        raise
    finally:
        epochs = (read_epochs(channel, spec.prune.member, _prune_seed(spec, overrides, params))
                  if spec.prune else [])
        shutil.rmtree(channel, ignore_errors=True)
    if process.returncode:
        raise TuneError(f"{name}: dvc exp run failed (exit {process.returncode})")
    # The run stops at the first epoch end after the stop file appears: the pruner's epoch or,
    # when the file came late, a later one (what it trained is its own STOPPED record).
    stopped_at = next((int(r[STOPPED]) for r in epochs if STOPPED in r), None)
    if stopped_at is None:
        pruned_at = None  # asked after its last epoch: the run completed, and counts as such
    metrics = run.metrics(name)
    result = _values(metrics, spec.objectives, name)
    for key, value in zip(spec.objectives, result, strict=True):
        trial.set_user_attr(key, value)
    if pruned_at is not None:
        trial.set_user_attr("pruned_after_epoch", pruned_at)
        trial.set_user_attr("stopped_after_epoch", stopped_at)
        raise optuna.TrialPruned(f"{name}: pruned after epoch {pruned_at}")
    return result if len(result) > 1 else result[0]


def _retry_stale():
    """Optuna's callback that queues a stale trial's values again (renamed in Optuna 4.9)."""
    storages = optuna.storages
    retry = (getattr(storages, "RetryHeartbeatStaleTrialCallback", None)
             or storages.RetryFailedTrialCallback)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return retry(max_retry=1)


class _StopAfterFailures:
    """Stop the study after ``limit`` failed trials in a row (a broken setup fails them all,
    and the target counts finished trials only)."""

    def __init__(self, limit: int):
        self.limit, self.streak = limit, 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.streak = self.streak + 1 if trial.state == optuna.trial.TrialState.FAIL else 0
        if self.streak >= self.limit:
            study.stop()


def build_study(spec: TuneSpec) -> optuna.Study:
    storage = optuna.storages.RDBStorage(
        spec.storage, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
        heartbeat_stale_trial_callback=_retry_stale())
    pruner: optuna.pruners.BasePruner = optuna.pruners.NopPruner()
    if spec.prune and spec.prune.pruner == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=spec.prune.n_startup_trials,
                                             n_warmup_steps=spec.prune.n_warmup_steps)
    elif spec.prune:
        pruner = optuna.pruners.SuccessiveHalvingPruner()
    sampler = optuna.samplers.TPESampler(seed=spec.sampler_seed)
    return optuna.create_study(study_name=spec.study, storage=storage, load_if_exists=True,
                               directions=spec.directions, sampler=sampler, pruner=pruner)


def finished(study: optuna.Study) -> int:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def run_study(spec: TuneSpec, run: TrialRun, params: Mapping, trials: int | None = None
              ) -> optuna.Study:
    """Run trials until the study holds ``trials`` (default the spec's) finished ones, over all
    workers of its storage."""
    target = trials or spec.trials
    study = build_study(spec)
    if finished(study) >= target:
        return study
    stopper = _StopAfterFailures(FAILURES_IN_A_ROW)
    study.optimize(lambda trial: run_trial(spec, trial, run, params),
                   callbacks=[optuna.study.MaxTrialsCallback(
                       target, states=(optuna.trial.TrialState.COMPLETE,
                                       optuna.trial.TrialState.PRUNED)), stopper],
                   catch=(TuneError,))
    if stopper.streak >= FAILURES_IN_A_ROW:
        raise TuneError(f"study {spec.study}: {stopper.streak} trials in a row failed (their "
                        f"`dvc exp run` output is above); fix that and run again to resume")
    return study


def summary(study: optuna.Study, spec: TuneSpec) -> dict[str, Any]:
    """Every trial (number, state, values, experiment) and the best trial(s)."""
    trials = []
    for t in study.get_trials(deepcopy=False):
        trials.append({"number": t.number, "state": t.state.name, "params": t.params,
                       "values": t.values, "experiment": t.user_attrs.get("experiment"),
                       **{k: v for k, v in t.user_attrs.items() if k != "experiment"},
                       "seconds": (t.duration.total_seconds() if t.duration else None)})
    best = [t.number for t in study.best_trials] if any(
        t["state"] == "COMPLETE" for t in trials) else []
    return {"study": spec.study, "objectives": spec.objectives, "trials": trials, "best": best}


def format_summary(report: Mapping[str, Any]) -> str:
    lines = [f"study {report['study']}: {len(report['trials'])} trials, objectives "
             f"{', '.join(report['objectives'])}; best {report['best']}"]
    for t in report["trials"]:
        values = ("—" if not t["values"] else
                  " ".join(f"{v:.4f}" for v in t["values"] if not math.isnan(v)))
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in t["params"].items())
        lines.append(f"  #{t['number']:<3} {t['state']:<8} {values:<22} {params}"
                     + (f" (same as #{t['same_as']})" if "same_as" in t else "")
                     + _pruned_note(t))
    return "\n".join(lines)


def _pruned_note(trial: Mapping[str, Any]) -> str:
    if "pruned_after_epoch" not in trial:
        return ""
    pruned = trial["pruned_after_epoch"]
    stopped = trial.get("stopped_after_epoch", pruned)
    return (f" (pruned after epoch {pruned}"
            + (f", stopped after epoch {stopped}" if stopped != pruned else "") + ")")
