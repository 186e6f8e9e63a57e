"""Decode steps in a loop, for an outside profiler (`perf record`), without the VM instrument
hook's per-call cost that `profile_kernels.py` pays.

    perf record -D 8000 -o decode.data python benchmarks/decode_loop.py dist/<model> --steps 2000
    perf script -i decode.data -F tid,ip,dso    # samples per thread and library

Prefills a random 100-token prompt, then decodes `--steps` random tokens (starting over every
200 steps, so the context stays short) and prints the median step.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from mlc.runtime import CompiledModel

RESTART = 200  # steps before the context starts over


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    engine = CompiledModel(args.model_dir, verify_weights=False)
    rng = np.random.default_rng(0)

    def random_token() -> int:
        return int(rng.integers(3, engine.vocab_size))

    times = []
    for step in range(args.steps):
        if step % RESTART == 0:
            engine.reset()
            engine.prefill([random_token() for _ in range(100)])
        start = time.perf_counter()
        engine.decode(random_token())
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(f"decode step: median {median * 1e3:.2f} ms ({1 / median:.1f} tok/s)")


if __name__ == "__main__":
    main()
