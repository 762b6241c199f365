"""PCGrad against a brute-force reference: Yu et al.'s Algorithm 1 projecting vectors one by one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.config import ModelConfig
from pipeline.model import MultitaskModel
from pipeline.pcgrad import PCGrad, pcgrad_coefficients


def reference_pcgrad(grads: np.ndarray, orders: list[list[int]]):
    """Algorithm 1: g_i^PC projected onto the normal plane of each conflicting original g_j."""
    projected, changes = [], []
    for i, g in enumerate(grads):
        pc = g.copy()
        for j in orders[i]:
            dot = pc @ grads[j]
            if dot < 0:
                before = np.linalg.norm(pc)
                pc = pc - dot / (grads[j] @ grads[j]) * grads[j]
                changes.append((i, j, 100 * (np.linalg.norm(pc) - before) / before))
        projected.append(pc)
    return np.array(projected), changes


def replay_orders(k: int, seed: int, steps: int = 1) -> list[list[list[int]]]:
    """The documented draw: per step, per task i in accumulation order, randperm of the others."""
    gen = torch.Generator().manual_seed(seed)
    all_orders = []
    for _ in range(steps):
        orders = []
        for i in range(k):
            others = [j for j in range(k) if j != i]
            orders.append([others[m] for m in torch.randperm(k - 1, generator=gen).tolist()])
        all_orders.append(orders)
    return all_orders


@pytest.mark.parametrize("trial", range(20))
def test_gram_projection_matches_brute_force(trial):
    rng = np.random.default_rng(trial)
    k, dim = int(rng.integers(2, 6)), int(rng.choice([3, 8, 200]))
    grads = rng.normal(size=(k, dim)) * rng.uniform(0.1, 10, size=(k, 1))
    orders = [list(rng.permutation([j for j in range(k) if j != i])) for i in range(k)]
    expected, expected_changes = reference_pcgrad(grads, orders)
    coef, changes = pcgrad_coefficients(grads @ grads.T, orders)
    np.testing.assert_allclose(coef @ grads, expected, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(coef.sum(0) @ grads, expected.sum(0), rtol=1e-6, atol=1e-9)
    assert [(i, j) for i, j, _ in changes] == [(i, j) for i, j, _ in expected_changes]
    np.testing.assert_allclose([c for *_, c in changes], [c for *_, c in expected_changes],
                               rtol=1e-6, atol=1e-9)


def test_non_conflicting_gradients_pass_unchanged():
    grads = np.array([[1.0, 2.0, 0.0], [0.5, -0.1, 3.0]])  # dot = 0.3 > 0
    coef, changes = pcgrad_coefficients(grads @ grads.T, [[1], [0]])
    np.testing.assert_array_equal(coef, np.eye(2))
    assert changes == []


def test_conflicting_pair_follows_the_formula():
    # g1 = (1, 0), g2 = (−2, 1): g1·g2 = −2, so g1^PC = g1 + (2/5)·g2 = (0.2, 0.4) and
    # g2^PC = g2 + 2·g1 = (0, 1); each loses its component along the other.
    grads = np.array([[1.0, 0.0], [-2.0, 1.0]])
    coef, changes = pcgrad_coefficients(grads @ grads.T, [[1], [0]])
    np.testing.assert_allclose(coef @ grads, [[0.2, 0.4], [0.0, 1.0]], atol=1e-15)
    np.testing.assert_allclose(coef.sum(0) @ grads, [0.2, 1.4], atol=1e-15)
    # ‖g1^PC‖ = √0.2 from 1; ‖g2^PC‖ = 1 from √5.
    np.testing.assert_allclose([c for *_, c in changes],
                               [100 * (np.sqrt(0.2) - 1), 100 * (1 / np.sqrt(5) - 1)])
    # Exactly opposite gradients cancel entirely.
    opposite = np.array([[1.0, -2.0, 3.0], [-1.0, 2.0, -3.0]])
    coef, _ = pcgrad_coefficients(opposite @ opposite.T, [[1], [0]])
    np.testing.assert_allclose(coef @ opposite, np.zeros((2, 3)), atol=1e-15)


class TinyMultitask(nn.Module):
    """A shared trunk, one head per task, and a shared layer no task uses."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
        self.only_sst = nn.Linear(3, 3)  # shared, but only SST's loss reaches it
        self.unused = nn.Linear(3, 3)
        self.heads = nn.ModuleDict({t: nn.Linear(3, 1) for t in ("sst", "qqp", "sts")})
        self.double()

    def loss(self, task: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x)
        if task == "sst":
            h = self.only_sst(h)
        return (self.heads[task](h).squeeze(-1) - y).pow(2).mean()

    def shared(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("heads.")]


def task_batches(step: int):
    gen = torch.Generator().manual_seed(100 + step)
    return {t: (torch.randn(5, 4, generator=gen, dtype=torch.float64),
                torch.randn(5, generator=gen, dtype=torch.float64) * (k + 1))
            for k, t in enumerate(("sst", "qqp", "sts"))}


def test_pcgrad_step_matches_reference_on_a_model():
    tasks = ["sst", "qqp", "sts"]
    model = TinyMultitask()
    shared = model.shared()
    pc = PCGrad(shared, tasks, torch.Generator().manual_seed(7))
    orders = replay_orders(3, seed=7, steps=2)
    counts = np.zeros((3, 3))
    for step in range(2):
        batches = task_batches(step)
        # Independent per-task gradients (zeros where a task does not reach a parameter).
        per_task, head_grads = [], {}
        for t in tasks:
            loss = model.loss(t, *batches[t])
            grads = torch.autograd.grad(loss, shared + list(model.heads[t].parameters()),
                                        allow_unused=True, materialize_grads=True)
            per_task.append(torch.cat([g.reshape(-1) for g in grads[:len(shared)]]).numpy())
            head_grads[t] = grads[len(shared):]
        expected, changes = reference_pcgrad(np.array(per_task), orders[step])
        for i, j, _ in changes:
            counts[i, j] += 1

        model.zero_grad(set_to_none=True)
        for t in tasks:
            pc.accumulate(t, model.loss(t, *batches[t]))
        pc.combine()
        got = torch.cat([p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(),
                         dtype=p.dtype) for p in shared]).numpy()
        np.testing.assert_allclose(got, expected.sum(0), rtol=1e-6, atol=1e-12)
        assert model.unused.weight.grad is None and model.unused.bias.grad is None
        for t in tasks:
            for p, g in zip(model.heads[t].parameters(), head_grads[t], strict=True):
                torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=0)
    assert counts.sum() > 0  # the reference did project something
    stats = pc.epoch_stats()
    assert stats["pcgrad/steps"] == 2
    for a, i in enumerate(tasks):
        for b, j in enumerate(tasks):
            if a != b:
                assert stats[f"pcgrad/projections/{i}_to_{j}"] == counts[a, b]
    assert all(v == 0 for k, v in pc.epoch_stats().items())  # reset after read


def test_buffers_are_one_flat_copy_per_task():
    model = TinyMultitask()
    shared = model.shared()
    pc = PCGrad(shared, ["sst", "qqp", "sts"], torch.Generator().manual_seed(0))
    batches = task_batches(0)
    for t in ("qqp", "sts"):  # a step may hold fewer tasks
        pc.accumulate(t, model.loss(t, *batches[t]))
    pc.combine()
    numel = sum(p.numel() for p in shared)
    assert pc.buffer_bytes() == 2 * numel * 8  # fp64 model: fp64 buffers
    for t in ("sst", "qqp", "sts"):
        pc.accumulate(t, model.loss(t, *batches[t]))
    pc.combine()
    assert pc.buffer_bytes() == 3 * numel * 8
    with pytest.raises(RuntimeError, match="no task loss"):
        pc.combine()
    with pytest.raises(ValueError, match="unknown task"):
        pc.accumulate("nli", model.loss("sst", *batches["sst"]))


def test_state_dict_replays_the_same_orders():
    model = TinyMultitask()
    tasks = ["sst", "qqp", "sts"]
    pc = PCGrad(model.shared(), tasks, torch.Generator().manual_seed(3))

    def step(pc: PCGrad) -> np.ndarray:
        model.zero_grad(set_to_none=True)
        batches = task_batches(1)
        for t in tasks:
            pc.accumulate(t, model.loss(t, *batches[t]))
        pc.combine()
        return torch.cat([p.grad.reshape(-1) for p in model.trunk.parameters()]).numpy()

    step(pc)
    state = pc.state_dict()
    first = step(pc)
    resumed = PCGrad(model.shared(), tasks, torch.Generator().manual_seed(99))
    resumed.load_state_dict(state)
    np.testing.assert_array_equal(step(resumed), first)


def test_multitask_model_under_bf16_autocast(tiny_bert):
    torch.manual_seed(0)
    tasks = ["sst", "qqp", "sts"]
    model = MultitaskModel(ModelConfig(backbone=str(tiny_bert)), tasks)
    pc = PCGrad(model.shared_parameters(), tasks, torch.Generator().manual_seed(0))
    ids = torch.randint(5, 40, (2, 5), generator=torch.Generator().manual_seed(1))
    enc = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
           "token_type_ids": torch.zeros_like(ids)}
    targets = {"sst": torch.tensor([0, 4]), "qqp": torch.tensor([0.0, 1.0]),
               "sts": torch.tensor([1.0, 4.0])}
    for t in tasks:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(t, [enc]).float()
        loss = (nn.functional.cross_entropy(out, targets[t]) if t == "sst"
                else (out - targets[t]).pow(2).mean())
        pc.accumulate(t, loss)
        assert all(p.grad is None for p in model.shared_parameters())
    pc.combine()
    grads = [p.grad for p in model.shared_parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert pc.buffer_bytes() == 3 * 4 * sum(p.numel() for p in model.shared_parameters())
    assert all(model.heads[t][1].weight.grad is not None for t in tasks)


def test_step_table_records_each_step_by_hand():
    # Loss_t = g_t · w, so each task's gradient is exactly the g_t chosen per step.
    w = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    pc = PCGrad([w], ["sst", "qqp"], torch.Generator().manual_seed(0))
    steps = [((1.0, 0.0), (-2.0, 1.0)),   # g·g' = −2: both projected (see the formula test)
             ((1.0, 2.0), (0.5, -0.1)),   # g·g' = 0.3: neither
             ((1.0, 0.0), (-1.0, 0.0))]   # opposite: each projection removes the whole vector
    for g_sst, g_qqp in steps:
        w.grad = None  # the optimiser's zero_grad
        pc.accumulate("sst", torch.dot(torch.tensor(g_sst, dtype=torch.float64), w))
        pc.accumulate("qqp", torch.dot(torch.tensor(g_qqp, dtype=torch.float64), w))
        pc.combine()
    table = pc.step_table()
    assert list(table["step"]) == [1, 2, 3]
    assert list(table["projections/sst_to_qqp"]) == [1, 0, 1]
    assert list(table["projections/qqp_to_sst"]) == [1, 0, 1]
    # ‖g_sst^PC‖: 1 → √0.2; ‖g_qqp^PC‖: √5 → 1; then 1 → 0 for both.
    np.testing.assert_allclose(table["norm_change_pct/sst_to_qqp"],
                               [100 * (np.sqrt(0.2) - 1), 0, -100], atol=1e-12)
    np.testing.assert_allclose(table["norm_change_pct/qqp_to_sst"],
                               [100 * (1 / np.sqrt(5) - 1), 0, -100], atol=1e-12)
    stats = pc.epoch_stats()  # the epoch sums the counts and averages the changes
    assert stats["pcgrad/steps"] == 3 and stats["pcgrad/projections/sst_to_qqp"] == 2
    assert stats["pcgrad/norm_change_pct/sst_to_qqp"] == pytest.approx(
        (100 * (np.sqrt(0.2) - 1) - 100) / 2)
    assert pc.step_table().empty


def test_an_overflowed_step_gives_non_finite_grads_and_no_statistics():
    # fp16: a gradient that overflowed makes the Gram matrix non-finite; the step's grads are
    # NaN (the loss scaler then skips it) and it is not one of the statistics' steps.
    model = TinyMultitask()
    shared = model.shared()
    pc = PCGrad(shared, ["sst", "qqp", "sts"], torch.Generator().manual_seed(0))
    batches = task_batches(0)
    for t in ("sst", "qqp", "sts"):
        pc.accumulate(t, model.loss(t, *batches[t]) * (float("inf") if t == "qqp" else 1.0))
    pc.combine()
    assert all(not torch.isfinite(p.grad).all() for p in shared if p.grad is not None)
    assert pc.epoch_stats()["pcgrad/steps"] == 0.0
    model.zero_grad(set_to_none=True)  # as the optimiser's step does
    for t in ("sst", "qqp", "sts"):
        pc.accumulate(t, model.loss(t, *batches[t]))
    pc.combine()
    assert all(torch.isfinite(p.grad).all() for p in shared if p.grad is not None)
    assert pc.epoch_stats()["pcgrad/steps"] == 1.0
