"""PCGrad: gradient surgery for multi-task learning (Yu et al. 2020, NeurIPS, "Gradient Surgery
for Multi-Task Learning", Algorithm 1).

Each step has one loss per task, from that task's own batch. For each task i, in a random order
of the other tasks j, a conflicting gradient is projected onto the normal plane of g_j:

    if g_i^PC · g_j < 0:   g_i^PC ← g_i^PC − (g_i^PC · g_j / ‖g_j‖²) · g_j

always against the other tasks' original g_j; the update is Σ_i g_i^PC. Only the shared
parameters (encoder, pooler) are projected: each head receives its own task's gradient.

Memory. ``accumulate(task, loss)`` runs that task's backward at once (its activations are freed
before the next task's forward; no retained graph, no model copy) and moves the shared
parameters' grads into one flat fp32 buffer per task (rows of one tensor, which data parallelism
sums over the ranks in one all-reduce, ``reduce``, before the projection runs on every rank).
``combine`` never materialises a g_i^PC: every g_i^PC is a linear combination
g_i − Σ_j c_ij g_j of the original gradients, and the coefficients follow from the K×K Gram
matrix G_ij = g_i·g_j alone, since g_i^PC · g_j = G_ij − Σ_k c_ik G_kj and ‖g_i^PC‖² is a
quadratic form in G. The sum Σ_i g_i^PC = Σ_j (1 − Σ_i c_ij) g_j is written straight into
the parameters' ``.grad``. Extra memory: K flat buffers over the shared parameters, nothing
else of that size. The K×K scalar work runs on the host in float64 (one device synchronisation
per step).

Statistics (the paper's Figure 4): for every ordered pair i→j, whether g_i was projected onto
g_j's normal plane (``projections/<i>_to_<j>``; ``->`` would not survive as a DVCLive file name
on every OS) and the % change of ‖g_i^PC‖ that projection caused (``norm_change_pct/<i>_to_<j>``,
always ≤ 0). ``step_table`` lists them per step, ``epoch_stats`` sums the counts and averages the
changes over the epoch (prefixed ``pcgrad/``, with ``pcgrad/steps``). Both come from the host-side
Gram matrix work, so recording them adds no device synchronisation.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from pipeline.distributed import World, all_reduce_sum

PCGRAD_STEPS_FILE = "pcgrad_steps.tsv"  # step_table()'s file in a member's DVCLive dir (Figure 4)


def pcgrad_coefficients(gram: np.ndarray, orders: list[list[int]]
                        ) -> tuple[np.ndarray, list[tuple[int, int, float]]]:
    """Project in the span of the original gradients, given only their Gram matrix.

    ``orders[i]`` is the order in which task i visits the other tasks. Returns C with
    g_i^PC = Σ_j C_ij g_j (C starts as the identity), and one (i, j, % change of ‖g_i^PC‖) per
    projection made.
    """
    k = len(gram)
    coef = np.eye(k)
    events = []
    for i in range(k):
        for j in orders[i]:
            dot = coef[i] @ gram[:, j]
            if dot < 0:
                before = math.sqrt(max(coef[i] @ gram @ coef[i], 0.0))
                coef[i, j] -= dot / gram[j, j]
                after = math.sqrt(max(coef[i] @ gram @ coef[i], 0.0))
                events.append((i, j, 100.0 * (after - before) / before))
    return coef, events


class PCGrad:
    """Gradient surgery over ``shared`` parameters; see the module docstring.

    Per step: ``accumulate(task, loss)`` once for each task's loss (right after its forward),
    then ``combine()`` before the optimiser step. A task accumulated twice in a step adds up.
    """

    def __init__(self, shared: list[nn.Parameter], tasks: list[str],
                 generator: torch.Generator):
        self.shared = list(shared)
        self.tasks = list(tasks)
        self.generator = generator
        self._sizes = [p.numel() for p in self.shared]
        self._dtype = torch.float32
        for p in self.shared:  # fp32, or fp64 for a fp64 model
            self._dtype = torch.promote_types(self._dtype, p.dtype)
        # The per-task buffers are rows of one flat tensor (one all-reduce under data
        # parallelism), followed by one "touched" flag per shared parameter and one loss value
        # per task (what a loss weighting reads); a row is added on a task's first loss.
        self._flat = torch.empty(0, dtype=self._dtype)
        self._losses = self._no_losses()
        self._rows: list[str] = []
        self._buffers: dict[str, Tensor] = {}
        self._step_tasks: list[str] = []
        self._touched = [False] * len(self.shared)
        self._reset_stats()

    def _reset_stats(self) -> None:
        # Per step since the last epoch_stats: K×K projections i→j (0 or 1), and their % change.
        self._counts: list[np.ndarray] = []
        self._changes: list[np.ndarray] = []

    def _buffer(self, task: str) -> Tensor:
        if task not in self._buffers:
            numel, device = sum(self._sizes), self.shared[0].device
            flat = torch.empty((len(self._rows) + 1) * numel + len(self.shared)
                               + len(self.tasks), dtype=self._dtype, device=device)
            flat[:len(self._rows) * numel] = self._flat[:len(self._rows) * numel]
            self._flat = flat
            self._rows.append(task)
            self._buffers = {t: flat[k * numel:(k + 1) * numel] for k, t in enumerate(self._rows)}
        return self._buffers[task]

    def accumulate(self, task: str, loss: Tensor | None, value: Tensor | None = None) -> None:
        """Backward of one task's loss; move its shared-parameter grads into its buffer.
        ``None``: this rank has no example of the task this step (its buffer counts zeros).
        ``value``: the loss unscaled (by an fp16 loss scaler), summed per task for a loss
        weighting."""
        if task not in self.tasks:
            raise ValueError(f"PCGrad: unknown task {task!r}; expected one of {self.tasks}")
        if loss is not None:
            loss.backward()
        if value is not None:
            self._losses[self.tasks.index(task)] += value.detach().to(self._dtype)
        buffer = self._buffer(task)
        first = task not in self._step_tasks
        if first:
            self._step_tasks.append(task)
        offset = 0
        for n, (p, size) in enumerate(zip(self.shared, self._sizes, strict=True)):
            part = buffer[offset:offset + size]
            offset += size
            if p.grad is None:
                if first:
                    part.zero_()
                continue
            self._touched[n] = True
            if first:
                part.copy_(p.grad.reshape(-1))
            else:
                part.add_(p.grad.reshape(-1))
            p.grad = None

    def reduce(self, world: World) -> None:
        """Sum this step's per-task gradients (and which parameters they touched) over the
        data-parallel ranks in one all-reduce, before ``combine`` projects them on every rank
        alike (the task orders come from a generator every rank seeds the same)."""
        if not world.distributed:
            return
        numel = sum(self._sizes)
        for k, task in enumerate(self._rows):
            if task not in self._step_tasks:  # another step's: sum zeros, not stale values
                self._flat[k * numel:(k + 1) * numel].zero_()
        tail = self._flat[len(self._rows) * numel:]
        flags, losses = tail[:len(self.shared)], tail[len(self.shared):]
        flags.copy_(torch.tensor([float(t) for t in self._touched]))
        losses.copy_(self._losses)
        all_reduce_sum(self._flat, world)
        self._touched = (flags > 0).tolist()
        self._losses = losses.clone()

    def combine(self) -> None:
        """Write Σ_i g_i^PC into the shared parameters' ``.grad`` and record the statistics."""
        names = self._step_tasks
        if not names:
            raise RuntimeError("PCGrad.combine: no task loss was accumulated this step")
        buffers = [self._buffers[t] for t in names]
        k = len(names)
        pairs = [(i, j) for i in range(k) for j in range(i, k)]
        dots = torch.stack([torch.dot(buffers[i], buffers[j]) for i, j in pairs]).tolist()
        gram = np.zeros((k, k))
        for (i, j), value in zip(pairs, dots, strict=True):
            gram[i, j] = gram[j, i] = value
        finite = bool(np.isfinite(gram).all())
        # An fp16 overflow (non-finite grads): the loss scaler skips this step, which is not
        # one of the statistics' steps.
        weights = self._step_weights(gram, names, buffers) if finite else [math.nan] * k
        offset = 0
        for n, (p, size) in enumerate(zip(self.shared, self._sizes, strict=True)):
            if self._touched[n]:
                grad = buffers[0][offset:offset + size] * weights[0]
                for w, buffer in zip(weights[1:], buffers[1:], strict=True):
                    grad.add_(buffer[offset:offset + size], alpha=w)
                p.grad = grad.view_as(p).to(p.dtype)
            offset += size
        self._step_tasks = []
        self._touched = [False] * len(self.shared)
        self._losses = self._no_losses()

    def _no_losses(self) -> Tensor:
        return torch.zeros(len(self.tasks), dtype=self._dtype, device=self.shared[0].device)

    def _step_weights(self, gram: np.ndarray, names: list[str], buffers: list[Tensor]
                      ) -> list[float]:
        """w with Σ_i g_i^PC = Σ_j w_j g_j (a random order of the other tasks for each task),
        recording the step's projections."""
        k = len(names)
        orders = []
        for i in range(k):
            others = [j for j in range(k) if j != i]
            perm = torch.randperm(len(others), generator=self.generator).tolist()
            orders.append([others[m] for m in perm])
        coef, events = pcgrad_coefficients(gram, orders)
        index = [self.tasks.index(t) for t in names]
        count, changes = np.zeros((len(self.tasks),) * 2), np.zeros((len(self.tasks),) * 2)
        for i, j, change in events:
            count[index[i], index[j]] += 1
            changes[index[i], index[j]] += change
        self._counts.append(count)
        self._changes.append(changes)
        return coef.sum(0).tolist()  # Σ_i g_i^PC = Σ_j (Σ_i C_ij) g_j

    def buffer_bytes(self) -> int:
        """Memory held by the per-task gradient buffers (a row added on a task's first loss)."""
        return len(self._rows) * sum(self._sizes) * self._flat.element_size()

    def _pairs(self) -> list[tuple[int, int, str]]:
        return [(a, b, f"{i}_to_{j}") for a, i in enumerate(self.tasks)
                for b, j in enumerate(self.tasks) if a != b]

    def step_table(self) -> pd.DataFrame:
        """One row per step since the last ``epoch_stats`` (``step`` from 1): per ordered pair,
        ``projections/<i>_to_<j>`` (0 or 1) and ``norm_change_pct/<i>_to_<j>`` (0 if none)."""
        table = {"step": np.arange(1, len(self._counts) + 1)}
        for a, b, pair in self._pairs():
            table[f"projections/{pair}"] = [int(c[a, b]) for c in self._counts]
            table[f"norm_change_pct/{pair}"] = [c[a, b] for c in self._changes]
        return pd.DataFrame(table)

    def epoch_stats(self) -> dict[str, float]:
        """Projection counts and mean % norm change per ordered task pair since the last call
        (0 where no projection happened), and the number of steps; then reset."""
        k = len(self.tasks)
        count, change = sum(self._counts, np.zeros((k, k))), sum(self._changes, np.zeros((k, k)))
        stats: dict[str, float] = {"pcgrad/steps": float(len(self._counts))}
        for a, b, pair in self._pairs():
            stats[f"pcgrad/projections/{pair}"] = float(count[a, b])
            stats[f"pcgrad/norm_change_pct/{pair}"] = (
                float(change[a, b] / count[a, b]) if count[a, b] else 0.0)
        self._reset_stats()
        return stats

    def state_dict(self) -> dict:
        """The generator's state and the running per-step statistics, for resumable runs."""
        return {"generator": self.generator.get_state(),
                "counts": [c.tolist() for c in self._counts],
                "changes": [c.tolist() for c in self._changes]}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"].cpu())  # a checkpoint may map it to cuda
        self._counts = [np.array(c) for c in state["counts"]]
        self._changes = [np.array(c) for c in state["changes"]]
