"""GPT-J (and MOSS): parallel attention and MLP under one LayerNorm, partial rotary in the
interleaved (GPT-J) style, and an LM head with a bias.

Interleaved rotary pairs dimensions (2i, 2i+1); the cache's rotary pairs (i, i + rotary_dim/2).
Permuting the query and key rows of every head maps one onto the other and leaves every q·k
unchanged, so the conversion does that and the cache runs its usual rotary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from .base import WeightSource
from .gpt2 import GPT2_FIELDS
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
)

MODEL_TYPES = ("gptj",)


@dataclasses.dataclass
class GPTJConfig(DecoderConfig):
    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> GPTJConfig:
        hf = {GPT2_FIELDS.get(k, k): v for k, v in hf.items()}
        hf.setdefault("hidden_act", "gelu_new")
        if not hf.get("rotary_dim"):
            raise ValueError("gptj: a config without rotary_dim is not supported")
        fields = decoder_fields(hf, "gptj", norm_eps_key="layer_norm_eps")
        fields["rotary_dim"] = int(hf["rotary_dim"])
        return cls(**fields)


class GPTJForCausalLM(CausalLM):
    def __init__(self, config: GPTJConfig, dtype: str = "float32"):
        eps = config.norm_eps
        layers = [
            DecoderLayer(
                Attention(config, dtype),
                MLP(config, dtype, gated=False, bias=True),
                LayerNorm(config.hidden_size, eps, dtype),
                None,
                parallel=True,
            )
            for _ in range(config.num_hidden_layers)
        ]
        final_norm = LayerNorm(config.hidden_size, eps, dtype)
        super().__init__(config, dtype, layers, final_norm, LMOptions(lm_head_bias=True))


def deinterleave_rows(config: GPTJConfig):
    """Rows of q/k/v: within every query and key head, even rotary dims first, then odd."""
    d, r = config.head_dim, config.rotary_dim
    perm = np.concatenate([np.arange(0, r, 2), np.arange(1, r, 2), np.arange(r, d)])
    rotated_heads = config.num_attention_heads + config.num_key_value_heads

    def combine(arrays: Sequence[np.ndarray]) -> np.ndarray:
        q, k, v = arrays
        qk = np.concatenate([q, k]).reshape(rotated_heads, d, -1)[:, perm]
        return np.concatenate([qk.reshape(-1, q.shape[1]), v])

    return combine


def hf_weight_map(config: GPTJConfig) -> dict[str, WeightSource]:
    mapping = {"embed_tokens.weight": same("transformer.wte.weight")}
    for s in ("weight", "bias"):
        mapping[f"norm.{s}"] = same(f"transformer.ln_f.{s}")
        if not config.tie_word_embeddings:
            mapping[f"lm_head.{s}"] = same(f"lm_head.{s}")
    reorder = deinterleave_rows(config)
    for i in range(config.num_hidden_layers):
        ours, hf = f"layers.{i}", f"transformer.h.{i}"
        mapping[f"{ours}.self_attn.qkv_proj.weight"] = WeightSource(
            tuple(f"{hf}.attn.{n}_proj.weight" for n in "qkv"), reorder
        )
        mapping[f"{ours}.self_attn.o_proj.weight"] = same(f"{hf}.attn.out_proj.weight")
        for s in ("weight", "bias"):
            mapping[f"{ours}.input_layernorm.{s}"] = same(f"{hf}.ln_1.{s}")
            mapping[f"{ours}.mlp.up_proj.{s}"] = same(f"{hf}.mlp.fc_in.{s}")
            mapping[f"{ours}.mlp.down_proj.{s}"] = same(f"{hf}.mlp.fc_out.{s}")
    return mapping


CONFIG = GPTJConfig
MODEL = GPTJForCausalLM
