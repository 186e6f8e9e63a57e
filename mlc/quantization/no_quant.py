"""`q0f32` and `q0f16`: weights kept as floats, cast to the model's dtype.

In `q0f16` every linear layer sums its products in float32 and rounds to float16 once, as
PyTorch's float16 matmuls do: float16 partial sums drift with their order, and each target's
schedule orders them differently.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op

from .base import Quantization


@dataclasses.dataclass(frozen=True)
class NoQuantization(Quantization):
    def quantize_model(self, model: nn.Module) -> nn.Module:
        if self.model_dtype == "float32":
            return model
        return _AccumulateInFloat32().visit("", model)

    def convert(self, name: str, array: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
        if np.issubdtype(array.dtype, np.floating):
            array = array.astype(self.model_dtype, copy=False)
        yield name, array


class Float32AccumulatingLinear(nn.Linear):
    """`nn.Linear` with float32 sums (and bias), rounded to the layer's dtype once."""

    def forward(self, x: Tensor) -> Tensor:
        out = op.matmul(x, op.permute_dims(self.weight), out_dtype="float32")
        if self.bias is not None:
            out = out + self.bias.astype("float32")
        return out.astype(self.weight.dtype)


class _AccumulateInFloat32(nn.Mutator):
    def visit_module(self, name: str, node: nn.Module):
        if isinstance(node, nn.Linear):
            bias = node.bias is not None
            return Float32AccumulatingLinear(
                node.in_features, node.out_features, bias=bias, dtype=node.weight.dtype
            )
        return self.visit(name, node)
