"""Falcon (7B, 40B, 180B, and the RW models with ALiBi): LayerNorm, fused QKV, multi-query or
grouped-query attention, parallel attention and MLP; rotary positions, or ALiBi biases.

Three QKV layouts: the new decoder architecture groups rows per key/value head (`[group][q...q,
k, v][dim]`), the old one is `q | k | v` with multi-query and `[head][q|k|v][dim]` without.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .base import WeightSource
from .layers import (
    MLP,
    Attention,
    CausalLM,
    DecoderConfig,
    DecoderLayer,
    LayerNorm,
    decoder_fields,
    per_head_to_fused,
    same,
)

MODEL_TYPES = ("falcon",)

FALCON_FIELDS = {
    "n_head": "num_attention_heads",
    "n_layer": "num_hidden_layers",
    "activation": "hidden_act",
    "layer_norm_epsilon": "layer_norm_eps",
    "ffn_hidden_size": "intermediate_size",
}


@dataclasses.dataclass
class FalconConfig(DecoderConfig):
    new_decoder_architecture: bool
    multi_query: bool
    parallel_attn: bool
    num_ln_in_parallel_attn: int
    bias: bool
    alibi: bool = False

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> FalconConfig:
        hf = {FALCON_FIELDS.get(k, k): v for k, v in hf.items()}
        new_arch = bool(hf.get("new_decoder_architecture", False))
        multi_query = bool(hf.get("multi_query", True))
        hf.setdefault("hidden_act", "gelu")
        hf.setdefault("tie_word_embeddings", True)
        if new_arch:
            kv_heads = hf.get("num_kv_heads") or hf["num_attention_heads"]
        else:
            kv_heads = 1 if multi_query else hf["num_attention_heads"]
        hf["num_key_value_heads"] = kv_heads
        fields = decoder_fields(hf, "falcon", norm_eps_key="layer_norm_eps", scaling=("linear",))
        alibi = bool(hf.get("alibi", False))
        if alibi:
            fields["rotary_dim"] = 0  # positions enter as ALiBi biases instead
        parallel = bool(hf.get("parallel_attn", True))
        num_ln = hf.get("num_ln_in_parallel_attn") or (2 if new_arch else 1)
        if new_arch and not parallel and num_ln == 1:
            raise ValueError("falcon: new_decoder_architecture needs parallel_attn or 2 norms")
        return cls(
            **fields,
            new_decoder_architecture=new_arch,
            multi_query=multi_query,
            parallel_attn=parallel,
            num_ln_in_parallel_attn=int(num_ln),
            bias=bool(hf.get("bias", False)),
            alibi=alibi,
        )

    @property
    def two_norms(self) -> bool:
        """Whether the MLP has its own LayerNorm (`post_attention_layernorm` or `ln_mlp`)."""
        if self.new_decoder_architecture:
            return self.num_ln_in_parallel_attn == 2
        return not self.parallel_attn


class FalconForCausalLM(CausalLM):
    def __init__(self, config: FalconConfig, dtype: str = "float32"):
        eps, bias = config.norm_eps, config.bias
        parallel = config.new_decoder_architecture or config.parallel_attn
        layers = [
            DecoderLayer(
                Attention(config, dtype, qkv_bias=bias, o_bias=bias),
                MLP(config, dtype, gated=False, bias=bias),
                LayerNorm(config.hidden_size, eps, dtype),
                LayerNorm(config.hidden_size, eps, dtype) if config.two_norms else None,
                parallel=parallel,
            )
            for _ in range(config.num_hidden_layers)
        ]
        super().__init__(config, dtype, layers, LayerNorm(config.hidden_size, eps, dtype))

    def attention_alibi(self) -> list[float] | None:
        return alibi_slopes(self.config.num_attention_heads) if self.config.alibi else None


def alibi_slopes(num_heads: int) -> list[float]:
    """Falcon's (BLOOM's) ALiBi slopes as `transformers` makes them: float32 powers of
    2^(-8/n) for the largest power of two n <= num_heads, the remaining heads taking every
    other power of 2^(-4/n); then rounded to bfloat16, as its bias is built in bfloat16."""
    n = 2 ** math.floor(math.log2(num_heads))
    base = np.float32(2 ** (-(2 ** -(math.log2(n) - 3))))
    slopes = [base ** np.float32(k) for k in range(1, n + 1)]
    if n != num_heads:
        extra = np.float32(2 ** (-(2 ** -(math.log2(2 * n) - 3))))
        slopes += [extra ** np.float32(k) for k in range(1, 1 + 2 * (num_heads - n), 2)]
    bits = np.array(slopes, np.float32).view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000  # round to nearest, ties even
    return [float(x) for x in rounded.astype(np.uint32).view(np.float32)]


def grouped_to_fused(config: FalconConfig):
    """New-architecture rows `[group][q * ratio, k, v][dim]` → ours, `[q | k | v][head][dim]`."""
    groups = config.num_key_value_heads
    ratio = config.num_attention_heads // groups

    def combine(arrays: Sequence[np.ndarray]) -> np.ndarray:
        (a,) = arrays
        g = a.reshape(groups, ratio + 2, config.head_dim, *a.shape[1:])
        q, k, v = g[:, :ratio], g[:, ratio], g[:, ratio + 1]
        return np.concatenate([x.reshape(-1, *a.shape[1:]) for x in (q, k, v)])

    return combine


def hf_weight_map(config: FalconConfig) -> dict[str, WeightSource]:
    mapping = {"embed_tokens.weight": same("transformer.word_embeddings.weight")}
    for s in ("weight", "bias"):
        mapping[f"norm.{s}"] = same(f"transformer.ln_f.{s}")
    if not config.tie_word_embeddings:
        mapping["lm_head.weight"] = same("lm_head.weight")
    if config.new_decoder_architecture:
        reorder = grouped_to_fused(config)
        norms = ("ln_attn", "ln_mlp") if config.two_norms else ("input_layernorm",)
    else:
        reorder = None if config.multi_query else per_head_to_fused(config.num_attention_heads)
        norms = ("input_layernorm", "post_attention_layernorm")[: 1 + config.two_norms]
    suffixes = ("weight", "bias") if config.bias else ("weight",)
    for i in range(config.num_hidden_layers):
        ours, hf = f"layers.{i}", f"transformer.h.{i}"
        our_norms = ("input_layernorm", "post_attention_layernorm")[: len(norms)]
        for our_norm, hf_norm in zip(our_norms, norms, strict=True):
            for s in ("weight", "bias"):
                mapping[f"{ours}.{our_norm}.{s}"] = same(f"{hf}.{hf_norm}.{s}")
        for s in suffixes:
            qkv = f"{hf}.self_attention.query_key_value.{s}"
            mapping[f"{ours}.self_attn.qkv_proj.{s}"] = WeightSource((qkv,), reorder)
            mapping[f"{ours}.self_attn.o_proj.{s}"] = same(f"{hf}.self_attention.dense.{s}")
            mapping[f"{ours}.mlp.up_proj.{s}"] = same(f"{hf}.mlp.dense_h_to_4h.{s}")
            mapping[f"{ours}.mlp.down_proj.{s}"] = same(f"{hf}.mlp.dense_4h_to_h.{s}")
    return mapping


CONFIG = FalconConfig
MODEL = FalconForCausalLM
