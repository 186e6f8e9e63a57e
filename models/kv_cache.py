"""What a model says about its paged KV cache and attention, as facts, with no target in sight.

A model's `create_paged_kv_cache` emits one generic call, `mlc.create_paged_kv_cache_generic`,
carrying a `KVCacheSpec` (shapes, RoPE, dtype and the `AttentionFacts`: sliding window and
which layers slide, soft-capping, ALiBi). Attention layers call the cache with their true
`sm_scale`. The compiler pass `targets/kv_cache_dispatch.py` then builds the target's cache and
kernels from those facts.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import tvm
from tvm import relax as rx
from tvm import tirx
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache

GENERIC_KV_CACHE = "mlc.create_paged_kv_cache_generic"


@dataclasses.dataclass(frozen=True)
class AttentionFacts:
    """How the attention differs from plain causal softmax attention."""

    sliding_window: int = 0  # a sliding layer's query at p sees keys at > p - window; 0: none
    sliding_layers: tuple[int, ...] = ()
    softcap: float = 0.0  # scores become softcap * tanh(score / softcap); 0: none
    alibi: tuple[float, ...] = ()  # one ALiBi slope per query head; empty: none


@dataclasses.dataclass(frozen=True)
class KVCacheSpec:
    """Everything a target needs to build the paged KV cache and its attention kernels."""

    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    dtype: str
    rope_mode: int  # tvm.relax.frontend.nn.llm.kv_cache.RopeMode
    rope_theta: float
    rope_scale: float = 1.0  # positions are multiplied by it (linear scaling)
    rope_scaling: dict[str, Any] = dataclasses.field(default_factory=dict)  # llama3 scaling
    rotary_dim: int = 0  # 0: head_dim
    attention: AttentionFacts = AttentionFacts()

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> KVCacheSpec:
        data = json.loads(text)
        facts = data.pop("attention")
        facts = {k: tuple(v) if isinstance(v, list) else v for k, v in facts.items()}
        return cls(**data, attention=AttentionFacts(**facts))


def generic_kv_cache(
    spec: KVCacheSpec,
    max_batch_size: tirx.Var,
    max_total_seq_len: tirx.Var,
    prefill_chunk_size: tirx.Var,
    page_size: tirx.Var,
    support_sliding_window: tirx.Var,
) -> PagedKVCache:
    """The generic cache creation call that `targets/kv_cache_dispatch.py` replaces."""
    dims = [max_batch_size, max_total_seq_len, prefill_chunk_size, page_size]
    return PagedKVCache(
        _expr=rx.call_pure_packed(
            GENERIC_KV_CACHE,
            rx.ShapeExpr([*dims, support_sliding_window]),
            tvm.ir.StringImm(spec.to_json()),
            ty_args=rx.AnyType(),
        ),
        _name="paged_kv_cache",
    )
