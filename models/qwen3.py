"""Qwen3: Llama with per-head RMSNorm on queries and keys, and an explicit `head_dim`."""

from __future__ import annotations

import dataclasses
from typing import Any

from .base import WeightSource
from .head_norm import qk_norms
from .layers import (
    MLP,
    Attention,
    CausalLM,
    DecoderConfig,
    DecoderLayer,
    RMSNorm,
    decoder_fields,
    llama_style_weights,
    set_sliding_window,
)

MODEL_TYPES = ("qwen3",)


@dataclasses.dataclass
class Qwen3Config(DecoderConfig):
    attention_bias: bool

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> Qwen3Config:
        fields = decoder_fields(hf, "qwen3", scaling=("linear", "llama3", "yarn"))
        set_sliding_window(fields, hf, lambda i: i >= hf.get("max_window_layers", 28))
        return cls(**fields, attention_bias=bool(hf.get("attention_bias", False)))


class Qwen3ForCausalLM(CausalLM):
    def __init__(self, config: Qwen3Config, dtype: str = "float32"):
        eps, bias = config.norm_eps, config.attention_bias
        layers = [
            DecoderLayer(
                Attention(config, dtype, bias, bias, qk_norms=qk_norms(config, dtype)),
                MLP(config, dtype, gated=True),
                RMSNorm(config.hidden_size, eps, dtype),
                RMSNorm(config.hidden_size, eps, dtype),
            )
            for _ in range(config.num_hidden_layers)
        ]
        super().__init__(config, dtype, layers, RMSNorm(config.hidden_size, eps, dtype))


def hf_weight_map(config: Qwen3Config) -> dict[str, WeightSource]:
    bias = config.attention_bias
    return llama_style_weights(config, qkv_bias=bias, o_bias=bias, qk_norm=True)


CONFIG = Qwen3Config
MODEL = Qwen3ForCausalLM
