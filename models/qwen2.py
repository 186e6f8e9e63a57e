"""Qwen1.5 / Qwen2 / Qwen2.5: Llama with a bias on the q/k/v projections (not on o)."""

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
    set_sliding_window,
)

MODEL_TYPES = ("qwen2",)


@dataclasses.dataclass
class Qwen2Config(DecoderConfig):
    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> Qwen2Config:
        fields = decoder_fields(hf, "qwen2", scaling=("linear", "llama3", "yarn"))
        set_sliding_window(fields, hf, lambda i: i >= hf.get("max_window_layers", 28))
        return cls(**fields)


class Qwen2ForCausalLM(CausalLM):
    def __init__(self, config: Qwen2Config, dtype: str = "float32"):
        eps = config.norm_eps
        layers = [
            DecoderLayer(
                Attention(config, dtype, qkv_bias=True),
                MLP(config, dtype, gated=True),
                RMSNorm(config.hidden_size, eps, dtype),
                RMSNorm(config.hidden_size, eps, dtype),
            )
            for _ in range(config.num_hidden_layers)
        ]
        super().__init__(config, dtype, layers, RMSNorm(config.hidden_size, eps, dtype))


def hf_weight_map(config: Qwen2Config) -> dict[str, WeightSource]:
    return llama_style_weights(config, qkv_bias=True)


CONFIG = Qwen2Config
MODEL = Qwen2ForCausalLM
