"""Cases of the bad-input corpus (tests/bad_inputs.py): model directories from elsewhere and
the predict CLI (round two)."""

from __future__ import annotations
