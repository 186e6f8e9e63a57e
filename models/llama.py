"""Llama and Mistral: RMSNorm, RoPE, grouped-query attention, SwiGLU; Mistral's sliding window
on every layer."""

from __future__ import annotations

import dataclasses
from typing import Any

from tvm import relax as rx
from tvm import tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache, RopeMode, TIRPagedKVCache
from tvm.target import Target

from .base import (
    Embedding,
    ModelConfig,
    RMSNorm,
    WeightSource,
    concat_rows,
    export_spec,
    require,
    rope_parameters,
)
from .layers import (
    annotate_attention_kernels,
    cached_attention,
    fit_context_to_window,
    kernel_names,
    kernel_sm_scale,
    kernels_apply_variant,
)

MODEL_TYPES = ("llama", "mistral")


@dataclasses.dataclass
class LlamaConfig(ModelConfig):
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    attention_bias: bool
    mlp_bias: bool
    sliding_window: int = 0  # every layer's query at p sees keys at > p - window; 0: none
    sliding_layers: list[int] = dataclasses.field(default_factory=list)

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> LlamaConfig:
        model_type = hf.get("model_type", "llama")
        hidden = require(hf, "hidden_size", model_type)
        heads = require(hf, "num_attention_heads", model_type)
        if hf.get("hidden_act", "silu") != "silu":
            raise ValueError(f"{model_type}: hidden_act {hf['hidden_act']!r} is not supported")
        theta, scaling = rope_parameters(hf)
        if scaling is not None and scaling["rope_type"] not in ("linear", "llama3"):
            raise ValueError(
                f"{model_type}: rope scaling {scaling['rope_type']!r} is not supported "
                "(supported: linear, llama3)"
            )
        context = int(hf.get("max_position_embeddings", 2048))
        layers = require(hf, "num_hidden_layers", model_type)
        # transformers' Mistral slides on every layer, whatever `layer_types` says.
        window = int(hf.get("sliding_window") or 0)
        return cls(
            vocab_size=require(hf, "vocab_size", model_type),
            hidden_size=hidden,
            num_hidden_layers=layers,
            context_window_size=context,
            prefill_chunk_size=min(context, 512),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            intermediate_size=require(hf, "intermediate_size", model_type),
            num_attention_heads=heads,
            num_key_value_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hidden // heads,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            attention_bias=bool(hf.get("attention_bias", False)),
            mlp_bias=bool(hf.get("mlp_bias", False)),
            sliding_window=window,
            sliding_layers=list(range(layers)) if window else [],
        )


class LlamaAttention(nn.Module):
    def __init__(self, config: LlamaConfig, dtype: str):
        self.config = config
        self.num_q_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        qkv_heads = self.num_q_heads + 2 * self.num_kv_heads
        self.qkv_proj = nn.Linear(
            config.hidden_size, qkv_heads * self.head_dim, bias=config.attention_bias, dtype=dtype
        )
        self.o_proj = nn.Linear(
            self.num_q_heads * self.head_dim,
            config.hidden_size,
            bias=config.attention_bias,
            dtype=dtype,
        )

    def forward(self, x: Tensor, kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        b, s, _ = x.shape
        qkv = op.reshape(self.qkv_proj(x), (b, s, -1, self.head_dim))
        sm_scale = kernel_sm_scale(self.config, layer_id, self.head_dim**-0.5)
        out = cached_attention(self.config, kv_cache, layer_id, qkv, self.num_q_heads, sm_scale)
        return self.o_proj(op.reshape(out, (b, s, self.num_q_heads * self.head_dim)))


class LlamaMLP(nn.Module):
    def __init__(self, config: LlamaConfig, dtype: str):
        self.intermediate_size = config.intermediate_size
        self.gate_up_proj = nn.Linear(
            config.hidden_size, 2 * config.intermediate_size, bias=config.mlp_bias, dtype=dtype
        )
        self.down_proj = nn.Linear(
            config.intermediate_size, config.hidden_size, bias=config.mlp_bias, dtype=dtype
        )

    def forward(self, x: Tensor) -> Tensor:
        gate, up = op.split(self.gate_up_proj(x), 2, axis=-1)
        if x.dtype == "float32":
            return self.down_proj(op.silu(gate) * up)
        # In float16 models the product overflows on real weights (SmolLM2 reaches 1e5 here):
        # keep it in float32. Quantized layers read a float32 input directly.
        act = op.silu(gate.astype("float32")) * up.astype("float32")
        if isinstance(self.down_proj, nn.Linear):
            act = act.astype(x.dtype)
        return self.down_proj(act)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: LlamaConfig, dtype: str):
        eps = config.rms_norm_eps
        self.input_layernorm = RMSNorm(config.hidden_size, eps, dtype)
        self.self_attn = LlamaAttention(config, dtype)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps, dtype)
        self.mlp = LlamaMLP(config, dtype)

    def forward(self, x: Tensor, kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), kv_cache, layer_id)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, config: LlamaConfig, dtype: str):
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, dtype=dtype)
        self.layers = nn.ModuleList(
            [LlamaDecoderLayer(config, dtype) for _ in range(config.num_hidden_layers)]
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)

    def forward(self, x: Tensor, kv_cache: PagedKVCache) -> Tensor:
        for layer_id, layer in enumerate(self.layers):
            x = layer(x, kv_cache, layer_id)
        return self.norm(x)


class LlamaForCausalLM(nn.Module):
    """The causal LM with the functions the runtime calls (see `base.export_spec`)."""

    def __init__(self, config: LlamaConfig, dtype: str = "float32"):
        self.config = config
        self.dtype = dtype
        self.model = LlamaModel(config, dtype)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False, dtype=dtype)

    def _logits(self, hidden: Tensor) -> Tensor:
        if self.config.tie_word_embeddings:
            logits = self.model.embed_tokens.lm_head_forward(hidden)
        else:
            logits = self.lm_head(hidden)
        return logits.astype("float32") if logits.dtype != "float32" else logits

    def embed(self, input_ids: Tensor) -> Tensor:
        return self.model.embed_tokens(input_ids)

    def prefill(self, input_embed: Tensor, logit_positions: Tensor, paged_kv_cache: PagedKVCache):
        hidden = self.model(input_embed, paged_kv_cache)
        hidden = op.take(hidden, logit_positions, axis=1)
        return self._logits(hidden), paged_kv_cache

    def decode(self, input_embed: Tensor, paged_kv_cache: PagedKVCache):
        return self._logits(self.model(input_embed, paged_kv_cache)), paged_kv_cache

    def create_paged_kv_cache(
        self,
        max_batch_size: tirx.Var,
        max_total_seq_len: tirx.Var,
        prefill_chunk_size: tirx.Var,
        page_size: tirx.Var,
        support_sliding_window: tirx.Var,
    ) -> PagedKVCache:
        c = self.config
        scaling = c.rope_scaling or {}
        # Linear scaling divides positions by the factor; the cache multiplies by `rope_scale`.
        rope_scale = 1.0 / scaling["factor"] if scaling.get("rope_type") == "linear" else 1.0
        fit_context_to_window(c)
        before = kernel_names()
        cache = TIRPagedKVCache(
            attn_kind="mha",
            max_batch_size=max_batch_size,
            max_total_seq_len=max_total_seq_len,
            prefill_chunk_size=prefill_chunk_size,
            page_size=page_size,
            support_sliding_window=support_sliding_window,
            layer_partition=rx.ShapeExpr([0, c.num_hidden_layers]),
            num_hidden_layers=c.num_hidden_layers,
            num_attention_heads=c.num_attention_heads,
            num_key_value_heads=c.num_key_value_heads,
            qk_head_dim=c.head_dim,
            v_head_dim=c.head_dim,
            mla_original_qk_head_dim=0,
            mla_original_v_head_dim=0,
            rope_mode=RopeMode.NORMAL,
            rope_scale=rope_scale,
            rope_theta=c.rope_theta,
            rope_scaling=scaling if scaling.get("rope_type") == "llama3" else {},
            rope_ext_factors=rx.prim_value(0),
            rotary_dim=c.head_dim,
            enable_disaggregation=False,
            dtype=c.kv_cache_dtype or self.dtype,
            target=Target.current(),
        )
        annotate_attention_kernels(before, c.sliding_window if kernels_apply_variant(c) else 0)
        return cache

    def get_default_spec(self) -> dict[str, Any]:
        return export_spec(self, self.config.hidden_size, self.dtype)


def hf_weight_map(config: LlamaConfig) -> dict[str, WeightSource]:
    """Our parameter names → the Hugging Face tensors they are made of."""
    mapping: dict[str, WeightSource] = {
        "model.embed_tokens.weight": WeightSource(("model.embed_tokens.weight",)),
        "model.norm.weight": WeightSource(("model.norm.weight",)),
    }
    if not config.tie_word_embeddings:
        mapping["lm_head.weight"] = WeightSource(("lm_head.weight",))
    suffixes = ["weight", "bias"] if config.attention_bias else ["weight"]
    mlp_suffixes = ["weight", "bias"] if config.mlp_bias else ["weight"]
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}"
        for norm in ("input_layernorm", "post_attention_layernorm"):
            mapping[f"{p}.{norm}.weight"] = WeightSource((f"{p}.{norm}.weight",))
        for s in suffixes:
            mapping[f"{p}.self_attn.qkv_proj.{s}"] = WeightSource(
                tuple(f"{p}.self_attn.{n}_proj.{s}" for n in "qkv"), concat_rows
            )
            mapping[f"{p}.self_attn.o_proj.{s}"] = WeightSource((f"{p}.self_attn.o_proj.{s}",))
        for s in mlp_suffixes:
            mapping[f"{p}.mlp.gate_up_proj.{s}"] = WeightSource(
                (f"{p}.mlp.gate_proj.{s}", f"{p}.mlp.up_proj.{s}"), concat_rows
            )
            mapping[f"{p}.mlp.down_proj.{s}"] = WeightSource((f"{p}.mlp.down_proj.{s}",))
    return mapping


CONFIG = LlamaConfig
MODEL = LlamaForCausalLM
