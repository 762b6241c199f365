"""TorchJD's aggregators and loss weightings over bestfit's per-task gradient rows, each against
TorchJD called directly on the same Jacobian (float64), with hand-computed statistics."""

from __future__ import annotations

import typing
from pathlib import Path

import numpy as np
import pytest
import torch
import torchjd.aggregation as jd
import torchjd.scalarization as jds
import yaml
from conftest import PARAMS_YAML
from torch import nn

from pipeline.aggregation import AggregatedGradients
from pipeline.checkpoint import load_state, save_state
from pipeline.config import Aggregator, ConfigError, LossWeighting, MtlConfig, load_params
from pipeline.distributed import SINGLE
from pipeline.mtl_methods import AGGREGATORS, WEIGHTINGS, build_aggregator, check_mtl
from pipeline.pcgrad import PCGrad

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["sst", "qqp", "sts"]
# Options for the aggregators with a required argument.
OPTIONS = {"cagrad": {"c": 0.5}, "fairgrad": {"alpha": 1.0}}


class Toy(nn.Module):
    """A shared linear encoder and one linear head per task, in float64."""

    def __init__(self, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.shared = nn.Linear(4, 3).double()
        self.heads = nn.ModuleDict({t: nn.Linear(3, 1).double() for t in TASKS})
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))

    def losses(self, step: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(100 + step)
        out = {}
        for k, task in enumerate(TASKS):
            x = torch.randn(5, 4, generator=gen, dtype=torch.float64)
            y = torch.randn(5, 1, generator=gen, dtype=torch.float64) * (k + 1)
            out[task] = ((self.heads[task](torch.tanh(self.shared(x))) - y) ** 2).mean()
        return out

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.shared.parameters())


def jacobian(model: Toy, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The rows ∇_shared L_task (flattened, TASKS order) and the losses, computed directly."""
    losses = model.losses(step)
    rows = []
    for task in TASKS:
        grads = torch.autograd.grad(losses[task], model.shared_parameters(), retain_graph=True)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows), {t: v.detach() for t, v in losses.items()}


def bestfit_step(model: Toy, combiner: PCGrad, step: int) -> torch.Tensor:
    """One step through the combiner; the shared parameters' combined gradient, flattened."""
    for p in model.parameters():
        p.grad = None
    for task, loss in model.losses(step).items():
        combiner.accumulate(task, loss, loss)
    combiner.combine()
    grad = torch.cat([p.grad.reshape(-1) for p in model.shared_parameters()])
    if isinstance(combiner, AggregatedGradients) and combiner.needs_losses_after:
        # FAMO: the same batches' losses after the update (here, a fixed small step)
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p.sub_(1e-2 * p.grad)
        combiner.update_after(model.losses(step), SINGLE)
    return grad


def aggregated(model: Toy, mtl: MtlConfig, seed: int = 7) -> AggregatedGradients:
    return AggregatedGradients(model.shared_parameters(), TASKS,
                               torch.Generator().manual_seed(seed), mtl,
                               heads={t: list(model.heads[t].parameters()) for t in TASKS})


def seeded_reference(aggregator: jd.Aggregator, matrix: torch.Tensor,
                     generator: torch.Generator) -> torch.Tensor:
    """TorchJD's aggregator on J, its random draws seeded as bestfit documents (one seed per
    step from the generator every rank seeds alike)."""
    seed = int(torch.randint(2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return aggregator(matrix)


def test_the_wired_names_are_the_params_choices():
    assert set(AGGREGATORS) == set(typing.get_args(Aggregator))
    assert set(WEIGHTINGS) == set(typing.get_args(LossWeighting)) - {"fixed"}


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_each_aggregator_equals_torchjd_called_on_the_same_rows(name):
    model = Toy()
    mtl = MtlConfig(aggregator=name, aggregator_options=OPTIONS.get(name, {}))
    combiner = aggregated(model, mtl)
    reference = build_aggregator(mtl, len(TASKS))  # stateful ones step alike
    generator = torch.Generator().manual_seed(7)
    for step in range(3):
        matrix, _ = jacobian(model, step)
        expected = seeded_reference(reference, matrix, generator)
        got = bestfit_step(model, combiner, step)
        # Both in float64; the Gramian bestfit passes is its own dot products (summation order
        # differs from J Jᵀ by ~1e-16 relative), which solvers (MGDA's Frank-Wolfe, cvxpy's
        # interior point, FairGrad's root finding) carry to their own tolerance, ~1e-8.
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-6, atol=1e-8)
        assert not torch.equal(got, matrix.sum(0)) or name == "sum"


def test_torchjd_pcgrad_equals_bestfit_pcgrad_with_two_tasks():
    # With two tasks the order of the others is fixed, so Yu et al.'s algorithm has one result.
    model = Toy(seed=3)
    two = TASKS[:2]
    ours = PCGrad(model.shared_parameters(), two, torch.Generator().manual_seed(1))
    theirs = AggregatedGradients(model.shared_parameters(), two, torch.Generator().manual_seed(1),
                                 MtlConfig(aggregator="pcgrad"))
    projected = 0
    for step in range(6):
        results = []
        for combiner in (ours, theirs):
            for p in model.parameters():
                p.grad = None
            losses = model.losses(step)
            for task in two:
                combiner.accumulate(task, losses[task])
            combiner.combine()
            results.append(torch.cat([p.grad.reshape(-1) for p in model.shared_parameters()]))
        np.testing.assert_allclose(results[0].numpy(), results[1].numpy(), rtol=1e-12,
                                   atol=1e-14)
        projected += int(ours.epoch_stats()["pcgrad/projections/sst_to_qqp"])
        theirs.epoch_stats()
    assert projected > 0  # the steps include conflicting ones: the projection was exercised


def test_statistics_by_hand():
    # g_sst = (1, 0), g_qqp = (-1, 1): G = [[1, -1], [-1, 2]]; mean: w = (½, ½), d = (0, ½).
    shared = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    combiner = AggregatedGradients([shared], ["sst", "qqp"], torch.Generator().manual_seed(0),
                                   MtlConfig(aggregator="mean"))
    for task, grad in (("sst", [1.0, 0.0]), ("qqp", [-1.0, 1.0])):
        shared.grad = torch.tensor(grad, dtype=torch.float64)
        combiner.accumulate(task, None)
    combiner.combine()
    np.testing.assert_allclose(shared.grad.numpy(), [0.0, 0.5], atol=1e-15)
    table = combiner.step_table()
    assert list(table["weight/sst"]) == [0.5] and list(table["weight/qqp"]) == [0.5]
    assert table["cosine/sst"][0] == pytest.approx(0.0, abs=1e-15)
    assert table["cosine/qqp"][0] == pytest.approx(0.5 / (2**0.5 * 0.5))
    assert list(table["conflicts/sst_with_qqp"]) == [1]
    assert table["norm_change_pct"][0] == pytest.approx(-50.0)  # ‖d‖ ½ against ‖Σ g‖ 1
    stats = combiner.epoch_stats()
    assert stats["mtl/steps"] == 1 and stats["mtl/conflicts/sst_with_qqp"] == 1
    assert combiner.step_table().empty


def test_uncertainty_weighting_is_the_gradient_of_torchjd_uw():
    model, twin = Toy(seed=5), Toy(seed=5)
    combiner = aggregated(model, MtlConfig(weighting="uw"))
    with torch.no_grad():
        combiner.scalarizer.log_var.copy_(torch.tensor([0.3, -0.2, 0.1]))
    uw = jds.UW(3)
    with torch.no_grad():
        uw.log_var.copy_(torch.tensor([0.3, -0.2, 0.1]))
    got = bestfit_step(model, combiner, 0)
    losses = twin.losses(0)
    uw(torch.stack([losses[t] for t in TASKS]).float()).backward()
    want = torch.cat([p.grad.reshape(-1) for p in twin.shared_parameters()])
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6)  # UW's log_var is fp32
    for task in TASKS:
        for mine, theirs in zip(model.heads[task].parameters(), twin.heads[task].parameters(),
                                strict=True):
            np.testing.assert_allclose(mine.grad.numpy(), theirs.grad.numpy(), rtol=1e-6)
    np.testing.assert_allclose(combiner.scalarizer.log_var.grad.numpy(), uw.log_var.grad.numpy(),
                               rtol=1e-6)
    lam = combiner.step_table()[[f"loss_scale/{t}" for t in TASKS]].to_numpy()[0]
    np.testing.assert_allclose(lam, 0.5 * np.exp(-np.array([0.3, -0.2, 0.1])), rtol=1e-6)


def test_dwa_weights_follow_the_epoch_loss_ratios():
    model = Toy(seed=2)
    combiner = aggregated(model, MtlConfig(weighting="dwa", weighting_options={"temperature": 2}))
    dwa = jds.DWA(temperature=2.0)
    for epoch in range(4):
        for step in range(2):
            matrix, losses = jacobian(model, 10 * epoch + step)
            vector = torch.stack([losses[t] for t in TASKS])
            lam = torch.autograd.functional.jacobian(lambda v: dwa(v), vector)
            got = bestfit_step(model, combiner, 10 * epoch + step)
            np.testing.assert_allclose(got.numpy(), (lam @ matrix).numpy(), rtol=1e-10)
            if epoch < 2:
                np.testing.assert_allclose(lam.numpy(), 1.0)  # no two epochs of history yet
        combiner.end_epoch()
        dwa.step()
    assert not np.allclose(lam.numpy(), 1.0)  # the later epochs weigh the tasks apart


def test_famo_weights_and_updates_as_torchjd_famo():
    model, twin = Toy(seed=8), Toy(seed=8)
    combiner = aggregated(model, MtlConfig(weighting="famo", weighting_options={"lr": 0.1}))
    famo = jds.FAMO(3, lr=0.1)
    assert combiner.scalarizer_parameters() == []  # FAMO steps its logits itself
    for step in range(4):
        matrix, losses = jacobian(twin, step)
        vector = torch.stack([losses[t] for t in TASKS])
        lam = torch.autograd.functional.jacobian(lambda v: famo(v), vector)
        got = bestfit_step(model, combiner, step)
        np.testing.assert_allclose(got.numpy(), (lam @ matrix).numpy(), rtol=1e-6)
        with torch.no_grad():  # the twin takes the same update, then FAMO reads its losses
            for p, q in zip(model.parameters(), twin.parameters(), strict=True):
                q.copy_(p)
        famo.update(torch.stack([twin.losses(step)[t] for t in TASKS]).detach())
        np.testing.assert_allclose(combiner.scalarizer._w.detach().numpy(),
                                   famo._w.detach().numpy(), rtol=1e-6, atol=1e-9)
    assert not np.allclose(famo._w.detach().numpy(), 0.0)  # the logits moved


@pytest.mark.parametrize("mtl", [
    MtlConfig(aggregator="gradvac"),
    MtlConfig(aggregator="random", weighting="dwa"),
    MtlConfig(aggregator="upgrad", weighting="uw"),
    MtlConfig(aggregator="mgda", weighting="famo"),
], ids=["gradvac", "random+dwa", "upgrad+uw", "mgda+famo"])
def test_state_round_trips_through_a_checkpoint_and_replays(mtl, tmp_path):
    model = Toy(seed=4)
    straight = aggregated(model, mtl)
    for step in range(3):
        bestfit_step(model, straight, step)
        straight.end_epoch()
    save_state({"mtl": straight.state_dict(), "model": model.state_dict()}, tmp_path / "ckpt")
    later = [bestfit_step(model, straight, step).clone() for step in range(3, 6)]
    state = load_state(tmp_path / "ckpt")
    model.load_state_dict(state["model"])  # FAMO's steps moved it
    resumed = aggregated(model, mtl, seed=99)  # the generator's state comes from the file
    resumed.load_state_dict(state["mtl"])
    for step, expected in zip(range(3, 6), later, strict=True):
        assert torch.equal(bestfit_step(model, resumed, step), expected)
    assert resumed.step_table().equals(straight.step_table())


@pytest.mark.parametrize(("mtl", "message"), [
    (MtlConfig(aggregator="upgrad", aggregator_options={"beta": 1}), "unknown option(s) ['beta']"),
    (MtlConfig(aggregator="cagrad"), "needs option(s) ['c']"),
    (MtlConfig(aggregator_options={"c": 1}), "given without an aggregator"),
    (MtlConfig(weighting="dwa", weighting_options={"temp": 1}), "known: ['temperature']"),
    (MtlConfig(weighting_options={"temperature": 1}), "given with weighting: fixed"),
])
def test_config_errors_name_the_key(mtl, message):
    with pytest.raises(ConfigError, match="models.m.mtl") as caught:
        check_mtl(mtl, "models.m.mtl")
    assert message in str(caught.value)


def test_a_missing_optional_dependency_is_a_clear_error(monkeypatch):
    import torchjd._mixins

    real = torchjd._mixins.find_spec
    monkeypatch.setattr(torchjd._mixins, "find_spec",
                        lambda name: None if name == "cvxpy" else real(name))
    with pytest.raises(ConfigError, match=r"cagrad needs .*cvxpy.*\.\[mtl\]"):
        build_aggregator(MtlConfig(aggregator="cagrad", aggregator_options={"c": 0.5}), 3)


def test_params_refuse_pcgrad_beside_an_aggregator(tmp_path):
    raw = yaml.safe_load(PARAMS_YAML.read_text())
    raw["pcgrad"] = {"enabled": True}
    raw["mtl"] = {"aggregator": "upgrad"}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="pcgrad.enabled and mtl"):
        load_params(path)
