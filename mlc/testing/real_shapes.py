"""Small models with the shapes that matter to GPU kernels: grouped-query attention with
head_dim 64 and 128, hidden 256 (several matmul tiles), biases and norm weights off their
initial values, and a context of several KV-cache pages. The CUDA check
(`benchmarks/cuda_prepare.py`) and the software-device tests (`tests/test_gpu_real_shapes.py`,
the kernel checks) share them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .random_model import save_model

# name -> config.json settings: every case a different architecture or head size.
CASES: dict[str, dict[str, Any]] = {
    "llama-gqa-hd64": {
        "model_type": "llama",
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
    "qwen2-bias-hd64": {
        "model_type": "qwen2",
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
    },
    "phi3-hd128": {
        "model_type": "phi3",
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
    },
}
CONTEXT = 1024
# Biases start at zero and norm weights at one: noise on them shows a misplaced one.
VECTOR_STD = 0.1


def case_settings(name: str) -> dict[str, Any]:
    """`save_model` keyword arguments for case `name`."""
    return {**CASES[name], "vector_std": VECTOR_STD, "max_position_embeddings": CONTEXT}


def save_case(name: str, path: Path) -> Path:
    """The random Hugging Face model of case `name`, saved at `path`."""
    return save_model(path, **case_settings(name))


def random_prompt(length: int, vocab_size: int, seed: int = 0) -> list[int]:
    """`length` token ids drawn from the vocabulary, special tokens (ids below 3) left out."""
    rng = np.random.default_rng(seed)
    return [int(t) for t in rng.integers(3, vocab_size, length)]
