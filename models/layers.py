"""Building blocks the non-Llama architectures assemble: norms, activations, attention over the
paged KV cache, MLPs, a decoder layer with sequential or parallel residuals, and the causal LM
around them.

Our parameter names are the same for every architecture (`layers.{i}.self_attn.qkv_proj`, ...);
each model file maps the Hugging Face names onto them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from tvm import tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache, RopeMode

from .base import (
    Combine,
    ModelConfig,
    WeightSource,
    concat_rows,
    export_spec,
    require,
    rope_parameters,
)
from .head_norm import HeadNorm, normalize_heads
from .kv_cache import AttentionFacts, KVCacheSpec, generic_kv_cache
from .rotary import Rotary

# --- config ------------------------------------------------------------------------------------


@dataclasses.dataclass
class DecoderConfig(ModelConfig):
    """What every decoder-only transformer here needs beyond `ModelConfig`."""

    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    norm_eps: float
    hidden_act: str
    rope_theta: float
    rotary_dim: int  # 0: no rotary embedding (learned positions instead)
    rope_scaling: dict[str, Any] | None
    sliding_window: int  # a sliding layer's query at p sees keys at > p - window; 0: none
    sliding_layers: list[int]  # the layers that slide


def decoder_fields(
    hf: dict[str, Any],
    model_type: str,
    *,
    norm_eps_key: str = "rms_norm_eps",
    norm_eps_default: float = 1e-5,
    rotary_fraction: float = 1.0,
    scaling: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The `DecoderConfig` fields from a `config.json` that uses the common field names
    (`attribute_map` aliases such as GPT-2's `n_embd` are resolved by the caller)."""
    hidden = require(hf, "hidden_size", model_type)
    heads = require(hf, "num_attention_heads", model_type)
    head_dim = hf.get("head_dim") or hidden // heads
    theta, rope_scaling = rope_parameters(hf)
    check_rope_scaling(model_type, rope_scaling, scaling)
    context = int(hf.get("max_position_embeddings", 2048))
    if rope_scaling is not None and rope_scaling["rope_type"] in MODEL_SIDE_SCALINGS:
        rope_scaling = complete_yarn(rope_scaling, hf, context)
    return dict(
        vocab_size=require(hf, "vocab_size", model_type),
        hidden_size=hidden,
        num_hidden_layers=require(hf, "num_hidden_layers", model_type),
        context_window_size=context,
        prefill_chunk_size=min(context, 512),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        intermediate_size=hf.get("intermediate_size") or 4 * hidden,
        num_attention_heads=heads,
        num_key_value_heads=hf.get("num_key_value_heads") or heads,
        head_dim=head_dim,
        norm_eps=float(hf.get(norm_eps_key, norm_eps_default)),
        hidden_act=check_activation(model_type, hf.get("hidden_act", "silu")),
        rope_theta=theta,
        rotary_dim=int(head_dim * rotary_fraction),
        rope_scaling=rope_scaling,
        sliding_window=0,
        sliding_layers=[],
    )


def set_sliding_window(
    fields: dict[str, Any], hf: dict[str, Any], slides: Callable[[int], bool]
) -> None:
    """Fill `sliding_window` and `sliding_layers` of `decoder_fields`: `slides(i)` says whether
    layer i slides when `config.json` has no `layer_types` (transformers' default per model)."""
    fields["sliding_window"], fields["sliding_layers"] = sliding_layers(
        hf, fields["num_hidden_layers"], slides
    )


def sliding_layers(
    hf: dict[str, Any], num_layers: int, slides: Callable[[int], bool]
) -> tuple[int, list[int]]:
    """(window, ids of the layers that slide), or (0, []) when no layer does."""
    window = hf.get("sliding_window")
    if not window or hf.get("use_sliding_window") is False:
        return 0, []
    types = hf.get("layer_types")
    if types is not None:
        layers = [i for i, kind in enumerate(types) if kind == "sliding_attention"]
    else:
        layers = [i for i in range(num_layers) if slides(i)]
    return (int(window), layers) if layers else (0, [])


def cached_attention(
    config: ModelConfig,
    kv_cache: PagedKVCache,
    layer_id: int,
    qkv: Tensor,
    num_q_heads: int,
    sm_scale: float,
) -> Tensor:
    """Attention over the paged KV cache, whose K and V are in `config.kv_cache_dtype`: q, k
    and v enter cast to it (the cache takes one dtype), the output returns in the model's."""
    dtype = qkv.dtype
    kv_dtype = config.kv_cache_dtype or dtype
    if kv_dtype != dtype:
        qkv = qkv.astype(kv_dtype)
    out = kv_cache.attention_with_fused_qkv(layer_id, qkv, num_q_heads, sm_scale)
    return out.astype(dtype) if kv_dtype != dtype else out


# RoPE scalings the paged KV cache cannot apply: the attention layers rotate (`scaled_rotary`).
MODEL_SIDE_SCALINGS = ("yarn",)


def complete_yarn(scaling: dict[str, Any], hf: dict[str, Any], context: int) -> dict[str, Any]:
    """YaRN's scaling with the defaults transformers fills in written out: the original context
    (a top-level `original_max_position_embeddings` first, else `max_position_embeddings`) and
    the factor (their ratio when absent)."""
    out = dict(scaling)
    original = hf.get("original_max_position_embeddings") or out.get(
        "original_max_position_embeddings", context
    )
    out["original_max_position_embeddings"] = int(original)
    if out.get("factor") is None:
        out["factor"] = context / out["original_max_position_embeddings"]
    return out


def scaled_rotary(config: DecoderConfig) -> Rotary | None:
    """The model-side RoPE for a scaling the paged KV cache lacks (YaRN; the cache then runs
    without RoPE, see `CausalLM.kv_cache_spec`), else None: the cache rotates."""
    scaling = config.rope_scaling
    if scaling is None or scaling["rope_type"] not in MODEL_SIDE_SCALINGS:
        return None
    return Rotary(config.rope_theta, config.rotary_dim, scaling)


def check_rope_scaling(
    model_type: str, scaling: dict[str, Any] | None, supported: tuple[str, ...]
) -> None:
    if scaling is not None and scaling["rope_type"] not in supported:
        raise ValueError(
            f"{model_type}: rope scaling {scaling['rope_type']!r} is not supported "
            f"(supported: {', '.join(supported) or 'none'})"
        )


# --- embeddings, norms and activations ---------------------------------------------------------


class Embedding(nn.Embedding):
    """Token embedding that can also serve as the tied LM head."""

    def lm_head_forward(self, x: Tensor) -> Tensor:
        """Logits summed in float32, whatever the model's dtype."""
        return op.matmul(x, op.permute_dims(self.weight), out_dtype="float32")


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 whatever the model's dtype: real models carry activations in
    the tens of thousands (SmolLM2: 22,552), whose squares overflow float16."""

    def __init__(self, hidden_size: int, eps: float, dtype: str):
        self.weight = nn.Parameter((hidden_size,), dtype)
        self.eps = eps
        self.dtype = dtype

    def forward(self, x: Tensor) -> Tensor:
        if self.dtype == "float32":
            return op.rms_norm(x, self.weight, axes=-1, epsilon=self.eps)
        out = op.rms_norm(
            x.astype("float32"), self.weight.astype("float32"), axes=-1, epsilon=self.eps
        )
        return out.astype(self.dtype)


class LayerNorm(nn.Module):
    """LayerNorm computed in float32 whatever the model's dtype (see `RMSNorm`)."""

    def __init__(self, hidden_size: int, eps: float, dtype: str, bias: bool = True):
        self.weight = nn.Parameter((hidden_size,), dtype)
        self.bias = nn.Parameter((hidden_size,), dtype) if bias else None
        self.hidden_size = hidden_size
        self.eps = eps
        self.dtype = dtype

    def forward(self, x: Tensor) -> Tensor:
        if self.dtype == "float32":
            return op.layer_norm(x, self.hidden_size, self.weight, self.bias, eps=self.eps)
        bias = self.bias.astype("float32") if self.bias is not None else None
        out = op.layer_norm(
            x.astype("float32"), self.hidden_size, self.weight.astype("float32"), bias, self.eps
        )
        return out.astype(self.dtype)


def _gelu_tanh(x: Tensor) -> Tensor:
    return op.gelu(x, approximate="tanh")


# Hugging Face `hidden_act` names → the function.
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "silu": op.silu,
    "swish": op.silu,
    "gelu": op.gelu,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "relu": op.relu,
}


def check_activation(model_type: str, name: str) -> str:
    if name not in ACTIVATIONS:
        raise ValueError(f"{model_type}: hidden_act {name!r} is not supported")
    return name


# --- attention and MLP -------------------------------------------------------------------------


class Attention(nn.Module):
    """Fused QKV projection (rows: all query heads, then key heads, then value heads), attention
    in the paged KV cache (which applies RoPE), output projection. `qk_norms` normalise queries
    and keys before RoPE (`head_norm.py`); `rotary` applies a RoPE variant the cache lacks (the
    cache then runs with `RopeMode.NONE`). Without one, a layer rotates in the model when the
    config's scaling is one the cache lacks (`scaled_rotary`), so a model that accepts YaRN needs
    nothing more; a layer that attends without RoPE (SmolLM3's NoPE layers) says `rotates=False`."""

    def __init__(
        self,
        config: DecoderConfig,
        dtype: str,
        qkv_bias: bool = False,
        o_bias: bool = False,
        qk_norms: tuple[HeadNorm, HeadNorm] | None = None,
        sm_scale: float | None = None,
        rotary: nn.Module | None = None,
        rotates: bool = True,
    ):
        if rotary is None and rotates:
            rotary = scaled_rotary(config)
        self.rotary = rotary
        self.config = config
        self.sm_scale = sm_scale if sm_scale is not None else config.head_dim**-0.5
        self.num_q_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        qkv_heads = self.num_q_heads + 2 * self.num_kv_heads
        self.qkv_proj = nn.Linear(
            config.hidden_size, qkv_heads * self.head_dim, bias=qkv_bias, dtype=dtype
        )
        self.o_proj = nn.Linear(
            self.num_q_heads * self.head_dim, config.hidden_size, bias=o_bias, dtype=dtype
        )
        self.q_norm, self.k_norm = qk_norms if qk_norms is not None else (None, None)

    def forward(self, x: Tensor, kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        b, s, _ = x.shape
        qkv = op.reshape(self.qkv_proj(x), (b, s, -1, self.head_dim))
        if self.q_norm is not None:
            qkv = normalize_heads(qkv, self.q_norm, 0, self.num_q_heads)
            qkv = normalize_heads(qkv, self.k_norm, self.num_q_heads, self.num_kv_heads)
        if self.rotary is not None:
            positions = kv_cache.get_query_positions(b * s)
            qkv = self.rotary(qkv, positions, self.num_q_heads + self.num_kv_heads)
        out = cached_attention(
            self.config, kv_cache, layer_id, qkv, self.num_q_heads, self.sm_scale
        )
        return self.o_proj(op.reshape(out, (b, s, self.num_q_heads * self.head_dim)))


class MLP(nn.Module):
    """`down(act(gate(x)) * up(x))` when `gated` (gate and up fused), else `down(act(up(x)))`."""

    def __init__(self, config: DecoderConfig, dtype: str, gated: bool, bias: bool = False):
        self.gated = gated
        self.act = ACTIVATIONS[config.hidden_act]
        width = (2 if gated else 1) * config.intermediate_size
        self.up_proj = nn.Linear(config.hidden_size, width, bias=bias, dtype=dtype)
        self.down_proj = nn.Linear(
            config.intermediate_size, config.hidden_size, bias=bias, dtype=dtype
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.up_proj(x)
        # In float16 models the activation overflows on real weights: keep it in float32.
        # Quantized layers read a float32 input directly.
        if h.dtype != "float32":
            h = h.astype("float32")
        if self.gated:
            gate, up = op.split(h, 2, axis=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        if isinstance(self.down_proj, nn.Linear) and x.dtype != "float32":
            h = h.astype(x.dtype)
        return self.down_proj(h)


class DecoderLayer(nn.Module):
    """One transformer block.

    - sequential: `x += attn(norm1(x)); x += mlp(norm2(x))`
    - parallel, one norm (GPT-J, Phi): `h = norm1(x); x + attn(h) + mlp(h)`
    - parallel, two norms (GPT-NeoX, Falcon's new architecture): `x + attn(norm1(x)) +
      mlp(norm2(x))`
    """

    def __init__(
        self,
        attn: Attention,
        mlp: MLP,
        input_norm: nn.Module,
        post_attention_norm: nn.Module | None,
        parallel: bool = False,
        residual_scale: float | None = None,
    ):
        self.input_layernorm = input_norm
        self.self_attn = attn
        self.post_attention_layernorm = post_attention_norm
        self.mlp = mlp
        self.parallel = parallel
        self.residual_scale = residual_scale  # multiplies each branch before its add (Granite)

    def _scaled(self, branch: Tensor) -> Tensor:
        if self.residual_scale is None:
            return branch
        return branch * np.array(self.residual_scale, dtype=branch.dtype).item()

    def forward(self, x: Tensor, kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        h = self.input_layernorm(x)
        attn = self._scaled(self.self_attn(h, kv_cache, layer_id))
        if self.parallel:
            if self.post_attention_layernorm is not None:
                h = self.post_attention_layernorm(x)
            return x + attn + self._scaled(self.mlp(h))
        x = x + attn
        return x + self._scaled(self.mlp(self.post_attention_layernorm(x)))


# --- the causal LM -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LMOptions:
    """How an architecture's causal LM differs from the plain one."""

    learned_positions: int = 0  # rows of a learned position embedding (GPT-2), 0 for none
    embed_scale: float | None = None  # multiply token embeddings (Gemma: sqrt(hidden))
    logits_divisor: float | None = None  # divide the logits (Granite's `logits_scaling`)
    lm_head_bias: bool = False
    rope_mode: RopeMode = RopeMode.NORMAL


class CausalLM(nn.Module):
    """embed → layers → final norm → LM head, with the functions the runtime calls (see
    `base.export_spec`)."""

    def __init__(
        self,
        config: DecoderConfig,
        dtype: str,
        layers: list[nn.Module],
        final_norm: nn.Module,
        options: LMOptions = LMOptions(),
    ):
        self.config = config
        self.dtype = dtype
        self.options = options
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, dtype=dtype)
        if options.learned_positions:
            self.embed_positions = nn.Embedding(
                options.learned_positions, config.hidden_size, dtype=dtype
            )
        self.layers = nn.ModuleList(layers)
        self.norm = final_norm
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(
                config.hidden_size, config.vocab_size, bias=options.lm_head_bias, dtype=dtype
            )

    def _forward(self, x: Tensor, kv_cache: PagedKVCache) -> Tensor:
        if self.options.learned_positions:
            b, s, d = x.shape
            positions = kv_cache.get_query_positions(b * s)
            x = x + op.reshape(self.embed_positions(positions), (b, s, d))
        for layer_id, layer in enumerate(self.layers):
            x = layer(x, kv_cache, layer_id)
        return self.norm(x)

    def _logits(self, hidden: Tensor) -> Tensor:
        if self.config.tie_word_embeddings:
            logits = self.embed_tokens.lm_head_forward(hidden)
        else:
            logits = self.lm_head(hidden)
        logits = logits.astype("float32") if logits.dtype != "float32" else logits
        if self.options.logits_divisor is not None:
            logits = logits / np.float32(self.options.logits_divisor).item()
        return logits

    def embed(self, input_ids: Tensor) -> Tensor:
        x = self.embed_tokens(input_ids)
        if self.options.embed_scale is not None:
            # Hugging Face rounds the scale to the model's dtype first.
            x = x * np.array(self.options.embed_scale, dtype=self.dtype).item()
        return x

    def prefill(self, input_embed: Tensor, logit_positions: Tensor, paged_kv_cache: PagedKVCache):
        hidden = op.take(self._forward(input_embed, paged_kv_cache), logit_positions, axis=1)
        return self._logits(hidden), paged_kv_cache

    def decode(self, input_embed: Tensor, paged_kv_cache: PagedKVCache):
        return self._logits(self._forward(input_embed, paged_kv_cache)), paged_kv_cache

    def create_paged_kv_cache(
        self,
        max_batch_size: tirx.Var,
        max_total_seq_len: tirx.Var,
        prefill_chunk_size: tirx.Var,
        page_size: tirx.Var,
        support_sliding_window: tirx.Var,
    ) -> PagedKVCache:
        dims = (max_batch_size, max_total_seq_len, prefill_chunk_size, page_size)
        return generic_kv_cache(self.kv_cache_spec(), *dims, support_sliding_window)

    def kv_cache_spec(self) -> KVCacheSpec:
        c = self.config
        scaling = dict(c.rope_scaling or {})
        rope_type = scaling.get("rope_type")
        rope_mode = self.options.rope_mode if c.rotary_dim else RopeMode.NONE
        if rope_type in MODEL_SIDE_SCALINGS:  # the attention layers rotate (`scaled_rotary`)
            rope_mode = RopeMode.NONE
        if rope_mode == RopeMode.NONE:  # no rotary, or the model applies its own
            scaling, rope_type = {}, None
        return KVCacheSpec(
            num_hidden_layers=c.num_hidden_layers,
            num_attention_heads=c.num_attention_heads,
            num_key_value_heads=c.num_key_value_heads,
            head_dim=c.head_dim,
            dtype=c.kv_cache_dtype or self.dtype,
            rope_mode=int(rope_mode),
            rope_theta=c.rope_theta,
            # Linear scaling divides positions by the factor; the cache multiplies by the scale.
            rope_scale=1.0 / scaling["factor"] if rope_type == "linear" else 1.0,
            rope_scaling=scaling if rope_type == "llama3" else {},
            rotary_dim=c.rotary_dim or c.head_dim,
            attention=self.attention_facts(),
        )

    def attention_facts(self) -> AttentionFacts:
        """The attention variant, as facts (see `models/kv_cache.py`)."""
        c = self.config
        return AttentionFacts(
            sliding_window=c.sliding_window,
            sliding_layers=tuple(c.sliding_layers) if c.sliding_window else (),
            softcap=float(self.attention_softcap() or 0.0),
            alibi=tuple(self.attention_alibi() or ()),
        )

    def attention_softcap(self) -> float | None:
        """The cap of attention scores, if the architecture has one (Gemma 2)."""
        return None

    def attention_alibi(self) -> list[float] | None:
        """ALiBi slopes, one per query head, if the architecture adds them (Falcon-RW)."""
        return None

    def get_default_spec(self) -> dict[str, Any]:
        return export_spec(self, self.config.hidden_size, self.dtype)


# --- weight maps -------------------------------------------------------------------------------


def same(name: str) -> WeightSource:
    """Our parameter is the Hugging Face tensor `name` as it is."""
    return WeightSource((name,))


def fused(*names: str) -> WeightSource:
    """Our parameter stacks these Hugging Face tensors along the output axis (q/k/v, gate/up)."""
    return WeightSource(names, concat_rows)


def transposed(name: str) -> WeightSource:
    """GPT-2's `Conv1D` stores `[in, out]`; our Linear wants `[out, in]`."""
    return WeightSource((name,), lambda arrays: np.ascontiguousarray(arrays[0].T))


def llama_style_weights(
    config: DecoderConfig,
    qkv_bias: bool = False,
    o_bias: bool = False,
    norm_bias: bool = False,
    qk_norm: bool = False,
    norm: Callable[[str], WeightSource] = same,
    mlp_bias: bool = False,
) -> dict[str, WeightSource]:
    """The weight map of a model laid out as Hugging Face's Llama is (`model.layers.{i}.self_attn
    .q_proj`, `mlp.gate_proj`, ...). `norm` builds the source of every norm weight."""
    norm_suffixes = ("weight", "bias") if norm_bias else ("weight",)
    mapping = {"embed_tokens.weight": same("model.embed_tokens.weight")}
    for s in norm_suffixes:
        mapping[f"norm.{s}"] = (
            norm("model.norm.weight") if s == "weight" else same("model.norm.bias")
        )
    if not config.tie_word_embeddings:
        mapping["lm_head.weight"] = same("lm_head.weight")
    for i in range(config.num_hidden_layers):
        ours, hf = f"layers.{i}", f"model.layers.{i}"
        for name in ("input_layernorm", "post_attention_layernorm"):
            mapping[f"{ours}.{name}.weight"] = norm(f"{hf}.{name}.weight")
            if norm_bias:
                mapping[f"{ours}.{name}.bias"] = same(f"{hf}.{name}.bias")
        for s in ("weight", "bias") if qkv_bias else ("weight",):
            mapping[f"{ours}.self_attn.qkv_proj.{s}"] = fused(
                *(f"{hf}.self_attn.{n}_proj.{s}" for n in "qkv")
            )
        for s in ("weight", "bias") if o_bias else ("weight",):
            mapping[f"{ours}.self_attn.o_proj.{s}"] = same(f"{hf}.self_attn.o_proj.{s}")
        if qk_norm:
            for n in ("q_norm", "k_norm"):
                mapping[f"{ours}.self_attn.{n}.weight"] = norm(f"{hf}.self_attn.{n}.weight")
        for s in ("weight", "bias") if mlp_bias else ("weight",):
            mapping[f"{ours}.mlp.up_proj.{s}"] = fused(
                f"{hf}.mlp.gate_proj.{s}", f"{hf}.mlp.up_proj.{s}"
            )
            mapping[f"{ours}.mlp.down_proj.{s}"] = same(f"{hf}.mlp.down_proj.{s}")
    return mapping


def partial_rotary_factor(hf: dict[str, Any], default: float = 1.0) -> float:
    """The fraction of each head RoPE rotates (transformers 5 keeps it in `rope_parameters`)."""
    value = hf.get("partial_rotary_factor")
    if value is None:
        value = (hf.get("rope_parameters") or {}).get("partial_rotary_factor", default)
    return float(value)


def per_head_to_fused(num_heads: int) -> Combine:
    """QKV rows laid out `[head][q|k|v][dim]` (GPT-NeoX, GPT-BigCode with MHA) → ours,
    `[q|k|v][head][dim]`."""

    def combine(arrays: Sequence[np.ndarray]) -> np.ndarray:
        (a,) = arrays
        grouped = a.reshape(num_heads, 3, -1, *a.shape[1:])
        return np.ascontiguousarray(grouped.swapaxes(0, 1)).reshape(a.shape)

    return combine
