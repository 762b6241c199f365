"""Cases of the bad-input corpus (tests/bad_inputs.py): data quirks and outputs (round two)."""

from __future__ import annotations
