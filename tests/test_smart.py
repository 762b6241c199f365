"""SMART regularizer: closed-form values on linear models, gradients, dropout, autocast.

The hand computations replay the noise draw documented by ``smart_regularizer`` (std·randn per
embedding tensor, in order, from the given generator) and follow, with T = 1 in float64 numpy
and independently of the implementation, Jiang et al.'s Algorithm 1 (``project``) or the step of
archinetai/smart-pytorch, which the BEST-FiT paper ran (``normalize``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import ModelConfig, SmartConfig
from pipeline.losses import task_loss
from pipeline.model import MultitaskModel
from pipeline.smart import (
    eval_mode,
    perturbable,
    recorded_outputs,
    replaced_outputs,
    smart_regularizer,
    smoothness_loss,
    symmetric_kl_bernoulli,
    symmetric_kl_softmax,
)

SEED = 5


def replay_noise(shapes, masks, std):
    gen = torch.Generator().manual_seed(SEED)
    return [torch.randn(s, generator=gen, dtype=torch.float64).numpy() * std
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


def normalized_step(deltas, grads, cfg):
    """smart-pytorch's step, token by token: s = δ + η·g, δ ← s / (‖s‖ + ε)."""
    out = [np.empty_like(d) for d in deltas]
    for k, (dk, gk) in enumerate(zip(deltas, grads, strict=True)):
        for i in range(dk.shape[0]):
            for t in range(dk.shape[1]):
                s = dk[i, t] + cfg.step_size * gk[i, t]
                norm = np.abs(s).max() if cfg.norm == "inf" else np.sqrt((s**2).sum())
                out[k][i, t] = s / (norm + cfg.epsilon)
    return out


def tensors(arrays):
    return [torch.tensor(a) for a in arrays]


def dot(ws, ds):
    """Σ_k Σ_t,d w_k ⊙ δ_k per example."""
    return sum((wk * dk).sum(axis=(1, 2)) for wk, dk in zip(ws, ds, strict=True))


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
    cfg = SmartConfig(lambda_=1.0, perturbation="project", epsilon=0.05, step_size=0.04,
                      noise_var=0.02**2, steps=1, norm=norm, clean_grad=clean_grad)
    delta0 = replay_noise(SHAPES, MASKS, np.sqrt(cfg.noise_var))
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
    cfg = SmartConfig(lambda_=1.0, perturbation="project", epsilon=0.05, step_size=0.04,
                      noise_var=0.02**2, steps=1)

    def logits(e):
        return (e * mask[..., None]).sum(1) @ weight.T

    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    (delta0,) = replay_noise([shape], [mask], np.sqrt(cfg.noise_var))
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


@pytest.mark.parametrize("perturbation", ["normalize", "project"])
@pytest.mark.parametrize("task", ["sst", "qqp", "sts"])
def test_constant_function_gives_zero(task, perturbation):
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

    cfg = SmartConfig(lambda_=1.0, perturbation=perturbation, epsilon=0.1, step_size=0.1)
    for forward in (depends_on_x_with_zero_weight, ignores_x):
        assert smart_regularizer(forward, [x], [mask], task, cfg, head,
                                 output=forward([x])).item() == 0.0


def test_mean_over_batch_does_not_depend_on_batch_size():
    """With ε ≪ η the ∞-ball step ends at δ = ±ε·sign(w) whatever the noise: ℓ_i = ε²(Σ|w|)²."""
    w = torch.tensor([[0.5, -1.0], [2.0, 0.25]], dtype=torch.float64)
    x = torch.randn(2, 2, 2, dtype=torch.float64)
    mask = torch.tensor([[1, 1], [1, 0]])
    cfg = SmartConfig(lambda_=1.0, perturbation="project", epsilon=1e-3, step_size=1.0,
                      noise_var=1e-12)

    def forward(embeds):
        return (embeds[0] * w).sum((1, 2))

    single = smart_regularizer(forward, [x], [mask], "sts", cfg, nn.Module())
    double = smart_regularizer(forward, [x.repeat(2, 1, 1)], [mask.repeat(2, 1)], "sts", cfg,
                               nn.Module())
    expected = 1e-6 * (3.75**2 + 1.5**2) / 2  # example 2 keeps only its first token
    assert single.item() == pytest.approx(expected, rel=1e-6)
    assert double.item() == pytest.approx(expected, rel=1e-6)


# --- normalize: smart-pytorch's step, which the paper ran ------------------------------------


@pytest.mark.parametrize("clean_grad", [True, False])
@pytest.mark.parametrize("norm", ["inf", "l2"])
def test_normalize_linear_regression_matches_smart_pytorch_step(norm, clean_grad):
    """f(x) = Σ w·x + b against the task pass's output f(x) + c (c: its dropout noise): with
    r_i(δ) = w·δ_i − c_i, ℓ = mean_i r_i² and ∇_δ_i ℓ = (2/B)·r_i·w (masked)."""
    rng = np.random.default_rng(3)
    w = [rng.normal(size=s[1:]) for s in SHAPES]
    x = [rng.normal(size=s) for s in SHAPES]
    c = 0.1 * rng.normal(size=SHAPES[0][0])
    cfg = SmartConfig(lambda_=1.0, perturbation="normalize", epsilon=0.01, step_size=0.5,
                      noise_var=0.02, norm=norm, clean_grad=clean_grad)
    batch = SHAPES[0][0]

    delta0 = replay_noise(SHAPES, MASKS, cfg.noise_var)  # std σ², as smart-pytorch draws it
    r0 = dot(w, delta0) - c
    grads = [2 / batch * r0[:, None, None] * wk * mk[..., None]
             for wk, mk in zip(w, MASKS, strict=True)]
    delta1 = normalized_step(delta0, grads, cfg)
    r1 = dot(w, delta1) - c
    expected = (r1**2).mean()
    # f(x̃) − target = r: ∂/∂w_k is δ_k when the target f(x) carries θ, else x̃_k = x_k + δ_k.
    expected_grad = [(2 * r1[:, None, None] * (dk if clean_grad else xk + dk)).mean(0)
                     for xk, dk in zip(x, delta1, strict=True)]

    weights = [torch.tensor(wk, requires_grad=True) for wk in w]

    def forward(embeds):
        return sum((wk * e).sum((1, 2)) for wk, e in zip(weights, embeds, strict=True)) + 0.3

    output = forward(tensors(x)) + torch.tensor(c)
    result = smart_regularizer(forward, tensors(x), tensors(MASKS), "sts", cfg, nn.Module(),
                               torch.Generator().manual_seed(SEED), output=output)
    assert expected > 1.0  # unit-norm tokens: far from the ε-ball's O(ε²)
    assert result.item() == pytest.approx(expected, rel=1e-9)
    result.backward()
    for wk, gk in zip(weights, expected_grad, strict=True):
        np.testing.assert_allclose(wk.grad.numpy(), gk, rtol=1e-9, atol=1e-12)


def test_normalize_softmax_classifier_matches_smart_pytorch_step():
    """f(x)_i = W Σ_t x_it (masked), target z = f(x) + c. With d = log p̃ − log p:
    ∂symKL/∂z̃ = (p̃ − p) + p̃⊙(d − p̃·d), ∂symKL/∂z = (p − p̃) − p⊙(d − p·d); the ascent gradient
    carries the batch mean's 1/B, and ∂R/∂W = mean_i (∂z̃_i ⊗ s̃_i + ∂z_i ⊗ s_i), s = Σ_t x_t."""
    rng = np.random.default_rng(4)
    shape, mask = (3, 4, 2), MASKS[0]
    weight = rng.normal(size=(5, 2))
    x = rng.normal(size=shape)
    c = 0.3 * rng.normal(size=(3, 5))
    cfg = SmartConfig(lambda_=1.0, perturbation="normalize", epsilon=1e-3, step_size=0.2,
                      noise_var=0.02)

    def pooled(e):
        return (e * mask[..., None]).sum(1)

    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    def grads_of_sym_kl(z_adv, z):
        lp_adv, lp = log_softmax(z_adv), log_softmax(z)
        p_adv, p, d = np.exp(lp_adv), np.exp(lp), lp_adv - lp
        return (p_adv - p + p_adv * (d - (p_adv * d).sum(-1, keepdims=True)),
                p - p_adv - p * (d - (p * d).sum(-1, keepdims=True)))

    z = pooled(x) @ weight.T + c
    (delta0,) = replay_noise([shape], [mask], cfg.noise_var)
    dz_adv, _ = grads_of_sym_kl(pooled(x + delta0) @ weight.T, z)
    (delta1,) = normalized_step([delta0], [(dz_adv @ weight)[:, None, :] * mask[..., None] / 3],
                                cfg)
    z_adv = pooled(x + delta1) @ weight.T
    lp_adv, lp = log_softmax(z_adv), log_softmax(z)
    expected = ((np.exp(lp_adv) - np.exp(lp)) * (lp_adv - lp)).sum(-1).mean()
    dz_adv, dz = grads_of_sym_kl(z_adv, z)
    expected_grad = (dz_adv.T @ pooled(x + delta1) + dz.T @ pooled(x)) / 3

    w = torch.tensor(weight, requires_grad=True)
    m = torch.tensor(mask)

    def forward(embeds):
        return (embeds[0] * m[..., None]).sum(1) @ w.T

    output = forward([torch.tensor(x)]) + torch.tensor(c)
    result = smart_regularizer(forward, [torch.tensor(x)], [m], "sst", cfg, nn.Module(),
                               torch.Generator().manual_seed(SEED), output=output)
    assert result.item() == pytest.approx(expected, rel=1e-9)
    result.backward()
    np.testing.assert_allclose(w.grad.numpy(), expected_grad, rtol=1e-9, atol=1e-12)


def test_normalize_needs_the_task_output():
    cfg = SmartConfig(lambda_=1.0)
    with pytest.raises(ValueError, match="output"):
        smart_regularizer(lambda e: e[0].sum((1, 2)), [torch.zeros(2, 3, 4)],
                          [torch.ones(2, 3)], "sts", cfg, nn.Module())


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
@pytest.mark.parametrize("perturbation", ["normalize", "project"])
@pytest.mark.parametrize("point", ["embeddings", "word_embeddings"])
def test_gradient_reaches_model_parameters(tiny_bert, task, pair_encoding, perturbation, point):
    model = tiny_model(tiny_bert, pair_encoding)
    inputs = [encodings()] * (2 if pair_encoding == "separate" and task != "sst" else 1)
    output, embeds, forward = perturbable(lambda: model(task, inputs),
                                          model.perturbation_point(point))
    cfg = SmartConfig(lambda_=1.0, perturbation=perturbation, epsilon=1e-2, step_size=1e-2)
    reg = smart_regularizer(forward, embeds, [enc["attention_mask"] for enc in inputs], task,
                            cfg, model, output=output)
    # The ascent differentiates only δ: no parameter has a gradient yet.
    assert all(p.grad is None for p in model.parameters())
    assert reg.item() > 0
    reg.backward()
    params = dict(model.named_parameters())
    for name in ("backbone.embeddings.word_embeddings.weight",
                 "backbone.encoder.layer.0.attention.self.query.weight",
                 f"heads.{task}.1.weight"):
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name


@pytest.mark.parametrize("perturbation", ["normalize", "project"])
def test_dropout_off_inside_and_flags_restored(tiny_bert, perturbation):
    model = tiny_model(tiny_bert)
    model.train()
    model.heads["qqp"].eval()  # a mixed state must come back exactly
    before = {name: m.training for name, m in model.named_modules()}
    inputs = [encodings()]
    masks = [inputs[0]["attention_mask"]]
    cfg = SmartConfig(lambda_=1.0, perturbation=perturbation, epsilon=1e-2, step_size=1e-2)
    # The task loss's output, dropout on: the clean target under normalize, unused by project.
    output, embeds, replaced = perturbable(lambda: model("sst", inputs),
                                           model.perturbation_point("embeddings"))
    output, embeds = output.detach(), [e.detach() for e in embeds]

    def forward(perturbed):
        assert not any(m.training for m in model.modules())
        return replaced(perturbed)

    values = [smart_regularizer(forward, embeds, masks, "sst", cfg, model,
                                torch.Generator().manual_seed(1), output=output).item()
              for _ in range(2)]
    # No dropout in R_s's own passes: the same noise gives the same value.
    assert values[0] == values[1]
    assert {name: m.training for name, m in model.named_modules()} == before

    def failing(embeds):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        smart_regularizer(failing, embeds, masks, "sst", cfg, model, output=output)
    assert {name: m.training for name, m in model.named_modules()} == before
    with pytest.raises(KeyError), eval_mode(model):
        raise KeyError
    assert {name: m.training for name, m in model.named_modules()} == before


@pytest.mark.parametrize("perturbation", ["normalize", "project"])
def test_bf16_autocast_gives_fp32_regularizer(tiny_bert, perturbation):
    model = tiny_model(tiny_bert)
    inputs = [encodings()]
    cfg = SmartConfig(lambda_=1.0, perturbation=perturbation, epsilon=1e-2, step_size=1e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output, embeds, forward = perturbable(lambda: model("sst", inputs),
                                              model.perturbation_point("embeddings"))
        reg = smart_regularizer(forward, embeds, [inputs[0]["attention_mask"]], "sst", cfg, model,
                                output=output)
    assert reg.dtype == torch.float32 and torch.isfinite(reg)
    reg.backward()
    assert model.backbone.embeddings.word_embeddings.weight.grad is not None


LABELS = {"sst": torch.tensor([0, 2, 4]), "qqp": torch.tensor([0.0, 1.0, 1.0]),
          "sts": torch.tensor([0.5, 2.0, 4.5])}


@pytest.mark.parametrize("task", ["sst", "qqp", "sts"])
@pytest.mark.parametrize("point", ["embeddings", "word_embeddings"])
def test_default_params_normalize_regularizes_project_does_not(tiny_bert, task, point):
    """At the paper's defaults (ε = 1e-6, η = 1e-3, σ² = 1e-5) ``project`` keeps δ in the
    ε-ball, so R_s = O(ε²) ~1e-12 of the task loss, below fp32 rounding (~1e-7); ``normalize``
    moves every token by ∞-norm ≈ 1, so R_s is a visible share of it (0.2–1.5% on this tiny
    BERT for the classifiers, 0.1–1% on MiniLM; ~2e-4 for STS at the embeddings, whose squared
    error on an untrained head, labels 0.5–4.5 against outputs near 0, is large). 1e-5 sits
    well clear of both: 1,000× project's bound. The target is dropout-free here, so R_s
    measures the perturbation alone."""
    model = tiny_model(tiny_bert)
    model.eval()
    inputs = [encodings()]
    output, embeds, forward = perturbable(lambda: model(task, inputs),
                                          model.perturbation_point(point))
    loss = task_loss(task, output, LABELS[task], 0.0).item()
    values = {
        perturbation: smart_regularizer(
            forward, embeds, [inputs[0]["attention_mask"]], task,
            SmartConfig(lambda_=1.0, perturbation=perturbation), model,
            torch.Generator().manual_seed(0), output=output).item()
        for perturbation in ("normalize", "project")
    }
    assert values["normalize"] > 1e-5 * loss
    assert 0 <= values["project"] < 1e-8 * loss


@pytest.mark.parametrize("perturbation", ["normalize", "project"])
@pytest.mark.parametrize("point", ["embeddings", "word_embeddings"])
def test_padding_never_perturbed(tiny_bert, perturbation, point):
    """δ = x̃ − x of the final pass: zero on padding; on real tokens ∞-norm s/(s + ε) ≈ 1 per
    token (normalize) or at most ε (project)."""
    model = tiny_model(tiny_bert)
    inputs = [encodings()]
    mask = inputs[0]["attention_mask"].bool()
    output, embeds, replaced = perturbable(lambda: model("sst", inputs),
                                           model.perturbation_point(point))
    seen = []

    def forward(e):
        seen.append(e[0].detach())
        return replaced(e)

    cfg = SmartConfig(lambda_=1.0, perturbation=perturbation)
    smart_regularizer(forward, embeds, [inputs[0]["attention_mask"]], "sst", cfg, model,
                      output=output)
    delta = seen[-1] - embeds[0].detach()
    assert (delta[~mask] == 0).all()
    token_norms = delta[mask].abs().amax(-1)
    if perturbation == "normalize":
        # ‖s‖ ~ 1e-5·3 ≫ ε = 1e-6 only to ~3%: s/(‖s‖ + ε) is within that of 1.
        assert ((token_norms > 0.9) & (token_norms <= 1.0)).all()
    else:
        # (x + δ) − x in fp32 carries x's rounding, a few 1e-9 here.
        assert (token_norms <= cfg.epsilon + 2e-8).all()


# --- the perturbation point -------------------------------------------------------------------


def test_replaced_outputs_checks_count_and_shape():
    layer = nn.Linear(3, 3)
    x = torch.ones(2, 3)
    with recorded_outputs(layer) as seen:
        layer(x), layer(2 * x)
    assert [t.shape for t in seen] == [(2, 3), (2, 3)] and not layer._forward_hooks
    with replaced_outputs(layer, [torch.zeros(2, 3)]):
        assert torch.equal(layer(x), torch.zeros(2, 3))
    with pytest.raises(RuntimeError, match="call 1 .* no replacement of shape"), \
            replaced_outputs(layer, [torch.zeros(1, 3)]):
        layer(x)
    with pytest.raises(RuntimeError, match="call 2"), replaced_outputs(layer, [x]):
        layer(x), layer(x)
    with pytest.raises(RuntimeError, match="ran 1 times for 2 replacements"), \
            replaced_outputs(layer, [x, x]):
        layer(x)
    assert not layer._forward_hooks


ARCHITECTURES = {
    "bert": lambda t: t.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, intermediate_size=64),
    "distilbert": lambda t: t.DistilBertConfig(vocab_size=60, dim=32, n_layers=2, n_heads=2,
                                               hidden_dim=64),
    "roberta": lambda t: t.RobertaConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=64),
    "electra": lambda t: t.ElectraConfig(vocab_size=60, embedding_size=16, hidden_size=32,
                                         num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=64),
    "mpnet": lambda t: t.MPNetConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64),
    "albert": lambda t: t.AlbertConfig(vocab_size=60, embedding_size=16, hidden_size=32,
                                       num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=64),
}


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_embeddings_point_is_the_layer_normed_encoder_input(architecture):
    """For every BERT-family encoder bestfit builds, the ``embeddings`` point is the embedding
    layer's LayerNorm output (at init, weight 1 and bias 0: zero mean and unit variance per
    token), and replacing it with itself reproduces the forward pass."""
    import transformers

    torch.manual_seed(0)
    backbone = transformers.AutoModel.from_config(ARCHITECTURES[architecture](transformers))
    model = MultitaskModel(ModelConfig(backbone=architecture), ["sst"], backbone=backbone).eval()
    enc = {k: v for k, v in encodings(vocab=60).items()
           if k != "token_type_ids" or architecture not in ("distilbert", "mpnet")}
    with torch.no_grad():
        output, (x,), forward = perturbable(lambda: model("sst", [enc]),
                                            model.perturbation_point("embeddings"))
        assert torch.equal(forward([x]), output)
    real = x[enc["attention_mask"].bool()].double()
    variance_eps = 1e-5 if architecture != "albert" else 1e-12  # LayerNorm's own ε
    assert torch.allclose(real.mean(-1), torch.zeros(len(real), dtype=torch.float64), atol=1e-5)
    assert torch.allclose(real.var(-1, unbiased=False),
                          torch.full((len(real),), 1 - variance_eps, dtype=torch.float64),
                          atol=1e-4)


def test_word_embedding_noise_swamps_the_token_after_the_layernorm(tiny_bert):
    """Why the point matters: smart-pytorch's noise (∞-norm 1 per token) added to the word
    embeddings (std 0.02 at this init, ~0.05 in MiniLM) leaves the encoder's input of a token
    mostly orthogonal to the clean one (its position embedding alone is left); added after the
    LayerNorm (unit variance per coordinate) it leaves most of the token's direction."""
    model = tiny_model(tiny_bert).eval()
    inputs = [encodings()]
    mask = inputs[0]["attention_mask"].bool()
    layer = model.perturbation_point("embeddings")
    generator = torch.Generator().manual_seed(0)

    def unit_noise(like):
        z = torch.randn(like.shape, generator=generator)
        return z / z.abs().amax(-1, keepdim=True)

    with torch.no_grad():
        _, (clean,), from_encoder_input = perturbable(lambda: model("sst", inputs), layer)
        _, (words,), from_words = perturbable(lambda: model("sst", inputs),
                                              model.perturbation_point("word_embeddings"))
        with recorded_outputs(layer) as seen:
            from_words([words + unit_noise(words)])
        (after_word_noise,) = seen
        after_embedding_noise = clean + unit_noise(clean)
    cos_word = F.cosine_similarity(after_word_noise[mask], clean[mask], dim=-1)
    cos_embedding = F.cosine_similarity(after_embedding_noise[mask], clean[mask], dim=-1)
    assert cos_word.mean() < 0.4 and cos_embedding.min() > 0.8
