"""Mixtral: Mistral's attention with a mixture of experts in every layer (softmax over the
experts, top k renormalised)."""

from __future__ import annotations

import dataclasses
from typing import Any

from .base import WeightSource
from .layers import (
    Attention,
    CausalLM,
    DecoderLayer,
    RMSNorm,
    llama_style_weights,
)
from .llama import LlamaConfig
from .moe import MoEFields, SparseMoE, moe_fields, moe_weights

MODEL_TYPES = ("mixtral",)


@dataclasses.dataclass
class MixtralConfig(LlamaConfig, MoEFields):
    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> MixtralConfig:
        llama = LlamaConfig.from_hf({"rms_norm_eps": 1e-5, **hf, "model_type": "mixtral"})
        moe = moe_fields(
            {**hf, "norm_topk_prob": True},  # Mixtral always renormalises
            "mixtral",
            llama.num_hidden_layers,
            intermediate_key="intermediate_size",
        )
        return cls(**vars(llama), **moe)


class MixtralForCausalLM(CausalLM):
    def __init__(self, config: MixtralConfig, dtype: str = "float32"):
        eps = config.norm_eps
        layers = [
            DecoderLayer(
                Attention(config, dtype),
                SparseMoE(config, dtype),
                RMSNorm(config.hidden_size, eps, dtype),
                RMSNorm(config.hidden_size, eps, dtype),
            )
            for _ in range(config.num_hidden_layers)
        ]
        super().__init__(config, dtype, layers, RMSNorm(config.hidden_size, eps, dtype))


def hf_weight_map(config: MixtralConfig) -> dict[str, WeightSource]:
    mapping = llama_style_weights(config)
    names = ("gate", "w1", "w3", "w2")
    return moe_weights(mapping, config.moe_layers, config.num_experts, "block_sparse_moe", names)


CONFIG = MixtralConfig
MODEL = MixtralForCausalLM
