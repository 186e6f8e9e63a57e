"""The CPU decode attention kernel alone, at a context length: time per call and K/V bytes/s.

    python benchmarks/attention_kernel.py [--keys 100 2000] [--dtype float32 float16] \
        [--kv-heads 4] [--heads 32] [--head-dim 64] [--reps 300]

The 1.1B shape's layer by default (4 KV heads, 32 query heads, head dim 64, pages of 16).
Each call reads one of 22 page sets scattered over a pool 22 times their size, as a decode
step's 22 layers do, so K and V come from memory, not from cache. Threads: `TVM_NUM_THREADS`.
Also prints the largest difference from float64 numpy on the same inputs
(`mlc.testing.numpy_kernels`, cast to the output's dtype).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import tvm

from mlc.targets import get_target
from mlc.targets.cpu_attention_decode import decode_attention
from mlc.testing.kernel_case import KernelCase, is_buffer
from mlc.testing.numpy_kernels import DECODE_ATTENTION, ModelFacts, numpy_reference

PAGE = 16
LAYERS = 22


def measure(keys: int, dtype: str, kv_heads: int, heads: int, head_dim: int, reps: int) -> str:
    kernel = decode_attention(kv_heads, heads, head_dim, dtype, PAGE)
    target = get_target("llvm").tvm_target()
    lib = tvm.compile(kernel.with_attr("global_symbol", "decode"), target=target)
    rng = np.random.default_rng(0)
    n_pages = -(-keys // PAGE)
    pool = n_pages * LAYERS
    pages = rng.standard_normal((pool, 2, kv_heads, PAGE, head_dim)).astype(dtype)
    tables = [rng.permutation(pool)[:n_pages].astype("int32") for _ in range(LAYERS)]
    q = rng.standard_normal((1, heads, head_dim)).astype(dtype)
    fixed = [q, pages, np.array([0, n_pages], "int32")]
    length_info = np.array([keys - (n_pages - 1) * PAGE], "int32")
    rest = [length_info, np.zeros(1, "int32"), np.array([keys - 1], "int32")]
    rest += [np.zeros_like(q), np.zeros((1, heads), "float32")]
    fixed_args = [tvm.runtime.tensor(a) for a in fixed]
    rest_args = [tvm.runtime.tensor(a) for a in rest]
    table_args = [tvm.runtime.tensor(t) for t in tables]
    sm_scale = head_dim**-0.5

    decode = lib["decode"]

    def call(layer: int) -> None:
        decode(*fixed_args, table_args[layer], *rest_args, 0, 1.0, 1e4, sm_scale)

    for layer in range(LAYERS):  # warm-up: the thread pool, the pages' first touch
        call(layer)
    times = []
    for i in range(reps):
        start = time.perf_counter()
        call(i % LAYERS)
        times.append(time.perf_counter() - start)
    call(0)
    names = [p.name for p in kernel.params if is_buffer(p)]
    arrays = dict(zip(names, [*fixed, tables[0], *rest], strict=True))
    case = KernelCase({}, arrays, {"rotary_mode": 0, "sm_scale": sm_scale})
    reference = numpy_reference(DECODE_ATTENTION, kernel, case, ModelFacts(0.0, None))
    ours, exact = (a.astype(np.float64) for a in (rest_args[-2].numpy(), reference["output"]))
    error = np.abs(ours - exact)
    median = statistics.median(times)
    kv_bytes = 2 * keys * kv_heads * head_dim * np.dtype(dtype).itemsize
    return (
        f"{dtype:8s} {keys:6d} keys: median {median * 1e3:.3f} ms, fastest "
        f"{min(times) * 1e3:.3f} ms, K/V read at {kv_bytes / median / 1e9:.1f} GB/s; "
        f"largest difference from float64 {error.max():.1e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, nargs="+", default=[100, 2000])
    parser.add_argument("--dtype", nargs="+", default=["float32", "float16"])
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--reps", type=int, default=300)
    args = parser.parse_args()
    for dtype in args.dtype:
        for keys in args.keys:
            print(measure(keys, dtype, args.kv_heads, args.heads, args.head_dim, args.reps))


if __name__ == "__main__":
    main()
