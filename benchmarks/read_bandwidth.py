"""This machine's memory read bandwidth, measured the way our kernels read: a TVM kernel that
sums a buffer far larger than the caches, in parallel over the cores with AVX2-wide loads.

    python benchmarks/read_bandwidth.py [--mb 1024] [--threads N] [--runs 7]

The bandwidth limit of a decode step is then (bytes of weights + KV cache read) / this figure.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import tvm
from tvm.script import tirx as T

from mlc.targets.llvm import LLVMTarget

LANES = 8
ACCUMULATORS = 4  # independent sums, so that adds do not limit the loads
CHUNK = LANES * ACCUMULATORS


def read_kernel(num_floats: int, tasks: int) -> tvm.tirx.PrimFunc:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=1024, help="buffer size")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))

    num_floats = args.mb * 2**20 // 4 // (CHUNK * args.threads) * (CHUNK * args.threads)
    kernel = read_kernel(num_floats, args.threads).with_attr("global_symbol", "read")
    lib = tvm.compile(kernel, target=LLVMTarget().tvm_target())
    dev = tvm.cpu()
    a = tvm.runtime.tensor(np.ones(num_floats, np.float32), dev)
    out = tvm.runtime.tensor(np.zeros((args.threads, CHUNK), np.float32), dev)
    timer = lib.mod.time_evaluator("read", dev, number=3, repeat=args.runs)
    seconds = float(np.median(timer(a, out).results))
    assert np.isclose(out.numpy().sum(), num_floats // CHUNK * CHUNK), "kernel did not read all"
    print(
        f"read bandwidth: {num_floats * 4 / seconds / 1e9:.1f} GB/s "
        f"({args.mb} MB, {args.threads} threads, median of {args.runs})"
    )


if __name__ == "__main__":
    main()
