"""GPU schedule rules of our own, for kernels DLight's rules do not recognise.

`DequantizeMatmul`: the group-quantized linear is one reduction block whose operand is
dequantized inside the sum (`y[m, n] += x[m, k] * (((w[n, k / 8] >> s) & 15) - 7) * scale`;
a GGUF block format's decoding alike, from packed words or a K-quant's bytes).
DLight's GEMV/LowBatchGEMV/Matmul rules only recognise plain buffer loads, so without this
rule the kernel falls to GeneralReduction (one thread block per output) or, with no epilogue,
to Fallback (one thread per output, serial over all of K). The schedule here is a GEMV:

- a thread block computes `cols` outputs of one row: `threadIdx.y` picks the output column
  (a row of the weight), `threadIdx.x` a slice of K;
- each thread walks K one packed word (8 values) at a time; consecutive threads read
  consecutive words, so weight loads coalesce; the scale is read once per value group;
- per-thread sums are reduced across `threadIdx.x` (warp shuffles where the target declares
  a warp size, shared memory otherwise), then the epilogue (bias, residual add, cast) is
  applied by one thread per output.

Decode (`[batch, 1, K]`) and prefill (`[1, seq_len, K]`) both get it, one row per thread
block (`blockIdx.y`). Prefill would gain from a GEMM schedule that reuses each dequantized
weight across rows; with the row count dynamic, a register tile over rows needs padding
this rule does not do (a predicated row tile leaves local buffers of dynamic size).
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import SBlockInfo, normalize_prim_func
from tvm.s_tir.dlight.base import try_inline_contiguous_spatial
from tvm.s_tir.dlight.gpu.base import GPUScheduleRule
from tvm.target import Target

# Packed weights: 4-bit values 8 to a uint32 (group quantization, the GGML 32-value formats),
# or the bytes of a K-quant super-block.
PACKED_DTYPES = ("uint32", "uint8")
VALUES_PER_WORD = 8  # the K step one thread takes per load


class DequantizeMatmul(GPUScheduleRule):
    """GEMV for a reduction over K whose weight operand is read from packed words."""

    def __init__(self, cols: int = 4, k_threads: int = 32):
        self.cols, self.k_threads = cols, k_threads

    def apply(self, func: tirx.PrimFunc, target: Target, _: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        infos = try_inline_contiguous_spatial(sch, normalize_prim_func(sch))
        if not infos or len(infos) > 2:
            return None
        main, epilogue = infos[0], (infos[1] if len(infos) == 2 else None)
        if epilogue is not None and not epilogue.is_injective():
            return None
        if not _is_dequantize_matmul(sch.get(main.block_rv), main.dom_kind()):
            return None
        k_extent = main.iters[-1].dom
        if not isinstance(k_extent, int | tirx.IntImm):
            return None
        k_extent = int(k_extent)

        max_threads = int(target.attrs.get("max_num_threads", 256))
        k_threads = self.k_threads
        while k_threads > 1 and k_threads * VALUES_PER_WORD > k_extent:
            k_threads //= 2
        cols = max(1, min(self.cols, max_threads // k_threads))
        try:
            return self._schedule(sch, main.block_rv, epilogue, cols, k_threads)
        except (s_tir.ScheduleError, ValueError):  # an epilogue or loop nest it cannot place
            return None

    def _schedule(
        self,
        sch: s_tir.Schedule,
        block: s_tir.schedule.SBlockRV,
        epilogue: SBlockInfo | None,
        cols: int,
        k_threads: int,
    ) -> s_tir.Schedule:
        *spatial, n, k = sch.get_loops(block)
        row = sch.fuse(*spatial)
        n_outer, n_inner = sch.split(n, [None, cols])
        k_outer, k_thread, k_value = sch.split(k, [None, k_threads, VALUES_PER_WORD])
        sch.reorder(row, n_outer, n_inner, k_thread, k_outer, k_value)

        # Partial sums per K thread in a register, then one cross-thread reduction per output.
        partial = sch.rfactor(k_thread, factor_axis=0)
        row, n_outer, n_inner, k_thread, _, k_value = sch.get_loops(partial)
        sch.bind(row, "blockIdx.y")
        sch.bind(n_outer, "blockIdx.x")
        sch.bind(n_inner, "threadIdx.y")
        sch.bind(k_thread, "threadIdx.x")
        sch.set_scope(partial, 0, "local")
        sch.unroll(k_value)

        sch.reverse_compute_at(block, n_inner)
        (k_thread,) = sch.get_loops(block)[3:]
        sch.bind(k_thread, "threadIdx.x")
        if epilogue is not None:
            sch.set_scope(block, 0, "local")
            sch.reverse_compute_at(epilogue.block_rv, n_inner)
        return sch


def _is_dequantize_matmul(block: tirx.SBlock, dom_kind: str) -> bool:
    """Spatial iters then one reduction over K, reading a packed 2-D weight."""
    if not (len(dom_kind) >= 3 and dom_kind[-1] == "R" and set(dom_kind[:-1]) == {"S"}):
        return False
    packed = [r.source for r in block.reads if str(r.source.dtype) in PACKED_DTYPES]
    return any(len(buffer.shape) == 2 for buffer in packed)
