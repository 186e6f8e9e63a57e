"""GPT-2 (and DistilGPT2): learned positions, LayerNorm, GELU MLP, tied embeddings, and
`Conv1D` weights stored `[in, out]` (transposed at conversion)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from .base import WeightSource
from .layers import (
    MLP,
    Attention,
    CausalLM,
    DecoderConfig,
    DecoderLayer,
    LayerNorm,
    LMOptions,
    decoder_fields,
    same,
    transposed,
)

MODEL_TYPES = ("gpt2",)

# GPT-2's `config.json` names → the common ones.
GPT2_FIELDS = {
    "n_embd": "hidden_size",
    "n_layer": "num_hidden_layers",
    "n_head": "num_attention_heads",
    "n_positions": "max_position_embeddings",
    "n_inner": "intermediate_size",
    "activation_function": "hidden_act",
    "layer_norm_epsilon": "layer_norm_eps",
}


def gpt2_style_fields(hf: dict[str, Any], model_type: str) -> dict[str, Any]:
    """`DecoderConfig` fields of GPT-2-style configs (GPT-2, GPT-BigCode); no rotary."""
    hf = {GPT2_FIELDS.get(k, k): v for k, v in hf.items()}
    hf.setdefault("hidden_act", "gelu_new")
    hf.setdefault("tie_word_embeddings", True)
    fields = decoder_fields(hf, model_type, norm_eps_key="layer_norm_eps")
    fields["rotary_dim"] = 0
    # The learned position table keeps its size if the build shortens the context.
    fields["num_positions"] = fields["context_window_size"]
    return fields


@dataclasses.dataclass
class GPT2Config(DecoderConfig):
    num_positions: int
    scale_attn_by_inverse_layer_idx: bool

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> GPT2Config:
        if hf.get("scale_attn_weights") is False:
            raise ValueError("gpt2: scale_attn_weights=false is not supported")
        return cls(
            **gpt2_style_fields(hf, "gpt2"),
            scale_attn_by_inverse_layer_idx=bool(hf.get("scale_attn_by_inverse_layer_idx")),
        )


class GPT2LMHeadModel(CausalLM):
    def __init__(self, config: GPT2Config, dtype: str = "float32"):
        eps = config.norm_eps
        layers = []
        for i in range(config.num_hidden_layers):
            scale = config.head_dim**-0.5
            if config.scale_attn_by_inverse_layer_idx:
                scale /= i + 1
            layers.append(
                DecoderLayer(
                    Attention(config, dtype, qkv_bias=True, o_bias=True, sm_scale=scale),
                    MLP(config, dtype, gated=False, bias=True),
                    LayerNorm(config.hidden_size, eps, dtype),
                    LayerNorm(config.hidden_size, eps, dtype),
                )
            )
        options = LMOptions(learned_positions=config.num_positions)
        super().__init__(config, dtype, layers, LayerNorm(config.hidden_size, eps, dtype), options)


def gpt2_style_weights(
    config: DecoderConfig,
    matrix: Callable[[str], WeightSource],
    qkv: Callable[[str], WeightSource],
) -> dict[str, WeightSource]:
    """The weight map of GPT-2-style checkpoints (`transformer.h.{i}.attn.c_attn`, ...);
    `matrix` builds the source of a projection weight, `qkv` that of `c_attn`."""
    mapping = {
        "embed_tokens.weight": same("transformer.wte.weight"),
        "embed_positions.weight": same("transformer.wpe.weight"),
        "norm.weight": same("transformer.ln_f.weight"),
        "norm.bias": same("transformer.ln_f.bias"),
    }
    if not config.tie_word_embeddings:
        mapping["lm_head.weight"] = same("lm_head.weight")
    for i in range(config.num_hidden_layers):
        ours, hf = f"layers.{i}", f"transformer.h.{i}"
        for s in ("weight", "bias"):
            mapping[f"{ours}.input_layernorm.{s}"] = same(f"{hf}.ln_1.{s}")
            mapping[f"{ours}.post_attention_layernorm.{s}"] = same(f"{hf}.ln_2.{s}")
        mapping[f"{ours}.self_attn.qkv_proj.weight"] = qkv(f"{hf}.attn.c_attn.weight")
        mapping[f"{ours}.self_attn.qkv_proj.bias"] = qkv(f"{hf}.attn.c_attn.bias")
        mapping[f"{ours}.self_attn.o_proj.weight"] = matrix(f"{hf}.attn.c_proj.weight")
        mapping[f"{ours}.self_attn.o_proj.bias"] = same(f"{hf}.attn.c_proj.bias")
        mapping[f"{ours}.mlp.up_proj.weight"] = matrix(f"{hf}.mlp.c_fc.weight")
        mapping[f"{ours}.mlp.up_proj.bias"] = same(f"{hf}.mlp.c_fc.bias")
        mapping[f"{ours}.mlp.down_proj.weight"] = matrix(f"{hf}.mlp.c_proj.weight")
        mapping[f"{ours}.mlp.down_proj.bias"] = same(f"{hf}.mlp.c_proj.bias")
    return mapping


def hf_weight_map(config: GPT2Config) -> dict[str, WeightSource]:
    # Conv1D: `c_attn` is `[in, q|k|v]`, so its transpose is already in our row order.
    return gpt2_style_weights(
        config, transposed, lambda name: transposed(name) if name.endswith("weight") else same(name)
    )


CONFIG = GPT2Config
MODEL = GPT2LMHeadModel
