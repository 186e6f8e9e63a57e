"""OLMo 2: Llama with its norms moved after attention and after the MLP (each branch normalised
before its residual add, no norm before) and RMSNorm over the whole query and key projections."""

from __future__ import annotations

import dataclasses
from typing import Any

from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache

from .base import WeightSource
from .head_norm import qk_norms
from .layers import (
    MLP,
    Attention,
    CausalLM,
    DecoderConfig,
    RMSNorm,
    decoder_fields,
    llama_style_weights,
    same,
)

MODEL_TYPES = ("olmo2",)


@dataclasses.dataclass
class Olmo2Config(DecoderConfig):
    attention_bias: bool

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> Olmo2Config:
        fields = decoder_fields(hf, "olmo2", scaling=("linear", "llama3"))
        return cls(**fields, attention_bias=bool(hf.get("attention_bias", False)))


class Olmo2DecoderLayer(nn.Module):
    """`x += norm1(attn(x)); x += norm2(mlp(x))`."""

    def __init__(self, config: Olmo2Config, dtype: str):
        eps, bias = config.norm_eps, config.attention_bias
        norms = qk_norms(config, dtype, whole_width=True, across_heads=True)
        self.self_attn = Attention(config, dtype, bias, bias, qk_norms=norms)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps, dtype)
        self.mlp = MLP(config, dtype, gated=True)
        self.post_feedforward_layernorm = RMSNorm(config.hidden_size, eps, dtype)

    def forward(self, x: Tensor, kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        x = x + self.post_attention_layernorm(self.self_attn(x, kv_cache, layer_id))
        return x + self.post_feedforward_layernorm(self.mlp(x))


class Olmo2ForCausalLM(CausalLM):
    def __init__(self, config: Olmo2Config, dtype: str = "float32"):
        layers = [Olmo2DecoderLayer(config, dtype) for _ in range(config.num_hidden_layers)]
        super().__init__(config, dtype, layers, RMSNorm(config.hidden_size, config.norm_eps, dtype))


def hf_weight_map(config: Olmo2Config) -> dict[str, WeightSource]:
    bias = config.attention_bias
    mapping = llama_style_weights(config, qkv_bias=bias, o_bias=bias, qk_norm=True)
    for i in range(config.num_hidden_layers):
        del mapping[f"layers.{i}.input_layernorm.weight"]
        name = f"layers.{i}.post_feedforward_layernorm.weight"
        mapping[name] = same(f"model.{name}")
    return mapping


CONFIG = Olmo2Config
MODEL = Olmo2ForCausalLM
