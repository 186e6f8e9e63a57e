"""Paged-KV decode attention for CPUs, a drop-in for the paged KV cache's own CPU kernel.

TVM's `batch_decode_paged_kv_cpu` walks sequences, heads, rows and head dimensions one scalar
at a time on one core, and reloads every K/V row once per query head. Ours runs the (sequence,
KV head) pairs in parallel, reads each K and V row once for all the query heads that share it
(grouped-query attention), and keeps an online softmax per page of `page_size` rows so that the
exponentials are computed once per score. Same signature, same results (up to float
reassociation): output and log-sum-exp (base 2) per query head.
"""

from __future__ import annotations

import math
import re

import tvm
from tvm import tirx
from tvm.relax.frontend.nn.llm._kernel_common import (
    _declare_length_info,
    _get_kv_chunk_len,
    _get_seq_offset,
)
from tvm.script import tirx as T

LOG2E = math.log2(math.e)
LANES = 8  # one AVX2 register of float32
PREFILL_KERNEL = "batch_prefill_ragged_kv"
DECODE_KERNELS = ("batch_decode_paged_kv_cpu", "batch_decode_paged_kv_cpu_sliding_window")


def _dot(q, g, head_dim: int, key_chunk):
    """q[g] · key with LANES-wide partial sums, then one horizontal sum; `key_chunk(c)` loads
    lanes c·LANES .. (c+1)·LANES of the key row."""
    chunks = [
        q[g, T.Ramp(c * LANES, 1, LANES)] * T.Cast(f"float32x{LANES}", key_chunk(c))
        for c in range(head_dim // LANES)
    ]
    while len(chunks) > 1:
        chunks = [a + b for a, b in zip(chunks[::2], chunks[1::2], strict=False)] + (
            [chunks[-1]] if len(chunks) % 2 else []
        )
    lanes = [T.Shuffle([chunks[0]], [i]) for i in range(LANES)]
    out = lanes[0]
    for lane in lanes[1:]:
        out = out + lane
    return out


@T.macro
def online_softmax(s, o, m, denom, top, rows, num_heads, head_dim):
    """Fold a page of base-2 scores `s[g, :rows]` into each head's running maximum `m`,
    denominator `denom` and output `o`; `s` becomes the page's probabilities (unnormalised)."""
    for g in T.serial(num_heads):
        top[0] = m[g]
        for r in T.serial(rows):
            top[0] = T.max(top[0], s[g, r])
        for d in T.serial(head_dim):
            o[g, d] = o[g, d] * T.exp2(m[g] - top[0])
        denom[g] = denom[g] * T.exp2(m[g] - top[0])
        m[g] = top[0]
        for r in T.serial(rows):
            s[g, r] = T.exp2(s[g, r] - m[g])
            denom[g] = denom[g] + s[g, r]


def _row_chunks(buf, row, head):
    """`chunk(c)`: lanes c·LANES .. of buf[row, head, :]."""
    return lambda c: buf[row, head, T.Ramp(c * LANES, 1, LANES)]


def decode_attention(
    num_kv_heads: int,
    num_qo_heads: int,
    head_dim: int,
    dtype: str,
    sliding_window: bool,
    page_size: int,
) -> tirx.PrimFunc:
    H_kv, D, P = num_kv_heads, head_dim, page_size
    G = num_qo_heads // num_kv_heads

    if D % LANES:
        raise ValueError(f"head_dim {D} is not a multiple of {LANES}")

    def dot(q, pages, g, page, h, row):
        return _dot(q, g, D, lambda c: pages[page, 0, h, row, T.Ramp(c * LANES, 1, LANES)])

    def seq_offset(pos, b, length_info):
        return _get_seq_offset(pos, b, length_info, sliding_window)

    def chunk_len(pages, b, length_info):
        return _get_kv_chunk_len(pages, P, b, length_info, sliding_window)

    @T.prim_func(s_tir=True)
    def decode(
        Q_handle: T.handle,
        pages_handle: T.handle,
        page_table_indptr_handle: T.handle,
        page_table_values_handle: T.handle,
        var_length_info: T.handle,
        k_rope_pos_offset_handle: T.handle,
        q_rope_position_handle: T.handle,
        output_handle: T.handle,
        lse_handle: T.handle,
        rotary_mode: T.int32,
        rope_scale: T.float32,
        rope_theta: T.float32,
        sm_scale: T.float32,
    ):
        T.func_attr({"tirx.is_scheduled": True})
        B = T.int32()
        nnz_pages = T.int32()
        max_num_pages = T.int32()
        indptr_offset = T.int32()
        values_offset = T.int32()
        k_rope_offset = T.int32()
        q_rope_offset = T.int32()
        length_offset = T.int32()
        Q = T.match_buffer(Q_handle, (B, num_qo_heads, D), dtype)
        pages = T.match_buffer(pages_handle, (max_num_pages, 2, H_kv, P, D), dtype)
        page_table_indptr = T.match_buffer(
            page_table_indptr_handle, (B + 1,), "int32", elem_offset=indptr_offset
        )
        page_table_values = T.match_buffer(
            page_table_values_handle, (nnz_pages,), "int32", elem_offset=values_offset
        )
        k_rope_pos_offset = T.match_buffer(  # noqa: F841 (rotary is applied when appending)
            k_rope_pos_offset_handle, (B,), "int32", elem_offset=k_rope_offset
        )
        q_rope_position = T.match_buffer(  # noqa: F841
            q_rope_position_handle, (B,), "int32", elem_offset=q_rope_offset
        )
        output = T.match_buffer(output_handle, (B, num_qo_heads, D), dtype)
        lse = T.match_buffer(lse_handle, (B, num_qo_heads), "float32")
        length_info = _declare_length_info(var_length_info, B, sliding_window, length_offset)

        assert rotary_mode == 0, "inline rotary (RopeMode.INLINE) is not supported on CPU"
        for bh in T.parallel(B * H_kv):
            with T.sblock("attention"):
                T.reads()
                T.writes()
                q = T.sblock_alloc_buffer((G, D), "float32")
                o = T.sblock_alloc_buffer((G, D), "float32")
                s = T.sblock_alloc_buffer((G, P), "float32")
                m = T.sblock_alloc_buffer((G,), "float32")
                denom = T.sblock_alloc_buffer((G,), "float32")
                acc = T.sblock_alloc_buffer((1,), "float32")  # running maximum
                kv_len = T.sblock_alloc_buffer((1,), "int32")
                b: T.let[T.int32] = bh // H_kv
                h: T.let[T.int32] = bh % H_kv
                begin: T.let[T.int32] = page_table_indptr[b]
                end: T.let[T.int32] = page_table_indptr[b + 1]
                kv_len[0] = T.if_then_else(begin != end, chunk_len(end - begin, b, length_info), 0)
                for g in T.serial(G):
                    m[g] = T.float32(-5e4)
                    denom[g] = T.float32(1.0)
                    for d in T.serial(D):
                        q[g, d] = T.Cast("float32", Q[b, h * G + g, d]) * sm_scale * LOG2E
                        o[g, d] = T.float32(0)
                for c in T.serial((kv_len[0] + P - 1) // P):
                    rows: T.let[T.int32] = T.min(P, kv_len[0] - c * P)
                    for r in T.serial(rows):
                        offset: T.let[T.int32] = seq_offset(c * P + r, b, length_info)
                        page: T.let[T.int32] = page_table_values[begin + offset // P]
                        for g in T.serial(G):
                            s[g, r] = dot(q, pages, g, page, h, offset % P)
                    online_softmax(s, o, m, denom, acc, rows, G, D)
                    for r in T.serial(rows):
                        offset: T.let[T.int32] = seq_offset(c * P + r, b, length_info)
                        page: T.let[T.int32] = page_table_values[begin + offset // P]
                        for g in T.serial(G):
                            for ch in T.serial(D // LANES):
                                o[g, T.Ramp(ch * LANES, 1, LANES)] = o[
                                    g, T.Ramp(ch * LANES, 1, LANES)
                                ] + T.Broadcast(s[g, r], LANES) * T.Cast(
                                    f"float32x{LANES}",
                                    pages[page, 1, h, offset % P, T.Ramp(ch * LANES, 1, LANES)],
                                )
                for g in T.serial(G):
                    for d in T.serial(D):
                        output[b, h * G + g, d] = T.Cast(dtype, o[g, d] / denom[g])
                    lse[b, h * G + g] = m[g] + T.log2(denom[g])

    return decode


_SIGNATURE = re.compile(
    r'Q: T\.Buffer\(\("B", (\d+), (\d+)\), "(\w+)"\), '
    r'pages: T\.Buffer\(\("max_num_pages", 2, (\d+), (\d+), \d+\)'
)


_RAGGED_SIGNATURE = re.compile(
    r'q: T\.Buffer\(\("qo_len", (\d+), (\d+)\), "(\w+)"\).*?'
    r'k: T\.Buffer\(\("kv_len", (\d+), \d+\)'
)


@tvm.transform.module_pass(opt_level=0, name="UseCPUAttention")
def use_cpu_attention(mod: tvm.ir.IRModule, _ctx) -> tvm.ir.IRModule:
    """Swap the paged KV cache's CPU decode and ragged-prefill kernels for ours."""
    for name in DECODE_KERNELS:
        if name not in [g.name_hint for g in mod.get_global_vars()]:
            continue
        gvar = mod.get_global_var(name)
        found = _SIGNATURE.search(mod[gvar].script())
        if found is None:
            raise RuntimeError(f"{name}: unexpected signature; cannot swap in the CPU kernel")
        heads, head_dim, dtype, kv_heads, page_size = found.groups()
        if int(head_dim) % LANES:
            continue  # keep the cache's own (scalar) kernel
        kernel = decode_attention(
            int(kv_heads), int(heads), int(head_dim), dtype, name.endswith("window"), int(page_size)
        )
        mod[gvar] = kernel.with_attr("global_symbol", mod[gvar].attrs["global_symbol"])
    if PREFILL_KERNEL in [g.name_hint for g in mod.get_global_vars()]:
        gvar = mod.get_global_var(PREFILL_KERNEL)
        found = _RAGGED_SIGNATURE.search(mod[gvar].script())
        if found is None:
            raise RuntimeError(f"{PREFILL_KERNEL}: unexpected signature")
        heads, head_dim, dtype, kv_heads = found.groups()
        if int(head_dim) % LANES == 0:
            kernel = prefill_ragged_attention(int(kv_heads), int(heads), int(head_dim), dtype)
            mod[gvar] = kernel.with_attr("global_symbol", PREFILL_KERNEL)
    return mod


def prefill_ragged_attention(
    num_kv_heads: int, num_qo_heads: int, head_dim: int, dtype: str
) -> tirx.PrimFunc:
    """Causal attention of a prefill chunk to itself (Q, K, V contiguous per sequence), a
    drop-in for the cache's `batch_prefill_ragged_kv_cpu`: parallel over (sequence, KV head),
    query heads of a group together, masked keys never visited, online softmax per 16 keys."""
    H_kv, D, P = num_kv_heads, head_dim, 16
    G = num_qo_heads // num_kv_heads
    if D % LANES:
        raise ValueError(f"head_dim {D} is not a multiple of {LANES}")

    @T.prim_func(s_tir=True)
    def prefill_ragged(
        var_q: T.handle,
        var_q_indptr: T.handle,
        var_k: T.handle,
        var_v: T.handle,
        var_kv_indptr: T.handle,
        var_q_rope_position: T.handle,
        var_k_rope_pos_offset: T.handle,
        var_output: T.handle,
        var_lse: T.handle,
        causal: T.int32,
        rotary_mode: T.int32,
        rope_scale: T.float32,
        rope_theta: T.float32,
        sm_scale: T.float32,
    ):
        T.func_attr({"tirx.is_scheduled": True})
        batch_size = T.int32()
        qo_len = T.int32()
        kv_len = T.int32()
        q_indptr_offset = T.int32()
        kv_indptr_offset = T.int32()
        q_rope_offset = T.int32()
        k_rope_offset = T.int32()
        q = T.match_buffer(var_q, (qo_len, num_qo_heads, D), dtype)
        q_indptr = T.match_buffer(
            var_q_indptr, (batch_size + 1,), "int32", elem_offset=q_indptr_offset
        )
        k = T.match_buffer(var_k, (kv_len, H_kv, D), dtype)
        v = T.match_buffer(var_v, (kv_len, H_kv, D), dtype)
        kv_indptr = T.match_buffer(
            var_kv_indptr, (batch_size + 1,), "int32", elem_offset=kv_indptr_offset
        )
        q_rope_position = T.match_buffer(  # noqa: F841 (rotary is applied before this kernel)
            var_q_rope_position, (qo_len,), "int32", elem_offset=q_rope_offset
        )
        k_rope_pos_offset = T.match_buffer(  # noqa: F841
            var_k_rope_pos_offset, (batch_size,), "int32", elem_offset=k_rope_offset
        )
        output = T.match_buffer(var_output, (qo_len, num_qo_heads, D), dtype)
        lse = T.match_buffer(var_lse, (qo_len, num_qo_heads), "float32")

        assert rotary_mode == 0, "inline rotary (RopeMode.INLINE) is not supported on CPU"
        for bh in T.parallel(batch_size * H_kv):
            with T.sblock("attention"):
                T.reads()
                T.writes()
                qv = T.sblock_alloc_buffer((G, D), "float32")
                o = T.sblock_alloc_buffer((G, D), "float32")
                s = T.sblock_alloc_buffer((G, P), "float32")
                m = T.sblock_alloc_buffer((G,), "float32")
                denom = T.sblock_alloc_buffer((G,), "float32")
                top = T.sblock_alloc_buffer((1,), "float32")
                b: T.let[T.int32] = bh // H_kv
                h: T.let[T.int32] = bh % H_kv
                q0: T.let[T.int32] = q_indptr[b]
                k0: T.let[T.int32] = kv_indptr[b]
                n_q: T.let[T.int32] = q_indptr[b + 1] - q_indptr[b]
                n_kv: T.let[T.int32] = kv_indptr[b + 1] - kv_indptr[b]
                for i in T.serial(n_q):
                    # Keys this query sees: all of them, or up to its own position if causal.
                    visible: T.let[T.int32] = T.if_then_else(
                        causal > 0, T.min(n_kv, n_kv - n_q + i + 1), n_kv
                    )
                    for g in T.serial(G):
                        m[g] = T.float32(-5e4)
                        denom[g] = T.float32(1.0)
                        for d in T.serial(D):
                            qv[g, d] = T.Cast("float32", q[q0 + i, h * G + g, d]) * sm_scale * LOG2E
                            o[g, d] = T.float32(0)
                    for c in T.serial((visible + P - 1) // P):
                        rows: T.let[T.int32] = T.min(P, visible - c * P)
                        for r in T.serial(rows):
                            for g in T.serial(G):
                                s[g, r] = _dot(qv, g, D, _row_chunks(k, k0 + c * P + r, h))
                        online_softmax(s, o, m, denom, top, rows, G, D)
                        for r in T.serial(rows):
                            for g in T.serial(G):
                                for ch in T.serial(D // LANES):
                                    o[g, T.Ramp(ch * LANES, 1, LANES)] = o[
                                        g, T.Ramp(ch * LANES, 1, LANES)
                                    ] + T.Broadcast(s[g, r], LANES) * T.Cast(
                                        f"float32x{LANES}",
                                        v[k0 + c * P + r, h, T.Ramp(ch * LANES, 1, LANES)],
                                    )
                    for g in T.serial(G):
                        for d in T.serial(D):
                            output[q0 + i, h * G + g, d] = T.Cast(dtype, o[g, d] / denom[g])
                        lse[q0 + i, h * G + g] = m[g] + T.log2(denom[g])

    return prefill_ragged
