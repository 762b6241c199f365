#!/usr/bin/env bash
# The test command: install what is needed, lint, then the whole test suite (needs the real data
# in ../shared/data beside the checkout). pytest's "no tests collected" (exit 5) fails too.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DVC_NO_ANALYTICS=1 TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check .
bash scripts/setup_chromium.sh
.venv/bin/pytest -q "$@"
