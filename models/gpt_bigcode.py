"""GPT-BigCode (StarCoder, SantaCoder): GPT-2 with multi-query attention and plain Linear
weights."""

from __future__ import annotations

import dataclasses
from typing import Any

from .base import WeightSource
from .gpt2 import gpt2_style_fields, gpt2_style_weights
from .layers import (
    MLP,
    Attention,
    CausalLM,
    DecoderConfig,
    DecoderLayer,
    LayerNorm,
    LMOptions,
    per_head_to_fused,
    same,
)

MODEL_TYPES = ("gpt_bigcode",)


@dataclasses.dataclass
class GPTBigCodeConfig(DecoderConfig):
    num_positions: int

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> GPTBigCodeConfig:
        if hf.get("scale_attn_weights") is False:
            raise ValueError("gpt_bigcode: scale_attn_weights=false is not supported")
        fields = gpt2_style_fields(
            {"activation_function": "gelu_pytorch_tanh", **hf}, "gpt_bigcode"
        )
        fields["num_key_value_heads"] = (
            1 if hf.get("multi_query", True) else fields["num_attention_heads"]
        )
        return cls(**fields)


class GPTBigCodeForCausalLM(CausalLM):
    def __init__(self, config: GPTBigCodeConfig, dtype: str = "float32"):
        eps = config.norm_eps
        layers = [
            DecoderLayer(
                Attention(config, dtype, qkv_bias=True, o_bias=True),
                MLP(config, dtype, gated=False, bias=True),
                LayerNorm(config.hidden_size, eps, dtype),
                LayerNorm(config.hidden_size, eps, dtype),
            )
            for _ in range(config.num_hidden_layers)
        ]
        options = LMOptions(learned_positions=config.num_positions)
        super().__init__(config, dtype, layers, LayerNorm(config.hidden_size, eps, dtype), options)


def hf_weight_map(config: GPTBigCodeConfig) -> dict[str, WeightSource]:
    if config.num_key_value_heads == 1:  # multi-query: rows are already q | k | v
        return gpt2_style_weights(config, same, same)
    reorder = per_head_to_fused(config.num_attention_heads)
    return gpt2_style_weights(config, same, lambda name: WeightSource((name,), reorder))


CONFIG = GPTBigCodeConfig
MODEL = GPTBigCodeForCausalLM
