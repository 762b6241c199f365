"""Task schedules: frequencies and orders against hand-worked numbers."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from pipeline.config import CustomScheduleConfig, TrainConfig
from pipeline.schedule import (
    annealed_probabilities,
    annealing_alpha,
    data_fraction,
    epoch_tasks,
)

TASKS = ("sst", "qqp", "sts")
# Batches per task of a typical CPU-sized run (used for the annealed probabilities).
SIZES = {"sst": 534, "qqp": 844, "sts": 378}


def config(schedule: str, batches_per_epoch: int | None = None, **kwargs) -> TrainConfig:
    return replace(TrainConfig(), schedule=schedule, batches_per_epoch=batches_per_epoch, **kwargs)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def assert_frequencies(order: list[str], probs: dict[str, float], z: float = 4.0) -> None:
    """Each task's share of ``order`` lies within ``z`` binomial standard errors of ``probs``."""
    n = len(order)
    counts = Counter(order)
    assert set(counts) <= set(probs)
    for task, p in probs.items():
        se = math.sqrt(p * (1 - p) / n)
        assert abs(counts[task] / n - p) < z * se, (task, counts[task] / n, p, se)


# --- round robin -------------------------------------------------------------------------------


def test_round_robin_full_pass_order_written_out():
    order = epoch_tasks(config("round_robin"), {"sst": 3, "qqp": 5, "sts": 2}, 1, rng())
    assert order == [
        "sst", "qqp", "sts",
        "sst", "qqp", "sts",
        "sst", "qqp",
        "qqp",
        "qqp",
    ]


def test_round_robin_full_pass_counts_and_interleaving():
    order = epoch_tasks(config("round_robin"), SIZES, 1, rng())
    assert Counter(order) == SIZES
    assert len(order) == sum(SIZES.values())
    assert order[:3] == list(TASKS)
    # while every task still has batches, each window of K steps holds each task once
    smallest = min(SIZES.values())
    for start in range(0, 3 * smallest, 3):
        assert order[start:start + 3] == list(TASKS)


@pytest.mark.parametrize("steps", [1, 2, 3, 10, 11, 2000])
def test_round_robin_fixed_length(steps):
    order = epoch_tasks(config("round_robin", steps), SIZES, 1, rng())
    assert len(order) == steps
    counts = [order.count(t) for t in TASKS]
    assert max(counts) - min(counts) <= 1
    assert order[: min(steps, 3)] == list(TASKS)[: min(steps, 3)]


def test_round_robin_fixed_length_ignores_dataset_sizes():
    # a fixed-length epoch repeats the rotation even past a small task's batch count
    order = epoch_tasks(config("round_robin", 9), {"sst": 1, "qqp": 1, "sts": 1}, 1, rng())
    assert order == list(TASKS) * 3


def test_round_robin_single_task():
    assert epoch_tasks(config("round_robin"), {"sst": 4}, 1, rng()) == ["sst"] * 4


# --- random ------------------------------------------------------------------------------------


def test_random_is_uniform():
    order = epoch_tasks(config("random", 30_000), SIZES, 1, rng(3))
    assert len(order) == 30_000
    assert_frequencies(order, {t: 1 / 3 for t in TASKS})


def test_random_full_pass_length():
    order = epoch_tasks(config("random"), SIZES, 1, rng(3))
    assert len(order) == sum(SIZES.values())
    assert set(order) == set(TASKS)


@pytest.mark.parametrize("schedule", ["random", "annealed"])
def test_sampled_schedules_deterministic_for_seed(schedule):
    cfg = config(schedule, 500)
    first = epoch_tasks(cfg, SIZES, 2, rng(42))
    assert first == epoch_tasks(cfg, SIZES, 2, rng(42))
    assert first != epoch_tasks(cfg, SIZES, 2, rng(43))


# --- annealed ----------------------------------------------------------------------------------


def test_annealing_alpha_endpoints_and_middle():
    assert annealing_alpha(1, 10) == pytest.approx(1.0)
    assert annealing_alpha(10, 10) == pytest.approx(0.2)
    # e = 5 of 10: 1 − 0.8·4/9 = 0.64444…
    assert annealing_alpha(5, 10) == pytest.approx(1 - 3.2 / 9)
    # e = 2 of 3: 1 − 0.8·1/2 = 0.6
    assert annealing_alpha(2, 3) == pytest.approx(0.6)
    assert annealing_alpha(1, 1) == 1.0


# p_i ∝ N_i^α for N = (534, 844, 378), worked out separately (to 5 decimals):
#   α = 1:   (534, 844, 378) / 1756
#   α = 0.2: 534^0.2 = 3.5115, 844^0.2 = 3.8484, 378^0.2 = 3.2773, sum 10.6372
HAND_PROBABILITIES = {
    1: {"sst": 534 / 1756, "qqp": 844 / 1756, "sts": 378 / 1756},
    5: {"sst": 0.31812, "qqp": 0.42727, "sts": 0.25462},
    10: {"sst": 0.33013, "qqp": 0.36178, "sts": 0.30809},
}


def powered(alpha: float) -> dict[str, float]:
    weights = {t: math.exp(alpha * math.log(n)) for t, n in SIZES.items()}
    total = sum(weights.values())
    return {t: w / total for t, w in weights.items()}


@pytest.mark.parametrize("epoch", [1, 5, 10])
def test_annealed_probabilities(epoch):
    probs = annealed_probabilities(SIZES, epoch, 10)
    alpha = 1 - 0.8 * (epoch - 1) / 9
    for task in TASKS:
        assert probs[task] == pytest.approx(HAND_PROBABILITIES[epoch][task], abs=1e-5)
        assert probs[task] == pytest.approx(powered(alpha)[task], rel=1e-9)
    assert sum(probs.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("epoch", [1, 5, 10])
def test_annealed_empirical_frequencies(epoch):
    order = epoch_tasks(config("annealed", 30_000, epochs=10), SIZES, epoch, rng(epoch))
    assert len(order) == 30_000
    assert_frequencies(order, HAND_PROBABILITIES[epoch])


def test_annealed_full_pass_length():
    order = epoch_tasks(config("annealed", epochs=10), SIZES, 3, rng(0))
    assert len(order) == sum(SIZES.values())


def test_sampling_weights_reweigh_the_random_and_annealed_draws():
    # random: (1, 1, 1) · (2, 1, 0.5) → (2, 1, 0.5) / 3.5
    order = epoch_tasks(config("random", 30_000, sampling_weights={"sst": 2.0, "sts": 0.5}),
                        SIZES, 1, rng(5))
    assert_frequencies(order, {"sst": 2 / 3.5, "qqp": 1 / 3.5, "sts": 0.5 / 3.5})
    # annealed, epoch 1 (α = 1): (534, 844, 378) · (1, 0.5, 2) → (534, 422, 756) / 1712
    order = epoch_tasks(config("annealed", 30_000, epochs=10,
                               sampling_weights={"qqp": 0.5, "sts": 2.0}), SIZES, 1, rng(6))
    assert_frequencies(order, {"sst": 534 / 1712, "qqp": 422 / 1712, "sts": 756 / 1712})


def test_no_sampling_weights_draw_exactly_as_before():
    # Unit weights renormalise the same probabilities: the same draws, step for step.
    plain = epoch_tasks(config("annealed", 2_000, epochs=3), SIZES, 2, rng(7))
    ones = epoch_tasks(config("annealed", 2_000, epochs=3,
                              sampling_weights=dict.fromkeys(TASKS, 1.0)), SIZES, 2, rng(7))
    assert plain == ones


# --- custom (BEST-FiT: QQP first) --------------------------------------------------------------


def custom_config(batches_per_epoch: int | None = None) -> TrainConfig:
    return config(
        "custom",
        batches_per_epoch,
        epochs=5,
        custom=CustomScheduleConfig(task="qqp", fraction=0.8, epochs=2),
    )


def test_custom_first_epochs_only_custom_task_full_pass():
    cfg = custom_config()
    for epoch in (1, 2):
        assert epoch_tasks(cfg, SIZES, epoch, rng()) == ["qqp"] * SIZES["qqp"]


def test_custom_first_epochs_ignore_batches_per_epoch():
    # The QQP-only phase covers its fraction in full, shorter or longer than a fixed epoch.
    for steps in (100, SIZES["qqp"] * 3):
        for epoch in (1, 2):
            assert epoch_tasks(custom_config(steps), SIZES, epoch, rng()) == ["qqp"] * SIZES["qqp"]
        assert len(epoch_tasks(custom_config(steps), SIZES, 3, rng())) == steps


def test_custom_later_epochs_are_round_robin():
    small = {"sst": 3, "qqp": 5, "sts": 2}
    for epoch in (3, 5):
        order = epoch_tasks(custom_config(), small, epoch, rng())
        assert order == ["sst", "qqp", "sts"] * 2 + ["sst", "qqp", "qqp", "qqp"]
        assert epoch_tasks(custom_config(10), small, epoch, rng()) == list(TASKS) * 3 + ["sst"]


def test_custom_data_fraction():
    cfg = custom_config()
    assert data_fraction(cfg, "qqp", 1) == 0.8
    assert data_fraction(cfg, "qqp", 2) == 0.8
    assert data_fraction(cfg, "qqp", 3) == 1.0
    for task in ("sst", "sts"):
        for epoch in (1, 2, 3):
            assert data_fraction(cfg, task, epoch) == 1.0


@pytest.mark.parametrize("schedule", ["round_robin", "random", "annealed"])
def test_data_fraction_is_one_without_custom_schedule(schedule):
    for task in TASKS:
        assert data_fraction(config(schedule), task, 1) == 1.0


def test_unknown_schedule_raises():
    with pytest.raises(ValueError, match="bogus"):
        epoch_tasks(config("bogus"), SIZES, 1, rng())
