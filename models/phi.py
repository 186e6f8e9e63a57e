"""Phi-1 / Phi-1.5 / Phi-2: parallel attention and MLP under one LayerNorm, partial rotary,
biases everywhere, an LM head with a bias, and optionally one LayerNorm shared by the heads of
the queries and one of the keys (`qk_layernorm`)."""

from __future__ import annotations

import dataclasses
from typing import Any

from .base import WeightSource
from .head_norm import qk_norms
from .layers import (
    MLP,
    Attention,
    CausalLM,
    DecoderConfig,
    DecoderLayer,
    LayerNorm,
    LMOptions,
    decoder_fields,
    fused,
    partial_rotary_factor,
    same,
)

MODEL_TYPES = ("phi",)


@dataclasses.dataclass
class PhiConfig(DecoderConfig):
    qk_layernorm: bool

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> PhiConfig:
        hf = {"hidden_act": "gelu_new", **hf}
        fields = decoder_fields(
            hf,
            "phi",
            norm_eps_key="layer_norm_eps",
            rotary_fraction=partial_rotary_factor(hf, 0.5),
            scaling=("linear",),
        )
        return cls(**fields, qk_layernorm=bool(hf.get("qk_layernorm", False)))


class PhiForCausalLM(CausalLM):
    def __init__(self, config: PhiConfig, dtype: str = "float32"):
        eps = config.norm_eps

        def norms():  # one LayerNorm (weight and bias) shared by the query heads, one by the keys
            return (
                qk_norms(config, dtype, centered=True, bias=True) if config.qk_layernorm else None
            )

        layers = [
            DecoderLayer(
                Attention(config, dtype, True, True, qk_norms=norms()),
                MLP(config, dtype, gated=False, bias=True),
                LayerNorm(config.hidden_size, eps, dtype),
                None,
                parallel=True,
            )
            for _ in range(config.num_hidden_layers)
        ]
        final_norm = LayerNorm(config.hidden_size, eps, dtype)
        super().__init__(config, dtype, layers, final_norm, LMOptions(lm_head_bias=True))


def hf_weight_map(config: PhiConfig) -> dict[str, WeightSource]:
    mapping = {"embed_tokens.weight": same("model.embed_tokens.weight")}
    for s in ("weight", "bias"):
        mapping[f"norm.{s}"] = same(f"model.final_layernorm.{s}")
        if not config.tie_word_embeddings:
            mapping[f"lm_head.{s}"] = same(f"lm_head.{s}")
    for i in range(config.num_hidden_layers):
        ours, hf = f"layers.{i}", f"model.layers.{i}"
        for s in ("weight", "bias"):
            mapping[f"{ours}.input_layernorm.{s}"] = same(f"{hf}.input_layernorm.{s}")
            mapping[f"{ours}.self_attn.qkv_proj.{s}"] = fused(
                *(f"{hf}.self_attn.{n}_proj.{s}" for n in "qkv")
            )
            mapping[f"{ours}.self_attn.o_proj.{s}"] = same(f"{hf}.self_attn.dense.{s}")
            mapping[f"{ours}.mlp.up_proj.{s}"] = same(f"{hf}.mlp.fc1.{s}")
            mapping[f"{ours}.mlp.down_proj.{s}"] = same(f"{hf}.mlp.fc2.{s}")
            if config.qk_layernorm:
                for n in "qk":
                    mapping[f"{ours}.self_attn.{n}_norm.{s}"] = same(
                        f"{hf}.self_attn.{n}_layernorm.{s}"
                    )
    return mapping


CONFIG = PhiConfig
MODEL = PhiForCausalLM
