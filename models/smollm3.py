"""SmolLM3: Llama whose layers listed as 0 in `no_rope_layers` (every fourth by default) attend
without RoPE (NoPE); optionally those layers slide.

The cache runs without RoPE and the layers that rotate do so themselves (`rotary.Rotary`)."""

from __future__ import annotations

import dataclasses
from typing import Any

from tvm.relax.frontend.nn.llm.kv_cache import RopeMode

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
    set_sliding_window,
)
from .rotary import Rotary

MODEL_TYPES = ("smollm3",)


@dataclasses.dataclass
class SmolLM3Config(DecoderConfig):
    attention_bias: bool
    mlp_bias: bool
    rope_layers: list[int]  # the layers that apply RoPE

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> SmolLM3Config:
        hf = {"tie_word_embeddings": True, "use_sliding_window": False, **hf}
        if "rope_theta" not in hf and "rope_theta" not in (hf.get("rope_parameters") or {}):
            hf["rope_theta"] = 2_000_000.0  # transformers' default for SmolLM3
        fields = decoder_fields(hf, "smollm3", norm_eps_default=1e-6, scaling=("linear", "yarn"))
        n = fields["num_hidden_layers"]
        flags = hf.get("no_rope_layers")
        if flags is None:
            interval = int(hf.get("no_rope_layer_interval", 4))
            flags = [int((i + 1) % interval != 0) for i in range(n)]
        if len(flags) < n:
            raise ValueError(f"smollm3: no_rope_layers has {len(flags)} entries for {n} layers")
        set_sliding_window(fields, hf, lambda i: not flags[i])
        return cls(
            **fields,
            attention_bias=bool(hf.get("attention_bias", False)),
            mlp_bias=bool(hf.get("mlp_bias", False)),
            rope_layers=[i for i in range(n) if flags[i]],
        )


class SmolLM3ForCausalLM(CausalLM):
    def __init__(self, config: SmolLM3Config, dtype: str = "float32"):
        eps, bias = config.norm_eps, config.attention_bias

        def rotary(i: int) -> Rotary | None:
            if i not in config.rope_layers:
                return None
            return Rotary(config.rope_theta, config.rotary_dim, config.rope_scaling)

        layers = [
            DecoderLayer(
                Attention(
                    config, dtype, bias, bias, rotary=rotary(i), rotates=i in config.rope_layers
                ),
                MLP(config, dtype, gated=True, bias=config.mlp_bias),
                RMSNorm(config.hidden_size, eps, dtype),
                RMSNorm(config.hidden_size, eps, dtype),
            )
            for i in range(config.num_hidden_layers)
        ]
        final_norm = RMSNorm(config.hidden_size, eps, dtype)
        super().__init__(config, dtype, layers, final_norm, LMOptions(rope_mode=RopeMode.NONE))


def hf_weight_map(config: SmolLM3Config) -> dict[str, WeightSource]:
    bias = config.attention_bias
    return llama_style_weights(config, qkv_bias=bias, o_bias=bias, mlp_bias=config.mlp_bias)


CONFIG = SmolLM3Config
MODEL = SmolLM3ForCausalLM
