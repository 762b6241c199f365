"""SMART regularizer: closed-form values on linear models, gradients, dropout, autocast.

The hand computations replay the noise draw documented by ``smart_regularizer``
(√σ²·randn per embedding tensor, in order, from the given generator) and follow the paper's
Algorithm 1 with T = 1 in float64 numpy, independently of the implementation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.config import ModelConfig, SmartConfig
from pipeline.model import MultitaskModel
from pipeline.smart import (
    eval_mode,
    smart_regularizer,
    smoothness_loss,
    symmetric_kl_bernoulli,
    symmetric_kl_softmax,
)

SEED = 5


def replay_noise(shapes, masks, noise_var):
    gen = torch.Generator().manual_seed(SEED)
    return [torch.randn(s, generator=gen, dtype=torch.float64).numpy() * np.sqrt(noise_var)
            * m[..., None] for s, m in zip(shapes, masks, strict=True)]


def example_norm(parts, norm):
    if norm == "inf":
        return max(np.abs(p).max() for p in parts)
    return np.sqrt(sum((p**2).sum() for p in parts))


def step_and_project(deltas, grads, cfg):
    """One normalised ascent step and projection, example by example."""
    out = [np.empty_like(d) for d in deltas]
    for i in range(deltas[0].shape[0]):
        g = [gk[i] for gk in grads]
        d = [dk[i] + cfg.step_size * gk / example_norm(g, cfg.norm)
             for dk, gk in zip(deltas, g, strict=True)]
        if cfg.norm == "inf":
            d = [np.clip(dk, -cfg.epsilon, cfg.epsilon) for dk in d]
        else:
            d = [dk * min(1.0, cfg.epsilon / example_norm(d, "l2")) for dk in d]
        for k, dk in enumerate(d):
            out[k][i] = dk
    return out


def tensors(arrays):
    return [torch.tensor(a) for a in arrays]


# Two separately encoded sequences of lengths 4 and 3; the last example is padded.
SHAPES = [(3, 4, 2), (3, 3, 2)]
MASKS = [np.array([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]], dtype=float),
         np.array([[1, 1, 1], [1, 1, 1], [1, 0, 0]], dtype=float)]


@pytest.mark.parametrize("clean_grad", [True, False])
@pytest.mark.parametrize("norm", ["inf", "l2"])
def test_linear_regression_matches_hand_computation(norm, clean_grad):
    """f(x) = Σ w1·x1 + Σ w2·x2 + b with MSE: ℓ_i = (w·δ_i)², ∇_δ ℓ_i = 2(w·δ_i)·w (masked)."""
    rng = np.random.default_rng(0)
    w = [rng.normal(size=s[1:]) for s in SHAPES]
    x = [rng.normal(size=s) for s in SHAPES]
    cfg = SmartConfig(lambda_=1.0, epsilon=0.05, step_size=0.04, noise_var=0.02**2, steps=1,
                      norm=norm, clean_grad=clean_grad)

    def dot(ws, ds):
        return sum((wk * dk).sum(axis=(1, 2)) for wk, dk in zip(ws, ds, strict=True))

    delta0 = replay_noise(SHAPES, MASKS, cfg.noise_var)
    grads = [2 * dot(w, delta0)[:, None, None] * wk * mk[..., None]
             for wk, mk in zip(w, MASKS, strict=True)]
    delta1 = step_and_project(delta0, grads, cfg)
    expected = (dot(w, delta1) ** 2).mean()
    # Both f(x̃) and f(x) carry θ, δ* is a constant: ∂R/∂w_k = mean_i 2(w·δ_i)·δ_ik.
    # With f(x) a constant target only f(x̃) = w·(x + δ) + b carries θ: mean_i 2(w·δ_i)·x̃_ik.
    expected_grad = [(2 * dot(w, delta1)[:, None, None] * (dk if clean_grad else xk + dk)).mean(0)
                     for xk, dk in zip(x, delta1, strict=True)]

    weights = [torch.tensor(wk, requires_grad=True) for wk in w]
    model = nn.Module()
    result = smart_regularizer(
        lambda embeds: sum((wk * e).sum((1, 2)) for wk, e in zip(weights, embeds, strict=True))
        + 0.3,
        tensors(x), tensors(MASKS), "sts", cfg, model, torch.Generator().manual_seed(SEED))
    assert result.item() == pytest.approx(expected, rel=1e-6, abs=1e-15)
    result.backward()
    for wk, gk in zip(weights, expected_grad, strict=True):
        np.testing.assert_allclose(wk.grad.numpy(), gk, rtol=1e-6, atol=1e-15)


def test_softmax_classifier_matches_hand_computation():
    """f(x)_i = Σ_t W x_it: ∂symKL/∂z̃ = (p̃ − p) + p̃⊙(d − p̃·d), d = log p̃ − log p."""
    rng = np.random.default_rng(1)
    shape, mask = (3, 4, 2), MASKS[0]
    weight = rng.normal(size=(5, 2))
    x = rng.normal(size=shape)
    cfg = SmartConfig(lambda_=1.0, epsilon=0.05, step_size=0.04, noise_var=0.02**2, steps=1)

    def logits(e):
        return (e * mask[..., None]).sum(1) @ weight.T

    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    (delta0,) = replay_noise([shape], [mask], cfg.noise_var)
    lp_adv, lp = log_softmax(logits(x + delta0)), log_softmax(logits(x))
    p_adv, d = np.exp(lp_adv), lp_adv - lp
    dz = (p_adv - np.exp(lp)) + p_adv * (d - (p_adv * d).sum(-1, keepdims=True))
    grad = (dz @ weight)[:, None, :] * mask[..., None]
    (delta1,) = step_and_project([delta0], [grad], cfg)
    lp_adv = log_softmax(logits(x + delta1))
    expected = ((np.exp(lp_adv) - np.exp(lp)) * (lp_adv - lp)).sum(-1).mean()

    w = torch.tensor(weight)
    m = torch.tensor(mask)
    result = smart_regularizer(
        lambda embeds: (embeds[0] * m[..., None]).sum(1) @ w.T,
        [torch.tensor(x)], [m], "sst", cfg, nn.Module(), torch.Generator().manual_seed(SEED))
    assert expected > 1e-6
    assert result.item() == pytest.approx(expected, rel=1e-6)


def test_losses_match_definitions():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    p = np.exp(a) / np.exp(a).sum(-1, keepdims=True)
    q = np.exp(b) / np.exp(b).sum(-1, keepdims=True)
    kl = (p * np.log(p / q)).sum(-1) + (q * np.log(q / p)).sum(-1)
    np.testing.assert_allclose(symmetric_kl_softmax(torch.tensor(a), torch.tensor(b)).numpy(), kl,
                               rtol=1e-10)
    s, t = 1 / (1 + np.exp(-a[:, 0])), 1 / (1 + np.exp(-b[:, 0]))
    bern = (s * np.log(s / t) + (1 - s) * np.log((1 - s) / (1 - t))
            + t * np.log(t / s) + (1 - t) * np.log((1 - t) / (1 - s)))
    np.testing.assert_allclose(
        symmetric_kl_bernoulli(torch.tensor(a[:, 0]), torch.tensor(b[:, 0])).numpy(), bern,
        rtol=1e-10)
    assert smoothness_loss("sts", torch.tensor([1.0, 3.0]), torch.tensor([2.0, 0.0])).item() == 5.0
    with pytest.raises(ValueError, match="unknown task"):
        smoothness_loss("nli", torch.zeros(2), torch.zeros(2))


@pytest.mark.parametrize("task", ["sst", "qqp", "sts"])
def test_constant_function_gives_zero(task):
    x = torch.randn(2, 3, 4)
    mask = torch.ones(2, 3)
    width = 5 if task == "sst" else 1
    head = nn.Linear(4, width)
    nn.init.zeros_(head.weight)

    def depends_on_x_with_zero_weight(embeds):
        out = head(embeds[0].sum(1))
        return out if task == "sst" else out.squeeze(-1)

    def ignores_x(embeds):
        return torch.full((2, width) if task == "sst" else (2,), 0.7)

    cfg = SmartConfig(lambda_=1.0, epsilon=0.1, step_size=0.1)
    for forward in (depends_on_x_with_zero_weight, ignores_x):
        assert smart_regularizer(forward, [x], [mask], task, cfg, head).item() == 0.0


def test_mean_over_batch_does_not_depend_on_batch_size():
    """With ε ≪ η the ∞-ball step ends at δ = ±ε·sign(w) whatever the noise: ℓ_i = ε²(Σ|w|)²."""
    w = torch.tensor([[0.5, -1.0], [2.0, 0.25]], dtype=torch.float64)
    x = torch.randn(2, 2, 2, dtype=torch.float64)
    mask = torch.tensor([[1, 1], [1, 0]])
    cfg = SmartConfig(lambda_=1.0, epsilon=1e-3, step_size=1.0, noise_var=1e-12)

    def forward(embeds):
        return (embeds[0] * w).sum((1, 2))

    single = smart_regularizer(forward, [x], [mask], "sts", cfg, nn.Module())
    double = smart_regularizer(forward, [x.repeat(2, 1, 1)], [mask.repeat(2, 1)], "sts", cfg,
                               nn.Module())
    expected = 1e-6 * (3.75**2 + 1.5**2) / 2  # example 2 keeps only its first token
    assert single.item() == pytest.approx(expected, rel=1e-6)
    assert double.item() == pytest.approx(expected, rel=1e-6)


def tiny_model(tiny_bert, pair_encoding="concat"):
    torch.manual_seed(0)
    cfg = ModelConfig(backbone=str(tiny_bert), pair_encoding=pair_encoding)
    return MultitaskModel(cfg, ["sst", "qqp", "sts"])


def encodings(batch=3, width=6, vocab=40):
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(5, vocab, (batch, width), generator=gen)
    mask = torch.ones(batch, width, dtype=torch.long)
    mask[-1, -2:] = 0
    return {"input_ids": ids, "attention_mask": mask,
            "token_type_ids": torch.zeros_like(ids)}


@pytest.mark.parametrize(("task", "pair_encoding"),
                         [("sst", "concat"), ("qqp", "concat"), ("sts", "separate")])
def test_gradient_reaches_model_parameters(tiny_bert, task, pair_encoding):
    model = tiny_model(tiny_bert, pair_encoding)
    inputs = [encodings()] * (2 if pair_encoding == "separate" and task != "sst" else 1)
    embeds = model.input_embeddings(inputs)
    cfg = SmartConfig(lambda_=1.0, epsilon=1e-2, step_size=1e-2)
    reg = smart_regularizer(lambda e: model(task, inputs, inputs_embeds=e), embeds,
                            [enc["attention_mask"] for enc in inputs], task, cfg, model)
    # The ascent differentiates only δ: no parameter has a gradient yet.
    assert all(p.grad is None for p in model.parameters())
    assert reg.item() > 0
    reg.backward()
    params = dict(model.named_parameters())
    for name in ("backbone.embeddings.word_embeddings.weight",
                 "backbone.encoder.layer.0.attention.self.query.weight",
                 f"heads.{task}.1.weight"):
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name


def test_dropout_off_inside_and_flags_restored(tiny_bert):
    model = tiny_model(tiny_bert)
    model.train()
    model.heads["qqp"].eval()  # a mixed state must come back exactly
    before = {name: m.training for name, m in model.named_modules()}
    inputs = [encodings()]
    masks = [inputs[0]["attention_mask"]]
    cfg = SmartConfig(lambda_=1.0, epsilon=1e-2, step_size=1e-2)

    def forward(embeds):
        assert not any(m.training for m in model.modules())
        return model("sst", inputs, inputs_embeds=embeds)

    values = [smart_regularizer(forward, model.input_embeddings(inputs), masks, "sst", cfg, model,
                                torch.Generator().manual_seed(1)).item() for _ in range(2)]
    # No dropout anywhere in R_s: the same noise gives the same value.
    assert values[0] == values[1]
    assert {name: m.training for name, m in model.named_modules()} == before

    def failing(embeds):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        smart_regularizer(failing, model.input_embeddings(inputs), masks, "sst", cfg, model)
    assert {name: m.training for name, m in model.named_modules()} == before
    with pytest.raises(KeyError), eval_mode(model):
        raise KeyError
    assert {name: m.training for name, m in model.named_modules()} == before


def test_bf16_autocast_gives_fp32_regularizer(tiny_bert):
    model = tiny_model(tiny_bert)
    inputs = [encodings()]
    cfg = SmartConfig(lambda_=1.0, epsilon=1e-2, step_size=1e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        embeds = model.input_embeddings(inputs)
        reg = smart_regularizer(lambda e: model("sst", inputs, inputs_embeds=e), embeds,
                                [inputs[0]["attention_mask"]], "sst", cfg, model)
    assert reg.dtype == torch.float32 and torch.isfinite(reg)
    reg.backward()
    assert model.backbone.embeddings.word_embeddings.weight.grad is not None
