"""Write a random-weight Llama GGUF file whose weights are K-quants, for speed measurements.

    python benchmarks/random_kquant_gguf.py OUT.gguf [--preset tinyllama-1.1b] [--mix Q4_K_M]
        [--moe]

`--mix Q4_K_M` types the tensors as llama.cpp's `Q4_K_M` does for a Llama (Q4_K, with Q6_K for
the value and down projections and the LM head); `Q4_K`, `Q5_K`, `Q6_K` type every weight
alike (the LM head included). `--moe` writes a small Qwen3-MoE instead (`MOE_SHAPE`: hidden
1024, 8 layers, 32 experts of width 512, 8 per token), its expert stacks typed as the MLPs.
The `gguf` package has no K-quant quantizer: the super-blocks are random bytes with small
float16 scales, which costs the kernels what real weights cost.
Then build and time it: `mlc build OUT.gguf`, `mlc bench dist/<name>-gguf`.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import gguf
import numpy as np

from mlc.gguf.export import export_gguf
from mlc.testing.random_blocks import K_SCALE_OFFSETS, random_k_blocks
from mlc.testing.random_model import PRESETS, save_llama

MOE_SHAPE = {
    "model_type": "qwen3_moe",
    "vocab_size": 8192,
    "hidden_size": 1024,
    "num_hidden_layers": 8,
    "num_attention_heads": 16,
    "num_key_value_heads": 4,
    "head_dim": 64,
    "num_experts": 32,
    "num_experts_per_tok": 8,
    "moe_intermediate_size": 512,
    "norm_topk_prob": True,
    "init_std": None,
}


def types_for(mix: str, layers: int, moe: bool = False) -> dict[str, str]:
    mlp = "_exps" if moe else ""
    per_layer = {
        **{f"attn_{p}": "Q4_K" for p in ("q", "k", "output")},
        **{f"ffn_{p}{mlp}": "Q4_K" for p in ("gate", "up")},
        "attn_v": "Q6_K",
        f"ffn_down{mlp}": "Q6_K",
    }
    if mix != "Q4_K_M":
        per_layer = dict.fromkeys(per_layer, mix)
    types = {f"blk.{i}.{t}.weight": q for i in range(layers) for t, q in per_layer.items()}
    types["token_embd.weight"] = "Q4_K" if mix == "Q4_K_M" else mix
    types["output.weight"] = "Q6_K" if mix == "Q4_K_M" else mix
    return types


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tinyllama-1.1b")
    parser.add_argument("--mix", choices=["Q4_K_M", "Q4_K", "Q5_K", "Q6_K"], default="Q4_K_M")
    parser.add_argument("--moe", action="store_true", help="a small Qwen3-MoE (MOE_SHAPE)")
    args = parser.parse_args()
    shape = MOE_SHAPE if args.moe else PRESETS[args.preset]
    real = gguf.quants.quantize

    def quantize(array: np.ndarray, qtype) -> np.ndarray:
        if qtype.name not in K_SCALE_OFFSETS:
            return real(array, qtype)
        rows, k = int(np.prod(array.shape[:-1])), array.shape[-1]  # expert stacks: 3-D
        blocks = random_k_blocks(qtype.name, rows, k, seed=rows + k, scale=1e-3)
        return blocks.reshape(*array.shape[:-1], -1)

    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = save_llama(Path(tmp) / "model", **shape)
        gguf.quants.quantize = quantize
        try:
            types = types_for(args.mix, shape.get("num_hidden_layers", 2), args.moe)
            export_gguf(hf_dir, args.out, "F32", overrides=types)
        finally:
            gguf.quants.quantize = real
    print(f"wrote {args.out} ({'qwen3_moe' if args.moe else args.preset}, {args.mix})")


if __name__ == "__main__":
    main()
