"""A mixture of experts against the dense model with the same active parameters, and llama.cpp.

    python benchmarks/moe_vs_dense.py [--work DIR] [--quantization q4a8_1] [--threads 2]
        [--prompt-len 128] [--gen-len 64] [--runs 3] [--no-llama-cpp]

Makes (once, under `--work`) two random-weight models in bfloat16: `qwen3-moe-3b-a0.6b` (Qwen3
attention, 80 experts of width 384, 8 per token, about 3 B parameters) and its dense twin
`qwen3-0.6b` (an MLP of width 3072: the same active parameters). Builds each with `mlc build`
in its own process, recording the build's wall time and peak memory (the process's VmHWM,
through `/usr/bin/time`), then runs `mlc bench` on both, with `--compare llama.cpp` (our
exporter writes the source as a Q4_0 GGUF; `mlc bench` runs it through llama-cpp-python in the
same run and threads). Prints one table: decode and prefill tokens/s, MoE/dense and
mlc/llama.cpp ratios, build time and peak build memory.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from mlc.testing.random_model import PRESETS, save_model

MODELS = ("qwen3-moe-3b-a0.6b", "qwen3-0.6b")


def make(work: Path, preset: str) -> Path:
    path = work / "hf" / preset
    if not (path / "config.json").is_file():
        start = time.perf_counter()
        save_model(path, **PRESETS[preset])
        print(f"made {path} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return path


def build(source: Path, out: Path, quantization: str) -> tuple[Path, float, float]:
    """(artifact, seconds, peak MB) of `mlc build` in a process of its own."""
    command = ["/usr/bin/time", "-v", "mlc", "build", str(source)]
    command += ["--quantization", quantization, "--output", str(out), "--quiet"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"mlc build failed:\n{done.stderr[-3000:]}")
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    (artifact,) = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return artifact, seconds, int(peak.group(1)) / 1024 if peak else float("nan")


def bench(artifact: Path, args: argparse.Namespace) -> dict:
    command = ["mlc", "bench", str(artifact), "--json", "--threads", str(args.threads)]
    command += ["--prompt-len", str(args.prompt_len), "--gen-len", str(args.gen_len)]
    command += ["--runs", str(args.runs)]
    if not args.no_llama_cpp:
        command += ["--compare", "llama.cpp"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"mlc bench failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("dist/bench-moe"))
    parser.add_argument("--quantization", default="q4a8_1")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--gen-len", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-llama-cpp", action="store_true")
    args = parser.parse_args()
    rows = {}
    for preset in MODELS:
        source = make(args.work, preset)
        out = args.work / "dist" / preset
        artifact, seconds, peak = build(source, out, args.quantization)
        rows[preset] = {"build_s": seconds, "build_peak_mb": peak, **bench(artifact, args)}
        print(json.dumps({preset: rows[preset]}), file=sys.stderr)
    moe, dense = (rows[m] for m in MODELS)
    print(f"{'model':22} {'decode tok/s':>12} {'prefill tok/s':>13} {'build s':>8} {'peak MB':>8}")
    for preset, row in rows.items():
        print(
            f"{preset:22} {row['decode_tokens_per_s']:12.1f} {row['prefill_tokens_per_s']:13.1f}"
            f" {row['build_s']:8.0f} {row['build_peak_mb']:8.0f}"
        )
        for ref in row.get("references", []):
            print(
                f"  {ref['engine'][:40]:40} decode {ref['decode_tokens_per_s']:.1f} tok/s "
                f"(mlc/ref {ref['decode_ratio']:.2f}x), prefill {ref['prefill_tokens_per_s']:.1f} "
                f"(mlc/ref {ref['prefill_ratio']:.2f}x)"
            )
    ratio = moe["decode_tokens_per_s"] / dense["decode_tokens_per_s"]
    print(f"MoE/dense decode: {ratio:.2f}x")


if __name__ == "__main__":
    main()
