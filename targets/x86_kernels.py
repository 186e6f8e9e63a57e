"""Hand-written x86 (AVX2) kernels for the kernel kinds the quantization schemes name.

`q4a8_matmul`: `y[rows, N] = Σ_g sw[n, g] · xs[g] · Σ q[n, k] · xq[k] + Σ_g sw[n, g] · xc[g]` with
4-bit unsigned weights packed 8 per uint32 and int8 activations, both in the layouts of
`mlc.quantization.int8_activations`. A block of 8 groups is four 32-byte loads of weights (word
j of each group), each split into low and high nibbles (the even and odd values) and multiplied
with the contiguous activations by `vpdpbusd` (AVX512-VNNI; `vpmaddubsw` + `vpmaddwd` on AVX2),
which leaves group g's integer sum in lane g: the eight sums are converted and scaled at once.
Groups after the whole blocks go in pairs, reduced with scalar lane sums. Output rows are split
into tiles over the cores; a tile's weights stay in cache while every row of `x` passes.

`quantize_activations`: the same arithmetic as the portable kernel (absmax, `127 / absmax`,
round to nearest even, the zero-point term), eight lanes at a time, one token per core, each
group written straight into the kernel layout.
"""

from __future__ import annotations

import tvm
from tvm import tirx
from tvm.script import tirx as T

from mlc.quantization.int8_activations import (
    ACT_MAX,
    BLOCK_GROUPS,
    BLOCK_WORDS,
    GROUP,
    KERNEL_ATTR,
    Q4A8_MATMUL,
    QUANTIZE_ACTIVATIONS,
)

TILE_N = 16
# One activation row (token) per pass over a tile's weights. Unpacking each weight word once for
# 4 rows was measured slower (121 vs 133 GMAC/s on a 2560x2048 layer, Zen 4, one thread; 8 or 32
# rows per tile change nothing), and its float sums round differently from the one-row (decode)
# path, which flips int8 activation roundings downstream, so prefill and token-by-token logits
# drift apart (~1 on SmolLM2) although every call is exact against its own inputs.

_MADD_UBSW = "llvm.x86.avx2.pmadd.ub.sw"
_MADD_WD = "llvm.x86.avx2.pmadd.wd"
_DPBUSD = "llvm.x86.avx512.vpdpbusd.256"  # AVX512-VNNI with AVX512VL


def _u8(value: int, lanes: int):
    return T.Broadcast(T.uint8(value), lanes)


def _word_dot(acc, w, x_even, x_odd, vnni: bool):
    """`acc` + the int32x8 sums of 32 weight bytes' low nibbles times `x_even` and high nibbles
    times `x_odd` (four products per lane each)."""
    lo = T.bitwise_and(w, _u8(15, 32))
    hi = T.bitwise_and(T.shift_right(w, _u8(4, 32)), _u8(15, 32))
    if vnni:  # vpdpbusd: u8 x s8, four products summed into each int32 lane, accumulating
        acc = T.call_llvm_pure_intrin("int32x8", _DPBUSD, acc, lo, x_even)
        return T.call_llvm_pure_intrin("int32x8", _DPBUSD, acc, hi, x_odd)
    even = T.call_llvm_pure_intrin("int16x16", _MADD_UBSW, lo, x_even)
    odd = T.call_llvm_pure_intrin("int16x16", _MADD_UBSW, hi, x_odd)
    return acc + T.call_llvm_pure_intrin(
        "int32x8", _MADD_WD, even + odd, T.Broadcast(T.int16(1), 16)
    )


def _pair_dot(qw, xq, n, i, pair, vnni: bool = False):
    """int32x8: lanes 0-3 partial sums of the pair's first group, lanes 4-7 of the second."""
    w = T.reinterpret("uint8x32", qw[n, T.Ramp(pair * 8, 1, 8)])
    even_x, odd_x = xq[i, T.Ramp(pair * 64, 1, 32)], xq[i, T.Ramp(pair * 64 + 32, 1, 32)]
    return _word_dot(T.Broadcast(T.int32(0), 8), w, even_x, odd_x, vnni)


def _single_dot(qw, xq, n, i, group):
    """int32x8 partial sums of one unpaired group (layout: 16 even values, then 16 odd)."""
    w = T.reinterpret("uint8x16", qw[n, T.Ramp(group * 4, 1, 4)])
    lo = T.bitwise_and(w, _u8(15, 16))
    hi = T.bitwise_and(T.shift_right(w, _u8(4, 16)), _u8(15, 16))
    q = T.Shuffle([lo, hi], list(range(32)))
    p = T.call_llvm_pure_intrin("int16x16", _MADD_UBSW, q, xq[i, T.Ramp(group * GROUP, 1, 32)])
    return T.call_llvm_pure_intrin("int32x8", _MADD_WD, p, T.Broadcast(T.int16(1), 16))


def _block_sums(qw, xq, n, i, block, vnni: bool = False):
    """float32x8: lane g holds the integer dot product of group g of `block`."""
    acc = T.Broadcast(T.int32(0), 8)
    for j in range(4):
        w = T.reinterpret("uint8x32", qw[n, T.Ramp(block * BLOCK_WORDS + j * 8, 1, 8)])
        base = block * BLOCK_GROUPS * GROUP + j * 64
        acc = _word_dot(acc, w, xq[i, T.Ramp(base, 1, 32)], xq[i, T.Ramp(base + 32, 1, 32)], vnni)
    return T.Cast("float32x8", acc)


def _lanes_sum(buf, base, lanes):
    total = buf[base]
    for lane in range(1, lanes):
        total = total + buf[base + lane]
    return total


def q4a8_matmul_avx2(n: int, k_padded: int, scale_dtype: str, vnni: bool = False) -> tirx.PrimFunc:
    """The kernel for `[n, k_padded]` weights; `vnni` uses AVX512-VNNI's `vpdpbusd` (on
    256-bit registers) for the integer dot products where the CPU has it."""
    groups = k_padded // GROUP
    words = k_padded // 8
    blocks = groups // BLOCK_GROUPS
    tail_pairs = (groups - blocks * BLOCK_GROUPS) // 2
    single = groups % 2 == 1
    tiles = (n + TILE_N - 1) // TILE_N

    def scales(qs, xs, row, i, block):
        sw = T.Cast("float32x8", qs[row, T.Ramp(block * BLOCK_GROUPS, 1, BLOCK_GROUPS)])
        return sw * xs[i, T.Ramp(block * BLOCK_GROUPS, 1, BLOCK_GROUPS)]

    def zero_point(qs, xc, row, i, block):
        sw = T.Cast("float32x8", qs[row, T.Ramp(block * BLOCK_GROUPS, 1, BLOCK_GROUPS)])
        return sw * xc[i, T.Ramp(block * BLOCK_GROUPS, 1, BLOCK_GROUPS)]

    def tail_scalar(qs, xs, xc, row, i, group, dot):
        sw = T.Cast("float32", qs[row, group])
        return sw * (T.Cast("float32", dot) * xs[i, group] + xc[i, group])

    @T.macro
    def finish_row(qw, qs, xq, xs, xc, y, acc, part, tail, row, i):
        """The groups after the whole blocks, then the output value of (i, row)."""
        tail[0] = T.float32(0)
        for p in range(tail_pairs):
            part[T.Ramp(0, 1, 8)] = _pair_dot(qw, xq, row, i, blocks * 4 + p, vnni)
            tail[0] = (
                tail[0]
                + tail_scalar(
                    qs, xs, xc, row, i, blocks * BLOCK_GROUPS + 2 * p, _lanes_sum(part, 0, 4)
                )
                + tail_scalar(
                    qs, xs, xc, row, i, blocks * BLOCK_GROUPS + 2 * p + 1, _lanes_sum(part, 4, 4)
                )
            )
        if single:
            part[T.Ramp(0, 1, 8)] = _single_dot(qw, xq, row, i, groups - 1)
            tail[0] = tail[0] + tail_scalar(qs, xs, xc, row, i, groups - 1, _lanes_sum(part, 0, 8))
        y[i, row] = _lanes_sum(acc, 0, 8) + tail[0]

    @T.prim_func
    def q4a8_matmul(
        var_xq: T.handle,
        var_xs: T.handle,
        var_xc: T.handle,
        qw: T.Buffer((n, words), "uint32"),
        qs: T.Buffer((n, groups), scale_dtype),
        var_y: T.handle,
    ):
        T.func_attr({"tir.noalias": True, "tir.is_scheduled": True})
        batch = T.int64()
        seq = T.int64()
        xq_in = T.match_buffer(var_xq, (batch, seq, k_padded), "int8")
        xs_in = T.match_buffer(var_xs, (batch, seq, groups), "float32")
        xc_in = T.match_buffer(var_xc, (batch, seq, groups), "float32")
        y_out = T.match_buffer(var_y, (batch, seq, n), "float32")
        # The (batch, seq) tokens as one axis of rows, over the same memory.
        rows = T.meta_var(batch * seq)
        xq = T.decl_buffer((rows, k_padded), "int8", data=xq_in.data)
        xs = T.decl_buffer((rows, groups), "float32", data=xs_in.data)
        xc = T.decl_buffer((rows, groups), "float32", data=xc_in.data)
        y = T.decl_buffer((rows, n), "float32", data=y_out.data)
        for tile in T.parallel(tiles):
            acc = T.decl_buffer((8,), "float32", scope="local")
            part = T.decl_buffer((8,), "int32", scope="local")
            tail = T.decl_buffer((1,), "float32", scope="local")
            for i in range(rows):
                for t in range(TILE_N):
                    if tile * TILE_N + t < n:
                        acc[T.Ramp(0, 1, 8)] = T.Broadcast(T.float32(0), 8)
                        for b in range(blocks):
                            acc[T.Ramp(0, 1, 8)] = acc[T.Ramp(0, 1, 8)] + (
                                _block_sums(qw, xq, tile * TILE_N + t, i, b, vnni)
                                * scales(qs, xs, tile * TILE_N + t, i, b)
                                + zero_point(qs, xc, tile * TILE_N + t, i, b)
                            )
                        finish_row(qw, qs, xq, xs, xc, y, acc, part, tail, tile * TILE_N + t, i)

    return q4a8_matmul


def quantize_activations_avx2(k: int) -> tirx.PrimFunc:
    """float32 `x[batch, seq, k]` → (`xq` int8 `[.., Kp]` in the kernel layout, `xs`, `xc`)."""
    groups = (k + GROUP - 1) // GROUP
    k_padded = groups * GROUP
    whole = k // GROUP  # groups with all values inside k; a last partial one is zero-padded
    in_blocks = groups // BLOCK_GROUPS * BLOCK_GROUPS  # groups stored block-transposed
    paired = groups // 2 * 2  # then pair-interleaved groups up to here, then one single

    def value(x, r, index):
        return T.if_then_else(index < k, x[r, T.min(index, k - 1)], T.float32(0))

    @T.macro
    def quantize_group(x, xs, xc, r, g, q, lanes, total, full: bool):
        """Group g of row r: `xs`, `xc`, and its 32 int8 values in natural order into `q`."""
        if full:
            lanes[T.Ramp(0, 1, 8)] = T.max(
                T.max(
                    T.fabs(x[r, T.Ramp(g * GROUP, 1, 8)]), T.fabs(x[r, T.Ramp(g * GROUP + 8, 1, 8)])
                ),
                T.max(
                    T.fabs(x[r, T.Ramp(g * GROUP + 16, 1, 8)]),
                    T.fabs(x[r, T.Ramp(g * GROUP + 24, 1, 8)]),
                ),
            )
        else:
            for u in range(8):
                lanes[u] = T.float32(0)
            for e in range(GROUP):
                lanes[e % 8] = T.max(lanes[e % 8], T.fabs(value(x, r, g * GROUP + e)))
        lanes[0] = T.max(
            T.max(T.max(lanes[0], lanes[1]), T.max(lanes[2], lanes[3])),
            T.max(T.max(lanes[4], lanes[5]), T.max(lanes[6], lanes[7])),
        )
        lanes[1] = T.if_then_else(
            lanes[0] > T.float32(0), T.float32(ACT_MAX) / lanes[0], T.float32(0)
        )
        xs[r, g] = lanes[0] / T.float32(ACT_MAX)
        for u in range(4):
            if full:
                q[T.Ramp(8 * u, 1, 8)] = T.Cast(
                    "int8x8",
                    T.round(x[r, T.Ramp(g * GROUP + 8 * u, 1, 8)] * T.Broadcast(lanes[1], 8)),
                )
            else:
                for e in range(8):
                    q[8 * u + e] = T.Cast(
                        "int8", T.round(value(x, r, g * GROUP + 8 * u + e) * lanes[1])
                    )
        total[0] = 0
        for e in range(GROUP):
            total[0] = total[0] + T.Cast("int32", q[e])
        xc[r, g] = T.float32(-7.0) * xs[r, g] * T.Cast("float32", total[0])

    @T.macro
    def store_blocked(xq, r, g, q):
        """Word j of group g: its even values, then its odd, at lane g % 8 of the block."""
        for j in range(4):
            for odd in range(2):
                position = BLOCK_GROUPS * GROUP * (g // BLOCK_GROUPS) + 4 * (g % BLOCK_GROUPS)
                xq[r, T.Ramp(position + 64 * j + 32 * odd, 1, 4)] = q[T.Ramp(8 * j + odd, 2, 4)]

    @T.macro
    def store_paired(xq, r, g, q):
        for odd in range(2):
            position = 2 * GROUP * (g // 2) + 16 * (g % 2) + 32 * odd
            xq[r, T.Ramp(position, 1, 16)] = q[T.Ramp(odd, 2, 16)]

    @T.macro
    def store_single(xq, r, g, q):
        for odd in range(2):
            xq[r, T.Ramp(g * GROUP + 16 * odd, 1, 16)] = q[T.Ramp(odd, 2, 16)]

    @T.prim_func(s_tir=True)  # a root block: passes that look for reshapes expect one
    def quantize_activations(var_x: T.handle, var_xq: T.handle, var_xs: T.handle, var_xc: T.handle):
        T.func_attr({"tir.noalias": True, "tir.is_scheduled": True})
        batch = T.int64()
        seq = T.int64()
        x_in = T.match_buffer(var_x, (batch, seq, k), "float32")
        xq_out = T.match_buffer(var_xq, (batch, seq, k_padded), "int8")
        xs_out = T.match_buffer(var_xs, (batch, seq, groups), "float32")
        xc_out = T.match_buffer(var_xc, (batch, seq, groups), "float32")
        with T.sblock("root"):
            T.reads()
            T.writes()
            rows = T.meta_var(batch * seq)
            x = T.decl_buffer((rows, k), "float32", data=x_in.data)
            xq = T.decl_buffer((rows, k_padded), "int8", data=xq_out.data)
            xs = T.decl_buffer((rows, groups), "float32", data=xs_out.data)
            xc = T.decl_buffer((rows, groups), "float32", data=xc_out.data)
            for r in T.parallel(rows):
                q = T.decl_buffer((GROUP,), "int8", scope="local")
                lanes = T.decl_buffer((8,), "float32", scope="local")
                total = T.decl_buffer((1,), "int32", scope="local")
                for g in range(min(whole, in_blocks)):
                    quantize_group(x, xs, xc, r, g, q, lanes, total, True)
                    store_blocked(xq, r, g, q)
                if whole < in_blocks:  # the partial group is the blocks' last
                    quantize_group(x, xs, xc, r, whole, q, lanes, total, False)
                    store_blocked(xq, r, whole, q)
                for g in range(in_blocks, min(whole, paired)):
                    quantize_group(x, xs, xc, r, g, q, lanes, total, True)
                    store_paired(xq, r, g, q)
                if in_blocks <= whole < paired:  # the partial group is the last of a pair
                    quantize_group(x, xs, xc, r, whole, q, lanes, total, False)
                    store_paired(xq, r, whole, q)
                if paired < groups:
                    quantize_group(x, xs, xc, r, groups - 1, q, lanes, total, whole == groups)
                    store_single(xq, r, groups - 1, q)

    return quantize_activations


def has_avx2(target: tvm.target.Target) -> bool:
    return target.kind.name == "llvm" and bool(
        tvm.target.codegen.target_has_features("avx2", target)
    )


def has_avx512_vnni(target: tvm.target.Target) -> bool:
    return has_avx2(target) and all(
        tvm.target.codegen.target_has_features(f, target) for f in ("avx512vnni", "avx512vl")
    )


def use_x86_kernels(target: tvm.target.Target) -> tvm.transform.Pass:
    """Swap each portable kernel that has a hand-written x86 twin for that twin."""
    vnni = has_avx512_vnni(target)

    @tvm.transform.module_pass(opt_level=0, name="UseX86Kernels")
    def swap(mod: tvm.ir.IRModule, _ctx) -> tvm.ir.IRModule:
        for gvar, func in list(mod.functions.items()):
            if not isinstance(func, tirx.PrimFunc) or func.attrs is None:
                continue
            a = func.attrs
            # The hand-written kernels take [batch, seq, k] activations.
            if KERNEL_ATTR not in a or int(a["mlc.ndim"]) != 3:
                continue
            if a[KERNEL_ATTR] == Q4A8_MATMUL:
                n, k_padded = int(a["mlc.n"]), int(a["mlc.k_padded"])
                fast = q4a8_matmul_avx2(n, k_padded, str(a["mlc.scale_dtype"]), vnni=vnni)
            elif a[KERNEL_ATTR] == QUANTIZE_ACTIVATIONS and str(a["mlc.dtype"]) == "float32":
                fast = quantize_activations_avx2(int(a["mlc.k"]))
            else:
                continue
            mod[gvar] = fast.with_attr("global_symbol", gvar.name_hint)
        return mod

    return swap
