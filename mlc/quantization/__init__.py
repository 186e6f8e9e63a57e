"""Weight quantization schemes, registered by name (`q0f32`, `q4f16_1`, ...).

A scheme says which dtype the model computes in, how it rewrites the model's layers and how it
converts each Hugging Face tensor into the tensors the rewritten layers expect.
"""

from __future__ import annotations

from .base import Quantization, register
from .block_quant import BlockQuantization
from .gguf_native import GGUFNative
from .group_quant import GroupQuantization
from .int8_activations import Int8ActivationQuantization
from .no_quant import NoQuantization

QUANTIZATIONS: dict[str, Quantization] = {}
for _scheme in (
    NoQuantization("q0f32", "float32"),
    NoQuantization("q0f16", "float16"),
    GroupQuantization("q4f16_1", "float16", bits=4, group_size=32, scale_dtype="float16"),
    GroupQuantization("q4f32_1", "float32", bits=4, group_size=32, scale_dtype="float32"),
    GroupQuantization("q3f16_1", "float16", bits=3, group_size=40, scale_dtype="float16"),
    GroupQuantization("q8f16_1", "float16", bits=8, group_size=32, scale_dtype="float16"),
    Int8ActivationQuantization("q4a8_1", "float32", bits=4, group_size=32, scale_dtype="float16"),
    BlockQuantization("q4a8_2", "float32"),
    GGUFNative("gguf", "float32"),
):
    register(QUANTIZATIONS, _scheme)


def get_quantization(name: str) -> Quantization:
    if name not in QUANTIZATIONS:
        raise ValueError(
            f"unknown quantization {name!r}; choose one of: {', '.join(sorted(QUANTIZATIONS))}"
        )
    return QUANTIZATIONS[name]


__all__ = ["QUANTIZATIONS", "Quantization", "get_quantization"]
