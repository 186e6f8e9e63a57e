"""StableLM (2 / Zephyr / Code): LayerNorm, partial rotary, optional q/k/v bias, optional
parallel residual, optional per-head LayerNorm of queries and keys (`qk_layernorm`, StableLM 2
12B: a weight per head, no bias)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .base import WeightSource
from .head_norm import qk_norms
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
    qk_layernorm: bool

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> StableLMConfig:
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
            qk_layernorm=bool(hf.get("qk_layernorm", False)),
        )


class StableLMForCausalLM(CausalLM):
    def __init__(self, config: StableLMConfig, dtype: str = "float32"):
        eps, parallel = config.norm_eps, config.use_parallel_residual

        def norms():  # a LayerNorm per head, each with its own weight and no bias
            if not config.qk_layernorm:
                return None
            return qk_norms(config, dtype, whole_width=True, centered=True)

        layers = [
            DecoderLayer(
                Attention(config, dtype, config.use_qkv_bias, qk_norms=norms()),
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
    if config.qk_layernorm:
        heads = {"q": config.num_attention_heads, "k": config.num_key_value_heads}
        for i in range(config.num_hidden_layers):
            for n, count in heads.items():
                hf = f"model.layers.{i}.self_attn.{n}_layernorm.norms"
                mapping[f"layers.{i}.self_attn.{n}_norm.weight"] = WeightSource(
                    tuple(f"{hf}.{h}.weight" for h in range(count)), np.concatenate
                )
    return mapping


CONFIG = StableLMConfig
MODEL = StableLMForCausalLM
