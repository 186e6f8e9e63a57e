"""The interface every quantization scheme implements."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
from tvm.relax.frontend import nn


@dataclasses.dataclass(frozen=True)
class Quantization:
    name: str
    model_dtype: str  # dtype of activations and of unquantized weights

    def quantize_model(self, model: nn.Module) -> nn.Module:
        """Swap layers for their quantized twins; the default leaves the model as it is."""
        return model

    def convert(self, name: str, array: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
        """The stored tensors for one parameter of the unquantized model."""
        raise NotImplementedError

    @property
    def kv_cache_dtype(self) -> str:
        """The KV cache's dtype unless the build asks for another: the model's."""
        return self.model_dtype

    def describe(self) -> dict:
        return {"name": self.name, "model_dtype": self.model_dtype}


def register(registry: dict[str, Quantization], scheme: Quantization) -> None:
    if scheme.name in registry:
        raise ValueError(f"quantization {scheme.name!r} is registered twice")
    registry[scheme.name] = scheme
