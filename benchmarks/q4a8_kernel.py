"""The q4a8 matmul kernel alone, on the 1.1B shape's layers: GMAC/s for prefill and decode rows.

    python benchmarks/q4a8_kernel.py [--rows 128 1] [--threads 1] [--repeat 5] [--cold]
        [--format q4a8_1|Q4_K|Q5_K|Q6_K]

Builds `targets/x86_kernels.q4a8_matmul_avx2` for this CPU (`--format`: `q4a8_1`'s weights,
or a GGUF K-quant's in its int8-kernel layout), feeds random packed weights and activations,
and times it (median of `--repeat` runs of a loop of calls). GMAC/s counts `rows * n * k`
multiply-adds; the bytes column is the weights read per call, for decode the figure to compare
with `python -m mlc.bandwidth`. `--cold` cycles through copies of the weights larger than
the caches, as decode reads them (from memory, not from L3).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

# (name, n, k) of TinyLlama-1.1B's Linear layers.
LAYERS = [("qkv", 2560, 2048), ("o", 2048, 2048), ("gate_up", 11264, 2048), ("down", 2048, 5632)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[128, 1])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cold", action="store_true", help="weights from memory, not cache")
    parser.add_argument("--format", choices=["q4a8_1", "Q4_K", "Q5_K", "Q6_K"], default="q4a8_1")
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)

    import tvm

    from mlc.quantization.int8_activations import GROUP
    from mlc.quantization.kquant_nibbles import K_NIBBLE_FORMATS
    from mlc.targets import get_target
    from mlc.targets.x86_kernels import has_avx512_vnni, q4a8_matmul_avx2
    from mlc.testing.random_blocks import random_k_blocks

    target = get_target("llvm").tvm_target()
    vnni = has_avx512_vnni(target)
    rng = np.random.default_rng(0)
    print(f"{args.format}, threads {args.threads}, {'AVX512-VNNI' if vnni else 'AVX2'}")
    print(f"{'layer':>8} {'rows':>5} {'ms/call':>9} {'GMAC/s':>8} {'weights GB/s':>13}")
    fmt = K_NIBBLE_FORMATS.get(args.format)
    for name, n, k in LAYERS:
        groups = k // GROUP
        if fmt is None:
            func = q4a8_matmul_avx2(n, k, "float16", vnni=vnni)
            arrays = [
                rng.integers(0, 2**32, (n, k // 8), dtype=np.uint64).astype(np.uint32),
                rng.uniform(0.01, 0.02, (n, groups)).astype(np.float16),
            ]
        else:
            func = q4a8_matmul_avx2(n, k, "uint8", vnni, fmt.has_min, fmt.bits, k_scales=True)
            blocks = random_k_blocks(args.format, n, k, scale=1e-2)
            arrays = list(fmt.int8_operands(fmt.from_ggml_blocks(blocks)).values())
        kernel = tvm.compile(func.with_attr("global_symbol", "kernel"), target=target)["kernel"]
        weights_bytes = sum(a.nbytes for a in arrays)
        copies = -(-512 * 2**20 // weights_bytes) if args.cold else 1  # 512 MB: past any L3
        weights = [[tvm.runtime.tensor(a) for a in arrays] for _ in range(copies)]
        sums = groups * (2 if fmt is not None and fmt.bits == 6 else 1)  # Q6_K: per half-run
        for rows in args.rows:
            xq, xs, xc, y = (
                tvm.runtime.tensor(a)
                for a in (
                    rng.integers(-127, 128, (1, rows, k)).astype(np.int8),
                    rng.uniform(0.01, 0.02, (1, rows, groups)).astype(np.float32),
                    rng.uniform(-1, 1, (1, rows, sums)).astype(np.float32),
                    np.zeros((1, rows, n), np.float32),
                )
            )
            calls = max(copies, int(2e9 / (rows * n * k)))
            kernel(xq, xs, xc, *weights[0], y)
            runs = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                for c in range(calls):
                    kernel(xq, xs, xc, *weights[c % copies], y)
                runs.append((time.perf_counter() - start) / calls)
            seconds = float(np.median(runs))
            print(
                f"{name:>8} {rows:>5} {seconds * 1e3:9.3f} {rows * n * k / seconds / 1e9:8.1f} "
                f"{weights_bytes / seconds / 1e9:13.1f}"
            )


if __name__ == "__main__":
    main()
