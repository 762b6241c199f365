"""Predict with a trained member: the `bestfit-predict` command, runnable from a checkout.

    python scripts/predict.py models/multitask/seed_11/model --task sst --text "a great film"
    python scripts/predict.py --member multitask --task sts --input pairs.csv --format jsonl

Options and formats: `python scripts/predict.py --help` and `pipeline/predict.py`.
"""

from __future__ import annotations

from pipeline.errors import run_stage
from pipeline.predict import main

if __name__ == "__main__":
    run_stage("bestfit-predict", main)
