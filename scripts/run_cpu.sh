#!/usr/bin/env bash
# The whole DAG, CPU-sized (~15 minutes on 2 cores): experiments/cpu_main.yaml's overrides of
# params.yaml (the MiniLM encoder, SST from a single-task member, QQP and STS from a multitask
# one; that file says what each is). The paper's GPU recipe (params.yaml: bert-base, SMART(10),
# CS* schedule, SST from a single-task member) stays the default. Runs as a DVC experiment, so
# its params and scores show in `dvc exp show` and later variants (`dvc exp run -S …`) start
# from these settings.
# Data: $BESTFIT_DATA (default ../shared/data) may hold cs224n/ (the CS224N files) and amazon/
# (Amazon review files); what it lacks comes from params.yaml's defaults: the CS224N files are
# downloaded from data.source, and the reviews are those in data/reviews/ (as committed, none:
# the review stages then write empty tables). A BESTFIT_DATA that is set must exist.
# Extra arguments are passed to `dvc exp run` (e.g. -S train.epochs=2, -S 'seeds=[11,12]', or
# --queue). Machine-local inputs are passed as absolute paths: a queued run executes in a
# temporary copy of the repository that holds only git-tracked files.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source .venv/bin/activate
export DVC_NO_ANALYTICS=1 TOKENIZERS_PARALLELISM=false
DATA="${BESTFIT_DATA:-../shared/data}"
if [ -n "${BESTFIT_DATA:-}" ] && [ ! -d "$BESTFIT_DATA" ]; then
    echo "run_cpu.sh: BESTFIT_DATA=$BESTFIT_DATA: no such directory (expected one holding" \
         "cs224n/ and amazon/; unset it to use params.yaml's data sources)" >&2
    exit 1
fi
sources=()  # expanded as ${a[@]+"${a[@]}"}: an empty array is unset to bash < 4.4 (macOS)
if [ -d "$DATA/cs224n" ]; then
    sources+=(-S "data.source=$(realpath "$DATA/cs224n")")
else
    echo "run_cpu.sh: no $DATA/cs224n: prepare downloads the CS224N files from params.yaml's" \
         "data.source" >&2
fi
if [ -d "$DATA/amazon" ]; then
    sources+=(-S "augment.reviews.source=$(realpath "$DATA/amazon")")
else
    echo "run_cpu.sh: no $DATA/amazon: reviews come from data/reviews/ (see its README.md;" \
         "with none there, nothing is mined)" >&2
fi

git rev-parse --verify -q HEAD > /dev/null || {
    echo "dvc exp run needs a git repository with at least one commit" >&2; exit 1; }
main_job=()  # experiments/cpu_main.yaml as `-S ++key=value` arguments (bash 3: no mapfile)
while IFS= read -r override; do
    main_job+=(-S "$override")
done < <(python scripts/overrides.py experiments/cpu_main.yaml)
[ ${#main_job[@]} -gt 0 ] || { echo "run_cpu.sh: experiments/cpu_main.yaml gave no settings" >&2
                              exit 1; }
time dvc exp run \
    ${sources[@]+"${sources[@]}"} \
    -S "augment.eda.wordnet_dir=$(realpath data/nltk_data)" \
    "${main_job[@]}" \
    "$@"
dvc metrics show
