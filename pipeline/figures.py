"""PNG figures of the runs and of the paper's analysis (BEST-FiT, Sections 5–6), readable offline.

DVC's own plots (``dvc plots show``) are interactive HTML pages (drawn offline through the
template ``scripts/setup_vega.sh`` writes); these are PNG files drawn with matplotlib, for
papers and reports. One function per figure; each takes tables (or arrays) and writes one PNG
atomically:

- ``confusion_figure``: a confusion matrix of (actual, predicted) rows (paper Figure 4, left).
- ``scatter_figure``: STS predicted vs true similarity, with Pearson r (paper Figure 5, right).
- ``review_map_figure``: SST train and kept Amazon reviews in 2-D (paper Figure 2).
- ``curves_figure``: per-epoch dev metrics of every run, one line per member and seed.
- ``train_dev_figure``: train vs dev score per epoch, the overfitting gap SMART narrows
  (paper Figure 3, right).
- ``embedding_figure``: sentence embeddings projected by ``pca_2d``, coloured by gold label
  (paper Figure 5, left).
- ``pcgrad_steps_figure``: per step of one epoch, which task gradients PCGrad projected and
  how much the projection shrank them (paper Figure 4, middle and right; Section 6.1).
- ``report_figure``: experiment rows × tasks, mean ± sd over seeds, the paper's value marked.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib import colormaps, rcParams
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pipeline.batching import batch_indices, collate, tokenize_task
from pipeline.evaluate import pearson
from pipeline.io import atomic_path
from pipeline.model import MultitaskModel

SST_CLASSES = ("negative", "somewhat neg.", "neutral", "somewhat pos.", "positive")
# The paper's tasks, as the reproduction report's figure labels them.
TASK_TITLES = {"sst": "SST accuracy", "qqp": "QQP accuracy", "sts": "STS Pearson r"}
DPI = 120


def save_png(fig: Figure, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; expected {list(columns)}, "
                         f"got {list(frame.columns)}")


def confusion_figure(frame: pd.DataFrame, path: str | Path, title: str,
                     classes: Sequence[str] = SST_CLASSES) -> None:
    """Counts of each (``actual``, ``predicted``) pair; colour is the share of the actual row."""
    _require(frame, ["actual", "predicted"], title)
    k = len(classes)
    counts = np.zeros((k, k), dtype=int)
    np.add.at(counts, (frame["actual"].to_numpy(int), frame["predicted"].to_numpy(int)), 1)
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, counts[i, j], ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted", ylabel="actual",
           title=f"{title} (accuracy {np.trace(counts) / max(counts.sum(), 1):.3f})")
    ax.set_xticklabels(classes, rotation=30, ha="right")
    ax.set_yticklabels(classes)
    fig.colorbar(image, ax=ax, label="share of the actual class")
    save_png(fig, path)


def scatter_figure(frame: pd.DataFrame, path: str | Path) -> None:
    """STS dev: predicted against true similarity, the identity line, and Pearson r."""
    _require(frame, ["true_similarity", "predicted_similarity"], "STS scatter")
    truth, pred = frame["true_similarity"].to_numpy(), frame["predicted_similarity"].to_numpy()
    fig = Figure(figsize=(5, 4.5))
    ax = fig.subplots()
    ax.scatter(truth, pred, s=8, alpha=0.5)
    ax.plot([0, 5], [0, 5], "k--", lw=1)
    ax.set(xlabel="true similarity", ylabel="predicted similarity",
           title=f"STS dev (Pearson r {pearson(pred, truth):.3f})")
    save_png(fig, path)


def review_map_figure(frame: pd.DataFrame, path: str | Path) -> None:
    """The ``filter_reviews`` map: SST train sentences and the kept reviews, 2-D PCA."""
    _require(frame, ["x", "y", "group"], "review map")
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.subplots()
    for group, colour in (("sst", "tab:gray"), ("amazon", "tab:green")):
        part = frame[frame["group"] == group]
        ax.scatter(part["x"], part["y"], s=4, alpha=0.4, color=colour,
                   label=f"{group} ({len(part)})")
    ax.set(xlabel="PC 1", ylabel="PC 2", title="SST train and kept Amazon reviews")
    ax.legend(markerscale=3)
    save_png(fig, path)


def read_live_metrics(models_dir: str | Path, split: str) -> pd.DataFrame:
    """Per-epoch metrics of one ``split`` (``dev``, ``train``) from every run's DVCLive TSVs,
    ``<models>/<member>[/<seed dir>]/live/plots/metrics/<split>/<metric>.tsv``: columns ``run``
    (the path between ``models`` and ``live``), ``metric``, ``epoch`` (DVCLive step + 1),
    ``value``."""
    models_dir = Path(models_dir)
    parts = []
    for tsv in sorted(models_dir.glob(f"*/**/live/plots/metrics/{split}/*.tsv")):
        relative = tsv.relative_to(models_dir).parts
        table = pd.read_csv(tsv, sep="\t")
        _require(table, ["step", tsv.stem], str(tsv))
        parts.append(pd.DataFrame({"run": "/".join(relative[:relative.index("live")]),
                                   "metric": tsv.stem, "epoch": table["step"] + 1,
                                   "value": table[tsv.stem]}))
    if not parts:
        return pd.DataFrame(columns=["run", "metric", "epoch", "value"])
    return pd.concat(parts, ignore_index=True)


def _run_colours(runs: Sequence[str]) -> dict[str, object]:
    """One colour per member (a run's first path part): its seeds share it."""
    members = sorted({run.split("/")[0] for run in runs})
    cycle = rcParams["axes.prop_cycle"].by_key()["color"]
    member_colour = {m: cycle[k % len(cycle)] for k, m in enumerate(members)}
    return {run: member_colour[run.split("/")[0]] for run in runs}


def _metric_order(metrics: Sequence[str]) -> list[str]:
    """The task metrics in the order they were logged (the tasks' order), then ``overall``."""
    tasks = [m for m in dict.fromkeys(metrics) if m != "overall"]
    return tasks + (["overall"] if "overall" in set(metrics) else [])


def curves_figure(curves: pd.DataFrame, path: str | Path, split: str = "dev") -> None:
    """One panel per metric, one line per run (``read_live_metrics``' table)."""
    _require(curves, ["run", "metric", "epoch", "value"], f"{split} curves")
    metrics = _metric_order(curves["metric"].unique())
    if not metrics:
        raise ValueError(f"{split} curves: no metrics to draw")
    colours = _run_colours(curves["run"].unique())
    fig = Figure(figsize=(4 * len(metrics), 3.5))
    axes = np.atleast_1d(fig.subplots(1, len(metrics)))
    for ax, metric in zip(axes, metrics, strict=True):
        for run, part in curves[curves["metric"] == metric].groupby("run"):
            part = part.sort_values("epoch")
            ax.plot(part["epoch"], part["value"], marker=".", color=colours[run], label=run)
        ax.set(title=f"{split} {metric}", xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].legend(fontsize="small")
    save_png(fig, path)


def train_dev_figure(train: pd.DataFrame, dev: pd.DataFrame, path: str | Path) -> None:
    """Per task, train (solid) and dev (dashed) score per epoch for every run: the gap is the
    overfitting that SMART narrows in the paper's Figure 3 (right)."""
    for name, table in (("train", train), ("dev", dev)):
        _require(table, ["run", "metric", "epoch", "value"], f"{name} curves")
    tasks = [m for m in _metric_order(train["metric"].unique()) if m != "overall"]
    if not tasks:
        raise ValueError("train curves: no train/<task metric> logged (train/sst_acc …)")
    colours = _run_colours(sorted(set(train["run"]) | set(dev["run"])))
    fig = Figure(figsize=(4 * len(tasks), 3.5))
    axes = np.atleast_1d(fig.subplots(1, len(tasks)))
    for ax, task in zip(axes, tasks, strict=True):
        for table, style in ((train, "-"), (dev, "--")):
            part = table[table["metric"] == task]
            for run, lines in part.groupby("run"):
                lines = lines.sort_values("epoch")
                ax.plot(lines["epoch"], lines["value"], style, marker=".", color=colours[run],
                        label=run if style == "-" else None)
        ax.set(title=task, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].plot([], [], "k-", label="train")
    axes[-1].plot([], [], "k--", label="dev")
    axes[-1].legend(fontsize="small")
    save_png(fig, path)


def pca_2d(x: np.ndarray) -> np.ndarray:
    """Coordinates of the rows of ``x`` on its first two principal axes: with X₀ = X − mean
    and X₀ = U S Vᵀ, the points are X₀ V[:, :2]. Each axis points where its largest loading is
    positive, so the picture does not flip between runs."""
    x = np.asarray(x, np.float64)
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    axes = vt[:2]
    axes *= np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(1)])[:, None]
    points = centred @ axes.T
    return np.pad(points, ((0, 0), (0, 2 - points.shape[1])))  # 1-D data: a zero second axis


@torch.inference_mode()
def sentence_embeddings(model_dir: str | Path, sst: pd.DataFrame, batch_size: int = 64,
                        device: str = "cpu") -> np.ndarray:
    """The pooled SST sentence vectors (what the SST head reads) of a saved member, one row per
    row of ``sst`` (an SST table: ``id``, ``sentence``)."""
    model = MultitaskModel.from_pretrained(model_dir, device)
    if "sst" not in model.tasks:
        raise ValueError(f"{model_dir}: tasks {model.tasks} have no sst head")
    cfg, tokenizer = model.cfg, model.tokenizer
    data = tokenize_task("sst", sst, tokenizer, cfg.max_length, cfg.pair_encoding)
    vectors = np.zeros((len(data), model.backbone.config.hidden_size), dtype=np.float32)
    for index in batch_indices(data.lengths(), batch_size, rng=None, group_by_length=True):
        batch = collate(data, index, tokenizer.pad_token_id).to(torch.device(device))
        vectors[index] = model.embed(batch.inputs[0]).float().cpu().numpy()
    return vectors


def embedding_figure(points: np.ndarray, labels: np.ndarray, path: str | Path,
                     title: str = "SST dev sentence embeddings (PCA)") -> None:
    """2-D points coloured by gold SST label (paper Figure 5, left)."""
    points, labels = np.asarray(points), np.asarray(labels)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) != len(labels):
        raise ValueError(f"embedding figure: expected (n, 2) points and n labels, got "
                         f"{points.shape} and {labels.shape}")
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.subplots()
    for k, name in enumerate(SST_CLASSES):
        mask = labels == k
        ax.scatter(points[mask, 0], points[mask, 1], s=6, alpha=0.6, label=f"{k} {name}",
                   color=colormaps["viridis"](k / (len(SST_CLASSES) - 1)))
    ax.set(xlabel="PC 1", ylabel="PC 2", title=title)
    ax.legend(markerscale=3, fontsize="small")
    save_png(fig, path)


def pcgrad_steps_figure(table: pd.DataFrame, path: str | Path, window: int = 50) -> None:
    """PCGrad per step (``PCGrad.step_table`` with an ``epoch`` column), smoothed over
    ``window`` steps: left, the share of steps in which g_i was projected onto g_j's normal
    plane, stacked over the ordered pairs i→j; right, the mean % change of ‖g_i^PC‖ those
    projections caused (paper Section 6.1)."""
    pairs = [c.removeprefix("projections/") for c in table if c.startswith("projections/")]
    if not pairs:
        raise ValueError("PCGrad steps: no projections/<i>_to_<j> columns")
    _require(table, ["step", *(f"norm_change_pct/{p}" for p in pairs)], "PCGrad steps")
    table = table.sort_values("step").reset_index(drop=True)

    def rolling(prefix: str, how: str) -> np.ndarray:
        columns = table[[f"{prefix}/{p}" for p in pairs]].rolling(window, min_periods=1)
        return getattr(columns, how)().to_numpy()

    share = rolling("projections", "mean")
    counts, changes = rolling("projections", "sum"), rolling("norm_change_pct", "sum")
    mean_change = np.divide(changes, counts, out=np.full_like(changes, np.nan), where=counts > 0)
    labels = [p.replace("_to_", " → ") for p in pairs]
    fig = Figure(figsize=(11, 3.8))
    left, right = fig.subplots(1, 2)
    left.stackplot(table["step"], share.T, labels=labels, alpha=0.8)
    left.set(xlabel="step", ylabel=f"projections per step ({window}-step mean)",
             title="PCGrad projections of g_i onto g_j's normal plane")
    left.legend(fontsize="small", loc="upper right")
    for k, label in enumerate(labels):
        right.plot(table["step"], mean_change[:, k], label=label)
    right.set(xlabel="step", ylabel="% change of ‖g_i‖",
              title=f"norm change per projection ({window}-step mean)")
    epochs = sorted(table["epoch"].unique()) if "epoch" in table else []
    if epochs:
        fig.suptitle(f"epoch {', '.join(str(e) for e in epochs)}")
    save_png(fig, path)


def report_figure(rows: list[dict], path: str | Path) -> None:
    """One panel per task, one horizontal bar per experiment row (top to bottom in report
    order, named on the axis, so any number of rows stays readable): the mean over seeds with
    ±sd error bars (none when ``sd`` is None), n at the bar's end, and the paper's value as a
    black diamond. A row is ``{"row": name, "sst": {"mean", "sd", "n"}, "qqp": …, "sts": …,
    "paper": {"sst": float | None, …}}``; a task a row lacks (or whose mean is None) gets no
    bar."""
    if not rows:
        raise ValueError("report figure: no rows")
    for r, row in enumerate(rows):
        if "row" not in row:
            raise ValueError(f"report figure: row {r} has no 'row' name: {row}")
    tasks = list(TASK_TITLES)
    fig = Figure(figsize=(4.0 * len(tasks) + 2.5, 1.2 + 0.32 * len(rows)))
    axes = np.atleast_1d(fig.subplots(1, len(tasks), sharey=True))
    y = np.arange(len(rows))[::-1]
    paper_drawn = False
    for ax, task in zip(axes, tasks, strict=True):
        for r, row in enumerate(rows):
            cell = row.get(task) or {}
            if cell.get("mean") is not None:
                ax.barh(y[r], cell["mean"], 0.7, color="tab:blue", xerr=cell.get("sd"),
                        capsize=2)
                end = cell["mean"] + (cell.get("sd") or 0)
                ax.annotate(f"n={cell.get('n')}", (end, y[r]), va="center", fontsize="x-small",
                            xytext=(3, 0), textcoords="offset points")
            paper = (row.get("paper") or {}).get(task)
            if paper is not None:
                ax.plot(paper, y[r], "kD", markersize=4,
                        label=None if paper_drawn else "paper")
                paper_drawn = True
        ax.set(title=TASK_TITLES[task], xlabel="dev score (mean ± sd over seeds)")
    axes[0].set_yticks(y)
    axes[0].set_yticklabels([row["row"] for row in rows], fontsize="small")
    if paper_drawn:
        fig.legend(fontsize="small", loc="lower right")
    save_png(fig, path)
