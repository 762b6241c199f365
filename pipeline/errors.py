"""User errors and how a stage reports them.

A :class:`UserError` is a problem with something the user gave (params, a data file, a review
source, a checkpoint on disk): its message names the place (file, line, field or params key), the
value found and what is allowed. A stage run through :func:`run_stage` prints it as one line on
stderr and exits 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable


class UserError(ValueError):
    """Bad input, configuration or on-disk state; the message says where and what is expected."""


EXIT_USER_ERROR = 2


def one_line(exc: BaseException) -> str:
    """A library's (often multi-line) message folded onto one line, for a one-line error."""
    return " ".join(str(exc).split())


def run_stage(name: str, main: Callable[[list[str] | None], object],
              argv: list[str] | None = None) -> None:
    """Run a stage's ``main``; a :class:`UserError` becomes ``<name>: error: <message>``.
    The library's notices (``logging``, e.g. a checkpoint not resumed) go to stderr."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        main(argv)
    except UserError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
