"""Model directories from elsewhere: their code never runs and no loader ever asks on stdin
whether to run it; the sizes their configs declare are checked against the safetensors headers
before anything is built; files that are not regular, or a tokenizer that reads every word as
[UNK], stop with one line naming the file.

A planted module creates a marker file when imported: every test asserts it never appears. The
directories whose config declares absurd sizes are loaded in a subprocess whose address space
is capped, so a loader that did allocate them would fail there, not exhaust this machine.
"""

from __future__ import annotations

import ast
import json
import os
import re
import resource
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_model import saved_member

from pipeline.config import ModelConfig
from pipeline.errors import UserError
from pipeline.model import (
    MultitaskModel,
    SavedModelError,
    load_backbone,
    load_tokenizer,
)

ROOT = Path(__file__).resolve().parents[1]
ADDRESS_SPACE = 3 << 30  # bytes: a predict run needs about 1 GiB of it; 10¹⁰ × 32 floats, 1.3 TB
LOADERS = ("AutoConfig", "AutoModel", "AutoTokenizer", "AutoModelForCausalLM")


@pytest.fixture(scope="module")
def member_dir(tiny_bert, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("member") / "model"
    saved_member(tiny_bert, directory)
    return directory


def copy_of(directory: Path, tmp_path: Path, name: str = "model") -> Path:
    shutil.copytree(directory, tmp_path / name, symlinks=True)
    return tmp_path / name


def edit_json(path: Path, **changes) -> None:
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


def plant_code(directory: Path, model_type: str | None = None) -> Path:
    """An ``auto_map`` in ``directory``'s config.json (and tokenizer_config.json) naming a
    module of the directory's own that creates a marker when imported; ``model_type``: one
    transformers does not know. Returns the marker's path."""
    marker = directory.parent / f"{directory.name}-CODE-RAN"
    (directory / "planted.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import BertConfig as PlantedConfig, BertModel as PlantedModel\n"
        "from transformers import BertTokenizerFast as PlantedTokenizer\n")
    auto_map = {"AutoConfig": "planted.PlantedConfig", "AutoModel": "planted.PlantedModel",
                "AutoModelForCausalLM": "planted.PlantedModel"}
    edit_json(directory / "config.json", auto_map=auto_map,
              **({"model_type": model_type} if model_type else {}))
    if (directory / "tokenizer_config.json").exists():
        edit_json(directory / "tokenizer_config.json",
                  auto_map={"AutoTokenizer": ["planted.PlantedTokenizer", None]})
    return marker


def run_cli(*args: str, stdin: str = "", limit: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}

    def cap() -> None:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return subprocess.run([sys.executable, str(ROOT / "scripts" / "predict.py"), *args],
                          input=stdin, capture_output=True, text=True, env=env, timeout=300,
                          preexec_fn=cap)


def error_line(done: subprocess.CompletedProcess) -> str:
    """The one line a refused run prints (and nothing else on stderr)."""
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("bestfit-predict: error: ")
    return line


# --- no code from the directory, ever ----------------------------------------------------------


def test_the_planted_module_creates_its_marker_when_imported(tiny_bert, tmp_path):
    marker = plant_code(copy_of(tiny_bert, tmp_path))
    runpy.run_path(str(tmp_path / "model" / "planted.py"))
    assert marker.exists()  # so that its absence below means the module never ran


def test_every_loader_call_in_the_library_refuses_remote_code():
    """transformers asks on stdin whether to run a directory's code unless the call says
    ``trust_remote_code=False``; every call of a loader in pipeline/ does (vLLM's ``LLM`` too,
    though its default is False)."""
    calls = []
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            loader = (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                      and func.value.id in LOADERS) or (
                isinstance(func, ast.Name) and func.id in ("SentenceTransformer", "LLM"))
            if loader:
                keywords = {k.arg: k.value for k in node.keywords}
                refused = isinstance(keywords.get("trust_remote_code"), ast.Constant) and (
                    keywords["trust_remote_code"].value is False)
                calls.append((f"{path.name}:{node.lineno}", refused))
    assert len(calls) >= 8  # the backbone, member, tokenizer, encoder and LLM loaders
    assert [where for where, refused in calls if not refused] == []


@pytest.mark.parametrize("load", ["member", "backbone", "tokenizer", "model"])
def test_a_built_in_model_type_loads_its_own_architecture_and_never_the_code(
        member_dir, tiny_bert, tmp_path, caplog, load):
    directory = copy_of(member_dir if load == "member" else tiny_bert, tmp_path)
    marker = plant_code(directory)
    if load == "member":
        loaded = MultitaskModel.from_pretrained(directory).backbone
    elif load == "backbone":
        loaded = load_backbone(str(directory))
    elif load == "tokenizer":
        loaded = load_tokenizer(str(directory))
    else:
        loaded = MultitaskModel(ModelConfig(backbone=str(directory)), ["sst"]).backbone
    assert not marker.exists()
    assert type(loaded).__module__.startswith("transformers.")
    if load != "tokenizer":
        assert type(loaded).__name__ == "BertModel"
        assert "auto_map names code of its own, which is never run" in caplog.text


@pytest.mark.parametrize("load", ["member", "backbone", "tokenizer", "model"])
def test_an_unknown_model_type_with_code_is_one_line_naming_config_json(
        member_dir, tiny_bert, tmp_path, load):
    directory = copy_of(member_dir if load == "member" else tiny_bert, tmp_path)
    marker = plant_code(directory, model_type="plantedbert")
    with pytest.raises(UserError) as caught:
        if load == "member":
            MultitaskModel.from_pretrained(directory)
        elif load == "backbone":
            load_backbone(str(directory))
        elif load == "tokenizer":  # training loads it first: it gives the backbone's error
            load_tokenizer(str(directory))
        else:
            MultitaskModel(ModelConfig(backbone=str(directory)), ["sst"])
    message = str(caught.value)
    assert not marker.exists()
    assert "\n" not in message
    assert message.startswith(f"{directory / 'config.json'}: model_type 'plantedbert' is not an "
                              "architecture transformers has built in; its auto_map names code")


def test_the_review_encoder_and_the_llm_labeller_never_run_the_code(tiny_bert, tmp_path):
    from pipeline.augment.llm_label import LabelError, load_causal_lm
    from pipeline.augment.llm_label import load_tokenizer as llm_tokenizer
    from pipeline.augment.reviews import ReviewsError, sentence_encoder

    directory = copy_of(tiny_bert, tmp_path)
    marker = plant_code(directory, model_type="plantedbert")
    for load, error in ((lambda: sentence_encoder(str(directory), "cpu", 8, False), ReviewsError),
                        (lambda: load_causal_lm(str(directory), "cpu"), LabelError)):
        with pytest.raises(error) as caught:
            load()
        assert "\n" not in str(caught.value) and "custom code" in str(caught.value)
    # The tokenizer's own files name a built-in class: it loads that, never the planted one.
    assert type(llm_tokenizer(str(directory))).__module__.startswith("transformers.")
    assert not marker.exists()


def test_a_sentence_transformers_module_of_the_directory_is_refused(tiny_bert, tmp_path):
    from pipeline.augment.reviews import ReviewsError, sentence_encoder

    directory = copy_of(tiny_bert, tmp_path)
    marker = plant_code(directory)
    (directory / "modules.json").write_text(json.dumps(
        [{"idx": 0, "name": "0", "path": "", "type": "planted.PlantedModel"}]))
    with pytest.raises(ReviewsError, match=r"augment\.reviews\.encoder: cannot load .*"
                                           r"planted\.PlantedModel"):
        sentence_encoder(str(directory), "cpu", 8, False)
    assert not marker.exists()


@pytest.mark.parametrize("via", ["--text", "stdin"])
def test_the_predict_cli_never_prompts_even_with_yes_on_stdin(member_dir, tmp_path, via):
    """A prompt would read the "y" and run the code; the CLI reads "y" only as an example."""
    directory = copy_of(member_dir, tmp_path)
    marker = plant_code(directory)
    args = ["--text", "a film"] if via == "--text" else []
    done = run_cli(str(directory), "--task", "sst", "--format", "jsonl", *args, stdin="y\n")
    assert done.returncode == 0, done.stderr
    assert "Do you wish to run the custom code" not in done.stdout + done.stderr
    assert [json.loads(line)["sentence"] for line in done.stdout.splitlines()] == (
        ["a film"] if via == "--text" else ["y"])
    assert not marker.exists()

    marker = plant_code(directory, model_type="plantedbert")
    line = error_line(run_cli(str(directory), "--task", "sst", *args, stdin="y\n"))
    assert f"{directory / 'config.json'}: model_type 'plantedbert'" in line
    assert not marker.exists()


# --- declared sizes against the weights' headers -----------------------------------------------


ABSURD = {  # config.json changes, the error expected (in a subprocess with capped memory)
    "layers": ({"num_hidden_layers": 100_000},
               r"config\.json: declares more tensors than its weights hold \(\d+ in "
               r"heads\.safetensors, model\.safetensors\): num_hidden_layers 100000; the weights "
               r"hold 2 layers"),
    "vocabulary": ({"vocab_size": 10**10},
                   r"model\.safetensors: embeddings\.word_embeddings\.weight is \[\d+, 32\], but "
                   r".*config\.json declares \[10000000000, 32\]"),
    "intermediate size": ({"intermediate_size": 10**9},
                          r"model\.safetensors: encoder\.layer\.0\.intermediate\.dense\.weight "
                          r"is \[64, 32\], but .*config\.json declares \[1000000000, 32\]"),
    "positions": ({"max_position_embeddings": 10**9},
                  r"model\.safetensors: embeddings\.position_embeddings\.weight is \[128, 32\], "
                  r"but .*config\.json declares \[1000000000, 32\]"),
}


@pytest.mark.parametrize("case", sorted(ABSURD))
def test_absurd_declared_sizes_stop_before_anything_is_allocated(member_dir, tmp_path, case):
    changes, message = ABSURD[case]
    directory = copy_of(member_dir, tmp_path)
    edit_json(directory / "config.json", **changes)
    line = error_line(run_cli(str(directory), "--task", "sst", "--text", "a film",
                              limit=ADDRESS_SPACE))
    assert line.startswith(f"bestfit-predict: error: {directory}/")
    assert re.search(message, line), line


MISMATCHED = {  # config.json or bestfit.json changes (small: built in-process), the error
    "hidden size": ("config.json", {"hidden_size": 64},
                    r"model\.safetensors: embeddings\.word_embeddings\.weight is \[\d+, 32\], "
                    r"but .*config\.json declares \[\d+, 64\]"),
    "intermediate size": ("config.json", {"intermediate_size": 48},
                          r"model\.safetensors: encoder\.layer\.0\.intermediate\.dense\.weight "
                          r"is \[64, 32\], but .*config\.json declares \[48, 32\]"),
    "no attention heads": ("config.json", {"num_attention_heads": 0},
                           r"config\.json: declares a model that cannot be built"),
    "negative size": ("config.json", {"hidden_size": -32},
                      r"config\.json: declares a model that cannot be built"),
    "head width": ("bestfit.json", {"head": {"hidden": 4096}},
                   r"heads\.safetensors: heads\.sst\.1\.weight is \[32, 32\], but .*bestfit\.json "
                   r"declares \[4096, 32\]"),
    "max length": ("bestfit.json", {"max_length": 512},
                   r"bestfit\.json: model\.max_length of member '\w+': 512 is above "
                   r"what backbone .* encodes \(max_position_embeddings 128\)"),
}


@pytest.mark.parametrize("case", sorted(MISMATCHED))
def test_a_declaration_its_weights_do_not_have_is_one_line_naming_the_file(member_dir, tmp_path,
                                                                          case):
    name, changes, message = MISMATCHED[case]
    directory = copy_of(member_dir, tmp_path)
    if name == "bestfit.json":
        raw = json.loads((directory / name).read_text())
        for key, value in changes.items():
            raw["model"][key] = {**raw["model"][key], **value} if isinstance(value, dict) else value
        (directory / name).write_text(json.dumps(raw))
    else:
        edit_json(directory / name, **changes)
    with pytest.raises(SavedModelError, match=message) as caught:
        MultitaskModel.from_pretrained(directory)
    assert "\n" not in str(caught.value) and str(directory) in str(caught.value)


def test_a_backbone_dir_declaring_more_layers_than_it_holds_is_refused(tiny_bert, tmp_path):
    directory = copy_of(tiny_bert, tmp_path)
    edit_json(directory / "config.json", num_hidden_layers=100_000)
    with pytest.raises(SavedModelError, match=r"num_hidden_layers 100000; the weights hold 2 "
                                              r"layers"):
        load_backbone(str(directory))
    edit_json(directory / "config.json", num_hidden_layers=2, vocab_size=10**10)
    with pytest.raises(SavedModelError, match=r"declares \[10000000000, 32\]"):
        MultitaskModel(ModelConfig(backbone=str(directory)), ["sst"])


def test_a_checkpoint_with_heads_is_compared_under_its_prefix(tiny_bert, tmp_path):
    """A BertForMaskedLM checkpoint names the encoder's tensors ``bert.…``: still checked."""
    from transformers import BertForMaskedLM

    directory = tmp_path / "mlm"
    BertForMaskedLM.from_pretrained(str(tiny_bert)).save_pretrained(directory)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_bert / name, directory / name)
    assert load_backbone(str(directory)).config.hidden_size == 32
    edit_json(directory / "config.json", hidden_size=64)
    with pytest.raises(SavedModelError, match=r"mlm/model\.safetensors: bert\.embeddings\."
                                              r"word_embeddings\.weight is \[\d+, 32\], but "
                                              r".*declares \[\d+, 64\]"):
        load_backbone(str(directory))


# --- files that are not what they say ----------------------------------------------------------


def dev_zero(path: Path) -> None:
    path.unlink()
    path.symlink_to("/dev/zero")


def fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


BAD_FILES = {  # what is done to the member's file, the file named, the error expected
    "tokenizer truncated": ("tokenizer.json", lambda p: p.write_bytes(p.read_bytes()[:300]),
                            r"tokenizer\.json: not valid JSON"),
    "tokenizer not json": ("tokenizer.json", lambda p: p.write_text("a tokenizer\n"),
                           r"tokenizer\.json: not valid JSON"),
    "tokenizer empty object": ("tokenizer.json", lambda p: p.write_text("{}"),
                               r"model: no usable tokenizer files \(.*added_tokens"),
    "tokenizer a list": ("tokenizer.json", lambda p: p.write_text("[]"),
                         r"tokenizer\.json: a JSON list; expected a tokenizer file"),
    "tokenizer /dev/zero": ("tokenizer.json", dev_zero,
                            r"tokenizer\.json: a character device, not a regular file"),
    "tokenizer a fifo": ("tokenizer.json", fifo, r"tokenizer\.json: a FIFO, not a regular file"),
    "weights /dev/zero": ("model.safetensors", dev_zero,
                          r"model\.safetensors: a character device, not a regular file"),
    "weights not safetensors": ("model.safetensors", lambda p: p.write_bytes(b"\x80\x04K\x01."),
                                r"model\.safetensors: not a readable safetensors file"),
    "config a list": ("config.json", lambda p: p.write_text("[1, 2]"),
                      r"config\.json: a JSON list; expected the backbone's config"),
    "config dangling link": ("config.json", lambda p: (p.unlink(), p.symlink_to("gone.json")),
                             r"config\.json: cannot be read \(No such file or directory\)"),
    "member config /dev/zero": ("bestfit.json", dev_zero,
                                r"bestfit\.json: a character device, not a regular file"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_file_that_is_not_what_it_says_is_one_line_naming_it(member_dir, tmp_path, case):
    name, breaks, message = BAD_FILES[case]
    directory = copy_of(member_dir, tmp_path)
    breaks(directory / name)
    with pytest.raises(SavedModelError, match=message) as caught:
        MultitaskModel.from_pretrained(directory)
    assert "\n" not in str(caught.value) and str(directory) in str(caught.value)


def test_a_tokenizer_that_reads_every_word_as_unk_is_refused(member_dir, tmp_path):
    directory = copy_of(member_dir, tmp_path)
    raw = json.loads((directory / "tokenizer.json").read_text())
    words = raw["model"]["vocab"]
    raw["model"]["vocab"] = {t: i for t, i in words.items() if t.startswith("[")}
    (directory / "tokenizer.json").write_text(json.dumps(raw))
    with pytest.raises(SavedModelError, match=r"model: its tokenizer's vocabulary holds no "
                                              r"words, only special tokens"):
        MultitaskModel.from_pretrained(directory)
    # the words are there, but a normaliser turns every character into one the vocabulary lacks
    raw["model"]["vocab"] = words
    raw["normalizer"] = {"type": "Replace", "pattern": {"Regex": "[^ ]"}, "content": "#"}
    (directory / "tokenizer.json").write_text(json.dumps(raw))
    # (BertTokenizer would rebuild its own normaliser; the generic class takes the file's)
    edit_json(directory / "tokenizer_config.json", tokenizer_class="PreTrainedTokenizerFast")
    with pytest.raises(SavedModelError, match=r"model: its tokenizer reads every word of its own "
                                              r"vocabulary as \[UNK\] \("):
        MultitaskModel.from_pretrained(directory)


def test_a_backbone_tokenizer_linked_to_a_device_is_refused_though_vocab_txt_would_do(
        tiny_bert, tmp_path):
    directory = copy_of(tiny_bert, tmp_path)
    dev_zero(directory / "tokenizer.json")
    with pytest.raises(SavedModelError, match=r"tokenizer\.json: a character device"):
        load_tokenizer(str(directory))


def test_the_cli_names_a_device_linked_tokenizer_in_one_line(member_dir, tmp_path):
    directory = copy_of(member_dir, tmp_path)
    dev_zero(directory / "tokenizer.json")
    line = error_line(run_cli(str(directory), "--task", "sst", "--text", "a film",
                              limit=ADDRESS_SPACE))
    assert f"{directory / 'tokenizer.json'}: a character device, not a regular file" in line
