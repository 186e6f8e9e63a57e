"""Phi-3 / Phi-3.5: Llama with fused qkv and gate_up projections, partial rotary and
LongRoPE ("su") scaling."""

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
    partial_rotary_factor,
    same,
    set_sliding_window,
)
from .rotary import LongRoPE

MODEL_TYPES = ("phi3",)


@dataclasses.dataclass
class Phi3Config(DecoderConfig):
    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> Phi3Config:
        hf = dict(hf)
        for key in ("rope_scaling", "rope_parameters"):  # transformers 4 called it "su"
            if (hf.get(key) or {}).get("type") in ("su", "yarn"):
                hf[key] = {**hf[key], "type": "longrope"}
            if (hf.get(key) or {}).get("rope_type") in ("su", "yarn"):
                hf[key] = {**hf[key], "rope_type": "longrope"}
        fields = decoder_fields(
            hf, "phi3", rotary_fraction=partial_rotary_factor(hf), scaling=("longrope",)
        )
        set_sliding_window(fields, hf, lambda i: True)
        scaling = fields["rope_scaling"]
        if scaling is not None:
            scaling.setdefault(
                "original_max_position_embeddings", hf.get("original_max_position_embeddings")
            )
            # LongRoPE is applied in the model (models/rotary.py): the cache's own longrope
            # kernel does not build in this TVM and picks its factors by chunk length.
            scaling["max_position_embeddings"] = int(hf.get("max_position_embeddings", 4096))
        return cls(**fields)


class Phi3ForCausalLM(CausalLM):
    def __init__(self, config: Phi3Config, dtype: str = "float32"):
        eps = config.norm_eps
        scaling = config.rope_scaling
        layers = [
            DecoderLayer(
                Attention(config, dtype, rotary=longrope(config) if scaling else None),
                MLP(config, dtype, gated=True),
                RMSNorm(config.hidden_size, eps, dtype),
                RMSNorm(config.hidden_size, eps, dtype),
            )
            for _ in range(config.num_hidden_layers)
        ]
        # With LongRoPE the model rotates queries and keys itself.
        options = LMOptions(rope_mode=RopeMode.NONE if scaling else RopeMode.NORMAL)
        super().__init__(config, dtype, layers, RMSNorm(config.hidden_size, eps, dtype), options)


def longrope(config: Phi3Config) -> LongRoPE:
    scaling = config.rope_scaling
    return LongRoPE(
        config.rope_theta, config.rotary_dim, scaling, scaling["max_position_embeddings"]
    )


def hf_weight_map(config: Phi3Config) -> dict[str, WeightSource]:
    mapping = {
        "embed_tokens.weight": same("model.embed_tokens.weight"),
        "norm.weight": same("model.norm.weight"),
    }
    if not config.tie_word_embeddings:
        mapping["lm_head.weight"] = same("lm_head.weight")
    for i in range(config.num_hidden_layers):
        ours, hf = f"layers.{i}", f"model.layers.{i}"
        for name in (
            "input_layernorm.weight",
            "post_attention_layernorm.weight",
            "self_attn.qkv_proj.weight",
            "self_attn.o_proj.weight",
            "mlp.down_proj.weight",
        ):
            mapping[f"{ours}.{name}"] = same(f"{hf}.{name}")
        mapping[f"{ours}.mlp.up_proj.weight"] = same(f"{hf}.mlp.gate_up_proj.weight")
    return mapping


CONFIG = Phi3Config
MODEL = Phi3ForCausalLM
