"""The PyTorch reference for `mlc bench`: transformers (fp32, eager) on the same HF model.

python benchmarks/bench_torch.py HF_MODEL_DIR --prompt-len 128 --gen-len 64 [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from transformers import AutoModelForCausalLM


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--gen-len", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, torch_dtype=torch.float32).eval()
    vocab = model.config.vocab_size
    prompt = torch.tensor([np.random.default_rng(0).integers(3, vocab, args.prompt_len)])
    prefill, decode = [], []
    for run in range(args.runs + 1):
        t0 = time.perf_counter()
        out = model(prompt, use_cache=True)
        t1 = time.perf_counter()
        past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        for _ in range(args.gen_len):
            out = model(token, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        t2 = time.perf_counter()
        if run:
            prefill.append(t1 - t0)
            decode.append(t2 - t1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"prefill {args.prompt_len / statistics.median(prefill):.1f} tok/s")
    print(f"decode  {args.gen_len / statistics.median(decode):.2f} tok/s")


if __name__ == "__main__":
    main()
