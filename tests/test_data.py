"""pipeline.data on the real CS224N files (their quirks) and on small files written here."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import threading
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import load_stage

from pipeline import data
from pipeline.config import build_tasks
from pipeline.data import (
    SPLITS,
    DataError,
    cap_rows,
    fetch_source,
    leaked_rows,
    load_prepared,
    prepare,
    read_task_split,
    write_prepared,
)
from pipeline.tasks import default_tasks, task_spec

# Row counts from ../shared/data/README.md; quora-dev has 20,214 rows, 2 with a blank label.
REAL_ROWS = {
    ("sst", "train"): 8544,
    ("sst", "dev"): 1101,
    ("sst", "test"): 2210,
    ("qqp", "train"): 13507,
    ("qqp", "dev"): 20212,
    ("sts", "train"): 6040,
    ("sts", "dev"): 863,
    ("sts", "test"): 1725,
}
OUTPUT_NAMES = sorted(
    [f"{t}_{s}.parquet" for t in default_tasks() for s in SPLITS] + ["report.json"])


def write_tsv(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture
def small_source(tmp_path: Path) -> Path:
    """Every CS224N file but quora-test-student.csv (absent here too), two good rows each."""
    src = tmp_path / "cs224n"
    src.mkdir()
    write_tsv(
        src / "ids-sst-train.csv",
        ["\tid\tsentence\tsentiment", "0\ts1\t good film\t4", "1\ts2\tbad film\t0"],
    )
    write_tsv(
        src / "ids-sst-dev.csv", ["\tid\tsentence\tsentiment", "0\tsd1\tfun\t3", "1\tsd2\tdull\t1"]
    )
    write_tsv(
        src / "ids-sst-test-student.csv",
        ["0\t\tid\tsentence", "1\t0.0\tst1\tok film", "2\t1.0\tst2\tgreat"],
    )
    for split, label in (("train", "\t1.0"), ("dev", "\t0.0")):
        write_tsv(
            src / f"quora-{split}.csv",
            [
                "\tid\tsentence1\tsentence2\tis_duplicate",
                f"7\tq{split}1\tHow?\tWhy?{label}",
                f"9\tq{split}2\tWho?\tWhom?{label}",
            ],
        )
    for split, label in (("train", "\t4.6"), ("dev", "\t0.0")):
        write_tsv(
            src / f"sts-{split}.csv",
            [
                "\tid\tsentence1\tsentence2\tsimilarity",
                f"3\tt{split}1\tA dog.\tA cat.{label}",
                f"5\tt{split}2\tA man.\tA woman.{label}",
            ],
        )
    write_tsv(src / "sts-test-student.csv", ["\tid\tsentence1\tsentence2", "3\ttt1\tA.\tB."])
    return src


# --- the real files -------------------------------------------------------------------------


@pytest.mark.parametrize(("task", "split"), sorted(REAL_ROWS))
def test_real_row_counts(cs224n_dir, task, split):
    table, report = read_task_split(cs224n_dir, task, split)
    assert len(table) == report.rows_kept == REAL_ROWS[task, split]
    assert list(table.columns) == [
        "id",
        *(["sentence"] if task == "sst" else ["sentence1", "sentence2"]),
        "label",
    ]
    assert table["id"].is_unique
    assert table["label"].isna().all() if split == "test" else table["label"].notna().all()


def test_real_sst_test_extra_leading_column(cs224n_dir):
    table, report = read_task_split(cs224n_dir, "sst", "test")
    assert report.rows_read == 2210 and not report.rejected
    # First data line: "1\t0.0\tb7573736a6ddf7be102b7fee0\t Effective but too-tepid biopic"
    first = table.iloc[0]
    assert (first["id"], first["sentence"]) == (
        "b7573736a6ddf7be102b7fee0",
        "Effective but too-tepid biopic",
    )
    assert table["id"].str.fullmatch(r"[0-9a-f]{25}").all()


def test_real_quora_dev_blank_labels_rejected(cs224n_dir):
    table, report = read_task_split(cs224n_dir, "qqp", "dev")
    d = report.to_dict()
    assert (d["rows_read"], d["rows_kept"], d["rows_rejected"]) == (20214, 20212, 2)
    # Both rows have a blank label; the second lost its sentence2 too (found with awk -F'\t').
    assert d["rejected"] == {"blank label": 2, "empty sentence2": 1}
    assert [(e["line"], e["id"]) for e in d["rejected_examples"]] == [
        (2577, "ad118c967d683c93883bf072d"),
        (14222, "9054345d02cd6c5642a4904dc"),
    ]
    assert not table["id"].isin(["ad118c967d683c93883bf072d", "9054345d02cd6c5642a4904dc"]).any()


def test_real_qqp_twice_quoted_text_reads_as_written(cs224n_dir):
    table, _ = read_task_split(cs224n_dir, "qqp", "dev")
    row = table.set_index("id").loc["318658e273ac78f3b1e957b8b"]
    # Raw line 3: """Which is correct grammar: ... Do I need """"the"""" here?"""
    assert row["sentence1"] == (
        "Which is correct grammar: I graduated from University of XXXX or I graduated from the "
        'University of XXXX? Do I need "the" here?'
    )
    assert row["label"] == 0
    # A question that opens with a genuine quote (raw line 306 starts with 7 quotes).
    assert table.set_index("id").loc["0f2d1366842ed8117bc16a1c2", "sentence1"] == (
        '"Hanging on in quiet desperation is the English way." This sentence is from the song '
        '"Time" by the band Pink Floyd. What does the word "English" mean here?'
    )
    # Doubled quotes survive only where the asker typed two (raw: 8 quotes each side of YOU).
    doubled = set()
    for split in ("train", "dev"):
        table, _ = read_task_split(cs224n_dir, "qqp", split)
        for col in ("sentence1", "sentence2"):
            doubled |= set(table.loc[table[col].str.contains('""', regex=False), "id"])
    assert doubled == {"0e152dee2b164aebde498ccd8"}


def test_real_sts_quotes_are_kept(cs224n_dir):
    table, _ = read_task_split(cs224n_dir, "sts", "train")
    row = table.set_index("id").loc["a4a2b8a3bcac3379320238bfc"]
    assert row["sentence1"] == (
        '"Whatever has happened to you by way of punishment is certainly more than enough," '
        "Covello told the 49-year-old, whose family, friends and supporters filled half the "
        "courtroom."
    )
    assert row["label"] == pytest.approx(3.0)


def test_real_qqp_float_labels_become_integers(cs224n_dir):
    # Reference count straight from the raw text: the label is the last tab-separated field.
    lines = (cs224n_dir / "quora-train.csv").read_text(encoding="utf-8").splitlines()[1:]
    ones = sum(line.rsplit("\t", 1)[1] == "1.0" for line in lines)
    table, _ = read_task_split(cs224n_dir, "qqp", "train")
    assert str(table["label"].dtype) == "Int8"
    assert set(table["label"].unique()) == {0, 1}
    assert int(table["label"].sum()) == ones == 5031


def test_real_prepare_end_to_end(cs224n_dir, tmp_path):
    out = tmp_path / "prepared"
    prepared = prepare(
        str(cs224n_dir), train_rows={"qqp": 1000}, seed=11, cache_dir=tmp_path / "cache",
        dev_rows={"qqp": 500},
    )
    write_prepared(prepared, out)
    report = prepared.report
    assert sorted(p.name for p in out.iterdir()) == OUTPUT_NAMES
    qqp = report["tasks"]["qqp"]
    assert qqp["train"]["rows_kept"] == 13507 and qqp["train"]["rows_written"] == 1000
    assert qqp["dev"]["rows_written"] == 500 and report["dev_rows"] == {"qqp": 500}
    dev = load_prepared(out, "qqp", "dev")
    full, _ = read_task_split(cs224n_dir, "qqp", "dev")
    # a seeded sample of the full dev split, in file order
    assert len(dev) == 500 and set(dev["id"]) <= set(full["id"])
    assert list(dev["id"]) == [i for i in full["id"] if i in set(dev["id"])]
    sts_dev, _ = read_task_split(cs224n_dir, "sts", "dev")
    assert len(load_prepared(out, "sts", "dev")) == len(sts_dev)  # no cap: every row
    assert qqp["test"]["missing"] is True and qqp["test"]["rows_written"] == 0
    assert len(load_prepared(out, "qqp", "train")) == 1000
    assert len(load_prepared(out, "sst", "train")) == 8544
    assert not (tmp_path / "cache").exists()  # a local source is read in place


# --- bad rows in small files ----------------------------------------------------------------


def test_bad_sst_rows_rejected_with_reasons(tmp_path):
    write_tsv(
        tmp_path / "ids-sst-train.csv",
        [
            "\tid\tsentence\tsentiment",
            "0\ta\tfine\t2",  # line 2: kept
            "1\tb\ttoo high\t5",  # line 3
            "2\tc\thalf\t2.5",  # line 4
            "3\td\tword\tgood",  # line 5
            "4\te\t   \t1",  # line 6
            "5\ta\tagain\t3",  # line 7: duplicate of line 2
            "6\tf\tnone\t",  # line 8
            "7\tg\tfloat ok\t4.0",  # line 9: kept as 4
            "8\th\tneg\t-1",  # line 10
        ],
    )
    table, report = read_task_split(tmp_path, "sst", "train")
    assert table["id"].tolist() == ["a", "g"]
    assert table["label"].tolist() == [2, 4]
    assert table["sentence"].tolist() == ["fine", "float ok"]
    d = report.to_dict()
    assert (d["rows_read"], d["rows_kept"], d["rows_rejected"]) == (9, 2, 7)
    assert d["rejected"] == {
        "blank label": 1,
        "duplicate id": 1,
        "empty sentence": 1,
        "label not a number": 1,
        "label not an integer": 1,
        "label out of range": 2,
    }
    assert [(e["line"], e["reasons"]) for e in d["rejected_examples"]] == [
        (3, ["label out of range"]),
        (4, ["label not an integer"]),
        (5, ["label not a number"]),
        (6, ["empty sentence"]),
        (7, ["duplicate id"]),
    ]


def test_labels_only_python_would_read_are_rejected_and_counted(tmp_path):
    write_tsv(tmp_path / "ids-sst-train.csv", [
        "\tid\tsentence\tsentiment",
        "0\ta\tfine\t 3 ",  # kept: spaces around a number
        "1\tb\tunderscore\t0_1",  # float("0_1") is 1.0
        "2\tc\tfullwidth\t\uff11",  # float("１") is 1.0
        "3\td\tplus\t+2",  # kept
        "4\te\tinfinite\t1e999",
    ])
    table, report = read_task_split(tmp_path, "sst", "train")
    assert table["id"].tolist() == ["a", "d"] and table["label"].tolist() == [3, 2]
    assert report.to_dict()["rejected"] == {"label not a number": 3}


def test_jsonl_with_a_byte_order_mark_and_windows_line_endings_reads_as_plain(tmp_path):
    spec = build_tasks({"pol": {"kind": "binary", "data": {
        "format": "jsonl", "dir": str(tmp_path), "train": "t.jsonl", "dev": "d.jsonl",
        "text": ["text"]}}})["pol"]
    (tmp_path / "t.jsonl").write_bytes(
        b"\xef\xbb\xbf" + b'{"id": "a", "text": "good", "label": 1}\r\n'
        b'{"id": "b", "text": "bad\\nfilm", "label": 0}\r\n\r\n')
    table, report = read_task_split(tmp_path, spec, "train")
    assert table[["id", "sentence", "label"]].values.tolist() == [
        ["a", "good", 1], ["b", "bad\nfilm", 0]]
    # the blank line at the end is counted, as in every other format
    assert report.to_dict()["rejected"] == {"blank line": 1}


@pytest.mark.parametrize(
    ("task", "header", "label", "kept"),
    [
        ("qqp", "is_duplicate", "1.0", True),
        ("qqp", "is_duplicate", "1", True),
        ("qqp", "is_duplicate", "2.0", False),
        ("qqp", "is_duplicate", "0.5", False),
        ("sts", "similarity", "5.0", True),
        ("sts", "similarity", "0", True),
        ("sts", "similarity", "5.2", False),
        ("sts", "similarity", "-0.1", False),
        ("sts", "similarity", "nan", False),
    ],
)
def test_pair_label_ranges(tmp_path, task, header, label, kept):
    name = {"qqp": "quora-dev.csv", "sts": "sts-dev.csv"}[task]
    write_tsv(
        tmp_path / name,
        [f"\tid\tsentence1\tsentence2\t{header}", "0\tgood\ta\tb\t1", f"1\tx\ta\tb\t{label}"],
    )
    table, report = read_task_split(tmp_path, task, "dev")
    assert len(table) == 1 + int(kept) and report.rows_rejected == int(not kept)
    if kept:
        assert table["label"].iloc[1] == pytest.approx(float(label))


def test_empty_second_sentence_rejected(tmp_path):
    write_tsv(
        tmp_path / "sts-train.csv",
        ["\tid\tsentence1\tsentence2\tsimilarity", "0\tx\ta\t \t1.0", "1\ty\ta\tb\t2.0"],
    )
    table, report = read_task_split(tmp_path, "sts", "train")
    assert table["id"].tolist() == ["y"]
    assert report.to_dict()["rejected"] == {"empty sentence2": 1}


def test_test_rows_with_an_empty_text_are_kept(tmp_path):
    # A submission must hold every test id (a leaderboard scores a missing one as wrong), so at
    # test time an empty text is an example, predicted from no text; train and dev reject it.
    write_tsv(tmp_path / "sts-test-student.csv", ["\tid\tsentence1\tsentence2",
                                                  "0\tx\ta\t ", "1\ty\t\t", "2\tz\ta\tb"])
    table, report = read_task_split(tmp_path, "sts", "test")
    assert table["id"].tolist() == ["x", "y", "z"]
    assert table["sentence1"].tolist() == ["a", "", "a"]
    assert table["sentence2"].tolist() == ["", "", "b"]
    d = report.to_dict()
    assert (d["rows_read"], d["rows_kept"], d["rows_rejected"], d["rows_empty_text"]) == (
        3, 3, 0, 2)
    write_tsv(tmp_path / "sts-dev.csv", ["\tid\tsentence1\tsentence2\tsimilarity",
                                         "0\tx\ta\t \t1.0", "1\tz\ta\tb\t2.0"])
    table, report = read_task_split(tmp_path, "sts", "dev")
    assert table["id"].tolist() == ["z"] and report.to_dict()["rows_empty_text"] == 0
    assert report.to_dict()["rejected"] == {"empty sentence2": 1}


def test_tabular_test_rows_with_an_empty_text_are_kept(tmp_path):
    spec = build_tasks({"pol": {"kind": "binary", "data": {
        "format": "csv", "dir": str(tmp_path), "train": "t.csv", "dev": "d.csv",
        "test": "x.csv", "text": ["text"]}}})["pol"]
    (tmp_path / "x.csv").write_text("id,text\na,good\nb,\nc,  \n")
    table, report = read_task_split(tmp_path, spec, "test")
    assert table["id"].tolist() == ["a", "b", "c"]
    assert table["sentence"].tolist() == ["good", "", ""]
    assert (report.rows_rejected, report.to_dict()["rows_empty_text"]) == (0, 2)
    (tmp_path / "d.csv").write_text("id,text,label\na,good,1\nb,,0\n")
    table, report = read_task_split(tmp_path, spec, "dev")
    assert table["id"].tolist() == ["a"]
    assert report.to_dict()["rejected"] == {"empty sentence": 1}


# --- malformed files stop with file, line and field -----------------------------------------


def test_wrong_header_names_file_line_field(tmp_path):
    write_tsv(tmp_path / "ids-sst-dev.csv", ["\tid\tsentence\tlabel", "0\ta\tfine\t2"])
    with pytest.raises(DataError) as err:
        read_task_split(tmp_path, "sst", "dev")
    message = str(err.value)
    assert "ids-sst-dev.csv" in message and "line 1" in message
    assert "field 4" in message and "'sentiment'" in message and "'label'" in message


def test_missing_header_column_is_an_error(tmp_path):
    write_tsv(tmp_path / "sts-dev.csv", ["id\tsentence1\tsentence2\tsimilarity", "x\ta\tb\t1.0"])
    with pytest.raises(DataError, match=r"sts-dev\.csv: line 1 .*index column"):
        read_task_split(tmp_path, "sts", "dev")


@pytest.mark.parametrize(
    ("row", "field"),
    [("1\tb\tonly two", "field 4 ('sentiment') is missing"), ("1\tb\tx\t2\textra", "field 5")],
)
def test_wrong_field_count_names_file_line_field(tmp_path, row, field):
    write_tsv(tmp_path / "ids-sst-train.csv", ["\tid\tsentence\tsentiment", "0\ta\tok\t1", row])
    with pytest.raises(DataError) as err:
        read_task_split(tmp_path, "sst", "train")
    message = str(err.value)
    assert "ids-sst-train.csv" in message and "line 3" in message and field in message


def test_malformed_quoting_names_file_and_line(tmp_path):
    write_tsv(
        tmp_path / "sts-train.csv",
        ["\tid\tsentence1\tsentence2\tsimilarity", '0\tx\t"quoted" then text\tb\t1.0'],
    )
    where = r"sts-train\.csv: line 2, field 3 \('sentence1'\)"
    with pytest.raises(DataError, match=where + ": malformed quoting"):
        read_task_split(tmp_path, "sts", "train")


def test_missing_required_split_is_an_error(small_source):
    (small_source / "sts-dev.csv").unlink()
    with pytest.raises(DataError, match=r"sts-dev\.csv: not found"):
        read_task_split(small_source, "sts", "dev")


# --- prepare: outputs, schemas, atomicity, caps ---------------------------------------------


def test_prepare_writes_typed_tables_atomically(small_source, tmp_path):
    out = tmp_path / "prepared"
    prepared = prepare(str(small_source), train_rows={}, seed=0, cache_dir=tmp_path / "c")
    write_prepared(prepared, out)
    report = prepared.report
    # Atomic writers rename temp names into place: only the outputs are left.
    assert sorted(p.name for p in out.iterdir()) == OUTPUT_NAMES
    arrow = {"str": "large_string", "Int8": "int8", "float32": "float"}
    for task, cols in {
        "sst": ["sentence"],
        "qqp": ["sentence1", "sentence2"],
        "sts": ["sentence1", "sentence2"],
    }.items():
        label = {"sst": "Int8", "qqp": "Int8", "sts": "float32"}[task]
        for split in SPLITS:
            table = load_prepared(out, task, split)
            assert {c: str(t) for c, t in table.dtypes.items()} == {
                "id": "str",
                **dict.fromkeys(cols, "str"),
                "label": label,
            }
            schema = pq.read_schema(out / f"{task}_{split}.parquet")
            assert str(schema.field("label").type) == arrow[label]
            assert str(schema.field("id").type) == arrow["str"]
    assert load_prepared(out, "sst", "train")["sentence"].tolist() == ["good film", "bad film"]
    assert load_prepared(out, "qqp", "train")["label"].tolist() == [1, 1]
    assert load_prepared(out, "sts", "train")["label"].tolist() == pytest.approx([4.6, 4.6])
    assert load_prepared(out, "sst", "test")["label"].isna().all()
    assert load_prepared(out, "sts", "test")["label"].isna().all()
    assert len(load_prepared(out, "qqp", "test")) == 0
    assert report["tasks"]["qqp"]["test"]["missing"] is True
    assert report["tasks"]["sts"]["test"]["missing"] is False


def test_prepare_writes_nothing_when_a_file_is_malformed(small_source, tmp_path):
    write_tsv(small_source / "sts-test-student.csv", ["\tid\tsentence1", "0\tx\ta"])
    out = tmp_path / "prepared"
    with pytest.raises(DataError, match="sts-test-student.csv"):
        write_prepared(prepare(str(small_source), train_rows={}, seed=0,
                               cache_dir=tmp_path / "c"), out)
    assert not out.exists()


def test_load_prepared_rejects_wrong_dtype(tmp_path):
    pd.DataFrame({"id": ["a"], "sentence": ["s"], "label": [1.5]}).to_parquet(
        tmp_path / "sst_train.parquet", index=False
    )
    with pytest.raises(DataError, match=r"sst_train\.parquet: column 'label': expected dtype Int8"):
        load_prepared(tmp_path, "sst", "train")
    with pytest.raises(DataError, match=r"sst_dev\.parquet: not found"):
        load_prepared(tmp_path, "sst", "dev")


def test_cap_rows_is_a_seeded_ordered_subset():
    table = pd.DataFrame({"id": [f"r{i}" for i in range(50)]})
    first = cap_rows(table, 10, seed=11)
    assert len(first) == 10 and first["id"].is_unique
    positions = [int(i[1:]) for i in first["id"]]
    assert positions == sorted(positions)  # file order kept
    assert cap_rows(table, 10, seed=11).equals(first)
    assert not cap_rows(table, 10, seed=12).equals(first)
    assert cap_rows(table, 50, seed=11).equals(table) and cap_rows(table, None, 0).equals(table)


def test_prepare_rejects_bad_caps(small_source, tmp_path):
    with pytest.raises(DataError, match="data.train_rows"):
        prepare(str(small_source), {"mnli": 5}, seed=0, cache_dir=tmp_path / "c")


# --- URL sources --------------------------------------------------------------------------


def test_unreachable_url_says_how_to_use_a_local_copy(tmp_path):
    # Port 9 (discard) on localhost: refused at once, no network needed.
    with pytest.raises(DataError) as err:
        fetch_source("http://127.0.0.1:9/", tmp_path / "cache")
    message = str(err.value)
    assert "http://127.0.0.1:9/ids-sst-train.csv" in message
    assert "dvc exp run -S data.source=" in message and "params.yaml" in message


def test_missing_local_source_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="data.source: directory .*nowhere' does not exist"):
        fetch_source(str(tmp_path / "nowhere"), tmp_path / "cache")


@pytest.fixture
def served(small_source):
    """An HTTP server on localhost serving ``small_source`` (404 for quora-test-student)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(small_source))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/", server
    server.shutdown()
    server.server_close()


def test_url_source_downloads_then_uses_cache(served, small_source, tmp_path, monkeypatch):
    url, server = served
    # The small files stand in for the upstream ones: pin their digests.
    monkeypatch.setattr(data, "CS224N_SHA256", {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in small_source.iterdir()
    })
    cache = tmp_path / "raw" / "cs224n"
    out = tmp_path / "prepared"
    prepared = prepare(url, train_rows={}, seed=0, cache_dir=cache)
    write_prepared(prepared, out)
    report = prepared.report
    assert report["tasks"]["qqp"]["test"]["missing"] is True  # the server answered 404
    assert (cache / "ids-sst-train.csv").read_bytes() == (
        small_source / "ids-sst-train.csv"
    ).read_bytes()
    assert not (cache / "quora-test-student.csv").exists()
    assert len(load_prepared(out, "sts", "dev")) == 2
    # Offline later, a complete cache of the same URL is enough.
    write_tsv(cache / "quora-test-student.csv", ["\tid\tsentence1\tsentence2", "0\tq\ta\tb"])
    server.shutdown()
    server.server_close()
    assert fetch_source(url, cache) == cache
    # Another URL does not reuse files fetched from the first.
    with pytest.raises(DataError, match="could not download"):
        fetch_source("http://127.0.0.1:9/", cache)
    assert not (cache / "ids-sst-train.csv").exists()


# --- leakage: the same id or example in two splits ------------------------------------------


@pytest.fixture
def leaky_source(small_source: Path) -> Path:
    """small_source where dev repeats train: SST by sentence (case and spacing aside) and by id,
    QQP by a pair in the other order, STS by a pair as it is."""
    write_tsv(small_source / "ids-sst-train.csv", [
        "\tid\tsentence\tsentiment", "0\ts1\t good film\t4", "1\ts2\tbad film\t0",
        "2\ts3\ta fine story\t3"])
    write_tsv(small_source / "ids-sst-dev.csv", [
        "\tid\tsentence\tsentiment", "0\tsd1\tGOOD   Film\t3", "1\ts2\tdull\t1"])
    write_tsv(small_source / "quora-dev.csv", [
        "\tid\tsentence1\tsentence2\tis_duplicate", "7\tqdev1\tWhy?\tHow?\t0.0",
        "9\tqdev2\tWho?\tWhere?\t0.0"])
    write_tsv(small_source / "sts-dev.csv", [
        "\tid\tsentence1\tsentence2\tsimilarity", "3\ttdev1\tA dog.\tA cat.\t1.0",
        "5\ttdev2\tA bird.\tA fish.\t2.0"])
    return small_source


def test_rows_in_two_splits_are_counted_per_task_and_pair_of_splits(leaky_source, tmp_path):
    report = prepare(str(leaky_source), {}, 0, tmp_path / "c").report["leakage"]
    assert report["policy"] == "keep"
    counts = report["tasks"]
    none = {"rows": 0, "same_id": 0, "same_example": 0, "examples": []}
    assert counts["sst"] == {
        "train-dev": {"rows": 2, "same_id": 1, "same_example": 1, "examples": ["s1", "s2"]},
        "train-test": none, "dev-test": none}
    assert counts["qqp"] == {
        "train-dev": {"rows": 1, "same_id": 0, "same_example": 1, "examples": ["qtrain1"]},
        "train-test": none, "dev-test": none}  # no QQP test file
    assert counts["sts"]["train-dev"] == {"rows": 1, "same_id": 0, "same_example": 1,
                                          "examples": ["ttrain1"]}


def test_leaked_train_rows_are_kept_or_dropped_as_asked(leaky_source, tmp_path):
    kept = prepare(str(leaky_source), {}, 0, tmp_path / "c").tables
    assert kept["sst", "train"]["id"].tolist() == ["s1", "s2", "s3"]
    dropped = prepare(str(leaky_source), {}, 0, tmp_path / "c", leakage="drop")
    assert dropped.tables["sst", "train"]["id"].tolist() == ["s3"]
    assert dropped.tables["qqp", "train"]["id"].tolist() == ["qtrain2"]
    assert dropped.tables["sts", "train"]["id"].tolist() == ["ttrain2"]
    # dev and test are the benchmark's own: never dropped from
    assert dropped.tables["sst", "dev"]["id"].tolist() == ["sd1", "s2"]
    assert dropped.report["leakage"]["tasks"]["sst"]["train_rows_dropped"] == 2
    assert dropped.report["tasks"]["sst"]["train"]["rows_written"] == 1
    write_tsv(leaky_source / "ids-sst-train.csv", [
        "\tid\tsentence\tsentiment", "0\ts1\tgood film\t4"])
    with pytest.raises(DataError, match="sst train: all 1 rows are also in dev or test"):
        prepare(str(leaky_source), {}, 0, tmp_path / "c", leakage="drop")
    with pytest.raises(DataError, match=r"data.leakage: 'discard'; expected one of"):
        prepare(str(leaky_source), {}, 0, tmp_path / "c", leakage="discard")


def test_the_stage_names_leaked_rows_in_one_notice_each(leaky_source, tmp_path):
    report = prepare(str(leaky_source), {}, 0, tmp_path / "c").report
    stage = load_stage("prepare")
    assert stage.leakage_notices(report, {"sst": False, "qqp": True, "sts": True}) == [
        "prepare: notice: sst: 2 train row(s) also in dev (same id: 1, same sentence: 1), e.g. "
        "ids 's1', 's2'; kept in train (data.leakage: keep; `drop` removes them)",
        "prepare: notice: qqp: 1 train row(s) also in dev (same id: 0, same sentence pair "
        "(either order): 1), e.g. ids 'qtrain1'; kept in train (data.leakage: keep; `drop` "
        "removes them)",
        "prepare: notice: sts: 1 train row(s) also in dev (same id: 0, same sentence pair "
        "(either order): 1), e.g. ids 'ttrain1'; kept in train (data.leakage: keep; `drop` "
        "removes them)"]


def test_positional_ids_are_no_evidence_of_leakage():
    # A task without an id column numbers its rows: train and dev then share ids 0, 1, … by
    # construction, and only a shared example counts.
    spec = dataclasses.replace(
        task_spec("sst"), data=dataclasses.replace(task_spec("sst").data, id=None))
    train = pd.DataFrame({"id": ["0", "1", "2"], "sentence": ["a b", "c d", "e f"]})
    dev = pd.DataFrame({"id": ["0", "1"], "sentence": ["x y", "C  D"]})
    same_id, same_example = leaked_rows(train, dev, spec)
    assert same_id.tolist() == [False, False, False]
    assert same_example.tolist() == [False, True, False]
    same_id, _ = leaked_rows(train, dev, task_spec("sst"))  # with an id column, ids count
    assert same_id.tolist() == [True, True, False]
