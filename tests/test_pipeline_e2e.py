"""End to end: `dvc repro` of the whole DAG on tiny real data with a tiny random BERT and two
training seeds, a variant with `dvc exp run -S` and its comparison with `dvc metrics diff`, and
two queued experiments run by `dvc queue start` in DVC's temporary copies of the project."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import PARAMS_YAML
from dvc_render.base import Renderer

from pipeline.data import SPLITS, load_prepared
from pipeline.seeds import read_run

ROOT = Path(__file__).resolve().parents[1]
ROWS = 48  # rows kept from each real file
SEEDS = [11, 12]
MEMBERS = ("multitask", "sst_single")


def head_lines(src: Path, dst: Path, rows: int) -> None:
    with src.open() as fin, dst.open("w") as fout:
        for i, line in enumerate(fin):
            if i > rows:
                break
            fout.write(line)


def run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout


def tiny_project(tmp: Path, tiny_bert: Path, cs224n_dir: Path, amazon_dir: Path
                 ) -> tuple[Path, dict]:
    """The project's code, DAG and params in ``tmp``/proj, on the first rows of the real files
    and a tiny random BERT, CPU-sized; returns it with its params (not yet written)."""
    proj = tmp / "proj"
    proj.mkdir()
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, proj / name)
    shutil.copy(PARAMS_YAML, proj / "params.yaml")
    for name in ("stages", "pipeline", ".dvc", "data/tasks"):
        shutil.copytree(ROOT / name, proj / name,
                        ignore=shutil.ignore_patterns("__pycache__", "tmp", "cache"))
    nltk_data = ROOT / "data" / "nltk_data"
    if nltk_data.is_dir():
        shutil.copytree(nltk_data, proj / "data" / "nltk_data")
    data = tmp / "cs224n"
    data.mkdir()
    for src in cs224n_dir.glob("*.csv"):
        head_lines(src, data / src.name, ROWS)
    reviews = tmp / "amazon"
    reviews.mkdir()
    for src in amazon_dir.glob("*.jsonl"):
        head_lines(src, reviews / src.name, 60)

    params = yaml.safe_load(PARAMS_YAML.read_text())
    params["data"]["source"] = str(data)
    params["model"]["backbone"] = str(tiny_bert)
    params["train"].update(epochs=2, batches_per_epoch=4, batch_size=4, eval_batch_size=64,
                           custom={"task": "qqp", "fraction": 0.8, "epochs": 1})
    params["augment"]["reviews"].update(source=str(reviews), per_label=5)
    params["seeds"] = SEEDS
    return proj, params


def commit_and_repro(proj: Path, params: dict) -> None:
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], proj)
    run(["git", "add", "-A"], proj)
    run(["git", "commit", "-qm", "tiny project"], proj)
    run(["dvc", "repro"], proj)


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_bert, cs224n_dir, amazon_dir) -> Path:
    proj, params = tiny_project(tmp_path_factory.mktemp("e2e"), tiny_bert, cs224n_dir,
                                amazon_dir)
    commit_and_repro(proj, params)
    return proj


def test_repro_writes_every_declared_output(project):
    for task in ("sst", "qqp", "sts"):
        for split in SPLITS:
            load_prepared(project / "data" / "prepared", task, split)
    metrics = json.loads((project / "metrics.json").read_text())
    for member in MEMBERS:
        per_seed = []
        for seed in SEEDS:
            seed_dir = project / "models" / member / f"seed_{seed}"
            per_seed.append(json.loads((seed_dir / "metrics.json").read_text())["sst_acc"])
            assert (seed_dir / "model" / "model.safetensors").exists()
            assert (seed_dir / "live" / "plots" / "metrics").is_dir()
            assert (project / "checkpoints" / member / f"seed_{seed}").is_dir()
        assert all(0.0 <= acc <= 1.0 for acc in per_seed)
        # the ensemble stage's per-member summary: two seeds' mean and sample sd |a − b| / √2
        summary = metrics["seeds"][member]
        assert [summary["per_seed"][str(s)]["sst_acc"] for s in SEEDS] == per_seed
        assert summary["aggregate"]["sst_acc"] == pytest.approx(
            {"mean": sum(per_seed) / 2, "sd": abs(per_seed[0] - per_seed[1]) / 2 ** 0.5, "n": 2})
    assert set(metrics) >= {"sst_acc", "qqp_acc", "sts_pearson", "overall"}
    assert metrics["overall"] == pytest.approx(
        (metrics["sst_acc"] + metrics["qqp_acc"] + (metrics["sts_pearson"] + 1) / 2) / 3)
    sst_test = (project / "submission" / "sst-test-output.csv").read_text().splitlines()
    assert sst_test[0] == "id \t Predicted_Sentiment "
    assert len(sst_test) == 1 + ROWS
    confusion = pd.read_csv(project / "plots" / "sst_confusion.csv")
    assert list(confusion.columns) == ["actual", "predicted"] and len(confusion) == ROWS
    assert json.loads(run(["dvc", "status", "--json"], project)) == {}
    # The root .gitignore ignores DVC's cached outputs up front: DVC wrote no .gitignore.
    changed = run(["git", "status", "--porcelain", "--untracked-files=all"], project)
    assert not [line for line in changed.splitlines() if line.endswith(".gitignore")], changed


def test_new_seed_leaves_prepare_and_trained_seeds_up_to_date(project):
    params_path = project / "params.yaml"
    saved = params_path.read_text()
    try:
        params = yaml.safe_load(saved)
        params["seeds"] = [*SEEDS, 13]
        params_path.write_text(yaml.safe_dump(params, sort_keys=False))
        stale = set(json.loads(run(["dvc", "status", "--json"], project)))
    finally:
        params_path.write_text(saved)
    assert stale == {"train@multitask-13", "train@sst_single-13", "ensemble"}


def test_exp_run_variant_shows_in_metrics_diff(project):
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "baseline results"], project)
    before = json.loads((project / "metrics.json").read_text())
    run(["dvc", "exp", "run", "-S", "train.schedule=round_robin", "-S", "train.lr=2e-4"],
        project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["train"]["schedule"] == "round_robin"
    after = json.loads((project / "metrics.json").read_text())
    assert after != before
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], project))
    # the ensemble's file is compared (its scores can tie: a random tiny model may predict one
    # class and a constant, clipped STS in both runs; its times and per-seed figures differ)
    assert "metrics.json" in diff and diff["metrics.json"]
    shown = run(["dvc", "exp", "show", "--json"], project)
    # The committed baseline and the experiment both carry their scores (git-tracked metrics).
    assert shown.count('"overall"') >= 2 and shown.count('"round_robin"') >= 1


OFFLINE_TEMPLATE = ROOT / "data" / "vega" / "offline.html"  # scripts/setup_vega.sh's
SCRIPT_SRC = re.compile(r"<script\b[^>]*\bsrc\s*=\s*[\"']?\s*https?:", re.IGNORECASE)


@pytest.fixture(scope="module")
def check_plots():
    """scripts/check_plots.py as a module, with what it needs: fails (test.sh sets all up)."""
    if not OFFLINE_TEMPLATE.is_file():
        pytest.fail(f"no offline DVC plots template at {OFFLINE_TEMPLATE}: run scripts/setup.sh "
                    "(or scripts/setup_vega.sh)")
    spec = importlib.util.spec_from_file_location("check_plots",
                                                  ROOT / "scripts" / "check_plots.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their class's module up there
    spec.loader.exec_module(module)
    try:
        import playwright  # noqa: F401
    except ImportError:
        pytest.fail("Playwright is missing: run scripts/setup.sh (pip install -e '.[test]')")
    if not Path(module.CHROMIUM).exists():
        pytest.fail(f"no {module.CHROMIUM}: run scripts/setup_chromium.sh")
    return module


def expected_plots(project: Path) -> set[str]:
    """The div ids dvc-render gives the plots these tests expect: each training run's per-epoch
    dev curves (DVCLive's plots/metrics/dev/*.tsv), the SST confusion and the STS scatter."""
    curves = [path.relative_to(project).as_posix()
              for member in MEMBERS for seed in SEEDS
              for path in sorted((project / "models" / member / f"seed_{seed}" / "live" / "plots"
                                  / "metrics" / "dev").glob("*.tsv"))]
    assert len(curves) >= len(MEMBERS) * len(SEEDS), curves
    return {Renderer.remove_special_chars(path)
            for path in [*curves, "plots/sst_confusion.csv", "plots/sts_scatter.csv"]}


def check_drawn(check_plots, page: Path, screenshot: Path, revs: tuple[str, ...],
                project: Path) -> None:
    html = page.read_text(encoding="utf-8")
    assert not SCRIPT_SRC.search(html), "the page loads a script from the network"
    drawn = {result.id: result for result in check_plots.check_page(page, screenshot)}
    missing = expected_plots(project) - set(drawn)
    assert not missing, f"plots missing from {page}: {sorted(missing)}; it has {sorted(drawn)}"
    for plot_id in expected_plots(project):
        assert drawn[plot_id].marks > 0 and drawn[plot_id].revs == revs, drawn[plot_id].line()
    assert screenshot.stat().st_size > 0


def test_plots_diff_draws_offline_both_revisions(project, check_plots, tmp_path):
    # The workspace holds the variant of test_exp_run_variant_shows_in_metrics_diff; HEAD the
    # baseline. The template is named here; `dvc plots show` below takes it from the config.
    out = tmp_path / "diff"
    run(["dvc", "plots", "diff", "HEAD", "--html-template", str(OFFLINE_TEMPLATE),
         "-o", str(out)], project)
    screenshot = tmp_path / "plots_diff.png"
    check_drawn(check_plots, out / "index.html", screenshot, ("HEAD", "workspace"), project)
    if os.environ.get("BESTFIT_PLOTS_SCREENSHOT"):
        check_plots.write_atomically(Path(os.environ["BESTFIT_PLOTS_SCREENSHOT"]),
                                     screenshot.read_bytes())


def test_plots_show_draws_offline_from_the_config(project, check_plots, tmp_path):
    # setup_vega.sh's plots.html_template in .dvc/config.local, copied with .dvc/ to the project.
    configured = run(["dvc", "config", "plots.html_template"], project).strip()
    assert Path(configured) == OFFLINE_TEMPLATE, (
        f"plots.html_template is {configured!r}: run scripts/setup_vega.sh")
    out = tmp_path / "show"
    run(["dvc", "plots", "show", "-o", str(out)], project)
    check_drawn(check_plots, out / "index.html", tmp_path / "plots_show.png", ("workspace",),
                project)


def wait_for_queue(project: Path, names: list[str], limit_s: float = 900) -> str:
    """Poll `dvc queue status` until none of ``names`` is queued or running."""
    deadline = time.monotonic() + limit_s
    while True:
        status = run(["dvc", "queue", "status"], project)
        pending = [n for n in names
                   if re.search(rf"\b{n}\b.*\b(Queued|Running)\b", status)]
        if not pending or time.monotonic() > deadline:
            return status
        time.sleep(2)


def test_queued_experiments_reach_their_data(project):
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "results before the queue", "--allow-empty"], project)
    # Queued runs execute in a copy holding only git-tracked files: machine-local inputs are
    # given as absolute paths. `faster` only retrains; `resampled` also re-runs prepare from the
    # raw files (data.seed), so EDA needs WordNet there and filter_reviews the reviews.
    wordnet = (project / "data" / "nltk_data").resolve()
    target = "train@multitask-11"
    run(["dvc", "exp", "run", "--queue", "-n", "faster", "-S", "train.lr=3e-4", target], project)
    run(["dvc", "exp", "run", "--queue", "-n", "resampled", "-S", "train.lr=1e-3",
         "-S", "data.seed=5", "-S", "++data.train_rows={sst:40}",
         "-S", f"augment.eda.wordnet_dir={wordnet}", target], project)
    run(["dvc", "queue", "start"], project)
    status = wait_for_queue(project, ["faster", "resampled"])
    for name in ("faster", "resampled"):
        assert re.search(rf"\b{name}\b.*\bSuccess\b", status), (
            f"{name}: {status}\n{run(['dvc', 'queue', 'logs', name], project)[-4000:]}")

    shown = json.loads(run(["dvc", "exp", "show", "--json"], project))
    found = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for rev in exp["revs"]:
                if rev["name"] in ("faster", "resampled"):
                    found[rev["name"]] = rev["data"]
    assert set(found) == {"faster", "resampled"}
    seed_metrics = {name: data["metrics"]["models/multitask/seed_11/metrics.json"]["data"]
                    for name, data in found.items()}
    assert seed_metrics["faster"] != seed_metrics["resampled"]
    assert "train_examples" not in seed_metrics["faster"]  # counts are in the run's report
    assert found["resampled"]["params"]["params.yaml"]["data"]["data"]["seed"] == 5
    # Each run's report, from its outputs in the DVC cache: the rows it trained on.
    sst_rows = len(load_prepared(project / "data" / "prepared", "sst", "train"))
    trained = {}
    for name in ("faster", "resampled"):
        run(["dvc", "exp", "apply", name], project)
        trained[name] = read_run(project / "models" / "multitask" / "seed_11")
    assert trained["resampled"]["train_examples"]["sst"] == 40  # the resampled rows
    assert trained["faster"]["train_examples"]["sst"] == sst_rows > 40


def test_a_tuning_study_runs_each_trial_as_a_dvc_experiment(project, tmp_path):
    # One choice: the second trial draws the first's values and takes its result (one real
    # experiment, the costly part; the stand-in studies of test_tune cover several).
    spec = tmp_path / "tune.yaml"
    spec.write_text(yaml.safe_dump({
        "study": "tiny", "storage": f"sqlite:///{tmp_path / 'tiny.db'}",
        "objectives": ["overall"], "trials": 2, "set": {"seeds": [11]},
        "space": {"models.multitask.train.lr": {"choices": [3e-4]}},
        "sampler": {"seed": 0}}))
    wordnet = (project / "data" / "nltk_data").resolve()
    out = run([sys.executable, str(ROOT / "scripts" / "tune.py"), "run", "--spec", str(spec),
               "--wordnet", str(wordnet)], project)
    assert "study tiny: 2 trials" in out
    report_path = tmp_path / "tiny"
    run([sys.executable, str(ROOT / "scripts" / "tune.py"), "show", "--spec", str(spec),
         "--out", str(report_path)], project)
    report = json.loads(report_path.with_suffix(".json").read_text())
    assert [t["state"] for t in report["trials"]] == ["COMPLETE", "COMPLETE"]
    first, repeat = report["trials"]
    assert "same_as" not in first and repeat["same_as"] == first["number"]
    assert repeat["values"] == first["values"]
    assert report_path.with_suffix(".png").stat().st_size > 0
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project))
    found = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for rev in exp["revs"]:
                if rev["name"].startswith("tiny-"):
                    found[rev["name"]] = rev["data"]
    names = {t["experiment"] for t in report["trials"] if "same_as" not in t}
    assert names and names <= set(found)  # every trial that ran is an experiment
    for trial in report["trials"]:
        if "same_as" in trial:
            continue
        data = found[trial["experiment"]]
        assert data["metrics"]["metrics.json"]["data"]["overall"] == pytest.approx(
            trial["overall"])
        lr = data["params"]["params.yaml"]["data"]["models"]["multitask"]["train"]["lr"]
        assert lr == trial["params"]["models.multitask.train.lr"]
        # reproducible: applying the experiment puts its values in the workspace
        run(["dvc", "exp", "apply", trial["experiment"]], project)
        applied = yaml.safe_load((project / "params.yaml").read_text())
        assert applied["models"]["multitask"]["train"]["lr"] == lr
