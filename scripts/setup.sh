#!/usr/bin/env bash
# Install what bestfit needs, idempotently: a virtualenv in .venv with the project and its test
# tools (torch pinned to 2.13.0: the CPU build where one is provided locally, CUDA wheels
# elsewhere), and WordNet for EDA in data/nltk_data.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install --quiet --editable '.[test]'
bash scripts/setup_wordnet.sh > /dev/null
bash scripts/setup_vega.sh > /dev/null
