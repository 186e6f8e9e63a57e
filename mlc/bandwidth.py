"""This machine's memory read bandwidth, measured the way our kernels read: a TVM kernel that sums
a buffer far larger than the caches, in parallel over the threads with AVX2-wide loads.

    python -m mlc.bandwidth [--mb 1024] [--threads N] [--runs 7] [--json]

A decode step reads every weight it multiplies once, so its speed limit is this figure divided
by the bytes a token reads (`decode_bytes_per_token`); `mlc bench` runs the probe in a process
of its own right after its decode runs and reports the fraction of that limit reached.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

LANES = 8
ACCUMULATORS = 4  # independent sums, so that adds do not limit the loads
CHUNK = LANES * ACCUMULATORS


def read_kernel(num_floats: int, tasks: int):
    """A prim func `read(a, out)`: task t sums its contiguous share of `a` into `out[t]`."""
    from tvm.script import tirx as T

    per_task = num_floats // tasks // CHUNK * CHUNK

    @T.prim_func(s_tir=True)
    def read(a: T.Buffer((num_floats,), "float32"), out: T.Buffer((tasks, CHUNK), "float32")):
        T.func_attr({"tirx.is_scheduled": True})
        for t in T.parallel(tasks):
            with T.sblock("sum"):
                T.reads()
                T.writes()
                acc = T.sblock_alloc_buffer((CHUNK,), "float32")
                for j in T.vectorized(CHUNK):
                    acc[j] = T.float32(0)
                for i in T.serial(per_task // CHUNK):
                    for k in T.unroll(ACCUMULATORS):
                        base = t * per_task + i * CHUNK + k * LANES
                        acc[T.Ramp(k * LANES, 1, LANES)] = (
                            acc[T.Ramp(k * LANES, 1, LANES)] + a[T.Ramp(base, 1, LANES)]
                        )
                for j in T.vectorized(CHUNK):
                    out[t, j] = acc[j]

    return read


def measure_read_bandwidth(mb: int, threads: int, runs: int) -> dict[str, Any]:
    """GB/s (1e9 bytes) of the read kernel over `mb` MiB, median of `runs` timings; raises if
    the kernel did not read every value."""
    import numpy as np
    import tvm

    from mlc.targets.llvm import LLVMTarget

    num_floats = mb * 2**20 // 4 // (CHUNK * threads) * (CHUNK * threads)
    if num_floats == 0:
        raise ValueError(f"--mb {mb} is too small for {threads} threads")
    kernel = read_kernel(num_floats, threads).with_attr("global_symbol", "read")
    lib = tvm.compile(kernel, target=LLVMTarget().tvm_target())
    dev = tvm.cpu()
    a = tvm.runtime.tensor(np.ones(num_floats, np.float32), dev)
    out = tvm.runtime.tensor(np.zeros((threads, CHUNK), np.float32), dev)
    timer = lib.mod.time_evaluator("read", dev, number=3, repeat=runs)
    seconds = statistics.median(timer(a, out).results)
    if out.numpy().sum() != num_floats:
        raise RuntimeError("the read kernel did not sum every value it was given")
    return {
        "read_bandwidth_gb_s": num_floats * 4 / seconds / 1e9,
        "probe_mb": mb,
        "probe_threads": threads,
        "probe_runs": runs,
    }


def probe_in_subprocess(threads: int, mb: int = 1024, runs: int = 7) -> dict[str, Any]:
    """`measure_read_bandwidth` in a process of its own (its buffer does not count towards the
    caller's peak memory); `{"error": ...}` where it cannot run."""
    command = [sys.executable, "-m", "mlc.bandwidth", "--mb", str(mb), "--runs", str(runs)]
    env = {**os.environ, "TVM_NUM_THREADS": str(threads)}
    done = subprocess.run(
        [*command, "--threads", str(threads), "--json"], capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"bandwidth probe failed: {last}"}
    return json.loads(done.stdout)


def decode_bytes_per_token(model_dir: Path, context_tokens: float) -> dict[str, float]:
    """Bytes one decode step of one sequence reads, from the build's tensor cache and config:
    every weight but the embedding table (one row of it, unless the LM head is the table),
    a mixture's experts scaled by `top_k / experts`, and the K and V cache of
    `context_tokens` positions in every layer (a sliding layer's at most its window)."""
    cache = json.loads((Path(model_dir) / "tensor-cache.json").read_text())
    config = json.loads((Path(model_dir) / "mlc-chat-config.json").read_text())
    model = config.get("model_config", {})
    tied = bool(model.get("tie_word_embeddings"))
    experts = model.get("num_experts")
    top_k = model.get("num_experts_per_tok")
    weights = 0.0
    for shard in cache["records"]:
        for record in shard["records"]:
            name, nbytes = record["name"], record["nbytes"]
            if name.startswith("embed_tokens.") and not tied:
                nbytes /= record["shape"][0]  # one row
            elif ".experts_" in name and experts and top_k:
                nbytes *= top_k / experts
            weights += nbytes
    return {"weight_bytes": weights, "kv_cache_bytes": _kv_bytes(model, context_tokens)}


def _kv_bytes(model: dict[str, Any], context_tokens: float) -> float:
    layers = model.get("num_hidden_layers")
    kv_heads = model.get("num_key_value_heads") or model.get("num_attention_heads")
    head_dim = model.get("head_dim") or (
        model["hidden_size"] // model["num_attention_heads"]
        if model.get("hidden_size") and model.get("num_attention_heads")
        else None
    )
    if not (layers and kv_heads and head_dim):
        return 0.0
    dtype_bytes = 2 if model.get("kv_cache_dtype") == "float16" else 4
    window = model.get("sliding_window")
    sliding = set(model.get("sliding_layers") or [])
    total = 0.0
    for layer in range(layers):
        tokens = min(context_tokens, window) if window and layer in sliding else context_tokens
        total += 2 * kv_heads * head_dim * dtype_bytes * tokens
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=1024, help="buffer size in MiB")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    result = measure_read_bandwidth(args.mb, args.threads, args.runs)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"read bandwidth: {result['read_bandwidth_gb_s']:.1f} GB/s "
            f"({args.mb} MiB, {args.threads} threads, median of {args.runs})"
        )


if __name__ == "__main__":
    main()
