"""SMART: smoothness-inducing adversarial regularization (Jiang et al. 2020, ACL, "SMART: Robust
and Efficient Fine-Tuning for Pre-trained Natural Language Models").

    R_s(θ) = 1/B · Σ_i max_{‖x̃_i − x_i‖_p ≤ ε} ℓ_s(f(x̃_i; θ), f(x_i; θ)),

added to a task's loss as λ_s·R_s. x is the backbone's word-embedding output (one tensor per
encoded sequence; example i's input is its rows of all of them, padding excluded). The inner max
follows the paper's Algorithm 1: x̃ = x + δ, δ starts as ν ~ N(0, σ²I) (σ² = ``noise_var``) and
takes T (``steps``) steps of normalised gradient ascent of size η (``step_size``), each projected
back onto the ε-ball, per example:

    g = ∇_δ ℓ_s(f(x + δ), f(x)),   δ ← Π_ε(δ + η · g / ‖g‖_p)

p = ∞: g/‖g‖_∞ (a sign-like step), Π_ε clamps every coordinate to [−ε, ε].
p = 2: g/‖g‖_2, Π_ε rescales δ_i onto the sphere of radius ε when ‖δ_i‖_2 > ε.

ℓ_s: SST the symmetric KL of the two softmax distributions, Σ_c (p_c − q_c)(log p_c − log q_c);
QQP the same for Bernoulli(σ(z)), which reduces to (σ(a) − σ(b))(a − b); STS the squared
difference. Per example, then a mean over the batch, so R_s does not depend on batch size.
ℓ_s is computed in fp32 under bf16 autocast.

Dropout is off for every forward pass of R_s, the clean f(x) included (the task loss keeps it):
the model is put in eval mode and each submodule's own ``training`` flag is restored afterwards.
Comparing a dropout-free f(x̃) with the task loss's dropout f(x) would make R_s measure the
dropout noise, not the smoothness around x.

What is differentiated:
- the ascent differentiates only δ (``torch.autograd.grad``; x and f(x) detached), so it adds
  nothing to parameter grads and keeps no graph;
- the returned R_s uses x̃ = x + sg(δ): δ* is a constant (Danskin's theorem), and the gradient
  reaches θ through both f(x̃) and f(x) — and the word embeddings through x — the exact
  gradient of R_s(θ), which depends on θ through both arguments in the paper's objective.
  ``clean_grad: false`` makes f(x) a constant target instead (run under ``no_grad``), as in
  virtual adversarial training (Miyato et al. 2018): the gradient is then ∇_θ ℓ_s(f(x̃), sg f(x)),
  which also carries a first-order term in δ that the exact gradient cancels, and the step skips
  the backward pass through f(x).

Cost, in passes of one batch (F forward, B backward with parameter grads ≈ 2.5F on CPU, B_x
backward to the input only ≈ 1.2F): the task loss F + B; R_s adds the clean f(x) F, the ascent
F + B_x per step, and f(x̃) F + B, plus B again through f(x) when ``clean_grad`` — measured
(``bench/bench_smart_pcgrad.py``, MiniLM, fp32) 3.1–3.6× a plain step with it and 2.7× without
on CPU, 3.6× and 3.0× on an H100, where batch-16 steps are bound by kernel launches.

Where this differs from MT-DNN's code (namisan/mt-dnn, ``mt_dnn/perturbation.py``), the origin of
the defaults ε = 1e-6, η = 1e-3, σ² = 1e-5: it never projects onto an ε-ball — ε there only
guards the division of (ν + η·g) by its per-token ∞-norm, so its perturbation has ∞-norm 1 per
token (η in an older version); it draws ν with standard deviation ``noise_var``; it runs f(x) and
f(x̃) with dropout on; its symmetric KL stops the gradient through each term's target
distribution. Here ε is the radius, as in the paper. Measured on MiniLM
(``bench/bench_smart_pcgrad.py``): at ε = 1e-6, R_s is ~1e-12 in fp32 and bf16 rounding noise
(~1e-7) under autocast, at ε = 1e-3 ~1e-6, against task losses ~1 and a dropout disagreement
ℓ_s(f_train(x), f_eval(x)) ~1e-2; MT-DNN's radius corresponds to ε = η = 1 here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.config import SmartConfig


def _at_least_fp32(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def symmetric_kl_softmax(a: Tensor, b: Tensor) -> Tensor:
    """KL(p‖q) + KL(q‖p) = Σ_c (p_c − q_c)(log p_c − log q_c), p = softmax(a), q = softmax(b);
    one value per row."""
    log_p, log_q = F.log_softmax(_at_least_fp32(a), -1), F.log_softmax(_at_least_fp32(b), -1)
    return ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(-1)


def symmetric_kl_bernoulli(a: Tensor, b: Tensor) -> Tensor:
    """Symmetric KL of Bernoulli(σ(a)) and Bernoulli(σ(b)) for logits a, b: (σ(a) − σ(b))(a − b)."""
    a, b = _at_least_fp32(a), _at_least_fp32(b)
    return (torch.sigmoid(a) - torch.sigmoid(b)) * (a - b)


def smoothness_loss(task: str, perturbed: Tensor, clean: Tensor) -> Tensor:
    """ℓ_s averaged over the batch: symmetric KL (SST softmax, QQP Bernoulli), MSE (STS)."""
    if task == "sst":
        return symmetric_kl_softmax(perturbed, clean).mean()
    if task == "qqp":
        return symmetric_kl_bernoulli(perturbed, clean).mean()
    if task == "sts":
        return (_at_least_fp32(perturbed) - _at_least_fp32(clean)).pow(2).mean()
    raise ValueError(f"SMART: unknown task {task!r}; expected sst, qqp or sts")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run with every submodule in eval mode, then restore each one's own ``training`` flag."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


def _example_norms(tensors: list[Tensor], norm: str) -> Tensor:
    """Per-example norm over all coordinates of all sequences, shape (B,)."""
    flat = [t.flatten(1) for t in tensors]
    if norm == "inf":
        return torch.stack([t.abs().amax(1) for t in flat]).amax(0)
    return torch.stack([t.pow(2).sum(1) for t in flat]).sum(0).sqrt()


def _per_example(scale: Tensor, like: Tensor) -> Tensor:
    return scale.view(-1, *([1] * (like.dim() - 1)))


def _add(xs: list[Tensor], ys: list[Tensor]) -> list[Tensor]:
    return [x + y for x, y in zip(xs, ys, strict=True)]


def _project(deltas: list[Tensor], epsilon: float, norm: str) -> list[Tensor]:
    if norm == "inf":
        return [d.clamp(-epsilon, epsilon) for d in deltas]
    shrink = (epsilon / _example_norms(deltas, "l2").clamp_min(1e-30)).clamp(max=1.0)
    return [d * _per_example(shrink, d) for d in deltas]


def smart_regularizer(forward: Callable[[list[Tensor]], Tensor], embeds: list[Tensor],
                      masks: list[Tensor], task: str, cfg: SmartConfig, model: nn.Module,
                      generator: torch.Generator | None = None) -> Tensor:
    """R_s of one task's batch (a scalar, not multiplied by λ).

    ``forward(embeds)`` returns f for the given word embeddings (SST logits (B, 5), QQP logit
    (B,), STS value (B,)); ``embeds`` are the clean embeddings x, one (B, T_k, D) tensor per
    encoded sequence, attached to the graph when the embedding matrix should be regularised;
    ``masks`` the matching (B, T_k) attention masks: padding is never perturbed, so norms ignore
    it. ``model`` is the module ``forward`` runs (put in eval mode meanwhile). The noise ν is
    √σ²·randn per embedding tensor, in order, from ``generator`` (torch's global RNG when None).
    """
    keep = [m.unsqueeze(-1).to(e.dtype) for e, m in zip(embeds, masks, strict=True)]
    fixed = [e.detach() for e in embeds]
    with eval_mode(model):
        if cfg.clean_grad:
            clean = forward(embeds)
        else:
            with torch.no_grad():
                clean = forward(fixed)
        deltas = [
            torch.randn(e.shape, generator=generator, dtype=e.dtype,
                        device=generator.device if generator is not None else e.device
                        ).to(e.device) * (cfg.noise_var ** 0.5) * k
            for e, k in zip(embeds, keep, strict=True)
        ]
        for _ in range(cfg.steps):
            deltas = [d.requires_grad_() for d in deltas]
            ascent = smoothness_loss(task, forward(_add(fixed, deltas)), clean.detach())
            # A constant f gives no gradient; δ then stays where it is.
            grads = (torch.autograd.grad(ascent, deltas, allow_unused=True,
                                         materialize_grads=True)
                     if ascent.requires_grad else [torch.zeros_like(d) for d in deltas])
            grads = [g * k for g, k in zip(grads, keep, strict=True)]
            scale = cfg.step_size / _example_norms(grads, cfg.norm).clamp_min(1e-30)
            steps = [_per_example(scale, g) * g for g in grads]
            deltas = _project(_add([d.detach() for d in deltas], steps), cfg.epsilon, cfg.norm)
        perturbed = forward(_add(embeds, deltas))
    return smoothness_loss(task, perturbed, clean)
