"""The bad-input corpus (tests/bad_inputs.py) under pytest: its cases that train nothing (broken
params, data files and review sources), each a real stage subprocess judged by the runner's
rules, one test per case asserting the verdict the case expects.

The selected cases run once, two at a time, in a module fixture; run with ``-s`` to see the
runner's table. The training cases (checkpoints, killed runs' outputs) run only in the runner:
``.venv/bin/python tests/bad_inputs.py``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from bad_inputs import CASES, Result, Templates, describe, print_table, run_case

CHEAP = [case for case in CASES if case.cheap]
JOBS = min(2, os.cpu_count() or 1)


@pytest.fixture(scope="module")
def results(request, tmp_path_factory) -> dict[str, Result]:
    """Run the cases selected in this session (``-k`` narrows them), in the corpus's order."""
    selected = {item.callspec.params["case"].name for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec")}
    cases = [case for case in CHEAP if case.name in selected]
    scratch = tmp_path_factory.mktemp("bad-inputs")
    templates = Templates(scratch / "templates")
    with ThreadPoolExecutor(max_workers=JOBS) as pool:
        done = list(pool.map(lambda case: run_case(case, templates, scratch), cases))
    print_table(done)
    return {r.case.name: r for r in done}


@pytest.mark.parametrize("case", CHEAP, ids=lambda case: case.name)
def test_bad_input_verdict(case, results):
    result = results[case.name]
    assert result.verdict == case.expect, describe(result)
