"""Qwen2-MoE and Qwen3-MoE: Qwen2's / Qwen3's attention with a mixture of experts in the layers
`decoder_sparse_step` and `mlp_only_layers` select (dense MLPs elsewhere); softmax over the
experts, top k renormalised when `norm_topk_prob`. Qwen2-MoE adds a shared expert, scaled by
`sigmoid(shared_expert_gate(x))`."""

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
    RMSNorm,
    fused,
    llama_style_weights,
    same,
)
from .moe import MoEFields, SparseMoE, moe_fields, moe_weights
from .qwen2 import Qwen2Config
from .qwen3 import Qwen3Config

MODEL_TYPES = ("qwen2_moe", "qwen3_moe")


@dataclasses.dataclass
class QwenMoEConfig(DecoderConfig, MoEFields):
    model_type: str
    attention_bias: bool
    shared_expert_intermediate_size: int  # 0: no shared expert

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> QwenMoEConfig:
        model_type = hf.get("model_type", "qwen3_moe")
        if model_type == "qwen2_moe":
            dense = Qwen2Config.from_hf({**hf, "model_type": "qwen2"})
            bias = True
        else:
            dense = Qwen3Config.from_hf({**hf, "model_type": "qwen3"})
            bias = dense.attention_bias
        fields = {f.name: getattr(dense, f.name) for f in dataclasses.fields(DecoderConfig)}
        moe = moe_fields(hf, model_type, dense.num_hidden_layers)
        shared = int(hf.get("shared_expert_intermediate_size") or 0)
        if model_type == "qwen2_moe" and not shared:
            raise ValueError("qwen2_moe: config.json lacks 'shared_expert_intermediate_size'")
        return cls(
            **fields,
            **moe,
            model_type=model_type,
            attention_bias=bias,
            shared_expert_intermediate_size=shared if model_type == "qwen2_moe" else 0,
        )


class QwenMoEForCausalLM(CausalLM):
    def __init__(self, config: QwenMoEConfig, dtype: str = "float32"):
        eps, bias = config.norm_eps, config.attention_bias
        qwen3 = config.model_type == "qwen3_moe"

        def mlp(i: int):
            if i not in config.moe_layers:
                return MLP(config, dtype, gated=True)
            shared = None
            if config.shared_expert_intermediate_size:
                shared = MLP(
                    dataclasses.replace(
                        config, intermediate_size=config.shared_expert_intermediate_size
                    ),
                    dtype,
                    gated=True,
                )
            return SparseMoE(config, dtype, shared_expert=shared)

        layers = [
            DecoderLayer(
                Attention(
                    config,
                    dtype,
                    bias,
                    bias and qwen3,  # Qwen2's output projection has no bias
                    qk_norms=qk_norms(config, dtype) if qwen3 else None,
                ),
                mlp(i),
                RMSNorm(config.hidden_size, eps, dtype),
                RMSNorm(config.hidden_size, eps, dtype),
            )
            for i in range(config.num_hidden_layers)
        ]
        super().__init__(config, dtype, layers, RMSNorm(config.hidden_size, eps, dtype))


def hf_weight_map(config: QwenMoEConfig) -> dict[str, WeightSource]:
    qwen3, bias = config.model_type == "qwen3_moe", config.attention_bias
    mapping = llama_style_weights(config, qkv_bias=bias, o_bias=bias and qwen3, qk_norm=qwen3)
    mapping = moe_weights(mapping, config.moe_layers, config.num_experts, "mlp")
    if config.shared_expert_intermediate_size:
        for i in config.moe_layers:
            ours, hf = f"layers.{i}.mlp", f"model.layers.{i}.mlp"
            mapping[f"{ours}.shared_expert.up_proj.weight"] = fused(
                f"{hf}.shared_expert.gate_proj.weight", f"{hf}.shared_expert.up_proj.weight"
            )
            mapping[f"{ours}.shared_expert.down_proj.weight"] = same(
                f"{hf}.shared_expert.down_proj.weight"
            )
            router = mapping[f"{ours}.router"].hf_names
            mapping[f"{ours}.router"] = fused(*router, f"{hf}.shared_expert_gate.weight")
    return mapping


CONFIG = QwenMoEConfig
MODEL = QwenMoEForCausalLM
