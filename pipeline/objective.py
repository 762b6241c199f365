"""One task's training objective on one batch (BEST-FiT §4).

L_t = w_t · (ℓ_t(f(x), y) + c·L_con + λ_t·R_s(θ)), where ℓ_t is the task's declared loss
(``pipeline.losses``), L_con the contrastive term on separately encoded sentences of a pair task
(when ``loss.contrastive_weight`` c > 0), R_s SMART's smoothness-inducing regulariser
(``pipeline.smart``, when the task's λ_t > 0) and w_t the task weight. Each step's loss is one
task's, so SMART and PCGrad (``pipeline.pcgrad``) work on per-task losses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from pipeline.losses import contrastive_loss, has_contrastive, task_loss
from pipeline.model import MultitaskModel, attention_mask, cosine_distance
from pipeline.smart import perturbable, smart_regularizer

if TYPE_CHECKING:
    from pipeline.batching import Batch
    from pipeline.config import MemberConfig


def task_step_loss(model: MultitaskModel, batch: Batch, member: MemberConfig
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """One task's training loss on one batch: the supervised loss, plus the contrastive term
    (pair tasks, when weighted) and λ·R_s of SMART (when λ > 0), times the task weight.
    Also returns the task head's output, from which the trainer scores the training batches."""
    task, spec = batch.task, model.specs[batch.task]
    smart_lambda = member.smart.lambda_for(task)
    if smart_lambda > 0:
        output, embeds, perturbed_forward = perturbable(
            lambda: model(task, batch.inputs), model.perturbation_point(member.smart.perturb_at))
    else:
        output = model(task, batch.inputs)
    loss = task_loss(spec, output, batch.labels, member.loss.ordered_ce_weight)
    if member.loss.contrastive_weight > 0 and has_contrastive(spec):
        u, v = (model.embed(enc) for enc in batch.singles)
        loss = loss + member.loss.contrastive_weight * contrastive_loss(
            spec, cosine_distance(u, v), batch.labels, member.loss.contrastive_margin,
            member.loss.sts_contrastive_target)
    if smart_lambda > 0:
        masks = [attention_mask(enc) for enc in batch.inputs]
        regularizer = smart_regularizer(perturbed_forward, embeds, masks, spec, member.smart,
                                        model, output=output)
        loss = loss + smart_lambda * regularizer
    return member.loss.task_weights.get(task, 1.0) * loss, output
