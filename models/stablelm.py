"""StableLM (2 / Zephyr / Code): LayerNorm, partial rotary, optional q/k/v bias, optional
parallel residual."""

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
    LayerNorm,
    decoder_fields,
    llama_style_weights,
    partial_rotary_factor,
)

MODEL_TYPES = ("stablelm",)


@dataclasses.dataclass
class StableLMConfig(DecoderConfig):
    use_qkv_bias: bool
    use_parallel_residual: bool

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> StableLMConfig:
        if hf.get("qk_layernorm"):
            raise ValueError("stablelm: qk_layernorm is not supported")
        fields = decoder_fields(
            hf,
            "stablelm",
            norm_eps_key="layer_norm_eps",
            rotary_fraction=partial_rotary_factor(hf, 0.25),
            scaling=("linear",),
        )
        return cls(
            **fields,
            use_qkv_bias=bool(hf.get("use_qkv_bias", False)),
            use_parallel_residual=bool(hf.get("use_parallel_residual", False)),
        )


class StableLMForCausalLM(CausalLM):
    def __init__(self, config: StableLMConfig, dtype: str = "float32"):
        eps, parallel = config.norm_eps, config.use_parallel_residual
        layers = [
            DecoderLayer(
                Attention(config, dtype, qkv_bias=config.use_qkv_bias),
                MLP(config, dtype, gated=True),
                LayerNorm(config.hidden_size, eps, dtype),
                None if parallel else LayerNorm(config.hidden_size, eps, dtype),
                parallel=parallel,
            )
            for _ in range(config.num_hidden_layers)
        ]
        super().__init__(config, dtype, layers, LayerNorm(config.hidden_size, eps, dtype))


def hf_weight_map(config: StableLMConfig) -> dict[str, WeightSource]:
    mapping = llama_style_weights(config, qkv_bias=config.use_qkv_bias, norm_bias=True)
    if config.use_parallel_residual:
        mapping = {k: v for k, v in mapping.items() if "post_attention_layernorm" not in k}
    return mapping


CONFIG = StableLMConfig
MODEL = StableLMForCausalLM
