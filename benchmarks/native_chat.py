"""The native runtime's `mlc-chat` against the Python `ChatModule` on the same build.

    python benchmarks/native_chat.py dist/SmolLM2-135M-Instruct.Q4_1-gguf --runs 5

Each run answers the same prompt greedily in a fresh process, alternating the two runtimes:
prefill and decode tokens/s (as each runtime's statistics count them), time to the first
streamed text from the generate call, the whole process's wall time and its peak resident
memory (the child's `ru_maxrss`). Prints the medians, the native/Python ratios and whether the
two answers were the same tokens. Builds the native runtime first (`mlc native build`, cached).
Not a test: run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlc.native import native_build

PYTHON_SIDE = """
import json, sys, time
from mlc import ChatModule, GenerationConfig
model, prompt, max_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
chat = ChatModule(model)
first = []
start = time.perf_counter()
answer = chat.generate(prompt, GenerationConfig(temperature=0, max_tokens=max_tokens),
                       lambda piece: first or first.append(time.perf_counter() - start))
s = chat.last_stats
print(json.dumps({"ids": chat.last_output_ids, "prefill_tokens": s.prefill_tokens,
                  "prefill_seconds": s.prefill_seconds, "decode_tokens": s.decode_tokens,
                  "decode_seconds": s.decode_seconds,
                  "time_to_first_token_seconds": first[0] if first else 0.0}))
"""


def measure(command: list[str]) -> dict:
    """Run `command` (which prints one JSON line of statistics); add wall time and peak RSS."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        if status != 0:
            raise RuntimeError(f"{command[0]} failed (status {status})")
        out.seek(0)
        stats = json.loads(out.read().decode().strip().splitlines()[-1])
    stats["wall_seconds"] = wall
    stats["peak_rss_mb"] = usage.ru_maxrss / 1024
    stats["prefill_tps"] = stats["prefill_tokens"] / stats["prefill_seconds"]
    stats["decode_tps"] = stats["decode_tokens"] / stats["decode_seconds"]
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--prompt", default="Write a long story about a lighthouse keeper. " * 12)
    args = parser.parse_args()
    native = native_build(Path(tempfile.mkdtemp(prefix="mlc-native-")), log=print)
    commands = {
        "native": [
            str(native / "bin" / "mlc-chat"),
            "--model",
            str(args.model),
            "--prompt",
            args.prompt,
            "--temperature",
            "0",
            "--max-tokens",
            str(args.max_tokens),
            "--json",
        ],
        "python": [
            sys.executable,
            "-c",
            PYTHON_SIDE,
            str(args.model),
            args.prompt,
            str(args.max_tokens),
        ],
    }
    results: dict[str, list[dict]] = {name: [] for name in commands}
    for run in range(args.runs):
        for name in commands if run % 2 == 0 else reversed(list(commands)):
            results[name].append(measure(commands[name]))
    same = results["native"][0]["ids"] == results["python"][0]["ids"]
    fields = [
        ("prefill_tps", "prefill tok/s"),
        ("decode_tps", "decode tok/s"),
        ("time_to_first_token_seconds", "first text (s)"),
        ("wall_seconds", "process wall (s)"),
        ("peak_rss_mb", "peak RSS (MB)"),
    ]
    tokens = results["native"][0]
    print(
        f"\n{args.model.name}: prompt {tokens['prefill_tokens']} tokens, "
        f"{tokens['decode_tokens']} generated, {args.runs} runs each (medians)\n"
    )
    print("| | native `mlc-chat` | Python `ChatModule` | native / Python |")
    print("|---|---|---|---|")
    for key, label in fields:
        a = statistics.median(r[key] for r in results["native"])
        b = statistics.median(r[key] for r in results["python"])
        print(f"| {label} | {a:.3f} | {b:.3f} | {a / b:.2f} |")
    print(f"\nsame tokens: {same}")


if __name__ == "__main__":
    main()
