"""llama.cpp's block formats `Q4_0`, `Q4_1`, `Q5_0`, `Q5_1` and `Q8_0`, kept as the GGUF file has
them and computed by our kernels.

Each format stores a row of K values in blocks of 32 with a float16 scale `d` per block; `Q4_1`
and `Q5_1` add a float16 minimum `m`, so that `w = d · q + m`; the others subtract a zero point,
`w = d · (q - z)` (`z` = 8 for `Q4_0`, 16 for `Q5_0`; `Q8_0`'s `q` is a signed byte, `z` = 0).

We store the same bits, moved (a lossless permutation, `to_ggml_blocks` puts them back):
- `q_weight` uint32 `[N, K / 8]` (4- and 5-bit: the low nibbles, 8 per word, value `8j + e` of
  a row in bits `4e` of its word `j`; 4-bit words in `q4a8_1`'s block-transposed order, since
  its int8-activation kernels compute `Q4_0`/`Q4_1`) or `[N, K / 4]` (`Q8_0`: the signed bytes,
  four per word, least significant first, each row's bytes in the order the int8 kernels store
  activations, `int8_activations.source_index`, so that weights and activations meet lane by
  lane);
- `q_scale` float16 `[N, K / 32]`; `q_min` float16 `[N, K / 32]` (`Q4_1`, `Q5_1`);
- `q_high` uint32 `[N, K / 32]` (`Q5_0`, `Q5_1`): the block's 32 fifth bits (the GGUF block's
  `qh` word, bit v for value v), moved as `int8_activations.high_bit` says, so that a kernel
  turns word j's fifth bits into bytes `0x10` lined up with the word's nibbles by one shift
  and one mask.

Every format multiplies int8-quantized activations (the `q4a8_1` kernels, as llama.cpp
multiplies its block formats with its `Q8_0`/`Q8_1` activations); the 5-bit values are the
nibble with its fifth bit set on top, unsigned bytes as the 4-bit ones.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op

from mlc.models.moe import Experts, gathered_rows

from .int8_activations import (
    Int8ActivationQuantization,
    activation_layout,
    fifth_bit,
    high_bit,
    int8_expert_matmul,
    q4a8_matmul,
    quantize_activations,
    signed_byte,
    stored_position,
    stored_word,
)

BLOCK = 32
# The layout (4-bit words in blocks of 16 groups) and the kernel kind the int8 path shares.
_Q4_LAYOUT = Int8ActivationQuantization("q4a8_1", "float32", bits=4, group_size=BLOCK)


@dataclasses.dataclass(frozen=True)
class GGMLFormat:
    name: str
    type_size: int  # bytes per block of 32 values in the GGUF file
    bits: int  # 4, 5 or 8
    has_min: bool
    zero: int  # subtracted from the stored integer (formats without a minimum)

    block_size = BLOCK

    @property
    def int8_activations(self) -> bool:
        """Computed by the int8-activation kernels (all of these formats)."""
        return self.bits in (4, 5, 8)

    @property
    def int8_experts(self) -> bool:
        """A mixture's experts in this format take int8 activations too."""
        return self.int8_activations

    @property
    def per_word(self) -> int:
        return 4 if self.bits == 8 else 8

    @property
    def sum_factor(self) -> float:
        """`xc = sum_factor · xs · Σ xq` for the int8 kernels: the activation sum, weighted by
        the minima, or minus the zero point, weighted by the scales."""
        if self.has_min:
            return 1.0
        return -float(self.zero) if self.zero else 0.0

    # --- numpy: GGUF blocks ↔ stored tensors, and the reference dequantization -------------

    def from_ggml_blocks(self, blocks: np.ndarray) -> dict[str, np.ndarray]:
        """GGUF blocks uint8 `[N, K / 32, type_size]` → the stored tensors by suffix."""
        n, nb, size = blocks.shape
        if size != self.type_size:
            raise ValueError(f"{self.name} blocks have {self.type_size} bytes, got {size}")
        fields = _Fields(blocks)
        out = {"q_scale": fields.f16(0)}
        if self.has_min:
            out["q_min"] = fields.f16(2)
        if self.bits == 8:
            natural = blocks[..., 2:].reshape(n, nb * BLOCK)
            permuted = np.ascontiguousarray(natural[:, activation_layout(nb * BLOCK)])
            out["q_weight"] = permuted.view(np.uint32)
            return _ordered(out)
        if self.bits == 5:
            out["q_high"] = move_high_bits(fields.u32(4 if self.has_min else 2), HIGH_BIT)
        qs = blocks[..., self.type_size - 16 :]
        nibbles = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).reshape(n, nb * BLOCK)
        out["q_weight"] = pack_nibbles(nibbles, self.int8_activations)
        return _ordered(out)

    def to_ggml_blocks(self, stored: dict[str, np.ndarray]) -> np.ndarray:
        """The inverse of `from_ggml_blocks`: the GGUF file's bytes, bit for bit."""
        words = stored["q_weight"]
        n = words.shape[0]
        nb = stored["q_scale"].shape[1]
        parts = [stored["q_scale"].astype(np.float16).view(np.uint8).reshape(n, nb, 2)]
        if self.has_min:
            parts.append(stored["q_min"].astype(np.float16).view(np.uint8).reshape(n, nb, 2))
        if self.bits == 8:
            parts.append(_natural_bytes(words).view(np.uint8).reshape(n, nb, BLOCK))
            return np.concatenate(parts, axis=-1)
        if self.bits == 5:
            high = move_high_bits(stored["q_high"], np.argsort(HIGH_BIT))
            parts.append(high.view(np.uint8).reshape(n, nb, 4))
        nibbles = unpack_nibbles(words, self.int8_activations).reshape(n, nb, BLOCK)
        parts.append((nibbles[..., :16] | (nibbles[..., 16:] << 4)).astype(np.uint8))
        return np.concatenate(parts, axis=-1)

    def dequantize(self, stored: dict[str, np.ndarray]) -> np.ndarray:
        """`w` float32 `[N, K]` from the stored tensors."""
        words = stored["q_weight"]
        if self.bits == 8:
            q = _natural_bytes(words).view(np.int8).astype(np.float32)
        else:
            q = unpack_nibbles(words, self.int8_activations).astype(np.int32)
            if self.bits == 5:
                high = np.ascontiguousarray(stored["q_high"], dtype=np.uint32)
                bits = (high[..., None] >> HIGH_BIT.astype(np.uint32)) & 1
                q = q | (bits.reshape(q.shape).astype(np.int32) << 4)
            q = q.astype(np.float32)
        d = np.repeat(stored["q_scale"].astype(np.float32), BLOCK, axis=1)
        if self.has_min:
            return d * q + np.repeat(stored["q_min"].astype(np.float32), BLOCK, axis=1)
        return d * (q - self.zero)

    # --- the model's parameters and their dequantized values in kernels ----------------------

    def params(self, rows: int, k: int) -> dict[str, nn.Parameter]:
        groups = k // BLOCK
        out = {
            "q_weight": nn.Parameter((rows, k // self.per_word), "uint32"),
            "q_scale": nn.Parameter((rows, groups), "float16"),
        }
        if self.has_min:
            out["q_min"] = nn.Parameter((rows, groups), "float16")
        if self.bits == 5:
            out["q_high"] = nn.Parameter((rows, groups), "uint32")
        return _ordered(out)

    def int8_operands(self, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        """What the int8 kernels take: the stored tensors themselves."""
        return tensors

    def value(self, tensors: dict[str, te.Tensor], n, k) -> tirx.PrimExpr:
        """`w[n, k]` in float32, read from the stored tensors inside a kernel."""
        words = tensors["q_weight"]
        g = k // BLOCK
        if self.bits == 8:
            q = signed_byte(words, n, stored_position(k, int(words.shape[1]) // 8))
        else:
            word_index = k // 8
            if self.int8_activations:
                word_index = stored_word(word_index, int(words.shape[1]))
            q = (words[n, word_index] >> ((k % 8) * 4).astype("uint32")) & tirx.const(15, "uint32")
            if self.bits == 5:
                q = q | (fifth_bit(tensors["q_high"], n, k) << tirx.const(4, "uint32"))
            q = q.astype("float32")
        d = tensors["q_scale"][n, g].astype("float32")
        if self.has_min:
            return d * q + tensors["q_min"][n, g].astype("float32")
        return d * (q - tirx.const(float(self.zero), "float32"))


FORMATS: dict[str, GGMLFormat] = {
    f.name: f
    for f in (
        GGMLFormat("Q4_0", 18, 4, has_min=False, zero=8),
        GGMLFormat("Q4_1", 20, 4, has_min=True, zero=0),
        GGMLFormat("Q5_0", 22, 5, has_min=False, zero=16),
        GGMLFormat("Q5_1", 24, 5, has_min=True, zero=0),
        GGMLFormat("Q8_0", 34, 8, has_min=False, zero=0),
    )
}
_ORDER = ("q_weight", "q_scale", "q_min", "q_high")

HIGH_BIT = high_bit(np.arange(BLOCK))


def move_high_bits(words: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Bit v of each uint32 moved to bit `where[v]`."""
    bits = (np.ascontiguousarray(words, dtype=np.uint32)[..., None] >> np.arange(BLOCK)) & 1
    moved = bits.astype(np.uint32) << where.astype(np.uint32)
    return np.bitwise_or.reduce(moved, axis=-1).astype(np.uint32)


def _ordered(tensors: dict) -> dict:
    """The stored tensors in one order: the tensor cache and the parameters list them alike."""
    return {key: tensors[key] for key in _ORDER if key in tensors}


class _Fields:
    """Little-endian fields at a byte offset of every block, as `[N, K / 32]` arrays."""

    def __init__(self, blocks: np.ndarray):
        self.blocks = blocks

    def f16(self, start: int) -> np.ndarray:
        raw = np.ascontiguousarray(self.blocks[..., start : start + 2])
        return raw.view(np.float16)[..., 0]

    def u32(self, start: int) -> np.ndarray:
        raw = np.ascontiguousarray(self.blocks[..., start : start + 4])
        return raw.view(np.uint32)[..., 0]


def _natural_bytes(words: np.ndarray) -> np.ndarray:
    """`Q8_0` words `[N, K / 4]` → the row's bytes `[N, K]` in their natural order."""
    stored = np.ascontiguousarray(words).view(np.uint8)
    natural = np.empty_like(stored)
    natural[:, activation_layout(stored.shape[1])] = stored
    return natural


def pack_nibbles(values: np.ndarray, transposed: bool) -> np.ndarray:
    """uint values `[N, K]` (< 16) → words `[N, K / 8]`, value `8j + e` in bits `4e` of word j
    (stored at `stored_word(j)` when `transposed`)."""
    n, k = values.shape
    lanes = values.reshape(n, k // 8, 8).astype(np.uint32)
    shifts = (np.arange(8, dtype=np.uint32) * 4)[None, None, :]
    logical = np.bitwise_or.reduce(lanes << shifts, axis=-1).astype(np.uint32)
    if not transposed:
        return logical
    words = np.empty_like(logical)
    words[:, stored_word(np.arange(logical.shape[1]), logical.shape[1])] = logical
    return words


def unpack_nibbles(words: np.ndarray, transposed: bool) -> np.ndarray:
    if transposed:
        words = words[:, stored_word(np.arange(words.shape[1]), words.shape[1])]
    shifts = (np.arange(8, dtype=np.uint32) * 4)[None, None, :]
    return ((words[..., None] >> shifts) & np.uint32(15)).reshape(words.shape[0], -1)


# --- layers ------------------------------------------------------------------------------------


def block_matmul(
    fmt: GGMLFormat, x: Tensor, tensors: dict[str, Tensor], k: int, n: int, int8: bool = True
) -> Tensor:
    """`x[..., K] @ w[N, K]^T` in float32: int8 activations for the formats that have them
    (with `int8`), else one kernel that dequantizes inside the reduction."""
    if int8 and fmt.int8_activations:
        xq, xs, xc = quantize_activations(x, k, fmt.sum_factor, halves=fmt.bits == 6)
        operands = fmt.int8_operands(tensors)
        q_weight, q_scale, q_min = operands["q_weight"], operands["q_scale"], operands.get("q_min")
        high, k_scales = operands.get("q_high"), operands.get("q_kd")
        return q4a8_matmul(
            _Q4_LAYOUT,
            xq,
            xs,
            xc,
            q_weight,
            q_scale,
            n,
            q_min,
            fmt.bits,
            high,
            k_scales,
            operands.get("q_sixth"),
        )
    keys = list(tensors)

    def compute(x: te.Tensor, *arrays: te.Tensor) -> te.Tensor:
        stored = dict(zip(keys, arrays, strict=True))
        r = te.reduce_axis((0, k), name="k")
        return te.compute(
            (*x.shape[:-1], n),
            lambda *i: te.sum(
                x[(*i[:-1], r)].astype("float32") * fmt.value(stored, i[-1], r), axis=r
            ),
            name="dequantize_matmul",
        )

    return op.tensor_expr_op(compute, "dequantize_matmul", [x, *tensors.values()])


class _BlockWeight(nn.Module):
    """A `[rows, k]` weight held as its format's stored tensors, one parameter each; `int8`:
    multiplied with int8 activations where the format has them (the CPU's kernels)."""

    def _add_weight(self, fmt, rows: int, k: int, int8: bool) -> None:
        self.fmt, self.int8 = fmt, int8
        params = fmt.params(rows, k)
        for key, param in params.items():
            setattr(self, key, param)
        self.stored_keys = tuple(params)

    def stored(self) -> dict[str, Tensor]:
        return {key: getattr(self, key) for key in self.stored_keys}


class BlockLinear(_BlockWeight):
    """A Linear layer whose weight is in one GGML block format."""

    def __init__(
        self, fmt, in_features: int, out_features: int, bias: bool, dtype, int8: bool = True
    ):
        self.in_features, self.out_features = in_features, out_features
        self._add_weight(fmt, out_features, in_features, int8)
        self.bias = nn.Parameter((out_features,), dtype) if bias else None
        self.dtype = dtype

    def forward(self, x: Tensor) -> Tensor:
        y = block_matmul(self.fmt, x, self.stored(), self.in_features, self.out_features, self.int8)
        if self.dtype != "float32":
            y = y.astype(self.dtype)
        return y + self.bias if self.bias is not None else y


class PartedBlockLinear(nn.Module):
    """A fused Linear (q/k/v, gate/up) whose parts the file stores in different block formats
    (`Q4_K_M` keeps v in `Q6_K` beside q and k in `Q4_K`): each run of rows in one format is a
    `BlockLinear` of its own, their outputs concatenated, so that every part keeps its bits
    and its kernel. `parts`: (format, rows) in the fused weight's row order. Not for `vulkan`:
    clspv, its compiler, crashed on the concatenation's kernel."""

    def __init__(self, parts, in_features: int, bias: bool, dtype: str, int8: bool = True):
        self.in_features = in_features
        self.out_features = sum(rows for _, rows in parts)
        self.parts = nn.ModuleList(
            [BlockLinear(fmt, in_features, rows, False, dtype, int8) for fmt, rows in parts]
        )
        self.bias = nn.Parameter((self.out_features,), dtype) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        y = op.concat([part(x) for part in self.parts], dim=-1)
        return y + self.bias if self.bias is not None else y


class BlockExperts(_BlockWeight):
    """Stacked experts in one GGML block format, their rows flat (`[experts · out, ...]`,
    expert e's rows from `e · out`): the gather matmul reads only the chosen experts' blocks,
    with int8 activations (quantized once per token for the gate/up input its experts share,
    per slot for the down input) where the format has them, else decoding the blocks inside a
    float reduction."""

    def __init__(self, fmt, experts: Experts, int8: bool = True):
        self.out_features, self.in_features = experts.out_features, experts.in_features
        self.num_experts = experts.num_experts
        self.kernel_name = experts.kernel_name
        rows = experts.num_experts * experts.out_features
        self._add_weight(fmt, rows, experts.in_features, int8)

    def forward(self, x: Tensor, ids: Tensor) -> Tensor:
        fmt, name, keys = self.fmt, self.kernel_name, self.stored_keys
        n_out, n_in = self.out_features, self.in_features
        if self.int8 and fmt.int8_experts:
            stacked = {  # `[experts, out, ...]`: the same memory
                key: op.reshape(value, (self.num_experts, n_out, int(value.shape[1])))
                for key, value in self.stored().items()
            }
            operands = fmt.int8_operands(stacked)
            return int8_expert_matmul(
                _Q4_LAYOUT, x, ids, n_in, fmt.sum_factor, operands, name, fmt.bits
            )

        def compute(x: te.Tensor, ids: te.Tensor, *arrays: te.Tensor) -> te.Tensor:
            stored = dict(zip(keys, arrays, strict=True))
            return gathered_rows(
                x, ids, n_out, n_in, name, lambda e, n, r: fmt.value(stored, e * n_out + n, r)
            )

        return op.tensor_expr_op(compute, name, [x, ids, *self.stored().values()])


class BlockEmbedding(_BlockWeight):
    """A token embedding in one GGML block format: dequantizes the rows it looks up; as the
    tied LM head, a `BlockLinear` over the whole table."""

    def __init__(self, fmt, num: int, dim: int, dtype: str, int8: bool = True):
        self.num, self.dim, self.dtype = num, dim, dtype
        self._add_weight(fmt, num, dim, int8)

    def forward(self, ids: Tensor) -> Tensor:
        fmt, dim, dtype = self.fmt, self.dim, self.dtype
        stored = self.stored()
        keys = list(stored)

        def lookup(ids: te.Tensor, *arrays: te.Tensor) -> te.Tensor:
            tensors = dict(zip(keys, arrays, strict=True))
            return te.compute(
                (*ids.shape, dim),
                lambda *i: fmt.value(tensors, ids[i[:-1]], i[-1]).astype(dtype),
                name="dequantize_take",
            )

        return op.tensor_expr_op(lookup, "dequantize_take", [ids, *stored.values()])

    def lm_head_forward(self, x: Tensor) -> Tensor:
        return block_matmul(self.fmt, x, self.stored(), self.dim, self.num, self.int8)
