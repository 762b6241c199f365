"""Print an overrides file's settings as `dvc exp run -S` arguments, one `++key=value` a line.

    python scripts/overrides.py experiments/cpu_main.yaml

The file's `set:` maps params keys (dotted) to values (experiments/cpu_main.yaml: the CPU main
job that scripts/run_cpu.sh runs).
"""

from __future__ import annotations

import sys

from pipeline.errors import run_stage
from pipeline.experiments import load_overrides, override_args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit(f"usage: {sys.argv[0]} OVERRIDES.yaml")
    print("\n".join(override_args(load_overrides(argv[0]))))


if __name__ == "__main__":
    run_stage("overrides", main)
