"""Gemma: Llama with GeGLU (tanh GELU), embeddings scaled by sqrt(hidden), RMSNorm scaling by
(1 + w) and tied embeddings."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .base import WeightSource
from .layers import (
    MLP,
    Attention,
    CausalLM,
    DecoderConfig,
    DecoderLayer,
    LMOptions,
    RMSNorm,
    decoder_fields,
    llama_style_weights,
)

MODEL_TYPES = ("gemma",)


@dataclasses.dataclass
class GemmaConfig(DecoderConfig):
    attention_bias: bool

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> GemmaConfig:
        hf = dict(hf)
        # Gemma's `gelu` was always meant as the tanh approximation (transformers agrees).
        act = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
        hf["hidden_act"] = "gelu_pytorch_tanh" if act == "gelu" else act
        hf.setdefault("tie_word_embeddings", True)
        fields = decoder_fields(hf, "gemma", scaling=("linear",))
        return cls(**fields, attention_bias=bool(hf.get("attention_bias", False)))


class GemmaForCausalLM(CausalLM):
    def __init__(self, config: GemmaConfig, dtype: str = "float32"):
        eps, bias = config.norm_eps, config.attention_bias
        layers = [
            DecoderLayer(
                Attention(config, dtype, qkv_bias=bias, o_bias=bias),
                MLP(config, dtype, gated=True),
                RMSNorm(config.hidden_size, eps, dtype),
                RMSNorm(config.hidden_size, eps, dtype),
            )
            for _ in range(config.num_hidden_layers)
        ]
        options = LMOptions(embed_scale=config.hidden_size**0.5)
        super().__init__(config, dtype, layers, RMSNorm(config.hidden_size, eps, dtype), options)


def one_plus(name: str) -> WeightSource:
    """Gemma's RMSNorm scales by `1 + w`: store `1 + w` (computed in float32, as Gemma does)."""
    return WeightSource((name,), lambda arrays: arrays[0].astype(np.float32) + 1.0)


def hf_weight_map(config: GemmaConfig) -> dict[str, WeightSource]:
    bias = config.attention_bias
    return llama_style_weights(config, qkv_bias=bias, o_bias=bias, norm=one_plus)


CONFIG = GemmaConfig
MODEL = GemmaForCausalLM
