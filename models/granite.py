"""IBM Granite (3.x): Llama with four multipliers, the embeddings scaled, each residual branch
scaled, attention scores scaled by `attention_multiplier` instead of 1/sqrt(head_dim), and the
logits divided by `logits_scaling`."""

from __future__ import annotations

import dataclasses
from typing import Any

from .layers import MLP, Attention, CausalLM, DecoderLayer, LMOptions, RMSNorm
from .llama import LlamaConfig
from .llama import hf_weight_map as llama_weights

MODEL_TYPES = ("granite",)


@dataclasses.dataclass
class GraniteConfig(LlamaConfig):
    embedding_multiplier: float
    residual_multiplier: float
    attention_multiplier: float
    logits_scaling: float

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> GraniteConfig:
        llama = LlamaConfig.from_hf(hf)
        return cls(
            **vars(llama),
            embedding_multiplier=float(hf.get("embedding_multiplier", 1.0)),
            residual_multiplier=float(hf.get("residual_multiplier", 1.0)),
            attention_multiplier=float(hf.get("attention_multiplier", 1.0)),
            logits_scaling=float(hf.get("logits_scaling", 1.0)),
        )


class GraniteForCausalLM(CausalLM):
    def __init__(self, config: GraniteConfig, dtype: str = "float32"):
        eps, bias = config.norm_eps, config.attention_bias
        layers = [
            DecoderLayer(
                Attention(config, dtype, bias, bias, sm_scale=config.attention_multiplier),
                MLP(config, dtype, gated=True, bias=config.mlp_bias),
                RMSNorm(config.hidden_size, eps, dtype),
                RMSNorm(config.hidden_size, eps, dtype),
                residual_scale=config.residual_multiplier,
            )
            for _ in range(config.num_hidden_layers)
        ]
        options = LMOptions(
            embed_scale=config.embedding_multiplier, logits_divisor=config.logits_scaling
        )
        super().__init__(config, dtype, layers, RMSNorm(config.hidden_size, eps, dtype), options)


hf_weight_map = llama_weights  # Granite names its weights as Llama does
CONFIG = GraniteConfig
MODEL = GraniteForCausalLM
