"""One module per architecture, chosen by the `model_type` in `config.json`.

Each module exposes `MODEL_TYPES`, `CONFIG` (a `ModelConfig` with `from_hf`), `MODEL`
(the `nn.Module` causal LM) and `hf_weight_map(config)`. Shared pieces: `base` (config base,
weight sources, export spec), `layers` (norms, attention, MLP, decoder layer, causal LM) and
`rotary` (RoPE variants the KV cache lacks).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from . import (
    falcon,
    gemma,
    gemma2,
    gemma3,
    gpt2,
    gpt_bigcode,
    gpt_neox,
    gptj,
    granite,
    llama,
    mixtral,
    olmo2,
    olmoe,
    phi,
    phi3,
    qwen2,
    qwen3,
    qwen_moe,
    smollm3,
    stablelm,
)

_ARCHITECTURES: tuple[ModuleType, ...] = (
    llama,
    qwen2,
    qwen3,
    gemma,
    phi3,
    stablelm,
    gpt_neox,
    gpt2,
    phi,
    gpt_bigcode,
    gptj,
    falcon,
    gemma2,
    granite,
    olmo2,
    smollm3,
    gemma3,
    mixtral,
    qwen_moe,
    olmoe,
)
MODEL_TYPES: dict[str, ModuleType] = {t: m for m in _ARCHITECTURES for t in m.MODEL_TYPES}


def get_architecture(hf_config: dict[str, Any]) -> ModuleType:
    model_type = hf_config.get("model_type")
    if model_type is None:
        raise ValueError("config.json has no 'model_type': cannot tell the architecture")
    if model_type not in MODEL_TYPES:
        raise ValueError(
            f"unsupported model_type {model_type!r}; supported: {', '.join(sorted(MODEL_TYPES))}"
        )
    return MODEL_TYPES[model_type]
