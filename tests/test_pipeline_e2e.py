"""End to end: `dvc repro` of the whole DAG on tiny real data with a tiny random BERT, then a
variant with `dvc exp run -S` and its comparison with `dvc metrics diff`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.data import SPLITS, load_prepared

ROOT = Path(__file__).resolve().parents[1]
ROWS = 48  # rows kept from each real file


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


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_bert, cs224n_dir, amazon_dir) -> Path:
    tmp = tmp_path_factory.mktemp("e2e")
    proj = tmp / "proj"
    proj.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, proj / name)
    for name in ("stages", "pipeline", ".dvc"):
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

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["source"] = str(data)
    params["model"]["backbone"] = str(tiny_bert)
    params["train"].update(epochs=2, batches_per_epoch=4, batch_size=4, eval_batch_size=64,
                           custom={"task": "qqp", "fraction": 0.8, "epochs": 1})
    params["augment"]["reviews"].update(source=str(reviews), per_label=5)
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], proj)
    run(["git", "add", "-A"], proj)
    run(["git", "commit", "-qm", "tiny project"], proj)
    run(["dvc", "repro"], proj)
    return proj


def test_repro_writes_every_declared_output(project):
    for task in ("sst", "qqp", "sts"):
        for split in SPLITS:
            load_prepared(project / "data" / "prepared", task, split)
    for member in ("multitask", "sst_single"):
        metrics = json.loads((project / "models" / member / "metrics.json").read_text())
        assert 0.0 <= metrics["sst_acc"] <= 1.0
        assert (project / "models" / member / "model" / "model.safetensors").exists()
        assert (project / "models" / member / "live" / "plots" / "metrics").is_dir()
    metrics = json.loads((project / "metrics.json").read_text())
    assert set(metrics) >= {"sst_acc", "qqp_acc", "sts_pearson", "overall"}
    assert metrics["overall"] == pytest.approx(
        (metrics["sst_acc"] + metrics["qqp_acc"] + (metrics["sts_pearson"] + 1) / 2) / 3)
    sst_test = (project / "submission" / "sst-test-output.csv").read_text().splitlines()
    assert sst_test[0] == "id \t Predicted_Sentiment "
    assert len(sst_test) == 1 + ROWS
    confusion = pd.read_csv(project / "plots" / "sst_confusion.csv")
    assert list(confusion.columns) == ["actual", "predicted"] and len(confusion) == ROWS
    status = run(["dvc", "status"], project)
    assert "up to date" in status.lower() or "changed" not in status.lower()


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
    assert "metrics.json" in diff and "overall" in diff["metrics.json"]
    shown = run(["dvc", "exp", "show", "--json"], project)
    # The committed baseline and the experiment both carry their scores (git-tracked metrics).
    assert shown.count('"overall"') >= 2 and shown.count('"round_robin"') >= 1
