"""Gradient aggregators and loss weightings from TorchJD over the per-task gradient rows.

A per-task-gradient step (one batch of every task) leaves, after the one all-reduce of
:class:`pipeline.pcgrad.PCGrad`'s buffers, the rows g_1 … g_K of the Jacobian J of the task
losses with respect to the shared parameters, and their K×K Gramian G = J Jᵀ (float64, host).
TorchJD's weighted aggregators (Quinton & Rey 2024, "Jacobian Descent for Multi-Objective
Optimization", and the methods it implements) map J, or G alone, to weights w; the shared
parameters' update is d = wᵀ J = Σ_j w_j g_j, written without materialising J again. So every
aggregator runs on every rank from the same reduced rows (deterministically: a random one draws
from a generator seeded alike on every rank), under data parallelism, gradient accumulation and
fp16/bf16, as PCGrad does.

A loss weighting ("scalarization": uncertainty weighting, Kendall et al. 2018, CVPR; DWA, Liu et
al. 2019, CVPR; FAMO, Liu et al. 2023, NeurIPS) is a scalar S(L_1, …, L_K) of the task
losses. Its gradient is Σ_j (∂S/∂L_j) ∇L_j: the rows are scaled by λ_j = ∂S/∂L_j (autograd
on the step's summed, reduced task losses), J' = diag(λ) J, G' = diag(λ) G diag(λ), before
the aggregator (``sum`` when none is chosen); each head's gradient is scaled by its task's λ,
and S's own parameters (UW's log-variances) get their gradient from the same S. FAMO learns
its task logits itself, from the step's losses recomputed on the same batches after the update
(``update_after``).

Statistics (the paper's Figure 4, for any aggregator), from G and w: per step, the weight of
each task (``weight/<task>``), the cosine between the update d and each task's gradient
(``cosine/<task>``; a task whose cosine is < 0 sees its loss rise to first order), whether two
tasks' gradients conflict (``conflicts/<i>_with_<j>``: g_i·g_j < 0) and the % change of ‖d‖
against the plain sum's ‖Σ g_j‖ (``norm_change_pct``).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from pipeline.config import MtlConfig
from pipeline.distributed import all_reduce_sum
from pipeline.mtl_methods import (
    LEARNED_WITH_MODEL,
    SHAPE_ONLY,
    build_aggregator,
    build_weighting,
    row_weighting,
)
from pipeline.pcgrad import PCGrad

MTL_STEPS_FILE = "mtl_steps.tsv"  # step_table()'s file in a member's DVCLive dir

def _plain(value):
    """A weighting's state attribute as checkpoint-safe data (tensors, numbers, lists), or
    raise TypeError for anything else."""
    if value is None or isinstance(value, (bool, int, float, str, Tensor)):
        return value
    if isinstance(value, torch.optim.Optimizer):  # FAMO's own Adam over its logits
        return {"optimizer": type(value).__name__, "state": value.state_dict()}
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, torch.dtype):  # GradVac's state key (tasks, dtype)
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, tuple):
        return {"tuple": [_plain(v) for v in value]}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    raise TypeError(type(value).__name__)


def _unplain(value):
    if isinstance(value, dict) and set(value) == {"dtype"}:
        return getattr(torch, value["dtype"])
    if isinstance(value, dict) and set(value) == {"tuple"}:
        return tuple(_unplain(v) for v in value["tuple"])
    if isinstance(value, list):
        return [_unplain(v) for v in value]
    return value


def module_state(module: nn.Module) -> dict:
    """A TorchJD weighting's or scalarizer's whole state: its parameters and buffers, and the
    running statistics it keeps as plain attributes (DWA's epoch averages, GradVac's targets),
    so that a resumed run replays it."""
    state = {"module": module.state_dict(), "attrs": {}}
    machinery = set(vars(nn.Module()))
    for sub_name, sub in module.named_modules():
        for key, value in vars(sub).items():
            if key in machinery:
                continue  # nn.Module's own (parameters and buffers are in state_dict)
            try:
                state["attrs"][f"{sub_name}|{key}"] = _plain(value)
            except TypeError:
                continue  # configuration (a projector object), rebuilt from params
    return state


def load_module_state(module: nn.Module, state: dict) -> None:
    subs = dict(module.named_modules())
    for name, value in state["module"].items():
        sub_name, _, key = name.rpartition(".")
        sub = subs[sub_name]
        if key in sub._parameters:
            with torch.no_grad():
                sub._parameters[key].copy_(value)
        else:  # a buffer registered as None until the first step (GradVac's φ̂) is not in a
            # fresh module's state_dict, so load_state_dict would refuse it
            sub._buffers[key] = value.to(next(iter(sub.buffers()), value).device)
    for path, value in state["attrs"].items():
        sub_name, key = path.split("|", 1)
        current = getattr(subs[sub_name], key, None)
        if isinstance(current, np.ndarray) and isinstance(value, Tensor):
            value = value.numpy()
        elif isinstance(current, Tensor) and isinstance(value, Tensor):
            value = value.to(current.device)
        if isinstance(current, nn.Parameter):
            continue  # in state_dict
        if isinstance(value, dict) and set(value) == {"optimizer", "state"}:
            groups = value["state"]["param_groups"]
            optimizer = getattr(torch.optim, value["optimizer"])(  # options: from the state
                list(subs[sub_name].parameters()), lr=groups[0]["lr"])
            optimizer.load_state_dict(value["state"])
            setattr(subs[sub_name], key, optimizer)
            continue
        setattr(subs[sub_name], key, _unplain(value))


class AggregatedGradients(PCGrad):
    """PCGrad's per-task buffers and single all-reduce, combined by a TorchJD aggregator and,
    optionally, a loss weighting; see the module docstring. ``heads`` maps each task to its
    head's parameters (their gradient is scaled by the task's λ under a weighting)."""

    def __init__(self, shared: list[nn.Parameter], tasks: list[str], generator: torch.Generator,
                 mtl: MtlConfig, heads: dict[str, list[nn.Parameter]] | None = None):
        super().__init__(shared, tasks, generator)
        self.name = mtl.aggregator or "sum"
        self.aggregator = build_aggregator(mtl, len(tasks))
        self.kind, self.weighting = row_weighting(self.aggregator)
        self.scalarizer = build_weighting(mtl, len(tasks))
        self.weighting_name = mtl.weighting
        self.heads = heads or {}
        self.grad_scale = 1.0  # the fp16 loss scale the rows carry (set per step)
        self._weights_log: list[np.ndarray] = []
        self._cosines: list[np.ndarray] = []
        self._conflicts: list[np.ndarray] = []
        self._norm_change: list[float] = []
        self._lambdas: list[np.ndarray] = []

    def scalarizer_parameters(self) -> list[nn.Parameter]:
        """The weighting's parameters the model's optimiser learns (UW's log-variances)."""
        if self.scalarizer is None or self.weighting_name not in LEARNED_WITH_MODEL:
            return []
        return list(self.scalarizer.parameters())

    @property
    def needs_losses_after(self) -> bool:
        """FAMO: the step's task losses again, after the update, on the same batches."""
        return callable(getattr(self.scalarizer, "update", None))

    def update_after(self, losses: dict[str, Tensor], world) -> None:
        """Hand FAMO the step's task losses recomputed after the update (summed over the
        data-parallel ranks, as the losses before it were)."""
        after = torch.stack([losses[t].detach().to(self._dtype) for t in self.tasks])
        if world.distributed:
            all_reduce_sum(after, world)
        self.scalarizer.update(after.double().cpu())

    def loss_scales(self, names: list[str]) -> np.ndarray:
        """λ_j = ∂S/∂L_j at the step's (reduced) task losses; S's own parameters get their
        gradient (times the rows' loss scale, which the optimiser step unscales)."""
        if self.scalarizer is None:
            return np.ones(len(names))
        index = [self.tasks.index(t) for t in names]
        losses = self._losses[index].detach().double().cpu().requires_grad_(True)
        if len(names) != len(self.tasks):
            raise RuntimeError(f"mtl.weighting needs every task's loss in each step; this step "
                               f"has {names} of {self.tasks}")
        own = self.scalarizer_parameters()
        with torch.enable_grad():
            value = self.scalarizer(losses.to(own[0].dtype) if own else losses)
            grads = torch.autograd.grad(value, [losses, *own], allow_unused=True)
        for param, grad in zip(own, grads[1:], strict=True):
            if grad is not None:
                param.grad = (grad * self.grad_scale).to(param.dtype)
        return grads[0].numpy()

    def _matrix(self, names: list[str], buffers: list[Tensor]) -> Tensor:
        """J, K×P: a view of the flat buffer when the step's tasks are its rows in order."""
        numel = sum(self._sizes)
        if names == self._rows[:len(names)]:
            return self._flat[:len(names) * numel].view(len(names), numel)
        return torch.stack(buffers)

    def _draw(self, stat: Tensor) -> Tensor:
        """The weighting on ``stat``, its randomness drawn from the generator every rank seeds
        alike (TorchJD's random weightings use torch's global RNG)."""
        seed = int(torch.randint(2**62, (1,), generator=self.generator))
        devices = [stat.device] if stat.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return self.weighting(stat)

    def _step_weights(self, gram: np.ndarray, names: list[str], buffers: list[Tensor]
                      ) -> list[float]:
        lam = self.loss_scales(names)
        scaled = gram * np.outer(lam, lam)  # the Gramian of diag(λ) J
        if self.kind == "gramian":
            stat = torch.from_numpy(scaled)
        elif isinstance(self.weighting, SHAPE_ONLY):
            stat = torch.zeros((len(names), 0), dtype=torch.float64)
        else:  # a weighting reading J itself: the rows (a view when in order), scaled by λ
            stat = self._matrix(names, buffers)
            if not np.all(lam == 1.0):
                stat = stat * torch.from_numpy(lam).to(stat)[:, None]
        weights = self._draw(stat).detach().double().cpu().numpy()
        self._record(gram, names, weights * lam, lam)
        for task, factor in zip(names, lam, strict=True):
            if factor != 1.0:
                for param in self.heads.get(task, []):
                    if param.grad is not None:
                        param.grad.mul_(float(factor))
        return (weights * lam).tolist()  # d = wᵀ diag(λ) J

    def _record(self, gram: np.ndarray, names: list[str], w: np.ndarray, lam: np.ndarray
                ) -> None:
        k, index = len(self.tasks), [self.tasks.index(t) for t in names]
        weights, cosines, conflicts = np.full(k, np.nan), np.full(k, np.nan), np.zeros((k, k))
        lams = np.full(k, np.nan)
        norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))
        d_dot = gram @ w  # g_i · d
        d_norm = math.sqrt(max(w @ gram @ w, 0.0))
        sum_norm = math.sqrt(max(gram.sum(), 0.0))
        for a, i in enumerate(index):
            weights[i], lams[i] = w[a], lam[a]
            cosines[i] = d_dot[a] / (norms[a] * d_norm) if norms[a] * d_norm > 0 else 0.0
            for b, j in enumerate(index):
                conflicts[i, j] = float(gram[a, b] < 0) if a != b else 0.0
        self._weights_log.append(weights)
        self._lambdas.append(lams)
        self._cosines.append(cosines)
        self._conflicts.append(conflicts)
        self._norm_change.append(100.0 * (d_norm - sum_norm) / sum_norm if sum_norm > 0 else 0.0)

    def _pair_names(self) -> list[tuple[int, int, str]]:
        return [(a, b, f"{i}_with_{j}") for a, i in enumerate(self.tasks)
                for b, j in enumerate(self.tasks) if a < b]

    def step_table(self) -> pd.DataFrame:
        """One row per step since the last ``epoch_stats`` (``step`` from 1)."""
        table: dict[str, object] = {"step": np.arange(1, len(self._weights_log) + 1)}
        for a, task in enumerate(self.tasks):
            table[f"weight/{task}"] = [w[a] for w in self._weights_log]
            table[f"cosine/{task}"] = [c[a] for c in self._cosines]
            if self.scalarizer is not None:
                table[f"loss_scale/{task}"] = [x[a] for x in self._lambdas]
        for a, b, pair in self._pair_names():
            table[f"conflicts/{pair}"] = [int(c[a, b]) for c in self._conflicts]
        table["norm_change_pct"] = list(self._norm_change)
        return pd.DataFrame(table)

    def epoch_stats(self) -> dict[str, float]:
        """Means over the epoch's steps (conflicts: counts) under ``mtl/``; then reset."""
        table = self.step_table()
        stats: dict[str, float] = {"mtl/steps": float(len(table))}
        for column in table.columns[1:]:
            values = table[column].dropna()
            if column.startswith("conflicts/"):
                stats[f"mtl/{column}"] = float(values.sum())
            else:
                stats[f"mtl/{column}"] = float(values.mean()) if len(values) else 0.0
        self._reset_stats()
        return stats

    def _reset_stats(self) -> None:
        super()._reset_stats()
        self._weights_log, self._cosines, self._conflicts = [], [], []
        self._norm_change, self._lambdas = [], []

    def end_epoch(self) -> None:
        """A weighting's once-per-epoch update (DWA's loss history)."""
        step = getattr(self.scalarizer, "step", None)
        if callable(step):
            step()

    def state_dict(self) -> dict:
        state = {"generator": self.generator.get_state(),
                 "weighting": module_state(self.weighting),
                 "stats": {"weights": [w.tolist() for w in self._weights_log],
                           "lambdas": [x.tolist() for x in self._lambdas],
                           "cosines": [c.tolist() for c in self._cosines],
                           "conflicts": [c.tolist() for c in self._conflicts],
                           "norm_change": list(self._norm_change)}}
        if self.scalarizer is not None:
            state["scalarizer"] = module_state(self.scalarizer)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"].cpu())
        load_module_state(self.weighting, state["weighting"])
        if self.scalarizer is not None:
            load_module_state(self.scalarizer, state["scalarizer"])
        stats = state["stats"]
        self._weights_log = [np.array(w, dtype=float) for w in stats["weights"]]
        self._lambdas = [np.array(x, dtype=float) for x in stats["lambdas"]]
        self._cosines = [np.array(c, dtype=float) for c in stats["cosines"]]
        self._conflicts = [np.array(c, dtype=float) for c in stats["conflicts"]]
        self._norm_change = [float(x) for x in stats["norm_change"]]
