"""Reading delimited text (CSV/TSV) whose fields may be of any length.

Python's ``csv`` module refuses a field longer than 131,072 characters by default. A sentence
that long is still a legal field: it is read as any other and tokenisation truncates it to
``model.max_length``. An unclosed quote then reads to the end of the file, where strict quoting
reports it (``unexpected end of data``).
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterable


def _largest_field_limit() -> int:
    """The largest limit this platform's C ``long`` accepts."""
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return limit
        except OverflowError:
            limit //= 2


def reader(lines: Iterable[str], delimiter: str) -> csv.Reader:
    """A strict ``csv.reader`` over ``lines`` with no limit on a field's length."""
    if csv.field_size_limit() < sys.maxsize // 2:
        _largest_field_limit()
    return csv.reader(lines, delimiter=delimiter, strict=True)
