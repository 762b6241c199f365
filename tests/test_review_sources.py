"""Review sources a user may get wrong: damaged gzip streams keep every line before the damage
and say so on stderr; files that are not what their name says, broken links and sources with no
usable review are errors naming the file; odd lines are counted rejections with their reason."""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import subprocess
import sys
import zlib
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import PARAMS_YAML

import pipeline.augment.reviews as reviews_module
from pipeline.augment.reviews import (
    ReadStats,
    ReviewsError,
    iter_reviews,
    mine_reviews,
    review_files,
)
from pipeline.config import ReviewsConfig
from pipeline.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
WORDS = "good bad film plot actor story great terrible boring fun love hate dull moving".split()


def review(stars, text: str = "a fine film", **extra) -> bytes:
    return json.dumps({"overall": stars, "reviewText": text, **extra}).encode()


def varied_reviews(n: int, seed: int = 0) -> list[bytes]:
    """``n`` reviews of 2-6 random words (SST's range in :func:`sst_table`), all stars."""
    rng = random.Random(seed)
    return [review(1 + i % 5, " ".join(rng.choices(WORDS, k=rng.randint(2, 6))), asin=f"A{i}")
            for i in range(n)]


def joined(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def read(paths: list[Path], chunk_size: int = 10_000) -> tuple[list, ReadStats]:
    stats = ReadStats()
    return list(iter_reviews(paths, chunk_size, stats, progress=False)), stats


def inflate_until_error(data: bytes) -> tuple[bytes, int | None]:
    """What ``gzip`` data decodes to before it ends or breaks, and the byte it broke at."""
    inflater, out = zlib.decompressobj(16 + zlib.MAX_WBITS), b""
    for i in range(len(data)):
        try:
            out += inflater.decompress(data[i : i + 1])
        except zlib.error:
            return out, i
    return out, None


def sst_table() -> pd.DataFrame:
    """Two SST sentences per label, of 2 and 6 words."""
    rows = [(lab, " ".join(["w"] * n)) for lab in range(5) for n in (2, 6)]
    return pd.DataFrame({
        "id": pd.Series([f"s{i}" for i in range(len(rows))], dtype="str"),
        "sentence": pd.Series([s for _, s in rows], dtype="str"),
        "label": pd.Series([lab for lab, _ in rows], dtype="Int8"),
    })


RANDOM = ReviewsConfig(per_label=4, length_bins=2, max_candidates_per_label=None,
                       selection="random", cache_dir=None)


# --- damaged gzip streams -----------------------------------------------------------------


@pytest.mark.parametrize("cut", ["header", "middle", "trailer"])
def test_truncated_gz_uses_every_line_before_the_cut(tmp_path, capsys, cut):
    lines = varied_reviews(3000)
    data = gzip.compress(joined(lines))
    size = {"header": 5, "middle": len(data) // 2, "trailer": len(data) - 3}[cut]
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[:size])
    decoded, broke_at = inflate_until_error(data[:size])
    assert broke_at is None  # zlib sees no error in a cut stream, only an end
    complete = decoded.count(b"\n")
    partial = len(decoded) - len(decoded.rsplit(b"\n", 1)[0]) - 1 if complete else len(decoded)

    # One chunk holds the whole file: no line may be lost with the chunk the cut falls in.
    got, stats = read([path], chunk_size=10_000)
    assert [r.line for r in got] == list(range(1, complete + 1))
    assert {"header": complete == 0, "middle": 0 < complete < 3000,
            "trailer": complete == 3000}[cut]
    f = stats.files[0]
    assert f.lines == f.reviews == complete
    assert f.error.startswith(f"read error at line {complete + 1}, byte {size} of the compressed")
    used = f"used the {complete} complete lines before it" if complete else "no line was read"
    assert "ends early" in f.error and used in f.error
    assert (f"dropped a partial line of {partial} bytes" in f.error) == (partial > 0)
    err = capsys.readouterr().err.splitlines()
    assert err == [f"warning: {path}: {f.error}"]


def test_corrupt_gz_uses_every_line_decoded_before_the_damage(tmp_path, capsys):
    lines = varied_reviews(3000)
    data = bytearray(gzip.compress(joined(lines)))
    start = len(data) // 2
    data[start : start + 8] = b"\0" * 8
    path = tmp_path / "bad.jsonl.gz"
    path.write_bytes(bytes(data))
    decoded, broke_at = inflate_until_error(bytes(data))
    intact = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(bytes(data[:start])).count(b"\n")
    assert broke_at is not None and 0 < intact

    got, stats = read([path])
    f = stats.files[0]
    assert f.lines == decoded.count(b"\n")
    # The lines before the damaged bytes are the file's own.
    assert [r.line for r in got[:intact]] == list(range(1, intact + 1))
    assert f.error.startswith(f"read error at line {f.lines + 1}, byte {broke_at} of the comp")
    assert "corrupt compressed data" in f.error
    assert capsys.readouterr().err.splitlines() == [f"warning: {path}: {f.error}"]


def test_gz_members_and_zero_padding_are_read_whole_and_trailing_junk_is_reported(tmp_path):
    first, second = varied_reviews(300), varied_reviews(200, seed=1)
    data = gzip.compress(joined(first)) + gzip.compress(joined(second)) + b"\0" * 700
    assert gzip.decompress(data) == joined(first + second)  # as gzip reads it
    path = tmp_path / "members.jsonl.gz"
    path.write_bytes(data)
    got, stats = read([path])
    assert len(got) == 500 and stats.files[0].error is None

    path.write_bytes(data + b"not gzip")
    got, stats = read([path])
    assert len(got) == 500
    assert f"byte {len(data)}" in stats.files[0].error
    assert "after the end of the gzip stream" in stats.files[0].error


@pytest.mark.parametrize("name", ["small.jsonl", "small.jsonl.gz"])
def test_lines_split_across_read_blocks_read_alike(tmp_path, monkeypatch, name):
    lines = [review(5, "caf\u00e9 ok"), b"", review(2, "meh film") + b"\r", b"{broken",
             review(4, "last line, no newline")]
    raw = b"\xef\xbb\xbf" + b"\n".join(lines)  # a BOM first, no newline last
    path = tmp_path / name
    path.write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)
    expected, expected_stats = read([path])
    monkeypatch.setattr(reviews_module, "READ_BLOCK", 3)
    monkeypatch.setattr(reviews_module, "GZIP_PIECE", 2)
    got, stats = read([path])
    assert got == expected and stats == expected_stats
    assert [(r.line, r.text) for r in got] == [(1, "caf\u00e9 ok"), (3, "meh film"),
                                               (5, "last line, no newline")]
    assert (stats.files[0].blank, stats.files[0].malformed) == (1, 1)


def test_overlong_line_is_rejected_and_the_next_ones_read(tmp_path, monkeypatch):
    monkeypatch.setattr(reviews_module, "MAX_LINE_BYTES", 100)
    monkeypatch.setattr(reviews_module, "READ_BLOCK", 16)
    path = tmp_path / "long.jsonl"
    path.write_bytes(joined([review(1, "short"), review(2, "word " * 40), review(3, "after")]))
    got, stats = read([path])
    assert [(r.line, r.text) for r in got] == [(1, "short"), (3, "after")]
    assert stats.malformed == [{"file": "long.jsonl", "line": 2,
                                "error": "line too long: over 100 bytes"}]


# --- lines that are not reviews -----------------------------------------------------------


@pytest.mark.parametrize("line, reason, detail", [
    (b"[1, 2]", "not a JSON object", "got an array"),
    (b'"just a string"', "not a JSON object", "got a string"),
    (b"{'overall': 5.0, 'reviewText': 'loose'}", "not JSON", "a Python literal"),
    (b"[" * 100_000, "not JSON", "recursion"),
    (b'{"reviewText": "no stars"}', "field 'overall'", "missing"),
    (b'{"rating": 5, "text": "2023 format"}', "field 'overall'", "Amazon 2023 format"),
    (review(0), "field 'overall'", "got 0"),
    (review(6), "field 'overall'", "got 6"),
    (review(4.5), "field 'overall'", "got 4.5"),
    (review("5"), "field 'overall'", "got '5'"),
    (review(True), "field 'overall'", "got True"),
    (review(None), "field 'overall'", "got None"),
    (b'{"overall": NaN, "reviewText": "x"}', "field 'overall'", "got nan"),
    (review(3, ["a", "list"]), "field 'reviewText'", "expected a string"),
    (b'{"overall": 3, "reviewText": "half an emoji \\ud83d"}', "field 'reviewText'", "surrogate"),
    (b'{"overall": 3, "reviewText": "ok", "asin": "\\udc00"}', "field 'asin'", "surrogate"),
    (b'{"overall": 3, "reviewText": "caf\xe9"}', "invalid UTF-8", "0xe9"),
])
def test_rejected_lines_are_counted_with_their_reason(tmp_path, line, reason, detail):
    path = tmp_path / "odd.jsonl"
    path.write_bytes(joined([review(5, "first"), line, review(1, "last")]))
    got, stats = read([path])
    assert [r.line for r in got] == [1, 3]
    assert stats.files[0].malformed_by_reason == {reason: 1}
    (rejected,) = stats.malformed
    assert rejected["line"] == 2 and rejected["error"].startswith(f"{reason}: ")
    assert detail.lower() in rejected["error"].lower()


def test_reviews_without_text_are_counted_apart(tmp_path):
    path = tmp_path / "notext.jsonl"
    path.write_bytes(joined([review(5), b'{"overall": 2}', review(3, "  <br />  "),
                             b'{"overall": 1, "reviewText": null}']))
    got, stats = read([path])
    assert len(got) == 1 and (stats.files[0].no_text, stats.files[0].malformed) == (3, 0)


@pytest.mark.parametrize("name, where", [("u.jsonl", ""), ("u.jsonl.gz",
                                                          " of the uncompressed data")])
def test_invalid_utf8_names_its_byte_offset_and_line(tmp_path, name, where):
    first = review(5, "fine")
    bad = b'{"overall": 3, "reviewText": "na\xefve"}'
    data = joined([first, review(4, "also fine"), bad])
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    got, stats = read([path])
    assert len(got) == 2
    offset = data.index(b"\xef")  # in the file's data, as `tail -c +OFFSET+1` counts
    column = bad.index(b"\xef") + 1
    assert stats.malformed == [{
        "file": name, "line": 3,
        "error": f"invalid UTF-8: byte 0xef at byte offset {offset}{where}, column {column} "
                 "(invalid continuation byte)",
    }]


# --- sources that cannot be used as they are ----------------------------------------------


def plain_named_gz(d: Path) -> Path:
    (d / "r.jsonl.gz").write_bytes(joined([review(5)]))
    return d


def gzip_named_plain(d: Path) -> Path:
    (d / "r.jsonl").write_bytes(gzip.compress(joined([review(5)])))
    return d / "r.jsonl"


def bzip2_data(d: Path) -> Path:
    import bz2

    (d / "r.jsonl").write_bytes(bz2.compress(joined([review(5)])))
    return d / "r.jsonl"


def xz_named(d: Path) -> Path:
    (d / "a.jsonl").write_bytes(joined([review(5)]))
    (d / "b.jsonl.xz").write_bytes(b"\xfd7zXZ\x00")
    return d


def json_array(d: Path) -> Path:
    (d / "r.json").write_text(json.dumps([{"overall": 5, "reviewText": "a"}], indent=1))
    return d / "r.json"


def utf16(d: Path) -> Path:
    (d / "r.jsonl").write_bytes(joined([review(5)]).decode().encode("utf-16"))
    return d / "r.jsonl"


def link_loop(d: Path) -> Path:
    os.symlink(d / "loop.jsonl", d / "loop.jsonl")
    return d / "loop.jsonl"


def dangling_link_in_dir(d: Path) -> Path:
    (d / "a.jsonl").write_bytes(joined([review(5)]))
    os.symlink(d / "moved-away.jsonl", d / "b.jsonl")
    return d


def directory_named_jsonl(d: Path) -> Path:
    (d / "a.jsonl").write_bytes(joined([review(5)]))
    (d / "b.jsonl").mkdir()
    return d


def only_subdirectories(d: Path) -> Path:
    (d / "movies").mkdir()
    (d / "movies" / "a.jsonl").write_bytes(joined([review(5)]))
    (d / "README.md").write_text("reviews are in movies/")
    return d


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "absent", r"absent: no such review file or directory"),
    (only_subdirectories, r"no review files .* it holds README\.md, movies/ "
                          r"\(subdirectories are not searched\)"),
    (plain_named_gz, r"r\.jsonl\.gz: not gzip data despite the \.gz suffix \(plain JSON lines\?\)"),
    (gzip_named_plain, r"r\.jsonl: gzip data without a \.gz suffix; rename it to r\.jsonl\.gz"),
    (bzip2_data, r"r\.jsonl: bzip2 data, not JSON lines"),
    (xz_named, r"b\.jsonl\.xz: compressed with xz, which is not read"),
    (json_array, r"r\.json: a JSON array"),
    (utf16, r"r\.jsonl: UTF-16 text"),
    (link_loop, r"loop\.jsonl: not a review file or directory: a symbolic link to .* that "
                r"cannot be followed"),
    (dangling_link_in_dir, r"b\.jsonl: named like a review file but a symbolic link to "
                           r".*moved-away\.jsonl'"),
    (directory_named_jsonl, r"b\.jsonl: named like a review file but a directory"),
])
def test_sources_that_cannot_be_read_are_errors(tmp_path, make, message):
    with pytest.raises(ReviewsError, match=message) as exc:
        review_files(make(tmp_path))
    assert str(tmp_path) in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_an_error(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(joined([review(5)]))
    path.chmod(0)
    with pytest.raises(ReviewsError, match=r"r\.jsonl: cannot read the review file \(Permission"):
        review_files(tmp_path)


def test_review_suffixes_match_in_any_case(tmp_path):
    (tmp_path / "Movies.JSONL.GZ").write_bytes(gzip.compress(joined(varied_reviews(3))))
    got, stats = read(review_files(tmp_path))
    assert len(got) == 3 and got[0].file == "Movies" and stats.files[0].error is None


# --- sources with no usable review --------------------------------------------------------


def cut_at_header(d: Path) -> None:
    (d / "a.jsonl.gz").write_bytes(gzip.compress(joined(varied_reviews(50)))[:12])


def empty_files(d: Path) -> None:
    (d / "a.jsonl").write_bytes(b"")
    (d / "b.jsonl.gz").write_bytes(gzip.compress(b""))


def rejected_rows(d: Path) -> None:
    (d / "a.jsonl").write_bytes(joined([b"{'asin': 'B1', 'title': 'metadata'}"] * 3))
    (d / "b.jsonl").write_bytes(joined([review(0), review(9), b"", b'{"overall": 4}']))


@pytest.mark.parametrize("make, summary", [
    (cut_at_header, r"/a\.jsonl\.gz: no usable review: read error at line 1, byte 12 of the "
                    r"compressed file: the compressed data ends early \(a truncated file\?\); "
                    r"no line was read$"),
    (empty_files, r": no usable review in 2 files: a\.jsonl: empty file; "
                  r"b\.jsonl\.gz: empty file$"),
    (rejected_rows, r": no usable review in 2 files: a\.jsonl: 0 reviews in 3 lines "
                    r"\(rejected: 3 not JSON\), e\.g\. line 1: not JSON: .*Python literal.*; "
                    r"b\.jsonl: 0 reviews in 4 "
                    r"lines \(rejected: 2 field 'overall', 1 without text, 1 blank\), e\.g\. "
                    r"line 1: field 'overall': expected stars 1-5, got 0$"),
])
def test_source_without_usable_review_is_an_error(tmp_path, make, summary):
    make(tmp_path)
    source = re.escape(str(tmp_path))
    with pytest.raises(ReviewsError, match=rf"^{source}{summary}"):
        mine_reviews(sst_table(), review_files(tmp_path), RANDOM, None, None, progress=False)


def test_reviews_all_outside_sst_length_range_are_an_error(tmp_path):
    path = tmp_path / "long.jsonl"
    path.write_bytes(joined([review(s, "many words " * 10) for s in range(1, 6)]))
    with pytest.raises(ReviewsError, match=r"long\.jsonl: none of its 5 reviews is 2-6 words"):
        mine_reviews(sst_table(), [path], RANDOM, None, None, progress=False)


def test_a_file_without_review_beside_good_ones_is_a_warning(tmp_path, capsys):
    (tmp_path / "good.jsonl").write_bytes(joined(varied_reviews(100)))
    (tmp_path / "meta.json").write_bytes(joined([b'{"asin": "B1", "title": "x"}'] * 4))
    mined = mine_reviews(sst_table(), review_files(tmp_path), RANDOM, None, None,
                         progress=False)
    assert len(mined.table) > 0
    assert mined.report["malformed_by_reason"] == {"field 'overall'": 4}
    assert capsys.readouterr().err.splitlines() == [
        f"warning: {tmp_path / 'meta.json'}: no usable review: 0 reviews in 4 lines (rejected: "
        "4 field 'overall'), e.g. line 1: field 'overall': missing, expected stars 1-5"
    ]


# --- the stage ----------------------------------------------------------------------------


def run_filter_reviews(tmp: Path, source: Path) -> subprocess.CompletedProcess:
    """stages/filter_reviews.py on ``source`` and a tiny SST train table, random selection."""
    raw = yaml.safe_load(PARAMS_YAML.read_text())
    raw["augment"]["reviews"].update(asdict(RANDOM) | {"source": str(source)})
    (tmp / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (tmp / "prep").mkdir()
    sst_table().to_parquet(tmp / "prep" / "sst_train.parquet", index=False)
    return subprocess.run(
        [sys.executable, str(ROOT / "stages" / "filter_reviews.py"), "--source", str(source),
         "--prepared", "prep", "--out", "out", "--params", "params.yaml", "--no-progress"],
        cwd=tmp, capture_output=True, text=True, timeout=300)


def test_stage_stops_on_a_source_without_usable_review(tmp_path):
    source = tmp_path / "amazon"
    source.mkdir()
    rejected_rows(source)
    result = run_filter_reviews(tmp_path, source)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"filter_reviews: error: {source}: no usable review in 2 files: ")
    assert not (tmp_path / "out" / "amazon.parquet").exists()


def test_stage_uses_a_cut_file_and_says_so(tmp_path):
    source = tmp_path / "amazon"
    source.mkdir()
    (source / "good.jsonl").write_bytes(joined(varied_reviews(200)))
    data = gzip.compress(joined(varied_reviews(2000, seed=1)))
    (source / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    complete = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[: len(data) // 2]).count(
        b"\n")
    result = run_filter_reviews(tmp_path, source)
    assert result.returncode == 0, result.stderr
    warnings = [w for w in result.stderr.splitlines() if w.startswith("warning:")]
    assert len(warnings) == 1 and f"{source / 'cut.jsonl.gz'}: read error at line" in warnings[0]
    assert "1 of 2 files cut short by a read error" in result.stdout
    report = json.loads((tmp_path / "out" / "reviews_report.json").read_text())
    assert report["reviews"] == 200 + complete
    assert list(report["read_errors"]) == ["cut.jsonl.gz"]


def test_a_fifo_anywhere_in_a_review_directory_is_one_line_before_anything_is_read(tmp_path):
    # DVC hashes every file of the source directory: a FIFO there would hang it and us.
    source = tmp_path / "reviews"
    (source / "notes").mkdir(parents=True)
    (source / "a.jsonl").write_text('{"text": "fine", "rating": 5}\n')
    os.mkfifo(source / "notes" / "pipe")
    with pytest.raises(UserError, match=r"notes/pipe: a named pipe \(FIFO\), not a regular file, "
                                        r"in the review source"):
        review_files(source)
