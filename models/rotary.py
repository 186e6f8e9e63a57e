"""RoPE variants the paged KV cache cannot apply, computed in the model before attention."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op


def rope_inv_freq(theta: float, rotary_dim: int, ext_factors: list[float]) -> np.ndarray:
    """`1 / (ext * theta^(2i / rotary_dim))` in float32, as transformers computes it."""
    exponent = np.arange(0, rotary_dim, 2).astype(np.float32) / np.float32(rotary_dim)
    base = np.power(np.float32(theta), exponent, dtype=np.float32)
    return (np.float32(1.0) / (np.asarray(ext_factors, np.float32) * base)).astype(np.float32)


class LongRoPE(nn.Module):
    """LongRoPE (Phi-3's "su"): per-frequency rescaling factors, the long set once a forward
    pass reaches past `original_max_position_embeddings` (transformers decides by the largest
    position of the pass; keys already cached keep their rotation), and cos/sin scaled by
    `sqrt(1 + ln(factor) / ln(original))`."""

    def __init__(self, theta: float, rotary_dim: int, scaling: dict[str, Any], max_positions: int):
        self.rotary_dim = rotary_dim
        self.original = int(scaling["original_max_position_embeddings"])
        self.short = rope_inv_freq(theta, rotary_dim, scaling["short_factor"])
        self.long = rope_inv_freq(theta, rotary_dim, scaling["long_factor"])
        factor = scaling.get("factor") or max_positions / self.original
        attention_factor = scaling.get("attention_factor")
        if attention_factor is None:
            attention_factor = (
                math.sqrt(1 + math.log(factor) / math.log(self.original)) if factor > 1 else 1.0
            )
        self.attention_factor = float(attention_factor)

    def forward(self, qkv: Tensor, positions: Tensor, num_rotated_heads: int) -> Tensor:
        half, rotary_dim, original = self.rotary_dim // 2, self.rotary_dim, self.original
        factor = tirx.const(self.attention_factor, "float32")

        def compute(qkv, positions, short, long):
            k = te.reduce_axis((0, positions.shape[0]), name="k")
            last = te.compute((1,), lambda _: te.max(positions[k], axis=k), name="last_position")
            seq_len = qkv.shape[1]

            def rotate(b, s, h, d):
                pos = positions[b * seq_len + s]
                i = d % half
                inv_freq = tirx.if_then_else(last[0] + 1 > original, long[i], short[i])
                angle = pos.astype("float32") * inv_freq
                x = qkv[b, s, h, d].astype("float32")
                partner = tirx.if_then_else(
                    d < half, -qkv[b, s, h, d + half], qkv[b, s, h, d - half]
                ).astype("float32")
                rotated = x * (tirx.cos(angle) * factor) + partner * (tirx.sin(angle) * factor)
                inside = tirx.all(h < num_rotated_heads, d < rotary_dim)
                return tirx.if_then_else(inside, rotated.astype(qkv.dtype), qkv[b, s, h, d])

            return te.compute(qkv.shape, rotate, name="longrope")

        short = Tensor.from_const(self.short)
        long = Tensor.from_const(self.long)
        return op.tensor_expr_op(compute, "longrope", [qkv, positions, short, long])
