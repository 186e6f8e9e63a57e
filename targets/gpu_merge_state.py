"""The GPU kernel that merges two partial attention results, without TVM's race.

When a pass attends to its keys in parts (a prefill chunk after a cached prefix; a decode step
once a sequence spans more than one block of the cache), the paged KV cache merges the parts
with `tir_attention_merge_state`: `V, S <- merge(V, S, V_other, S_other)` per token and head,
`S` being the log2-sum-exp of each part's scores. TVM's GPU kernel spreads a head's values over
`head_dim / 4` threads that each read `S` and then write it in place: a thread that reads after
another has written merges with the new `S`. Where those threads run in lockstep (one warp or
SIMD group) nothing shows; on llvmpipe (8 lanes) head_dim 64 gave wrong decode logits from
the cache's second block on. Here one thread merges one token's head: it reads `S` before it
writes it, and no other thread touches either.
"""

from __future__ import annotations

import tvm
from tvm import tirx
from tvm.script import tirx as T

MERGE_STATE = "tir_attention_merge_state"


def merge_state_inplace(num_heads: int, head_dim: int, v_dtype: str) -> tirx.PrimFunc:
    """`tir_attention_merge_state` for GPU targets: a block per token, a thread per head."""

    @T.prim_func(s_tir=True)
    def merge_state(v: T.handle, s: T.handle, v_other: T.handle, s_other: T.handle):
        T.func_attr({"tirx.is_scheduled": True, "global_symbol": MERGE_STATE})
        N = T.int32()
        V = T.match_buffer(v, (N, num_heads, head_dim), v_dtype)
        S = T.match_buffer(s, (N, num_heads), "float32")
        V_other = T.match_buffer(v_other, (N, num_heads, head_dim), v_dtype)
        S_other = T.match_buffer(s_other, (N, num_heads), "float32")
        for n in T.thread_binding(N, thread="blockIdx.x"):
            for h in T.thread_binding(num_heads, thread="threadIdx.x"):
                with T.sblock("merge"):
                    weights = T.sblock_alloc_buffer((4,), "float32", scope="local")
                    # weights: the larger log-sum-exp, the two parts' shares, their sum
                    weights[0] = T.max(S[n, h], S_other[n, h])
                    weights[1] = T.exp2(S[n, h] - weights[0])
                    weights[2] = T.exp2(S_other[n, h] - weights[0])
                    weights[3] = weights[1] + weights[2]
                    for d in T.serial(head_dim):
                        V[n, h, d] = T.Cast(
                            v_dtype,
                            (
                                T.Cast("float32", V[n, h, d]) * weights[1]
                                + T.Cast("float32", V_other[n, h, d]) * weights[2]
                            )
                            / weights[3],
                        )
                    S[n, h] = T.log2(weights[3]) + weights[0]

    return merge_state


def replace_merge_state(mod: tvm.IRModule, num_heads: int, head_dim: int, v_dtype: str) -> None:
    """Put our kernel in place of the cache's GPU `tir_attention_merge_state`, if it has one."""
    for gvar in mod.get_global_vars():
        if gvar.name_hint == MERGE_STATE:
            mod[gvar] = merge_state_inplace(num_heads, head_dim, v_dtype)
