"""CPU schedule rules for the kernels an LLM spends its time in.

`MatmulNT` covers `C[..., j] = sum_k A[..., k] * W[j, k]` (every Linear layer, in decode and in
prefill, with or without dequantization inside the reduction) with an optional elementwise
epilogue (a residual add). The output features `j` are split into tiles spread over the cores;
inside a tile all rows of `A` are visited while the tile's weight rows stay in cache. The `k`
reduction is factored into `VECTOR_LANES` partial sums (rfactor) so that the innermost loop is a
plain vector multiply-add, which dequantizes a whole packed word at once in quantized layers.

`Elementwise` covers kernels made only of spatial blocks (the SwiGLU/GeGLU `split, act,
multiply` that fusion leaves, residual adds): every block is inlined into the last, whose
innermost axis is vectorised and the rest spread over the cores. Each element is computed by
the same vector code at any sequence length, so prefill and decode stay bit-identical.

`vector_sigmoid` lowers float32 `sigmoid` (SiLU's) for LLVM as `1 / (1 + 2^t)`, `t = -x log2 e`,
with 2^t from the exponent bits and a polynomial: a vector of them is a few vector instructions,
where LLVM calls the scalar `expf` once per lane (relative error about 2e-7).
"""

from __future__ import annotations

import math

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight import ScheduleRule, normalize_prim_func, try_inline_contiguous_spatial
from tvm.target import Target

from .vector_math import exp2, splat

# Weight rows per tile: 16 rows of a 2048-wide fp32 layer are 128 KB, about an L2's share.
TILE_N = 16
# Partial sums per output: one AVX2 register of float32 (and one 4-bit word of 8 values).
VECTOR_LANES = 8
# Vectors per quantization group of 32 (4-bit and 8-bit codes).
GROUP_VECTORS = 4
# Rows up to this many values are vectorised whole by the row-reduction rule.
SHORT_ROW = 64


class MatmulNT(ScheduleRule):
    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        infos = try_inline_contiguous_spatial(sch, normalize_prim_func(sch))
        if infos is None or not 1 <= len(infos) <= 2:
            return None
        main = infos[0]
        epilogue = infos[1] if len(infos) == 2 else None
        if epilogue is not None and not epilogue.is_injective():
            return None
        kinds = "".join(i.kind for i in main.iters)
        # Spatial iters, the last of them the output feature, then one reduction.
        if not (kinds.endswith("SR") and kinds.count("R") == 1 and kinds[:-1].count("S") >= 2):
            return None
        n_extent = main.iters[-2].dom
        if not isinstance(n_extent, int | tirx.IntImm):
            return None
        # Narrow outputs (a router's few experts) are one tile:
        # left to LLVM, they are vectorised across rows, and rows would differ by batch size.
        tile = TILE_N if int(n_extent) >= 2 * TILE_N else int(n_extent)
        try:
            return self._schedule(sch, main, epilogue, tile)
        except (ValueError, RuntimeError):  # ScheduleError: a shape this rule does not cover
            return None

    @staticmethod
    def _schedule(sch: s_tir.Schedule, main, epilogue, tile: int) -> s_tir.Schedule:
        k_extent = main.iters[-1].dom
        block = main.block_rv
        *rows, n, k = sch.get_loops(block)
        n_outer, n_inner = sch.split(n, factors=[None, tile])
        vectorize = isinstance(k_extent, int | tirx.IntImm) and int(k_extent) % VECTOR_LANES == 0
        if not vectorize:
            sch.reorder(n_outer, *rows, n_inner, k)
        else:
            # k = (k_outer, k_group, lane): with a group of GROUP_WORDS vectors spelled out, the
            # simplifier sees that a vector never straddles a quantization group, so the
            # group's scale becomes one broadcast load instead of a per-lane gather.
            grouped = int(k_extent) % (VECTOR_LANES * GROUP_VECTORS) == 0
            factors = [None, GROUP_VECTORS, VECTOR_LANES] if grouped else [None, VECTOR_LANES]
            *k_outer, k_lane = sch.split(k, factors=factors)
            sch.reorder(n_outer, *rows, n_inner, *k_outer, k_lane)
            # The lane becomes the last, contiguous axis of the partial-sum buffer.
            out_ndim = len(sch.get(block).writes[0].region)
            partial = sch.rfactor(k_lane, factor_axis=out_ndim)
            # Per output (row, n): partial[lane] accumulates over k_outer, `lane` innermost.
            sch.compute_at(partial, n_inner)
            loops = sch.get_loops(partial)
            lane, k_loops = loops[-1 - len(k_outer)], loops[-len(k_outer) :]
            sch.reorder(*k_loops, lane)
            sch.vectorize(lane)
        sch.parallel(n_outer)
        if epilogue is not None:
            sch.reverse_compute_at(epilogue.block_rv, n_outer)
            # Vectorised here, the epilogue is the same code for every row. Left to LLVM, it
            # is vectorised across rows (a batch of 8 or more), and fast-math then drops a
            # float16 round trip (`cast` to the model's dtype) that the scalar rest keeps.
            sch.vectorize(sch.get_loops(epilogue.block_rv)[-1])
        return sch


class Elementwise(ScheduleRule):
    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        infos = try_inline_contiguous_spatial(sch, normalize_prim_func(sch))
        if infos is None or len(infos) != 1 or not infos[0].is_injective():
            return None
        block = infos[0].block_rv
        loops = sch.get_loops(block)
        if not loops:
            return None
        inner = infos[0].iters[-1].dom
        if isinstance(inner, int | tirx.IntImm) and int(inner) % VECTOR_LANES == 0:
            chunk, lane = sch.split(loops[-1], factors=[None, VECTOR_LANES])
            sch.vectorize(lane)
            loops = [*loops[:-1], chunk]
        sch.parallel(sch.fuse(*loops) if len(loops) > 1 else loops[0])
        return sch


class RowReduction(ScheduleRule):
    """Kernels that reduce each row and then map it (RMSNorm, LayerNorm): every block is computed
    inside the output's loop over rows. Left alone, LLVM vectorises the per-row scalar steps
    (`rsqrt`) across rows, where the vector and the scalar remainder code round differently: a
    row's result would depend on how many rows came with it (on batch size and prefill length).
    Inside one row's iteration, each step is the same code whatever the number of rows. The rows
    stay on one core: a norm is too small to pay for a parallel launch in decode."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        infos = try_inline_contiguous_spatial(sch, normalize_prim_func(sch))
        if infos is None or len(infos) < 2 or not any(i.is_reduction() for i in infos):
            return None
        output = infos[-1]
        if not output.is_injective() or len(output.iters) < 2:
            return None
        row_loop, inner = sch.get_loops(output.block_rv)[-2:]
        try:
            for info in reversed(infos[:-1]):
                sch.compute_at(info.block_rv, row_loop, preserve_unit_loops=True)
            # A short row (a router's softmax over 4 to 16 experts) is unrolled by LLVM, which
            # then vectorises across rows after all; a vector op in the row's body stops it.
            extent = output.iters[-1].dom
            if isinstance(extent, int | tirx.IntImm) and int(extent) <= SHORT_ROW:
                sch.vectorize(inner)
        except (ValueError, RuntimeError):  # ScheduleError is a RuntimeError
            return None
        return sch


SIGMOID_EXP2_MAX = 125.0


def vector_sigmoid(call: tirx.Call) -> tirx.PrimExpr:
    """The LLVM lowering of `tirx.sigmoid`: float32 as `1 / (1 + 2^(-x log2 e))`."""
    (x,) = call.args
    dtype = tvm.DataType(str(x.ty))
    element = str(dtype).split("x")[0]
    one = splat(1.0, dtype.lanes, element)
    if element != "float32":
        return one / (one + tirx.exp(-x))
    # 2^t at most 2^125: the quotient stays a normal float32, off the denormal edge where the
    # scalar and the vector code would flush differently.
    t = x * splat(-1.0 / math.log(2.0), dtype.lanes)
    t = tirx.min(t, splat(SIGMOID_EXP2_MAX, dtype.lanes))
    return one / (one + exp2(t, dtype.lanes))


tirx.register_intrin_lowering("tirx.sigmoid", target="llvm", f=vector_sigmoid, level=100)
