"""Mining Amazon reviews as extra SST training data, filtered by similarity to SST's label
centroids in a sentence-embedding space (all-MiniLM-L6-v2).

1. **Stream** review JSON lines — Ni et al. 2018 or McAuley et al. 2014 format (``overall``
   stars 1–5, ``reviewText``), plain or gzip — line by line. Stars map to SST labels
   (1 → 0 … 5 → 4). Texts are cleaned (HTML entities and line-break tags, whitespace). Lines
   that are not a review object are counted by reason and listed with their line numbers,
   never fatal. A file that does not open as what its name says (not gzip, another format,
   a broken link) is an error; one damaged further in (a truncated or corrupt gzip stream)
   gives every complete line before the damage, with a warning on stderr. A source that gives
   no review at all is an error, except a directory that holds no review file and nothing but
   notes (README files, hidden files): that is no review source, and nothing is mined
   (:func:`no_reviews`), so the DAG runs where no reviews are at hand.
2. **Match SST's length and label distribution.** SST train lengths (in words) are cut into
   ``length_bins`` quantile bins; reviews outside SST's length range are dropped. Label l is
   given a quota Q_l (``per_label`` for SST's most frequent label, the others in proportion to
   their SST counts, or ``per_label`` each) and the (label, bin) cell a quota
   q_lb = Q_l · n_lb / n_l (largest-remainder rounding), n_lb the SST count of the cell. Each
   cell keeps a uniform reservoir sample (Vitter's algorithm R) of its reviews, of
   ``max_candidates_per_label / per_label`` times its quota: memory is bounded by the
   reservoirs, not the file.
3. **Select by centroid similarity.** With unit-norm embeddings e, the centroid of label l is
   c_l = mean(e_i : y_i = l) / ‖mean(e_i : y_i = l)‖ over SST train; a candidate r of label l
   scores cos(e_r, c_l) = e_r · c_l, and each cell keeps its q_lb best-scoring candidates, so
   the kept set follows SST's length distribution wherever the stream has enough reviews.
   Embeddings are cached by text hash, so a re-run with another ``per_label`` embeds nothing new.
   ``selection: random`` (the paper's "random Amazon reviews", Table 3) fills the same cell
   quotas with a seeded uniform draw from each cell's candidates instead: the same label counts
   and length distribution, no encoder loaded, no similarity (``score`` null), no map.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import random
import re
import stat
import sys
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pipeline.config import ReviewsConfig
from pipeline.data import augmented_table, capped_index, refuse_special_files
from pipeline.device import resolve_device
from pipeline.errors import UserError, one_line
from pipeline.io import atomic_path

N_LABELS = 5
REVIEW_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")  # matched case-insensitively
# Malformed lines listed one by one in the report (all are counted).
MAX_LISTED_MALFORMED = 1000
MAX_FILES_IN_MESSAGE = 10  # files summed up in the "no usable review" error
READ_BLOCK = 1 << 20  # bytes read from a file at a time
GZIP_PIECE = 1 << 14  # compressed bytes inflated at a time: bounds the memory of one step
GZIP_MAGIC = b"\x1f\x8b"
GZIP_WBITS = 16 + zlib.MAX_WBITS  # zlib: a gzip header and trailer around deflate data
MAX_LINE_BYTES = 1 << 24  # a longer line is rejected without being held whole
SNIFF_BYTES = 4096  # read from each file's start to check its format
# What a review file holds by mistake, by its first bytes.
FOREIGN_FORMATS = {
    b"BZh": "bzip2 data", b"\xfd7zXZ\x00": "xz data", b"\x28\xb5\x2f\xfd": "zstd data",
    b"PK\x03\x04": "a zip archive", b"7z\xbc\xaf\x27\x1c": "a 7-zip archive",
    b"PAR1": "a Parquet file", b"SQLite format 3\x00": "an SQLite database",
    b"\xff\xfe": "UTF-16 text", b"\xfe\xff": "UTF-16 text",
}

Encoder = Callable[[list[str]], np.ndarray]

_BREAK_TAG = re.compile(r"<\s*(?:br|p|/p)\s*/?\s*>", re.IGNORECASE)
_WORD = re.compile(r"\w+")
_CLITIC = re.compile(r"n't\b|'(?:s|re|ve|ll|d|m|t)\b", re.IGNORECASE)
_UNSUPPORTED_COMPRESSION = re.compile(r"\.jsonl?\.(?:bz2|xz|lzma|zst|lz4|zip|7z|z)$")
_SURROGATE = re.compile("[\ud800-\udfff]")
_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}


class ReviewsError(UserError):
    """The review source or the configuration cannot be used; the message names it."""


# --- reading ----------------------------------------------------------------------------


def clean_text(raw: str) -> str:
    """Decode HTML entities (``&#34;`` → ``"``), turn ``<br />`` tags and runs of whitespace
    into single spaces, strip the ends."""
    # Most reviews have neither entities nor tags: the `in` checks skip the costly calls.
    if "&" in raw:
        raw = html.unescape(raw)
    if "<" in raw:
        raw = _BREAK_TAG.sub(" ", raw)
    return " ".join(raw.split())


def word_count(text: str) -> int:
    """Words as runs of letters/digits, with punctuation and clitics (``n't``, ``'s``) not
    counted, so that SST's tokenisation ("does n't , Jackson 's") and raw review text
    ("doesn't, Jackson's") measure alike."""
    return len(_WORD.findall(_CLITIC.sub("", text)))


def review_files(source: str | Path) -> list[Path]:
    """The review file ``source``, or the review files in directory ``source``, sorted; each is
    checked to open as what its name says (:func:`check_review_file`). No files for a directory
    of notes alone (:func:`is_note`) or an empty one: no review source."""
    path = Path(source)
    problem = _not_a_file(path)
    if problem is None:
        files = [path]
    elif path.is_dir():
        # DVC hashes every file of the directory (a dep): a FIFO anywhere in it hangs DVC too.
        refuse_special_files(path, "the review source (augment.reviews.source)")
        files = _directory_files(path)
    elif problem == "missing":
        raise ReviewsError(f"{path}: no such review file or directory (augment.reviews.source)")
    else:
        raise ReviewsError(f"{path}: not a review file or directory: {problem}")
    for file in files:
        check_review_file(file)
    return files


def _not_a_file(path: Path) -> str | None:
    """None for a regular file (or a link to one), else why not: ``missing`` for a path that
    does not exist, or a phrase (a broken or looping link, a directory, a pipe...)."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        if path.is_symlink():
            return (f"a symbolic link to {os.readlink(path)!r} that cannot be followed "
                    f"({exc.strerror})")
        if isinstance(exc, FileNotFoundError | NotADirectoryError):
            return "missing"
        return f"cannot access it ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    return "a directory" if stat.S_ISDIR(mode) else "not a regular file"


def _directory_files(path: Path) -> list[Path]:
    """The review files of directory ``path``; entries named like review files that cannot be
    read as one (broken links, link loops, directories, other compressions) are errors, not
    skipped."""
    try:
        entries = sorted(path.iterdir())
    except OSError as exc:
        raise ReviewsError(f"{path}: cannot list the directory ({exc.strerror or exc})") from None
    files, others = [], []
    for entry in entries:
        name = entry.name.lower()
        if _UNSUPPORTED_COMPRESSION.search(name):
            raise ReviewsError(
                f"{entry}: compressed with {name.rsplit('.', 1)[1]}, which is not read; "
                f"review files are {', '.join(REVIEW_SUFFIXES)} (decompress it or gzip it)"
            )
        if not name.endswith(REVIEW_SUFFIXES):
            others.append(entry.name + ("/" if entry.is_dir() else ""))
        elif (problem := _not_a_file(entry)) is not None:
            raise ReviewsError(f"{entry}: named like a review file but {problem}")
        else:
            files.append(entry)
    if not files:
        if all(is_note(name) for name in others):
            return []
        raise ReviewsError(_no_review_files(path, others))
    keys = [file_key(p) for p in files]
    clashes = sorted({k for k in keys if keys.count(k) > 1})
    if clashes:
        # Review ids are <file key>-<line>: two files may not share a key.
        raise ReviewsError(f"{path}: several review files named {clashes} (.jsonl and .jsonl.gz?)")
    return files


def is_note(name: str) -> bool:
    """Whether directory entry ``name`` (a subdirectory's ends in /) is a note a review
    directory may hold beside or instead of reviews: a README file, or a hidden entry
    (``.gitkeep``)."""
    return name.startswith(".") or (name.lower().startswith("readme") and not name.endswith("/"))


def _no_review_files(path: Path, others: list[str]) -> str:
    """The error for directory ``path`` holding only ``others`` (subdirectories end in /), not
    all of them notes."""
    listed = ", ".join(others[:5]) + (" ..." if len(others) > 5 else "")
    subdirs = " (subdirectories are not searched)" if any(o.endswith("/") for o in others) else ""
    return (f"{path}: no review files ({', '.join(REVIEW_SUFFIXES)}) in directory; it holds "
            f"{listed}{subdirs}")


def check_review_file(path: Path) -> None:
    """Raise :class:`ReviewsError` when ``path`` cannot be opened, or its first bytes show it
    is not JSON lines of the kind its name says (plain or gzip): renaming or converting the
    file fixes these, reading around them would only lose it. Damage further in is left to
    :func:`iter_reviews`, which keeps every line before it."""
    try:
        with path.open("rb") as fh:
            head = fh.read(SNIFF_BYTES)
    except OSError as exc:
        raise ReviewsError(f"{path}: cannot read the review file ({exc.strerror or exc})") from None
    gz = is_gzip_name(path)
    if gz and head and not head.startswith(GZIP_MAGIC):
        what = _foreign_format(head) or (
            "plain JSON lines?" if head.lstrip()[:1] == b"{" else f"it starts with {head[:8]!r}"
        )
        raise ReviewsError(f"{path}: not gzip data despite the .gz suffix ({what}); rename or "
                           "compress it")
    if not gz and head.startswith(GZIP_MAGIC):
        raise ReviewsError(f"{path}: gzip data without a .gz suffix; rename it to {path.name}.gz")
    if gz:
        try:
            head = zlib.decompressobj(GZIP_WBITS).decompress(head, SNIFF_BYTES)
        except zlib.error:
            return  # damage right at the start: iter_reviews reports it with its offset
    what = _foreign_format(head)
    if what is not None:
        raise ReviewsError(f"{path}: {what}, not JSON lines (one review object per line)")


def _foreign_format(head: bytes) -> str | None:
    """What a file starting with ``head`` is when it is plainly not JSON lines, else None."""
    for magic, what in FOREIGN_FORMATS.items():
        if head.startswith(magic):
            return what
    if head.lstrip()[:1] == b"[":
        return "a JSON array (convert it to one object per line, e.g. `jq -c '.[]'`)"
    if b"\0" in head[:2]:
        return "not UTF-8 text: it starts with NUL bytes (UTF-16? zeroed?)"
    return None


def is_gzip_name(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


def file_key(path: Path) -> str:
    """``movies.jsonl.gz`` -> ``movies``: the file part of review ids."""
    name = path.name
    for suffix in sorted(REVIEW_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


@dataclass(frozen=True, slots=True)
class Review:
    text: str  # cleaned
    label: int  # stars - 1
    asin: str
    reviewer: str
    file: str  # file_key of its file
    line: int  # 1-based line number in its file
    words: int


def decode_line(raw: bytes, offset: int | None = None, gz: bool = False
                ) -> tuple[str | None, str | None]:
    """UTF-8 ``raw`` as ``(text, None)``, a BOM at the start of the file dropped; else
    ``(None, why)`` naming the bad byte, its byte offset in the (uncompressed) file when
    ``offset`` (the line's) is given, and its column."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = "" if offset is None else (
            f"byte offset {offset + exc.start}{' of the uncompressed data' if gz else ''}, ")
        return None, (f"invalid UTF-8: byte 0x{raw[exc.start]:02x} at {where}"
                      f"column {exc.start + 1} ({exc.reason})")
    return (text[1:] if offset == 0 and text.startswith("\ufeff") else text), None


def parse_review(raw: bytes | str, file: str, line: int, offset: int | None = None
                 ) -> tuple[Review | None, str | None]:
    """Parse one JSON line: ``(review, None)``; ``(None, None)`` for a review with no text;
    ``(None, why)`` for a line rejected, ``why`` starting with its reason (``not JSON``,
    ``field 'overall'``...) before ``: `` and the details. ``offset``: the byte offset of a
    ``bytes`` line, named when it is not UTF-8."""
    if isinstance(raw, bytes):
        raw, why = decode_line(raw, offset)
        if raw is None:
            return None, why
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
        hint = " (single quotes: a Python literal, not JSON)" if raw.lstrip()[:2] == "{'" else ""
        return None, f"not JSON: {exc}{hint}"
    if not isinstance(obj, dict):
        return None, f"not a JSON object: got {_JSON_TYPES.get(type(obj), type(obj).__name__)}"
    stars = obj.get("overall")
    if "overall" not in obj:
        hint = ("; 'rating'/'text' (the Amazon 2023 format) are not read" if "rating" in obj
                else "")
        return None, f"field 'overall': missing, expected stars 1-5{hint}"
    if isinstance(stars, bool) or not isinstance(stars, (int, float)) or stars not in range(1, 6):
        return None, f"field 'overall': expected stars 1-5, got {stars!r}"
    text = obj.get("reviewText")
    if text is not None and not isinstance(text, str):
        return None, f"field 'reviewText': expected a string, got {type(text).__name__}"
    text = clean_text(text or "")
    if not text:
        return None, None
    asin, reviewer = str(obj.get("asin", "")), str(obj.get("reviewerID", ""))
    for name, value in (("reviewText", text), ("asin", asin), ("reviewerID", reviewer)):
        if _SURROGATE.search(value):
            # JSON's \ud83d escapes decode to lone surrogates, which no file format can store.
            return None, f"field {name!r}: a lone surrogate escape (\\ud800-\\udfff), not text"
    return (
        Review(text=text, label=int(stars) - 1, asin=asin, reviewer=reviewer, file=file,
               line=line, words=word_count(text)),
        None,
    )


@dataclass
class FileStats:
    file: str
    lines: int = 0
    blank: int = 0
    reviews: int = 0
    no_text: int = 0
    malformed: int = 0
    malformed_by_reason: dict[str, int] = field(default_factory=dict)
    error: str | None = None  # a read error (e.g. truncated gzip) that ended its reading


@dataclass
class ReadStats:
    files: list[FileStats] = field(default_factory=list)
    malformed: list[dict[str, Any]] = field(default_factory=list)  # the first MAX_LISTED

    def add_malformed(self, stats: FileStats, line: int, why: str) -> None:
        stats.malformed += 1
        reason = why.split(": ", 1)[0]
        stats.malformed_by_reason[reason] = stats.malformed_by_reason.get(reason, 0) + 1
        if len(self.malformed) < MAX_LISTED_MALFORMED:
            self.malformed.append({"file": stats.file, "line": line, "error": why})

    def total(self, name: str) -> int:
        return sum(getattr(f, name) for f in self.files)

    def by_reason(self) -> dict[str, int]:
        """Rejected lines per reason, over all files, most frequent first."""
        counts: dict[str, int] = {}
        for f in self.files:
            for reason, n in f.malformed_by_reason.items():
                counts[reason] = counts.get(reason, 0) + n
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


class _ReadError(Exception):
    """A file stopped being readable: what happened, at which byte of the file as stored
    (None: unknown), and how many bytes of a partial last line were dropped."""

    def __init__(self, what: str, offset: int | None):
        super().__init__(what)
        self.what, self.offset, self.partial = what, offset, 0


def _stored_blocks(fh) -> Iterator[bytes]:
    """The bytes of open file ``fh``, READ_BLOCK at a time."""
    offset = 0
    while True:
        try:
            block = fh.read(READ_BLOCK)
        except OSError as exc:
            raise _ReadError(exc.strerror or str(exc), offset) from None
        if not block:
            return
        offset += len(block)
        yield block


def _gunzip(blocks: Iterator[bytes]) -> Iterator[bytes]:
    """The data of the gzip members in ``blocks``, yielded as it is inflated, so that damage
    raises :class:`_ReadError` (at its compressed byte offset) only after every byte decoded
    before it. Zero padding between members is allowed, as by ``gzip``."""
    inflater = None  # the current member's; None between members
    pos = 0  # compressed bytes consumed
    for block in blocks:
        while block:
            if inflater is None:
                stripped = block.lstrip(b"\0")
                pos, block = pos + len(block) - len(stripped), stripped
                if not block:
                    break
                if pos and block[:2] != GZIP_MAGIC[: len(block)]:
                    raise _ReadError("data after the end of the gzip stream, not gzip", pos)
                inflater = zlib.decompressobj(GZIP_WBITS)
            piece, block = block[:GZIP_PIECE], block[GZIP_PIECE:]
            before = inflater.copy()
            try:
                out = inflater.decompress(piece)
            except zlib.error as exc:
                yield from _inflate_until_error(before, piece, pos, exc)
            if out:
                yield out
            if inflater.eof:
                rest = inflater.unused_data
                pos, block, inflater = pos + len(piece) - len(rest), rest + block, None
            else:
                pos += len(piece)
    if inflater is not None:
        if tail := inflater.flush():
            yield tail
        raise _ReadError("the compressed data ends early (a truncated file?)", pos)


def _inflate_until_error(inflater, piece: bytes, pos: int, exc: zlib.error) -> Iterator[bytes]:
    """Inflate ``piece`` a byte at a time from the state before it, yielding all that decodes
    before the damage, then raise :class:`_ReadError` at the damaged byte."""
    reason = str(exc).split(": ", 1)[-1]  # "Error -3 while decompressing data: <reason>"
    for i in range(len(piece)):
        try:
            out = inflater.decompress(piece[i : i + 1])
        except zlib.error:
            raise _ReadError(f"corrupt compressed data ({reason})", pos + i) from None
        if out:
            yield out
    raise _ReadError(f"corrupt compressed data ({reason})", pos)


def _split_lines(blocks: Iterator[bytes]) -> Iterator[tuple[bytes | None, int]]:
    """``(line, byte offset of its start)`` for each line of ``blocks``, without its newline; a
    final line without one counts. A line over MAX_LINE_BYTES comes as ``None``, never held
    whole. A :class:`_ReadError` from ``blocks`` is raised after the complete lines before it,
    with the size of the partial line it cut."""
    offset = size = 0  # the current line's start and its bytes so far
    head: list[bytes] = []  # its bytes so far, while it is not too long
    try:
        for block in blocks:
            *complete, rest = block.split(b"\n")
            for part in complete:
                size += len(part)
                yield (b"".join((*head, part)) if size <= MAX_LINE_BYTES else None), offset
                offset, size, head = offset + size + 1, 0, []
            size += len(rest)
            head = [*head, rest] if size <= MAX_LINE_BYTES else []
        if size:
            yield (b"".join(head) if size <= MAX_LINE_BYTES else None), offset
    except _ReadError as exc:
        exc.partial = size
        raise


def _file_lines(path: Path) -> Iterator[tuple[bytes | None, int]]:
    """:func:`_split_lines` of the data of review file ``path``, gunzipped for ``.gz``."""
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise _ReadError(f"cannot open it ({exc.strerror or exc})", None) from None
    with fh:
        blocks = _stored_blocks(fh)
        yield from _split_lines(_gunzip(blocks) if is_gzip_name(path) else blocks)


def _warn(message: str) -> None:
    """One line on stderr, between progress bars."""
    tqdm.write(f"warning: {message}", file=sys.stderr)


def iter_reviews(
    paths: Sequence[Path], chunk_size: int, stats: ReadStats, progress: bool = True
) -> Iterator[Review]:
    """Stream the reviews of ``paths`` line by line (the progress bar moves every
    ``chunk_size`` lines); blank, text-less and malformed lines are counted in ``stats``
    (malformed ones listed with line numbers). A read error (a truncated or corrupt gzip
    stream, an I/O error) ends the file after every complete line before it; it is recorded
    and shown on stderr at once."""
    for path in paths:
        fstats = FileStats(file=path.name)
        stats.files.append(fstats)
        bar = tqdm(desc=path.name, unit=" lines", unit_scale=True, disable=not progress)
        try:
            yield from _file_reviews(path, fstats, stats, chunk_size, bar)
        finally:
            bar.close()
        if fstats.error is not None:
            _warn(f"{path}: {fstats.error}")


def _file_reviews(path: Path, fstats: FileStats, stats: ReadStats, chunk_size: int, bar
                  ) -> Iterator[Review]:
    """The reviews of one file, counting its lines in ``fstats``; a read error is recorded."""
    key, gz = file_key(path), is_gzip_name(path)
    try:
        for raw, offset in _file_lines(path):
            fstats.lines += 1
            if fstats.lines % chunk_size == 0:
                bar.update(chunk_size)
            if raw is None:
                stats.add_malformed(fstats, fstats.lines,
                                    f"line too long: over {MAX_LINE_BYTES} bytes")
                continue
            if not raw.strip():
                fstats.blank += 1
                continue
            text, why = decode_line(raw, offset, gz)
            review = None
            if text is not None:
                review, why = parse_review(text, key, fstats.lines)
            if review is not None:
                fstats.reviews += 1
                yield review
            elif why is None:
                fstats.no_text += 1
            else:
                stats.add_malformed(fstats, fstats.lines, why)
    except _ReadError as exc:
        fstats.error = _read_error_message(exc, fstats.lines, gz)
    bar.update(fstats.lines % chunk_size)


def _read_error_message(exc: _ReadError, lines: int, gz: bool) -> str:
    """One phrase: where reading stopped, why, and what was used."""
    where = "" if exc.offset is None else (
        f", byte {exc.offset}{' of the compressed file' if gz else ''}")
    used = f"used the {lines} complete lines before it" if lines else "no line was read"
    dropped = f"; dropped a partial line of {exc.partial} bytes" if exc.partial else ""
    return f"read error at line {lines + 1}{where}: {exc.what}; {used}{dropped}"


def file_summary(f: FileStats, stats: ReadStats) -> str:
    """What a file gave, for messages: ``empty``, or its lines and why they were not reviews."""
    if f.lines == 0:
        return f.error or "empty file"
    parts = [f"{n} {reason}" for reason, n in
             sorted(f.malformed_by_reason.items(), key=lambda kv: -kv[1])]
    parts += [f"{n} {what}" for what, n in (("without text", f.no_text), ("blank", f.blank)) if n]
    summary = f"{f.reviews} reviews in {f.lines} lines"
    if parts:
        summary += f" (rejected: {', '.join(parts)})"
    first = next((m for m in stats.malformed if m["file"] == f.file), None)
    if first is not None:
        summary += f", e.g. line {first['line']}: {first['error']}"
    return summary if f.error is None else f"{summary}; {f.error}"


def source_name(paths: Sequence[Path]) -> str:
    """The source that ``paths`` came from: the file, or the directory holding them."""
    return str(paths[0] if len(paths) == 1 else os.path.commonpath([str(p) for p in paths]))


def check_usable(paths: Sequence[Path], stats: ReadStats) -> None:
    """Raise :class:`ReviewsError` when the files read gave no review at all, summing up each
    file's read error and rejections; else warn of each file that gave none."""
    if stats.total("reviews"):
        for path, f in zip(paths, stats.files, strict=True):
            if f.reviews == 0 and f.error is None:  # a read error was shown when it happened
                _warn(f"{path}: no usable review: {file_summary(f, stats)}")
        return
    if len(stats.files) == 1:
        raise ReviewsError(f"{paths[0]}: no usable review: {file_summary(stats.files[0], stats)}")
    shown = [f"{f.file}: {file_summary(f, stats)}" for f in stats.files[:MAX_FILES_IN_MESSAGE]]
    if len(stats.files) > MAX_FILES_IN_MESSAGE:
        shown.append(f"and {len(stats.files) - MAX_FILES_IN_MESSAGE} more files")
    raise ReviewsError(f"{source_name(paths)}: no usable review in {len(stats.files)} files: "
                       f"{'; '.join(shown)}")


# --- length and label matching ----------------------------------------------------------


def apportion(total: int, weights: Sequence[float]) -> np.ndarray:
    """Split integer ``total`` in proportion to ``weights`` (Hamilton's largest-remainder
    method): the parts sum to ``total`` exactly; ties go to the earlier part."""
    w = np.asarray(weights, dtype=np.float64)
    if total <= 0 or w.sum() <= 0:
        return np.zeros(len(w), dtype=np.int64)
    exact = total * w / w.sum()
    parts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - parts), kind="stable")
    parts[order[: total - parts.sum()]] += 1
    return parts


@dataclass(frozen=True)
class LengthLabelTargets:
    """SST train's joint distribution of label and length bin, and the quotas drawn from it.

    ``edges`` are the bin edges in words: bin b holds lengths in [edges[b], edges[b+1]), the
    last bin also its right edge; ``counts[l, b]`` is the number of SST sentences of label l
    in bin b.
    """

    edges: np.ndarray
    counts: np.ndarray

    @classmethod
    def from_sst(cls, sentences: Sequence[str], labels: Sequence[int], bins: int
                 ) -> LengthLabelTargets:
        lengths = np.array([word_count(s) for s in sentences])
        labels = np.asarray(labels, dtype=np.int64)
        if len(lengths) == 0:
            raise ReviewsError("the SST train table is empty")
        # Quantile edges on integer lengths; ties merge bins, so there may be fewer than `bins`.
        edges = np.unique(np.round(np.quantile(lengths, np.linspace(0, 1, bins + 1))))
        if len(edges) == 1:
            edges = np.array([edges[0], edges[0]])
        targets = cls(edges=edges, counts=np.zeros((N_LABELS, len(edges) - 1), dtype=np.int64))
        np.add.at(targets.counts, (labels, targets.bins_of(lengths)), 1)
        return targets

    @property
    def n_bins(self) -> int:
        return len(self.edges) - 1

    def bins_of(self, lengths: np.ndarray) -> np.ndarray:
        """Bin of each length; -1 outside [edges[0], edges[-1]]."""
        lengths = np.asarray(lengths)
        bins = np.searchsorted(self.edges[1:-1], lengths, side="right")
        return np.where((lengths < self.edges[0]) | (lengths > self.edges[-1]), -1, bins)

    def bin_of(self, length: int) -> int:
        """:meth:`bins_of` for one length (the stream's per-review call, without numpy)."""
        if length < self.edges[0] or length > self.edges[-1]:
            return -1
        return int(np.searchsorted(self.edges[1:-1], length, side="right"))

    def label_quotas(self, per_label: int, match_label_counts: bool) -> np.ndarray:
        """Q_l: ``per_label`` for SST's most frequent label and the others in proportion to
        their SST counts, or ``per_label`` for every label."""
        if not match_label_counts:
            return np.full(N_LABELS, per_label, dtype=np.int64)
        n = self.counts.sum(axis=1)
        return np.round(per_label * n / n.max()).astype(np.int64)

    def cell_quotas(self, label_quotas: np.ndarray) -> np.ndarray:
        """q_lb: Q_l split over the bins in proportion to SST's counts of label l."""
        return np.stack([apportion(int(q), row) for q, row in zip(label_quotas, self.counts,
                                                                  strict=True)])


class Reservoir:
    """A uniform random sample of at most ``capacity`` items of a stream (Vitter 1985,
    algorithm R): item t (1-based) enters with probability capacity / t, replacing a random
    member. ``capacity=None`` keeps every item."""

    def __init__(self, capacity: int | None, rng: random.Random):
        self.capacity = capacity
        self.items: list[Any] = []
        self.seen = 0
        self._rng = rng

    def add(self, item: Any) -> None:
        self.seen += 1
        if self.capacity is None or len(self.items) < self.capacity:
            self.items.append(item)
            return
        j = self._rng.randrange(self.seen)
        if j < self.capacity:
            self.items[j] = item


# --- embeddings -------------------------------------------------------------------------


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def embed_cached(
    texts: Sequence[str], encode: Encoder, cache_dir: Path | None
) -> tuple[np.ndarray, int]:
    """Embeddings of ``texts`` (row i for text i), reusing those in ``cache_dir``.

    The cache is a directory of ``.npz`` shards (``keys``: SHA-1 of the text, ``vectors``);
    texts not found are encoded once each and written as one new shard. Returns the
    embeddings and the number of distinct texts that had to be encoded.
    """
    if not texts:
        return np.zeros((0, 0), dtype=np.float32), 0
    keys = [text_key(t) for t in texts]
    first: dict[str, int] = {}  # distinct key -> the first row holding that text
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    found: dict[str, np.ndarray] = {}
    shards = sorted(cache_dir.glob("*.npz")) if cache_dir is not None and cache_dir.is_dir() else []
    wanted = np.array(list(first), dtype="S40")
    for shard in shards:
        with np.load(shard) as data:
            shard_keys = data["keys"]
            hit = np.flatnonzero(np.isin(shard_keys, wanted))
            if len(hit):
                vectors = data["vectors"]
                for j in hit:
                    found[shard_keys[j].decode()] = vectors[j]
    missing = [k for k in first if k not in found]
    if missing:
        new = np.asarray(encode([texts[first[k]] for k in missing]), dtype=np.float32)
        if len(new) != len(missing):
            raise ReviewsError(f"encoder returned {len(new)} embeddings for {len(missing)} texts")
        found.update(zip(missing, new, strict=True))
        if cache_dir is not None:
            name = hashlib.sha1("".join(missing).encode()).hexdigest()[:16]
            with atomic_path(cache_dir / f"{name}.npz") as tmp:
                with tmp.open("wb") as fh:
                    np.savez(fh, keys=np.array(missing, dtype="S40"), vectors=new)
    dims = {v.shape for v in found.values()}
    if len(dims) != 1:
        raise ReviewsError(
            f"{cache_dir}: cached embeddings have shapes {sorted(dims)}: the cache mixes "
            "encoders; delete it"
        )
    return np.stack([found[k] for k in keys]).astype(np.float32, copy=False), len(missing)


def sentence_encoder(model_path: str, device: str, batch_size: int, progress: bool = True
                     ) -> Encoder:
    """A sentence-transformers model as an :data:`Encoder` of unit-norm float32 rows. Its
    directory's code is never run (``trust_remote_code=False``: a module it names outside
    sentence-transformers, or an ``auto_map``, is refused) and its files must be regular ones
    (``pipeline.model.check_model_files``)."""
    from sentence_transformers import SentenceTransformer

    from pipeline.model import check_model_files

    if Path(model_path).is_dir():
        check_model_files(Path(model_path))
    try:
        model = SentenceTransformer(model_path, device=str(resolve_device(device)),
                                    trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ReviewsError(f"augment.reviews.encoder: cannot load {model_path!r} "
                           f"({one_line(exc)})") from None

    def encode(texts: list[str]) -> np.ndarray:
        return model.encode(
            texts,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=progress and len(texts) > batch_size,
        )

    return encode


def cache_dir_for(root: str | Path, encoder: str) -> Path:
    """One cache directory per encoder name: ``minilm`` -> ``<root>/minilm``."""
    return Path(root) / re.sub(r"[^A-Za-z0-9._-]+", "_", encoder).strip("_")


# --- centroid selection -----------------------------------------------------------------


def centroid_sample(labels: np.ndarray, per_label: int | None, seed: int) -> np.ndarray:
    """Row indices whose embeddings make the label centroids: up to ``per_label`` rows of each
    label, a seeded uniform sample, in table order (None: every row)."""
    if per_label is None:
        return np.arange(len(labels))
    keep = []
    for label in range(N_LABELS):
        rows = np.flatnonzero(labels == label)
        sample = capped_index(len(rows), per_label, seed)
        keep.append(rows if sample is None else rows[sample])
    return np.sort(np.concatenate(keep))


def label_centroids(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """c_l = mean of the embeddings of label l, scaled to unit norm; shape (N_LABELS, dim)."""
    labels = np.asarray(labels)
    centroids = np.zeros((N_LABELS, embeddings.shape[1]), dtype=np.float64)
    for label in range(N_LABELS):
        rows = embeddings[labels == label]
        if len(rows) == 0:
            raise ReviewsError(f"SST train has no sentence of label {label}: no centroid")
        mean = rows.mean(axis=0, dtype=np.float64)
        centroids[label] = mean / np.linalg.norm(mean)
    return centroids


def centroid_similarity(embeddings: np.ndarray, labels: np.ndarray, centroids: np.ndarray
                        ) -> np.ndarray:
    """cos(e_r, c_{y_r}) for unit-norm rows e_r: the dot product with its label's centroid."""
    return np.einsum("ij,ij->i", embeddings.astype(np.float64), centroids[np.asarray(labels)])


def top_per_group(scores: np.ndarray, groups: np.ndarray, quotas: dict[Any, int]) -> np.ndarray:
    """Row indices of the ``quotas[g]`` highest scores of each group g (all of them when fewer),
    grouped in the order of ``quotas``, best first; equal scores keep row order."""
    scores, groups = np.asarray(scores), np.asarray(groups)
    kept = []
    for group, quota in quotas.items():
        rows = np.flatnonzero(groups == group)
        order = rows[np.argsort(-scores[rows], kind="stable")]
        kept.append(order[:quota])
    return np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)


# --- the stage's work -------------------------------------------------------------------


def check_config(cfg: ReviewsConfig) -> None:
    if cfg.per_label < 1:
        raise ReviewsError(f"augment.reviews.per_label: expected >= 1, got {cfg.per_label}")
    if cfg.max_candidates_per_label is not None and cfg.max_candidates_per_label < cfg.per_label:
        raise ReviewsError(
            "augment.reviews.max_candidates_per_label: expected null or >= per_label "
            f"({cfg.per_label}), got {cfg.max_candidates_per_label}"
        )
    for key in ("length_bins", "chunk_size", "batch_size"):
        if getattr(cfg, key) < 1:
            raise ReviewsError(f"augment.reviews.{key}: expected >= 1, got {getattr(cfg, key)}")


@dataclass
class MinedReviews:
    table: pd.DataFrame  # the augmented-table schema + asin, reviewer, file, line, star_label
    review_map: pd.DataFrame  # x, y, group, label: 2-D PCA of SST train and kept reviews
    report: dict[str, Any]


def plan_quotas(targets: LengthLabelTargets, cfg: ReviewsConfig
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Q_l, the cell quotas q_lb and the cell reservoir capacities (Q_l scaled by
    max_candidates_per_label / per_label, split like q_lb; None when uncapped)."""
    label_quotas = targets.label_quotas(cfg.per_label, cfg.match_label_counts)
    capacities = None
    if cfg.max_candidates_per_label is not None:
        scale = cfg.max_candidates_per_label / cfg.per_label
        capacities = targets.cell_quotas(np.round(label_quotas * scale).astype(np.int64))
    return label_quotas, targets.cell_quotas(label_quotas), capacities


def sample_candidates(
    paths: Sequence[Path],
    targets: LengthLabelTargets,
    capacities: np.ndarray | None,
    chunk_size: int,
    seed: int,
    progress: bool = True,
) -> tuple[list[Review], ReadStats, dict[str, Any]]:
    """Stream ``paths`` once, keeping a reservoir per (label, length bin) cell of
    ``capacities[l, b]`` reviews (None: all). Returns the candidates (duplicate texts within a
    cell dropped, in file/line order), the read statistics and counts for the report."""
    rng = random.Random(seed)
    cells = [
        [Reservoir(None if capacities is None else int(capacities[lab, b]), rng)
         for b in range(targets.n_bins)]
        for lab in range(N_LABELS)
    ]
    stats = ReadStats()
    out_of_range = [0] * N_LABELS
    file_order = {file_key(p): i for i, p in enumerate(paths)}
    for review in iter_reviews(paths, chunk_size, stats, progress):
        b = targets.bin_of(review.words)
        if b < 0:
            out_of_range[review.label] += 1
        else:
            cells[review.label][b].add(review)
    candidates, duplicates = [], 0
    for row in cells:
        for cell in row:
            seen: set[str] = set()
            for review in sorted(cell.items, key=lambda r: (file_order[r.file], r.line)):
                if review.text in seen:
                    duplicates += 1
                    continue
                seen.add(review.text)
                candidates.append(review)
    counts = {
        "out_of_length_range_per_label": out_of_range,
        "in_length_range_per_label": [sum(c.seen for c in row) for row in cells],
        "sampled_per_label": [sum(len(c.items) for c in row) for row in cells],
        "duplicate_texts_dropped": duplicates,
    }
    return candidates, stats, counts


def review_map(sst_emb: np.ndarray, sst_labels: np.ndarray, kept_emb: np.ndarray,
               kept_labels: np.ndarray, seed: int) -> pd.DataFrame:
    """2-D PCA of SST train and kept-review embeddings (fit on both), for a scatter plot; no
    rows when there are no embeddings."""
    from sklearn.decomposition import PCA

    points = np.vstack([sst_emb, kept_emb]) if len(kept_emb) else sst_emb
    xy = (PCA(n_components=2, random_state=seed).fit_transform(points) if len(points)
          else np.zeros((0, 2))).astype(np.float32)
    return pd.DataFrame(
        {
            "x": np.round(xy[:, 0], 4),
            "y": np.round(xy[:, 1], 4),
            "group": ["sst"] * len(sst_emb) + ["amazon"] * len(kept_emb),
            "label": np.concatenate([sst_labels, kept_labels]).astype(np.int8),
        }
    )


def kept_table(rows: Sequence[Review], scores: np.ndarray, selection: str) -> pd.DataFrame:
    """The ``amazon`` table of the kept reviews ``rows`` and their ``scores`` (NaN: none)."""
    return augmented_table(pd.DataFrame(
        {
            "id": pd.Series([f"amazon-{r.file}-{r.line}" for r in rows], dtype="str"),
            "sentence": pd.Series([r.text for r in rows], dtype="str"),
            "label": pd.Series([r.label for r in rows], dtype="Int8"),
            "source": pd.Series(["amazon"] * len(rows), dtype="str"),
            "source_id": pd.Series([f"{r.asin}/{r.reviewer}" for r in rows], dtype="str"),
            "method": pd.Series([selection] * len(rows), dtype="str"),
            # NaN (random selection: no similarity) becomes null in the nullable Float32.
            "score": pd.Series(scores, dtype="Float32"),
            "asin": pd.Series([r.asin for r in rows], dtype="str"),
            "reviewer": pd.Series([r.reviewer for r in rows], dtype="str"),
            "file": pd.Series([r.file for r in rows], dtype="str"),
            "line": pd.Series([r.line for r in rows], dtype="int64"),
            "star_label": pd.Series([r.label for r in rows], dtype="Int8"),
        }
    ))


def empty_review_map() -> pd.DataFrame:
    """The review map's columns with no points."""
    none = np.zeros((0, 0), np.float32)
    return review_map(none, np.zeros(0, np.int64), none, np.zeros(0, np.int64), seed=0)


def no_reviews(source: str | Path, selection: str) -> MinedReviews:
    """What :func:`mine_reviews` gives for no review source (``source``, a directory that
    :func:`review_files` finds no review file in): the ``amazon`` table with no rows, an empty
    map, and a report whose ``note`` says nothing was mined."""
    note = (f"no review source was given: {source} holds no review files "
            f"({', '.join(REVIEW_SUFFIXES)}), so nothing was mined and the table is empty; put "
            "Amazon review files there or point augment.reviews.source at them to mine reviews")
    report = {"selection": selection, "note": note, "files": [], "lines": 0, "reviews": 0,
              "candidates": 0, "kept_per_label": [0] * N_LABELS}
    return MinedReviews(table=kept_table([], np.zeros(0), selection),
                        review_map=empty_review_map(), report=report)


def mine_reviews(
    sst: pd.DataFrame,
    paths: Sequence[Path],
    cfg: ReviewsConfig,
    encode: Encoder | None,
    cache_dir: Path | None,
    progress: bool = True,
) -> MinedReviews:
    """Steps 1–3 of the module docstring for a prepared SST train table (``sentence``,
    ``label``) and review files ``paths``; ``encode`` is never called (and may be None) when
    ``cfg.selection`` is ``random``. A source that gives no review, none in SST's length range
    or none kept is a :class:`ReviewsError`, not an empty table."""
    check_config(cfg)
    if cfg.selection == "centroid" and encode is None:
        raise ReviewsError("augment.reviews.selection is 'centroid': a sentence encoder is needed")
    sst_labels = sst["label"].to_numpy(dtype=np.int64)
    targets = LengthLabelTargets.from_sst(list(sst["sentence"]), sst_labels, cfg.length_bins)
    label_quotas, quotas, capacities = plan_quotas(targets, cfg)
    candidates, stats, counts = sample_candidates(
        paths, targets, capacities, cfg.chunk_size, cfg.seed, progress
    )
    check_usable(paths, stats)
    if not candidates:
        raise ReviewsError(
            f"{source_name(paths)}: none of its {stats.total('reviews')} reviews is "
            f"{targets.edges[0]:g}-{targets.edges[-1]:g} words long (SST train's range)"
        )
    cand_labels = np.array([r.label for r in candidates], dtype=np.int64)
    cand_cells = cand_labels * targets.n_bins + targets.bins_of([r.words for r in candidates])
    cell_quota = {
        lab * targets.n_bins + b: int(quotas[lab, b])
        for lab in range(N_LABELS) for b in range(targets.n_bins)
    }
    if cfg.selection == "centroid":
        rows = centroid_sample(sst_labels, cfg.centroid_rows, cfg.seed)
        centroid_labels = sst_labels[rows]
        sst_emb, sst_encoded = embed_cached(list(sst["sentence"].iloc[rows]), encode, cache_dir)
        centroids = label_centroids(sst_emb, centroid_labels)
        cand_emb, cand_encoded = embed_cached([r.text for r in candidates], encode, cache_dir)
        scores = (
            centroid_similarity(cand_emb, cand_labels, centroids) if candidates else np.zeros(0)
        )
        kept = top_per_group(scores, cand_cells, cell_quota)
    else:
        # The q_lb highest of i.i.d. uniform keys are a uniform random q_lb-subset of the cell.
        keys = np.random.default_rng(cfg.seed).random(len(candidates))
        kept = top_per_group(keys, cand_cells, cell_quota)
        scores = np.full(len(candidates), np.nan)
        sst_encoded = cand_encoded = 0
    if not len(kept):
        raise ReviewsError(
            f"{source_name(paths)}: no review kept: candidates per label "
            f"{counts['sampled_per_label']}, quotas per label {label_quotas.tolist()}"
        )

    table = kept_table([candidates[i] for i in kept], scores[kept], cfg.selection)
    kept_cells = np.zeros((N_LABELS, targets.n_bins), dtype=np.int64)
    np.add.at(kept_cells, (cand_labels[kept], cand_cells[kept] % targets.n_bins), 1)
    report = {
        "selection": cfg.selection,
        "files": [vars(f) for f in stats.files],
        "lines": stats.total("lines"),
        "reviews": stats.total("reviews"),
        "blank_lines": stats.total("blank"),
        "reviews_without_text": stats.total("no_text"),
        "malformed_lines": stats.total("malformed"),
        "malformed_by_reason": stats.by_reason(),
        "read_errors": {f.file: f.error for f in stats.files if f.error is not None},
        "malformed": stats.malformed,  # the first MAX_LISTED_MALFORMED
        "length_bin_edges_words": targets.edges.tolist(),
        **counts,
        "candidates": len(candidates),
        # Distinct texts encoded by this run; the others came from the embedding cache.
        "newly_embedded": {"sst": sst_encoded, "candidates": cand_encoded},
        "sst_per_label": targets.counts.sum(axis=1).tolist(),
        "quota_per_label": label_quotas.tolist(),
        "kept_per_label": kept_cells.sum(axis=1).tolist(),
        "sst_per_label_and_bin": targets.counts.tolist(),
        "quota_per_label_and_bin": quotas.tolist(),
        "kept_per_label_and_bin": kept_cells.tolist(),
        "length_tv_distance_per_label": [
            _tv_distance(targets.counts[lab], kept_cells[lab]) for lab in range(N_LABELS)
        ],
        "similarity_per_label": [
            _summary(scores[kept][cand_labels[kept] == lab]) for lab in range(N_LABELS)
        ],
    }
    if cfg.selection == "random":
        points = empty_review_map()  # nothing was embedded
    else:
        kept_emb = cand_emb[kept] if len(kept) else np.zeros((0, sst_emb.shape[1]), np.float32)
        points = review_map(sst_emb, centroid_labels, kept_emb, cand_labels[kept], cfg.seed)
    return MinedReviews(table=table, review_map=points, report=report)


def _tv_distance(p: np.ndarray, q: np.ndarray) -> float | None:
    """Total variation distance ½·Σ|p_b − q_b| between two count vectors' distributions."""
    if p.sum() == 0 or q.sum() == 0:
        return None
    return round(float(0.5 * np.abs(p / p.sum() - q / q.sum()).sum()), 4)


def _summary(values: np.ndarray) -> dict[str, float] | None:
    if len(values) == 0 or np.isnan(values).all():
        return None
    return {"min": round(float(values.min()), 4), "mean": round(float(values.mean()), 4),
            "max": round(float(values.max()), 4)}
