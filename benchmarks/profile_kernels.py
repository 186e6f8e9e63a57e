"""Where a decode (or prefill) step spends its time, kernel by kernel.

    python benchmarks/profile_kernels.py dist/<model> [--steps 16] [--prompt-len 128] [--prefill]

Times every VM call (kernels and runtime builtins) with the VM's instrument hook. Per kernel:
calls per step, the median and the fastest call; the fastest is a fair estimate on a busy
machine, the median what this run saw.
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

import numpy as np

from mlc.runtime import CompiledModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--prefill", action="store_true", help="profile prefill, not decode")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()

    engine = CompiledModel(args.model_dir, verify_weights=False)
    rng = np.random.default_rng(0)
    prompt = rng.integers(3, engine.vocab_size, args.prompt_len).tolist()
    times: dict[str, list[float]] = collections.defaultdict(list)
    started: dict[str, float] = {}

    def instrument(_func, name, before_run, _ret, *_args):
        if before_run:
            started[name] = time.perf_counter()
        else:
            times[name].append(time.perf_counter() - started[name])

    engine.prefill(prompt)  # warm-up, and the context the decode steps attend to
    engine.vm.set_instrument(instrument)
    wall = []
    for _ in range(args.steps):
        start = time.perf_counter()
        if args.prefill:
            engine.reset()
            engine.prefill(prompt)
        else:
            engine.decode(int(rng.integers(3, engine.vocab_size)))
        wall.append(time.perf_counter() - start)
    engine.vm.set_instrument(None)

    step = "prefill" if args.prefill else "decode"
    total_min = sum(min(v) * len(v) / args.steps for v in times.values())
    print(
        f"{step} step: median {np.median(wall) * 1e3:.1f} ms wall, fastest calls sum to "
        f"{total_min * 1e3:.1f} ms"
    )
    print(f"{'kernel':44s} {'calls':>5s} {'median':>9s} {'fastest':>9s} {'share':>6s}")
    rows = sorted(times.items(), key=lambda kv: -min(kv[1]) * len(kv[1]))
    for name, values in rows[: args.top]:
        calls = len(values) / args.steps
        share = min(values) * calls / total_min
        print(
            f"{name[:44]:44s} {calls:5.0f} {np.median(values) * 1e3:7.3f}ms "
            f"{min(values) * 1e3:7.3f}ms {share:6.1%}"
        )


if __name__ == "__main__":
    main()
