"""`q4a8_2`: a full-precision checkpoint quantized into GGML block formats, computed by the
kernels that run GGUF files (`ggml_blocks`).

Every Linear weight and every stack of a mixture's experts becomes `Q4_1` (asymmetric 4-bit: a
scale and a minimum per 32 values, searched per block by `block_search`); the token embedding
and the LM head, where 4 bits cost the most, become `Q8_0`. Weights whose rows are not whole
blocks stay float32, as do norms, biases and routers. Activations are float32 and enter the
block kernels as int8 (as in `q4a8_1`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
from tvm.relax.frontend import nn

from mlc.models.moe import Experts

from .base import Quantization
from .block_search import BLOCK, ENCODERS
from .ggml_blocks import FORMATS, BlockEmbedding, BlockExperts, BlockLinear, GGMLFormat
from .group_quant import is_expert_param, is_quantized_param

HEAD_PARAMS = ("embed_tokens.weight", "lm_head.weight")


@dataclasses.dataclass(frozen=True)
class BlockQuantization(Quantization):
    weight_format: str = "Q4_1"
    head_format: str = "Q8_0"

    @property
    def cpu_only(self) -> bool:
        return True

    @property
    def quantizes_experts(self) -> bool:
        return True

    def format_of(self, name: str, k: int) -> GGMLFormat | None:
        """The block format parameter `name` (rows of `k` values) is stored in, or None."""
        if k % BLOCK:
            return None
        head = any(name == p or name.endswith(f".{p}") for p in HEAD_PARAMS)
        return FORMATS[self.head_format if head else self.weight_format]

    def describe(self) -> dict:
        return {
            **super().describe(),
            "storage": f"Linear weights {self.weight_format} (scale and minimum searched per "
            f"block), token embedding and LM head {self.head_format}, GGML block layout",
        }

    def quantize_model(self, model: nn.Module) -> nn.Module:
        return _ToBlocks(self).visit("", model)

    def convert(self, name: str, array: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
        quantized = is_quantized_param(name, array) or is_expert_param(name, array)
        fmt = self.format_of(name, array.shape[-1]) if quantized else None
        if fmt is not None:
            # An expert stack `[experts, out, in]` is stored flat, as `BlockExperts` reads it.
            blocks = ENCODERS[fmt.name](array.reshape(-1, array.shape[-1]))
            prefix = name.removesuffix(".weight")
            for key, stored in fmt.from_ggml_blocks(blocks).items():
                yield f"{prefix}.{key}", stored
        elif np.issubdtype(array.dtype, np.floating):
            yield name, array.astype(self.model_dtype)
        else:
            yield name, array

    def dequantize_stored(self, tensors: list[tuple[str, np.ndarray]], k: int) -> np.ndarray:
        if len(tensors) == 1:
            return super().dequantize_stored(tensors, k)
        stored = {name.rsplit(".", 1)[-1]: array for name, array in tensors}
        name = tensors[0][0].rsplit(".", 1)[0] + ".weight"
        fmt = self.format_of(name, k)
        assert fmt is not None, name
        return fmt.dequantize(stored)


class _ToBlocks(nn.Mutator):
    """Replaces each Linear, Embedding and expert stack whose rows are whole blocks with its
    block twin."""

    def __init__(self, scheme: BlockQuantization):
        self.scheme = scheme

    def visit_module(self, name: str, node: nn.Module):
        dtype = self.scheme.model_dtype
        if isinstance(node, nn.Linear):
            fmt = self.scheme.format_of(f"{name}.weight", node.in_features)
            if fmt is not None:
                bias = node.bias is not None
                return BlockLinear(fmt, node.in_features, node.out_features, bias, dtype)
        if isinstance(node, nn.Embedding):
            fmt = self.scheme.format_of(f"{name}.weight", node.dim)
            if fmt is not None:
                return BlockEmbedding(fmt, node.num, node.dim, dtype)
        if isinstance(node, Experts):
            fmt = self.scheme.format_of(f"{name}.weight", node.in_features)
            if fmt is not None:
                return BlockExperts(fmt, node)
        return self.visit(name, node)
