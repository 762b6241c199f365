"""The configure stage: a member's effective config as JSON, the train stages' params dep."""

from __future__ import annotations

import json

import yaml
from conftest import PARAMS_YAML, load_stage

configure = load_stage("configure")


def resolve(tmp_path, params: dict, member: str) -> dict:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    out = tmp_path / "members" / f"{member}.json"
    configure.main([member, "--out", str(out), "--params", str(path)])
    return json.loads(out.read_text())


def test_a_shared_sections_change_reaches_only_the_members_it_changes(tmp_path):
    params = yaml.safe_load(PARAMS_YAML.read_text())
    before = {m: resolve(tmp_path, params, m) for m in params["models"]}
    assert before["sst_single"]["smart"]["lambda_"] == 0.0  # its own override
    params["smart"]["lambda"] = 8.0  # dvc exp run -S smart.lambda=8
    after = {m: resolve(tmp_path, params, m) for m in params["models"]}
    assert after["sst_single"] == before["sst_single"]
    assert after["multitask"]["smart"]["lambda_"] == 8.0
    assert {k: v for k, v in after["multitask"].items() if k != "smart"} == \
        {k: v for k, v in before["multitask"].items() if k != "smart"}


def test_the_seed_is_not_part_of_a_members_config(tmp_path):
    params = yaml.safe_load(PARAMS_YAML.read_text())
    first = resolve(tmp_path, params, "multitask")
    params["seeds"] = [5, *params["seeds"]]
    assert resolve(tmp_path, params, "multitask") == first
    assert "seed" not in first["train"]


def test_the_ensemble_reaches_a_member_only_through_what_it_takes_from_it(tmp_path):
    # select_by: ensemble (the default) picks a member's epoch on the tasks taken from it.
    params = yaml.safe_load(PARAMS_YAML.read_text())
    assert params["train"]["select_by"] == "ensemble"
    first = resolve(tmp_path, params, "multitask")
    assert first["select_tasks"] == ["qqp", "sts"]
    single = resolve(tmp_path, params, "sst_single")
    params["ensemble"]["sst"] = ["sst_single", "multitask"]
    assert resolve(tmp_path, params, "multitask")["select_tasks"] == ["sst", "qqp", "sts"]
    assert resolve(tmp_path, params, "sst_single") == single
