"""4-bit group-quantized weights multiplied by int8-quantized activations (`q4a8_1`).

The weights are quantized as in `q4f16_1` (4-bit, group 32, float16 scales, NK; the words
of each block of 16 groups stored transposed, below). Before
each quantized Linear the activations are quantized too, per token and per group of 32 along K:
`xs = max|x| / 127`, `xq = round(x · (127 / max|x|))` (float32, ties to even: one fixed rule
for every kernel and target, since fp16-rounded inputs meet exact ties that another evaluation,
such as `x / xs`, may round the other way), so that each group's dot product is an exact integer
sum, scaled once: `y = Σ_g sw[n, g] · xs[g] · Σ_k (q[n, k] - 7) · xq[k]`. This is how llama.cpp
multiplies Q4_0 weights (with Q8 activations); on CPUs it turns the inner loop into integer
multiply-adds (AVX2 `vpmaddubsw`), several times fewer instructions than dequantizing to float.

Layouts, chosen so that a kernel multiplies unpacked nibbles with contiguous activations and
an integer dot product instruction sums each group into its own lane. Groups are taken in blocks
of 16 (512 values). In a block, weight words are stored transposed: the block's 64 words,
logically `[group g][word j]` (word j of a group holds its values 8j .. 8j+7), are stored as
`[j][g]`; so 64 bytes of weights (one 512-bit register) hold word j of each of the 16 groups.
The low and high nibbles of a weight byte are an even and the following odd value, and `xq`
stores a block as, for each j, the even values then the odd values of word j of each group
(`[j][even/odd][g][4]`): `vpdpbusd` of the low nibbles with the first 64 bytes, then of the
high nibbles with the next 64, leaves group g's partial sums in lane g (on 256-bit registers,
groups 0-7 and 8-15 are two halves of each 64 bytes). The groups after the whole blocks stay in
place and are "pair-interleaved" in `xq`: a pair's 64 values as [even values of the first group,
even of the second, odd of the first, odd of the second] (16 each); a last unpaired group as
[its 16 even, its 16 odd values].
`xc[g] = -7 · xs[g] · Σ xq[g]` carries the zero point, so kernels multiply the unsigned nibbles
directly. The same kernels compute llama.cpp's 4-bit blocks (`ggml_blocks`): `Q4_0`'s zero point
8 makes `xc = -8 · xs · Σ xq`, and `Q4_1`'s per-group minimum `m` (`w = d · q + m`) takes
`xc = xs · Σ xq`, the group's activation sum, which the kernel multiplies by `m` instead of `d`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op

from .group_quant import (
    GroupQuantization,
    GroupQuantizedEmbedding,
    GroupQuantizedExperts,
    _SwapLayers,
)

GROUP = 32
ACT_MAX = 127
KERNEL_ATTR = "mlc.kernel"
Q4A8_MATMUL = "q4a8_matmul"
Q4A8_GATHER_MATMUL = "q4a8_gather_matmul"
QUANTIZE_ACTIVATIONS = "quantize_activations"


BLOCK_GROUPS = 16  # groups whose weight words are stored transposed, summed lane by lane
BLOCK = BLOCK_GROUPS * GROUP  # values per block
BLOCK_WORDS = BLOCK // 8  # 4-bit words per block


def stored_word(word, words: int):
    """Where logical 4-bit word `word` of a `words`-word row is stored (numpy or TIR)."""
    whole = words // BLOCK_WORDS * BLOCK_WORDS
    block, inner = word // BLOCK_WORDS, word % BLOCK_WORDS
    moved = BLOCK_WORDS * block + BLOCK_GROUPS * (inner % 4) + inner // 4
    if isinstance(word, np.ndarray):
        return np.where(word < whole, moved, word)
    return tirx.Select(word < whole, moved, word)


def block_offset(j: int, odd: int) -> int:
    """Where in a block of `xq` the even (`odd` 0) or odd values of word j of its groups start."""
    return 4 * BLOCK_GROUPS * (2 * j + odd)


def source_index(position: int | tirx.PrimExpr, num_groups: int):
    """The activation index `k` stored at `position` of `xq`."""
    whole = num_groups // BLOCK_GROUPS * BLOCK
    offset = position % BLOCK
    span = 4 * BLOCK_GROUPS  # the even (or odd) values of one word of each group
    j, odd = offset // (2 * span), (offset // span) % 2
    g, c = (offset % span) // 4, offset % 4
    blocked = BLOCK * (position // BLOCK) + GROUP * g + 8 * j + 2 * c + odd
    pair, in_pair_offset = position // (2 * GROUP), position % (2 * GROUP)
    segment, lane = in_pair_offset // 16, in_pair_offset % 16
    paired = 2 * GROUP * pair + GROUP * (segment % 2) + 2 * lane + segment // 2
    single = GROUP * (position // GROUP) + 2 * (position % 16) + (position % GROUP) // 16
    if isinstance(position, int):
        if position < whole:
            return blocked
        return paired if 2 * pair + 1 < num_groups else single
    tail = tirx.Select(2 * pair + 1 < num_groups, paired, single)
    return tirx.Select(position < whole, blocked, tail)


def stored_position(k, num_groups: int):
    """Where activation index `k` is stored in `xq` (numpy or TIR): the inverse of
    `source_index`."""
    whole = num_groups // BLOCK_GROUPS * BLOCK
    offset = k % BLOCK
    g, j, c, odd = offset // GROUP, (offset % GROUP) // 8, (k % 8) // 2, k % 2
    blocked = BLOCK * (k // BLOCK) + 4 * BLOCK_GROUPS * (2 * j + odd) + 4 * g + c
    e = k % GROUP
    paired = 2 * GROUP * (k // (2 * GROUP)) + 16 * ((k // GROUP) % 2 + 2 * (e % 2)) + e // 2
    single = GROUP * (k // GROUP) + 16 * (e % 2) + e // 2
    pair_complete = 2 * (k // (2 * GROUP)) + 1 < num_groups
    if isinstance(k, np.ndarray):
        return np.where(k < whole, blocked, np.where(pair_complete, paired, single))
    if isinstance(k, int):
        if k < whole:
            return blocked
        return paired if pair_complete else single
    return tirx.Select(k < whole, blocked, tirx.Select(pair_complete, paired, single))


def high_bit(v):
    """Where a 5-bit format's `q_high` word keeps the fifth bit of value v of its group (numpy
    or TIR): value `v = 8j + 2b + p` (word j, byte b, low or high nibble p) in bit
    `8b + 2j + p`, so that word j's fifth bits shifted right by `2j + p` and masked with
    `0x01010101` line up with its bytes."""
    return 8 * ((v % 8) // 2) + 2 * (v // 8) + v % 2


def stored_byte(tensor, row, position) -> tirx.PrimExpr:
    """Byte `position` of `tensor[row]` as uint32: an element of a uint8 tensor, or a byte of
    uint32 words (four bytes each, least significant first); `row` is a row, or an
    `(expert, row)` pair of stacked experts."""
    row = row if isinstance(row, tuple) else (row,)
    if str(tensor.dtype) == "uint8":
        return tensor[(*row, position)].astype("uint32")
    shift = ((position % 4) * 8).astype("uint32")
    return (tensor[(*row, position // 4)] >> shift) & tirx.const(255, "uint32")


def as_signed(byte) -> tirx.PrimExpr:
    """A byte (uint32, 0..255) read as two's complement, float32."""
    high = (byte & tirx.const(128, "uint32")) << tirx.const(1, "uint32")
    return (byte.astype("int32") - high.astype("int32")).astype("float32")


def signed_byte(words, row, position) -> tirx.PrimExpr:
    """Byte `position` of `words[row]` (uint32, four bytes each, least significant first) as a
    signed value, float32; `row` is a row, or an `(expert, row)` pair of stacked experts."""
    return as_signed(stored_byte(words, row, position))


def fifth_bit(q_high, row, k) -> tirx.PrimExpr:
    """Value k's fifth bit (uint32, 0 or 1) from a 5-bit format's `q_high` words (stored in
    `high_bit`'s order); `row` is a row, or an `(expert, row)` pair of stacked experts."""
    index = (*row, k // GROUP) if isinstance(row, tuple) else (row, k // GROUP)
    return (q_high[index] >> high_bit(k % GROUP).astype("uint32")) & tirx.const(1, "uint32")


def signed_scale(q_ksc, row: tuple, index) -> tirx.PrimExpr:
    """Byte `index` of a `Q6_K` row's scales `q_ksc` (two's complement; uint8, or uint32 words
    as `stored_byte` reads them) as float32; `row`: `(n,)`, or `(expert, n)`."""
    return as_signed(stored_byte(q_ksc, row, index))


def _stored_integer(scheme, q_weight, q_high, row, k, p, weight_bits: int) -> tirx.PrimExpr:
    """The integer a weight stores for activation index k (at `xq` position p), float32:
    signed bytes (8-bit, kept in `xq`'s layout), unsigned nibbles with the fifth bit on top
    (5-bit), or with the fifth and sixth bits on top (6-bit, `Q6_K`: `q_high` the pair of bit
    tensors); `row` as in `fifth_bit`."""
    if weight_bits == 8:
        return signed_byte(q_weight, row, p)
    w = scheme.packed_value(q_weight, row, k)
    if weight_bits == 5:
        w = w + fifth_bit(q_high, row, k).astype("float32") * tirx.const(16, "float32")
    if weight_bits == 6:
        fifth, sixth = (fifth_bit(bits, row, k).astype("float32") for bits in q_high)
        w = w + fifth * tirx.const(16, "float32") + sixth * tirx.const(32, "float32")
    return w


def _weight_inputs(
    q_weight, q_scale, q_min, q_high, weight_bits: int, k_scales=None, q_sixth=None
) -> list:
    """The stored tensors a kernel takes, in its parameter order: weights, scales, then the
    minima, a K-quant's super-block scales and the fifth and sixth bits where the format has
    them."""
    if (weight_bits in (5, 6)) != (q_high is not None):
        raise ValueError("5- and 6-bit weights come with their fifth bits (q_high), only they do")
    if (weight_bits == 6) != (q_sixth is not None and k_scales is not None and q_min is None):
        raise ValueError("6-bit weights (Q6_K) take sixth bits and K-quant scales, no minima")
    if k_scales is not None and q_min is None and weight_bits != 6:
        raise ValueError("K-quant scales come with their minima")
    optional = (q_min, k_scales, q_high, q_sixth)
    return [q_weight, q_scale] + [t for t in optional if t is not None]


K_RUNS = 8  # groups of 32 per K-quant super-block


def _unpack_rest(rest, has_min: bool, has_k: bool, weight_bits: int) -> tuple:
    """A kernel's stored tensors after the scales (`_weight_inputs`' order) → (minima, super-
    block scales, fifth bits; 6-bit: the pair of fifth and sixth bits), None where absent."""
    rest = list(rest)
    q_min = rest.pop(0) if has_min else None
    q_kd = rest.pop(0) if has_k else None
    q_high = tuple(rest) if weight_bits == 6 else rest[0] if weight_bits == 5 else None
    return q_min, q_kd, q_high


def _group_scale(q_scale, q_kd, row: tuple, k, weight_bits: int) -> tirx.PrimExpr:
    """The scale (float32) of activation index k's weight in the weight row `row` (`(n,)`, or
    `(expert, n)`): its group's as stored; with a K-quant's super-block scales `q_kd`, its
    run's 6-bit byte times `d`; 6-bit (`Q6_K`): its half-run's int8 byte times `d`."""
    if weight_bits == 6:
        d = q_kd[(*row, k // (GROUP * K_RUNS))].astype("float32")
        return signed_scale(q_scale, row, k // (GROUP // 2)) * d
    g = k // GROUP
    scale = q_scale[(*row, g)].astype("float32")
    if q_kd is None:
        return scale
    return scale * q_kd[(*row, 2 * (g // K_RUNS))].astype("float32")


def _sum_weight(q_scale, q_min, q_kd, row: tuple, g, weight_bits: int) -> tirx.PrimExpr:
    """What activation sum g's `xc` term is weighted by (float32): its group's minimum where
    the format has one (a K-quant's: its 6-bit byte times `-dmin`), else its group's scale
    (6-bit: sum g is half-run g's, weighted by that half-run's scale)."""
    if weight_bits == 6:
        return _group_scale(q_scale, q_kd, row, g * (GROUP // 2), weight_bits)
    if q_min is None:
        return q_scale[(*row, g)].astype("float32")
    minimum = q_min[(*row, g)].astype("float32")
    if q_kd is None:
        return minimum
    return minimum * -q_kd[(*row, 2 * (g // K_RUNS) + 1)].astype("float32")


def activation_layout(k_padded: int) -> np.ndarray:
    """`perm` with `xq[..., p] = x[..., perm[p]]` (numpy reference of `source_index`)."""
    groups = k_padded // GROUP
    return np.array([source_index(p, groups) for p in range(k_padded)], dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class Int8ActivationQuantization(GroupQuantization):
    """`GroupQuantization` weights (4-bit, group 32); int8 activations in every Linear."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bits != 4 or self.group_size != GROUP:
            raise ValueError(f"{self.name}: int8 activations need 4-bit weights in groups of 32")

    def describe(self) -> dict:
        return {
            **super().describe(),
            "storage": "uint32, 8 values per word, NK, the words of each 16 groups transposed",
            "activations": "int8 per token and group of 32 (block-transposed) in every Linear "
            "and expert matmul",
        }

    def stored_word(self, word, words: int):
        return stored_word(word, words)

    @property
    def sum_factor(self) -> float:
        """`xc = sum_factor · xs · Σ xq`: minus the zero point of the unsigned weights."""
        return -float(self.max_int)

    def quantize_model(self, model: nn.Module) -> nn.Module:
        return _SwapLayers(
            self, Int8ActivationLinear, Int8ActivationEmbedding, Int8ActivationExperts
        ).visit("", model)


def quantize_activations(
    x: Tensor, k: int, sum_factor: float = -7.0, halves: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """`x[..., k]` float → (`xq` int8 `[..., Kp]` in the kernel layout, `xs`, and
    `xc = sum_factor · xs · Σ xq` `[..., G]`, or with `halves` `[..., 2G]`: the sums over each
    half of a group, for `Q6_K`'s half-runs of 16)."""
    groups = (k + GROUP - 1) // GROUP
    parts = 2 if halves else 1
    span = GROUP // parts

    def compute(x: te.Tensor):
        lead = tuple(x.shape[:-1])

        def value(row, index):
            inside = x[(*row, tirx.min(index, k - 1))].astype("float32")
            return tirx.if_then_else(index < k, inside, tirx.const(0.0))

        r = te.reduce_axis((0, GROUP), name="r")
        absmax = te.compute(
            (*lead, groups),
            lambda *i: te.max(tirx.abs(value(i[:-1], i[-1] * GROUP + r)), axis=r),
            name="absmax",
        )
        xs = te.compute(absmax.shape, lambda *i: absmax[i] / ACT_MAX, name="xs")

        inverse = te.compute(
            absmax.shape,
            lambda *i: tirx.if_then_else(
                absmax[i] > 0, tirx.const(float(ACT_MAX)) / absmax[i], tirx.const(0.0)
            ),
            name="inverse_scale",
        )

        def quantized(*i):
            row, g = i[:-1], i[-1] // GROUP
            return tirx.round(value(row, i[-1]) * inverse[(*row, g)]).astype("int8")

        natural = te.compute((*lead, groups * GROUP), quantized, name="xq_natural")
        xq = te.compute(
            natural.shape,
            lambda *i: natural[(*i[:-1], source_index(i[-1], groups))],
            name="xq",
        )
        s = te.reduce_axis((0, span), name="s")
        total = te.compute(
            (*lead, groups * parts),
            lambda *i: te.sum(natural[(*i[:-1], i[-1] * span + s)].astype("int32"), axis=s),
        )
        xc = te.compute(
            total.shape,
            lambda *i: (
                tirx.const(sum_factor) * xs[(*i[:-1], i[-1] // parts)] * total[i].astype("float32")
            ),
            name="xc",
        )
        return [xq, xs, xc]

    xq, xs, xc = op.tensor_expr_op(
        compute,
        QUANTIZE_ACTIVATIONS,
        [x],
        attrs={
            KERNEL_ATTR: QUANTIZE_ACTIVATIONS,
            "mlc.k": k,
            "mlc.sum_factor": float(sum_factor),
            "mlc.halves": halves,
            "mlc.dtype": x.dtype,
            "mlc.ndim": len(x.shape),
            "op_pattern": 8,  # opaque: never fused, so a target can swap in its own kernel
        },
    )
    return xq, xs, xc


def q4a8_matmul(
    scheme: Int8ActivationQuantization,
    xq: Tensor,
    xs: Tensor,
    xc: Tensor,
    q_weight: Tensor,
    q_scale: Tensor,
    n: int,
    q_min: Tensor | None = None,
    weight_bits: int = 4,
    q_high: Tensor | None = None,
    k_scales: Tensor | None = None,
    q_sixth: Tensor | None = None,
) -> Tensor:
    """`y[..., n]` float32; the portable reference every target may replace with its own
    kernel (the attribute `mlc.kernel` names it). With `q_min` (per-group minima, `Q4_1`) the
    `xc` term is weighted by the minima instead of the scales. `weight_bits` 8 takes signed
    bytes (`Q8_0`), four per word, each row's bytes in the layout of `xq` itself; 5 takes the
    fifth bits from `q_high` (`Q5_0`, `Q5_1`, in `high_bit`'s order). With `k_scales`
    (float16 `[N, K / 256 · 2]`: each super-block's `d` and `dmin`), `q_scale` and `q_min`
    are a K-quant's 6-bit run scales and minima as bytes: a group's scale is `d · sc`, its
    minimum `-dmin · m` (`kquant_nibbles`). `weight_bits` 6 is `Q6_K`: `q_high` and `q_sixth`
    the fifth and sixth bits, `q_scale` the int8 scales of the half-runs of 16, `k_scales`
    each super-block's `d` (`[N, K / 256]`), `xc` one per half-run (`quantize_activations`'
    `halves`: the zero point 32 enters as for `Q4_0`)."""
    has_k = k_scales is not None

    def compute(xq, xs, xc, q_weight, q_scale, *rest):
        q_min, q_kd, q_high = _unpack_rest(rest, has_min, has_k, weight_bits)

        lead, kp = tuple(xq.shape[:-1]), xq.shape[-1]
        groups = kp // GROUP
        p = te.reduce_axis((0, kp), name="p")
        g = te.reduce_axis((0, groups * (2 if weight_bits == 6 else 1)), name="g")

        def term(row, j, p):
            k = source_index(p, groups)
            scale = _group_scale(q_scale, q_kd, (j,), k, weight_bits) * xs[(*row, k // GROUP)]
            w = _stored_integer(scheme, q_weight, q_high, j, k, p, weight_bits)
            return w * xq[(*row, p)].astype("float32") * scale

        dots = te.compute(
            (*lead, n), lambda *i: te.sum(term(i[:-1], i[-1], p), axis=p), name="dots"
        )
        zero = te.compute(
            (*lead, n),
            lambda *i: te.sum(
                _sum_weight(q_scale, q_min, q_kd, (i[-1],), g, weight_bits) * xc[(*i[:-1], g)],
                axis=g,
            ),
            name="zero_point",
        )
        return te.compute((*lead, n), lambda *i: dots[i] + zero[i], name=Q4A8_MATMUL)

    has_min = q_min is not None
    weights = _weight_inputs(q_weight, q_scale, q_min, q_high, weight_bits, k_scales, q_sixth)
    inputs = [xq, xs, xc, *weights]
    return op.tensor_expr_op(
        compute,
        Q4A8_MATMUL,
        inputs,
        attrs={
            KERNEL_ATTR: Q4A8_MATMUL,
            "mlc.k_scales": has_k,
            "mlc.has_min": q_min is not None,
            "mlc.weight_bits": weight_bits,
            "mlc.n": n,
            "mlc.k_padded": int(xq.shape[-1]),
            "mlc.scale_dtype": str(q_scale.dtype),
            "mlc.ndim": len(xq.shape),
            "op_pattern": 8,  # opaque: never fused, so a target can swap in its own kernel
        },
    )


def _linear(scheme, x: Tensor, q_weight, q_scale, k: int, n: int) -> Tensor:
    xq, xs, xc = quantize_activations(x, k, scheme.sum_factor)
    return q4a8_matmul(scheme, xq, xs, xc, q_weight, q_scale, n)


class Int8ActivationLinear(nn.Module):
    def __init__(self, scheme: Int8ActivationQuantization, k: int, n: int, bias: bool, dtype: str):
        self.scheme, self.in_features, self.out_features = scheme, k, n
        self.q_weight, self.q_scale = scheme.packed_params(n, k)
        self.bias = nn.Parameter((n,), dtype) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        k, n = self.in_features, self.out_features
        y = _linear(self.scheme, x, self.q_weight, self.q_scale, k, n)
        return y + self.bias if self.bias is not None else y


def q4a8_gather_matmul(
    scheme: Int8ActivationQuantization,
    xq: Tensor,
    xs: Tensor,
    xc: Tensor,
    ids: Tensor,
    q_weight: Tensor,
    q_scale: Tensor,
    name: str,
    shared: bool,
    q_min: Tensor | None = None,
    weight_bits: int = 4,
    q_high: Tensor | None = None,
    k_scales: Tensor | None = None,
    q_sixth: Tensor | None = None,
) -> Tensor:
    """`y[t, j, n]`: `q4a8_matmul` of slot j of token t with the weights of its expert
    `ids[t, j]` (`q_weight` `[experts, N, words]`, the other stored tensors `[experts, N,
    groups]`; `q_min`, `weight_bits`, `q_high`, `k_scales` (`[experts, N, K / 256 · 2]`) and
    `q_sixth` as in `q4a8_matmul`), float32. The
    activations are one row per token (`xq` `[1, tokens, Kp]`: every slot multiplies the same
    input) or per slot (`[tokens, top_k, Kp]`), as `shared` says. The portable reference; x86
    swaps in its own kernel."""
    n = int(q_weight.shape[1])
    has_min, has_k = q_min is not None, k_scales is not None
    weights = _weight_inputs(q_weight, q_scale, q_min, q_high, weight_bits, k_scales, q_sixth)

    def compute(xq, xs, xc, ids, q_weight, q_scale, *rest):
        q_min, q_kd, q_high = _unpack_rest(rest, has_min, has_k, weight_bits)

        tokens, top_k = ids.shape
        kp = xq.shape[-1]
        groups = kp // GROUP
        p = te.reduce_axis((0, kp), name="p")
        g = te.reduce_axis((0, groups * (2 if weight_bits == 6 else 1)), name="g")

        def row(t, j):
            return (0, t) if shared else (t, j)

        def term(t, j, m):
            e, k = ids[t, j], source_index(p, groups)
            w = _stored_integer(scheme, q_weight, q_high, (e, m), k, p, weight_bits)
            scale = _group_scale(q_scale, q_kd, (e, m), k, weight_bits)
            scale = scale * xs[(*row(t, j), k // GROUP)]
            return w * xq[(*row(t, j), p)].astype("float32") * scale

        dots = te.compute(
            (tokens, top_k, n), lambda t, j, m: te.sum(term(t, j, m), axis=p), name="dots"
        )
        zero = te.compute(
            (tokens, top_k, n),
            lambda t, j, m: te.sum(
                _sum_weight(q_scale, q_min, q_kd, (ids[t, j], m), g, weight_bits)
                * xc[(*row(t, j), g)],
                axis=g,
            ),
            name="zero_point",
        )
        return te.compute((tokens, top_k, n), lambda *i: dots[i] + zero[i], name=name)

    return op.tensor_expr_op(
        compute,
        name,
        [xq, xs, xc, ids, *weights],
        attrs={
            KERNEL_ATTR: Q4A8_GATHER_MATMUL,
            "mlc.k_scales": has_k,
            "mlc.has_min": has_min,
            "mlc.weight_bits": weight_bits,
            "mlc.n": n,
            "mlc.k_padded": int(xq.shape[-1]),
            "mlc.experts": int(q_weight.shape[0]),
            "mlc.top_k": int(ids.shape[1]),
            "mlc.shared": shared,
            "mlc.scale_dtype": str(q_scale.dtype),
            "mlc.ndim": 3,  # the x86 kernels' activations (`[batch, seq, k]`) fit
            "op_pattern": 8,  # opaque: never fused, so a target can swap in its own kernel
        },
    )


def int8_expert_matmul(
    scheme: Int8ActivationQuantization,
    x: Tensor,
    ids: Tensor,
    k: int,
    sum_factor: float,
    weights: dict[str, Tensor],
    name: str,
    weight_bits: int = 4,
) -> Tensor:
    """`q4a8_gather_matmul` of float `x` — `[tokens, k]`, the gate/up input every slot of a
    token shares, quantized once per token; or `[tokens, top_k, k]`, the down input, once per
    slot — with the stored tensors `weights` (`q_weight`, `q_scale`, and `q_min`/`q_high`/`q_kd`/
    `q_sixth` where the format has them, `[experts, N, ...]`)."""
    shared = len(x.shape) == 2
    # The activation kernels take `[batch, seq, k]`: `[1, tokens, k]` for the gate/up input.
    xq, xs, xc = quantize_activations(
        op.unsqueeze(x, 0) if shared else x, k, sum_factor, halves=weight_bits == 6
    )
    return q4a8_gather_matmul(
        scheme,
        xq,
        xs,
        xc,
        ids,
        weights["q_weight"],
        weights["q_scale"],
        name,
        shared,
        weights.get("q_min"),
        weight_bits,
        weights.get("q_high"),
        weights.get("q_kd"),
        weights.get("q_sixth"),
    )


class Int8ActivationExperts(GroupQuantizedExperts):
    """`GroupQuantizedExperts` whose gather matmuls take int8 activations: quantized once per
    token (the gate/up input, shared by the token's experts) or per slot (the down input)."""

    def forward(self, x: Tensor, ids: Tensor) -> Tensor:
        weights = {"q_weight": self.q_weight, "q_scale": self.q_scale}
        k, sum_factor = self.in_features, self.scheme.sum_factor
        return int8_expert_matmul(self.scheme, x, ids, k, sum_factor, weights, self.kernel_name)


class Int8ActivationEmbedding(GroupQuantizedEmbedding):
    """Looks rows up like `GroupQuantizedEmbedding`; as the tied LM head it uses int8 too."""

    def lm_head_forward(self, x: Tensor) -> Tensor:
        return _linear(self.scheme, x, self.q_weight, self.q_scale, self.dim, self.num)
