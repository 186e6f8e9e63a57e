"""Each GGUF architecture in Hugging Face terms, as llama.cpp's converter (`convert_hf_to_gguf.py`)
writes it: which `config.json` fields its metadata holds, and every tensor's Hugging Face name
and layout. Import (`checkpoint.py`) and export (`export.py`) read the same tables.

Layouts the converter changes: Llama's Q/K rows (rotary pairs interleaved per head), Falcon's
fused QKV (grouped per KV head → all Q, all K, all V), GPT-2's `Conv1D` weights (transposed to
`[out, in]`) and Gemma 2's RMSNorm weights (stored as `1 + w`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mlc.models import get_architecture
from mlc.models.base import ModelConfig, rope_parameters
from mlc.models.falcon import FalconConfig, grouped_to_fused
from mlc.models.gemma3 import Gemma3Config
from mlc.models.layers import complete_yarn, partial_rotary_factor
from mlc.models.smollm3 import SmolLM3Config

from .reader import GGUFError, GGUFFile
from .rope_factors import LLAMA3_ORIGINAL_CONTEXT, llama3_rope_factors, llama3_scaling

Transform = Callable[[np.ndarray], np.ndarray]


def keep(array: np.ndarray) -> np.ndarray:
    return array


def transpose(array: np.ndarray) -> np.ndarray:
    """GPT-2's `Conv1D` `[in, out]` ↔ `[out, in]` (a bias, 1-D, is left as it is)."""
    return np.ascontiguousarray(array.T)


def interleave_rotary(num_heads: int) -> Transform:
    """Hugging Face Q/K rows (each head's first half, then second half) → llama.cpp's rotary
    pairs side by side."""

    def permute(w: np.ndarray) -> np.ndarray:
        head_dim = w.shape[0] // num_heads
        return w.reshape(num_heads, 2, head_dim // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    return permute


def deinterleave_rotary(num_heads: int) -> Transform:
    """The inverse of `interleave_rotary`."""

    def permute(w: np.ndarray) -> np.ndarray:
        head_dim = w.shape[0] // num_heads
        return w.reshape(num_heads, head_dim // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    return permute


def falcon_grouped(num_heads: int, num_kv_heads: int, head_dim: int) -> Transform:
    """llama.cpp's Falcon QKV rows (all Q, all K, all V) → Hugging Face's, grouped per KV head
    (`[group][q * ratio, k, v][dim]`; one group for multi-query)."""
    ratio = num_heads // num_kv_heads

    def regroup(w: np.ndarray) -> np.ndarray:
        rest = w.shape[1:]
        q, k, v = np.split(w, [num_heads * head_dim, (num_heads + num_kv_heads) * head_dim])
        parts = (
            q.reshape(num_kv_heads, ratio, head_dim, *rest),
            k.reshape(num_kv_heads, 1, head_dim, *rest),
            v.reshape(num_kv_heads, 1, head_dim, *rest),
        )
        return np.concatenate(parts, axis=1).reshape(w.shape)

    return regroup


def plus(offset: float) -> Transform:
    return lambda w: w.astype(np.float32) + np.float32(offset)


@dataclasses.dataclass(frozen=True)
class TensorRule:
    """One GGUF tensor as one Hugging Face tensor (names without `.weight` / `.bias`; `{i}` is
    the layer), and the layout changes between them (`to_hf` undoes `to_gguf`)."""

    gguf: str
    hf: str
    to_hf: Transform = keep
    to_gguf: Transform = keep


def per_layer(rules: list[TensorRule], num_layers: int) -> list[TensorRule]:
    return [
        dataclasses.replace(r, gguf=r.gguf.format(i=i), hf=r.hf.format(i=i))
        for i in range(num_layers)
        for r in rules
    ]


class Metadata:
    """A GGUF file's metadata seen from one architecture: `need("block_count")` reads
    `{arch}.block_count`."""

    def __init__(self, file: GGUFFile, arch: str):
        self.file, self.arch = file, arch

    def need(self, key: str) -> Any:
        full = f"{self.arch}.{key}"
        if full not in self.file.metadata:
            raise GGUFError(f"{self.file.path}: metadata lacks {full}")
        return self.file.metadata[full]

    def get(self, key: str, default: Any = None) -> Any:
        return self.file.metadata.get(f"{self.arch}.{key}", default)

    def has(self, tensor: str) -> bool:
        return tensor in self.file.tensors

    def rows(self, tensor: str) -> int:
        if tensor not in self.file.tensors:
            raise GGUFError(f"{self.file.path} has no tensor {tensor}")
        return self.file.tensors[tensor].shape[0]

    def token_ids(self) -> dict[str, Any]:
        meta = self.file.metadata
        return {
            "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
            "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        }

    def fail(self, message: str) -> GGUFError:
        return GGUFError(f"{self.file.path}: {message}")


@dataclasses.dataclass(frozen=True)
class GGUFArchitecture:
    """`general.architecture` `name` and the Hugging Face `model_types` it holds (the first is
    the one read back)."""

    name: str
    model_types: tuple[str, ...]
    config: Callable[[Metadata], dict[str, Any]]  # GGUF metadata → config.json
    metadata: Callable[[dict[str, Any]], dict[str, Any]]  # config.json → `{arch}.*` keys
    tensors: Callable[[ModelConfig], list[TensorRule]]
    # Tensors that are configuration (Phi-3's LongRoPE factors), and how to write them.
    config_tensors: tuple[str, ...] = ()
    extra_tensors: Callable[[dict[str, Any]], dict[str, np.ndarray]] = lambda hf: {}

    def tensor_names(self, hf_config: dict[str, Any]) -> Iterator[tuple[str, str, TensorRule]]:
        """Every (GGUF name, Hugging Face name, rule) the model may have, weights and biases."""
        config = get_architecture(hf_config).CONFIG.from_hf(hf_config)
        for rule in self.tensors(config):
            for suffix in ("weight", "bias"):
                yield f"{rule.gguf}.{suffix}", f"{rule.hf}.{suffix}", rule


# --- config.json fields shared by the Llama-like architectures --------------------------------


def _base_config(m: Metadata, model_type: str) -> dict[str, Any]:
    heads = int(m.need("attention.head_count"))
    return {
        "model_type": model_type,
        "vocab_size": m.rows("token_embd.weight"),
        "hidden_size": int(m.need("embedding_length")),
        "intermediate_size": int(m.need("feed_forward_length")),
        "num_hidden_layers": int(m.need("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(m.get("attention.head_count_kv", heads)),
        "max_position_embeddings": int(m.get("context_length", 2048)),
        "rope_theta": float(m.get("rope.freq_base", 10000.0)),
        "tie_word_embeddings": not m.has("output.weight"),
        **m.token_ids(),
    }


def _head_dim(m: Metadata, config: dict[str, Any]) -> int:
    return int(
        m.get("attention.key_length", config["hidden_size"] // config["num_attention_heads"])
    )


def _rotary_dims(m: Metadata, head_dim: int) -> int:
    return int(m.get("rope.dimension_count", head_dim))


def _base_metadata(hf: dict[str, Any]) -> dict[str, Any]:
    """What the converter's `TextModel.set_gguf_parameters` writes from the common fields
    (the norm epsilon aside)."""
    theta, _ = rope_parameters(hf)
    heads = hf["num_attention_heads"]
    out = {
        "block_count": hf["num_hidden_layers"],
        "context_length": hf["max_position_embeddings"],
        "embedding_length": hf["hidden_size"],
        "feed_forward_length": hf["intermediate_size"],
        "attention.head_count": heads,
        "attention.head_count_kv": hf.get("num_key_value_heads") or heads,
        "rope.freq_base": theta,
    }
    if hf.get("head_dim"):
        out["attention.key_length"] = out["attention.value_length"] = hf["head_dim"]
    return out


def _rms_metadata(hf: dict[str, Any]) -> dict[str, Any]:
    return {**_base_metadata(hf), "attention.layer_norm_rms_epsilon": hf["rms_norm_eps"]}


def _refuse_lost(model_type: str, what: str, value: Any, kept: Any) -> None:
    """The converter does not write `what`; llama.cpp then assumes `kept`."""
    if value != kept:
        raise ValueError(
            f"{model_type}: llama.cpp's GGUF has no field for {what} ({value}; llama.cpp would "
            f"use {kept}), so this model cannot be exported to GGUF faithfully"
        )


def _llama_like_tensors(
    q_fix: tuple[Transform, Transform] = (keep, keep),
    k_fix: tuple[Transform, Transform] = (keep, keep),
) -> list[TensorRule]:
    """Hugging Face's Llama layout; `q_fix` / `k_fix` are the (to_hf, to_gguf) of Q and K."""
    return [
        TensorRule("blk.{i}.attn_norm", "model.layers.{i}.input_layernorm"),
        TensorRule("blk.{i}.attn_q", "model.layers.{i}.self_attn.q_proj", *q_fix),
        TensorRule("blk.{i}.attn_k", "model.layers.{i}.self_attn.k_proj", *k_fix),
        TensorRule("blk.{i}.attn_v", "model.layers.{i}.self_attn.v_proj"),
        TensorRule("blk.{i}.attn_output", "model.layers.{i}.self_attn.o_proj"),
        TensorRule("blk.{i}.ffn_norm", "model.layers.{i}.post_attention_layernorm"),
        TensorRule("blk.{i}.ffn_gate", "model.layers.{i}.mlp.gate_proj"),
        TensorRule("blk.{i}.ffn_up", "model.layers.{i}.mlp.up_proj"),
        TensorRule("blk.{i}.ffn_down", "model.layers.{i}.mlp.down_proj"),
    ]


def _outer(embed: str, norm: str, head: str | None = "lm_head") -> list[TensorRule]:
    rules = [TensorRule("token_embd", embed), TensorRule("output_norm", norm)]
    return rules + ([TensorRule("output", head)] if head else [])


def _layout(c: ModelConfig, outer: list[TensorRule], layer: list[TensorRule]) -> list[TensorRule]:
    """The whole model: `outer` once, `layer` for every layer."""
    return [*outer, *per_layer(layer, c.num_hidden_layers)]


# YaRN's optional `rope.scaling.*` keys and the `rope_scaling` fields llama.cpp's converter
# writes into them.
_YARN_KEYS = (
    ("yarn_beta_fast", "beta_fast"),
    ("yarn_beta_slow", "beta_slow"),
    ("yarn_attn_factor", "attention_factor"),
)


def _rope_scaling(m: Metadata) -> dict[str, Any]:
    """`rope_scaling` as the converter's `TextModel` writes it (models refuse kinds they lack)."""
    kind = m.get("rope.scaling.type", "none")
    if kind == "none":
        return {}
    scaling = {"rope_type": kind, "factor": float(m.need("rope.scaling.factor"))}
    if kind == "yarn":
        scaling["original_max_position_embeddings"] = int(
            m.need("rope.scaling.original_context_length")
        )
        for key, field in _YARN_KEYS:
            if (value := m.get(f"rope.scaling.{key}")) is not None:
                scaling[field] = float(value)
        # llama.cpp's extrapolation mix (-1: its default, 1 for YaRN) and DeepSeek's log
        # multiplier have no `transformers` equivalent for these architectures.
        ext = m.get("rope.scaling.yarn_ext_factor")
        if ext is not None and float(ext) not in (-1.0, 1.0):
            raise m.fail(f"{m.arch}.rope.scaling.yarn_ext_factor {ext} (only 1) is not supported")
        if m.get("rope.scaling.yarn_log_multiplier"):
            raise m.fail(f"{m.arch}.rope.scaling.yarn_log_multiplier is not supported")
    return {"rope_scaling": scaling}


def _rope_scaling_metadata(hf: dict[str, Any], llama3: bool = False) -> dict[str, Any]:
    """`rope.scaling.*` keys; `llama3`: the architecture writes Llama 3's scaling as the
    `rope_freqs` tensor instead (`_llama3_factor_tensors`)."""
    _, scaling = rope_parameters(hf)
    if scaling is None or (llama3 and scaling["rope_type"] == "llama3"):
        return {}
    kind = scaling["rope_type"]
    if kind == "yarn":
        return _yarn_metadata(hf, scaling)
    if kind != "linear":
        raise ValueError(f"GGUF export of {kind!r} RoPE scaling is not supported")
    return {"rope.scaling.type": "linear", "rope.scaling.factor": float(scaling["factor"])}


def _yarn_metadata(hf: dict[str, Any], scaling: dict[str, Any]) -> dict[str, Any]:
    """YaRN's keys as llama.cpp's converter writes them; what llama.cpp cannot hold (no
    truncation of the ramp's ends, DeepSeek's `mscale`) is refused."""
    if scaling.get("truncate", True) is False or scaling.get("mscale") is not None:
        raise ValueError(
            "GGUF export of YaRN RoPE scaling with `truncate: false` or `mscale` is not "
            "supported: llama.cpp has no key for them"
        )
    scaling = complete_yarn(scaling, hf, int(hf.get("max_position_embeddings", 2048)))
    out = {
        "rope.scaling.type": "yarn",
        "rope.scaling.factor": float(scaling["factor"]),
        "rope.scaling.original_context_length": scaling["original_max_position_embeddings"],
    }
    for key, field in _YARN_KEYS:
        if scaling.get(field) is not None:
            out[f"rope.scaling.{key}"] = float(scaling[field])
    return out


# --- llama (and Mistral, which the converter writes as llama) ----------------------------------


_ROPE_FREQS = "rope_freqs.weight"  # Llama 3.1/3.2's RoPE scaling, as per-frequency divisors


def _llama_config(m: Metadata) -> dict[str, Any]:
    config = _base_config(m, "llama")
    config["head_dim"] = _head_dim(m, config)
    if _rotary_dims(m, config["head_dim"]) != config["head_dim"]:
        raise m.fail("llama: RoPE over part of each head is not supported")
    config["rms_norm_eps"] = float(m.get("attention.layer_norm_rms_epsilon", 1e-5))
    config["attention_bias"] = m.has("blk.0.attn_q.bias")
    config["mlp_bias"] = m.has("blk.0.ffn_up.bias")
    if m.get("expert_count"):  # Mixtral: the converter writes it as llama with experts
        config = {**config, "model_type": "mixtral", **_moe_config(m, True, None)}
    if m.has(_ROPE_FREQS):
        context = int(m.get("rope.scaling.original_context_length", LLAMA3_ORIGINAL_CONTEXT))
        factors = m.file.get(_ROPE_FREQS)
        try:
            scaling = llama3_scaling(factors, config["rope_theta"], config["head_dim"], context)
        except ValueError as err:
            raise m.fail(f"{_ROPE_FREQS}: {err}") from err
        return {**config, "rope_scaling": scaling}
    return {**config, **_rope_scaling(m)}


def _llama_metadata(hf: dict[str, Any]) -> dict[str, Any]:
    experts = hf.get("model_type") == "mixtral"
    return {
        **_rms_metadata(hf),
        **_rope_scaling_metadata(hf, llama3=True),
        "vocab_size": hf["vocab_size"],
        "rope.dimension_count": _llama_head_dim(hf),
        **(_moe_metadata(hf, "mixtral", True, None) if experts else {}),
    }


def _llama_head_dim(hf: dict[str, Any]) -> int:
    return hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]


def _llama3_factor_tensors(hf: dict[str, Any]) -> dict[str, np.ndarray]:
    """Llama 3's `rope_scaling` as the `rope_freqs` divisors llama.cpp's converter writes."""
    theta, scaling = rope_parameters(hf)
    if scaling is None or scaling["rope_type"] != "llama3":
        return {}
    return {_ROPE_FREQS: llama3_rope_factors(theta, _llama_head_dim(hf), scaling)}


def _llama_tensors(c: ModelConfig) -> list[TensorRule]:
    """Llama's layout; Mixtral's experts (`block_sparse_moe`, w1 gate, w3 up, w2 down) in place
    of the dense MLP."""
    q = (deinterleave_rotary(c.num_attention_heads), interleave_rotary(c.num_attention_heads))
    k = (deinterleave_rotary(c.num_key_value_heads), interleave_rotary(c.num_key_value_heads))
    layer = _llama_like_tensors(q, k)
    if getattr(c, "num_experts", 0):
        experts = _expert_tensors(c.num_experts, "block_sparse_moe", ("w1", "w3", "w2"))
        layer = [*_without_dense_mlp(layer), *experts]
    return _layout(c, _outer("model.embed_tokens", "model.norm"), layer)


# --- granite: Llama's layout and four multipliers ----------------------------------------------

# (GGUF key, config.json field), as llama.cpp's converter writes them.
_GRANITE_SCALES = (
    ("embedding_scale", "embedding_multiplier"),
    ("residual_scale", "residual_multiplier"),
    ("attention.scale", "attention_multiplier"),
    ("logit_scale", "logits_scaling"),
)


def _granite_config(m: Metadata) -> dict[str, Any]:
    config = {**_llama_config(m), "model_type": "granite"}
    for key, field in _GRANITE_SCALES:
        config[field] = float(m.need(key))
    return config


def _granite_metadata(hf: dict[str, Any]) -> dict[str, Any]:
    scales = {key: float(hf.get(field, 1.0)) for key, field in _GRANITE_SCALES}
    return {**_llama_metadata(hf), **scales}


# --- qwen2, qwen3 ------------------------------------------------------------------------------


def _qwen_config(model_type: str) -> Callable[[Metadata], dict[str, Any]]:
    def config(m: Metadata) -> dict[str, Any]:
        out = _base_config(m, model_type)
        out["head_dim"] = _head_dim(m, out)
        out["rms_norm_eps"] = float(m.get("attention.layer_norm_rms_epsilon", 1e-6))
        if model_type == "qwen3":  # Qwen2's q/k/v biases are always there
            out["attention_bias"] = m.has("blk.0.attn_q.bias")
        return {**out, **_rope_scaling(m)}

    return config


def _qwen_metadata(hf: dict[str, Any]) -> dict[str, Any]:
    return {**_rms_metadata(hf), **_rope_scaling_metadata(hf)}


def _unpermuted_llama_tensors(c: ModelConfig) -> list[TensorRule]:
    return _layout(c, _outer("model.embed_tokens", "model.norm"), _llama_like_tensors())


def _qk_norm_tensors(fix: tuple[Transform, Transform] = (keep, keep)) -> list[TensorRule]:
    """The query and key norms (Qwen3, Gemma 3, OLMo 2); `fix` is their (to_hf, to_gguf)."""
    return [
        TensorRule(f"blk.{{i}}.attn_{n}_norm", f"model.layers.{{i}}.self_attn.{n}_norm", *fix)
        for n in "qk"
    ]


def _qwen3_tensors(c: ModelConfig) -> list[TensorRule]:
    layer = [*_llama_like_tensors(), *_qk_norm_tensors()]
    return _layout(c, _outer("model.embed_tokens", "model.norm"), layer)


# --- qwen3moe: Qwen3's attention, a mixture of experts in every layer ---------------------------


# Mixtures of experts: llama.cpp puts experts in every layer and fixes per architecture in code
# whether the top k is renormalised (qwen3moe, llama: yes; qwen2moe, olmoe: no).


def _moe_config(m: Metadata, renormalised: bool, width_key: str | None) -> dict[str, Any]:
    """The expert fields of `config.json`; `width_key`: the metadata key of the experts' width
    where it is not `feed_forward_length`."""
    out = {
        "num_experts": int(m.need("expert_count")),
        "num_experts_per_tok": int(m.need("expert_used_count")),
        "norm_topk_prob": renormalised,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
    }
    if width_key:
        out["moe_intermediate_size"] = int(m.need(width_key))
    return out


def _moe_metadata(
    hf: dict[str, Any], model_type: str, renormalised: bool, width_key: str | None
) -> dict[str, Any]:
    """The `expert_*` keys; refuses what llama.cpp's code fixes otherwise (experts in every
    layer, the top k renormalised or not)."""
    _refuse_lost(model_type, "dense layers", list(hf.get("mlp_only_layers") or []), [])
    _refuse_lost(model_type, "decoder_sparse_step", int(hf.get("decoder_sparse_step") or 1), 1)
    normalised = renormalised if model_type == "mixtral" else bool(hf.get("norm_topk_prob"))
    _refuse_lost(model_type, "norm_topk_prob", normalised, renormalised)
    out = {
        "expert_count": int(hf.get("num_experts") or hf["num_local_experts"]),
        "expert_used_count": int(hf["num_experts_per_tok"]),
    }
    if width_key:
        out[width_key] = int(hf["moe_intermediate_size"])
    return out


def _expert_tensors(
    num_experts: int,
    mlp: str = "mlp",
    parts: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj"),
) -> list[TensorRule]:
    """The router and the experts' `[experts, out, in]` stacks (`ffn_{gate,up,down}_exps`),
    one Hugging Face tensor per expert (a row of the stack); `parts` are Hugging Face's names
    of an expert's gate, up and down projections."""
    rules = [TensorRule("blk.{i}.ffn_gate_inp", f"model.layers.{{i}}.{mlp}.gate")]
    for part, hf_part in zip(("gate", "up", "down"), parts, strict=True):
        rules += [
            TensorRule(
                f"blk.{{i}}.ffn_{part}_exps",
                f"model.layers.{{i}}.{mlp}.experts.{e}.{hf_part}",
                to_hf=_row(e),
            )
            for e in range(num_experts)
        ]
    return rules


def _without_dense_mlp(rules: list[TensorRule]) -> list[TensorRule]:
    return [r for r in rules if not r.gguf.endswith(("ffn_gate", "ffn_up", "ffn_down"))]


# --- qwen3moe, qwen2moe: Qwen3's / Qwen2's attention with experts -------------------------------


def _qwen_moe_config(model_type: str) -> Callable[[Metadata], dict[str, Any]]:
    qwen3 = model_type == "qwen3_moe"

    def config(m: Metadata) -> dict[str, Any]:
        out = _qwen_config("qwen3" if qwen3 else "qwen2")(m)
        out = {**out, "model_type": model_type}
        out.update(_moe_config(m, qwen3, "expert_feed_forward_length"))
        if not qwen3:
            out["shared_expert_intermediate_size"] = int(
                m.get("expert_shared_feed_forward_length", 0)
            )
        return out

    return config


def _qwen_moe_metadata(model_type: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    qwen3 = model_type == "qwen3_moe"

    def metadata(hf: dict[str, Any]) -> dict[str, Any]:
        out = {
            **_qwen_metadata(hf),
            **_moe_metadata(hf, model_type, qwen3, "expert_feed_forward_length"),
        }
        if hf.get("shared_expert_intermediate_size"):
            out["expert_shared_feed_forward_length"] = hf["shared_expert_intermediate_size"]
        return out

    return metadata


def _qwen3_moe_tensors(c: ModelConfig) -> list[TensorRule]:
    dense = _without_dense_mlp(_llama_like_tensors())
    layer = [*dense, *_qk_norm_tensors(), *_expert_tensors(c.num_experts)]
    return _layout(c, _outer("model.embed_tokens", "model.norm"), layer)


def _qwen2_moe_tensors(c: ModelConfig) -> list[TensorRule]:
    """Qwen2-MoE's shared expert: its MLP (`ffn_*_shexp`) and its gate."""
    shared = [
        TensorRule(f"blk.{{i}}.ffn_{p}_shexp", f"model.layers.{{i}}.mlp.shared_expert.{p}_proj")
        for p in ("gate", "up", "down")
    ]
    # The gate's one row is a vector `[hidden]` in llama.cpp's layout.
    gate = TensorRule(
        "blk.{i}.ffn_gate_inp_shexp",
        "model.layers.{i}.mlp.shared_expert_gate",
        to_hf=lambda w: w.reshape(1, -1),
        to_gguf=lambda w: w.reshape(-1),
    )
    layer = [*_without_dense_mlp(_llama_like_tensors()), *_expert_tensors(c.num_experts)]
    layer += [*shared, gate] if c.shared_expert_intermediate_size else []
    return _layout(c, _outer("model.embed_tokens", "model.norm"), layer)


# --- olmoe: OLMo 2's whole-projection q/k norms in a pre-norm layer, with experts -----------------


def _olmoe_config(m: Metadata) -> dict[str, Any]:
    out = _base_config(m, "olmoe")
    out["rms_norm_eps"] = float(m.need("attention.layer_norm_rms_epsilon"))
    return {**out, **_rope_scaling(m), **_moe_config(m, False, None)}


def _olmoe_metadata(hf: dict[str, Any]) -> dict[str, Any]:
    return {**_qwen_metadata(hf), **_moe_metadata(hf, "olmoe", False, None)}


def _olmoe_tensors(c: ModelConfig) -> list[TensorRule]:
    layer = [
        *_without_dense_mlp(_llama_like_tensors()),
        *_qk_norm_tensors(),
        *_expert_tensors(c.num_experts),
    ]
    return _layout(c, _outer("model.embed_tokens", "model.norm"), layer)


# --- gemma2 ------------------------------------------------------------------------------------

# llama.cpp's Gemma 2 scales queries by 1/sqrt(head_dim), except for the 27B model (46 layers),
# which uses 1/sqrt(hidden / heads); the file has no field for `query_pre_attn_scalar`.
_GEMMA2_27B_LAYERS = 46


def _gemma_query_scalar(hf: dict[str, Any], layers_of_27b: int) -> int:
    """The `query_pre_attn_scalar` llama.cpp assumes: hidden / heads in the 27B model (told
    apart by its layer count), head_dim otherwise."""
    if hf["num_hidden_layers"] == layers_of_27b:
        return hf["hidden_size"] // hf["num_attention_heads"]
    return hf["head_dim"]


def _gemma2_query_scalar(hf: dict[str, Any]) -> int:
    return _gemma_query_scalar(hf, _GEMMA2_27B_LAYERS)


def _gemma2_config(m: Metadata) -> dict[str, Any]:
    out = _base_config(m, "gemma2")
    out["head_dim"] = _head_dim(m, out)
    out["rms_norm_eps"] = float(m.need("attention.layer_norm_rms_epsilon"))
    out["hidden_activation"] = "gelu_pytorch_tanh"
    out["query_pre_attn_scalar"] = _gemma2_query_scalar(out)
    # llama.cpp's defaults when the keys are absent.
    out["attn_logit_softcapping"] = float(m.get("attn_logit_softcapping", 50.0))
    out["final_logit_softcapping"] = float(m.get("final_logit_softcapping", 30.0))
    out["sliding_window"] = int(m.get("attention.sliding_window", 4096))
    return out


def _gemma2_metadata(hf: dict[str, Any]) -> dict[str, Any]:
    theta, _ = rope_parameters(hf)
    _refuse_lost("gemma2", "rope_theta", theta, 10000.0)
    _refuse_lost(
        "gemma2", "query_pre_attn_scalar", hf["query_pre_attn_scalar"], _gemma2_query_scalar(hf)
    )
    out = _rms_metadata(hf)
    del out["rope.freq_base"]
    out["attn_logit_softcapping"] = float(hf["attn_logit_softcapping"])
    out["final_logit_softcapping"] = float(hf["final_logit_softcapping"])
    out["attention.sliding_window"] = hf["sliding_window"]
    return out


def _gemma2_tensors(c: ModelConfig) -> list[TensorRule]:
    """Gemma's RMSNorm scales by `1 + w`; the converter stores `1 + w`. The LM head is the
    embedding (the converter drops any `lm_head`)."""
    norm = (plus(-1.0), plus(1.0))
    layer = [
        *(r for r in _llama_like_tensors() if not r.gguf.endswith("_norm")),
        TensorRule("blk.{i}.attn_norm", "model.layers.{i}.input_layernorm", *norm),
        TensorRule(
            "blk.{i}.post_attention_norm", "model.layers.{i}.post_attention_layernorm", *norm
        ),
        TensorRule("blk.{i}.ffn_norm", "model.layers.{i}.pre_feedforward_layernorm", *norm),
        TensorRule("blk.{i}.post_ffw_norm", "model.layers.{i}.post_feedforward_layernorm", *norm),
    ]
    outer = [
        TensorRule("token_embd", "model.embed_tokens"),
        TensorRule("output_norm", "model.norm", *norm),
    ]
    return _layout(c, outer, layer)


# --- gemma3 ------------------------------------------------------------------------------------

# llama.cpp's Gemma 3: five sliding layers to one global, the sliding layers' RoPE base 10,000
# unscaled, and queries scaled by 1/sqrt(head_dim) except in the 27B model (62 layers), which
# uses 1/sqrt(hidden / heads); the file has fields for none of these.
_GEMMA3_PATTERN, _GEMMA3_LOCAL_THETA, _GEMMA3_27B_LAYERS = 6, 10000.0, 62


def _gemma3_query_scalar(hf: dict[str, Any]) -> int:
    return _gemma_query_scalar(hf, _GEMMA3_27B_LAYERS)


def _gemma3_config(m: Metadata) -> dict[str, Any]:
    out = _base_config(m, "gemma3_text")
    out["head_dim"] = _head_dim(m, out)
    out["rms_norm_eps"] = float(m.get("attention.layer_norm_rms_epsilon", 1e-6))
    out["hidden_activation"] = "gelu_pytorch_tanh"
    out["query_pre_attn_scalar"] = _gemma3_query_scalar(out)
    out["final_logit_softcapping"] = m.get("final_logit_softcapping")
    out["attn_logit_softcapping"] = None
    out["sliding_window"] = int(m.need("attention.sliding_window"))
    out["sliding_window_pattern"] = _GEMMA3_PATTERN
    out["rope_local_base_freq"] = _GEMMA3_LOCAL_THETA
    return {**out, **_rope_scaling(m)}


def _gemma3_metadata(hf: dict[str, Any]) -> dict[str, Any]:
    c = Gemma3Config.from_hf(hf)
    n = c.num_hidden_layers
    pattern = [i for i in range(n) if (i + 1) % _GEMMA3_PATTERN]
    _refuse_lost("gemma3_text", "the sliding layers", c.local_layers, pattern)
    _refuse_lost("gemma3_text", "the local RoPE base", c.local_rope_theta, _GEMMA3_LOCAL_THETA)
    _refuse_lost("gemma3_text", "the local RoPE scaling", c.local_rope_scaling, None)
    _refuse_lost(
        "gemma3_text", "query_pre_attn_scalar", c.query_pre_attn_scalar, _gemma3_query_scalar(hf)
    )
    _refuse_lost("gemma3_text", "attn_logit_softcapping", c.attn_logit_softcapping, None)
    out = {
        **_rms_metadata({**hf, "rms_norm_eps": c.norm_eps}),
        "rope.freq_base": c.rope_theta,
        "attention.key_length": c.head_dim,
        "attention.value_length": c.head_dim,
        "attention.sliding_window": c.sliding_window,
    }
    if c.rope_scaling is not None:
        out["rope.scaling.type"] = "linear"
        out["rope.scaling.factor"] = float(c.rope_scaling["factor"])
    if c.final_logit_softcapping:
        out["final_logit_softcapping"] = float(c.final_logit_softcapping)
    return out


def _gemma3_tensors(c: ModelConfig) -> list[TensorRule]:
    """Gemma 2's layout with query/key norms, every norm stored as `1 + w`."""
    norm = (plus(-1.0), plus(1.0))
    return [
        *_gemma2_tensors(c),
        *per_layer(_qk_norm_tensors(norm), c.num_hidden_layers),
    ]


# --- olmo2: norms after attention and MLP, whole-projection q/k norms --------------------------


def _olmo2_config(m: Metadata) -> dict[str, Any]:
    out = _base_config(m, "olmo2")
    out["head_dim"] = _head_dim(m, out)
    out["rms_norm_eps"] = float(m.need("attention.layer_norm_rms_epsilon"))
    out["attention_bias"] = m.has("blk.0.attn_q.bias")
    if m.get("attention.sliding_window") is not None:
        raise m.fail("olmo2: sliding-window layers (OLMo 3) are not supported")
    return {**out, **_rope_scaling(m)}


def _olmo2_tensors(c: ModelConfig) -> list[TensorRule]:
    layer = [
        *(r for r in _llama_like_tensors() if not r.gguf.endswith("_norm")),
        *_qk_norm_tensors(),
        TensorRule("blk.{i}.post_attention_norm", "model.layers.{i}.post_attention_layernorm"),
        TensorRule("blk.{i}.post_ffw_norm", "model.layers.{i}.post_feedforward_layernorm"),
    ]
    return _layout(c, _outer("model.embed_tokens", "model.norm"), layer)


# --- smollm3: Llama's layout, RoPE skipped on every fourth layer -------------------------------

# llama.cpp skips RoPE on layers with (i + 1) % 4 == 0; the file has no field for it.
_SMOLLM3_NOPE_INTERVAL = 4


def _smollm3_config(m: Metadata) -> dict[str, Any]:
    config = {**_llama_config(m), "model_type": "smollm3"}
    config["no_rope_layer_interval"] = _SMOLLM3_NOPE_INTERVAL
    return config


def _smollm3_metadata(hf: dict[str, Any]) -> dict[str, Any]:
    c = SmolLM3Config.from_hf(hf)
    n = c.num_hidden_layers
    kept = [i for i in range(n) if (i + 1) % _SMOLLM3_NOPE_INTERVAL]
    _refuse_lost("smollm3", "the layers with RoPE", c.rope_layers, kept)
    _refuse_lost("smollm3", "the sliding window", c.sliding_window, 0)
    return _llama_metadata(hf)


# --- phi3 --------------------------------------------------------------------------------------

_PHI3_FACTORS = ("rope_factors_long.weight", "rope_factors_short.weight")


def _phi3_config(m: Metadata) -> dict[str, Any]:
    out = _base_config(m, "phi3")
    head_dim = out["hidden_size"] // out["num_attention_heads"]
    out["partial_rotary_factor"] = _rotary_dims(m, head_dim) / head_dim
    out["rms_norm_eps"] = float(m.need("attention.layer_norm_rms_epsilon"))
    out["sliding_window"] = int(m.get("attention.sliding_window", 0)) or None
    original = int(m.get("rope.scaling.original_context_length", out["max_position_embeddings"]))
    out["original_max_position_embeddings"] = original
    if m.has(_PHI3_FACTORS[0]):
        long, short = (m.file.get(name).tolist() for name in _PHI3_FACTORS)
        out["rope_scaling"] = {
            "rope_type": "longrope",
            "long_factor": long,
            "short_factor": short,
            "original_max_position_embeddings": original,
        }
        if m.get("rope.scaling.attn_factor") is not None:
            out["rope_scaling"]["attention_factor"] = float(m.get("rope.scaling.attn_factor"))
    return out


def _phi3_scaling(hf: dict[str, Any]) -> dict[str, Any] | None:
    _, scaling = rope_parameters(hf)
    if scaling is not None and scaling["rope_type"] not in ("longrope", "su"):
        raise ValueError(f"GGUF export of phi3 {scaling['rope_type']!r} RoPE is not supported")
    return scaling


def _phi3_metadata(hf: dict[str, Any]) -> dict[str, Any]:
    heads, hidden = hf["num_attention_heads"], hf["hidden_size"]
    original = hf.get("original_max_position_embeddings") or hf["max_position_embeddings"]
    out = _rms_metadata(hf)
    out["rope.scaling.original_context_length"] = original
    out["rope.dimension_count"] = int(partial_rotary_factor(hf) * hidden) // heads
    out["attention.sliding_window"] = hf.get("sliding_window") or 0  # 0: none (Phi-4)
    scale = hf["max_position_embeddings"] / original
    if _phi3_scaling(hf) is not None:
        # The converter writes LongRoPE's attention factor, computed as transformers does.
        out["rope.scaling.attn_factor"] = (
            math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1 else 1.0
        )
    return out


def _phi3_factor_tensors(hf: dict[str, Any]) -> dict[str, np.ndarray]:
    scaling = _phi3_scaling(hf)
    if scaling is None:
        return {}
    return {
        _PHI3_FACTORS[0]: np.asarray(scaling["long_factor"], np.float32),
        _PHI3_FACTORS[1]: np.asarray(scaling["short_factor"], np.float32),
    }


def _phi3_tensors(c: ModelConfig) -> list[TensorRule]:
    layer = [
        TensorRule("blk.{i}.attn_norm", "model.layers.{i}.input_layernorm"),
        TensorRule("blk.{i}.attn_qkv", "model.layers.{i}.self_attn.qkv_proj"),
        TensorRule("blk.{i}.attn_output", "model.layers.{i}.self_attn.o_proj"),
        TensorRule("blk.{i}.ffn_norm", "model.layers.{i}.post_attention_layernorm"),
        TensorRule("blk.{i}.ffn_up", "model.layers.{i}.mlp.gate_up_proj"),  # gate, then up
        TensorRule("blk.{i}.ffn_down", "model.layers.{i}.mlp.down_proj"),
    ]
    return _layout(c, _outer("model.embed_tokens", "model.norm"), layer)


# --- stablelm ----------------------------------------------------------------------------------


def _stablelm_config(m: Metadata) -> dict[str, Any]:
    out = _base_config(m, "stablelm")
    head_dim = out["hidden_size"] // out["num_attention_heads"]
    out["partial_rotary_factor"] = _rotary_dims(m, head_dim) / head_dim
    out["layer_norm_eps"] = float(m.need("attention.layer_norm_epsilon"))
    # As llama.cpp builds the graph: the MLP's own norm exists only without parallel residual.
    out["use_parallel_residual"] = not m.has("blk.0.ffn_norm.weight")
    out["use_qkv_bias"] = m.has("blk.0.attn_q.bias")
    out["qk_layernorm"] = m.has("blk.0.attn_q_norm.weight")
    return out


def _stablelm_metadata(hf: dict[str, Any]) -> dict[str, Any]:
    theta, _ = rope_parameters(hf)
    _refuse_lost("stablelm", "rope_theta", theta, 10000.0)
    out = _base_metadata(hf)
    del out["rope.freq_base"]
    out["attention.layer_norm_epsilon"] = hf["layer_norm_eps"]
    head_dim = hf["hidden_size"] // hf["num_attention_heads"]
    out["rope.dimension_count"] = int(partial_rotary_factor(hf, 0.25) * head_dim)
    out["use_parallel_residual"] = bool(hf.get("use_parallel_residual", True))
    return out


def _stablelm_tensors(c: ModelConfig) -> list[TensorRule]:
    """Llama's layout; StableLM 2's per-head query/key norms are one `[heads, head_dim]` tensor
    each in the file, a tensor per head in Hugging Face's."""
    rules = _unpermuted_llama_tensors(c)
    if getattr(c, "qk_layernorm", False):
        heads = {"q": c.num_attention_heads, "k": c.num_key_value_heads}
        per_head = [
            TensorRule(
                f"blk.{{i}}.attn_{n}_norm",
                f"model.layers.{{i}}.self_attn.{n}_layernorm.norms.{h}",
                to_hf=_row(h),
            )
            for n, count in heads.items()
            for h in range(count)
        ]
        rules += per_layer(per_head, c.num_hidden_layers)
    return rules


def _row(index: int) -> Transform:
    return lambda w: np.ascontiguousarray(w[index])


# --- gpt2 --------------------------------------------------------------------------------------


def _gpt2_config(m: Metadata) -> dict[str, Any]:
    return {
        "model_type": "gpt2",
        "vocab_size": m.rows("token_embd.weight"),
        "n_embd": int(m.need("embedding_length")),
        "n_layer": int(m.need("block_count")),
        "n_head": int(m.need("attention.head_count")),
        "n_positions": m.rows("position_embd.weight"),
        "n_inner": int(m.need("feed_forward_length")),
        "layer_norm_epsilon": float(m.need("attention.layer_norm_epsilon")),
        "activation_function": "gelu_new",
        "tie_word_embeddings": not m.has("output.weight"),
        **m.token_ids(),
    }


def _gpt2_metadata(hf: dict[str, Any]) -> dict[str, Any]:
    return {
        "block_count": hf["n_layer"],
        "context_length": hf.get("n_ctx") or hf["n_positions"],
        "embedding_length": hf["n_embd"],
        "feed_forward_length": hf.get("n_inner") or 4 * hf["n_embd"],
        "attention.head_count": hf["n_head"],
        "attention.layer_norm_epsilon": hf["layer_norm_epsilon"],
    }


def _gpt2_tensors(c: ModelConfig) -> list[TensorRule]:
    conv1d = (transpose, transpose)
    layer = [
        TensorRule("blk.{i}.attn_norm", "transformer.h.{i}.ln_1"),
        TensorRule("blk.{i}.attn_qkv", "transformer.h.{i}.attn.c_attn", *conv1d),
        TensorRule("blk.{i}.attn_output", "transformer.h.{i}.attn.c_proj", *conv1d),
        TensorRule("blk.{i}.ffn_norm", "transformer.h.{i}.ln_2"),
        TensorRule("blk.{i}.ffn_up", "transformer.h.{i}.mlp.c_fc", *conv1d),
        TensorRule("blk.{i}.ffn_down", "transformer.h.{i}.mlp.c_proj", *conv1d),
    ]
    outer = [
        *_outer("transformer.wte", "transformer.ln_f"),
        TensorRule("position_embd", "transformer.wpe"),
    ]
    return _layout(c, outer, layer)


# --- falcon ------------------------------------------------------------------------------------


def _falcon_config(m: Metadata) -> dict[str, Any]:
    heads = int(m.need("attention.head_count"))
    kv_heads = int(m.get("attention.head_count_kv", 1))
    two_norms = m.has("blk.0.attn_norm_2.weight")
    # llama.cpp's Falcon always runs attention and MLP in parallel; Falcon-40B's layout (KV
    # groups, a norm for each branch) is Hugging Face's `new_decoder_architecture`.
    new_arch = two_norms or kv_heads > 1
    return {
        "model_type": "falcon",
        "vocab_size": m.rows("token_embd.weight"),
        "hidden_size": int(m.need("embedding_length")),
        "ffn_hidden_size": int(m.need("feed_forward_length")),
        "num_hidden_layers": int(m.need("block_count")),
        "num_attention_heads": heads,
        "num_kv_heads": kv_heads,
        "multi_query": kv_heads == 1,
        "new_decoder_architecture": new_arch,
        "num_ln_in_parallel_attn": 2 if two_norms else 1,
        "parallel_attn": True,
        "bias": m.has("blk.0.attn_qkv.bias"),
        "alibi": False,
        "layer_norm_epsilon": float(m.need("attention.layer_norm_epsilon")),
        "rope_theta": float(m.get("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(m.get("context_length", 2048)),
        "tie_word_embeddings": not m.has("output.weight"),
        **m.token_ids(),
    }


def _falcon_metadata(hf: dict[str, Any]) -> dict[str, Any]:
    c = FalconConfig.from_hf(hf)
    if c.alibi or c.bias or not (c.new_decoder_architecture or (c.multi_query and c.parallel_attn)):
        raise ValueError(
            "falcon: llama.cpp's Falcon has no ALiBi, no biases and no per-head QKV layout "
            "(Falcon-RW): this model cannot be exported to GGUF"
        )
    _refuse_lost("falcon", "rope_theta", c.rope_theta, 10000.0)
    return {
        # The converter writes 2048, which Falcon's config.json leaves as the default.
        "context_length": hf.get("max_position_embeddings", 2048),
        "tensor_data_layout": "jploski",  # the QKV layout below
        "embedding_length": c.hidden_size,
        "feed_forward_length": c.intermediate_size,
        "block_count": c.num_hidden_layers,
        "attention.head_count": c.num_attention_heads,
        "attention.head_count_kv": c.num_key_value_heads,
        "attention.layer_norm_epsilon": c.norm_eps,
    }


def _falcon_tensors(c: ModelConfig) -> list[TensorRule]:
    to_hf = falcon_grouped(c.num_attention_heads, c.num_key_value_heads, c.head_dim)
    to_gguf = grouped_to_fused(c)
    if c.new_decoder_architecture and c.two_norms:
        # llama.cpp feeds the MLP from `attn_norm` and attention from `attn_norm_2`.
        norms = [
            TensorRule("blk.{i}.attn_norm", "transformer.h.{i}.ln_mlp"),
            TensorRule("blk.{i}.attn_norm_2", "transformer.h.{i}.ln_attn"),
        ]
    else:
        norms = [TensorRule("blk.{i}.attn_norm", "transformer.h.{i}.input_layernorm")]
    layer = [
        *norms,
        TensorRule(
            "blk.{i}.attn_qkv",
            "transformer.h.{i}.self_attention.query_key_value",
            to_hf,
            lambda w: to_gguf([w]),
        ),
        TensorRule("blk.{i}.attn_output", "transformer.h.{i}.self_attention.dense"),
        TensorRule("blk.{i}.ffn_up", "transformer.h.{i}.mlp.dense_h_to_4h"),
        TensorRule("blk.{i}.ffn_down", "transformer.h.{i}.mlp.dense_4h_to_h"),
    ]
    return _layout(c, _outer("transformer.word_embeddings", "transformer.ln_f"), layer)


ARCHITECTURES: dict[str, GGUFArchitecture] = {
    a.name: a
    for a in (
        GGUFArchitecture(
            "llama",
            ("llama", "mistral", "mixtral"),
            _llama_config,
            _llama_metadata,
            _llama_tensors,
            config_tensors=(_ROPE_FREQS,),
            extra_tensors=_llama3_factor_tensors,
        ),
        GGUFArchitecture(
            "granite", ("granite",), _granite_config, _granite_metadata, _llama_tensors
        ),
        GGUFArchitecture(
            "qwen2", ("qwen2",), _qwen_config("qwen2"), _qwen_metadata, _unpermuted_llama_tensors
        ),
        GGUFArchitecture(
            "qwen3", ("qwen3",), _qwen_config("qwen3"), _qwen_metadata, _qwen3_tensors
        ),
        GGUFArchitecture(
            "qwen3moe",
            ("qwen3_moe",),
            _qwen_moe_config("qwen3_moe"),
            _qwen_moe_metadata("qwen3_moe"),
            _qwen3_moe_tensors,
        ),
        GGUFArchitecture(
            "qwen2moe",
            ("qwen2_moe",),
            _qwen_moe_config("qwen2_moe"),
            _qwen_moe_metadata("qwen2_moe"),
            _qwen2_moe_tensors,
        ),
        GGUFArchitecture("olmoe", ("olmoe",), _olmoe_config, _olmoe_metadata, _olmoe_tensors),
        GGUFArchitecture("gemma2", ("gemma2",), _gemma2_config, _gemma2_metadata, _gemma2_tensors),
        GGUFArchitecture(
            "gemma3", ("gemma3_text",), _gemma3_config, _gemma3_metadata, _gemma3_tensors
        ),
        GGUFArchitecture("olmo2", ("olmo2",), _olmo2_config, _qwen_metadata, _olmo2_tensors),
        GGUFArchitecture(
            "smollm3", ("smollm3",), _smollm3_config, _smollm3_metadata, _llama_tensors
        ),
        GGUFArchitecture(
            "phi3",
            ("phi3",),
            _phi3_config,
            _phi3_metadata,
            _phi3_tensors,
            config_tensors=_PHI3_FACTORS,
            extra_tensors=_phi3_factor_tensors,
        ),
        GGUFArchitecture(
            "stablelm",
            ("stablelm",),
            _stablelm_config,
            _stablelm_metadata,
            _stablelm_tensors,
        ),
        GGUFArchitecture("gpt2", ("gpt2",), _gpt2_config, _gpt2_metadata, _gpt2_tensors),
        GGUFArchitecture("falcon", ("falcon",), _falcon_config, _falcon_metadata, _falcon_tensors),
    )
}
SUPPORTED_ARCHITECTURES = tuple(ARCHITECTURES)


def for_gguf(file: GGUFFile) -> GGUFArchitecture:
    arch = file.metadata.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise GGUFError(
            f"{file.path}: GGUF architecture {arch!r} is not supported yet "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    return ARCHITECTURES[arch]


def for_model_type(model_type: str, path: Path) -> GGUFArchitecture:
    for arch in ARCHITECTURES.values():
        if model_type in arch.model_types:
            return arch
    supported = sorted(t for a in ARCHITECTURES.values() for t in a.model_types)
    raise ValueError(
        f"{path}: GGUF export of model_type {model_type!r} is not supported "
        f"(supported: {', '.join(supported)})"
    )
