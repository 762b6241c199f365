"""Cases of the bad-input corpus (tests/bad_inputs.py): params and config shapes (round two).

Members of another shape or with names DVC and file systems cannot take, NaN and infinities,
values past the upper bounds, ensembles of nothing, task declarations whose columns or
submission files cannot work, and YAML that is valid (merge keys) or hostile (alias bombs,
recursion, nesting, huge scalars). Each runs `stages/prepare.py` (the stage that reads params
first) unless it names another; prepare's error line names the params key, the value and what
is expected.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bad_inputs import case, edit_params, params_case, prep_report

from pipeline.config import load_params
from pipeline.tasks import CS224N_TASKS

MEMBER = ("a mapping of its tasks", "tasks:")  # what a member looks like, however worded
NAME_RULE = ("letters, digits, _ and -",)
FINITE = ("finite",)


def _set_member(name: Any, value: Any) -> Callable[[Path], None]:
    """A setup that gives member ``name`` the value ``value`` (a new member when it is new)."""
    return lambda ws: edit_params(ws, lambda p: p["models"].update({name: value}))


def _declare(edit: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    """A setup that writes the CS224N tasks into `tasks:` and edits that section."""

    def setup(ws: Path) -> None:
        def change(params: dict[str, Any]) -> None:
            tasks = {name: {**spec, "data": dict(spec["data"]),
                            "submission": dict(spec.get("submission", {}))}
                     for name, spec in CS224N_TASKS.items()}
            edit(tasks)
            params["tasks"] = tasks

        edit_params(ws, change)

    return setup


def _write(text: str) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        (ws / "params.yaml").write_text(text)

    return setup


# -- member shapes and names

case("params-member-as-task-list", "params", "prepare", "error",
     "models.multitask", *MEMBER, "['sst', 'qqp', 'sts']", "{tasks: [sst, qqp, sts]}")(
    _set_member("multitask", ["sst", "qqp", "sts"]))
case("params-member-as-number", "params", "prepare", "error", "models.multitask", *MEMBER,
     "got 3", quick=False)(_set_member("multitask", 3))
case("params-member-list-of-mappings", "params", "prepare", "error", "models.multitask",
     *MEMBER, quick=False)(_set_member("multitask", [{"tasks": ["sst"]}, {"tasks": ["qqp"]}]))
case("params-member-mapping-of-tasks", "params", "prepare", "error", "models.multitask",
     "unknown key", "qqp", *MEMBER, quick=False)(
    _set_member("multitask", {"sst": None, "qqp": None, "sts": None}))
case("params-member-name-integer", "params", "prepare", "error",
     "member name 5", *NAME_RULE, quick=False)(_set_member(5, {"tasks": ["sst"]}))
case("params-member-name-path", "params", "prepare", "error", "member name 'runs/a'",
     *NAME_RULE, quick=False)(_set_member("runs/a", {"tasks": ["sst"]}))
case("params-member-name-space", "params", "prepare", "error", "member name 'my member'",
     *NAME_RULE, quick=False)(_set_member("my member", {"tasks": ["sst"]}))
case("params-member-name-dot", "params", "prepare", "error", "member name 'v1.2'",
     *NAME_RULE, quick=False)(_set_member("v1.2", {"tasks": ["sst"]}))
case("params-member-name-leading-dot", "params", "prepare", "error", "member name '.cache'",
     *NAME_RULE, quick=False)(_set_member(".cache", {"tasks": ["sst"]}))
case("params-member-names-differ-by-case", "params", "prepare", "error",
     "models.Multitask", "models.multitask", "case", quick=False)(
    _set_member("Multitask", {"tasks": ["sst"]}))
case("params-member-section-as-list", "params", "prepare", "error",
     "models.sst_single.train", "mapping", quick=False)(
    _set_member("sst_single", {"tasks": ["sst"], "train": [{"schedule": "round_robin"}]}))
case("params-member-augment-twice", "params", "prepare", "error",
     "models.multitask.augment", "eda", "twice", quick=False)(
    _set_member("multitask", {"tasks": ["sst", "qqp", "sts"], "augment": ["eda", "eda"]}))
case("params-member-override-boolean", "params", "prepare", "error",
     "models.sst_single.train.batch_size", "true", quick=False)(
    _set_member("sst_single", {"tasks": ["sst"],
                               "train": {"schedule": "round_robin", "batch_size": True}}))


@case("params-unknown-keys-of-mixed-types", "params", "prepare", "error",
      "train", "unknown key", "foo", quick=False)
def _mixed_keys(ws: Path) -> None:
    edit_params(ws, lambda p: p["train"].update({1: 2, "foo": 3}))


# -- NaN and infinities (each compares false with every bound)

params_case("params-lr-nan", "train.lr", math.nan, "train.lr", "nan", *FINITE)
params_case("params-lr-inf", "train.lr", math.inf, "train.lr", "inf", *FINITE, quick=False)
params_case("params-betas-nan", "train.betas", [math.nan, 0.999], "train.betas[0]", "nan",
            *FINITE, quick=False)
params_case("params-weight-decay-minus-inf", "train.weight_decay", -math.inf,
            "train.weight_decay", "-inf", *FINITE, quick=False)
params_case("params-member-smart-lambda-nan", "models.multitask.smart", {"lambda": math.nan},
            "models.multitask.smart.lambda", "nan", *FINITE, quick=False)
params_case("params-task-weight-nan", "loss.task_weights", {"sts": math.nan},
            "loss.task_weights.sts", "nan", *FINITE, quick=False)
case("params-overall-weight-nan", "params", "prepare", "error",
     "tasks.sts.overall_weight", "nan", *FINITE, quick=False)(
    _declare(lambda t: t["sts"].update(overall_weight=math.nan)))
case("params-regression-range-inf", "params", "prepare", "error",
     "tasks.sts.range[1]", "inf", *FINITE, quick=False)(
    _declare(lambda t: t["sts"].update(range=[0.0, math.inf])))

# -- upper bounds: a huge value fails here, not by exhausting memory or time later

params_case("params-epochs-2-63", "train.epochs", 2**63,
            "train.epochs", "9223372036854775808", ("≤ 1000", "<= 1000"))
params_case("params-batches-per-epoch-huge", "train.batches_per_epoch", 2**40,
            "train.batches_per_epoch", "1099511627776", quick=False)
params_case("params-batch-size-huge", "train.batch_size", 2**31,
            "train.batch_size", "2147483648", "65536", quick=False)
params_case("params-eval-batch-size-huge", "train.eval_batch_size", 10**9,
            "train.eval_batch_size", "1000000000", quick=False)
params_case("params-max-length-huge", "model.max_length", 2**30,
            "model.max_length", "1073741824", "65536", quick=False)
params_case("params-head-layers-huge", "model.head.layers", 10**6,
            "model.head.layers", "1000000", "64", quick=False)
params_case("params-head-hidden-huge", "model.head.hidden", 2**32,
            "model.head.hidden", "4294967296", quick=False)
params_case("params-smart-steps-huge", "smart.steps", 10**9, "smart.steps", "1000000000",
            quick=False)
params_case("params-num-threads-huge", "train.num_threads", 2**63,
            "train.num_threads", "9223372036854775808", quick=False)
params_case("params-eda-num-aug-huge", "augment.eda.num_aug", 10**7,
            "augment.eda.num_aug", "10000000", quick=False)
params_case("params-train-rows-beyond-int64", "data.train_rows", {"qqp": 2**64},
            "data.train_rows.qqp", "18446744073709551616", quick=False)
params_case("params-seeds-many", "seeds", list(range(5000)), "seeds", "5,000", "1000",
            quick=False)
params_case("params-grad-accum-over-batch", "train.grad_accum", 5,
            "train.grad_accum", "5", "batch_size", quick=False)


@case("params-steps-beyond-the-plan", "params", "prepare", "error",
      "train.batches_per_epoch", "1,000,000,000", "10,000,000", quick=False)
def _steps(ws: Path) -> None:
    # Each within its own bound; together 10⁹ steps, every one listed up front by the schedule.
    edit_params(ws, lambda p: p["train"].update(epochs=1000, batches_per_epoch=10**6,
                                                custom={"task": "qqp", "fraction": 0.5,
                                                        "epochs": 1}))


# -- strings

params_case("params-backbone-nul", "model.backbone", "tiny\0bert", "model.backbone", "NUL",
            quick=False)
params_case("params-backbone-very-long", "model.backbone", "b" * 200_000,
            "model.backbone", "200,000 characters", "4096", quick=False)
params_case("params-eda-operations-empty", "augment.eda.operations", [],
            "augment.eda.operations", "non-empty", quick=False)

# -- ensembles

params_case("params-ensemble-empty", "ensemble", {}, "ensemble", "{}", ("a mapping of tasks",))
params_case("params-ensemble-task-no-member", "ensemble.sst", [], "ensemble.sst", "[]",
            "at least one member", quick=False)
params_case("params-ensemble-task-null", "ensemble.qqp", None, "ensemble.qqp", "None",
            "at least one member", quick=False)
params_case("params-ensemble-member-twice", "ensemble.sts", ["multitask", "multitask"],
            "ensemble.sts", "multitask", "twice", quick=False)
params_case("params-ensemble-as-list", "ensemble", ["sst", "qqp"], "ensemble",
            "['sst', 'qqp']", quick=False)


def _prepared_all(ws: Path) -> str | None:
    report = prep_report(ws)
    missing = [t for t in ("sst", "qqp", "sts") if t not in report["tasks"]]
    return f"prepare left out {missing}" if missing else None


@case("params-ensemble-leaves-out-a-task", "params", "prepare", "handled",
      "ensemble", "no member for declared task(s) ['sts']", check=_prepared_all, quick=False)
def _leaves_out(ws: Path) -> None:
    # Not refused (a member may train on a task only to help the others), but said.
    edit_params(ws, lambda p: p["ensemble"].pop("sts"))


# -- task declarations

case("params-text-column-is-label", "params", "prepare", "error",
     "tasks.sst.data.label", "sentence", "text column", quick=False)(
    _declare(lambda t: t["sst"]["data"].update(label="sentence")))
case("params-id-column-is-label", "params", "prepare", "error",
     "tasks.sts.data.id", "similarity", quick=False)(
    _declare(lambda t: t["sts"]["data"].update(id="similarity")))
case("params-submission-escapes-up", "params", "prepare", "error",
     "tasks.sst.submission.file", "../dev.csv", "plain file name")(
    _declare(lambda t: t["sst"]["submission"].update(file="../{split}.csv")))
case("params-submission-absolute", "params", "prepare", "error",
     "tasks.qqp.submission.file", "/tmp/qqp-dev.csv", quick=False)(
    _declare(lambda t: t["qqp"]["submission"].update(file="/tmp/{task}-{split}.csv")))
case("params-submission-in-a-subdirectory", "params", "prepare", "error",
     "tasks.sts.submission.file", "out/dev.csv", quick=False)(
    _declare(lambda t: t["sts"]["submission"].update(file="out/{split}.csv")))
case("params-submission-unknown-placeholder", "params", "prepare", "error",
     "tasks.sst.submission.file", "{name}", quick=False)(
    _declare(lambda t: t["sst"]["submission"].update(file="{name}-{split}.csv")))
case("params-submission-attribute-placeholder", "params", "prepare", "error",
     "tasks.sst.submission.file", "{split.__class__}", quick=False)(
    _declare(lambda t: t["sst"]["submission"].update(file="{split.__class__}.csv")))
case("params-submission-shared-by-two-tasks", "params", "prepare", "error",
     "tasks.qqp.submission.file", "sst-dev-output.csv", "tasks.sst", quick=False)(
    _declare(lambda t: t["qqp"]["submission"].update(file="sst-{split}-output.csv")))
case("params-submission-column-tab", "params", "prepare", "error",
     "tasks.sst.submission.column", "tabs", quick=False)(
    _declare(lambda t: t["sst"]["submission"].update(column="Predicted\tSentiment")))
case("params-task-name-unicode", "params", "prepare", "error", "task name", "a-z",
     quick=False)(_declare(lambda t: t.update({"sentiment_é": t.pop("sst")})))

# -- YAML: merge keys are standard; bombs, recursion and depth are refused in one line

MERGED = """\
data: {source: cs224n}
seeds: [11]
model: {backbone: tiny-bert, max_length: 64, head: {layers: 1}}
train: {epochs: 2, batches_per_epoch: 2, batch_size: 4, schedule: round_robin, precision: fp32,
        device: cpu}
smart: {lambda: 0.0}
models:
  multitask: &base
    tasks: [sst, qqp, sts]
    train: {lr: 1.0e-3, epochs: 3}
  fast:
    <<: *base
    train: {lr: 5.0e-3}
ensemble: {sst: [multitask, fast], qqp: [multitask], sts: [fast]}
"""


def _merged_read(ws: Path) -> str | None:
    fast = load_params(ws / "params.yaml").models["fast"]
    if fast.tasks != ["sst", "qqp", "sts"] or fast.train.lr != 5e-3:
        return f"the merged member read as tasks {fast.tasks}, lr {fast.train.lr}"
    return _prepared_all(ws)


case("params-yaml-merge-key", "params", "prepare", "handled", check=_merged_read)(
    _write(MERGED))
case("params-yaml-merge-key-duplicate", "params", "prepare", "error",
     "line 14", "tasks", "twice", quick=False)(
    _write(MERGED.replace("    <<: *base\n",
                          "    <<: *base\n    tasks: [sst]\n    tasks: [qqp]\n")))


def billion_laughs(levels: int = 10) -> str:
    """``train.betas`` as ``levels`` lists, each of ten aliases of the one before: 10**levels
    values once expanded, from a dozen lines."""
    lines = ["models: {multitask: {tasks: [sst]}}", "train:", "  betas:",
             "  - &l0 [" + ", ".join(["lol"] * 10) + "]"]
    lines += [f"  - &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


# The first list past 100,000 values expanded: the fifth, 111,111 of them, on line 8.
case("params-yaml-alias-bomb", "params", "prepare", "error",
     "line 8", "alias", "100,000")(_write(billion_laughs()))
case("params-yaml-recursive-alias", "params", "prepare", "error", "line 2", "itself",
     quick=False)(_write("models: {multitask: {tasks: [sst]}}\ntrain: &t {custom: *t}\n"))
case("params-yaml-deep-nesting", "params", "prepare", "error", "nested", quick=False)(
    _write("models: {m: {}}\ntrain: {betas: " + "[" * 20_000 + "]" * 20_000 + "}\n"))
case("params-yaml-huge-integer", "params", "prepare", "error", "4300 digits", quick=False)(
    _write("models: {m: {}}\ntrain: {epochs: " + "9" * 100_000 + "}\n"))
case("params-file-never-ends", "params", "prepare", "error", "/dev/zero", "larger than",
     options={"--params": "/dev/zero"}, quick=False)(lambda ws: None)

# -- model.max_length against the backbone (the train stage meets the backbone first)


@case("params-max-length-above-positions", "params", "train", "error",
      "model.max_length", "256", "max_position_embeddings 128")
def _above_positions(ws: Path) -> None:
    # The tiny BERT has 128 position embeddings; a longer sequence would fail inside the encoder.
    edit_params(ws, lambda p: p["model"].update(max_length=256))
