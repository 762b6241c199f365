"""Cases of the bad-input corpus (tests/bad_inputs.py): params and config shapes (round two)."""

from __future__ import annotations
