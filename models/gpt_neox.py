"""GPT-NeoX (Pythia, RedPajama-INCITE, Dolly v2): LayerNorm, partial rotary, parallel residual
with two norms, and a fused QKV projection interleaved per head."""

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
    partial_rotary_factor,
    per_head_to_fused,
    same,
)

MODEL_TYPES = ("gpt_neox",)


@dataclasses.dataclass
class GPTNeoXConfig(DecoderConfig):
    use_parallel_residual: bool
    attention_bias: bool

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> GPTNeoXConfig:
        hf = dict(hf)
        # transformers 4 names: `rotary_pct`, `rotary_emb_base`.
        hf.setdefault("partial_rotary_factor", hf.get("rotary_pct"))
        if "rotary_emb_base" in hf:
            hf.setdefault("rope_theta", hf["rotary_emb_base"])
        hf.setdefault("hidden_act", "gelu")
        fields = decoder_fields(
            hf,
            "gpt_neox",
            norm_eps_key="layer_norm_eps",
            rotary_fraction=partial_rotary_factor(hf, 0.25),
            scaling=("linear",),
        )
        return cls(
            **fields,
            use_parallel_residual=bool(hf.get("use_parallel_residual", True)),
            attention_bias=bool(hf.get("attention_bias", True)),
        )


class GPTNeoXForCausalLM(CausalLM):
    def __init__(self, config: GPTNeoXConfig, dtype: str = "float32"):
        eps, bias = config.norm_eps, config.attention_bias
        layers = [
            DecoderLayer(
                Attention(config, dtype, qkv_bias=bias, o_bias=bias),
                MLP(config, dtype, gated=False, bias=True),
                LayerNorm(config.hidden_size, eps, dtype),
                LayerNorm(config.hidden_size, eps, dtype),
                parallel=config.use_parallel_residual,
            )
            for _ in range(config.num_hidden_layers)
        ]
        super().__init__(config, dtype, layers, LayerNorm(config.hidden_size, eps, dtype))


def hf_weight_map(config: GPTNeoXConfig) -> dict[str, WeightSource]:
    mapping = {"embed_tokens.weight": same("gpt_neox.embed_in.weight")}
    for s in ("weight", "bias"):
        mapping[f"norm.{s}"] = same(f"gpt_neox.final_layer_norm.{s}")
    if not config.tie_word_embeddings:
        mapping["lm_head.weight"] = same("embed_out.weight")
    reorder = per_head_to_fused(config.num_attention_heads)
    attn_suffixes = ("weight", "bias") if config.attention_bias else ("weight",)
    for i in range(config.num_hidden_layers):
        ours, hf = f"layers.{i}", f"gpt_neox.layers.{i}"
        for s in ("weight", "bias"):
            for norm in ("input_layernorm", "post_attention_layernorm"):
                mapping[f"{ours}.{norm}.{s}"] = same(f"{hf}.{norm}.{s}")
        for s in attn_suffixes:
            mapping[f"{ours}.self_attn.qkv_proj.{s}"] = WeightSource(
                (f"{hf}.attention.query_key_value.{s}",), reorder
            )
            mapping[f"{ours}.self_attn.o_proj.{s}"] = same(f"{hf}.attention.dense.{s}")
        for s in ("weight", "bias"):
            mapping[f"{ours}.mlp.up_proj.{s}"] = same(f"{hf}.mlp.dense_h_to_4h.{s}")
            mapping[f"{ours}.mlp.down_proj.{s}"] = same(f"{hf}.mlp.dense_4h_to_h.{s}")
    return mapping


CONFIG = GPTNeoXConfig
MODEL = GPTNeoXForCausalLM
