#!/usr/bin/env bash
# The test command: install what is needed, lint, then the whole test suite (needs the real data
# in ../shared/data beside the checkout). pytest's "no tests collected" (exit 5) fails too.
# Test files run in parallel, one worker per CPU (pytest-xdist; a file's tests stay together and
# in order, as their module fixtures expect; tests/conftest.py starts the longest files first).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DVC_NO_ANALYTICS=1 TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check .
bash scripts/setup_chromium.sh
.venv/bin/pytest -q -n auto --dist loadfile "$@"
