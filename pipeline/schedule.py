"""Task schedules: which task's batch each training step of an epoch takes.

An epoch is ``batches_per_epoch`` steps, or, when that is null, one full pass: Σ_i N_i steps,
N_i being the number of batches in task i's training data.

- ``round_robin``: tasks in turn. In a full pass each task takes exactly N_i steps (a task that
  runs out drops out of the rotation); with a fixed length the rotation simply repeats.
- ``random``: every step draws a task uniformly.
- ``annealed`` (Stickland & Murray 2019, "BERT and PALs"): every step draws task i with
  p_i ∝ N_i^α, α = 1 − 0.8·(e − 1)/(E − 1) for epoch e of E, so sampling starts proportional
  to dataset size and ends close to uniform.
- ``custom`` (BEST-FiT §4.4): for the first ``custom.epochs`` epochs only ``custom.task`` is
  trained, each epoch one full pass over a seeded ``custom.fraction`` of its data whatever
  ``batches_per_epoch`` says (the phase is meant to cover that fraction, at the cost of a longer
  run); then round-robin.
"""

from __future__ import annotations

import numpy as np

from pipeline.config import TrainConfig


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
    return [tasks[i] for i in rng.choice(len(tasks), size=total, p=probs)]
