"""Cases of the bad-input corpus (tests/bad_inputs.py): model directories from elsewhere and
the predict CLI (round two).

The ``bestfit-predict`` cases run on a saved member copied into the workspace as ``member/``
(built once per run with the library's own save code on the tiny BERT), broken by the case. A
planted module that a loader would import creates the runner's marker (``unsafe`` verdict);
every predict case's stdin holds "y" where a prompt could read it.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from bad_inputs import MARKER, STDOUT, Fragment, base_params, case
from conftest import make_tiny_bert

STAGE = "bestfit-predict"
MEMBER = "member"
PREDICT = (MEMBER, "--task", "sst")
ONE = (*PREDICT, "--text", "a film", "--format", "jsonl")
_built: dict[str, Path] = {}
_lock = threading.Lock()


def saved_member() -> Path:
    """A saved multitask member on the tiny BERT, built once per run (``save_member``)."""
    with _lock:
        if "member" not in _built:
            from pipeline.config import parse_params
            from pipeline.model import MultitaskModel, load_tokenizer, save_member

            root = Path(tempfile.mkdtemp(prefix="bad-inputs-member-"))
            atexit.register(shutil.rmtree, root, True)
            tiny = make_tiny_bert(root / "tiny-bert")
            params = base_params()
            params["model"]["backbone"] = str(tiny)
            member = parse_params(params).models["multitask"]
            model = MultitaskModel(member.model, member.tasks)
            save_member(model, member, load_tokenizer(str(tiny)), root / "model")
            _built["member"] = root / "model"
        return _built["member"]


def member(ws: Path) -> Path:
    shutil.copytree(saved_member(), ws / MEMBER)
    return ws / MEMBER


def edit_json(path: Path, **changes: Any) -> None:
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


def plant(directory: Path, ws: Path, model_type: str | None = None) -> None:
    """An auto_map naming a module of ``directory``'s own, which creates the runner's marker
    when imported."""
    (directory / "planted.py").write_text(
        f"open({str((ws / MARKER).resolve())!r}, 'w').write('code ran')\n"
        "from transformers import BertConfig as PlantedConfig, BertModel as PlantedModel\n")
    edit_json(directory / "config.json",
              auto_map={"AutoConfig": "planted.PlantedConfig", "AutoModel": "planted.PlantedModel"},
              **({"model_type": model_type} if model_type else {}))


def stdout_of(ws: Path) -> str:
    return (ws / STDOUT).read_text(encoding="utf-8", errors="replace")


def predicted(sentences: list[str]) -> Any:
    """A check: the stage's stdout is jsonl holding exactly ``sentences``, in order."""

    def check(ws: Path) -> str | None:
        rows = [json.loads(line) for line in stdout_of(ws).split("\n") if line]
        got = [row.get("sentence") for row in rows]
        if got == sentences:
            return None
        return (f"stdout holds sentences {got[:5]}…, expected {sentences[:5]}… ({len(got)} of "
                f"{len(sentences)})")

    return check


def model_case(name: str, expect: str, *fragments: Fragment, **kw: Any):
    kw.setdefault("args", ONE)
    kw.setdefault("stdin", "y\n")  # what a prompt to run the directory's code would read
    return case(name, "model dir", STAGE, expect, *fragments, **kw)


def predict_case(name: str, expect: str, *fragments: Fragment, **kw: Any):
    kw.setdefault("args", ONE)
    return case(name, "predict", STAGE, expect, *fragments, **kw)


# -- model directories: code, declared sizes, files that are not what they say.


@model_case("models-auto-map-unknown-type", "error", "member/config.json", "plantedbert",
            "auto_map")
def _auto_map_unknown(ws: Path) -> None:
    plant(member(ws), ws, model_type="plantedbert")


@model_case("models-auto-map-built-in-type", "handled", "auto_map", "never run",
            check=predicted(["a film"]))
def _auto_map_built_in(ws: Path) -> None:
    plant(member(ws), ws)


@model_case("models-auto-map-examples-on-stdin", "handled", "auto_map", args=PREDICT[:3] + (
            "--format", "jsonl"), check=predicted(["y"]), quick=False)
def _auto_map_stdin(ws: Path) -> None:
    plant(member(ws), ws)


@model_case("models-tokenizer-auto-map", "handled", check=predicted(["a film"]), quick=False)
def _tokenizer_auto_map(ws: Path) -> None:
    directory = member(ws)
    plant(directory, ws)
    edit_json(directory / "config.json", auto_map={})
    edit_json(directory / "tokenizer_config.json", tokenizer_class="PlantedTokenizer",
              auto_map={"AutoTokenizer": ["planted.PlantedTokenizer", None]})


@model_case("models-declares-100000-layers", "error", "member/config.json",
            "num_hidden_layers 100000", "2 layers")
def _layers(ws: Path) -> None:
    edit_json(member(ws) / "config.json", num_hidden_layers=100_000)


@model_case("models-declares-1e10-vocabulary", "error", "member/model.safetensors",
            "word_embeddings", "10000000000")
def _vocabulary(ws: Path) -> None:
    edit_json(member(ws) / "config.json", vocab_size=10**10)


@model_case("models-declares-another-hidden-size", "error", "model.safetensors",
            quick=False)
def _hidden(ws: Path) -> list[Fragment]:
    directory = member(ws)
    vocab = json.loads((directory / "config.json").read_text())["vocab_size"]
    edit_json(directory / "config.json", hidden_size=64)
    return [f"[{vocab}, 32]", f"[{vocab}, 64]"]


@model_case("models-declares-zero-attention-heads", "error", "config.json", "cannot be built",
            quick=False)
def _heads_zero(ws: Path) -> None:
    edit_json(member(ws) / "config.json", num_attention_heads=0)


@model_case("models-config-declares-string-size", "error", "member/config.json", "hidden_size",
            "large", quick=False)
def _size_string(ws: Path) -> None:
    edit_json(member(ws) / "config.json", hidden_size="large")


@model_case("models-bestfit-wider-heads-than-stored", "error", "heads.safetensors",
            "bestfit.json", "[4096, 32]", quick=False)
def _wider_heads(ws: Path) -> None:
    path = member(ws) / "bestfit.json"
    raw = json.loads(path.read_text())
    raw["model"]["head"]["hidden"] = 4096
    raw["model"]["head"]["layers"] = 2
    path.write_text(json.dumps(raw))


@model_case("models-max-length-above-positions", "error", "bestfit.json", "model.max_length",
            "512", "128")
def _max_length(ws: Path) -> None:
    path = member(ws) / "bestfit.json"
    raw = json.loads(path.read_text())
    raw["model"]["max_length"] = 512
    path.write_text(json.dumps(raw))


@model_case("models-bestfit-unknown-task", "error", "bestfit.json", "nli", quick=False)
def _unknown_task(ws: Path) -> None:
    edit_json(member(ws) / "bestfit.json", tasks=["sst", "nli"])


@model_case("models-bestfit-a-list", "error", "bestfit.json", "list", quick=False)
def _bestfit_list(ws: Path) -> None:
    (member(ws) / "bestfit.json").write_text('["sst"]\n')


@model_case("models-config-a-list", "error", "member/config.json", "list", quick=False)
def _config_list(ws: Path) -> None:
    (member(ws) / "config.json").write_text("[1, 2]\n")


@model_case("models-config-no-model-type", "error", "member/config.json", "model_type",
            quick=False)
def _no_model_type(ws: Path) -> None:
    path = member(ws) / "config.json"
    raw = json.loads(path.read_text())
    del raw["model_type"]
    path.write_text(json.dumps(raw))


def _device_link(path: Path) -> None:
    path.unlink()
    path.symlink_to("/dev/zero")


@model_case("models-tokenizer-linked-to-dev-zero", "error", "member/tokenizer.json",
            "character device")
def _tokenizer_dev_zero(ws: Path) -> None:
    _device_link(member(ws) / "tokenizer.json")


@model_case("models-tokenizer-a-fifo", "error", "tokenizer.json", "FIFO", quick=False)
def _tokenizer_fifo(ws: Path) -> None:
    path = member(ws) / "tokenizer.json"
    path.unlink()
    os.mkfifo(path)


@model_case("models-tokenizer-truncated", "error", "tokenizer.json", "JSON", quick=False)
def _tokenizer_truncated(ws: Path) -> None:
    path = member(ws) / "tokenizer.json"
    path.write_bytes(path.read_bytes()[:400])


@model_case("models-tokenizer-empty-object", "error", "member", "tokenizer", quick=False)
def _tokenizer_empty(ws: Path) -> None:
    (member(ws) / "tokenizer.json").write_text("{}")


@model_case("models-tokenizer-vocabulary-of-specials", "error", "member", "vocabulary",
            "no words", quick=False)
def _tokenizer_unk(ws: Path) -> None:
    path = member(ws) / "tokenizer.json"
    raw = json.loads(path.read_text())
    raw["model"]["vocab"] = {t: i for t, i in raw["model"]["vocab"].items() if t[0] == "["}
    path.write_text(json.dumps(raw))


@model_case("models-weights-not-safetensors", "error", "model.safetensors", "safetensors",
            quick=False)
def _weights_pickle_bytes(ws: Path) -> None:
    (member(ws) / "model.safetensors").write_bytes(b"\x80\x04\x95\x05\x00K\x01.")


@model_case("models-weights-linked-to-dev-zero", "error", "model.safetensors",
            "character device", quick=False)
def _weights_dev_zero(ws: Path) -> None:
    _device_link(member(ws) / "model.safetensors")


@model_case("models-heads-truncated", "error", "heads.safetensors", quick=False)
def _heads_truncated(ws: Path) -> None:
    path = member(ws) / "heads.safetensors"
    path.write_bytes(path.read_bytes()[:200])


@model_case("models-dangling-link", "error", "member/vocab.txt", "cannot be read",
            quick=False)
def _dangling(ws: Path) -> None:
    (member(ws) / "vocab.txt").symlink_to("nowhere.txt")


@model_case("models-dir-is-a-file", "error", "member", "not a directory", quick=False)
def _dir_file(ws: Path) -> None:
    (ws / MEMBER).write_text("a file\n")


# The backbone of training, from a directory of elsewhere: the train stage stops in one line.


@case("models-backbone-auto-map-unknown-type", "model dir", "train", "error",
      "tiny-bert/config.json", "plantedbert", quick=False)
def _backbone_auto_map(ws: Path) -> None:
    plant(ws / "tiny-bert", ws, model_type="plantedbert")


@case("models-backbone-declares-100000-layers", "model dir", "train", "error",
      "tiny-bert/config.json", "num_hidden_layers 100000", quick=False)
def _backbone_layers(ws: Path) -> None:
    edit_json(ws / "tiny-bert" / "config.json", num_hidden_layers=100_000)


@case("models-backbone-tokenizer-dev-zero", "model dir", "train", "error",
      "tiny-bert/tokenizer.json", "character device", quick=False)
def _backbone_tokenizer(ws: Path) -> None:
    _device_link(ws / "tiny-bert" / "tokenizer.json")


# -- the predict CLI: outputs, terminals, inputs.


def _results_kept(ws: Path) -> str | None:
    kept = sorted(p.name for p in (ws / "results").iterdir())
    if kept != ["earlier.jsonl"] or (ws / "results" / "earlier.jsonl").read_text() != "old\n":
        return f"results/ now holds {kept}"
    return None


@predict_case("predict-output-existing-directory", "error", "--output", "results",
              "directory", args=(*ONE, "--output", "results"), check=_results_kept)
def _output_dir(ws: Path) -> None:
    member(ws)
    (ws / "results").mkdir()
    (ws / "results" / "earlier.jsonl").write_text("old\n")


@predict_case("predict-output-dev-stdout", "handled", args=(*ONE, "--output", "/dev/stdout"),
              check=predicted(["a film"]))
def _output_stdout(ws: Path) -> None:
    member(ws)


@predict_case("predict-output-proc-fd", "handled", args=(*ONE, "--output", "/proc/self/fd/1"),
              check=predicted(["a film"]), quick=False)
def _output_proc(ws: Path) -> None:
    member(ws)


def _fifo_read(ws: Path) -> str | None:
    reader = _readers.pop(str(ws))
    reader.join(timeout=30)
    if not (ws / "pipe").is_fifo():
        return "pipe is no longer a FIFO"
    text = (ws / "from-pipe.jsonl").read_text() if (ws / "from-pipe.jsonl").exists() else ""
    got = [json.loads(line)["sentence"] for line in text.split("\n") if line]
    return None if got == ["a film"] else f"the FIFO's reader got {got}"


_readers: dict[str, threading.Thread] = {}


@predict_case("predict-output-fifo", "handled", args=(*ONE, "--output", "pipe"),
              check=_fifo_read, quick=False)
def _output_fifo(ws: Path) -> None:
    member(ws)
    os.mkfifo(ws / "pipe")

    def read() -> None:
        (ws / "from-pipe.jsonl").write_text((ws / "pipe").read_text())

    _readers[str(ws)] = threading.Thread(target=read, daemon=True)
    _readers[str(ws)].start()


def _regular_output(ws: Path) -> str | None:
    target = ws / "runs" / "3.jsonl"
    if not (ws / "latest.jsonl").is_symlink():
        return "latest.jsonl is no longer a link"
    got = [json.loads(line)["sentence"] for line in target.read_text().split("\n") if line]
    leftovers = sorted(p.name for p in target.parent.iterdir() if p.name != "3.jsonl")
    return None if got == ["a film"] and not leftovers else f"3.jsonl: {got}, {leftovers}"


@predict_case("predict-output-link-to-regular-file", "handled",
              args=(*ONE, "--output", "latest.jsonl"), check=_regular_output, quick=False)
def _output_link(ws: Path) -> None:
    member(ws)
    (ws / "runs").mkdir()
    (ws / "runs" / "3.jsonl").write_text("old\n")
    (ws / "latest.jsonl").symlink_to("runs/3.jsonl")


@predict_case("predict-output-suffix-contradicts-format", "error", "--output", "out.csv",
              "--format jsonl", args=(*ONE, "--output", "out.csv"), quick=False)
def _output_suffix(ws: Path) -> None:
    member(ws)


@predict_case("predict-output-under-a-file", "error", "--output", "cannot write",
              args=(*ONE, "--output", "a-file/out.jsonl"), quick=False)
def _output_under_file(ws: Path) -> None:
    member(ws)
    (ws / "a-file").write_text("a file\n")


@predict_case("predict-format-unknown", "error", "--format", "xml",
              args=(*PREDICT, "--text", "a film", "--format", "xml"), quick=False)
def _format_unknown(ws: Path) -> None:
    member(ws)


ANSI = "\x1b[2J\x1b[H\x1b]0;owned\x07 a film \x9b31m\u202e"


def _no_control_characters(ws: Path) -> str | None:
    shown = stdout_of(ws)
    if any(c in shown for c in "\x1b\x07\x9b\u202e"):
        return "the table printed terminal control characters"
    return None if "\\x1b[2J" in shown else "the table does not show the escape as \\x1b"


@predict_case("predict-table-ansi-escapes", "handled", args=(*PREDICT, "--text", ANSI),
              check=_no_control_characters)
def _ansi(ws: Path) -> None:
    member(ws)


@predict_case("predict-table-ansi-in-ids", "handled", args=(*PREDICT, "--input", "in.jsonl"),
              check=_no_control_characters, quick=False)
def _ansi_ids(ws: Path) -> None:
    member(ws)
    (ws / "in.jsonl").write_text(json.dumps({"id": "\x1b[2J\x1b[31m", "sentence": "a film"})
                                 + "\n")


@predict_case("predict-input-not-utf8", "error", "in.txt", "line 2", "byte 18", "UTF-8",
              args=(*PREDICT, "--input", "in.txt"))
def _input_latin1(ws: Path) -> None:
    member(ws)
    (ws / "in.txt").write_bytes("a film\nmauvais café\n".encode("latin-1"))


@predict_case("predict-stdin-nul", "error", "<stdin>", "line 1", "NUL", args=PREDICT,
              stdin="a\0film\n", quick=False)
def _stdin_nul(ws: Path) -> None:
    member(ws)


@predict_case("predict-stdin-only-blank-lines", "error", "<stdin>", "no examples",
              args=PREDICT, stdin=" \n\t\n\n", quick=False)
def _stdin_blank(ws: Path) -> None:
    member(ws)


@predict_case("predict-stdin-20000-lines-in-chunks", "handled", args=(*PREDICT, "--format",
              "jsonl", "--quiet"), stdin="".join(f"film {k}\n" for k in range(20_000)),
              check=predicted([f"film {k}" for k in range(20_000)]), quick=False)
def _stdin_many(ws: Path) -> None:
    member(ws)


@predict_case("predict-pair-line-without-tab", "error", "<stdin>", "line 2", "tab",
              args=(MEMBER, "--task", "qqp"), stdin="a\tb\nno tab here\n", quick=False)
def _pair_no_tab(ws: Path) -> None:
    member(ws)


@predict_case("predict-input-a-directory", "error", "sentences.txt", "directory",
              args=(*PREDICT, "--input", "sentences.txt"), quick=False)
def _input_dir(ws: Path) -> None:
    member(ws)
    (ws / "sentences.txt").mkdir()


@predict_case("predict-input-a-fifo", "error", "sentences.txt", "not a regular file",
              args=(*PREDICT, "--input", "sentences.txt"), quick=False)
def _input_fifo(ws: Path) -> None:
    member(ws)
    os.mkfifo(ws / "sentences.txt")


LONG = " ".join(["good"] * 40_000)  # 199,999 characters: above csv's 131,072 default limit


def _long_field(ws: Path) -> str | None:
    rows = [json.loads(line) for line in stdout_of(ws).split("\n") if line]
    lengths = [len(r["sentence"]) for r in rows]
    return None if lengths == [6, len(LONG)] else f"predicted sentences of lengths {lengths}"


@predict_case("predict-csv-field-over-the-csv-limit", "handled",
              args=(*PREDICT, "--input", "long.csv", "--format", "jsonl", "--quiet"),
              check=_long_field)
def _long_csv(ws: Path) -> None:
    member(ws)
    (ws / "long.csv").write_text(f"sentence\na film\n{LONG}\n")


@predict_case("predict-csv-header-names-column-twice", "error", "in.csv", "line 1",
              "sentence", "more than once", args=(*PREDICT, "--input", "in.csv"), quick=False)
def _header_twice(ws: Path) -> None:
    member(ws)
    (ws / "in.csv").write_text("id,sentence,sentence\n1,a film,another\n")


@predict_case("predict-jsonl-text-a-number", "error", "in.jsonl", "line 2", "sentence",
              "not a string", args=(*PREDICT, "--input", "in.jsonl"), quick=False)
def _jsonl_number(ws: Path) -> None:
    member(ws)
    (ws / "in.jsonl").write_text('{"sentence": "a film"}\n{"sentence": 5}\n')


@predict_case("predict-jsonl-line-separator-in-text", "handled",
              args=(*PREDICT, "--input", "in.jsonl", "--format", "jsonl", "--quiet"),
              check=predicted(["a\u2028film", "two"]), quick=False)
def _jsonl_separator(ws: Path) -> None:
    member(ws)
    (ws / "in.jsonl").write_text('{"sentence": "a\u2028film"}\n{"sentence": "two"}\n',
                                 encoding="utf-8")


@predict_case("predict-parquet-text-of-numbers", "error", "in.parquet", "int64",
              args=(*PREDICT, "--input", "in.parquet"), quick=False)
def _parquet_ints(ws: Path) -> None:
    import pandas as pd

    member(ws)
    pd.DataFrame({"sentence": [1, 2]}).to_parquet(ws / "in.parquet")
