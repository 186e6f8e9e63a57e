"""Prefill attention for CPUs, drop-ins for the paged KV cache's two prefill kernels.

A prefill chunk attends to itself (`batch_prefill_ragged_kv`: Q, K, V contiguous per sequence,
causal) and, when the sequence already has cached tokens (a long prompt's later chunks, a
conversation's later turns), to those (`batch_prefill_paged_kv_cpu`: keys in the cache's
pages); the cache merges the two by their log-sum-exps. Both are parallel and vectorised (see
`cpu_attention_common`) and visit only the keys each query sees.
"""

from __future__ import annotations

import functools

from tvm import tirx
from tvm.relax.frontend.nn.llm._kernel_common import (
    _declare_length_info,
    _get_kv_chunk_len,
)
from tvm.script import tirx as T

from .cpu_attention_common import (
    CHUNK,
    LANES,
    PLAIN,
    AttentionVariant,
    PagedRows,
    RaggedRows,
    attend,
)


@functools.lru_cache(maxsize=128)  # immutable IR: parsed once per process
def prefill_ragged_attention(
    num_kv_heads: int,
    num_qo_heads: int,
    head_dim: int,
    dtype: str,
    variant: AttentionVariant = PLAIN,
) -> tirx.PrimFunc:
    """Causal attention of a prefill chunk to itself."""
    H_kv, D = num_kv_heads, head_dim
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
        # The position of each sequence's first key in this chunk (for ALiBi).
        k_rope_pos_offset = T.match_buffer(
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
                s = T.sblock_alloc_buffer((G, CHUNK), "float32")
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
                    # Keys this query sees: all of them, or up to its own position if causal
                    # (its own key is then the last), and in a sliding layer the last `window`.
                    hi: T.let[T.int32] = T.if_then_else(
                        causal > 0, T.min(n_kv, n_kv - n_q + i + 1), n_kv
                    )
                    for g in T.serial(G):
                        m[g] = T.float32(-5e4)
                        denom[g] = T.float32(1.0)
                        for d in T.serial(D):
                            qv[g, d] = T.Cast(
                                "float32", q[q0 + i, h * G + g, d]
                            ) * variant.query_scale(sm_scale)
                            o[g, d] = T.float32(0)
                    attend(
                        qv,
                        o,
                        s,
                        m,
                        denom,
                        top,
                        variant.first_key(hi - 1, sm_scale),
                        hi,
                        RaggedRows(k, v, k0, h),
                        variant,
                        variant.bias(h * G, k_rope_pos_offset[b], sm_scale),
                        G,
                        D,
                    )
                    for g in T.serial(G):
                        for d in T.serial(D):
                            output[q0 + i, h * G + g, d] = T.Cast(dtype, o[g, d] / denom[g])
                        lse[q0 + i, h * G + g] = m[g] + T.log2(denom[g])

    return prefill_ragged


@functools.lru_cache(maxsize=128)  # immutable IR: parsed once per process
def prefill_paged_attention(
    num_kv_heads: int,
    num_qo_heads: int,
    head_dim: int,
    dtype: str,
    page_size: int,
    variant: AttentionVariant = PLAIN,
) -> tirx.PrimFunc:
    """Attention of a prefill chunk to a sequence's cached keys (`causal`: the chunk's queries
    are the last of those keys; else each query sees the keys up to its own position). A
    query's position is `q_rope_position`; a key row's, `k_rope_pos_offset` plus its row. Per
    query, the same sums in the same order as `decode_attention`."""
    H_kv, D, P = num_kv_heads, head_dim, page_size
    G = num_qo_heads // num_kv_heads
    if D % LANES:
        raise ValueError(f"head_dim {D} is not a multiple of {LANES}")

    @T.prim_func(s_tir=True)
    def prefill_paged(
        var_q: T.handle,
        var_q_indptr: T.handle,
        var_pages: T.handle,
        var_page_indptr: T.handle,
        var_page_values: T.handle,
        var_length_info: T.handle,
        var_k_rope_pos_offset: T.handle,
        var_q_rope_position: T.handle,
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
        total_len = T.int32()
        nnz_pages = T.int32()
        max_num_pages = T.int32()
        q_indptr_offset = T.int32()
        page_indptr_offset = T.int32()
        page_values_offset = T.int32()
        k_rope_offset = T.int32()
        q_rope_offset = T.int32()
        length_offset = T.int32()
        q = T.match_buffer(var_q, (total_len, num_qo_heads, D), dtype)
        q_indptr = T.match_buffer(
            var_q_indptr, (batch_size + 1,), "int32", elem_offset=q_indptr_offset
        )
        pages = T.match_buffer(var_pages, (max_num_pages, 2, H_kv, P, D), dtype)
        page_indptr = T.match_buffer(
            var_page_indptr, (batch_size + 1,), "int32", elem_offset=page_indptr_offset
        )
        page_values = T.match_buffer(
            var_page_values, (nnz_pages,), "int32", elem_offset=page_values_offset
        )
        k_rope_pos_offset = T.match_buffer(
            var_k_rope_pos_offset, (batch_size,), "int32", elem_offset=k_rope_offset
        )
        q_rope_position = T.match_buffer(
            var_q_rope_position, (total_len,), "int32", elem_offset=q_rope_offset
        )
        output = T.match_buffer(var_output, (total_len, num_qo_heads, D), dtype)
        lse = T.match_buffer(var_lse, (total_len, num_qo_heads), "float32")
        length_info = _declare_length_info(var_length_info, batch_size, False, length_offset)

        assert rotary_mode == 0, "inline rotary (RopeMode.INLINE) is not supported on CPU"
        for bh in T.parallel(batch_size * H_kv):
            with T.sblock("attention"):
                T.reads()
                T.writes()
                qv = T.sblock_alloc_buffer((G, D), "float32")
                o = T.sblock_alloc_buffer((G, D), "float32")
                s = T.sblock_alloc_buffer((G, CHUNK), "float32")
                m = T.sblock_alloc_buffer((G,), "float32")
                denom = T.sblock_alloc_buffer((G,), "float32")
                top = T.sblock_alloc_buffer((1,), "float32")
                kv_len = T.sblock_alloc_buffer((1,), "int32")
                b: T.let[T.int32] = bh // H_kv
                h: T.let[T.int32] = bh % H_kv
                begin: T.let[T.int32] = page_indptr[b]
                end: T.let[T.int32] = page_indptr[b + 1]
                q0: T.let[T.int32] = q_indptr[b]
                n_q: T.let[T.int32] = q_indptr[b + 1] - q_indptr[b]
                kv_len[0] = T.if_then_else(
                    begin != end,
                    _get_kv_chunk_len(end - begin, P, b, length_info, False),
                    0,
                )
                for i in T.serial(n_q):
                    # Not `causal`: the keys up to the query's own position, which covers a
                    # chunk appended before attention (a speculative draft's verification).
                    hi: T.let[T.int32] = T.if_then_else(
                        causal > 0,
                        T.min(kv_len[0], kv_len[0] - n_q + i + 1),
                        T.min(kv_len[0], q_rope_position[q0 + i] - k_rope_pos_offset[b] + 1),
                    )
                    for g in T.serial(G):
                        m[g] = T.float32(-5e4)
                        denom[g] = T.float32(1.0)
                        for d in T.serial(D):
                            qv[g, d] = T.Cast(
                                "float32", q[q0 + i, h * G + g, d]
                            ) * variant.query_scale(sm_scale)
                            o[g, d] = T.float32(0)
                    attend(
                        qv,
                        o,
                        s,
                        m,
                        denom,
                        top,
                        variant.first_key(q_rope_position[q0 + i] - k_rope_pos_offset[b], sm_scale),
                        hi,
                        PagedRows(pages, page_values, begin, h, P),
                        variant,
                        variant.bias(h * G, k_rope_pos_offset[b], sm_scale),
                        G,
                        D,
                    )
                    for g in T.serial(G):
                        for d in T.serial(D):
                            output[q0 + i, h * G + g, d] = T.Cast(dtype, o[g, d] / denom[g])
                        lse[q0 + i, h * G + g] = m[g] + T.log2(denom[g])

    return prefill_paged
