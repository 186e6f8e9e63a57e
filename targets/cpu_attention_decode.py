"""Paged-KV decode attention for CPUs, a drop-in for the cache's `batch_decode_paged_kv_cpu`.

TVM's kernel walks sequences, heads, rows and head dimensions one scalar at a time on one core
and reloads every K/V row once per query head; ours is parallel and vectorised (see
`cpu_attention_common`). Each sequence's query is the token just appended: it sees every key
of the sequence, or in a sliding layer those of the last `window` positions.
"""

from __future__ import annotations

import functools

from tvm import tirx
from tvm.relax.frontend.nn.llm._kernel_common import (
    _declare_length_info,
    _get_kv_chunk_len,
)
from tvm.script import tirx as T

from .cpu_attention_common import CHUNK, LANES, PLAIN, AttentionVariant, PagedRows, attend


@functools.lru_cache(maxsize=128)  # immutable IR: parsed once per process
def decode_attention(
    num_kv_heads: int,
    num_qo_heads: int,
    head_dim: int,
    dtype: str,
    page_size: int,
    variant: AttentionVariant = PLAIN,
) -> tirx.PrimFunc:
    H_kv, D, P = num_kv_heads, head_dim, page_size
    G = num_qo_heads // num_kv_heads
    if D % LANES:
        raise ValueError(f"head_dim {D} is not a multiple of {LANES}")

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
        k_rope_pos_offset = T.match_buffer(
            k_rope_pos_offset_handle, (B,), "int32", elem_offset=k_rope_offset
        )
        q_rope_position = T.match_buffer(
            q_rope_position_handle, (B,), "int32", elem_offset=q_rope_offset
        )
        output = T.match_buffer(output_handle, (B, num_qo_heads, D), dtype)
        lse = T.match_buffer(lse_handle, (B, num_qo_heads), "float32")
        length_info = _declare_length_info(var_length_info, B, False, length_offset)

        assert rotary_mode == 0, "inline rotary (RopeMode.INLINE) is not supported on CPU"
        for bh in T.parallel(B * H_kv):
            with T.sblock("attention"):
                T.reads()
                T.writes()
                q = T.sblock_alloc_buffer((G, D), "float32")
                o = T.sblock_alloc_buffer((G, D), "float32")
                s = T.sblock_alloc_buffer((G, CHUNK), "float32")
                m = T.sblock_alloc_buffer((G,), "float32")
                denom = T.sblock_alloc_buffer((G,), "float32")
                top = T.sblock_alloc_buffer((1,), "float32")
                kv_len = T.sblock_alloc_buffer((1,), "int32")
                b: T.let[T.int32] = bh // H_kv
                h: T.let[T.int32] = bh % H_kv
                begin: T.let[T.int32] = page_table_indptr[b]
                end: T.let[T.int32] = page_table_indptr[b + 1]
                kv_len[0] = T.if_then_else(
                    begin != end,
                    _get_kv_chunk_len(end - begin, P, b, length_info, False),
                    0,
                )
                # Rows count from the block's first position, `k_rope_pos_offset[b]`.
                lo: T.let[T.int32] = variant.first_key(
                    q_rope_position[b] - k_rope_pos_offset[b], sm_scale
                )
                for g in T.serial(G):
                    m[g] = T.float32(-5e4)
                    denom[g] = T.float32(1.0)
                    for d in T.serial(D):
                        q[g, d] = T.Cast("float32", Q[b, h * G + g, d]) * variant.query_scale(
                            sm_scale
                        )
                        o[g, d] = T.float32(0)
                attend(
                    q,
                    o,
                    s,
                    m,
                    denom,
                    top,
                    lo,
                    kv_len[0],
                    PagedRows(pages, page_table_values, begin, h, P),
                    variant,
                    variant.bias(h * G, k_rope_pos_offset[b], sm_scale),
                    G,
                    D,
                )
                for g in T.serial(G):
                    for d in T.serial(D):
                        output[b, h * G + g, d] = T.Cast(dtype, o[g, d] / denom[g])
                    lse[b, h * G + g] = m[g] + T.log2(denom[g])

    return decode
