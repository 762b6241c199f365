"""Task schedules: which task's batch each training step of an epoch takes.

An epoch is ``batches_per_epoch`` steps, or, when that is null, one full pass: Σ_i N_i steps,
N_i being the number of batches in task i's training data.

- ``round_robin``: tasks in turn. In a full pass each task takes exactly N_i steps (a task that
  runs out drops out of the rotation); with a fixed length the rotation simply repeats.
- ``random``: every step draws a task uniformly.
- ``annealed`` (Stickland & Murray 2019, "BERT and PALs"): every step draws task i with
  p_i ∝ N_i^α, α = 1 − 0.8·(e − 1)/(E − 1) for epoch e of E, so sampling starts proportional
  to dataset size and ends close to uniform.
- ``train.sampling_weights`` w_i (default 1) reweigh the draws of ``random`` and ``annealed``:
  p_i ∝ w_i · p_i, renormalised (jiant's and MT-DNN's fixed task mixing weights).
- ``custom`` (BEST-FiT §4.4): for the first ``custom.epochs`` epochs only ``custom.task`` is
  trained, each epoch one full pass over a seeded ``custom.fraction`` of its data whatever
  ``batches_per_epoch`` says (the phase is meant to cover that fraction, at the cost of a longer
  run); then round-robin.

``plan_epochs`` draws every epoch's steps and training subsets up front from the seed, so the LR
schedule knows the run's length and a resumed run replays exactly the epochs it missed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipeline.config import MemberConfig, TrainConfig

if TYPE_CHECKING:
    from pipeline.batching import TokenizedTask


def annealing_alpha(epoch: int, epochs: int) -> float:
    """α = 1 − 0.8(e − 1)/(E − 1), with e counted from 1; a single epoch keeps α = 1."""
    if epochs <= 1:
        return 1.0
    return 1.0 - 0.8 * (epoch - 1) / (epochs - 1)


def annealed_probabilities(batches_per_task: dict[str, int], epoch: int, epochs: int
                           ) -> dict[str, float]:
    alpha = annealing_alpha(epoch, epochs)
    weights = {task: float(n) ** alpha for task, n in batches_per_task.items()}
    total = sum(weights.values())
    return {task: w / total for task, w in weights.items()}


def _round_robin(batches_per_task: dict[str, int], steps: int | None) -> list[str]:
    tasks = list(batches_per_task)
    if steps is not None:
        return [tasks[i % len(tasks)] for i in range(steps)]
    left = dict(batches_per_task)
    order: list[str] = []
    while any(left.values()):
        for task in tasks:
            if left[task]:
                order.append(task)
                left[task] -= 1
    return order


def data_fraction(cfg: TrainConfig, task: str, epoch: int) -> float:
    """Fraction of ``task``'s training data used in ``epoch`` (1-based)."""
    if cfg.schedule == "custom" and task == cfg.custom.task and epoch <= cfg.custom.epochs:
        return cfg.custom.fraction
    return 1.0


def epoch_tasks(cfg: TrainConfig, batches_per_task: dict[str, int], epoch: int,
                rng: np.random.Generator) -> list[str]:
    """The task of every step of ``epoch`` (1-based) for a full pass of ``batches_per_task``."""
    steps = cfg.batches_per_epoch
    if cfg.schedule == "custom":
        if epoch <= cfg.custom.epochs:
            return [cfg.custom.task] * batches_per_task[cfg.custom.task]
        return _round_robin(batches_per_task, steps)
    if cfg.schedule == "round_robin":
        return _round_robin(batches_per_task, steps)
    total = steps if steps is not None else sum(batches_per_task.values())
    tasks = list(batches_per_task)
    if cfg.schedule == "random":
        probs = np.full(len(tasks), 1.0 / len(tasks))
    elif cfg.schedule == "annealed":
        table = annealed_probabilities(batches_per_task, epoch, cfg.epochs)
        probs = np.array([table[t] for t in tasks])
    else:
        raise ValueError(f"unknown schedule {cfg.schedule!r}")
    if cfg.sampling_weights:
        probs = probs * np.array([cfg.sampling_weights.get(t, 1.0) for t in tasks])
        probs = probs / probs.sum()
    return [tasks[i] for i in rng.choice(len(tasks), size=total, p=probs)]


@dataclass
class EpochPlan:
    """Per epoch: the task of every step and the training subset of every task."""

    tasks: list[list[str]]
    subsets: list[dict[str, np.ndarray]]

    @property
    def total_steps(self) -> int:
        return sum(len(t) for t in self.tasks)


def plan_epochs(member: MemberConfig, train: dict[str, TokenizedTask]) -> EpochPlan:
    """Draw every epoch's schedule up front from the seed, so the LR schedule knows its length
    and a resumed run replays exactly the epochs it missed."""
    cfg = member.train
    tasks, subsets = [], []
    for epoch in range(1, cfg.epochs + 1):
        subset = {}
        for k, task in enumerate(train):
            n = len(train[task])
            keep = max(1, math.ceil(n * data_fraction(cfg, task, epoch)))
            order = np.random.default_rng([cfg.seed, k]).permutation(n)  # same subset each epoch
            subset[task] = np.sort(order[:keep])
        batches = {task: math.ceil(len(subset[task]) / cfg.batch_size) for task in train}
        steps = epoch_tasks(cfg, batches, epoch, np.random.default_rng([cfg.seed, epoch]))
        if member.per_task_step:
            # A per-task-gradient step (PCGrad, mtl) takes one batch of every task active in
            # this epoch: as many examples per epoch as the one-task steps it replaces.
            active = sorted(set(steps), key=list(train).index)
            steps = [",".join(active)] * max(1, len(steps) // len(active))
        tasks.append(steps)
        subsets.append(subset)
    return EpochPlan(tasks, subsets)
