"""Llama and Mistral: RMSNorm, RoPE, grouped-query attention, SwiGLU; Mistral's sliding window
on every layer."""

from __future__ import annotations

import dataclasses
from typing import Any

from .base import WeightSource
from .layers import (
    MLP,
    Attention,
    CausalLM,
    DecoderConfig,
    DecoderLayer,
    RMSNorm,
    decoder_fields,
    llama_style_weights,
)

MODEL_TYPES = ("llama", "mistral")


@dataclasses.dataclass
class LlamaConfig(DecoderConfig):
    attention_bias: bool
    mlp_bias: bool

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> LlamaConfig:
        model_type = hf.get("model_type", "llama")
        scaling = ("linear", "llama3", "yarn")
        fields = decoder_fields(hf, model_type, norm_eps_default=1e-6, scaling=scaling)
        # transformers' Mistral slides on every layer, whatever `layer_types` says.
        window = int(hf.get("sliding_window") or 0)
        fields["sliding_window"] = window
        fields["sliding_layers"] = list(range(fields["num_hidden_layers"])) if window else []
        return cls(
            **fields,
            attention_bias=bool(hf.get("attention_bias", False)),
            mlp_bias=bool(hf.get("mlp_bias", False)),
        )


class LlamaForCausalLM(CausalLM):
    def __init__(self, config: LlamaConfig, dtype: str = "float32"):
        eps, bias = config.norm_eps, config.attention_bias
        layers = [
            DecoderLayer(
                Attention(config, dtype, qkv_bias=bias, o_bias=bias),
                MLP(config, dtype, gated=True, bias=config.mlp_bias),
                RMSNorm(config.hidden_size, eps, dtype),
                RMSNorm(config.hidden_size, eps, dtype),
            )
            for _ in range(config.num_hidden_layers)
        ]
        super().__init__(config, dtype, layers, RMSNorm(config.hidden_size, eps, dtype))


def hf_weight_map(config: LlamaConfig) -> dict[str, WeightSource]:
    bias = config.attention_bias
    return llama_style_weights(config, qkv_bias=bias, o_bias=bias, mlp_bias=config.mlp_bias)


CONFIG = LlamaConfig
MODEL = LlamaForCausalLM
