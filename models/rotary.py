"""RoPE variants the paged KV cache cannot apply, computed in the model before attention."""

from __future__ import annotations

import math
from collections.abc import Callable
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
        original = self.original

        def compute(qkv, positions, short, long):
            k = te.reduce_axis((0, positions.shape[0]), name="k")
            last = te.compute((1,), lambda _: te.max(positions[k], axis=k), name="last_position")

            def inv_freq(i):
                return tirx.if_then_else(last[0] + 1 > original, long[i], short[i])

            return rotate_half(
                qkv, positions, inv_freq, self.attention_factor, self.rotary_dim, num_rotated_heads
            )

        short = Tensor.from_const(self.short)
        long = Tensor.from_const(self.long)
        return op.tensor_expr_op(compute, "longrope", [qkv, positions, short, long])


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature `0.1 · mscale · ln(factor) + 1` (1 for factor ≤ 1)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def yarn_parameters(
    theta: float, rotary_dim: int, scaling: dict[str, Any]
) -> tuple[np.ndarray, float]:
    """YaRN's inverse frequencies (float32, as transformers computes them) and the factor on
    cos/sin: frequencies that turn fewer than `beta_slow` times over the original context are
    interpolated (divided by `factor`), those that turn more than `beta_fast` times are kept,
    and a linear ramp over the pair index blends the ones between."""
    original = int(scaling["original_max_position_embeddings"])
    factor = float(scaling["factor"])
    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
        else:
            attention_factor = yarn_mscale(factor)

    def correction_dim(rotations: float) -> float:
        """The pair index whose frequency turns `rotations` times over the original context."""
        return rotary_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low = correction_dim(scaling.get("beta_fast") or 32)
    high = correction_dim(scaling.get("beta_slow") or 1)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rotary_dim - 1)
    if low == high:
        high += 0.001
    half = rotary_dim // 2
    ramp = np.clip((np.arange(half, dtype=np.float32) - low) / (high - low), 0, 1)
    kept = (np.float32(1) - ramp).astype(np.float32)
    extrapolated = rope_inv_freq(theta, rotary_dim, [1.0] * half)
    interpolated = rope_inv_freq(theta, rotary_dim, [factor] * half)
    inv_freq = interpolated * (np.float32(1) - kept) + extrapolated * kept
    return inv_freq.astype(np.float32), float(attention_factor)


class Rotary(nn.Module):
    """Plain RoPE (rotate-half layout over the first `rotary_dim` of each head) with its own
    base and scaling (`linear` or `yarn`), for models whose layers rotate differently (Gemma 3's
    two bases, SmolLM3's layers without RoPE) and for the scalings the cache lacks (YaRN). The
    cache then runs with `RopeMode.NONE`."""

    def __init__(self, theta: float, rotary_dim: int, scaling: dict[str, Any] | None = None):
        self.rotary_dim = rotary_dim
        self.attention_factor = 1.0
        kind = scaling["rope_type"] if scaling is not None else None
        if kind == "yarn":
            self.inv_freq, self.attention_factor = yarn_parameters(theta, rotary_dim, scaling)
        elif kind in (None, "linear"):
            # transformers divides the inverse frequencies by the linear factor.
            factor = float(scaling["factor"]) if scaling is not None else 1.0
            self.inv_freq = rope_inv_freq(theta, rotary_dim, [factor] * (rotary_dim // 2))
        else:
            raise ValueError(f"rope scaling {kind!r} is not supported here")

    def forward(self, qkv: Tensor, positions: Tensor, num_rotated_heads: int) -> Tensor:
        def compute(qkv, positions, inv_freq):
            return rotate_half(
                qkv,
                positions,
                lambda i: inv_freq[i],
                self.attention_factor,
                self.rotary_dim,
                num_rotated_heads,
            )

        inv_freq = Tensor.from_const(self.inv_freq)
        return op.tensor_expr_op(compute, "rotary", [qkv, positions, inv_freq])


def rotate_half(
    qkv: te.Tensor,
    positions: te.Tensor,
    inv_freq: Callable[[tirx.PrimExpr], tirx.PrimExpr],
    factor: float,
    rotary_dim: int,
    num_rotated_heads: int,
) -> te.Tensor:
    """`x * cos + rotate_half(x) * sin` (times `factor`) on the first `rotary_dim` values of the
    first `num_rotated_heads` heads of `qkv[batch, seq, heads, head_dim]`, angles in float32 as
    transformers computes them; the other values pass through."""
    half, seq_len = rotary_dim // 2, qkv.shape[1]
    scale = tirx.const(factor, "float32")

    def rotate(b, s, h, d):
        pos = positions[b * seq_len + s]
        angle = pos.astype("float32") * inv_freq(d % half)
        x = qkv[b, s, h, d].astype("float32")
        partner = tirx.if_then_else(
            d < half, -qkv[b, s, h, d + half], qkv[b, s, h, d - half]
        ).astype("float32")
        rotated = x * (tirx.cos(angle) * scale) + partner * (tirx.sin(angle) * scale)
        inside = tirx.all(h < num_rotated_heads, d < rotary_dim)
        return tirx.if_then_else(inside, rotated.astype(qkv.dtype), qkv[b, s, h, d])

    return te.compute(qkv.shape, rotate, name="rotary")
