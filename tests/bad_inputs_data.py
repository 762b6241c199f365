"""Cases of the bad-input corpus (tests/bad_inputs.py): data quirks and outputs (round two).

Data: the same row in two splits (leakage), a column named twice, typed cells of JSON lines
and parquet tasks, labels Python alone would read, ids that would split a submission line, a
sentence past csv's field limit, special files where prepare reads. Outputs: an output path
holding the other kind of thing, and the ensemble stage's outputs committed as one set.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bad_inputs import (
    JOURNAL,
    QQP_DEV,
    QQP_TRAIN,
    ROWS,
    SST_DEV,
    SST_TRAIN,
    STS_TRAIN,
    case,
    data_case,
    data_file,
    edit_field,
    edit_params,
    kept_all,
    prep_report,
    read_lines,
    rejected,
    write_lines,
)

STS_TEST = "sts-test-student.csv"


def fields(ws: Path, name: str, line: int) -> list[str]:
    """The tab-separated fields of ``line`` (1-based) of a CS224N file in the workspace."""
    return read_lines(data_file(ws, name))[line - 1].rstrip("\r\n").split("\t")


# -- leakage: the same id or example in two splits is counted and named ----------------------


def leaked(task: str, pair: str, rows: int) -> Callable[[Path], str | None]:
    """A check: ``report.json`` counts ``rows`` leaked rows of task/pair, and train kept all."""

    def check(ws: Path) -> str | None:
        report = prep_report(ws)
        counts = report.get("leakage", {}).get("tasks", {}).get(task, {}).get(pair)
        if not counts or counts["rows"] != rows:
            return f"report.json: leakage {task} {pair}: {counts}, expected {rows} row(s)"
        return kept_all(task, "train")(ws)

    return check


@data_case("data-leak-train-dev-sentence", "handled", "sst", "also in dev", "drop",
           check=leaked("sst", "train-dev", 1))
def _leak_sentence(ws: Path) -> list[str]:
    # dev line 3 says what train line 2 says, shouted with extra spaces
    sentence = fields(ws, SST_TRAIN, 2)[2]
    edit_field(ws, SST_DEV, 3, 2, "  ".join(sentence.upper().split()))
    return [fields(ws, SST_TRAIN, 2)[1]]  # the train id is named


@data_case("data-leak-qqp-pair-reversed", "handled", "qqp", "also in dev", "either order",
           check=leaked("qqp", "train-dev", 1), quick=False)
def _leak_pair(ws: Path) -> None:
    first, second = fields(ws, QQP_TRAIN, 4)[2:4]
    edit_field(ws, QQP_DEV, 6, 2, second)
    edit_field(ws, QQP_DEV, 6, 3, first)


@data_case("data-leak-same-id-train-test", "handled", "sts", "also in test", "same id: 1",
           check=leaked("sts", "train-test", 1), quick=False)
def _leak_id(ws: Path) -> None:
    edit_field(ws, STS_TEST, 7, 1, fields(ws, STS_TRAIN, 3)[1])


# -- headers: a column named twice -----------------------------------------------------------


@data_case("data-header-column-twice", "error", SST_TRAIN, "line 1", "'sentence'", "twice")
def _header_twice(ws: Path) -> None:
    path = data_file(ws, SST_TRAIN)
    lines = read_lines(path)
    lines[0] = "\tid\tsentence\tsentence\n"  # the label column renamed as a second sentence
    write_lines(path, lines)


# -- a task of the user's own (params `tasks:`): CSV, JSON lines, parquet --------------------


NLI_ROWS = [{"id": f"n{k}", "premise": f"a man plays {k}", "hypothesis": f"a man runs {k}",
             "label": k % 2} for k in range(6)]
NLI_DEV = [{"id": f"d{k}", "premise": f"a dog plays {k}", "hypothesis": f"a cat runs {k}",
            "label": k % 2} for k in range(4)]


def own_task(ws: Path, fmt: str, train: bytes | list[dict[str, Any]],
             dev: list[dict[str, Any]] | None = None) -> str:
    """Declare task ``nli`` reading ``nli/{train,dev}.<fmt>``; ``train`` is the file's bytes or
    its rows (written in the format). Returns the train file's path (as the error names it)."""
    directory = ws / "nli"
    directory.mkdir(exist_ok=True)
    for split, content in (("train", train), ("dev", dev or NLI_DEV)):
        path = directory / f"{split}.{fmt}"
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif fmt == "jsonl":
            path.write_text("".join(json.dumps(row) + "\n" for row in content))
        elif fmt == "parquet":
            import pandas as pd

            pd.DataFrame(content).to_parquet(path)
        else:
            import pandas as pd

            pd.DataFrame(content).to_csv(path, index=False, sep="," if fmt == "csv" else "\t")

    def declare(params: dict[str, Any]) -> None:
        from pipeline.tasks import CS224N_TASKS

        params["tasks"] = {**copy.deepcopy(CS224N_TASKS), "nli": {
            "classes": ["no", "yes"], "data": {
                "format": fmt, "dir": "nli", "train": f"train.{fmt}", "dev": f"dev.{fmt}",
                "text": ["premise", "hypothesis"]}}}

    edit_params(ws, declare)
    return f"nli/train.{fmt}"


def with_cell(column: str, value: Any, row: int = 2) -> list[dict[str, Any]]:
    rows = copy.deepcopy(NLI_ROWS)
    rows[row][column] = value
    return rows


def nli_kept(n: int = len(NLI_ROWS)) -> Callable[[Path], str | None]:
    def check(ws: Path) -> str | None:
        r = prep_report(ws)["tasks"]["nli"]["train"]
        return None if r["rows_kept"] == n else f"nli train: kept {r['rows_kept']}, expected {n}"

    return check


@data_case("data-jsonl-text-a-number", "error", "nli/train.jsonl", "line 3", "'hypothesis'",
           "a number")
def _jsonl_number(ws: Path) -> None:
    own_task(ws, "jsonl", with_cell("hypothesis", 42))


for _name, _value, _what in (("an-object", {"text": "a man"}, "an object"),
                             ("a-list", ["a", "man"], "a list"), ("a-bool", True, "a boolean")):
    data_case(f"data-jsonl-text-{_name}", "error", "nli/train.jsonl", "line 3", "'premise'",
              _what, quick=False)(
        lambda ws, value=_value: own_task(ws, "jsonl", with_cell("premise", value)))


@data_case("data-jsonl-byte-order-mark", "handled", check=nli_kept(), quick=False)
def _jsonl_bom(ws: Path) -> None:
    body = "".join(json.dumps(row) + "\r\n" for row in NLI_ROWS)
    own_task(ws, "jsonl", b"\xef\xbb\xbf" + body.encode())


@data_case("data-jsonl-key-twice", "error", "nli/train.jsonl", "line 1", "'premise'", "twice",
           quick=False)
def _jsonl_key_twice(ws: Path) -> None:
    line = '{"id": "n0", "premise": "a", "premise": "b", "hypothesis": "c", "label": 0}\n'
    own_task(ws, "jsonl", line.encode())


@data_case("data-parquet-text-column-of-ints", "error", "nli/train.parquet", "row 0",
           "'premise'", "a number", quick=False)
def _parquet_ints(ws: Path) -> None:
    own_task(ws, "parquet", [{**row, "premise": k} for k, row in enumerate(NLI_ROWS)])


@data_case("data-parquet-float-ids", "error", "nli/train.parquet", "row 0", "'id'", "1.0",
           quick=False)
def _parquet_float_ids(ws: Path) -> None:
    # a column of integer ids with one missing is stored as float
    rows = [{**row, "id": float(k + 1)} for k, row in enumerate(NLI_ROWS)]
    rows[3]["id"] = None
    own_task(ws, "parquet", rows)


@data_case("data-csv-header-column-twice", "error", "nli/train.csv", "line 1", "'premise'",
           "twice", quick=False)
def _csv_twice(ws: Path) -> None:
    own_task(ws, "csv", b"id,premise,premise,hypothesis,label\nn0,a,b,c,0\n")


@data_case("data-csv-label-name-padded", "handled", check=nli_kept(2), quick=False)
def _csv_padded(ws: Path) -> None:
    own_task(ws, "csv", b"id,premise,hypothesis,label \nn0,a,b,0\nn1,c,d,1\n")


@data_case("data-csv-id-holds-a-tab", "error", "nli/train.csv", "line 3", "'id'", "tab",
           quick=False)
def _csv_id_tab(ws: Path) -> None:
    own_task(ws, "csv", b'id,premise,hypothesis,label\nn0,a,b,0\n"n\t1",c,d,1\n')


@data_case("data-csv-nan-label", "error", "nli/train.csv", "line 2", "'label'", "nan",
           quick=False)
def _csv_nan(ws: Path) -> None:
    own_task(ws, "csv", b"id,premise,hypothesis,label\nn0,a,b,nan\n")


# -- labels only Python would read, ids that would split a submission line --------------------


@data_case("data-label-with-underscore", "counted", check=rejected("sst", "train", "number"))
def _label_underscore(ws: Path) -> None:
    edit_field(ws, SST_TRAIN, 6, 3, "0_1")  # int("0_1") and float("0_1") are 1


@data_case("data-label-fullwidth-digit", "counted", check=rejected("sst", "dev", "number"),
           quick=False)
def _label_fullwidth(ws: Path) -> None:
    edit_field(ws, SST_DEV, 4, 3, "\uff13")  # float("３") is 3.0


@data_case("data-sts-nan-score", "counted", check=rejected("sts", "train", "number"),
           quick=False)
def _sts_nan(ws: Path) -> None:
    edit_field(ws, STS_TRAIN, 5, 4, "nan")


@data_case("data-id-quoted-newline", "error", SST_DEV, "line 4", "'id'", "line break")
def _id_newline(ws: Path) -> None:
    edit_field(ws, SST_DEV, 4, 1, '"ab\ncd"')


# -- long fields are legal -------------------------------------------------------------------


@data_case("data-sentence-over-field-limit", "handled", check=kept_all("sst", "train"))
def _long_sentence(ws: Path) -> None:
    # past Python csv's default 131,072-character limit: read whole, truncated by tokenisation
    edit_field(ws, SST_TRAIN, 5, 2, "a long and winding review of the film " * 4000)


@data_case("data-mixed-line-endings", "handled", check=kept_all("sst", "dev", "sentence"),
           quick=False)
def _mixed_endings(ws: Path) -> None:
    path = data_file(ws, SST_DEV)
    lines = read_lines(path)
    write_lines(path, [line.rstrip("\r\n") + ("\r\n", "\n", "\r")[k % 3]
                       for k, line in enumerate(lines)])


# -- special files where prepare reads: DVC and the reader would wait on them forever ---------


@data_case("data-fifo-beside-the-files", "error", "cs224n/notes", "FIFO")
def _fifo(ws: Path) -> None:
    os.mkfifo(ws / "cs224n" / "notes")


@data_case("data-fifo-as-a-split-file", "error", SST_DEV, "FIFO", quick=False)
def _fifo_split(ws: Path) -> None:
    data_file(ws, SST_DEV).unlink()
    os.mkfifo(data_file(ws, SST_DEV))


@data_case("data-link-to-dev-zero", "error", "cs224n/zeros", "character device", quick=False)
def _dev_zero(ws: Path) -> None:
    (ws / "cs224n" / "zeros").symlink_to("/dev/zero")  # an endless file to hash


@data_case("data-socket-in-task-dir", "error", "nli/agent.sock", "socket", quick=False)
def _socket(ws: Path) -> None:
    own_task(ws, "jsonl", NLI_ROWS)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(ws / "nli" / "agent.sock"))
    sock.close()  # the socket file stays


# -- outputs: a directory is never replaced by a file, nor a file by a directory --------------


@case("outputs-prepare-out-is-a-file", "outputs", "prepare", "error", "prep_out", "is a file",
      check=lambda ws: None if (ws / "prep_out").read_text() == "notes\n"
      else "prep_out was replaced")
def _out_file(ws: Path) -> None:
    (ws / "prep_out").write_text("notes\n")


# -- the ensemble stage: its outputs are one set -----------------------------------------------

ENSEMBLE_OUTPUTS = ("metrics.json", "predictions", "submission", "plots", "cards")


def member_runs(ws: Path) -> None:
    """models/<member>/seed_11/{predictions, metrics.json} of base_params' two members, as
    their train stages would write them: every prepared dev and test id predicted."""
    import numpy as np
    import pandas as pd

    for member, tasks in (("sst_single", ["sst"]), ("multitask", ["sst", "qqp", "sts"])):
        run = ws / "models" / member / "seed_11"
        (run / "predictions").mkdir(parents=True)
        for task in tasks:
            for split in ("dev", "test"):
                ids = pd.read_parquet(ws / "prepared" / f"{task}_{split}.parquet")["id"]
                frame = pd.DataFrame({"id": ids})
                if task == "sts":
                    frame["pred"] = np.linspace(0, 5, len(ids)).astype(np.float32)
                else:
                    k = 5 if task == "sst" else 2
                    probs = np.full((len(ids), k), 1 / k, np.float32)
                    probs[np.arange(len(ids)), np.arange(len(ids)) % k] += 0.1
                    probs /= probs.sum(1, keepdims=True)
                    frame["pred"] = probs.argmax(1).astype(np.int8)
                    for j in range(k):
                        frame[f"p{j}"] = probs[:, j]
                frame.to_parquet(run / "predictions" / f"{task}_{split}.parquet", index=False)
        (run / "metrics.json").write_text(json.dumps({"overall": 0.5, "sst_acc": 0.4}))


def old_outputs(ws: Path) -> None:
    """An earlier run's outputs, each marked `old`."""
    (ws / "metrics.json").write_text('{"set": "old"}\n')
    for name in ENSEMBLE_OUTPUTS[1:]:
        (ws / name).mkdir()
        (ws / name / "old").write_text("old")


def ensemble_set(ws: Path) -> str:
    """``old`` (every output the earlier run's), ``run`` (every one this run's) or mixed."""
    found = {name: "old" if (ws / name / "old").exists() else "run"
             for name in ENSEMBLE_OUTPUTS[1:]}
    found["metrics.json"] = json.loads((ws / "metrics.json").read_text()).get("set", "run")
    sets = set(found.values())
    return sets.pop() if len(sets) == 1 else f"mixed {found}"


def ensemble_holds(expected: str) -> Callable[[Path], str | None]:
    def check(ws: Path) -> str | None:
        got = ensemble_set(ws)
        if got != expected:
            return f"the outputs are the {got} set, expected the {expected} one"
        left = [p.name for p in ws.iterdir() if p.name.startswith(".") and (
            ".tmp-" in p.name or ".old-" in p.name or p.name == JOURNAL)]
        return f"left behind: {left}" if left else None

    return check


@case("outputs-ensemble-plots-is-a-file", "outputs", "ensemble", "error", "plots", "is a file",
      quick=False, check=lambda ws: None if (ws / "plots").read_text() == "my plots\n" and (
          json.loads((ws / "metrics.json").read_text()) == {"set": "old"})
      else "an output was replaced")
def _plots_file(ws: Path) -> None:
    member_runs(ws)
    old_outputs(ws)
    shutil.rmtree(ws / "plots")
    (ws / "plots").write_text("my plots\n")  # a directory output: refused, and nothing written


@case("outputs-ensemble-journal-rolled-forward", "outputs", "ensemble", "handled",
      check=ensemble_holds("run"), quick=False)
def _ensemble_journal(ws: Path) -> None:
    # killed mid-commit: new metrics in place, the rest still staged beside the journal
    member_runs(ws)
    old_outputs(ws)
    stage = ws / ".outputs.tmp-k1ll3d"
    stage.mkdir()
    for name in ENSEMBLE_OUTPUTS[1:]:
        (stage / name).mkdir()
        (stage / name / "new").write_text("new")
    (ws / "metrics.json").write_text('{"set": "new"}\n')
    (ws / JOURNAL).write_text(json.dumps({"stage": stage.name,
                                          "names": list(ENSEMBLE_OUTPUTS)}))


@case("outputs-ensemble-dead-writers-leftovers", "outputs", "ensemble", "handled",
      check=ensemble_holds("run"), quick=False)
def _ensemble_leftovers(ws: Path) -> None:
    member_runs(ws)
    old_outputs(ws)
    for name in ("predictions", "metrics.json", "outputs"):
        tmp = ws / f".{name}.tmp-k1ll3d"
        (tmp / name).mkdir(parents=True)
        (tmp / name / "half-written").write_text("x")


assert ROWS >= 7  # the cases edit lines up to 7
