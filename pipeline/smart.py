"""SMART: smoothness-inducing adversarial regularization (Jiang et al. 2020, ACL, "SMART: Robust
and Efficient Fine-Tuning for Pre-trained Natural Language Models").

    R_s(θ) = 1/B · Σ_i max_{x̃_i} ℓ_s(f(x̃_i; θ), f(x_i; θ)),

added to a task's loss as λ_s·R_s. x is the output of one backbone module (``perturb_at``), one
tensor per encoded sequence (example i's input is its rows of all of them), read from the task
loss's own forward pass and replaced by x̃ in the perturbed passes (forward hooks:
:func:`recorded_outputs`, :func:`replaced_outputs`); padding is never perturbed. By default it is
the embedding layer's output, word + position + token-type embeddings → LayerNorm → dropout:
the encoder's input, what the paper's minBERT returns from ``embed()`` and hands to SMART.
``word_embeddings`` perturbs the token lookup before the position and type embeddings and the
LayerNorm instead; there the unit-norm noise below (~5× the std of MiniLM's word vectors per
coordinate) swamps the token after the LayerNorm, and R_s ties f(x) to f(noise).
x̃ = x + δ: δ starts as noise ν and takes T (``steps``) ascent steps of size η (``step_size``) on
g = ∇_δ ℓ_s(f(x + δ), f(x)). ``perturbation`` picks how:

- ``normalize`` (default): archinetai/smart-pytorch, the code the BEST-FiT paper ran (as MT-DNN's
  ``perturbation.py``, where the defaults come from). ν = σ²·z, z ~ N(0, I) (σ² = ``noise_var``
  taken as the standard deviation, as there), then per token t

      s_t = δ_t + η·g_t,   δ_t ← s_t / (‖s_t‖_p + ε),

  so ε only guards the division and every token's δ_t has p-norm ≈ 1 (after the LayerNorm,
  whose outputs have unit variance per coordinate, the token keeps most of its direction).
  f(x) is the task loss's own output (``output``: dropout on, no extra pass, as in that code);
  the passes through x̃ run with dropout off, as the paper states.
- ``project``: Jiang et al.'s Algorithm 1. ν ~ N(0, σ²I), then per example
  δ ← Π_ε(δ + η·g/‖g‖_p), Π_ε onto the ε-ball (p = ∞ clamps every coordinate to [−ε, ε]; p = 2
  rescales δ_i to radius ε when outside). f(x) is its own dropout-off pass, so R_s measures
  smoothness, not dropout noise (at the ``embeddings`` point x itself carries the embedding
  layer's dropout of the task loss's pass, in f(x) and f(x̃) alike).

λ across modes: under ``project`` ℓ_s and its gradient vanish at δ = 0, so R_s ≈ ½·δᵀHδ = O(ε²),
at ε = 1e-6 ~1e-12 of the curvature H: below the rounding of the task loss, λ is inert. Under
``normalize`` δ is O(1) per token, so R_s no longer scales with ε: it is bounded by how far f
moves between clearly different inputs (plus its target's dropout noise), the task loss's own
scale, and λ of a few units (the paper's 0.5–10) trades it against the task loss directly. At
the word embeddings (BERT's are ~0.05 per coordinate) δ replaces the token; after the LayerNorm
it moves it. The quadratic estimate equates λ under ``normalize`` with λ/ε² (1e12·λ) under
``project``, an upper bound since ℓ_s saturates at O(1) perturbations; ``project`` reaches a
comparable radius at ε = η ≈ 1, with a similar λ. There δ follows g; under ``normalize`` at
the defaults η·g is small beside ν (g is the gradient of a batch-mean ℓ_s near its minimum),
so δ is mostly normalised noise: random, hardly adversarial.

ℓ_s: SST the symmetric KL of the two softmax distributions, Σ_c (p_c − q_c)(log p_c − log q_c);
QQP the same for Bernoulli(σ(z)), which reduces to (σ(a) − σ(b))(a − b); STS the squared
difference. Per example, then a mean over the batch (``batchmean``, as smart-pytorch's usage
example; its ``sym_kl_loss`` sums, B times this), so R_s does not depend on batch size. Both KL
terms carry gradient (``sym_kl_loss`` stops it through each term's target). fp32 under autocast.

What is differentiated: the ascent only δ (``torch.autograd.grad``; x and f(x) detached), so it
adds nothing to parameter grads. The returned R_s uses x̃ = x + sg(δ) (δ* a constant, Danskin's
theorem): its gradient reaches θ through f(x̃) and f(x), and the embeddings through x.
``clean_grad: false`` makes f(x) a constant target, as in virtual adversarial training (Miyato et
al. 2018): under ``project`` that skips the backward pass through f(x); under ``normalize`` f(x)
is the task loss's pass, whose backward runs anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.config import SmartConfig
from pipeline.tasks import TaskSpec, task_spec


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


def smoothness_loss(task: TaskSpec | str, perturbed: Tensor, clean: Tensor) -> Tensor:
    """ℓ_s averaged over the batch, the task's declared ``smart_loss``: symmetric KL of softmaxes
    (classification, SST) or Bernoullis (binary, QQP), squared difference (regression, STS)."""
    spec = task_spec(task)
    if spec.smart_loss == "symmetric_kl":
        if spec.kind == "classification":
            return symmetric_kl_softmax(perturbed, clean).mean()
        return symmetric_kl_bernoulli(perturbed, clean).mean()
    if spec.smart_loss == "mse":
        return (_at_least_fp32(perturbed) - _at_least_fp32(clean)).pow(2).mean()
    raise ValueError(f"SMART: task {spec.name}: unknown smart_loss {spec.smart_loss!r}")


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


@contextmanager
def recorded_outputs(module: nn.Module) -> Iterator[list[Tensor]]:
    """Collect ``module``'s output of every call made inside the block, in call order (one per
    encoded sequence for a backbone's embedding layer), attached to the graph."""
    outputs: list[Tensor] = []

    def record(_module: nn.Module, _args: Any, output: Any) -> None:
        if not isinstance(output, Tensor):
            raise TypeError(f"SMART: {type(module).__name__} returns {type(output).__name__}, "
                            f"not a tensor; its output cannot be perturbed")
        outputs.append(output)

    handle = module.register_forward_hook(record)
    try:
        yield outputs
    finally:
        handle.remove()


@contextmanager
def replaced_outputs(module: nn.Module, replacements: list[Tensor]) -> Iterator[None]:
    """Inside the block, ``module``'s k-th call returns ``replacements[k]`` instead of its own
    output (same shape); the block must make exactly that many calls."""
    pending = iter(replacements)
    calls = 0

    def replace(_module: nn.Module, _args: Any, output: Tensor) -> Tensor:
        nonlocal calls
        calls += 1
        given = next(pending, None)
        if given is None or given.shape != output.shape:
            raise RuntimeError(f"SMART: call {calls} of {type(module).__name__} has no "
                               f"replacement of shape {tuple(output.shape)}")
        return given

    handle = module.register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()
    if calls != len(replacements):
        raise RuntimeError(f"SMART: {type(module).__name__} ran {calls} times for "
                           f"{len(replacements)} replacements")


def perturbable(run: Callable[[], Tensor], point: nn.Module
                ) -> tuple[Tensor, list[Tensor], Callable[[list[Tensor]], Tensor]]:
    """Run ``run()`` (a forward pass) once, recording ``point``'s outputs x; returns f(x), x and
    f as a function of x̃ (``run`` with the outputs of ``point`` replaced): the ``output``,
    ``embeds`` and ``forward`` that :func:`smart_regularizer` takes."""
    with recorded_outputs(point) as embeds:
        output = run()

    def forward(replacements: list[Tensor]) -> Tensor:
        with replaced_outputs(point, replacements):
            return run()

    return output, embeds, forward


def _example_norms(tensors: list[Tensor], norm: str) -> Tensor:
    """Per-example norm over all coordinates of all sequences, shape (B,)."""
    flat = [t.flatten(1) for t in tensors]
    if norm == "inf":
        return torch.stack([t.abs().amax(1) for t in flat]).amax(0)
    return torch.stack([t.pow(2).sum(1) for t in flat]).sum(0).sqrt()


def _token_norms(t: Tensor, norm: str) -> Tensor:
    """Per-token norm over the last (embedding) dimension, kept for broadcasting."""
    return t.abs().amax(-1, keepdim=True) if norm == "inf" else t.norm(dim=-1, keepdim=True)


def _per_example(scale: Tensor, like: Tensor) -> Tensor:
    return scale.view(-1, *([1] * (like.dim() - 1)))


def _add(xs: list[Tensor], ys: list[Tensor]) -> list[Tensor]:
    return [x + y for x, y in zip(xs, ys, strict=True)]


def _normalized_step(deltas: list[Tensor], grads: list[Tensor], cfg: SmartConfig) -> list[Tensor]:
    """smart-pytorch: s = δ + η·g, δ ← s / (‖s‖ + ε) per token (0 where s is, i.e. padding)."""
    steps = [d + cfg.step_size * g for d, g in zip(deltas, grads, strict=True)]
    return [s / (_token_norms(s, cfg.norm) + cfg.epsilon) for s in steps]


def _projected_step(deltas: list[Tensor], grads: list[Tensor], cfg: SmartConfig) -> list[Tensor]:
    """Jiang et al.: δ ← Π_ε(δ + η·g/‖g‖) per example."""
    scale = cfg.step_size / _example_norms(grads, cfg.norm).clamp_min(1e-30)
    deltas = _add(deltas, [_per_example(scale, g) * g for g in grads])
    if cfg.norm == "inf":
        return [d.clamp(-cfg.epsilon, cfg.epsilon) for d in deltas]
    shrink = (cfg.epsilon / _example_norms(deltas, "l2").clamp_min(1e-30)).clamp(max=1.0)
    return [d * _per_example(shrink, d) for d in deltas]


ASCENT_STEPS = {"normalize": _normalized_step, "project": _projected_step}


def initial_noise(embeds: Tensor, generator: torch.Generator | None) -> Tensor:
    """z ~ N(0, I) shaped as ``embeds``, from ``generator`` (torch's global RNG when None)."""
    device = generator.device if generator is not None else embeds.device
    return torch.randn(embeds.shape, generator=generator, dtype=embeds.dtype,
                       device=device).to(embeds.device)


def smart_regularizer(forward: Callable[[list[Tensor]], Tensor], embeds: list[Tensor],
                      masks: list[Tensor], task: TaskSpec | str, cfg: SmartConfig, model: nn.Module,
                      generator: torch.Generator | None = None,
                      output: Tensor | None = None) -> Tensor:
    """R_s of one task's batch (a scalar, not multiplied by λ).

    ``forward(embeds)`` returns f with the perturbation point's outputs replaced by ``embeds``
    (SST logits (B, 5), QQP logit
    (B,), STS value (B,)); ``embeds`` are the clean embeddings x, one (B, T_k, D) tensor per
    encoded sequence, attached to the graph when the embedding matrix should be regularised;
    ``masks`` the matching (B, T_k) attention masks. ``model`` is the module ``forward`` runs
    (put in eval mode meanwhile). ``output`` is f(x) from the task loss's own forward pass:
    ``normalize`` needs it as its clean target, ``project`` runs its own dropout-off f(x)
    instead. The noise ν is std·randn per embedding tensor, in order, from ``generator``
    (torch's global RNG when None), std = σ² (``normalize``) or √σ² (``project``).
    """
    normalize = cfg.perturbation == "normalize"
    if normalize and output is None:
        raise ValueError("SMART perturbation 'normalize' compares against the task loss's own "
                         "output f(x): pass it as `output`")
    keep = [m.unsqueeze(-1).to(e.dtype) for e, m in zip(embeds, masks, strict=True)]
    fixed = [e.detach() for e in embeds]
    ascent_step = ASCENT_STEPS[cfg.perturbation]
    std = cfg.noise_var if normalize else cfg.noise_var ** 0.5
    with eval_mode(model):
        if normalize:
            clean = output if cfg.clean_grad else output.detach()
        elif cfg.clean_grad:
            clean = forward(embeds)
        else:
            with torch.no_grad():
                clean = forward(fixed)
        deltas = [initial_noise(e, generator) * std * k for e, k in zip(embeds, keep, strict=True)]
        for _ in range(cfg.steps):
            deltas = [d.requires_grad_() for d in deltas]
            ascent = smoothness_loss(task, forward(_add(fixed, deltas)), clean.detach())
            # A constant f gives no gradient; δ then moves by its own rescaling only.
            grads = (torch.autograd.grad(ascent, deltas, allow_unused=True,
                                         materialize_grads=True)
                     if ascent.requires_grad else [torch.zeros_like(d) for d in deltas])
            deltas = ascent_step([d.detach() for d in deltas],
                                 [g * k for g, k in zip(grads, keep, strict=True)], cfg)
        perturbed = forward(_add(embeds, deltas))
    return smoothness_loss(task, perturbed, clean)
