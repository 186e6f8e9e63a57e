"""How far a re-quantization moves a GGUF file's block-quantized weights: the build log's
measure of what `--quantization` other than `gguf` loses on such a file."""

from __future__ import annotations

from typing import Any

import numpy as np

# ggml types that hold values as plain floats; every other type is a quantized block format.
FLOAT_TYPES = frozenset({"F64", "F32", "F16", "BF16"})


def source_types(checkpoint: Any, source: Any) -> set[str]:
    """The ggml types of the GGUF tensors a parameter's `WeightSource` is built from."""
    return {checkpoint.tensor_type(h) for h in source.hf_names}


def block_quantized_sources(checkpoint: Any, weight_map: dict[str, Any]) -> dict[str, set[str]]:
    """Our parameter → the file's quantized types it is built from, for the parameters built
    from at least one block-quantized tensor (none for a Hugging Face checkpoint)."""
    if not hasattr(checkpoint, "tensor_type"):
        return {}
    out = {}
    for ours, source in weight_map.items():
        types = source_types(checkpoint, source) - FLOAT_TYPES
        if types:
            out[ours] = types
    return out


class WeightChange:
    """Σ (w' - w)² and Σ w² over the measured weights: the relative RMS change."""

    def __init__(self) -> None:
        self.squared_change = 0.0
        self.squared_norm = 0.0

    def add(self, original: np.ndarray, stored_value: np.ndarray) -> None:
        w = original.astype(np.float64)
        value = stored_value.astype(np.float64).reshape(w.shape)  # expert stacks are stored flat
        self.squared_change += float(np.square(value - w).sum())
        self.squared_norm += float(np.square(w).sum())

    @property
    def relative_rms(self) -> float:
        return (self.squared_change / self.squared_norm) ** 0.5 if self.squared_norm else 0.0


def requantization_line(code: str, types: set[str], change: WeightChange) -> str:
    """The build log's line on re-quantizing the file's block-quantized weights to `code`."""
    kinds = "/".join(sorted(types))
    keep = "the default, --quantization gguf, keeps the file's own formats"
    if change.squared_change == 0:
        return f"the file's {kinds} weights are stored dequantized, exactly ({code}); {keep}"
    return (
        f"re-quantizing the file's {kinds} weights to {code} is lossy: they move by "
        f"{100 * change.relative_rms:.3g} % (RMS, relative); {keep}"
    )
