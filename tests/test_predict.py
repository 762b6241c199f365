"""The predict command and its Python API on a tiny saved member: every way in (--text, --pair,
a file, stdin) gives the numbers of the model called directly, one example at a time; bad input
is one line naming the file, line and column."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import unicodedata
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_model import saved_member

from pipeline import predict as predict_module
from pipeline.errors import UserError
from pipeline.model import MultitaskModel
from pipeline.predict import InputError, main, predict_sentences

ROOT = Path(__file__).resolve().parents[1]
SST_NAMES = ["negative", "somewhat negative", "neutral", "somewhat positive", "positive"]
SENTENCES = ["a great film", "the movie was very boring and the plot was bad",
             "i love this story !", "not good", "what a terrible , terrible acting"]
PAIRS = [("what is a dog ?", "what is a cat ?"),
         ("how do i play the movie ?", "how can i play this film ?"),
         ("the man plays", "a woman runs with the dog and the cat in the story")]


@pytest.fixture(scope="module")
def saved(tiny_bert, tmp_path_factory):
    """A multitask member (concat pairs, cls pooling) saved to disk, and the model it came from."""
    directory = tmp_path_factory.mktemp("member") / "model"
    model, _ = saved_member(tiny_bert, directory)
    return directory, model


def direct(model: MultitaskModel, tokenizer, task: str, example) -> np.ndarray:
    """The model's raw output for one example, encoded alone (no batching, no padding)."""
    texts = [example] if isinstance(example, str) else list(example)
    enc = dict(tokenizer(*texts, return_tensors="pt", truncation=True, max_length=128))
    with torch.no_grad():
        return model(task, [enc])[0].double().numpy()


def expected_rows(model, tokenizer, task: str, examples) -> list[dict]:
    """What a prediction row must say, computed here from the raw outputs by hand."""
    rows = []
    for example in examples:
        raw = direct(model, tokenizer, task, example)
        if task == "sst":
            probs = np.exp(raw - raw.max()) / np.exp(raw - raw.max()).sum()
            k = int(probs.argmax())
            row = {"class": k, "label": SST_NAMES[k]}
            row.update({f"p_{n.replace(' ', '_')}": p for n, p in zip(SST_NAMES, probs,
                                                                        strict=True)})
        elif task == "qqp":
            p = 1.0 / (1.0 + np.exp(-float(raw)))
            row = {"p_duplicate": p, "class": int(p >= 0.5),
                   "label": "duplicate" if p >= 0.5 else "not duplicate"}
        else:
            row = {"similarity": min(max(float(raw), 0.0), 5.0)}
        rows.append(row)
    return rows


def assert_rows(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        for key, value in w.items():
            if isinstance(value, str | int) and not isinstance(value, float):
                assert g[key] == value, (key, g, w)
            else:
                assert g[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (key, g, w)


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "predict.py"), *args],
                          input=stdin, capture_output=True, text=True, env=env, timeout=300)


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.split("\n") if line]


# --- the command, as a user runs it ------------------------------------------------------------


def test_cli_text_gives_the_models_sst_predictions(saved):
    directory, model = saved
    args = [a for s in SENTENCES for a in ("--text", s)]
    done = run_cli(str(directory), "--task", "sst", *args, "--format", "jsonl",
                   "--batch-size", "2")
    assert done.returncode == 0, done.stderr
    rows = jsonl(done.stdout)
    assert [r["sentence"] for r in rows] == SENTENCES  # input order, whatever the batches
    assert [r["id"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert_rows(rows, expected_rows(model, model_tokenizer(directory), "sst", SENTENCES))
    # the inputs really differ (on the whole probability vector: one class's probability can
    # saturate below the output's 10 decimals for every input of this random model)
    assert len({tuple(v for k, v in r.items() if k.startswith("p_")) for r in rows}) == len(rows)
    assert done.stderr == ""  # no progress bar for a few sentences


def model_tokenizer(directory: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory)


def test_cli_pair_gives_the_models_qqp_predictions(saved):
    directory, model = saved
    args = [a for s1, s2 in PAIRS for a in ("--pair", s1, s2)]
    done = run_cli(str(directory), "--task", "qqp", *args, "--format", "jsonl")
    assert done.returncode == 0, done.stderr
    rows = jsonl(done.stdout)
    assert [(r["sentence1"], r["sentence2"]) for r in rows] == PAIRS
    assert_rows(rows, expected_rows(model, model_tokenizer(directory), "qqp", PAIRS))


def test_cli_csv_file_gives_the_models_sts_predictions(saved, tmp_path):
    directory, model = saved
    # own column names, an id column, a quoted field holding the delimiter
    frame = pd.DataFrame({"key": ["a7", "b8", "c9"], "first": [p[0] for p in PAIRS],
                          "second": ["what is a cat , or a dog ?", *[p[1] for p in PAIRS[1:]]]})
    frame = frame.rename(columns={"key": "id"})
    frame.to_csv(tmp_path / "pairs.csv", index=False)
    out = tmp_path / "out" / "sts.csv"
    done = run_cli(str(directory), "--task", "sts", "--input", str(tmp_path / "pairs.csv"),
                   "--columns", "first,second", "--format", "csv", "--output", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    got = pd.read_csv(out, dtype={"id": str})
    assert list(got["id"]) == ["a7", "b8", "c9"]
    examples = list(zip(frame["first"], frame["second"], strict=True))
    assert_rows(got.to_dict("records"), expected_rows(model, model_tokenizer(directory), "sts",
                                                      examples))
    assert "3 pairs [" in done.stderr  # the progress bar of a file, counting as it streams
    assert [p.name for p in out.parent.iterdir()] == ["sts.csv"]  # no temporary leftovers


def test_cli_stdin_lines_give_the_models_predictions(saved):
    directory, model = saved
    stdin = "".join(f"{s1}\t{s2}\n" for s1, s2 in PAIRS) + "\n"  # a trailing blank line
    done = run_cli(str(directory), "--task", "qqp", "--format", "jsonl", "--quiet", stdin=stdin)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert_rows(jsonl(done.stdout), expected_rows(model, model_tokenizer(directory), "qqp",
                                                  PAIRS))


def test_cli_bad_file_is_one_line_and_exit_2(saved, tmp_path):
    directory, _ = saved
    bad = tmp_path / "sst.tsv"
    bad.write_text("id\tsentence\n1\ta fine film\n2\t\n3\tfun\n")
    done = run_cli(str(directory), "--task", "sst", "--input", str(bad))
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("bestfit-predict: error: ")
    assert f"{bad}: line 3, column 'sentence': empty" in done.stderr


# --- input files and errors, in-process --------------------------------------------------------


def run_main(args: list[str], capsys) -> tuple[str, str]:
    main(args)
    captured = capsys.readouterr()
    return captured.out, captured.err


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".txt", ".csv-cs224n"])
def test_every_file_kind_gives_the_same_predictions(saved, tmp_path, capsys, suffix):
    directory, model = saved
    path = tmp_path / f"in{suffix.split('-')[0]}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps({"sentence": s, "extra": 1}) + "\n"
                                for s in SENTENCES))
    elif suffix == ".parquet":
        pd.DataFrame({"sentence": SENTENCES}).to_parquet(path)
    elif suffix == ".txt":
        path.write_text("\n".join(SENTENCES) + "\n")
    else:  # the CS224N layout: tab-separated under a .csv name, an unnamed index column
        path.write_text("\tid\tsentence\tsentiment\n" + "".join(
            f"{k}\tx{k}\t{s}\t2\n" for k, s in enumerate(SENTENCES)))
    out, _ = run_main([str(directory), "--task", "sst", "--input", str(path), "--format",
                       "jsonl", "--quiet"], capsys)
    rows = jsonl(out)
    assert_rows(rows, expected_rows(model, model_tokenizer(directory), "sst", SENTENCES))
    want_ids = ([f"x{k}" for k in range(5)] if suffix == ".csv-cs224n"
                else [str(k) for k in range(1, 6)])
    assert [r["id"] for r in rows] == want_ids


BAD_FILES = {  # file name, content, task and options, error
    "no column": ("in.csv", "text\nfine\n", ["--task", "sst"],
                  r"in\.csv: no column 'sentence'; the columns are 'text'; .*--columns"),
    "field count": ("in.csv", "id,sentence\n1,good\n2,bad,extra\n", ["--task", "sst"],
                    r"in\.csv: line 3: 3 fields, expected 2 \('id', 'sentence'\)"),
    "open quote": ("in.csv", 'id,sentence\n1,"good\n', ["--task", "sst"],
                   r"in\.csv: line 2: unexpected end of data"),
    "not utf-8": ("in.txt", b"good\n\xff\xfebad\n", ["--task", "sst"],
                  r"in\.txt: line 2, byte 5: not UTF-8 text"),
    "bad json": ("in.jsonl", '{"sentence": "ok"}\n{"sentence": \n', ["--task", "sst"],
                 r"in\.jsonl: line 2: not valid JSON"),
    "json list": ("in.jsonl", '["ok"]\n', ["--task", "sst"],
                  r"in\.jsonl: line 1: a JSON list, expected an object with keys sentence"),
    "json missing key": ("in.jsonl", '{"text": "ok"}\n', ["--task", "sst"],
                         r"in\.jsonl: line 1: no key 'sentence'"),
    "json number": ("in.jsonl", '{"sentence": 5}\n', ["--task", "sst"],
                    r"in\.jsonl: line 1, column 'sentence': 5 is not a string"),
    "pair line": ("in.txt", "a\tb\nonly one\n", ["--task", "qqp"],
                  r"in\.txt: line 2: 1 tab-separated field\(s\), expected 2"),
    "pair cell": ("in.csv", "sentence1,sentence2\na,b\nc,\n", ["--task", "sts"],
                  r"in\.csv: line 3, column 'sentence2': empty; expected a sentence"),
    "empty": ("in.csv", "sentence\n", ["--task", "sst"], r"in\.csv: no examples in it"),
    "suffix": ("in.xlsx", "x", ["--task", "sst"], r"in\.xlsx: unknown kind of file '\.xlsx'"),
    "NUL": ("in.txt", "fine\nbad\0text\n", ["--task", "sst"],
            r"in\.txt: line 2, column 'sentence': holds a NUL character"),
    "UTF-16": ("in.txt", "a film\n".encode("utf-16-le"), ["--task", "sst"],
               r"in\.txt: line 1, column 'sentence': holds a NUL character"),
    "header twice": ("in.csv", "id,sentence,sentence\n1,a,b\n", ["--task", "sst"],
                     r"in\.csv: line 1: the header names column 'sentence' more than once"),
    "whitespace only": ("in.csv", "sentence\n\" \t \"\n", ["--task", "sst"],
                        r"in\.csv: line 2, column 'sentence': empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_input_file_names_its_place(saved, tmp_path, case):
    directory, _ = saved
    name, content, args, message = BAD_FILES[case]
    path = tmp_path / name
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    with pytest.raises(InputError, match=message) as caught:
        main([str(directory), *args, "--input", str(path)])
    assert str(caught.value).startswith(str(path)) and "\n" not in str(caught.value)


@pytest.mark.parametrize(("args", "message"), [
    (["--text", "x"], r"the model has tasks sst, qqp, sts; pick one with --task"),
    (["--task", "qqp", "--text", "x"], r"--text gives single sentences; qqp takes pairs"),
    (["--task", "sst", "--pair", "a", "b"], r"--pair gives sentence pairs; sst takes one"),
    (["--task", "sst", "--text", "x", "--input", "f.csv"], r"not --text and --input"),
    (["--task", "sst", "--text", "  "], r"example 1, column 'sentence': empty"),
    (["--task", "sst", "--text", "x", "--batch-size", "0"], r"--batch-size 0: expected"),
    (["--task", "sst", "--text", "x", "--device", "gpu"], r"--device gpu: not a torch device"),
    (["--task", "qqp", "--input", "f.csv", "--columns", "a"], r"--columns a: qqp takes 2"),
])
def test_bad_command_lines_are_user_errors(saved, args, message):
    directory, _ = saved
    with pytest.raises(UserError, match=message):
        main([str(directory), *args])


def test_a_single_task_member_needs_no_task_and_has_no_other_head(tiny_bert, tmp_path, capsys):
    model, _ = saved_member(tiny_bert, tmp_path / "model", "sst_single")
    out, _ = run_main([str(tmp_path / "model"), "--text", "a great film", "--format", "jsonl"],
                      capsys)
    assert_rows(jsonl(out), expected_rows(model, model_tokenizer(tmp_path / "model"), "sst",
                                          ["a great film"]))
    with pytest.raises(UserError, match=r"model: no qqp head; the model's tasks: sst"):
        main([str(tmp_path / "model"), "--task", "qqp", "--pair", "a", "b"])


def test_member_is_found_under_models(saved, tmp_path, capsys):
    directory, _ = saved
    shutil.copytree(directory, tmp_path / "models" / "multitask" / "seed_11" / "model")
    args = ["--member", "multitask", "--models", str(tmp_path / "models"), "--task", "sst",
            "--text", "a great film", "--format", "jsonl"]
    want, _ = run_main([str(directory), *args[4:]], capsys)
    assert run_main(args, capsys)[0] == want
    shutil.copytree(directory, tmp_path / "models" / "multitask" / "seed_9" / "model")
    with pytest.raises(UserError, match=r"multitask: seeds 9, 11 are trained; pick one with "
                                        r"--seed"):
        main(args)
    assert run_main([*args, "--seed", "9"], capsys)[0] == want
    with pytest.raises(UserError, match=r"seed_12/model: not found"):
        main([*args, "--seed", "12"])
    with pytest.raises(UserError, match=r"no trained seed of member 'other'"):
        main(["--member", "other", "--models", str(tmp_path / "models"), "--text", "x"])


def test_table_output_for_people(saved, capsys):
    directory, model = saved
    long = " ".join(["the movie was good"] * 10)
    out, _ = run_main([str(directory), "--task", "sst", "--text", "a great film", "--text",
                       long], capsys)
    header, first, second = out.splitlines()
    assert header.split() == ["id", "sentence", "label", "class", "p_negative",
                              "p_somewhat_negative", "p_neutral", "p_somewhat_positive",
                              "p_positive"]
    want = expected_rows(model, model_tokenizer(directory), "sst", ["a great film"])[0]
    assert first.startswith("1 ") and first.index("a great film") == header.index("sentence")
    assert f"{want['p_negative']:.3f}" in first and want["label"] in first
    assert long[:47] + "…" in second and long not in second


# --- the Python API and the console script -----------------------------------------------------


def test_predict_sentences_api_matches_the_model(saved):
    directory, model = saved
    loaded = MultitaskModel.from_pretrained(directory)
    table = predict_sentences(loaded, "sts", PAIRS, batch_size=2)
    assert list(table.columns) == ["id", "sentence1", "sentence2", "similarity"]
    assert_rows(table.to_dict("records"), expected_rows(model, model_tokenizer(directory),
                                                        "sts", PAIRS))
    with pytest.raises(InputError, match=r"example 2: 1 sentence\(s\); sts takes 2"):
        predict_sentences(loaded, "sts", [PAIRS[0], ("alone",)])


def test_bestfit_predict_console_script_runs_main(saved, monkeypatch, capsys):
    tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    entry = EntryPoint("bestfit-predict", scripts["bestfit-predict"], "console_scripts").load()
    directory, _ = saved
    monkeypatch.setattr(sys, "argv", ["bestfit-predict", str(directory), "--task", "sst",
                                      "--text", "a great film", "--format", "jsonl"])
    entry()
    assert [r["sentence"] for r in jsonl(capsys.readouterr().out)] == ["a great film"]
    monkeypatch.setattr(sys, "argv", ["bestfit-predict", str(directory / "nowhere")])
    with pytest.raises(SystemExit) as exit_info:
        entry()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("bestfit-predict: error: ")
    assert predict_module.cli is entry


# --- streaming: chunks, laziness, long fields --------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".txt", ".csv", "stdin"])
def test_chunks_give_the_predictions_and_ids_of_one_pass(saved, tmp_path, capsys, monkeypatch,
                                                         suffix):
    directory, _ = saved
    ids = ["a", "", "c", "d", ""]  # two without an id: their positions, counted across chunks
    if suffix == ".jsonl":
        path = tmp_path / "in.jsonl"
        path.write_text("".join(json.dumps({"id": i, "sentence": s}) + "\n"
                                for i, s in zip(ids, SENTENCES, strict=True)))
    elif suffix == ".parquet":
        path = tmp_path / "in.parquet"
        pd.DataFrame({"id": ids, "sentence": SENTENCES}).to_parquet(path)
    elif suffix == ".csv":
        path = tmp_path / "in.csv"
        pd.DataFrame({"id": ids, "sentence": SENTENCES}).to_csv(path, index=False)
    else:
        path = tmp_path / "in.txt"
        path.write_text("\n\n".join(SENTENCES) + "\n")  # blank lines between: skipped
    source = ["--input", str(path)] if suffix != "stdin" else []
    if suffix == "stdin":
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(path.read_bytes())))
    args = [str(directory), "--task", "sst", *source, "--format", "jsonl", "--quiet"]
    whole, _ = run_main(args, capsys)
    monkeypatch.setattr(predict_module, "CHUNK_SIZE", 2)
    if suffix == "stdin":
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(path.read_bytes())))
    chunked, _ = run_main(args, capsys)
    # the same rows; a batch's padding may move the last float digits
    assert [r["sentence"] for r in jsonl(chunked)] == SENTENCES
    assert_rows(jsonl(chunked), jsonl(whole))
    want = (["a", "2", "c", "d", "5"] if suffix not in (".txt", "stdin")
            else ["1", "2", "3", "4", "5"])
    assert [r["id"] for r in jsonl(chunked)] == want


def test_reading_is_lazy_and_a_late_error_names_its_line(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(b"one\ntwo\nthree\nfour\nfi\xffve\n")
    chunks = predict_module.read_examples(str(path), ["sentence"], chunk_size=2)
    assert list(next(chunks)["sentence"]) == ["one", "two"]  # read before the bad byte is met
    assert list(next(chunks)["id"]) == ["3", "4"]
    with pytest.raises(InputError, match=r"in\.txt: line 5, byte 21: not UTF-8 text"):
        next(chunks)


def test_a_field_longer_than_the_csv_limit_is_predicted(saved, tmp_path, capsys):
    directory, _ = saved
    long = " ".join(["good"] * 40_000)  # 199,999 characters: above csv's 131,072 default
    path = tmp_path / "in.csv"
    pd.DataFrame({"sentence": ["a film", long]}).to_csv(path, index=False)
    out, _ = run_main([str(directory), "--task", "sst", "--input", str(path), "--format",
                       "jsonl", "--quiet"], capsys)
    rows = jsonl(out)
    assert [len(r["sentence"]) for r in rows] == [6, len(long)]
    # predicted as its first max_length tokens, as tokenisation truncates any sentence
    truncated = " ".join(["good"] * 200)
    cut, _ = run_main([str(directory), "--task", "sst", "--text", truncated, "--format",
                       "jsonl"], capsys)
    assert rows[1]["p_positive"] == pytest.approx(jsonl(cut)[0]["p_positive"], rel=1e-5)


def test_a_parquet_column_of_numbers_is_named(saved, tmp_path):
    directory, _ = saved
    pd.DataFrame({"sentence": [1, 2]}).to_parquet(tmp_path / "in.parquet")
    with pytest.raises(InputError, match=r"in\.parquet: column 'sentence' holds int64; expected "
                                         r"strings"):
        main([str(directory), "--task", "sst", "--input", str(tmp_path / "in.parquet")])


def test_a_parquet_category_column_of_sentences_is_read(tmp_path):
    # pandas writes a category column as dictionary<string>: still a column of sentences
    path = tmp_path / "in.parquet"
    pd.DataFrame({"sentence": pd.Categorical(["a good film", "bad", "a good film"])}
                 ).to_parquet(path)
    (chunk,) = predict_module.read_examples(str(path), ["sentence"], chunk_size=8)
    assert list(chunk["sentence"]) == ["a good film", "bad", "a good film"]


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_an_input_that_is_no_regular_file_is_named(saved, tmp_path, kind):
    directory, _ = saved
    path = tmp_path / "in.txt"
    path.mkdir() if kind == "directory" else os.mkfifo(path)
    message = "a directory" if kind == "directory" else r"not a regular file; .*--input -"
    with pytest.raises(InputError, match=rf"in\.txt: {message}"):
        main([str(directory), "--task", "sst", "--input", str(path)])


# --- outputs that never destroy data -----------------------------------------------------------


def test_an_existing_directory_as_output_is_refused_and_left_as_it_is(saved, tmp_path):
    directory, _ = saved
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "kept.txt").write_text("earlier results\n")
    with pytest.raises(UserError, match=r"--output .*results: an existing directory \(left as it "
                                        r"is\)"):
        main([str(directory), "--task", "sst", "--text", "a film", "--output",
              str(tmp_path / "results")])
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["kept.txt"]
    assert (tmp_path / "results" / "kept.txt").read_text() == "earlier results\n"


def test_a_regular_output_is_replaced_whole_and_a_link_to_it_stays_a_link(saved, tmp_path,
                                                                           capsys):
    directory, _ = saved
    target = tmp_path / "runs" / "3.jsonl"
    target.parent.mkdir()
    target.write_text("old\n" * 1000)
    (tmp_path / "latest.jsonl").symlink_to(target)
    args = [str(directory), "--task", "sst", "--text", "a film", "--quiet"]
    run_main([*args, "--output", str(tmp_path / "latest.jsonl")], capsys)
    assert (tmp_path / "latest.jsonl").is_symlink()
    assert [r["sentence"] for r in jsonl(target.read_text())] == ["a film"]  # .jsonl: jsonl
    assert sorted(p.name for p in target.parent.iterdir()) == ["3.jsonl"]  # no temporaries


def test_a_failed_run_leaves_the_old_output(saved, tmp_path):
    directory, _ = saved
    out = tmp_path / "out.csv"
    out.write_text("earlier\n")
    bad = tmp_path / "in.txt"
    bad.write_text("fine\n" * 5 + "\0\n")
    with pytest.raises(InputError):
        main([str(directory), "--task", "sst", "--input", str(bad), "--output", str(out)])
    assert out.read_text() == "earlier\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_special_outputs_are_written_directly(saved, tmp_path):
    directory, _ = saved
    args = [str(directory), "--task", "sst", "--text", "a film", "--format", "csv", "--quiet"]
    for name in ("/dev/stdout", "/proc/self/fd/1"):
        done = run_cli(*args, "--output", name)
        assert done.returncode == 0 and done.stderr == "", done.stderr
        assert done.stdout.splitlines()[1].startswith("1,a film,")
    # stdout appended to a file: what it held stays, the predictions follow
    log = tmp_path / "log.txt"
    log.write_text("earlier line\n")
    with log.open("a") as out:
        done = subprocess.run([sys.executable, str(ROOT / "scripts" / "predict.py"), *args,
                               "--output", "/dev/stdout"], stdout=out, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert log.read_text().splitlines()[:2] == ["earlier line", "id,sentence,label,class,"
                                                "p_negative,p_somewhat_negative,p_neutral,"
                                                "p_somewhat_positive,p_positive"]


def test_a_fifo_output_is_written_into_not_replaced(saved, tmp_path, capsys):
    directory, _ = saved
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    run_main([str(directory), "--task", "sst", "--text", "a film", "--format", "jsonl",
              "--output", str(fifo), "--quiet"], capsys)
    reader.join(timeout=60)
    assert [r["sentence"] for r in jsonl(got[0])] == ["a film"]
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


@pytest.mark.parametrize(("args", "message"), [
    (["--output", "x.csv", "--format", "jsonl"], r"--output x\.csv: a \.csv name, but --format "
                                                 r"jsonl"),
    (["--output", "a-file/x.jsonl"], r"--output a-file/x\.jsonl: cannot write"),
])
def test_bad_outputs_are_user_errors(saved, tmp_path, monkeypatch, args, message):
    directory, _ = saved
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("a file, not a directory\n")
    with pytest.raises(UserError, match=message):
        main([str(directory), "--task", "sst", "--text", "a film", *args])


CONTROL = "\x1b[2J\x1b]0;t\x07\x9b1m \u202ex\u2028\r"  # shown escaped: within the width


def test_the_table_escapes_control_characters_and_the_data_formats_keep_them(saved, capsys):
    directory, _ = saved
    args = [str(directory), "--task", "sst", "--text", CONTROL]
    table, _ = run_main(args, capsys)
    shown = table.splitlines()[1]
    assert shown.startswith("1   \\x1b[2J\\x1b]0;t\\x07\\x9b1m \\u202ex\\u2028\\r  ")
    assert not any(unicodedata.category(c) in ("Cc", "Cf", "Zl") for c in table.rstrip("\n")
                   .replace("\n", ""))
    data, _ = run_main([*args, "--format", "jsonl"], capsys)
    assert data.splitlines() == [data.rstrip("\n")]  # one line, whatever splits lines
    assert jsonl(data)[0]["sentence"] == CONTROL
    text, _ = run_main([*args, "--format", "csv"], capsys)
    assert pd.read_csv(io.StringIO(text))["sentence"][0] == CONTROL


def test_table_columns_keep_the_first_chunks_widths(saved, capsys, monkeypatch, tmp_path):
    directory, _ = saved
    monkeypatch.setattr(predict_module, "CHUNK_SIZE", 2)
    path = tmp_path / "in.txt"
    path.write_text("\n".join(SENTENCES) + "\n")
    out, _ = run_main([str(directory), "--task", "sst", "--input", str(path), "--quiet"], capsys)
    header, *rows = out.splitlines()
    assert len(rows) == 5
    label_at = header.index("label")
    for row, sentence in zip(rows, SENTENCES, strict=True):
        assert row[4:4 + len(sentence)] == sentence  # the sentence column starts at "id  " + 2
        assert row[label_at - 2:label_at] == "  " and row[label_at] != " "


def test_stdin_that_is_not_utf8_names_the_line_and_byte(saved, monkeypatch):
    directory, _ = saved
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(
        "a film\nmauvais café\n".encode("latin-1"))))
    with pytest.raises(InputError, match=r"^<stdin>: line 2, byte 18: not UTF-8 text$"):
        main([str(directory), "--task", "sst"])
