"""The quantization table: size, speed, memory and quality of every code on one model.

    python benchmarks/quant_table.py HF_MODEL_DIR [--codes q0f32,q4f16_1,...] [--out DIR]

For each code: `mlc build` (timed), bits per parameter and bytes on disk from
`tensor-cache.json`, `mlc bench --json` in its own process (decode tok/s, peak memory), and
the mean KL divergence of the next-token distribution against the q0f32 build over a fixed
random token sequence (teacher-forced, one distribution per position).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from mlc.build import BuildOptions, build
from mlc.quantization import QUANTIZATIONS
from mlc.runtime import CompiledModel

CODES = ["q0f32", "q0f16", "q8f16_1", "q4f32_1", "q4f16_1", "q4a8_1", "q3f16_1"]


def next_token_log_probs(model_dir: Path, tokens: list[int]) -> np.ndarray:
    engine = CompiledModel(model_dir, verify_weights=False)
    rows = [engine.prefill(tokens[:1])]
    rows += [engine.decode(t) for t in tokens[1:]]
    logits = np.stack(rows).astype(np.float64)
    return logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)


def mean_kl(reference: np.ndarray, other: np.ndarray) -> float:
    return float(np.mean(np.sum(np.exp(reference) * (reference - other), axis=-1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--codes", default=",".join(CODES))
    parser.add_argument("--out", type=Path, default=Path("dist/quant-table"))
    parser.add_argument("--kl-tokens", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--gen-len", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    codes = args.codes.split(",")
    unknown = [c for c in codes if c not in QUANTIZATIONS]
    if unknown:
        sys.exit(f"unknown codes: {unknown}")
    rows, reference = [], None
    vocab = json.loads((args.model_dir / "config.json").read_text())["vocab_size"]
    tokens = np.random.default_rng(0).integers(3, vocab, args.kl_tokens).tolist()
    for code in ["q0f32", *[c for c in codes if c != "q0f32"]]:
        start = time.perf_counter()
        built = build(
            BuildOptions(model=args.model_dir, quantization=code, output=args.out, quiet=True)
        )
        build_s = time.perf_counter() - start
        meta = json.loads((built / "tensor-cache.json").read_text())["metadata"]
        bench = json.loads(
            subprocess.run(
                [
                    "mlc",
                    "bench",
                    str(built),
                    "--prompt-len",
                    str(args.prompt_len),
                    "--gen-len",
                    str(args.gen_len),
                    "--runs",
                    str(args.runs),
                    "--json",
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        log_probs = next_token_log_probs(built, tokens)
        if reference is None:
            reference = log_probs
        rows.append(
            {
                "code": code,
                "bits_per_param": meta["BitsPerParam"],
                "size_mb": meta["ParamBytes"] / 1e6,
                "build_s": build_s,
                "prefill_tok_s": bench["prefill_tokens_per_s"],
                "decode_tok_s": bench["decode_tokens_per_s"],
                "peak_mb": bench["peak_rss_mb"],
                "kl": mean_kl(reference, log_probs),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    print("| code | bits/param | size | build | prefill tok/s | decode tok/s | peak memory | KL |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| `{r['code']}` | {r['bits_per_param']:.2f} | {r['size_mb']:.0f} MB | "
            f"{r['build_s']:.0f} s | {r['prefill_tok_s']:.1f} | {r['decode_tok_s']:.2f} | "
            f"{r['peak_mb']:.0f} MB | {r['kl']:.2e} |"
        )


if __name__ == "__main__":
    main()
