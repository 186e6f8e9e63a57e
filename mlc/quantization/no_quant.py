"""`q0f32` and `q0f16`: weights kept as floats, cast to the model's dtype."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from .base import Quantization


@dataclasses.dataclass(frozen=True)
class NoQuantization(Quantization):
    def convert(self, name: str, array: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
        if np.issubdtype(array.dtype, np.floating):
            array = array.astype(self.model_dtype, copy=False)
        yield name, array
