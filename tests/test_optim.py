"""The optimiser: AdamW's update against its formula, the weight-decay split, the fused kernel."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pipeline.config import parse_params
from pipeline.optim import build_optimizer


class TwoLayer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = torch.nn.Linear(6, 4)
        self.layer_norm = torch.nn.LayerNorm(4)
        self.out = torch.nn.Linear(4, 1)

    def forward(self, x):
        return self.out(self.layer_norm(self.dense(x)))


def member(lr: float = 1e-2, weight_decay: float = 0.1):
    base = parse_params({"models": {"m": {"tasks": ["sst", "qqp"]}}}).models["m"]
    return dataclasses.replace(base, train=dataclasses.replace(
        base.train, lr=lr, weight_decay=weight_decay, betas=[0.9, 0.98]))


def reference_adamw(params, grads_per_step, lr, betas, eps, decay_of):
    """AdamW written out: θ ← θ(1 − ηλ) − η m̂/(√v̂ + ε), m̂ = m/(1 − β1^t), v̂ = v/(1 − β2^t)."""
    params = {n: p.detach().clone() for n, p in params.items()}
    m = {n: torch.zeros_like(p) for n, p in params.items()}
    v = {n: torch.zeros_like(p) for n, p in params.items()}
    for t, grads in enumerate(grads_per_step, start=1):
        for n, g in grads.items():
            m[n] = betas[0] * m[n] + (1 - betas[0]) * g
            v[n] = betas[1] * v[n] + (1 - betas[1]) * g * g
            m_hat, v_hat = m[n] / (1 - betas[0] ** t), v[n] / (1 - betas[1] ** t)
            params[n] = params[n] * (1 - lr * decay_of(n)) - lr * m_hat / (v_hat.sqrt() + eps)
    return params


def test_adamw_matches_its_formula_with_decay_on_weight_matrices_only():
    torch.manual_seed(0)
    model = TwoLayer()
    cfg = member()
    optimizer = build_optimizer(model, cfg)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads_per_step = []
    for _ in range(4):
        optimizer.zero_grad()
        model(torch.randn(8, 6)).pow(2).mean().backward()
        grads_per_step.append({n: p.grad.clone() for n, p in model.named_parameters()})
        optimizer.step()

    def decay_of(name):  # matrices decay; biases and LayerNorm's weight do not
        return 0.1 if name in ("dense.weight", "out.weight") else 0.0

    expected = reference_adamw(start, grads_per_step, 1e-2, (0.9, 0.98), 1e-8, decay_of)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.detach(), expected[name], rtol=1e-5, atol=1e-6,
                                   msg=lambda m, name=name: f"{name}: {m}")
    # The decay is real: without it the matrices end elsewhere.
    undecayed = reference_adamw(start, grads_per_step, 1e-2, (0.9, 0.98), 1e-8, lambda n: 0.0)
    assert not torch.allclose(undecayed["dense.weight"], expected["dense.weight"], atol=1e-6)


def test_cpu_parameters_get_the_fused_kernel_and_frozen_ones_none():
    model = TwoLayer()
    model.out.weight.requires_grad_(False)
    optimizer = build_optimizer(model, member())
    assert optimizer.defaults["fused"] is True
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert id(model.out.weight) not in held and id(model.out.bias) in held
    decays = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decays[id(model.dense.weight)] == 0.1
    assert decays[id(model.layer_norm.weight)] == 0.0 and decays[id(model.dense.bias)] == 0.0


class WithBackbone(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = TwoLayer()
        self.head = torch.nn.Linear(1, 3)


def test_heads_learn_at_lr_times_head_lr_scale_through_the_schedule():
    from pipeline.optim import build_scheduler

    model = WithBackbone()
    cfg = member(lr=2e-4)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, head_lr_scale=10.0))
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, total_steps=10, warmup_ratio=0.2)
    lr_of = {id(p): g["initial_lr"] for g in optimizer.param_groups for p in g["params"]}
    assert lr_of[id(model.backbone.dense.weight)] == 2e-4
    assert lr_of[id(model.backbone.layer_norm.bias)] == 2e-4
    assert lr_of[id(model.head.weight)] == 2e-3 and lr_of[id(model.head.bias)] == 2e-3
    # Every parameter in exactly one group, with its own decay rule.
    held = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(held) == sorted(id(p) for p in model.parameters())
    decays = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decays[id(model.head.weight)] == 0.1 and decays[id(model.head.bias)] == 0.0
    for step_lr in (0.5, 1.0, 1.0, 7 / 8):  # warmup over 2 steps, then linear decay to 0 at 10
        lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
        assert lr_of[id(model.head.weight)] == pytest.approx(2e-3 * step_lr)
        assert lr_of[id(model.backbone.dense.weight)] == pytest.approx(2e-4 * step_lr)
        optimizer.step()
        scheduler.step()
