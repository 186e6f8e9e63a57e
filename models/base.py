"""Pieces every architecture shares: the config base, the weight map and the export spec."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from tvm.relax.frontend import nn

# A recipe for one of our parameters: which Hugging Face tensors it is made of, and how.
Combine = Callable[[Sequence[np.ndarray]], np.ndarray]


@dataclasses.dataclass(frozen=True)
class WeightSource:
    """One of our parameters as a function of Hugging Face tensors."""

    hf_names: tuple[str, ...]
    combine: Combine | None = None

    def build(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        if self.combine is None:
            (array,) = arrays
            return array
        return self.combine(arrays)


def concat_rows(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Fuse projections that share an input (q/k/v, gate/up) along the output axis."""
    return np.concatenate(arrays, axis=0)


@dataclasses.dataclass
class ModelConfig:
    """Fields every architecture has; subclasses mirror their `config.json`."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    context_window_size: int
    prefill_chunk_size: int
    tie_word_embeddings: bool
    # The dtype K and V are cached in; "" for the model's dtype (set by the build).
    kv_cache_dtype: str = dataclasses.field(default="", kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of `to_dict`, used by the runtime side to read `mlc-chat-config.json`."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def rope_parameters(hf: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """`(rope_theta, rope_scaling)` from a config of either transformers 4 or 5 layout.

    transformers 5 keeps both under `rope_parameters`; 4 had `rope_theta` and `rope_scaling`.
    """
    params = dict(hf.get("rope_parameters") or {})
    theta = float(params.pop("rope_theta", hf.get("rope_theta", 10000.0)))
    scaling = hf.get("rope_scaling") or params or None
    if scaling is not None:
        scaling = dict(scaling)
        scaling.setdefault("rope_type", scaling.pop("type", "default"))
        scaling.pop("rope_theta", None)
        if scaling["rope_type"] == "default":
            scaling = None
    return theta, scaling


def require(hf: dict[str, Any], key: str, model_type: str) -> Any:
    """A mandatory `config.json` field, with an error naming it."""
    if key not in hf:
        raise ValueError(f"config.json of a {model_type!r} model lacks the field {key!r}")
    return hf[key]


def export_spec(model: nn.Module, hidden_size: int, dtype: str) -> dict[str, Any]:
    """The functions every causal LM exports, with their symbolic dimensions.

    - `embed(input_ids[seq_len])`
    - `prefill(input_embed[1, seq_len, hidden], logit_positions[num_seqs], kv_cache)`
    - `decode(input_embed[batch_size, 1, hidden], kv_cache)`
    - `create_paged_kv_cache(max_batch_size, max_total_seq_len, prefill_chunk_size,
      page_size, support_sliding_window)`
    """
    from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache

    packed = {"param_mode": "packed", "effect_mode": "none"}
    return {
        "embed": {"input_ids": nn.spec.Tensor(["seq_len"], "int32"), "$": packed},
        "prefill": {
            "input_embed": nn.spec.Tensor([1, "seq_len", hidden_size], dtype),
            "logit_positions": nn.spec.Tensor(["num_seqs"], "int32"),
            "paged_kv_cache": nn.spec.Object(object_type=PagedKVCache),
            "$": packed,
        },
        "decode": {
            "input_embed": nn.spec.Tensor(["batch_size", 1, hidden_size], dtype),
            "paged_kv_cache": nn.spec.Object(object_type=PagedKVCache),
            "$": packed,
        },
        "create_paged_kv_cache": {
            "max_batch_size": int,
            "max_total_seq_len": int,
            "prefill_chunk_size": int,
            "page_size": int,
            "support_sliding_window": int,
            "$": {"param_mode": "none", "effect_mode": "none"},
        },
    }
