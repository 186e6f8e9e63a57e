"""Write a random-weight Llama model directory (config, safetensors, tokenizer).

python benchmarks/make_random_llama.py OUT_DIR [--preset tiny|tinyllama-1.1b]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mlc.testing.random_model import PRESETS, save_llama


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    save_llama(args.out_dir, seed=args.seed, **PRESETS[args.preset])
    print(f"wrote {args.out_dir} ({args.preset}) in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
