"""Shared fixtures: the real data beside the checkout and a tiny randomly initialised BERT."""

from __future__ import annotations

import atexit
import importlib.util
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
CS224N = SHARED_DATA / "cs224n"
AMAZON = SHARED_DATA / "amazon"


def _project_params_file() -> Path:
    """The project's params.yaml as git's index holds it (`git add` an edit to test it), not the
    workspace's file: `dvc exp run` (run_cpu.sh, any variant) leaves the experiment's values
    there, and the tests check the project's own defaults. Outside a git checkout, the file."""
    workspace = ROOT / "params.yaml"
    done = subprocess.run(["git", "show", ":params.yaml"], cwd=ROOT, capture_output=True,
                          text=True)
    if done.returncode or done.stdout == workspace.read_text():
        return workspace
    copy = Path(tempfile.mkdtemp(prefix="bestfit-params-")) / "params.yaml"
    copy.write_text(done.stdout)
    atexit.register(shutil.rmtree, copy.parent, ignore_errors=True)
    return copy


PARAMS_YAML = _project_params_file()

# The slowest files (their module fixtures train members or run the pipeline): collected first, so
# that pytest-xdist, which hands each worker whole files, starts them first and no worker is left
# with one of them at the end while the others idle.
LONGEST_FILES = ("test_pipeline_e2e.py", "test_bad_inputs.py", "test_experiments.py",
                 "test_fourth_task_e2e.py", "test_gpu_check.py", "test_predict.py",
                 "test_resume.py", "test_ensemble.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept


def load_stage(name: str) -> ModuleType:
    """``stages/<name>.py`` as a module (the stages are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"stage_{name}", ROOT / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY_WORDS = (
    "the a an is was and or but not no very good bad great terrible movie film story plot "
    "actor acting fun boring what how why who where when can do does i you it this that of to "
    "in on for with best worst love hate question answer same different man woman dog cat "
    "play plays playing run runs ? . , ! ' s"
).split()


@pytest.fixture(scope="session")
def cs224n_dir() -> Path:
    if not (CS224N / "ids-sst-train.csv").exists():
        pytest.fail(f"the real CS224N data is expected beside the checkout at {CS224N}")
    return CS224N


@pytest.fixture(scope="session")
def amazon_dir() -> Path:
    if not AMAZON.is_dir():
        pytest.fail(f"the real Amazon review samples are expected beside the checkout at {AMAZON}")
    return AMAZON


def make_tiny_bert(directory: Path, hidden: int = 32, layers: int = 2) -> Path:
    """Write a randomly initialised BERT and a word-level vocab tokenizer to ``directory``. The
    weights are drawn from a fixed seed, so a test on a random model sees the same model in every
    session, whatever ran before it (the global RNG is left as it was)."""
    from transformers import BertConfig, BertModel, BertTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TINY_WORDS]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(vocab=str(directory / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(directory)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
    )
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(20240917)
        model = BertModel(config)
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def still_bert(tmp_path_factory) -> Path:
    """The tiny BERT without dropout: runs that differ only in how a batch is split (ranks,
    micro-batches) are comparable."""
    directory = make_tiny_bert(tmp_path_factory.mktemp("still-bert"))
    config = json.loads((directory / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture(scope="session")
def tokenizer(tiny_bert):
    """The tiny BERT's word-level tokenizer."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_bert))
