"""Model FLOPs utilisation of bestfit's training step: samples/s, tokens/s and MFU.

    python bench/bench_mfu.py [--backbone bert-base-random] [--batch-size 32] [--steps 50]
                              [--precision bf16] [--peak-tflops N]

Times the trainer's own step (``bench_train.run_bestfit``: real SST/QQP/STS batches, round
robin, length-grouped and padded per batch) on a randomly initialised bert-base
(``bert-base-random``: BERT-base's shape, MiniLM's uncased vocabulary, which is bert-base's; for
speed only) or any backbone. Training FLOPs per token computed on (Kaplan et al. 2020; PaLM,
Chowdhery et al. 2022, App. B): 6·N + 12·L·H·S, N the encoder's non-embedding parameters, L
layers, H hidden size, S the padded sequence length (here the timed batches' mean). MFU = achieved
FLOP/s over the device's dense peak at the precision: the table below by device name, or
``--peak-tflops``. Prints MFU on the tokens computed (padding included) and on real tokens only
(what the padding costs). On a CPU the peak is not known: pass ``--peak-tflops`` for an MFU.
"""

from __future__ import annotations

import multiprocessing as mp
import tempfile
from pathlib import Path

import torch
from bench_train import Measurement, loop_arguments, run_bestfit

from pipeline.data import prepare, write_prepared
from pipeline.device import resolve_device
from pipeline.model import resolve_backbone

# Dense (no sparsity) peak TFLOP/s by device-name fragment: bf16, fp16, fp32 (no TF32).
PEAK_TFLOPS = {
    "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "fp32": 51.0},
    "H100": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},  # SXM
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5},
    "L4": {"bf16": 121.0, "fp16": 121.0, "fp32": 30.3},
    "V100": {"fp16": 125.0, "fp32": 15.7},
    "T4": {"fp16": 65.0, "fp32": 8.1},
}


def device_peak(name: str, precision: str) -> float | None:
    for fragment, peaks in PEAK_TFLOPS.items():  # "H100 PCIe" before "H100"
        if fragment in name:
            return peaks.get(precision)
    return None


def random_bert_base(directory: Path, tokenizer: str = "minilm") -> Path:
    """bert-base's configuration, random weights, ``tokenizer``'s files (MiniLM's is
    bert-base-uncased's)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    BertModel(BertConfig()).save_pretrained(directory)
    AutoTokenizer.from_pretrained(resolve_backbone(tokenizer)).save_pretrained(directory)
    return directory


def encoder_shape(backbone: str) -> tuple[int, int, int]:
    """(non-embedding parameters, layers, hidden size) of ``backbone``'s encoder."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(resolve_backbone(backbone))
    model = AutoModel.from_config(config)
    embedding = sum(p.numel() for p in model.embeddings.parameters())
    pooler = sum(p.numel() for p in model.pooler.parameters()) if model.pooler else 0
    total = sum(p.numel() for p in model.parameters())
    return total - embedding - pooler, config.num_hidden_layers, config.hidden_size


def training_flops(tokens: int, mean_length: float, params: int, layers: int, hidden: int
                   ) -> float:
    return tokens * (6 * params + 12 * layers * hidden * mean_length)


def mfu_figures(result: Measurement, shape: tuple[int, int, int], peak: float | None) -> dict:
    """Throughput and MFU of a timed loop, on the tokens computed and on real tokens only;
    ``shape``: ``encoder_shape``'s, ``peak``: TFLOP/s (None: no MFU)."""
    mean_length = result.padded / result.samples
    figures = {"samples_per_s": result.rate, "tokens_per_s": result.padded / result.seconds,
               "real_tokens_per_s": result.tokens / result.seconds,
               "mean_padded_length": mean_length, "peak_tflops": peak}
    for label, tokens in (("", result.padded), ("real_", result.tokens)):
        achieved = training_flops(tokens, mean_length, *shape) / result.seconds / 1e12
        figures[f"{label}tflops"] = achieved
        figures[f"{label}mfu"] = achieved / peak if peak else None
    return figures


def main() -> None:
    parser = loop_arguments(__doc__, backbone="bert-base-random", steps=50, batch_size=32)
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--peak-tflops", type=float, help="the device's dense peak at --precision")
    args = parser.parse_args()

    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        if args.backbone == "bert-base-random":
            args.backbone = str(random_bert_base(Path(tmp) / "bert-base-random"))
        args.prepared = Path(tmp) / "prepared"
        write_prepared(prepare(str(args.data), {}, 0, Path(tmp) / "raw"), args.prepared)
        shape = params, layers, hidden = encoder_shape(args.backbone)
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        proc = ctx.Process(target=run_bestfit, args=(args, args.precision, queue))
        proc.start()
        result: Measurement = queue.get()
        proc.join()

    peak = args.peak_tflops or device_peak(name, args.precision)
    figures = mfu_figures(result, shape, peak)
    print(f"device={name} precision={args.precision} batch={args.batch_size} "
          f"steps={args.steps} threads={result.threads} encoder: {params / 1e6:.1f}M "
          f"non-embedding parameters, {layers} layers, hidden {hidden}")
    print(f"samples/s {figures['samples_per_s']:.1f}   tokens/s computed "
          f"{figures['tokens_per_s']:.0f} (real {figures['real_tokens_per_s']:.0f}, mean padded "
          f"length {figures['mean_padded_length']:.1f})")
    for label, key in (("tokens computed", ""), ("real tokens", "real_")):
        mfu = f"MFU {100 * figures[key + 'mfu']:.1f}% of {peak:g}" if peak else (
            "MFU: peak unknown (--peak-tflops)")
        print(f"{label:<16} {figures[key + 'tflops']:8.2f} TFLOP/s   {mfu}")


if __name__ == "__main__":
    main()
