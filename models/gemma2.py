"""Gemma 2: Gemma with RMSNorm after attention and after the MLP as well as before, attention
scaled by `query_pre_attn_scalar`, tanh soft-capping of attention scores and of the final
logits, and sliding-window attention on every other layer.

Our CPU kernels compute the window and the attention soft-capping (`attn_logit_softcapping`).
Other targets' kernels can do neither: the context then stays within `sliding_window` and
scores are left uncapped (`c * tanh(x / c)` differs from `x` by about `x^3 / (3 c^2)`: 0.002 at
x = 5 with c = 50), with a warning.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache

from .base import WeightSource
from .gemma import one_plus
from .layers import (
    MLP,
    Attention,
    CausalLM,
    DecoderConfig,
    LMOptions,
    RMSNorm,
    decoder_fields,
    llama_style_weights,
    set_sliding_window,
)

MODEL_TYPES = ("gemma2",)


@dataclasses.dataclass
class Gemma2Config(DecoderConfig):
    attention_bias: bool
    query_pre_attn_scalar: float
    final_logit_softcapping: float | None
    attn_logit_softcapping: float | None

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> Gemma2Config:
        hf = dict(hf)
        hf["hidden_act"] = (
            hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
        )
        hf.setdefault("tie_word_embeddings", True)
        fields = decoder_fields(hf, "gemma2", scaling=("linear",))
        set_sliding_window(fields, hf, lambda i: i % 2 == 0)
        attn_cap = hf.get("attn_logit_softcapping")
        return cls(
            **fields,
            attention_bias=bool(hf.get("attention_bias", False)),
            query_pre_attn_scalar=float(hf.get("query_pre_attn_scalar", fields["head_dim"])),
            final_logit_softcapping=hf.get("final_logit_softcapping"),
            attn_logit_softcapping=attn_cap,
        )


class Gemma2DecoderLayer(nn.Module):
    """Norms before and after each branch; Gemma 3 adds query/key norms and its own RoPE."""

    def __init__(
        self,
        config: Gemma2Config,
        dtype: str,
        qk_norms: tuple[nn.Module, nn.Module] | None = None,
        rotary: nn.Module | None = None,
    ):
        eps, bias = config.norm_eps, config.attention_bias
        scale = config.query_pre_attn_scalar**-0.5
        self.input_layernorm = RMSNorm(config.hidden_size, eps, dtype)
        self.self_attn = Attention(
            config, dtype, bias, bias, qk_norms=qk_norms, sm_scale=scale, rotary=rotary
        )
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps, dtype)
        self.pre_feedforward_layernorm = RMSNorm(config.hidden_size, eps, dtype)
        self.mlp = MLP(config, dtype, gated=True)
        self.post_feedforward_layernorm = RMSNorm(config.hidden_size, eps, dtype)

    def forward(self, x: Tensor, kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        attn = self.self_attn(self.input_layernorm(x), kv_cache, layer_id)
        x = x + self.post_attention_layernorm(attn)
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Gemma2ForCausalLM(CausalLM):
    def __init__(self, config: Gemma2Config, dtype: str = "float32"):
        layers = [Gemma2DecoderLayer(config, dtype) for _ in range(config.num_hidden_layers)]
        final_norm = RMSNorm(config.hidden_size, config.norm_eps, dtype)
        options = LMOptions(embed_scale=config.hidden_size**0.5)
        super().__init__(config, dtype, layers, final_norm, options)

    def attention_softcap(self) -> float | None:
        return self.config.attn_logit_softcapping

    def _logits(self, hidden: Tensor) -> Tensor:
        logits = super()._logits(hidden)
        cap = self.config.final_logit_softcapping
        return op.tanh(logits / cap) * cap if cap else logits


def hf_weight_map(config: Gemma2Config) -> dict[str, WeightSource]:
    bias = config.attention_bias
    mapping = llama_style_weights(config, qkv_bias=bias, o_bias=bias, norm=one_plus)
    for i in range(config.num_hidden_layers):
        for norm in ("pre_feedforward_layernorm", "post_feedforward_layernorm"):
            mapping[f"layers.{i}.{norm}.weight"] = one_plus(f"model.layers.{i}.{norm}.weight")
    return mapping


CONFIG = Gemma2Config
MODEL = Gemma2ForCausalLM
