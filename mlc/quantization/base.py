"""The interface every quantization scheme implements."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
from tvm.relax.frontend import nn

# The CPU target presets: the host's (llvm) and 64-bit ARM's (arm64). Their int8-activation
# kernels exist for both (x86's own, and their generic form with the same bits on arm64).
CPU_TARGETS = ("llvm", "arm64")


@dataclasses.dataclass(frozen=True)
class Quantization:
    name: str
    model_dtype: str  # dtype of activations and of unquantized weights

    def for_checkpoint(self, checkpoint: Any, weight_map: dict[str, Any]) -> Quantization:
        """The scheme for one checkpoint (`weight_map`: our parameter → its `WeightSource`);
        schemes that follow the source's own storage bind to it here."""
        return self

    def summary(self) -> list[str]:
        """Lines for the build log about what the scheme chose for this checkpoint."""
        return []

    def quantize_model(self, model: nn.Module) -> nn.Module:
        """Swap layers for their quantized twins; the default leaves the model as it is."""
        return model

    def convert(self, name: str, array: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
        """The stored tensors for one parameter of the unquantized model."""
        raise NotImplementedError

    def convert_source(
        self, name: str, source: Any, checkpoint: Any
    ) -> tuple[int, list[tuple[str, np.ndarray]]]:
        """(values of the parameter, its stored tensors), read from `checkpoint` through its
        `WeightSource`; by default from the float tensors, through `convert`."""
        array = source.build([checkpoint.get(n) for n in source.hf_names])
        return array.size, list(self.convert(name, array))

    def dequantize_stored(self, tensors: list[tuple[str, np.ndarray]], k: int) -> np.ndarray:
        """The values a parameter's stored tensors (from `convert`) stand for, float32, its
        last axis `k` long; by default the one stored tensor itself."""
        ((_, array),) = tensors
        return array.astype(np.float32)

    @property
    def quantizes_experts(self) -> bool:
        """Whether a mixture of experts' stacked weights are quantized (else kept float)."""
        return False

    @property
    def cpu_only(self) -> bool:
        """Whether only the CPU targets (`CPU_TARGETS`) have kernels for the stored formats."""
        return False

    def for_target(self, target: str) -> Quantization:
        """This scheme as it computes for the target preset named `target`."""
        return self

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
