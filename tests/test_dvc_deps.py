"""dvc.yaml declares what each stage runs and touches: every project module its script imports
(transitively) is covered by a dep, and every path on its command line is a dep or an out.

Stages are expanded as DVC does it, enough to read them: `${...}` is substituted from params.yaml
and a `matrix:` stage becomes one stage per combination (`train@multitask-11`); a dict in the
matrix contributes its keys.
"""

from __future__ import annotations

import ast
import itertools
import os
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from conftest import PARAMS_YAML, load_stage

from pipeline.config import load_params
from pipeline.data import file_name

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = re.compile(r"\$\{([^}]+)\}")


def lookup(context: dict[str, Any], key: str) -> Any:
    """``a.b[0]`` in ``context``, as DVC's templating reads it."""
    value: Any = context
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", key.strip()):
        value = value[int(part[1:-1])] if part.startswith("[") else value[part]
    return value


def substitute(node: Any, context: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        return {substitute(k, context): substitute(v, context) for k, v in node.items()}
    if isinstance(node, list):
        return [substitute(v, context) for v in node]
    if not isinstance(node, str):
        return node
    whole = TEMPLATE.fullmatch(node)
    if whole:  # a lone `${x}` keeps x's type (a matrix axis is a list or a dict)
        return lookup(context, whole[1])
    return TEMPLATE.sub(lambda m: str(lookup(context, m[1])), node)


def entry_paths(entries: list[Any] | None) -> list[str]:
    """Paths of a deps / outs / metrics / plots list (an entry is a path or {path: options})."""
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]


def expand_stages() -> dict[str, dict[str, Any]]:
    params = yaml.safe_load(PARAMS_YAML.read_text())
    raw = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    stages = {}
    for name, spec in raw.items():
        if "matrix" in spec:
            axes = substitute(spec["matrix"], params)
            values = [list(v) for v in axes.values()]  # a dict's keys
            for combination in itertools.product(*values):
                item = dict(zip(axes, combination, strict=True))
                body = {k: v for k, v in spec.items() if k != "matrix"}
                suffix = "-".join(str(v) for v in combination)
                stages[f"{name}@{suffix}"] = substitute(body, {**params, "item": item})
        else:
            assert "foreach" not in spec, f"dvc.yaml: {name}: expand foreach here as well"
            stages[name] = substitute(spec, params)
    return stages


STAGES = expand_stages()


def module_file(name: str) -> Path | None:
    """The project file of module ``pipeline.x[.y]``, or None for a package or non-module."""
    path = ROOT.joinpath(*name.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


def runs_code(path: Path) -> bool:
    body = ast.parse(path.read_text()).body
    return bool(body[1:] if body and ast.get_docstring(ast.Module(body, [])) else body)


def package_inits(name: str) -> list[Path]:
    """Package ``__init__.py`` files that importing ``name`` runs, where they hold more than a
    docstring."""
    parts = name.split(".")
    inits = [ROOT.joinpath(*parts[:i], "__init__.py") for i in range(1, len(parts) + 1)]
    return [p for p in inits if p.is_file() and runs_code(p)]


def direct_imports(path: Path) -> set[Path]:
    """Project files that ``path``'s own import statements load."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import; use `from pipeline... import`"
            # `from pipeline.augment import eda` imports a module; `from pipeline.x import f`
            # a name of module pipeline.x
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        for name in names:
            if name.split(".")[0] == "pipeline":
                found.update(filter(None, [module_file(name), *package_inits(name)]))
    return found


@cache
def imported_modules(path: Path) -> frozenset[Path]:
    """Project files that running ``path`` imports, transitively (``path`` included; modules
    that import each other are walked once)."""
    found, todo = {path}, [path]
    while todo:
        for module in direct_imports(todo.pop()) - found:
            found.add(module)
            todo.append(module)
    return frozenset(found)


def covered(path: str, declared: list[str]) -> bool:
    """``path`` is declared itself or lies in a declared directory."""
    target = PurePosixPath(path)
    return any(target == PurePosixPath(d) or PurePosixPath(d) in target.parents
               for d in declared)


def stage_parser(script: Path):
    """The stage script's argparse parser (every stage script has ``build_parser()``)."""
    module = load_stage(script.stem)
    assert hasattr(module, "build_parser"), (
        f"{script.relative_to(ROOT)}: expose build_parser() so that its command-line paths "
        f"can be checked against dvc.yaml")
    return module.build_parser()


def command(stage: str) -> tuple[Path, list[str]]:
    cmd = STAGES[stage]["cmd"]
    tokens = shlex.split(cmd)
    assert tokens[:1] == ["python"] and tokens[1].startswith("stages/"), (
        f"dvc.yaml: {stage}: cmd {cmd!r}: expected `python stages/<script>.py ARGS`")
    return ROOT / tokens[1], tokens[2:]


def test_stages_expand_as_dvc_expands_them():
    params = yaml.safe_load(PARAMS_YAML.read_text())
    expected = {f"train@{m}-{s}" for m in params["models"] for s in params["seeds"]}
    assert {name for name in STAGES if name.startswith("train@")} == expected
    listed = subprocess.run([str(Path(sys.executable).parent / "dvc"), "stage", "list",
                             "--name-only"], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "DVC_NO_ANALYTICS": "1"}, check=True)
    assert set(listed.stdout.split()) == set(STAGES)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_deps_cover_the_code_the_stage_runs(stage):
    script, _ = command(stage)
    deps = entry_paths(STAGES[stage].get("deps"))
    missing = sorted(str(m.relative_to(ROOT)) for m in imported_modules(script)
                     if not covered(str(m.relative_to(ROOT)), deps))
    assert not missing, f"dvc.yaml: stage {stage} runs {missing} but has no dep covering them"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_no_code_dep_the_stage_does_not_run(stage):
    # An over-declared module re-runs the stage (and all it feeds) whenever it is edited.
    script, _ = command(stage)
    runs = {str(m.relative_to(ROOT)) for m in imported_modules(script)}
    extra = sorted(d for d in entry_paths(STAGES[stage].get("deps"))
                   if d.endswith(".py") and d not in runs)
    assert not extra, f"dvc.yaml: stage {stage} depends on {extra}, which it never imports"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_command_line_paths_are_deps_or_outs(stage):
    script, argv = command(stage)
    spec = STAGES[stage]
    deps = entry_paths(spec.get("deps"))
    outs = [p for key in ("outs", "metrics", "plots") for p in entry_paths(spec.get(key))]
    args = vars(stage_parser(script).parse_args(argv))
    # A path argument names a declared dep or out, or the directory the stage reads declared
    # deps from (--prepared data/prepared) or writes declared outs into (--plots plots).
    paths = {name: str(value) for name, value in args.items() if isinstance(value, Path)}
    assert paths, f"dvc.yaml: {stage}: no path on the command line"
    for name, path in paths.items():
        inside = [d for d in deps + outs if covered(d, [path])]
        assert inside, (f"dvc.yaml: {stage}: --{name} {path} is neither a dep nor an out, "
                        f"nor a directory holding one")
    assert not set(deps) & set(outs), f"dvc.yaml: {stage}: a path is both a dep and an out"


def test_prepare_depends_on_every_required_source_file():
    # A URL base directory cannot be a DVC dep, but each file under it can (its ETag is
    # checked): the train and dev files every cs224n task needs. Test files may be absent
    # upstream. Files of other formats live under data/tasks, a dep as a whole.
    deps = entry_paths(STAGES["prepare"]["deps"])
    params = load_params(PARAMS_YAML)
    source = params.data.source
    cs224n = [t for t in params.tasks.values() if t.data.format == "cs224n" and not t.data.dir]
    assert cs224n, "params.yaml: the default tasks are the CS224N ones"
    required = {f"{source}/{file_name(t, s)}" for t in cs224n for s in ("train", "dev")}
    assert required <= set(deps), f"dvc.yaml: prepare: missing deps {sorted(required - set(deps))}"
    assert "--source" in STAGES["prepare"]["cmd"] and source in STAGES["prepare"]["cmd"]
    assert "data/tasks" in deps and (ROOT / "data" / "tasks").is_dir()
    assert {"data", "tasks"} <= set(STAGES["prepare"]["params"])


def test_training_seeds_reach_only_the_train_runs_and_the_ensemble():
    # prepare samples rows with data.seed: a new training seed must not re-run it
    for name, spec in STAGES.items():
        params = [p for p in spec.get("params", []) if isinstance(p, str)]
        if name.startswith("train@"):
            seed = name.rsplit("-", 1)[1]
            assert f"--seed {seed}" in spec["cmd"], f"dvc.yaml: {name}: cmd lacks its seed"
            assert "seeds" not in params, f"dvc.yaml: {name}: a new seed would re-run it"
        elif name.startswith("configure@"):  # a member's config holds train, not its seeds
            assert "seeds" not in params, f"dvc.yaml: {name}: a new seed would re-run it"
        elif name != "ensemble":
            assert not any(p in ("seeds", "train") or p.startswith("train.") for p in params), (
                f"dvc.yaml: {name}: depends on the training seeds")


def test_a_train_stage_reads_params_only_through_its_members_config():
    # The member's resolved config is its one params dep: a shared section's change re-runs
    # every configure@ stage but only the train stages whose config file it changed.
    configured = {name.split("@", 1)[1]: entry_paths(spec["outs"])
                  for name, spec in STAGES.items() if name.startswith("configure@")}
    assert set(configured) == set(load_params(PARAMS_YAML).models)
    for name, spec in STAGES.items():
        if name.startswith("train@"):
            member = name.split("@", 1)[1].rsplit("-", 1)[0]
            assert not spec.get("params"), f"dvc.yaml: {name}: params beside its member's config"
            assert configured[member] == [f"data/members/{member}.json"]
            assert configured[member][0] in entry_paths(spec["deps"]), name
    keys = set(STAGES[f"configure@{next(iter(configured))}"]["params"])
    assert {"model", "loss", "train", "smart", "pcgrad", "tasks", "ensemble"} <= keys


# Outputs DVC does not cache that stay on the machine on purpose: resumable checkpoints and the
# embedding / label caches (persist: true), ignored by the root .gitignore as machine-local.
MACHINE_LOCAL = ("checkpoints/", "data/cache/")


def test_cached_outputs_are_git_ignored_up_front_and_committed_ones_are_not():
    """DVC adds a cached output to a .gitignore unless git already ignores it: the root
    .gitignore ignoring every one keeps a user's tree clean after a run; an output with
    ``cache: false`` (metrics, plots) is committed, so it must not be ignored."""
    cached, committed = set(), set()
    for spec in STAGES.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in spec.get(kind) or []:
                path, options = (next(iter(entry.items())) if isinstance(entry, dict)
                                 else (entry, None))
                (cached if (options or {}).get("cache", True) else committed).add(path)
    proc = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=ROOT,
                          input="\n".join(sorted(cached | committed)), capture_output=True,
                          text=True)
    assert proc.returncode in (0, 1), proc.stderr  # 1: none ignored
    ignored = set(proc.stdout.split())
    assert sorted(cached - ignored) == []
    assert sorted(p for p in committed & ignored if not p.startswith(MACHINE_LOCAL)) == []
