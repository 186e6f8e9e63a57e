"""OLMoE: Llama's pre-norm layer, RMSNorm over the whole query and key projections (as OLMo 2),
and a mixture of experts in every layer (softmax over the experts, top k renormalised when
`norm_topk_prob`)."""

from __future__ import annotations

import dataclasses
from typing import Any

from .base import WeightSource
from .head_norm import qk_norms
from .layers import (
    Attention,
    CausalLM,
    DecoderConfig,
    DecoderLayer,
    RMSNorm,
    decoder_fields,
    llama_style_weights,
)
from .moe import MoEFields, SparseMoE, moe_fields, moe_weights

MODEL_TYPES = ("olmoe",)


@dataclasses.dataclass
class OlmoeConfig(DecoderConfig, MoEFields):
    attention_bias: bool

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> OlmoeConfig:
        if hf.get("clip_qkv") is not None:
            raise ValueError(f"olmoe: clip_qkv ({hf['clip_qkv']}) is not supported")
        fields = decoder_fields(hf, "olmoe", scaling=("linear", "llama3"))
        moe = moe_fields(
            hf, "olmoe", fields["num_hidden_layers"], intermediate_key="intermediate_size"
        )
        return cls(**fields, **moe, attention_bias=bool(hf.get("attention_bias", False)))


class OlmoeForCausalLM(CausalLM):
    def __init__(self, config: OlmoeConfig, dtype: str = "float32"):
        eps, bias = config.norm_eps, config.attention_bias
        layers = [
            DecoderLayer(
                Attention(
                    config,
                    dtype,
                    bias,
                    bias,
                    qk_norms=qk_norms(config, dtype, whole_width=True, across_heads=True),
                ),
                SparseMoE(config, dtype),
                RMSNorm(config.hidden_size, eps, dtype),
                RMSNorm(config.hidden_size, eps, dtype),
            )
            for _ in range(config.num_hidden_layers)
        ]
        super().__init__(config, dtype, layers, RMSNorm(config.hidden_size, eps, dtype))


def hf_weight_map(config: OlmoeConfig) -> dict[str, WeightSource]:
    bias = config.attention_bias
    mapping = llama_style_weights(config, qkv_bias=bias, o_bias=bias, qk_norm=True)
    return moe_weights(mapping, config.moe_layers, config.num_experts, "mlp")


CONFIG = OlmoeConfig
MODEL = OlmoeForCausalLM
