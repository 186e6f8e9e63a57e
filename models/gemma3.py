"""Gemma 3 (text): Gemma 2's layer with per-head query/key RMSNorm, five sliding layers to one
global layer by default, and two RoPEs: the sliding layers' base (`rope_local_base_freq`,
10,000) and the global layers' base (`rope_theta`, 1,000,000, with the model's linear scaling).

The cache runs without RoPE and each layer rotates with its own (`rotary.Rotary`)."""

from __future__ import annotations

import dataclasses
from typing import Any

from tvm.relax.frontend.nn.llm.kv_cache import RopeMode

from .base import WeightSource, rope_parameters
from .gemma import one_plus
from .gemma2 import Gemma2Config, Gemma2DecoderLayer, Gemma2ForCausalLM
from .gemma2 import hf_weight_map as gemma2_weights
from .head_norm import qk_norms
from .layers import CausalLM, LMOptions, RMSNorm, check_rope_scaling
from .rotary import Rotary

MODEL_TYPES = ("gemma3_text",)
GLOBAL_THETA, LOCAL_THETA = 1_000_000.0, 10_000.0  # transformers' defaults


@dataclasses.dataclass
class Gemma3Config(Gemma2Config):
    local_rope_theta: float
    local_rope_scaling: dict[str, Any] | None
    local_layers: list[int]  # the layers that rotate with the local RoPE (and may slide)

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> Gemma3Config:
        (theta, scaling), (local_theta, local_scaling) = layer_ropes(hf)
        for s in (scaling, local_scaling):
            check_rope_scaling("gemma3_text", s, ("linear",))
        hf = {k: v for k, v in hf.items() if k not in ("rope_parameters", "rope_scaling")}
        hf["rope_theta"] = theta
        hf.setdefault("query_pre_attn_scalar", 256)
        if hf.get("layer_types") is None:
            pattern = int(hf.get("sliding_window_pattern", 6))
            n = int(hf.get("num_hidden_layers", 0))
            hf["layer_types"] = [
                "sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n)
            ]
        gemma2 = Gemma2Config.from_hf({"sliding_window": 4096, **hf})
        gemma2.rope_scaling = scaling
        return cls(
            **vars(gemma2),
            local_rope_theta=local_theta,
            local_rope_scaling=local_scaling,
            local_layers=[i for i, t in enumerate(hf["layer_types"]) if t == "sliding_attention"],
        )


def layer_ropes(
    hf: dict[str, Any],
) -> tuple[tuple[float, dict[str, Any] | None], tuple[float, dict[str, Any] | None]]:
    """`((theta, scaling) of the global layers, (theta, scaling) of the sliding layers)` from a
    config of transformers 5 (`rope_parameters` per layer type) or 4 (`rope_theta`,
    `rope_scaling`, `rope_local_base_freq`) layout."""
    params = hf.get("rope_parameters") or {}
    if "full_attention" in params or "sliding_attention" in params:
        ropes = []
        for kind, default in (("full_attention", GLOBAL_THETA), ("sliding_attention", LOCAL_THETA)):
            ropes.append(
                rope_parameters({"rope_parameters": {"rope_theta": default, **params[kind]}})
            )
        return ropes[0], ropes[1]
    global_rope = rope_parameters({"rope_theta": GLOBAL_THETA, **hf})
    return global_rope, (float(hf.get("rope_local_base_freq", LOCAL_THETA)), None)


class Gemma3ForCausalLM(Gemma2ForCausalLM):
    def __init__(self, config: Gemma3Config, dtype: str = "float32"):
        layers = []
        for i in range(config.num_hidden_layers):
            if i in config.local_layers:
                rotary = Rotary(
                    config.local_rope_theta, config.rotary_dim, config.local_rope_scaling
                )
            else:
                rotary = Rotary(config.rope_theta, config.rotary_dim, config.rope_scaling)
            layers.append(Gemma2DecoderLayer(config, dtype, qk_norms(config, dtype), rotary))
        final_norm = RMSNorm(config.hidden_size, config.norm_eps, dtype)
        options = LMOptions(embed_scale=config.hidden_size**0.5, rope_mode=RopeMode.NONE)
        CausalLM.__init__(self, config, dtype, layers, final_norm, options)


def hf_weight_map(config: Gemma3Config) -> dict[str, WeightSource]:
    mapping = gemma2_weights(config)
    for i in range(config.num_hidden_layers):
        for n in ("q_norm", "k_norm"):
            mapping[f"layers.{i}.self_attn.{n}.weight"] = one_plus(
                f"model.layers.{i}.self_attn.{n}.weight"
            )
    return mapping


CONFIG = Gemma3Config
MODEL = Gemma3ForCausalLM
