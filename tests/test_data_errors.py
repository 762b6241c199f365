"""pipeline.data on broken files written the way a user's file would look: every problem stops
with one message naming the file, line, field (or byte offset) and what was expected."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

from pipeline import data
from pipeline.config import build_tasks
from pipeline.data import (
    CS224N_SHA256,
    DataError,
    fetch_source,
    prepare,
    read_task_split,
    write_prepared,
)

ROOT = Path(__file__).resolve().parents[1]
SST_HEADER = "\tid\tsentence\tsentiment"
SST_COLUMNS = "(index, id, sentence, sentiment)"
PAIR_HEADER = "\tid\tsentence1\tsentence2"


def write_lines(path: Path, lines: list[str], newline: str = "\n", prefix: bytes = b"") -> Path:
    path.write_bytes(prefix + "".join(line + newline for line in lines).encode("utf-8"))
    return path


def sst_rows(n: int, start: int = 0) -> list[str]:
    return [f"{i}\tid{i}\tan ordinary sentence about film number {i}\t{i % 5}"
            for i in range(start, start + n)]


def error_of(source: Path, task: str, split: str) -> str:
    with pytest.raises(DataError) as err:
        read_task_split(source, task, split)
    return str(err.value)


@pytest.fixture
def small_source(tmp_path: Path) -> Path:
    """Every CS224N file but quora-test-student.csv, one good row each."""
    src = tmp_path / "cs224n"
    src.mkdir()
    for split in ("train", "dev"):
        write_lines(src / f"ids-sst-{split}.csv", [SST_HEADER, f"0\ts{split}\tgood film\t4"])
        write_lines(src / f"quora-{split}.csv", [f"{PAIR_HEADER}\tis_duplicate", "0\tq\ta\tb\t1.0"])
        write_lines(src / f"sts-{split}.csv", [f"{PAIR_HEADER}\tsimilarity", "0\tt\ta\tb\t2.5"])
    write_lines(src / "ids-sst-test-student.csv", ["0\t\tid\tsentence", "1\t0.0\tst\tok"])
    write_lines(src / "sts-test-student.csv", [PAIR_HEADER, "0\ttt\ta\tb"])
    return src


# --- encoding: the offset in the file, the line and the field -------------------------------


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_invalid_utf8_deep_in_file_names_file_offset_line_and_field(tmp_path, newline):
    rows = sst_rows(2000)  # > 100 kB before the bad byte
    head = "".join(line + newline for line in [SST_HEADER, *rows]).encode("utf-8")
    assert len(head) > 100_000
    bad_line = b"2000\tidx\tcaf\xe9 au lait\t3" + newline.encode()
    path = tmp_path / "ids-sst-train.csv"
    path.write_bytes(head + bad_line + "".join(r + newline for r in sst_rows(5, 2001)).encode())
    offset = len(head) + bad_line.index(b"\xe9")  # column 13: after "2000<tab>idx<tab>caf"
    assert error_of(tmp_path, "sst", "train") == (
        f"{path}: line 2002, column 13, field 3 ('sentence'): byte 0xe9 at offset {offset} is "
        "not UTF-8 (invalid continuation byte); expected UTF-8 text; save the file as UTF-8 "
        "(it may be Latin-1 or Windows-1252)"
    )


def test_utf16_file_is_named_as_such(tmp_path):
    path = tmp_path / "sts-dev.csv"
    path.write_text("\tid\tsentence1\tsentence2\tsimilarity\n0\tx\ta\tb\t1\n", encoding="utf-16")
    assert error_of(tmp_path, "sts", "dev") == (
        f"{path}: line 1, column 1, field 1: byte 0xff at offset 0 is not UTF-8 (invalid start "
        "byte); the file starts with a UTF-16 byte-order mark: save it as UTF-8"
    )


def test_nul_byte_is_an_error_not_text(tmp_path):
    path = tmp_path / "ids-sst-dev.csv"
    head = f"{SST_HEADER}\n0\ta\tfine\t2\n".encode()
    path.write_bytes(head + b"1\tb\tgo\x00od\t3\n")
    assert len(head) + 6 == 40
    assert error_of(tmp_path, "sst", "dev") == (
        f"{path}: line 3, column 7, field 3 ('sentence'): NUL byte at offset 40; expected UTF-8 "
        "text, this looks like a UTF-16 or binary file"
    )


def test_bom_and_windows_line_endings_read_like_plain_files(tmp_path):
    lines = [SST_HEADER, '0\ta\t"a ""quoted"" word"\t2', "1\tb\tplain\t4"]
    plain, windows = tmp_path / "plain", tmp_path / "windows"
    plain.mkdir(), windows.mkdir()
    write_lines(plain / "ids-sst-train.csv", lines)
    write_lines(windows / "ids-sst-train.csv", lines, "\r\n", prefix=b"\xef\xbb\xbf")
    expected, _ = read_task_split(plain, "sst", "train")
    table, report = read_task_split(windows, "sst", "train")
    assert table.equals(expected) and report.rows_rejected == 0
    assert table["sentence"].tolist() == ['a "quoted" word', "plain"]


# --- column counts: the right field is blamed -----------------------------------------------


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ("2\tc\tok\t1\textra", "an extra column after 'sentiment' ('1'): field 5 holds 'extra'"),
        ("2\tc\tok\t1\t", "an extra column after 'sentiment' ('1'): field 5 holds ''"),
        ("2\tc\tok\t1\tx\ty", "an extra column after 'sentiment' ('1'): fields 5-6 hold 'x', 'y'"),
        (
            "2\tc\tgood\tfilm\t4",
            "the last field is a label ('4') but field 4 ('sentiment') holds 'film': a text "
            "field probably contains a tab",
        ),
        ("2\tc\tok", "field 4 ('sentiment') is missing"),
        ("2\tc", "fields 3-4 ('sentence', 'sentiment') are missing"),
        ("2 c ok 1", "fields 2-4 ('id', 'sentence', 'sentiment') are missing"),
    ],
)
def test_field_count_names_line_and_column(tmp_path, row, problem):
    lines = [SST_HEADER, "0\ta\tfine\t2", "1\tb\tok\t3", row]
    path = write_lines(tmp_path / "ids-sst-train.csv", lines)
    n = len(row.split("\t"))
    assert error_of(tmp_path, "sst", "train") == (
        f"{path}: line 4: {n} fields, expected 4 {SST_COLUMNS}: {problem}"
    )


def test_test_split_with_two_index_columns_names_both(tmp_path):
    path = write_lines(
        tmp_path / "ids-sst-test-student.csv", ["0\t\tid\tsentence", "1\t0.0\ta\tok", "2\t1.0\tb"]
    )
    assert error_of(tmp_path, "sst", "test") == (
        f"{path}: line 3: 3 fields, expected 4 (index1, index2, id, sentence): field 4 "
        "('sentence') is missing"
    )


@pytest.mark.parametrize(
    ("task", "split", "header", "problem"),
    [
        (
            "sst", "train", "\tid\tsentence\tsentiment\textra",
            "5 fields, expected 4: an extra column after 'sentiment' (field 5): ['extra']; "
            "expected the columns [index column], id, sentence, sentiment",
        ),
        (
            "sst", "train", "\tid\tsentence",
            "field 4 ('sentiment') is missing: the header ends after 'sentence'; expected the "
            "columns [index column], id, sentence, sentiment; these are the columns of "
            "ids-sst-test-student.csv: is it the wrong file?",
        ),
        (
            "qqp", "dev", "\tid\tsentence1\tsentence2\tsimilarity",
            "field 5: expected 'is_duplicate', got 'similarity'; these are the columns of "
            "sts-train.csv or sts-dev.csv: is it the wrong file?",
        ),
        (
            "sst", "dev", ",id,sentence,sentiment",
            "no 'id' column; expected the columns [index column], id, sentence, sentiment, got "
            "[',id,sentence,sentiment']; the line has no tab: is the file comma-separated?",
        ),
        (
            "sst", "dev", "0\ta\tfine\t2",
            "no 'id' column; expected the columns [index column], id, sentence, sentiment, got "
            "['0', 'a', 'fine', '2']; is the header line missing?",
        ),
        (
            "sst", "dev", "\t\t\tid\tsentence\tsentiment",
            "3 field(s) before 'id', expected 1 or 2 unnamed index columns; expected the columns "
            "[index column], id, sentence, sentiment, got ['', '', '', 'id', 'sentence', "
            "'sentiment']",
        ),
    ],
)
def test_wrong_header_names_the_field(tmp_path, task, split, header, problem):
    path = write_lines(tmp_path / data.file_name(task, split), [header, "0\ta\tb\tc\t1"])
    assert error_of(tmp_path, task, split) == f"{path}: line 1 (header): {problem}"


# --- quoting: the line and field where the quote opens --------------------------------------


def test_a_sentence_past_the_csv_field_limit_is_read_whole(tmp_path):
    # 131,072 characters is Python csv's default limit; a longer field is still a legal one
    long = "a very long review of a film " * 7000  # 203,000 characters
    write_lines(tmp_path / "ids-sst-train.csv",
                [SST_HEADER, "0\ta\tfine\t2", f"1\tb\t{long}\t3", f'2\tc\t"{long}"\t4'])
    table, report = read_task_split(tmp_path, "sst", "train")
    assert table["sentence"].tolist() == ["fine", long.strip(), long.strip()]
    assert report.rows_rejected == 0


def test_unclosed_quote_in_a_long_file_names_where_it_opens(tmp_path):
    # The quote swallows the following 3000 lines (~180 kB, past csv's default field limit) up
    # to the end of the file, where the quote is found never closed.
    path = write_lines(
        tmp_path / "ids-sst-train.csv",
        [SST_HEADER, "0\ta\tfine\t2", '1\tb\t"an unclosed quote\t3', *sst_rows(3000, start=2)],
    )
    assert error_of(tmp_path, "sst", "train") == (
        f"{path}: line 3, field 3 ('sentence'): a quote (\") opened here is never closed before "
        "the file ends"
    )


def test_unclosed_quote_at_the_end_names_where_it_opens(tmp_path):
    path = write_lines(
        tmp_path / "sts-dev.csv",
        [f"{PAIR_HEADER}\tsimilarity", "0\ta\tx\ty\t1", '1\tb\tx\t"y\t2', "2\tc\tx\ty\t3"],
    )
    assert error_of(tmp_path, "sts", "dev") == (
        f"{path}: line 3, field 4 ('sentence2'): a quote (\") opened here is never closed before "
        "the file ends"
    )


# --- files with no rows, files that are not files -------------------------------------------


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        ([SST_HEADER], "no rows after the header"),
        (
            [SST_HEADER, "0\ta\tx\t", "1\tb\ty\t7", ""],
            "all 3 rows rejected (blank label: 1, blank line: 1, label out of range: 1)",
        ),
    ],
)
def test_required_split_without_usable_rows_is_an_error(tmp_path, lines, problem):
    path = write_lines(tmp_path / "ids-sst-dev.csv", lines)
    assert error_of(tmp_path, "sst", "dev") == (
        f"{path}: {problem}; a required split needs at least one usable row"
    )


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "quora-train.csv"
    path.write_bytes(b"")
    assert error_of(tmp_path, "qqp", "train") == f"{path}: empty file; expected a header line"


def test_present_test_file_without_rows_is_an_error(tmp_path):
    path = write_lines(tmp_path / "sts-test-student.csv", ["\tid\tsentence1\tsentence2"])
    assert error_of(tmp_path, "sts", "test") == (
        f"{path}: no rows after the header; remove the file if the source has no test split"
    )


def test_blank_lines_are_counted_rejections(tmp_path):
    lines = [SST_HEADER, "0\ta\tfine\t2", "", "1\tb\tok\t3", "  "]
    write_lines(tmp_path / "ids-sst-train.csv", lines)
    table, report = read_task_split(tmp_path, "sst", "train")
    assert table["id"].tolist() == ["a", "b"]
    assert report.to_dict()["rejected"] == {"blank line": 2}
    assert [e["line"] for e in report.rejected_examples] == [3, 5]


def test_header_only_dev_split_stops_prepare(small_source, tmp_path):
    # Before, an empty sts dev table was written and scored NaN.
    path = write_lines(small_source / "sts-dev.csv", ["\tid\tsentence1\tsentence2\tsimilarity"])
    out = tmp_path / "prepared"
    with pytest.raises(DataError) as err:
        write_prepared(prepare(str(small_source), train_rows={}, seed=0,
                               cache_dir=tmp_path / "c"), out)
    assert str(err.value) == (
        f"{path}: no rows after the header; a required split needs at least one usable row"
    )
    assert not out.exists()


@pytest.mark.parametrize(("task", "split"), [("sst", "train"), ("sts", "test")])
def test_directory_in_place_of_a_file(small_source, task, split):
    path = small_source / data.file_name(task, split)
    path.unlink()
    path.mkdir()
    assert error_of(small_source, task, split) == (
        f"{path}: is a directory, expected a file (the {task} {split} split)"
    )


def test_dangling_symlink_in_place_of_a_file(tmp_path):
    path = tmp_path / "sts-test-student.csv"
    path.symlink_to(tmp_path / "gone.csv")
    assert error_of(tmp_path, "sts", "test") == (
        f"{path}: a symbolic link to {str(tmp_path / 'gone.csv')!r}, which is missing"
    )


def test_unreadable_file(small_source, monkeypatch):
    path = small_source / "quora-dev.csv"
    read_bytes = Path.read_bytes

    def denied(self):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", denied)  # chmod does not stop root
    assert error_of(small_source, "qqp", "dev") == (
        f"{path}: cannot read the file: Permission denied"
    )


# --- data.source ----------------------------------------------------------------------------


def test_source_that_is_a_file_or_empty_or_another_scheme(small_source, tmp_path):
    def message(source: str) -> str:
        with pytest.raises(DataError) as err:
            fetch_source(source, tmp_path / "cache")
        return str(err.value)

    file = str(small_source / "sts-dev.csv")
    assert message(file) == (
        f"data.source: {file!r} is a file; expected the directory holding the CS224N files "
        "(ids-sst-train.csv, ...)"
    )
    assert message("  ") == "data.source is empty; expected a directory or an http(s) URL base"
    assert message("ftp://example.org/data") == (
        "data.source: 'ftp://example.org/data': only http:// and https:// URLs are supported"
    )
    parent = str(small_source.parent)
    assert message(parent) == (
        f"data.source: directory {parent!r} holds none of the CS224N files (ids-sst-train.csv, "
        "ids-sst-dev.csv, ids-sst-test-student.csv, ...)"
    )
    shutil.copytree(small_source, tmp_path / "repo" / "data")
    repo = str(tmp_path / "repo")
    assert message(repo) == (
        f"data.source: directory {repo!r} holds none of the CS224N files (ids-sst-train.csv, "
        "ids-sst-dev.csv, ids-sst-test-student.csv, ...) (its data/ subdirectory does)"
    )


def test_stage_prints_one_line_and_exits_2(small_source, tmp_path):
    write_lines(small_source / "ids-sst-dev.csv", [SST_HEADER, "0\ta\tfine\t2\textra"])
    done = subprocess.run(
        [sys.executable, "stages/prepare.py", "--source", str(small_source),
         "--out", str(tmp_path / "out"), "--params", "params.yaml"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert done.returncode == 2
    assert done.stderr == (
        f"prepare: error: {small_source / 'ids-sst-dev.csv'}: line 2: 5 fields, expected 4 "
        f"{SST_COLUMNS}: an extra column after 'sentiment' ('2'): field 5 holds 'extra'\n"
    )


# --- downloads: pinned digests, sizes, nothing half-written ---------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_pinned_digests_are_those_of_the_cs224n_files(cs224n_dir):
    assert {name: sha256(cs224n_dir / name) for name in CS224N_SHA256} == CS224N_SHA256


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``files`` (name -> bytes); ``lengths`` overrides a Content-Length; else 404.

    With ``chunked_cut`` a body is sent as one chunk announced 1000 bytes longer, then the
    connection closes.
    """

    files: dict[str, bytes] = {}
    lengths: dict[str, int] = {}
    chunked_cut = False
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 (the http.server API)
        name = self.path.rsplit("/", 1)[-1]
        self.close_connection = True
        if name not in self.files:
            self.send_error(404)
            return
        body = self.files[name]
        self.send_response(200)
        if self.chunked_cut:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(f"{len(body) + 1000:x}\r\n".encode() + body)
            return
        self.send_header("Content-Length", str(self.lengths.get(name, len(body))))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    """``serve(files, ...)`` -> the URL base of a localhost server of those files."""
    servers = []

    def start(files: dict[str, bytes], lengths: dict[str, int] | None = None,
              chunked_cut: bool = False) -> str:
        handler = type(
            "H", (Handler,), {"files": files, "lengths": lengths or {}, "chunked_cut": chunked_cut}
        )
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}/data/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_download_of_the_cs224n_files_passes_digests(cs224n_dir, tmp_path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(cs224n_dir))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cache = fetch_source(f"http://127.0.0.1:{server.server_port}", tmp_path / "cache")
    finally:
        server.shutdown()
        server.server_close()
    names = sorted(p.name for p in cs224n_dir.glob("*.csv"))
    assert listing(cache) == sorted([".source", *names])  # quora-test-student: 404, absent
    assert all(sha256(cache / n) == sha256(cs224n_dir / n) for n in names)


def test_corrupted_download_is_an_error_and_not_kept(cs224n_dir, serve, tmp_path):
    body = (cs224n_dir / "ids-sst-train.csv").read_bytes().replace(b"The Rock", b"The Rick", 1)
    url = serve({"ids-sst-train.csv": body})
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        fetch_source(url, cache)
    assert str(err.value) == (
        f"ids-sst-train.csv: download from {url}ids-sst-train.csv has sha256 "
        f"{hashlib.sha256(body).hexdigest()} ({len(body)} bytes), expected "
        f"{CS224N_SHA256['ids-sst-train.csv']}: the server's file is not the CS224N release (or "
        "was corrupted on the way); nothing was kept. To use another version of the file on "
        "purpose, download it yourself and point data.source at its directory"
    )
    assert listing(cache) == [".source"]


def test_truncated_download_is_an_error_and_not_kept(cs224n_dir, serve, tmp_path):
    body = (cs224n_dir / "ids-sst-train.csv").read_bytes()
    url = serve({"ids-sst-train.csv": body[:5000]}, {"ids-sst-train.csv": len(body)})
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        fetch_source(url, cache)
    assert str(err.value) == (
        f"ids-sst-train.csv: download from {url}ids-sst-train.csv incomplete: received 5000 of "
        f"{len(body)} bytes (Content-Length); nothing was kept, run the stage again"
    )
    assert listing(cache) == [".source"]


def test_chunked_response_cut_short_is_an_error_and_not_kept(serve, tmp_path):
    url = serve({"ids-sst-train.csv": b"\tid\tsentence\tsentiment\n"}, chunked_cut=True)
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        fetch_source(url, cache)
    assert str(err.value) == (
        f"ids-sst-train.csv: download from {url}ids-sst-train.csv incomplete: the connection "
        "closed inside the body; nothing was kept, run the stage again"
    )
    assert listing(cache) == [".source"]


def test_truncated_unpinned_file_is_caught_by_its_size(small_source, serve, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "CS224N_SHA256", {})
    files = {p.name: p.read_bytes() for p in small_source.iterdir()}
    url = serve(files, {"sts-dev.csv": len(files["sts-dev.csv"]) + 10})
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"^sts-dev\.csv: download from .* incomplete"):
        fetch_source(url, cache)
    assert "sts-dev.csv" not in listing(cache) and "quora-dev.csv" in listing(cache)
    assert not [name for name in listing(cache) if name.startswith(".sts-dev")]


def test_html_page_instead_of_a_file_says_so(serve, tmp_path):
    url = serve({"ids-sst-train.csv": b"<!DOCTYPE html>\n<html><body>Sign in</body></html>\n"})
    with pytest.raises(DataError, match="the server sent an HTML page: data.source must be the "
                                        "base URL of the raw files"):
        fetch_source(url, tmp_path / "cache")


def test_required_file_answering_404_is_an_error(serve, tmp_path):
    url = serve({})
    with pytest.raises(DataError) as err:
        fetch_source(url, tmp_path / "cache")
    assert str(err.value) == (
        f"ids-sst-train.csv: {url}ids-sst-train.csv answered 404 Not Found; the sst train split "
        "is required: is data.source the base URL of the raw CS224N files?"
    )


def test_cached_file_with_a_wrong_digest_is_fetched_again(cs224n_dir, serve, tmp_path):
    files = {p.name: p.read_bytes() for p in cs224n_dir.glob("*.csv")}
    url = serve(files)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / ".source").write_text(url.rstrip("/") + "\n")
    shutil.copy(cs224n_dir / "sts-dev.csv", cache / "ids-sst-train.csv")  # a stale wrong file
    fetch_source(url, cache)
    assert sha256(cache / "ids-sst-train.csv") == CS224N_SHA256["ids-sst-train.csv"]


# --- headers: a column named twice ----------------------------------------------------------


def test_a_cs224n_header_naming_a_column_twice_names_it(tmp_path):
    path = write_lines(tmp_path / "sts-dev.csv", [f"{PAIR_HEADER}\tsentence1", "0\ta\tx\ty\t1"])
    assert error_of(tmp_path, "sts", "dev") == (
        f"{path}: line 1 (header): column 'sentence1' appears twice (fields 3 and 5); each "
        "column needs a name of its own")


def nli(directory: Path, fmt: str = "csv", **data_keys) -> data.TaskSpec:
    """A declared pair task reading ``train.<fmt>`` from ``directory``."""
    return build_tasks({"nli": {"classes": ["no", "yes"], "data": {
        "format": fmt, "dir": str(directory), "train": f"train.{fmt}", "dev": f"dev.{fmt}",
        "text": ["premise", "hypothesis"], **data_keys}}})["nli"]


def nli_error(directory: Path, fmt: str = "csv", **data_keys) -> str:
    with pytest.raises(DataError) as err:
        read_task_split(directory, nli(directory, fmt, **data_keys), "train")
    return str(err.value)


@pytest.mark.parametrize(("fmt", "sep"), [("csv", ","), ("tsv", "\t")])
def test_a_csv_header_naming_the_text_column_twice_names_it(tmp_path, fmt, sep):
    path = tmp_path / f"train.{fmt}"
    path.write_text(sep.join(["id", "premise", "premise", "hypothesis", "label"]) + "\n"
                    + sep.join(["a", "p", "q", "h", "1"]) + "\n")
    assert nli_error(tmp_path, fmt) == (
        f"{path}: line 1 (header): column 'premise' appears twice (fields 2 and 3); each column "
        "needs a name of its own")


def test_a_csv_row_with_too_many_fields_names_its_line(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("id,premise,hypothesis,label\na,p,h,1\nb,p,h,1,extra\n")
    assert nli_error(tmp_path).startswith(
        f"{path}: line 3: 5 fields, expected 4 (id, premise, hypothesis, label): an extra column")


def test_csv_header_names_padded_with_spaces_are_read(tmp_path):
    (tmp_path / "train.csv").write_text("id , premise,hypothesis ,label \na,p,h,yes\n")
    table, _ = read_task_split(tmp_path, nli(tmp_path), "train")
    assert table[["id", "sentence1", "sentence2", "label"]].values.tolist() == [["a", "p", "h", 1]]


def test_a_padded_jsonl_key_is_named_with_its_spaces(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"id": "a", "premise": "p", "hypothesis": "h", "label ": 1}) + "\n")
    assert nli_error(tmp_path, "jsonl") == (
        f"{path}: task nli: column 'label' (tasks.nli.data.label) is not in the file; its "
        "columns: ['id', 'premise', 'hypothesis', 'label '] ('label ' has spaces around its name)")


# --- ids: one line of the submission each ---------------------------------------------------


def test_a_quoted_newline_in_a_cs224n_id_is_an_error(tmp_path):
    path = write_lines(tmp_path / "ids-sst-dev.csv",
                       [SST_HEADER, "0\ta\tfine\t2", '1\t"b\nc"\tgood\t3'])
    assert error_of(tmp_path, "sst", "dev") == (
        f"{path}: line 3, field 2 ('id'): id 'b\\nc' holds a line break (\\n); an id is written "
        "as one line of the submission file, so it must hold no line break, tab or control "
        "character")


def test_a_tab_in_a_csv_id_is_an_error(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text('id,premise,hypothesis,label\na,p,h,1\n"b\tc",p,h,1\n')
    message = nli_error(tmp_path)
    assert message.startswith(f"{path}: task nli: line 3, field 'id': id 'b\\tc' holds a tab;")


# --- typed cells: a text is a string, an id a string or an integer ---------------------------


def jsonl_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize(("value", "shown"), [
    (42, "a number (42)"), (1.5, "a number (1.5)"), (True, "a boolean (True)"),
    ({"text": "p"}, "an object ({'text': 'p'})"), (["p", "q"], "a list (['p', 'q'])"),
])
def test_a_jsonl_text_that_is_not_a_string_names_line_and_field(tmp_path, value, shown):
    path = jsonl_rows(tmp_path / "train.jsonl", [
        {"id": "a", "premise": "p", "hypothesis": "h", "label": 1},
        {"id": "b", "premise": "p", "hypothesis": value, "label": 0}])
    assert nli_error(tmp_path, "jsonl") == (
        f"{path}: task nli: line 2, field 'hypothesis': {shown}; expected text (a string)")


def test_a_parquet_text_column_of_another_type_names_the_row(tmp_path):
    path = tmp_path / "train.parquet"
    pd.DataFrame({"id": ["a", "b"], "premise": [3, 4], "hypothesis": ["h", "i"],
                  "label": [0, 1]}).to_parquet(path)
    assert nli_error(tmp_path, "parquet") == (
        f"{path}: task nli: row 0, field 'premise': a number (3); expected text (a string)")


def test_a_float_id_column_in_parquet_is_an_error(tmp_path):
    path = tmp_path / "train.parquet"
    pd.DataFrame({"id": [1.0, float("nan")], "premise": ["p", "q"], "hypothesis": ["h", "i"],
                  "label": [0, 1]}).to_parquet(path)
    assert nli_error(tmp_path, "parquet").startswith(
        f"{path}: task nli: row 0, field 'id': a number with a fraction part (1.0); expected "
        "an id, a string or an integer")


def test_integer_ids_and_numeric_labels_are_read(tmp_path):
    pd.DataFrame({"id": [7, 8], "premise": ["p", "q"], "hypothesis": ["h", "i"],
                  "label": [0.0, 1.0]}).to_parquet(tmp_path / "train.parquet")
    table, _ = read_task_split(tmp_path, nli(tmp_path, "parquet"), "train")
    assert table["id"].tolist() == ["7", "8"] and table["label"].tolist() == [0, 1]


@pytest.mark.parametrize("label", ["0_1", "\uff11", "1e999", "nan"])
def test_a_label_python_would_read_is_not_a_number_in_a_declared_task(tmp_path, label):
    path = tmp_path / "train.csv"
    path.write_text(f"id,premise,hypothesis,label\na,p,h,1\nb,p,h,{label}\n", encoding="utf-8")
    assert nli_error(tmp_path).startswith(
        f"{path}: task nli: line 3, field 'label': {label!r} is not a declared label")


@pytest.mark.parametrize(("line", "problem"), [
    ('{"id": "a", "premise": "p", "premise": "q", "hypothesis": "h", "label": 1}',
     "line 1: key 'premise' appears twice in the object"),
    ('["a", "p", "h", 1]', "not a readable jsonl file (tasks.nli.data.format): line 1: a list, "
     "expected a JSON object ({...}) per line"),
    ('{"id": "a", "premise": "p",', "not a readable jsonl file (tasks.nli.data.format): line 1, "
     "column 28: Expecting property name enclosed in double quotes"),
])
def test_a_jsonl_line_that_is_not_one_object_names_the_line(tmp_path, line, problem):
    path = tmp_path / "train.jsonl"
    path.write_text(line + "\n")
    assert nli_error(tmp_path, "jsonl").startswith(f"{path}: task nli: {problem}")


# --- special files: never opened, named before anything is read ------------------------------


def test_a_fifo_beside_the_cs224n_files_stops_prepare_before_reading(small_source, tmp_path):
    os.mkfifo(small_source / "notes.fifo")  # reading it would wait forever
    with pytest.raises(DataError) as err:
        prepare(str(small_source), {}, 0, tmp_path / "cache")
    assert str(err.value) == (
        f"{small_source / 'notes.fifo'}: a named pipe (FIFO), not a regular file, in a data "
        f"directory prepare reads ({small_source}); reading it waits forever and DVC hashes "
        "every file there (`dvc status`, `dvc repro` hang): remove it or move it out")


def test_a_socket_or_a_link_to_a_device_under_a_task_directory_is_named(small_source, tmp_path):
    task_dir = tmp_path / "tasks" / "nli"
    (task_dir / "extra").mkdir(parents=True)
    jsonl_rows(task_dir / "train.jsonl", [{"id": "a", "premise": "p", "hypothesis": "h",
                                           "label": 1}])
    jsonl_rows(task_dir / "dev.jsonl", [{"id": "b", "premise": "p", "hypothesis": "h",
                                         "label": 0}])
    tasks = {**data.default_tasks(), "nli": nli(task_dir, "jsonl")}
    (task_dir / "extra" / "null").symlink_to("/dev/null")
    with pytest.raises(DataError, match=r"extra/null: a character device, not a regular file"):
        prepare(str(small_source), {}, 0, tmp_path / "cache", tasks=tasks)
    (task_dir / "extra" / "null").unlink()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(task_dir / "extra" / "s"))
    try:
        with pytest.raises(DataError, match=r"extra/s: a socket, not a regular file"):
            prepare(str(small_source), {}, 0, tmp_path / "cache", tasks=tasks)
    finally:
        sock.close()


def test_a_fifo_in_place_of_a_split_file_is_named_as_one(small_source):
    (small_source / "sts-dev.csv").unlink()
    os.mkfifo(small_source / "sts-dev.csv")
    assert error_of(small_source, "sts", "dev") == (
        f"{small_source / 'sts-dev.csv'}: a named pipe (FIFO); expected the sts dev split file")
