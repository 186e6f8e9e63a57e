"""Decode speed at a short and a long context, interleaved, for one or more builds.

    python benchmarks/long_context.py dist/<model> [dist/<other> ...] \
        [--contexts 100 2000] [--tokens 32] [--rounds 5]

Each round prefills a random prompt of each context length in turn, then times `--tokens`
decode steps; rounds alternate between the builds and lengths, so that drift on a shared
machine hits all of them alike. Prints the median decode tokens/s per (build, context) and
each build's slowdown at the longest context relative to the shortest.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from mlc.runtime import CompiledModel


def decode_tokens_per_s(engine: CompiledModel, context: int, tokens: int, seed: int) -> float:
    engine.reset()
    rng = np.random.default_rng(seed)
    logits = engine.prefill(rng.integers(3, engine.vocab_size, context).tolist())
    start = time.perf_counter()
    for _ in range(tokens):
        logits = engine.decode(int(np.argmax(logits)))
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dirs", type=Path, nargs="+")
    parser.add_argument("--contexts", type=int, nargs="+", default=[100, 2000])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    engines = {d: CompiledModel(d, verify_weights=False) for d in args.model_dirs}
    speeds: dict[tuple[Path, int], list[float]] = {}
    for engine in engines.values():  # warm-up: caches, thread pool, page allocation
        decode_tokens_per_s(engine, max(args.contexts), 4, seed=0)
    for round_ in range(args.rounds):
        for model_dir, engine in engines.items():
            for context in args.contexts:
                speed = decode_tokens_per_s(engine, context, args.tokens, seed=round_)
                speeds.setdefault((model_dir, context), []).append(speed)

    short, long = min(args.contexts), max(args.contexts)
    for model_dir in engines:
        kv = engines[model_dir].chat_config.model_config.get("kv_cache_dtype", "?")
        medians = {c: statistics.median(speeds[(model_dir, c)]) for c in args.contexts}
        row = "  ".join(f"{c}: {medians[c]:6.2f} tok/s" for c in args.contexts)
        slowdown = 1 - medians[long] / medians[short]
        print(f"{model_dir} (KV {kv}): {row}  slower at {long}: {slowdown:.1%}")


if __name__ == "__main__":
    main()
