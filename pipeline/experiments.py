"""The paper's tables as DVC experiments: overrides per run, queue commands, and the report.

``experiments/paper.yaml`` names each run as a set of ``-S`` overrides and each row of the paper's
tables with its run and the paper's dev scores. A run at a scale is ``base ⊕ scale.set ⊕ run``
(later keys win, nested mappings flattened to dotted keys first), trained for the scale's seeds.

The report compares every row with its table's reference run, seed by seed. Seed noise σ_t of
task t is pooled over the two runs compared (their own seeds: a run that collapses on some seeds
widens its own band, not every row's),

    σ_t² = Σ_r (n_r − 1)·s_r² / Σ_r (n_r − 1),

and a row's Δ = mean over the seeds both runs share of (row_s − ref_s) is *beyond noise* when
|Δ| > 2·σ_t·√(2/n) (the standard error of a difference of two n-seed means, ≈ 95%) and every
paired difference has Δ's sign. The paper's direction of effect reproduces when our Δ is beyond
noise with the paper's sign.
"""

from __future__ import annotations

import copy
import json
import math
import re
import shutil
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import UserError
from pipeline.seeds import aggregate, scalar_metrics
from pipeline.tasks import default_tasks

# The paper's tables score its three tasks, as declared by default.
TASK_METRICS = {task: spec.metric_name for task, spec in default_tasks().items()}
DEFAULT_MEMBER = "multitask"
# The paper calls an effect below half a point "no change" when it discusses its tables.
PAPER_NO_EFFECT = 0.005
SEED_METRICS = re.compile(r"models/(?P<member>[^/]+)/seed_(?P<seed>\d+)/metrics\.json$")


class ExperimentsError(UserError):
    """The experiments file is inconsistent; the message names the file and the key."""


@dataclass(frozen=True)
class Scale:
    set: dict[str, Any]
    seeds: list[int]
    seeds_for: dict[str, list[int]] = field(default_factory=dict)
    skip: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Row:
    table: str
    name: str
    run: str
    paper: dict[str, float]


@dataclass(frozen=True)
class Experiments:
    base: dict[str, Any]
    scales: dict[str, Scale]
    runs: dict[str, dict[str, Any]]
    members: dict[str, list[str]]
    references: dict[str, str]
    rows: list[Row]
    title: str = ""  # the report's heading; empty: the paper's tables

    def seeds(self, scale: str, run: str) -> list[int]:
        return self.scales[scale].seeds_for.get(run, self.scales[scale].seeds)

    def scale_runs(self, scale: str) -> list[str]:
        """The runs to train at ``scale``: not skipped, and not the same settings as an earlier
        run there (``same_as``)."""
        twins = self.same_as(scale)
        return [run for run in self.runs if run not in self.scales[scale].skip
                and run not in twins]

    def same_as(self, scale: str) -> dict[str, str]:
        """Runs whose params at ``scale`` equal an earlier run's (e.g. Table 6's mean pooling
        where the scale pools by mean anyway), mapped to that run: one training serves both."""
        if scale not in self.scales:
            raise ExperimentsError(f"unknown scale {scale!r}; known: {sorted(self.scales)}")
        first: dict[str, str] = {}
        twins = {}
        for run in self.runs:
            if run in self.scales[scale].skip:
                continue
            settings = {k: v for k, v in run_overrides(self, scale, run).items() if k != "seeds"}
            key = json.dumps(apply_overrides({}, settings), sort_keys=True)
            if key in first:
                twins[run] = first[key]
            else:
                first[key] = run
        return twins


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings → dotted keys: ``{"train": {"lr": 1}}`` → ``{"train.lr": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def load_experiments(path: str | Path) -> Experiments:
    """An experiments file; ``extends: other.yaml`` (beside it) takes that file's ``base``,
    ``scales`` and ``members`` where this one has none, so a new study shares the paper's
    recipe and scale sizes instead of copying them."""
    path = Path(path)
    raw = yaml.safe_load(path.read_text()) or {}
    if raw.get("extends"):
        parent_path = path.parent / raw["extends"]
        if not parent_path.is_file():
            raise ExperimentsError(f"{path}: extends: {parent_path} is not a file")
        parent = yaml.safe_load(parent_path.read_text()) or {}
        for key in ("base", "scales", "members"):
            raw.setdefault(key, parent.get(key))
        own = set(raw.get("runs") or {})
        raw["scales"] = {  # the parent's per-run settings, for the runs this file has
            name: {**spec, "skip": [r for r in spec.get("skip") or [] if r in own],
                   "seeds_for": {r: v for r, v in (spec.get("seeds_for") or {}).items()
                                 if r in own}}
            for name, spec in (raw["scales"] or {}).items()}
    for key in ("base", "scales", "runs", "tables"):
        if not isinstance(raw.get(key), Mapping):
            raise ExperimentsError(f"{path}: {key}: expected a mapping")
    runs = {name: flatten(spec or {}) for name, spec in raw["runs"].items()}
    scales = {}
    for name, spec in raw["scales"].items():
        seeds = spec.get("seeds")
        if not seeds or not all(isinstance(s, int) for s in seeds) or len(set(seeds)) != len(seeds):
            raise ExperimentsError(f"{path}: scales.{name}.seeds: expected distinct integers")
        unknown = sorted((set(spec.get("skip", [])) | set(spec.get("seeds_for", {}))) - set(runs))
        if unknown:
            raise ExperimentsError(f"{path}: scales.{name}: unknown run(s) {unknown}")
        scales[name] = Scale(set=flatten(spec.get("set") or {}), seeds=list(seeds),
                             seeds_for=dict(spec.get("seeds_for") or {}),
                             skip=list(spec.get("skip") or []))
    rows, references = [], {}
    for table, spec in raw["tables"].items():
        references[table] = spec.get("reference")
        if references[table] not in runs:
            raise ExperimentsError(
                f"{path}: tables.{table}.reference: {references[table]!r} is not a run")
        for name, row in spec["rows"].items():
            if row.get("run") not in runs:
                raise ExperimentsError(
                    f"{path}: tables.{table}.rows.{name}.run: {row.get('run')!r} is not a run")
            paper = {task: float(v) for task, v in (row.get("paper") or {}).items()}
            unknown = sorted(set(paper) - set(TASK_METRICS))
            if unknown:
                raise ExperimentsError(f"{path}: tables.{table}.rows.{name}.paper: unknown "
                                       f"task(s) {unknown}; known: {list(TASK_METRICS)}")
            rows.append(Row(table, name, row["run"], paper))
    members = {run: list(names) for run, names in (raw.get("members") or {}).items()
               if run in runs}
    return Experiments(flatten(raw["base"]), scales, runs, members, references, rows,
                       str(raw.get("title") or ""))


def run_overrides(spec: Experiments, scale: str, run: str, data_dir: str | Path | None = None,
                  wordnet_dir: str | Path | None = None) -> dict[str, Any]:
    """The params a run sets at a scale: base ⊕ scale ⊕ run, with the data sources (and the
    WordNet dir EDA reads) as absolute paths: queued experiments run in a temporary copy of the
    repository that holds only its git-tracked files."""
    if scale not in spec.scales:
        raise ExperimentsError(f"unknown scale {scale!r}; known: {sorted(spec.scales)}")
    if run not in spec.runs:
        raise ExperimentsError(f"unknown run {run!r}; known: {sorted(spec.runs)}")
    overrides = {**spec.base, **spec.scales[scale].set}
    for key, value in spec.runs[run].items():
        # A run's key replaces any finer keys below it (train.custom replaces train.custom.*).
        overrides = {k: v for k, v in overrides.items() if not k.startswith(f"{key}.")}
        overrides[key] = value
    overrides.update(local_inputs(data_dir, wordnet_dir))
    overrides["seeds"] = spec.seeds(scale, run)
    return overrides


def local_inputs(data_dir: str | Path | None, wordnet_dir: str | Path | None
                 ) -> dict[str, str]:
    """The machine-local inputs as absolute paths (a directory holding cs224n/ and amazon/,
    the WordNet dir EDA reads): a queued or ``--temp`` experiment runs in a copy of the
    repository that holds only its git-tracked files."""
    paths = {}
    if data_dir is not None:
        data_dir = Path(data_dir).resolve()
        paths["data.source"] = str(data_dir / "cs224n")
        paths["augment.reviews.source"] = str(data_dir / "amazon")
    if wordnet_dir is not None:
        paths["augment.eda.wordnet_dir"] = str(Path(wordnet_dir).resolve())
    return paths


def apply_overrides(raw: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` (parsed params.yaml) with every dotted key of ``overrides`` set, as ``-S ++key=v``
    does: missing parents are created, values replace what is there."""
    params = copy.deepcopy(dict(raw))
    for key, value in overrides.items():
        node = params
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[leaf] = copy.deepcopy(value)
    return params


def dvc_executable() -> str:
    """The `dvc` beside this Python (the project's environment), else the one on PATH."""
    beside = Path(sys.executable).parent / "dvc"
    found = str(beside) if beside.exists() else shutil.which("dvc")
    if found is None:
        raise ExperimentsError("dvc: not found beside this Python nor on PATH; run "
                               "`bash scripts/setup.sh` and use .venv/bin/python")
    return found


def load_overrides(path: str | Path) -> dict[str, Any]:
    """An overrides file's ``set:`` (experiments/cpu_main.yaml) as dotted params keys."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ExperimentsError(f"{path}: unreadable overrides file ({exc})") from None
    if not isinstance(raw, Mapping) or not isinstance(raw.get("set"), Mapping):
        raise ExperimentsError(f"{path}: expected a mapping with `set:` (params keys → values)")
    return flatten(raw["set"])


def override_args(overrides: Mapping[str, Any]) -> list[str]:
    """``dvc exp run -S`` values: ``++`` sets a key whether params.yaml has it or not."""
    return [f"++{key}={hydra_value(value)}" for key, value in overrides.items()]


def hydra_value(value: Any) -> str:
    """A value in the override grammar of ``dvc exp run -S`` (Hydra's)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if re.fullmatch(r"[A-Za-z0-9_./\-+]+", text) and not re.fullmatch(r"[-+.0-9eE]+", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def exp_name(scale: str, run: str) -> str:
    return f"{scale}-{run}"


def queue_command(spec: Experiments, scale: str, run: str, data_dir: str | Path | None = None,
                  wordnet_dir: str | Path | None = None) -> list[str]:
    """``dvc exp run --queue`` of one run: its overrides and, as targets, the train stages of
    its members for its seeds (nothing else of the DAG that they do not need)."""
    overrides = run_overrides(spec, scale, run, data_dir, wordnet_dir)
    command = ["dvc", "exp", "run", "--queue", "--name", exp_name(scale, run)]
    for key, value in overrides.items():
        # `++` sets a key whether params.yaml has it or not.
        command += ["-S", f"++{key}={hydra_value(value)}"]
    members = spec.members.get(run, [DEFAULT_MEMBER])
    command += [f"train@{member}-{seed}" for member in members for seed in overrides["seeds"]]
    return command


# Per-seed metrics of a matrix: {run: {member: {seed: metrics}}}.
Results = dict[str, dict[str, dict[int, dict[str, float]]]]


def collect(exp_show: Any, scale: str) -> Results:
    """Per-seed metrics of every experiment named ``<scale>-<run>`` in ``dvc exp show --json``
    output: {run: {member: {seed: metrics}}}. The newest experiment of a name wins."""
    found: Results = {}
    prefix = f"{scale}-"

    def visit(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                visit(item)
            return
        if not isinstance(node, Mapping):
            return
        data, name = node.get("data"), node.get("name")
        if isinstance(data, Mapping) and isinstance(name, str) and name.startswith(prefix):
            run = name[len(prefix):]
            if run not in found:
                for path, entry in (data.get("metrics") or {}).items():
                    match = SEED_METRICS.search(path.replace("\\", "/"))
                    values = (entry or {}).get("data") if isinstance(entry, Mapping) else None
                    if match and isinstance(values, Mapping):
                        scores = {k: float(v) for k, v in scalar_metrics(values).items()}
                        found.setdefault(run, {}).setdefault(match["member"], {})[
                            int(match["seed"])] = scores
        for value in node.values():
            visit(value)

    visit(exp_show)
    return found


def results_from_report(report: Mapping[str, Any], spec: Experiments, scale: str) -> Results:
    """The per-seed task scores a written report holds, as results ({run: {member: {seed:
    metrics}}}): a matrix finished in a later session extends its committed report without the
    earlier runs' directories. A row's scores go under its run's first member (or its twin's,
    for a ``same_as`` row) — a report keeps one score per task and seed, all ``build_report``
    reads."""
    if report.get("scale") != scale:
        raise ExperimentsError(f"the report is of scale {report.get('scale')!r}, not {scale!r}")
    found: Results = {}
    for row in report["rows"]:
        run = row.get("same_as") or row["run"]
        member = spec.members.get(run, [DEFAULT_MEMBER])[0]
        for task, metric in TASK_METRICS.items():
            for seed, value in (row.get(task) or {}).get("seeds", {}).items():
                found.setdefault(run, {}).setdefault(member, {}).setdefault(
                    int(seed), {})[metric] = float(value)
    return found


def merge_results(*sources: Mapping[str, Any]) -> Results:
    """Results of several sources in one; a later source's seed of a run's member replaces an
    earlier one's (a rerun wins), its other seeds are kept."""
    merged: Results = {}
    for source in sources:
        for run, members in source.items():
            for member, seeds in members.items():
                for seed, metrics in seeds.items():
                    merged.setdefault(run, {}).setdefault(member, {})[int(seed)] = dict(metrics)
    return merged


def pooled_seed_sd(per_run: Iterable[Mapping[int, float]]) -> float | None:
    """σ pooled over runs: √(Σ (n_r − 1)·s_r² / Σ (n_r − 1)); None without any n_r ≥ 2."""
    num = dof = 0.0
    for values in per_run:
        xs = list(values.values())
        if len(xs) >= 2:
            mean = sum(xs) / len(xs)
            num += sum((x - mean) ** 2 for x in xs)
            dof += len(xs) - 1
    return math.sqrt(num / dof) if dof else None


def paired_delta(row: Mapping[int, float], ref: Mapping[int, float],
                 sigma: float | None) -> dict[str, Any]:
    """Δ = mean over shared seeds of (row − ref), and whether it exceeds seed noise."""
    seeds = sorted(set(row) & set(ref))
    if not seeds:
        return {"delta": None, "n": 0, "beyond_noise": False, "threshold": None}
    diffs = [row[s] - ref[s] for s in seeds]
    delta = sum(diffs) / len(diffs)
    threshold = None if sigma is None else 2 * sigma * math.sqrt(2 / len(seeds))
    same_sign = all(d > 0 for d in diffs) or all(d < 0 for d in diffs)
    beyond = threshold is not None and len(seeds) >= 2 and same_sign and abs(delta) > threshold
    return {"delta": delta, "n": len(seeds), "beyond_noise": beyond, "threshold": threshold}


def direction(paper_delta: float | None, ours: Mapping[str, Any], is_reference: bool) -> str:
    """Whether the paper's direction of effect reproduces here."""
    if is_reference:
        return "reference"
    if ours["delta"] is None:
        return "not run"
    if paper_delta is None:
        return "beyond noise" if ours["beyond_noise"] else "within noise"
    if abs(paper_delta) < PAPER_NO_EFFECT:
        return "differs (paper: none)" if ours["beyond_noise"] else "yes (no effect)"
    if not ours["beyond_noise"]:
        return "within noise"
    return "yes" if (paper_delta > 0) == (ours["delta"] > 0) else "opposite"


def build_report(spec: Experiments, scale: str,
                 results: Mapping[str, Mapping[str, Mapping[int, Mapping[str, float]]]]
                 ) -> dict[str, Any]:
    """Rows with our mean ± sd, the paper's scores, Δ vs the reference and the verdicts."""
    twins = spec.same_as(scale)

    def seed_values(run: str, task: str) -> dict[int, float]:
        """A task's score per seed, from the first of the run's members trained on it."""
        metric = TASK_METRICS[task]
        run = twins.get(run, run)
        for member in spec.members.get(run, [DEFAULT_MEMBER]):
            per_seed = results.get(run, {}).get(member, {})
            values = {s: m[metric] for s, m in per_seed.items() if metric in m}
            if values:
                return values
        return {}

    paper_ref = {}
    for row in spec.rows:
        if row.run == spec.references[row.table] and row.table not in paper_ref:
            paper_ref[row.table] = row.paper
    rows = []
    for row in spec.rows:
        if row.run in spec.scales[scale].skip:
            continue
        ref_run = spec.references[row.table]
        entry: dict[str, Any] = {"table": row.table, "row": row.name, "run": row.run,
                                 "same_as": twins.get(row.run), "reference": ref_run,
                                 "paper": row.paper}
        for task in TASK_METRICS:
            values, ref_values = seed_values(row.run, task), seed_values(ref_run, task)
            sigma = pooled_seed_sd([values, ref_values] if row.run != ref_run else [values])
            ours = paired_delta(values, ref_values, sigma)
            paper_base = paper_ref.get(row.table, {}).get(task)
            paper_delta = (row.paper[task] - paper_base
                           if task in row.paper and paper_base is not None else None)
            stats = aggregate([{"v": v} for v in values.values()])["v"] if values else None
            entry[task] = {"seeds": {str(s): v for s, v in sorted(values.items())},
                           **(stats or {"mean": None, "sd": None, "n": 0}),
                           "delta": ours, "seed_sd": sigma, "paper_delta": paper_delta,
                           "reproduces": direction(paper_delta, ours, row.run == ref_run)}
        rows.append(entry)
    return {"scale": scale, "rows": rows}


def _fmt(stats: Mapping[str, Any]) -> str:
    if not stats["n"]:
        return "—"
    sd = stats["sd"]
    return f"{stats['mean']:.3f} ± {sd:.3f}" if sd is not None else f"{stats['mean']:.3f}"


def _fmt_delta(stats: Mapping[str, Any]) -> str:
    delta = stats["delta"]
    if delta["delta"] is None:
        return "—"
    return f"{delta['delta']:+.3f}{'*' if delta['beyond_noise'] else ''}"


def report_markdown(report: Mapping[str, Any], header: str) -> str:
    """The report as Markdown: one section per table, of the rows with results (the others are
    listed at the end)."""
    lines = [header, "", "Δ is paired by seed against the table's reference run; * marks a Δ "
             "beyond noise: |Δ| > 2σ√(2/n), σ the seed sd pooled over the two runs, and every "
             "seed moving the same way. `reproduces` says whether the paper's direction of "
             "effect holds here.", ""]
    table = None
    missing = []
    with_paper = any(row["paper"] for row in report["rows"])
    if not with_paper:  # a study beyond the paper: no paper scores, Δ against the reference
        lines[2] = lines[2].split(" `reproduces`")[0]
    for row in report["rows"]:
        if not any(row[t]["n"] for t in TASK_METRICS):
            missing.append(f"{row['table']}/{row['row']}")
            continue
        if row["table"] != table:
            table = row["table"]
            lines += ["", f"### {table}", ""]
            lines += (["| row | run | n | SST | QQP | STS | paper SST / QQP / STS | Δ SST "
                       "| Δ QQP | Δ STS | reproduces (SST / QQP / STS) |",
                       "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
                      if with_paper else
                      ["| row | run | n | SST | QQP | STS | Δ SST | Δ QQP | Δ STS |",
                       "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"])
        paper = " / ".join(f"{row['paper'][t]:.3f}" if t in row["paper"] else "—"
                           for t in TASK_METRICS)
        n = max(row[t]["n"] for t in TASK_METRICS)
        verdicts = " / ".join(row[t]["reproduces"] for t in TASK_METRICS)
        run = f"`{row['run']}`" + (f" (= `{row['same_as']}`)" if row.get("same_as") else "")
        scores = " | ".join(_fmt(row[t]) for t in TASK_METRICS)
        deltas = " | ".join(_fmt_delta(row[t]) for t in TASK_METRICS)
        lines.append(f"| {row['row']} | {run} | {n} | {scores} | {paper} | {deltas} | "
                     f"{verdicts} |" if with_paper else
                     f"| {row['row']} | {run} | {n} | {scores} | {deltas} |")
    if missing:
        lines += ["", f"Rows without results here: {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def figure_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One entry per distinct run, in report order, for the report's PNG."""
    seen, rows = set(), []
    for row in report["rows"]:
        if row["run"] in seen or not any(row[t]["n"] for t in TASK_METRICS):
            continue
        seen.add(row["run"])
        rows.append({"row": row["run"], "paper": row["paper"],
                     **{t: {k: row[t][k] for k in ("mean", "sd", "n")} for t in TASK_METRICS}})
    return rows


def to_json(report: Mapping[str, Any]) -> str:
    return json.dumps(report, indent=2) + "\n"
