"""Typed config: params.yaml loads, members are defaults ⊕ overrides, bad params name their key."""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import shlex
import types
import typing

import pytest
import yaml
from conftest import PARAMS_YAML, ROOT

from pipeline.config import (
    MAX_NODES,
    MAX_PARAMS_BYTES,
    AugmentConfig,
    ConfigError,
    CustomScheduleConfig,
    DataConfig,
    EdaConfig,
    HeadConfig,
    LlmConfig,
    LossConfig,
    ModelConfig,
    Params,
    Range,
    ReviewsConfig,
    SmartConfig,
    TrainConfig,
    _ParamsLoader,
    check_max_length,
    load_params,
    member_for_seed,
    parse_params,
)
from pipeline.experiments import load_overrides, override_args

SECTIONS = ("model", "loss", "train", "smart", "pcgrad")


@pytest.fixture
def raw() -> dict:
    """A small params mapping with two members: one overrides train.batch_size, one does not."""
    return {
        "train": {"batch_size": 16, "schedule": "round_robin"},
        "smart": {"lambda": 0.0},
        "models": {
            "plain": {"tasks": ["sst", "qqp", "sts"]},
            "big_batch": {"tasks": ["sst", "qqp", "sts"], "train": {"batch_size": 64}},
        },
        "ensemble": {"sst": ["plain", "big_batch"], "qqp": ["plain"]},
    }


def error_of(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_params(raw)
    return str(info.value)


# --- the project's params.yaml -----------------------------------------------------------------


def test_load_project_params():
    params = load_params(PARAMS_YAML)
    source = yaml.safe_load(PARAMS_YAML.read_text())
    assert set(params.models) == set(source["models"])
    assert params.smart.lambda_ == float(source["smart"]["lambda"])
    assert params.train.batch_size == source["train"]["batch_size"]
    assert params.model.backbone == source["model"]["backbone"]
    for name, member in params.models.items():
        assert member.name == name
        overridden = source["models"][name] or {}
        for section in SECTIONS:
            if section not in overridden:  # an untouched section is exactly the global one
                assert getattr(member, section) == getattr(params, section), (name, section)
    for task, members in params.ensemble.items():
        for member in members:
            assert task in params.models[member].tasks


def test_default_params_are_the_papers_best_submission():
    # Table 5: SST from the single-task model, the CS224N classifier (10 epochs, each one full
    # pass over SST train, batch 16, lr 1e-5); QQP/STS from Table 4's
    # "SC + CS* + SMART(10) + (2e-5, 32)": 4 epochs QQP alone, then 8 round robin.
    params = load_params(PARAMS_YAML)
    multitask, single = params.models["multitask"], params.models["sst_single"]
    assert multitask.tasks == ["sst", "qqp", "sts"] and single.tasks == ["sst"]
    assert (multitask.model.backbone, multitask.model.pair_encoding, multitask.model.pooling) == (
        "bert-base-uncased", "concat", "cls")
    train = multitask.train
    assert (train.schedule, train.custom.task, train.custom.fraction) == ("custom", "qqp", 0.8)
    assert (train.custom.epochs, train.epochs - train.custom.epochs) == (4, 8)
    assert (train.lr, train.batch_size, multitask.smart.lambda_) == (2e-5, 32, 10.0)
    assert multitask.smart.perturbation == "normalize" and not multitask.pcgrad.enabled
    assert (single.train.batch_size, single.train.lr, single.smart.lambda_) == (16, 1e-5, 0.0)
    assert (single.train.epochs, single.train.batches_per_epoch, single.train.schedule) == (
        10, None, "round_robin")
    # Each member's best epoch is picked on the tasks the ensemble takes from it.
    assert multitask.train.select_by == single.train.select_by == "ensemble"
    assert (multitask.select_tasks, single.select_tasks) == (["qqp", "sts"], ["sst"])
    assert params.ensemble == {"sst": ["sst_single"], "qqp": ["multitask"], "sts": ["multitask"]}
    llm = params.augment.llm
    assert (llm.model, llm.max_reviews, llm.min_confidence) == (
        "meta-llama/Meta-Llama-3-8B", 5000, None)


# Dataclass fields that are no params.yaml key, and why.
NOT_PARAMS = {"train.seed": "the train stage's matrix axis, from the top-level `seeds:`"}


def params_fields(cls, node, prefix=""):
    """(yaml path, present in ``node``) of every field of ``cls`` and of the sections nested in
    it. Task declarations (`tasks:`) and members (`models:`) are mappings of named entries
    whose unset keys come from the task's kind and from the global sections."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f.name.rstrip("_")
        path = f"{prefix}{key}"
        if path in NOT_PARAMS:
            continue
        yield path, key in node
        tp = hints[f.name]
        for option in typing.get_args(tp) if typing.get_origin(tp) is types.UnionType else [tp]:
            if dataclasses.is_dataclass(option) and isinstance(node.get(key), dict):
                yield from params_fields(option, node[key], f"{path}.")


def test_every_config_field_has_a_key_in_params_yaml():
    # params.yaml holds every knob: a field added to a section without its key fails here.
    source = yaml.safe_load(PARAMS_YAML.read_text())
    fields = dict(params_fields(Params, source))
    assert [path for path, present in fields.items() if not present] == []
    # the walk reaches every section and the sections nested in them
    assert {"data.seed", "model.head.dropout", "train.custom.epochs", "train.grad_accum",
            "train.compile", "smart.perturb_at", "pcgrad.enabled", "augment.eda.alpha",
            "augment.reviews.centroid_rows", "augment.llm.cache_dir", "tasks", "models",
            "ensemble", "seeds"} <= set(fields)


def run_cpu_overrides() -> dict[str, str]:
    """The `-S key=value` overrides of scripts/run_cpu.sh's `dvc exp run` (`++` kept): its own
    and those of experiments/cpu_main.yaml, which it passes through scripts/overrides.py."""
    text = (ROOT / "scripts" / "run_cpu.sh").read_text()
    assert "python scripts/overrides.py experiments/cpu_main.yaml" in text
    command = text[text.index("time dvc exp run"):text.index('"$@"')].replace("\\\n", " ")
    tokens = shlex.split(command)
    own = dict(tokens[i + 1].split("=", 1) for i, t in enumerate(tokens)
               if t == "-S" and "$" not in tokens[i + 1])
    args = override_args(load_overrides(ROOT / "experiments" / "cpu_main.yaml"))
    return {**own, **dict(arg.split("=", 1) for arg in args)}


def test_run_cpu_overrides_still_apply():
    raw = yaml.safe_load(PARAMS_YAML.read_text())
    for key, value in run_cpu_overrides().items():
        *parents, leaf = key.removeprefix("++").split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {}) if key.startswith("++") else node[part]
        # Hydra: `key=v` sets a key params.yaml has, `++key=v` one it has or not.
        assert key.startswith("++") or leaf in node, f"run_cpu.sh: -S {key}: no such key"
        node[leaf] = yaml.load(value, Loader=_ParamsLoader)
    params = parse_params(raw)
    single, multitask = params.models["sst_single"], params.models["multitask"]
    assert (single.train.epochs, single.train.batches_per_epoch, single.train.batch_size,
            single.train.lr, single.train.schedule) == (2, 270, 16, 1e-4, "round_robin")
    assert (multitask.tasks, multitask.train.epochs, multitask.train.batches_per_epoch,
            multitask.train.schedule, multitask.train.select_rows) == (
        ["qqp", "sts"], 3, 240, "annealed", {"qqp": 2000})
    # the ensemble takes every task of each member: selection is each member's `overall`
    assert (single.select_tasks, multitask.select_tasks) == (["sst"], ["qqp", "sts"])


def test_load_params_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "params.yaml")


def test_load_params_invalid_yaml(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(path)


def test_load_params_reads_floats_as_dvc_writes_them(tmp_path):
    # `dvc exp run -S train.lr=2e-5` rewrites params.yaml with `lr: 2e-05` (YAML 1.2 float
    # syntax, no decimal point); PyYAML's YAML 1.1 resolver alone would read that as a string.
    path = tmp_path / "params.yaml"
    path.write_text(
        "train:\n  lr: 2e-05\n  weight_decay: 1E-2\n"
        "smart:\n  lambda: 1e+1\n"
        "models:\n  multitask: {tasks: [sst, qqp, sts]}\n"
    )
    params = load_params(path)
    assert params.train.lr == pytest.approx(2e-5)
    assert params.train.weight_decay == pytest.approx(0.01)
    assert params.smart.lambda_ == 10.0
    assert params.models["multitask"].train.lr == pytest.approx(2e-5)


# --- defaults ⊕ overrides ----------------------------------------------------------------------


def test_member_override_and_defaults(raw):
    params = parse_params(raw)
    assert params.models["big_batch"].train.batch_size == 64
    assert params.models["plain"].train.batch_size == 16
    # the rest of the overriding member's train section still comes from the globals
    assert params.models["big_batch"].train.schedule == "round_robin"
    assert params.models["big_batch"].train.lr == TrainConfig().lr
    # sections the YAML leaves out are the dataclass defaults
    assert params.models["plain"].model == ModelConfig()
    assert params.models["plain"].loss == LossConfig()


def test_global_change_reaches_members_without_override(raw):
    raw["train"]["batch_size"] = 32
    raw["smart"]["lambda"] = 8
    raw["models"]["big_batch"]["smart"] = {"lambda": 2.0}
    params = parse_params(raw)
    assert params.models["plain"].train.batch_size == 32
    assert params.models["big_batch"].train.batch_size == 64
    assert params.models["plain"].smart.lambda_ == 8.0
    assert params.models["big_batch"].smart.lambda_ == 2.0


def test_nested_override_merges_deeply(raw):
    raw["train"]["schedule"] = "custom"
    raw["train"]["custom"] = {"task": "qqp", "fraction": 0.5, "epochs": 3}
    raw["models"]["big_batch"]["train"]["custom"] = {"epochs": 1}
    params = parse_params(raw)
    assert params.models["big_batch"].train.custom == CustomScheduleConfig("qqp", 0.5, 1)
    assert params.models["plain"].train.custom == CustomScheduleConfig("qqp", 0.5, 3)


PER_TASK_MAPS = [("train", "sampling_weights"), ("train", "select_rows"),
                 ("loss", "task_weights"), ("smart", "task_lambda")]


@pytest.mark.parametrize("value", [{}, None], ids=["empty", "null"])
def test_a_members_empty_map_replaces_the_global_one(raw, value):
    raw["train"].update(schedule="annealed", sampling_weights={"sts": 0.6},
                        select_rows={"qqp": 2000})
    raw["loss"] = {"task_weights": {"sst": 2.0}}
    raw["smart"]["task_lambda"] = {"qqp": 1.0}
    # a round-robin member under a global sampling_weights: configurable only by clearing it
    raw["models"]["plain"] = {"tasks": ["sst"], "train": {"schedule": "round_robin"}}
    for section, key in PER_TASK_MAPS:
        raw["models"]["plain"].setdefault(section, {})[key] = value
    raw["ensemble"] = {"sst": ["plain"]}
    params = parse_params(raw)
    plain, other = params.models["plain"], params.models["big_batch"]
    for section, key in PER_TASK_MAPS:
        assert getattr(getattr(plain, section), key) == {}, (section, key)
    # a member that sets none of them keeps the global maps
    assert (other.train.sampling_weights, other.train.select_rows, other.loss.task_weights,
            other.smart.task_lambda) == ({"sts": 0.6}, {"qqp": 2000}, {"sst": 2.0}, {"qqp": 1.0})


def test_a_members_empty_map_from_the_command_line(tmp_path):
    # `dvc exp run -S 'models.m.train.select_rows={}'` writes `select_rows: {}` into params.yaml
    path = tmp_path / "params.yaml"
    path.write_text("train: {select_rows: {qqp: 2000}}\n"
                    "models:\n  m: {train: {select_rows: {}}}\n  n: {}\n")
    params = load_params(path)
    assert params.models["m"].train.select_rows == {}
    assert params.models["n"].train.select_rows == {"qqp": 2000}


def test_a_members_non_empty_map_merges_key_by_key(raw):
    raw["train"]["select_rows"] = {"qqp": 2000, "sts": 800}
    raw["models"]["plain"]["train"] = {"select_rows": {"sts": 500, "sst": 100}}
    assert parse_params(raw).models["plain"].train.select_rows == {
        "qqp": 2000, "sts": 500, "sst": 100}
    # a nested section given as {} overrides nothing: only a per-task map is cleared by {}
    raw["model"] = {"head": {"layers": 3}}
    raw["models"]["plain"]["model"] = {"head": {}}
    assert parse_params(raw).models["plain"].model.head.layers == 3


def test_member_defaults_to_all_tasks(raw):
    raw["models"]["plain"] = None
    assert parse_params(raw).models["plain"].tasks == ["sst", "qqp", "sts"]


def test_numbers_are_typed(raw):
    raw["train"]["lr"] = 1  # an integer where a float is expected is accepted as 1.0
    raw["models"]["plain"]["train"] = {"batches_per_epoch": None}
    params = parse_params(raw)
    assert isinstance(params.train.lr, float) and params.train.lr == 1.0
    assert params.models["plain"].train.batches_per_epoch is None
    assert params.models["big_batch"].train.batches_per_epoch == TrainConfig().batches_per_epoch


# --- which tasks pick the best epoch -----------------------------------------------------------


def test_select_by_ensemble_selects_on_the_tasks_the_ensemble_takes(raw):
    raw["train"]["select_by"] = "ensemble"
    raw["models"]["solo"] = {"tasks": ["qqp", "sts"]}  # not in the ensemble
    # the ensemble takes sst from plain and big_batch, qqp from plain
    params = parse_params(raw)
    assert params.models["plain"].select_tasks == ["sst", "qqp"]
    assert params.models["big_batch"].select_tasks == ["sst"]
    assert params.models["solo"].select_tasks == ["qqp", "sts"]  # takes none: all its tasks
    assert params.models["plain"].selection_label == "overall(sst, qqp)"
    assert params.models["solo"].selection_label == "overall"
    raw["train"]["select_by"] = "overall"  # every task of the member, whatever the ensemble
    params = parse_params(raw)
    assert [m.select_tasks for m in params.models.values()] == [["sst", "qqp", "sts"]] * 2 + [
        ["qqp", "sts"]]
    assert params.models["plain"].selection_label == "overall"
    raw["train"]["select_by"] = "qqp_acc"
    params = parse_params(raw)
    assert params.models["plain"].select_tasks == ["qqp"]
    assert params.models["plain"].selection_label == "qqp_acc"


def test_select_by_names_the_allowed_values(raw):
    raw["train"]["select_by"] = "sts_acc"
    assert ("params.yaml: models.plain.train.select_by: 'sts_acc' is not a dev metric of this "
            "member; expected one of ['overall', 'ensemble', 'sst_acc', 'qqp_acc', "
            "'sts_pearson']") in error_of(raw)


# --- smart.lambda ------------------------------------------------------------------------------


def test_smart_lambda_yaml_key(raw):
    raw["smart"] = {"lambda": 10, "task_lambda": {"sst": 0.0, "sts": 5}}
    smart = parse_params(raw).smart
    assert smart.lambda_ == 10.0
    assert smart.lambda_for("qqp") == 10.0
    assert smart.lambda_for("sst") == 0.0
    assert smart.lambda_for("sts") == 5.0


def test_lambda_for_without_task_lambda():
    assert SmartConfig(lambda_=3.0).lambda_for("sst") == 3.0


def test_python_field_name_is_not_a_yaml_key(raw):
    raw["smart"] = {"lambda_": 10}
    assert "params.yaml: smart: unknown key(s) ['lambda_']" in error_of(raw)


# --- errors name the key path ------------------------------------------------------------------


def test_unknown_top_level_key(raw):
    raw["trian"] = {}
    assert "params.yaml: unknown top-level key(s) ['trian']" in error_of(raw)


def test_unknown_section_key(raw):
    raw["train"]["batchsize"] = 8
    message = error_of(raw)
    assert "params.yaml: train: unknown key(s) ['batchsize']" in message
    assert "batch_size" in message  # the known keys are listed


def test_unknown_nested_key(raw):
    raw["model"] = {"head": {"depth": 3}}
    assert "params.yaml: model.head: unknown key(s) ['depth']" in error_of(raw)


def test_unknown_member_key(raw):
    raw["models"]["plain"]["optimiser"] = {}
    assert "params.yaml: models.plain: unknown key(s) ['optimiser']" in error_of(raw)


def test_unknown_key_in_member_section(raw):
    raw["models"]["big_batch"]["train"]["batchsize"] = 8
    assert "params.yaml: models.big_batch.train: unknown key(s) ['batchsize']" in error_of(raw)


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("train", "batch_size", "16", "params.yaml: train.batch_size: expected an integer"),
        ("train", "epochs", 2.5, "params.yaml: train.epochs: expected an integer"),
        ("train", "epochs", True, "params.yaml: train.epochs: expected an integer"),
        ("train", "lr", "fast", "params.yaml: train.lr: expected a number"),
        ("train", "length_grouping", 1, "params.yaml: train.length_grouping: expected true"),
        ("train", "betas", 0.9, "params.yaml: train.betas: expected a list"),
        ("train", "betas", [0.9, "x"], "params.yaml: train.betas[1]: expected a number"),
        ("train", "schedule", "shuffle", "params.yaml: train.schedule: expected one of"),
        ("model", "pooling", "avg", "params.yaml: model.pooling: expected one of"),
        ("model", "backbone", 7, "params.yaml: model.backbone: expected a string"),
        ("model", "head", 2, "params.yaml: model.head: expected a mapping"),
        ("model", "pair_features", "u", "params.yaml: model.pair_features: expected a list"),
        ("model", "pair_features", ["u", "w"], "params.yaml: model.pair_features[1]: expected one"),
        ("loss", "sts_contrastive_target", "inverse",
         "params.yaml: loss.sts_contrastive_target: expected one of"),
        ("loss", "task_weights", [1, 1, 1], "params.yaml: loss.task_weights: expected a mapping"),
        ("loss", "task_weights", {"sst": "x"}, "params.yaml: loss.task_weights.sst: expected a"),
        ("smart", "norm", "l1", "params.yaml: smart.norm: expected one of"),
        ("smart", "perturbation", "clamp",
         "params.yaml: smart.perturbation: expected one of ['normalize', 'project'], got 'clamp'"),
    ],
)
def test_wrong_types_name_the_key(raw, section, key, value, expected):
    raw.setdefault(section, {})[key] = value
    assert expected in error_of(raw)


def test_wrong_type_in_member_override(raw):
    raw["models"]["big_batch"]["train"]["batch_size"] = "lots"
    assert "params.yaml: models.big_batch.train.batch_size: expected an integer" in error_of(raw)


def test_wrong_nested_type(raw):
    raw["model"] = {"head": {"layers": "two"}}
    assert "params.yaml: model.head.layers: expected an integer" in error_of(raw)


@pytest.mark.parametrize("parts", [[], ["u", "v", "u"]], ids=["empty", "dup"])
def test_pair_features_must_be_distinct_and_non_empty(raw, parts):
    raw["model"] = {"pair_features": parts}
    message = error_of(raw)
    assert "params.yaml: model.pair_features: expected distinct parts from" in message
    assert "['u', 'v', 'diff', 'prod']" in message
    del raw["model"]
    raw["models"]["plain"]["model"] = {"pair_features": parts}
    assert "params.yaml: models.plain.model.pair_features: expected distinct" in error_of(raw)
    raw["models"]["plain"]["model"] = {"pair_features": ["v", "u"]}
    assert parse_params(raw).models["plain"].model.pair_features == ["v", "u"]
    with pytest.raises(ConfigError, match="pair_features"):
        ModelConfig(pair_features=parts)


def test_defaults_of_pair_features_and_sts_contrastive_target():
    assert ModelConfig().pair_features == ["u", "v", "diff", "prod"]
    assert LossConfig().sts_contrastive_target == "similarity"


def test_section_must_be_a_mapping(raw):
    raw["train"] = [1, 2]
    assert "params.yaml: train: expected a mapping" in error_of(raw)


def test_models_required(raw):
    raw["models"] = {}
    assert "params.yaml: models" in error_of(raw)


@pytest.mark.parametrize(
    "tasks", [["sst", "mnli"], [], ["sst", "sst"], "sst"], ids=["unknown", "empty", "dup", "str"]
)
def test_bad_member_tasks(raw, tasks):
    raw["models"]["plain"]["tasks"] = tasks
    assert "params.yaml: models.plain.tasks" in error_of(raw)


def test_bad_custom_task(raw):
    raw["train"]["custom"] = {"task": "mnli"}
    assert "params.yaml: train.custom.task: expected one of" in error_of(raw)


def test_custom_task_not_among_member_tasks(raw):
    raw["train"]["schedule"] = "custom"
    raw["models"]["plain"]["tasks"] = ["sst"]
    raw["ensemble"] = {"sst": ["plain"]}
    assert "params.yaml: models.plain.train.custom.task" in error_of(raw)


@pytest.mark.parametrize("custom_epochs", [4, 5])
def test_custom_phase_must_leave_a_multitask_epoch(raw, custom_epochs):
    raw["train"].update(schedule="custom", epochs=4, custom={"epochs": custom_epochs})
    message = error_of(raw)
    assert "params.yaml: models.plain.train.custom.epochs" in message
    assert "custom.epochs < epochs" in message
    raw["train"]["custom"] = {"epochs": 3}
    assert parse_params(raw).models["plain"].train.custom.epochs == 3


@pytest.mark.parametrize(
    ("section", "key"),
    [("loss", "task_weights"), ("smart", "task_lambda")],
)
def test_unknown_task_in_per_task_mapping(raw, section, key):
    # a typo'd task here would otherwise be ignored silently (e.g. SMART left off for QQP)
    raw.setdefault(section, {})[key] = {"sst": 1.0, "qpq": 2.0}
    message = error_of(raw)
    assert f"params.yaml: {section}.{key}" in message
    assert "qpq" in message


def test_augment_source_checked(raw):
    raw["models"]["plain"]["augment"] = ["eda", "wiki"]
    assert "params.yaml: models.plain.augment: unknown source(s) ['wiki']" in error_of(raw)


def test_augment_needs_sst(raw):
    raw["models"]["plain"] = {"tasks": ["qqp"], "augment": ["eda"]}
    raw["ensemble"] = {"qqp": ["plain"]}
    assert "params.yaml: models.plain.augment" in error_of(raw)


def test_ensemble_unknown_member(raw):
    raw["ensemble"]["sts"] = ["plain", "ghost"]
    message = error_of(raw)
    assert "params.yaml: ensemble.sts" in message
    assert "'ghost' is not in models" in message


def test_ensemble_member_not_trained_on_task(raw):
    raw["models"]["sst_only"] = {"tasks": ["sst"]}
    raw["ensemble"]["qqp"] = ["plain", "sst_only"]
    message = error_of(raw)
    assert "params.yaml: ensemble.qqp" in message
    assert "'sst_only' is not trained on qqp" in message


def test_ensemble_unknown_task(raw):
    raw["ensemble"]["mnli"] = ["plain"]
    assert "params.yaml: ensemble.mnli: unknown task" in error_of(raw)


def test_parse_does_not_mutate_its_input(raw):
    before = copy.deepcopy(raw)
    parse_params(raw)
    assert raw == before


# --- seeds -------------------------------------------------------------------------------------


def test_training_seeds_are_a_top_level_list(raw):
    raw["seeds"] = [11, 12, 13]
    raw["data"] = {"seed": 5}
    params = parse_params(raw)
    assert params.seeds == [11, 12, 13] and params.data.seed == 5
    assert parse_params({"models": {"m": {}}}).seeds == [TrainConfig().seed]


@pytest.mark.parametrize("where", ["global", "member"])
def test_train_seed_is_rejected_for_the_seeds_list(raw, where):
    section = raw["train"] if where == "global" else raw["models"]["plain"].setdefault("train", {})
    section["seed"] = 7
    message = error_of(raw)
    key = "train.seed" if where == "global" else "models.plain.train.seed"
    assert f"params.yaml: {key}" in message and "top-level `seeds:`" in message


@pytest.mark.parametrize("seeds", [[], [11, 11], [1.5], "11", [True]])
def test_bad_seeds(raw, seeds):
    raw["seeds"] = seeds
    assert "params.yaml: seeds" in error_of(raw)


def test_member_for_seed_sets_only_the_training_seed(raw):
    params = parse_params(raw)
    member = member_for_seed(params, "big_batch", 13)
    assert member.train.seed == 13 and member.train.batch_size == 64
    assert dataclasses.replace(member.train, seed=params.models["big_batch"].train.seed) == (
        params.models["big_batch"].train)
    assert member.model == params.models["big_batch"].model and member.name == "big_batch"
    with pytest.raises(ConfigError, match="no member 'ghost'"):
        member_for_seed(params, "ghost", 1)


def test_project_params_train_seeds_not_data_seed():
    source = yaml.safe_load(PARAMS_YAML.read_text())
    assert "seed" not in source["train"] and source["seeds"]
    assert load_params(PARAMS_YAML).data.seed == source["data"]["seed"]


# --- ranges ------------------------------------------------------------------------------------


def ranged_fields(cls, prefix=""):
    """(yaml path, Range, base type) of every range-checked scalar field, nested ones included."""
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        key, tp = f.name.rstrip("_"), hints[f.name]
        for option in typing.get_args(tp) if typing.get_origin(tp) is types.UnionType else [tp]:
            if typing.get_origin(option) is typing.Annotated:
                for rule in option.__metadata__:
                    if isinstance(rule, Range):
                        yield f"{prefix}{key}", rule, typing.get_args(option)[0]
            elif dataclasses.is_dataclass(option):
                yield from ranged_fields(option, f"{prefix}{key}.")


def outside(rule: Range, base: type):
    """A value just outside ``rule``'s interval."""
    if rule.ge is not None:
        return rule.ge - 1 if base is int else rule.ge - 0.5
    if rule.gt is not None:
        return rule.gt if base is int else rule.gt - 1e-9
    if rule.le is not None:
        return rule.le + 1 if base is int else rule.le + 0.5
    return rule.lt


RANGED = [(section, key, rule, base)
          for section, cls in [("train", TrainConfig), ("model", ModelConfig),
                               ("loss", LossConfig), ("smart", SmartConfig),
                               ("data", DataConfig), ("augment", AugmentConfig)]
          for key, rule, base in ranged_fields(cls)
          if (section, key) != ("train", "seed")]  # set from `seeds:`, tested there


def test_every_numeric_knob_has_a_range():
    # Not a tautology: a numeric field added without Annotated[..., Range] fails here.
    unranged = []
    for cls in (TrainConfig, ModelConfig, HeadConfig, LossConfig, SmartConfig, DataConfig,
                CustomScheduleConfig, EdaConfig, ReviewsConfig, LlmConfig):
        hints = typing.get_type_hints(cls, include_extras=True)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            options = typing.get_args(tp) if typing.get_origin(tp) is types.UnionType else [tp]
            if any(o in (int, float) for o in options):
                unranged.append(f"{cls.__name__}.{f.name}")
    assert unranged == []
    assert len(RANGED) >= 30  # the walker reaches nested sections (custom, head, eda …)


@pytest.mark.parametrize("section,key,rule,base", RANGED,
                         ids=[f"{s}.{k}" for s, k, _, _ in RANGED])
def test_out_of_range_values_are_one_line_errors_naming_key_value_and_range(
        raw, section, key, rule, base):
    value = outside(rule, base)
    node = raw.setdefault(section, {})
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    message = error_of(raw)
    assert message == (f"params.yaml: {section}.{key}: {value!r} is out of range; expected "
                       f"{'an integer' if base is int else 'a number'} {rule.describe()}")


@pytest.mark.parametrize("key,value,expected", [
    ("batch_size", -4, "train.batch_size: -4 is out of range; expected an integer ≥ 1"),
    ("lr", -1e-5, "train.lr: -1e-05 is out of range; expected a number > 0"),
    ("epochs", 0, "train.epochs: 0 is out of range; expected an integer ≥ 1"),
    ("batches_per_epoch", 0, "train.batches_per_epoch: 0 is out of range"),
    ("betas", [0.9, 1.0], "train.betas[1]: 1.0 is out of range; expected a number ≥ 0 and < 1"),
    ("betas", [0.9], "train.betas: expected two numbers [β1, β2], got [0.9]"),
    ("device", "gpu", "train.device: 'gpu' is not allowed; expected auto, cpu, mps, cuda or"),
])
def test_ranges_by_hand(raw, key, value, expected):
    raw["train"][key] = value
    assert expected in error_of(raw)


def test_per_task_and_per_member_values_are_ranged_too(raw):
    raw["data"] = {"train_rows": {"qqp": 0}}
    assert "data.train_rows.qqp: 0 is out of range" in error_of(raw)
    del raw["data"]
    raw["models"]["big_batch"]["train"]["batch_size"] = 0
    assert "models.big_batch.train.batch_size: 0 is out of range" in error_of(raw)
    raw["models"]["big_batch"]["train"]["batch_size"] = 8
    raw["smart"]["task_lambda"] = {"sst": -1}
    assert "smart.task_lambda.sst: -1.0 is out of range" in error_of(raw)


def test_a_params_file_elsewhere_is_named_in_its_errors(tmp_path):
    path = tmp_path / "variant.yaml"
    path.write_text("train: {epochs: 0}\nmodels: {m: {}}\n")
    with pytest.raises(ConfigError, match=r"^.*variant\.yaml: train\.epochs: 0 is out of range"):
        load_params(path)
    path.write_text("train: {epochs: [1\n")
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert "\n" not in str(info.value) and "variant.yaml: not valid YAML" in str(info.value)
    with pytest.raises(ConfigError, match="is a directory"):
        load_params(tmp_path)


def test_a_key_given_twice_is_an_error_not_the_last_one_winning(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: 1.0e-5\n  epochs: 2\n  lr: 2.0e-5\nmodels: {m: {}}\n")
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert str(info.value) == (f"{path}: line 4: key 'lr' appears twice in one mapping (first "
                               f"on line 2); keep one")


def test_sampling_weights_name_real_tasks_and_a_sampled_schedule(raw):
    raw["train"].update(schedule="annealed", sampling_weights={"sst": 1.5, "stsb": 0.5})
    assert "params.yaml: train.sampling_weights: unknown task(s) ['stsb']" in error_of(raw)
    raw["train"].update(schedule="round_robin", sampling_weights={"sts": 0.5})
    assert ("train.sampling_weights: {'sts': 0.5} weigh the random and annealed schedules' "
            "draws; train.schedule is 'round_robin'") in error_of(raw)
    raw["train"].update(schedule="annealed", sampling_weights={"sts": 0.0})
    assert "sampling_weights" in error_of(raw)
    raw["train"]["sampling_weights"] = {"sts": 0.5}
    assert parse_params(raw).models["plain"].train.sampling_weights == {"sts": 0.5}


def above(rule: Range, base: type):
    """A value just above ``rule``'s upper bound."""
    if rule.le is not None:
        return rule.le + 1 if base is int else float(rule.le) * 2
    return rule.lt if base is int else float(rule.lt)


UPPER = [(section, key, rule, base) for section, key, rule, base in RANGED
         if rule.le is not None or rule.lt is not None]


def test_every_integer_knob_has_an_upper_bound():
    # A count without one lets a typo (2**63) exhaust memory or time instead of failing here.
    unbounded = [f"{s}.{k}" for s, k, rule, base in RANGED
                 if base is int and rule.le is None and rule.lt is None]
    assert unbounded == []


@pytest.mark.parametrize("section,key,rule,base", UPPER, ids=[f"{s}.{k}" for s, k, _, _ in UPPER])
def test_values_above_the_upper_bound_are_one_line_errors(raw, section, key, rule, base):
    value = above(rule, base)
    node = raw.setdefault(section, {})
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    assert error_of(raw) == (f"params.yaml: {section}.{key}: {value!r} is out of range; expected "
                             f"{'an integer' if base is int else 'a number'} {rule.describe()}")


@pytest.mark.parametrize("key,value,expected", [
    ("epochs", 2**63,
     "train.epochs: 9223372036854775808 is out of range; expected an integer ≥ 1 and ≤ 1000"),
    ("batch_size", 2**40, "train.batch_size: 1099511627776 is out of range"),
    ("lr", 10**400, "train.lr: expected a finite number, got an integer of 1,329 bits"),
])
def test_absurd_values_by_hand(raw, key, value, expected):
    raw["train"][key] = value
    assert expected in error_of(raw)


def test_a_run_of_more_steps_than_planned_up_front_is_an_error(raw):
    # Each bound alone allows 1000 epochs and 10⁶ batches per epoch; together they are 10⁹ steps.
    raw["train"].update(epochs=1000, batches_per_epoch=10**6)
    assert error_of(raw) == ("params.yaml: train.batches_per_epoch: 1000 epochs × 1000000 "
                             "batches are 1,000,000,000 steps; expected at most 10,000,000 (the "
                             "schedule lists every step up front)")
    raw["train"]["batches_per_epoch"] = 10**4
    assert parse_params(raw).train.epochs == 1000


def test_more_micro_batches_than_examples_are_an_error(raw):
    raw["models"]["big_batch"]["train"]["grad_accum"] = 65
    assert ("models.big_batch.train.grad_accum: 65 micro-batches of a batch of batch_size = 64 "
            "examples; expected grad_accum ≤ batch_size") in error_of(raw)
    raw["models"]["big_batch"]["train"]["grad_accum"] = 64
    assert parse_params(raw).models["big_batch"].train.grad_accum == 64


def test_seeds_are_bounded_in_number(raw):
    raw["seeds"] = list(range(1001))
    assert error_of(raw) == ("params.yaml: seeds: 1,001 seeds; expected at most 1000 (each trains "
                             "every member once)")


# --- NaN, infinities, strings ------------------------------------------------------------------


@pytest.mark.parametrize("path,value,where", [
    ("train.lr", math.nan, "train.lr"),
    ("train.lr", math.inf, "train.lr"),
    ("train.weight_decay", -math.inf, "train.weight_decay"),
    ("train.betas", [math.nan, 0.999], "train.betas[0]"),
    ("train.checkpoint_minutes", math.inf, "train.checkpoint_minutes"),
    ("smart.lambda", math.nan, "smart.lambda"),
    ("loss.task_weights", {"sts": math.nan}, "loss.task_weights.sts"),
    ("train.sampling_weights", {"sts": math.inf}, "train.sampling_weights.sts"),
    ("models.plain.smart", {"lambda": math.nan}, "models.plain.smart.lambda"),
], ids=lambda v: str(v))
def test_nan_and_infinities_pass_no_range(raw, path, value, where):
    # NaN compares false with every bound, so a range check alone would let it through.
    *parents, leaf = path.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    if path == "train.sampling_weights":
        raw["train"]["schedule"] = "annealed"
    shown = "nan" if "nan" in repr(value) else "-inf" if "-inf" in repr(value) else "inf"
    assert error_of(raw) == f"params.yaml: {where}: expected a finite number, got {shown}"


def test_strings_are_bounded_and_hold_no_nul(raw):
    raw["model"] = {"backbone": "b" * 100_000}
    message = error_of(raw)
    assert message.startswith("params.yaml: model.backbone: 'bbbb") and message.endswith(
        "… (100,000 characters) is too long; expected at most 4096 characters")
    assert len(message) < 200
    raw["model"] = {"backbone": "models/a\x00b"}
    assert error_of(raw) == ("params.yaml: model.backbone: 'models/a\\x00b' holds a NUL "
                             "character; no name or path can")


def test_an_error_shows_a_huge_value_cut(raw):
    raw["train"]["betas"] = [0.5] * 100_000
    message = error_of(raw)
    assert message.startswith("params.yaml: train.betas: expected two numbers [β1, β2], got "
                              "[0.5, 0.5, 0.5,") and message.endswith(", …]") and len(message) < 300


def test_eda_operations_must_not_be_empty(raw):
    raw["augment"] = {"eda": {"operations": []}}
    assert error_of(raw) == ("params.yaml: augment.eda.operations: expected a non-empty list "
                             "from ['sr', 'ri', 'rs', 'rd'], got []")


# --- member shapes and names -------------------------------------------------------------------

MEMBER_LOOKS = "expected a mapping of its tasks and optional overrides, e.g. {tasks: [sst, qqp]"


@pytest.mark.parametrize("member", [["sst", "qqp"], 3, "sst", [{"tasks": ["sst"]}], True],
                         ids=["task-list", "number", "string", "list-of-mappings", "bool"])
def test_a_member_of_another_shape_says_what_a_member_looks_like(raw, member):
    raw["models"]["plain"] = member
    message = error_of(raw)
    assert message.startswith(f"params.yaml: models.plain: {MEMBER_LOOKS}"), message
    assert f"got {member!r}" in message


def test_a_member_given_its_task_names_is_shown_how_to_write_them(raw):
    raw["models"]["plain"] = ["sst", "qqp"]
    assert error_of(raw).endswith("; for a member of these tasks write {tasks: [sst, qqp]}")
    raw["models"]["plain"] = {"sst": None, "qqp": None}
    message = error_of(raw)
    assert "models.plain: unknown key(s) ['qqp', 'sst']; a member is a mapping of its tasks" in (
        message)


@pytest.mark.parametrize("section", ["train", "smart", "model"])
def test_a_member_section_given_as_a_list(raw, section):
    raw["models"]["plain"][section] = [{"lr": 1.0}]
    assert error_of(raw) == (f"params.yaml: models.plain.{section}: expected a mapping of the "
                             f"{section} keys this member overrides, got [{{'lr': 1.0}}]")


@pytest.mark.parametrize("name", [5, None, "a/b", "a b", ".hidden", "a.b", "-a", "x" * 65,
                                  "modèle", "a@b", ""])
def test_member_names_are_safe_for_dvc_and_file_systems(raw, name):
    raw["models"][name] = {"tasks": ["sst"]}
    message = error_of(raw)
    assert message.startswith("params.yaml: models: member name ") and (
        "expected letters, digits, _ and -, starting with a letter or _, at most 64 characters"
        in message), message


def test_member_names_of_letters_digits_underscores_and_hyphens_are_fine(raw):
    raw["models"] = {"sst_single-2": {"tasks": ["sst"]}, "_x": {}, "B": {}}
    raw["ensemble"] = {"sst": ["sst_single-2", "_x"]}
    assert list(parse_params(raw).models) == ["sst_single-2", "_x", "B"]


def test_member_names_that_differ_by_case_alone_are_an_error(raw):
    raw["models"]["Plain"] = {}
    assert error_of(raw) == ("params.yaml: models.Plain: differs from models.plain only by case; "
                             "their directories collide on a case-insensitive file system: "
                             "rename one")


def test_unknown_keys_of_mixed_types_are_listed(raw):
    raw["train"].update({1: 2, "foo": 3, None: 4})
    assert error_of(raw).startswith("params.yaml: train: unknown key(s) [1, None, 'foo']; known:")
    del raw["train"][1], raw["train"]["foo"], raw["train"][None]
    raw[7] = {}
    assert error_of(raw).startswith("params.yaml: unknown top-level key(s) [7]; known:")


def test_a_source_named_twice_in_augment(raw):
    raw["models"]["plain"]["augment"] = ["eda", "eda"]
    assert error_of(raw) == ("params.yaml: models.plain.augment: ['eda', 'eda'] names a source "
                             "twice; expected distinct sources (each adds its rows once)")


# --- ensemble ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [{}, []], ids=["empty", "list"])
def test_an_ensemble_of_nothing_is_an_error(raw, value):
    # It would score an overall of 0.0 and write no submission, silently.
    raw["ensemble"] = value
    message = error_of(raw)
    assert message.startswith("params.yaml: ensemble: expected a mapping of tasks to the members "
                              "averaged for each") and f"got {value!r}" in message


@pytest.mark.parametrize("members", [[], None], ids=["empty", "null"])
def test_an_ensemble_task_with_no_member_is_an_error(raw, members):
    raw["ensemble"]["sst"] = members
    assert error_of(raw) == (f"params.yaml: ensemble.sst: expected a list of at least one member, "
                             f"got {members!r}; leave the task out to ensemble none")


def test_an_ensemble_task_names_a_member_once(raw):
    raw["ensemble"]["qqp"] = ["plain", "plain"]
    assert error_of(raw).startswith("params.yaml: ensemble.qqp: ['plain', 'plain'] names a member "
                                    "twice")


@pytest.mark.parametrize("absent", ["no key", "null"])
def test_an_absent_ensemble_takes_every_member_trained_on_each_task(raw, absent):
    # null: an `ensemble:` key whose entries are all commented out.
    if absent == "no key":
        del raw["ensemble"]
    else:
        raw["ensemble"] = None
    raw["models"]["sst_only"] = {"tasks": ["sst"]}
    assert parse_params(raw).ensemble == {"sst": ["plain", "big_batch", "sst_only"],
                                          "qqp": ["plain", "big_batch"],
                                          "sts": ["plain", "big_batch"]}


def test_a_declared_task_the_ensemble_leaves_out_is_noticed(raw, caplog):
    # Not refused: a member may train on a task only to help the others.
    with caplog.at_level(logging.INFO, logger="bestfit.config"):
        params = parse_params(raw)
    assert params.ensemble == {"sst": ["plain", "big_batch"], "qqp": ["plain"]}
    assert [r.getMessage() for r in caplog.records] == [
        "params.yaml: ensemble: no member for declared task(s) ['sts']: the ensemble stage writes "
        "no predictions, score or submission for them"]
    caplog.clear()
    raw["ensemble"]["sts"] = ["plain"]
    with caplog.at_level(logging.INFO, logger="bestfit.config"):
        parse_params(raw)
    assert caplog.records == []


# --- max_length against the backbone -----------------------------------------------------------


def test_max_length_above_the_backbones_positions_is_an_error(raw):
    raw["model"] = {"max_length": 600}
    member = parse_params(raw).models["plain"]
    huge = int(1e30)  # transformers' model_max_length when a tokenizer declares none
    with pytest.raises(ConfigError) as info:
        check_max_length(member, 512, huge)
    assert str(info.value) == (
        "params.yaml: model.max_length of member 'plain': 600 is above what backbone "
        "'bert-base-uncased' encodes (max_position_embeddings 512); expected ≤ 512")
    # RoBERTa: 514 position rows, 512 tokens: the tokenizer's smaller limit is the one named.
    with pytest.raises(ConfigError, match=r"\(tokenizer's model_max_length 512\); expected ≤ 512"):
        check_max_length(member, 514, 512)
    check_max_length(member, 600, huge)
    check_max_length(member, None, None)  # a backbone that declares neither: nothing to check


# --- the YAML itself ---------------------------------------------------------------------------


def test_merge_keys_work_and_the_keys_beside_them_override(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(
        "train: {schedule: round_robin}\n"
        "models:\n"
        "  base: &base\n"
        "    tasks: [sst, qqp]\n"
        "    train: {lr: 1.0e-4, epochs: 3}\n"
        "  variant:\n"
        "    <<: *base\n"
        "    train: {lr: 5.0e-5}\n"
        "  same: {<<: *base}\n")
    params = load_params(path)
    assert params.models["variant"].tasks == ["sst", "qqp"]
    assert params.models["variant"].train.lr == 5e-5  # its own key wins over the merged one
    assert params.models["variant"].train.epochs == TrainConfig.epochs  # not merged deeply
    assert params.models["same"].train == params.models["base"].train


def test_a_key_given_twice_beside_a_merge_key_is_still_an_error(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("models:\n  a: &a {tasks: [sst]}\n  b:\n    <<: *a\n    tasks: [qqp]\n"
                    "    tasks: [sts]\n")
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert str(info.value) == (f"{path}: line 6: key 'tasks' appears twice in one mapping (first "
                               f"on line 5); keep one")


def billion_laughs(levels: int = 9) -> str:
    """Each level a list of nine aliases of the one before: 9**levels values expanded."""
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(["models: {m: {}}", "train:", "  betas:", *("    " + line for line in
                      ["- " + lines[0].split(": ", 1)[1]] + [
                          "- " + line.split(": ", 1)[1] for line in lines[1:]])]) + "\n"


def test_an_alias_bomb_stops_with_one_line_before_it_is_expanded(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(billion_laughs())  # 9⁹ ≈ 3.9·10⁸ values in 12 lines
    with pytest.raises(ConfigError) as info:
        load_params(path)
    # Named: the first list past the bound, the sixth level (9⁶ = 531,441 values) on line 9.
    assert str(info.value) == (f"{path}: line 9: this value expands (aliases included) to more "
                               f"than {MAX_NODES:,} values; expected a params file, not an alias "
                               f"bomb")
    path.write_text(billion_laughs(3))  # 9³ values: a real (if odd) document is read
    with pytest.raises(ConfigError, match=r"train\.betas\[0\]: expected a number, got \['lol'"):
        load_params(path)


@pytest.mark.parametrize("text,expected", [
    ("models: {m: {}}\ntrain: &t\n  custom: *t\n", "line 2: a value that holds itself"),
    ("models: {m: {}}\ntrain: {betas: " + "[" * 100 + "]" * 100 + "}\n",
     "values nested more than 64 deep"),
    ("models: {m: {}}\ntrain: {betas: " + "[" * 5000 + "]" * 5000 + "}\n",
     "values nested too deeply to read"),
    ("models: {m: {}}\ntrain: {epochs: " + "9" * 5000 + "}\n",
     "a value cannot be read: Exceeds the limit (4300 digits) for integer string conversion"),
], ids=["recursive", "deep", "deeper-than-python", "huge-int"])
def test_documents_no_params_file_is_are_one_line_errors(tmp_path, text, expected):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert str(info.value).startswith(f"{path}: ") and expected in str(info.value)
    assert "\n" not in str(info.value)


def test_a_params_file_is_read_only_to_its_bound(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("models: {m: {}}\n# " + "x" * MAX_PARAMS_BYTES + "\n")
    with pytest.raises(ConfigError, match=r"larger than 10 MiB; expected a params file"):
        load_params(path)
    # A device never ends: it is read to the bound and refused, not read until memory runs out.
    with pytest.raises(ConfigError, match=r"^/dev/zero: larger than 10 MiB"):
        load_params("/dev/zero")


def test_a_blank_backbone_and_a_cosine_head_named_twice_are_errors(raw):
    raw["model"] = {"backbone": " "}
    assert error_of(raw) == ("params.yaml: model.backbone: ' ' is not allowed; expected a hub id, "
                             "a local directory or minilm")
    raw["model"] = {"pair_encoding": "separate", "cosine_heads": ["sts", "sts"]}
    assert error_of(raw) == ("params.yaml: model.cosine_heads: ['sts', 'sts'] names a task twice; "
                             "expected distinct tasks")


def test_the_overrides_script_prints_what_run_cpu_passes(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "scripts/overrides.py", "experiments/cpu_main.yaml"],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    expected = override_args(load_overrides(ROOT / "experiments" / "cpu_main.yaml"))
    assert done.stdout.splitlines() == expected and "++model.backbone=minilm" in expected
    bad = tmp_path / "bad.yaml"
    bad.write_text("model.backbone: minilm\n")  # no `set:`
    failed = subprocess.run([sys.executable, "scripts/overrides.py", str(bad)], cwd=ROOT,
                            capture_output=True, text=True)
    assert failed.returncode != 0 and not failed.stdout
    assert f"{bad}: expected a mapping with `set:`" in failed.stderr
