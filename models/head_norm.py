"""Normalisation of the query and key heads inside the fused QKV projection, before RoPE: Qwen3
and Gemma 3 (RMSNorm per head), OLMo 2 (RMSNorm over all query heads at once, and over all key
heads), StableLM 2 (LayerNorm per head, a weight per head) and Phi (one LayerNorm shared by the
heads).

Each norm is one kernel over the whole `qkv` that rewrites its own heads and copies the others.
Splitting q, k and v and concatenating them again would be simpler, but clspv (the `vulkan`
target's compiler) crashes on the concatenation: a select between loads of different buffers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op

if TYPE_CHECKING:
    from .layers import DecoderConfig


class HeadNorm(nn.Module):
    """The weights (and bias) of one head norm: `weight` is `[head_dim]` (shared by the heads)
    or `[num_heads * head_dim]` (a weight per head, StableLM 2; or one norm over all the heads,
    `across_heads`, OLMo 2). `centered`: LayerNorm (subtract the mean), else RMSNorm. Weights
    stay 1-D: the quantizers take every 2-D weight for a Linear's."""

    def __init__(
        self,
        shape: tuple[int, ...],
        eps: float,
        dtype: str,
        centered: bool = False,
        bias: bool = False,
        across_heads: bool = False,
    ):
        self.weight = nn.Parameter(shape, dtype)
        self.bias = nn.Parameter((shape[-1],), dtype) if bias else None
        self.eps = eps
        self.centered = centered
        self.across_heads = across_heads


def qk_norms(
    config: DecoderConfig, dtype: str, whole_width: bool = False, **options: bool
) -> tuple[HeadNorm, HeadNorm]:
    """A norm of the query heads and one of the key heads, with `HeadNorm`'s `options`: weights
    `[head_dim]` shared by the heads, or (`whole_width`) one value per value of the projection."""
    d = config.head_dim
    heads = (config.num_attention_heads, config.num_key_value_heads) if whole_width else (1, 1)
    return tuple(HeadNorm((n * d,), config.norm_eps, dtype, **options) for n in heads)


def normalize_heads(qkv: Tensor, norm: HeadNorm, first_head: int, num_heads: int) -> Tensor:
    """`qkv[batch, seq, heads, head_dim]` with heads `first_head .. first_head + num_heads - 1`
    normalised by `norm` (statistics in float32), the other heads unchanged.

    Three plain kernels: the mean (LayerNorm only) and the reciprocal standard deviation of each
    group of values `[batch, seq, groups]`, then the elementwise rewrite. (One kernel with all
    three is misscheduled by DLight's GPU reduction rule, which takes the output's extent to be
    the statistics'.)"""
    b, s, heads, head_dim = qkv.shape
    flat = op.reshape(qkv, (b, s, heads * head_dim))
    start, span = first_head * head_dim, num_heads * head_dim
    group = span if norm.across_heads else head_dim  # values that share one mean and variance
    groups, eps = span // group, norm.eps
    shared = int(norm.weight.shape[0]) == head_dim

    def member(x: te.Tensor, i, j, g, r):
        return x[i, j, start + g * group + r].astype("float32")

    def group_sum(x: te.Tensor, name: str) -> te.Tensor:
        r = te.reduce_axis((0, group), name="r")
        return te.compute(
            (x.shape[0], x.shape[1], groups),
            lambda i, j, g: te.sum(member(x, i, j, g, r), axis=r),
            name=name,
        )

    def mean_of(x: te.Tensor) -> te.Tensor:
        total = group_sum(x, "head_sum")
        return te.compute(total.shape, lambda *i: total[i] / group, name="head_mean")

    def rstd_of(x: te.Tensor) -> te.Tensor:
        # The mean is recomputed here: a reduction that also reads another kernel's output is
        # taken for a GEMV by DLight, whose GEMV rule then fails on it.
        total = group_sum(x, "head_sum") if norm.centered else None
        r = te.reduce_axis((0, group), name="r2")

        def square(i, j, g):
            d = member(x, i, j, g, r) - (total[i, j, g] / group if total is not None else 0.0)
            return te.sum(d * d, axis=r)

        spread = te.compute((x.shape[0], x.shape[1], groups), square, name="head_square_sum")
        return te.compute(
            spread.shape, lambda *i: tirx.rsqrt(spread[i] / group + eps), name="head_rstd"
        )

    def apply(x: te.Tensor, rstd: te.Tensor, weight: te.Tensor, *rest: te.Tensor) -> te.Tensor:
        mean = rest[0] if norm.centered else None
        bias = rest[-1] if norm.bias is not None else None

        def out(i, j, k):
            # Clamped, so that the other heads' (unused) branch indexes in bounds too.
            o = tirx.max(tirx.min(k - start, span - 1), 0)
            g = o // group
            # One weight shared by the heads, or one value per value of the span.
            w = weight[o % head_dim] if shared else weight[o]
            x_ = x[i, j, k].astype("float32")
            centred = x_ - mean[i, j, g] if mean is not None else x_
            normed = centred * rstd[i, j, g] * w.astype("float32")
            if bias is not None:
                normed = normed + bias[o % head_dim].astype("float32")
            inside = tirx.all(start <= k, k < start + span)
            return tirx.if_then_else(inside, normed.astype(x.dtype), x[i, j, k])

        return te.compute(x.shape, out, name="head_norm")

    mean = [op.tensor_expr_op(mean_of, "head_mean", [flat])] if norm.centered else []
    rstd = op.tensor_expr_op(rstd_of, "head_rstd", [flat])
    bias = [norm.bias] if norm.bias is not None else []
    out = op.tensor_expr_op(apply, "head_norm", [flat, rstd, norm.weight, *mean, *bias])
    return op.reshape(out, (b, s, heads, head_dim))
