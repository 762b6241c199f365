#!/usr/bin/env bash
# The whole DAG, CPU-sized: MiniLM backbone, the CS224N data and Amazon samples in
# ../shared/data, short epochs, fp32 (bf16 autocast is 2.3× slower on CPUs without
# AVX512-BF16), no SMART (the paper's GPU recipe, params.yaml, is its
# SMART(10) and CS* schedule). Runs as a DVC experiment, so its params and scores show in
# `dvc exp show` and later variants (`dvc exp run -S …`) start from these settings.
# Extra arguments are passed to `dvc exp run` (e.g. -S train.epochs=2, -S 'seeds=[11,12]', or
# --queue). Machine-local inputs are passed as absolute paths: a queued run executes in a
# temporary copy of the repository that holds only git-tracked files.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source .venv/bin/activate
export DVC_NO_ANALYTICS=1 TOKENIZERS_PARALLELISM=false
DATA=$(realpath "${BESTFIT_DATA:-../shared/data}")

git rev-parse --verify -q HEAD > /dev/null || {
    echo "dvc exp run needs a git repository with at least one commit" >&2; exit 1; }
time dvc exp run \
    -S "data.source=$DATA/cs224n" \
    -S "augment.reviews.source=$DATA/amazon" \
    -S "augment.eda.wordnet_dir=$(realpath data/nltk_data)" \
    -S augment.reviews.per_label=100 \
    -S model.pooling=mean \
    -S train.lr=5e-5 \
    -S model.backbone=minilm \
    -S train.epochs=3 \
    -S train.batches_per_epoch=300 \
    -S train.custom.epochs=1 \
    -S train.custom.fraction=0.35 \
    -S train.batch_size=16 \
    -S train.num_threads=2 \
    -S train.precision=fp32 \
    -S smart.lambda=0 \
    -S models.sst_single.train.lr=5e-5 \
    "$@"
dvc metrics show
