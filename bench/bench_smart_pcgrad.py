"""Cost of SMART and PCGrad against a plain multitask step, and the size of SMART's R_s.

    python bench/bench_smart_pcgrad.py [--backbone minilm|bert-base-random|DIR] [--steps 6]
                                       [--warmup 1] [--batch-size 16] [--precision fp32|bf16]
                                       [--tokenizer NAME|DIR] [--data DIR] [--modes MODE ...]

The same real CS224N training batches (batch 16, the backbone's tokenizer, padding to each
batch's longest sequence) go through several ways of taking a 3-task step, each with its own
copy of the same initial model (fp32 master weights, whatever dtype a DIR stores) and AdamW:

- plain:  SST, QQP and STS losses, one backward each (grads add up), clipping, AdamW step;
- smart:  the same with λ·R_s (T = 1, the paper's defaults) in every task's loss,
  ``smart.perturbation: normalize`` (the default: the paper's code) at the embedding layer's
  output (``smart.perturb_at: embeddings``, the default);
- smart-project: the same with Jiang et al.'s ε-ball (``perturbation: project``), gradient
  through f(x̃) and f(x);
- smart-project-vat: that with f(x) a constant target (``smart.clean_grad: false``);
- pcgrad: the plain losses through ``PCGrad.accumulate`` / ``combine``.

Every loss is the trainer's own (``pipeline.objective.task_step_loss``). The modes take turns
within each step (in rotating order), so a change in machine load hits all of them alike. Prints the
median step time over ``--steps`` steps after ``--warmup``, the ratios to plain, and memory: on
CUDA the peak allocated during each mode's steps (all models are resident, so compare
differences); with pcgrad the bytes of its per-task buffers against one flat fp32 copy of the
shared parameters, and the process's max RSS.

Then the size of R_s on one batch per task at the paper's defaults (T = 1, ε = 1e-6, η = 1e-3,
σ² = 1e-5), as the trainer computes it (model in train mode, ``output`` the task loss's own
dropout-on pass), at both perturbation points (``embeddings``, ``word_embeddings``), with how
much of each token's direction normalize's noise leaves at the encoder's input: under
``normalize`` and ``project``, each also divided by the task loss, and
under ``project`` at ε = η = 1, a radius like normalize's; beside them the dropout disagreement
ℓ_s(f_train(x), f_eval(x)), which normalize's target carries, and the task loss — in fp32 and
bf16 autocast.

Offline GPU run (a dir holding a MiniLM copy with its tokenizer files, the CS224N csv dir):

    python bench/bench_smart_pcgrad.py --backbone MINILM_DIR --precision bf16 --data CS224N_DIR
    python bench/bench_smart_pcgrad.py --backbone bert-base-random --tokenizer MINILM_DIR \
        --precision bf16 --data CS224N_DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import BertConfig, BertModel

from pipeline.batching import collate, tokenize_task
from pipeline.config import (
    LossConfig,
    MemberConfig,
    ModelConfig,
    PcgradConfig,
    SmartConfig,
    TrainConfig,
)
from pipeline.data import read_task_split
from pipeline.device import autocast
from pipeline.losses import task_loss
from pipeline.model import MultitaskModel, attention_mask, load_tokenizer
from pipeline.objective import task_step_loss
from pipeline.optim import build_optimizer
from pipeline.pcgrad import PCGrad
from pipeline.smart import (
    ASCENT_STEPS,
    eval_mode,
    initial_noise,
    perturbable,
    recorded_outputs,
    smart_regularizer,
    smoothness_loss,
)

TASKS = ["sst", "qqp", "sts"]
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cs224n"
MODES = ("plain", "smart", "smart-project", "smart-project-vat", "pcgrad")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="minilm",
                        help="minilm, bert-base-random (random weights, bert-base shape) or a dir")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer name or dir; default: the backbone's (minilm's for "
                             "bert-base-random, which shares its vocabulary)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                        help="step modes to time (plain is always included: ratios need it)")
    return parser.parse_args()


def build_model(backbone: str, cfg: ModelConfig) -> MultitaskModel:
    torch.manual_seed(0)
    if backbone == "bert-base-random":
        return MultitaskModel(cfg, TASKS, backbone=BertModel(BertConfig()))
    # A half-precision copy loads in its stored dtype; train as the trainer does, fp32 + autocast.
    return MultitaskModel(cfg, TASKS).float()


def step_batches(args: argparse.Namespace, tokenizer, max_length: int) -> list[dict]:
    """``warmup + steps`` steps of one real training batch per task, drawn once (seeded)."""
    count = args.warmup + args.steps
    rng = np.random.default_rng(0)
    per_task = {}
    for task in TASKS:
        frame, _ = read_task_split(args.data, task, "train")
        rows = frame.iloc[rng.choice(len(frame), count * args.batch_size, replace=False)]
        data = tokenize_task(task, rows.reset_index(drop=True), tokenizer, max_length, "concat")
        per_task[task] = [
            collate(data, np.arange(s * args.batch_size, (s + 1) * args.batch_size),
                    tokenizer.pad_token_id)
            for s in range(count)
        ]
    return [{task: per_task[task][s] for task in TASKS} for s in range(count)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@dataclass
class Runner:
    """One way of taking a step: its own copy of the model, optimiser and PCGrad state."""

    member: MemberConfig
    model: MultitaskModel
    optimizer: torch.optim.Optimizer
    pcgrad: PCGrad | None
    times: list[float] = field(default_factory=list)
    peak_mib: float = 0.0  # CUDA only

    def step(self, batches: dict, device: torch.device, timed: bool) -> None:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sync(device)
        began = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        for task in TASKS:
            batch = batches[task].to(device)
            with autocast(device, self.member.train.precision):
                loss, _ = task_step_loss(self.model, batch, self.member)
            if self.pcgrad:
                self.pcgrad.accumulate(task, loss)
            else:
                loss.backward()
        if self.pcgrad:
            self.pcgrad.combine()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.member.train.max_grad_norm)
        self.optimizer.step()
        sync(device)
        if timed:
            self.times.append(time.perf_counter() - began)
            if device.type == "cuda":
                self.peak_mib = max(self.peak_mib, torch.cuda.max_memory_allocated() / 2**20)


def make_runner(member: MemberConfig, backbone: str, device: torch.device) -> Runner:
    model = build_model(backbone, member.model).to(device)  # same seed: same initial weights
    model.train()
    pcgrad = (PCGrad(model.shared_parameters(), TASKS, torch.Generator().manual_seed(0))
              if member.pcgrad.enabled else None)
    return Runner(member, model, build_optimizer(model, member), pcgrad)


def step_members(model_cfg: ModelConfig, batch_size: int, precision: str, device: str
                 ) -> dict[str, MemberConfig]:
    """The member of each mode: the same model, batch and precision, its own SMART or PCGrad."""
    train = TrainConfig(batch_size=batch_size, precision=precision, device=device)
    base = MemberConfig("bench", TASKS, [], model_cfg, LossConfig(), train, SmartConfig(),
                        PcgradConfig())
    project = SmartConfig(lambda_=1.0, perturbation="project")
    return {
        "plain": base,
        "smart": dataclasses.replace(base, smart=SmartConfig(lambda_=1.0)),
        "smart-project": dataclasses.replace(base, smart=project),
        "smart-project-vat": dataclasses.replace(
            base, smart=dataclasses.replace(project, clean_grad=False)),
        "pcgrad": dataclasses.replace(base, pcgrad=PcgradConfig(enabled=True)),
    }


def time_modes(runners: dict[str, Runner], batches: list[dict], device: torch.device,
               warmup: int) -> None:
    """Every step's batches through every mode; steps from ``warmup`` on are timed."""
    modes = list(runners)
    for s, step in enumerate(batches):
        # Modes take turns within each step (rotating), so a load change hits all of them.
        for m in range(len(modes)):
            runners[modes[(s + m) % len(modes)]].step(step, device, timed=s >= warmup)


SMART_SETTINGS = {
    "normalize": SmartConfig(lambda_=1.0),
    "project": SmartConfig(lambda_=1.0, perturbation="project"),
    "proj ε=η=1": SmartConfig(lambda_=1.0, perturbation="project", epsilon=1.0, step_size=1.0),
}


def encoder_input_cosines(model: MultitaskModel, batch, point: str) -> torch.Tensor:
    """cos(encoder input with δ, clean encoder input) per real token, δ = normalize's initial
    step: Gaussian noise rescaled to ∞-norm 1 per token, added at ``point``."""
    layer = model.perturbation_point("embeddings")
    generator = torch.Generator(device=batch.inputs[0]["input_ids"].device).manual_seed(0)

    def run() -> torch.Tensor:
        return model(batch.task, batch.inputs)

    with torch.no_grad(), eval_mode(model):
        _, clean, _ = perturbable(run, layer)
        _, x, forward = perturbable(run, model.perturbation_point(point))
        moved = [e + smart_step_noise(e, generator) for e in x]
        if point != "embeddings":  # what the embedding layer makes of the perturbed lookup
            with recorded_outputs(layer) as moved_inputs:
                forward(moved)
            moved = moved_inputs
    masks = [attention_mask(enc).bool() for enc in batch.inputs]
    return torch.cat([torch.nn.functional.cosine_similarity(m[k], c[k], dim=-1)
                      for m, c, k in zip(moved, clean, masks, strict=True)])


def smart_step_noise(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """normalize's δ after its step from the initial noise with no gradient to follow."""
    cfg = SmartConfig(lambda_=1.0)
    noise = initial_noise(like, generator) * cfg.noise_var
    (delta,) = ASCENT_STEPS["normalize"]([noise], [torch.zeros_like(noise)], cfg)
    return delta


def regularizer_sizes(model: MultitaskModel, step: dict, device: torch.device) -> None:
    print("\nR_s per task on one batch as the trainer computes it (T = 1, σ² = 1e-5, ε = 1e-6, "
          "η = 1e-3 unless named), and R_s / task loss, at each perturbation point "
          "(smart.perturb_at); cos: a token's encoder input perturbed by normalize's unit noise "
          "against its clean self (median over the batch's tokens)")
    print(f"{'task':5} {'precision':9} {'point':15} "
          + " ".join(f"{'R_s ' + name:>15} {'/ loss':>8}" for name in SMART_SETTINGS)
          + f" {'dropout ℓ_s':>12} {'task loss':>10} {'cos':>5}")
    for task in TASKS:
        batch = step[task].to(device)
        masks = [attention_mask(enc) for enc in batch.inputs]
        for precision in ("fp32", "bf16"):
            for point in ("embeddings", "word_embeddings"):
                with autocast(device, precision):
                    model.train()
                    output, embeds, forward = perturbable(
                        lambda b=batch, t=task: model(t, b.inputs),
                        model.perturbation_point(point))
                    with torch.no_grad(), eval_mode(model):
                        clean = model(task, batch.inputs)
                    values = [smart_regularizer(
                        forward, embeds, masks, task, dataclasses.replace(cfg, perturb_at=point),
                        model, torch.Generator(device=device).manual_seed(0),
                        output=output).item() for cfg in SMART_SETTINGS.values()]
                    dropout = smoothness_loss(task, output, clean).item()
                    loss = task_loss(task, output, batch.labels, 0.0).item()
                cos = encoder_input_cosines(model, batch, point).median().item()
                print(f"{task:5} {precision:9} {point:15} "
                      + " ".join(f"{v:15.3e} {v / loss:8.1e}" for v in values)
                      + f" {dropout:12.3e} {loss:10.3f} {cos:5.2f}")


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    model_cfg = ModelConfig(backbone=args.backbone)
    tokenizer = load_tokenizer(args.tokenizer or (
        "minilm" if args.backbone == "bert-base-random" else args.backbone))
    batches = step_batches(args, tokenizer, model_cfg.max_length)
    members = step_members(model_cfg, args.batch_size, args.precision, str(device))
    modes = [mode for mode in MODES if mode == "plain" or mode in args.modes]
    runners = {mode: make_runner(members[mode], args.backbone, device) for mode in modes}
    model = runners["plain"].model
    flat_fp32 = sum(p.numel() for p in model.shared_parameters()) * 4
    print(f"backbone {args.backbone}, device {device} ({torch.get_num_threads()} threads), "
          f"{args.precision}, batch {args.batch_size} x 3 tasks, "
          f"median of {args.steps} steps after {args.warmup}")
    time_modes(runners, batches, device, args.warmup)
    plain = runners["plain"]
    plain_time = statistics.median(plain.times)
    cuda = device.type == "cuda"
    print(f"\n{'mode':17} {'step s':>8} {'x plain':>8}"
          + (f" {'peak MiB':>9} {'extra MiB':>10}" if cuda else ""))
    for mode, runner in runners.items():
        seconds = statistics.median(runner.times)
        print(f"{mode:17} {seconds:8.3f} {seconds / plain_time:8.2f}"
              + (f" {runner.peak_mib:9.0f} {runner.peak_mib - plain.peak_mib:10.0f}"
                 if cuda else ""))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nshared parameters: {flat_fp32 / 4 / 1e6:.1f} M; one flat fp32 copy "
          f"{flat_fp32 / 2**20:.1f} MiB; process max RSS {rss:.0f} MiB ({len(modes)} models)")
    if "pcgrad" in runners:
        pcgrad_bytes = runners["pcgrad"].pcgrad.buffer_bytes()
        print(f"PCGrad buffers {pcgrad_bytes / 2**20:.1f} MiB "
              f"= {pcgrad_bytes / flat_fp32:.2f} flat fp32 copies")
    if cuda and "pcgrad" in runners:
        extra = runners["pcgrad"].peak_mib - plain.peak_mib
        print(f"PCGrad extra peak over plain: {extra:.0f} MiB "
              f"= {extra * 2**20 / flat_fp32:.2f} flat fp32 copies")
    regularizer_sizes(model, batches[0], device)


if __name__ == "__main__":
    main()
