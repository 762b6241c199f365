"""Throughput of the transformers label scorer, with and without reuse of the few-shot prefix.

    python bench/bench_llm_label.py [--config tiny|1b] [--device cpu|cuda] [--reviews 64]
        [--batch-size 16] [--shots 11] [--max-review-tokens 256] [--dtype fp32|bf16]
        [--threads N]

A randomly initialised Llama (``tiny``: hidden 32, 2 layers; ``1b``: the Llama-3.2-1B shape)
scores real Amazon reviews from ``../shared/data/amazon`` behind an 11-shot prompt drawn from the
real SST train file, tokenized by a byte-level BPE trained here on those texts (no download).
Prints reviews/s and prompt tokens/s, where a review's prompt tokens are prefix + quoted review +
suffix (what a scorer without any reuse would have to run). Figures only, no asserts.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch

from pipeline.augment.llm_label import TransformersScorer
from pipeline.augment.llm_prompt import LABEL_NAMES, build_template, encode_template, select_shots

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CONFIGS = {
    "tiny": dict(vocab_size=4096, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=64),
    # meta-llama/Llama-3.2-1B's shape
    "1b": dict(vocab_size=128256, hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, intermediate_size=8192, tie_word_embeddings=True),
}


def load_texts() -> tuple[list[str], pd.DataFrame]:
    reviews = []
    for path in sorted((DATA / "amazon").glob("*.jsonl")):
        for line in filter(str.strip, path.read_text().splitlines()):
            text = json.loads(line).get("reviewText") or ""
            if text.strip():
                reviews.append(text)
    sst = pd.read_csv(DATA / "cs224n" / "ids-sst-train.csv", sep="\t", index_col=0)
    sst = sst.rename(columns={"sentiment": "label"})[["id", "sentence", "label"]]
    return reviews, sst


def make_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([*texts, *LABEL_NAMES], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", additional_special_tokens=specials[3:])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--reviews", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--shots", type=int, default=11)
    parser.add_argument("--max-review-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import LlamaConfig, LlamaForCausalLM

    reviews, sst = load_texts()
    tokenizer = make_tokenizer([*reviews, *sst["sentence"]], vocab_size=4096)
    shots = select_shots(sst, args.shots, seed=11)
    prompt = encode_template(tokenizer, build_template(tokenizer, shots), args.max_review_tokens)
    review_ids = sorted((prompt.review_ids(tokenizer, t)[0] for t in reviews[: args.reviews]),
                        key=len)  # as label_reviews orders them
    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    model = LlamaForCausalLM(LlamaConfig(**CONFIGS[args.config])).to(args.device, dtype).eval()
    fixed = len(prompt.prefix_ids) + len(prompt.suffix_ids)
    prompt_tokens = sum(fixed + len(r) for r in review_ids)
    print(f"config {args.config}, device {args.device}, {args.dtype}, "
          f"threads {torch.get_num_threads()}, batch {args.batch_size}; {len(review_ids)} reviews, "
          f"prefix {len(prompt.prefix_ids)} tokens, review mean "
          f"{sum(map(len, review_ids)) / len(review_ids):.0f} tokens, "
          f"answers {[len(a) for a in prompt.answer_ids]} tokens")

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    for reuse in (True, False):
        sync()
        start = time.perf_counter()
        scorer = TransformersScorer(model, prompt, batch_size=args.batch_size, reuse_prefix=reuse)
        sync()
        setup = time.perf_counter() - start
        scorer.score(review_ids[: args.batch_size])  # warm-up
        sync()
        start = time.perf_counter()
        scorer.score(review_ids)
        sync()
        seconds = time.perf_counter() - start
        print(f"prefix reuse {'on ' if reuse else 'off'}: {len(review_ids) / seconds:8.2f} "
              f"reviews/s  {prompt_tokens / seconds:10.0f} prompt tokens/s  "
              f"({seconds:.2f} s; prefix run once in {setup:.3f} s)")


if __name__ == "__main__":
    main()
