"""Dequantize ggml tensor types to float32 with numpy, block by block, all blocks at once.

Each quantized type stores fixed-size blocks along a row: the legacy types 32 values per block
(a float16 scale `d`, sometimes a float16 minimum `m`, then packed integers), the K-quants 256
values per super-block with 4-bit (Q2_K), 6-bit (Q3_K, Q4_K, Q5_K) or 8-bit (Q6_K) sub-block
scales.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

QK_K = 256


@dataclasses.dataclass(frozen=True)
class GGMLType:
    name: str
    block_size: int  # values per block
    type_size: int  # bytes per block
    decode: Callable[[np.ndarray], np.ndarray]  # [n_blocks, type_size] uint8 -> [n_blocks, bs]

    def nbytes(self, shape: tuple[int, ...]) -> int:
        return math.prod(shape) // self.block_size * self.type_size


def _f16(blocks: np.ndarray, start: int, count: int = 1) -> np.ndarray:
    """float16 fields at byte `start` of every block, as float32 `[n_blocks, count]`."""
    raw = np.ascontiguousarray(blocks[:, start : start + 2 * count])
    return raw.view(np.float16).astype(np.float32)


def _low_high_nibbles(qs: np.ndarray) -> np.ndarray:
    """16 bytes → 32 values: the low nibbles are values 0-15, the high nibbles 16-31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.int32)


def _five_bit(qs: np.ndarray, qh: np.ndarray) -> np.ndarray:
    """Q5_0/Q5_1: nibbles plus a fifth bit per value from the 32-bit `qh`."""
    high = (qh[:, None] >> np.arange(32, dtype=np.uint32)[None, :]) & 1
    return _low_high_nibbles(qs) | (high.astype(np.int32) << 4)


def _decode_q4_0(b: np.ndarray) -> np.ndarray:
    return _f16(b, 0) * (_low_high_nibbles(b[:, 2:18]) - 8)


def _decode_q4_1(b: np.ndarray) -> np.ndarray:
    return _f16(b, 0) * _low_high_nibbles(b[:, 4:20]) + _f16(b, 2)


def _decode_q5_0(b: np.ndarray) -> np.ndarray:
    qh = np.ascontiguousarray(b[:, 2:6]).view(np.uint32)[:, 0]
    return _f16(b, 0) * (_five_bit(b[:, 6:22], qh) - 16)


def _decode_q5_1(b: np.ndarray) -> np.ndarray:
    qh = np.ascontiguousarray(b[:, 4:8]).view(np.uint32)[:, 0]
    return _f16(b, 0) * _five_bit(b[:, 8:24], qh) + _f16(b, 2)


def _decode_q8_0(b: np.ndarray) -> np.ndarray:
    return _f16(b, 0) * b[:, 2:34].view(np.int8).astype(np.float32)


def _two_bit_runs(qs: np.ndarray) -> np.ndarray:
    """Q2_K/Q3_K's 64 bytes of 2-bit values → 256 values in 8 runs of 32: per 32-byte half h,
    run 4h + j is bits 2j of its bytes."""
    halves = qs.reshape(qs.shape[0], 2, 1, 32)
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    return ((halves >> shifts) & 3).reshape(qs.shape[0], 8, 32)


def _decode_q2_k(b: np.ndarray) -> np.ndarray:
    """Sixteen 4-bit scale/min pairs (one per 16 values), fp16 `d` and `dmin` at 80 and 82:
    `w = d · sc · q - dmin · m`."""
    n = b.shape[0]
    scales = b[:, 0:16]
    d, dmin = _f16(b, 80), _f16(b, 82)
    dl = (d * (scales & 0x0F).astype(np.float32))[:, :, None]
    ml = (dmin * (scales >> 4).astype(np.float32))[:, :, None]
    q = _two_bit_runs(b[:, 16:80]).reshape(n, 16, 16).astype(np.float32)
    return (dl * q - ml).reshape(n, QK_K)


def q3_k_scales(raw: np.ndarray) -> np.ndarray:
    """Q3_K's sixteen 6-bit scales minus 32 from their 12 bytes: scale s has its low 4 bits in
    byte s % 8 (bits 4 · (s // 8)) and its high 2 in byte 8 + s % 4 (bits 2 · (s // 4))."""
    s = np.arange(16)
    low = (raw[:, s % 8] >> (4 * (s // 8)).astype(np.uint8)) & 0x0F
    high = (raw[:, 8 + s % 4] >> (2 * (s // 4)).astype(np.uint8)) & 0x03
    return (low | (high << 4)).astype(np.int32) - 32


def _decode_q3_k(b: np.ndarray) -> np.ndarray:
    """32 bytes of high bits (bit r of byte e: value e of run r; a clear bit subtracts 4), the
    2-bit values, sixteen 6-bit scales, fp16 `d` at 108: `w = d · (sc - 32) · q`."""
    n = b.shape[0]
    hmask = b[:, 0:32]
    high = (hmask[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
    q = _two_bit_runs(b[:, 32:96]).astype(np.int32) - 4 * (1 - high.astype(np.int32))
    dl = (_f16(b, 108) * q3_k_scales(b[:, 96:108]).astype(np.float32))[:, :, None]
    return (dl * q.reshape(n, 16, 16).astype(np.float32)).reshape(n, QK_K)


def k_scales_mins(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 8 six-bit scales and mins (uint8 `[..., 8]` each) of Q4_K/Q5_K super-blocks, from
    their 12 bytes `[..., 12]` (llama.cpp's `get_scale_min_k4`): runs 0-3 in the low six bits
    of bytes 0-3 (scales) and 4-7 (mins); runs 4-7 in the nibbles of bytes 8-11, their top two
    bits in the top bits of bytes 0-3 and 4-7."""
    s = np.asarray(scales, np.uint8)
    low_sc, low_mn, mixed = s[..., 0:4], s[..., 4:8], s[..., 8:12]
    sc = np.concatenate([low_sc & 63, (mixed & 0x0F) | ((low_sc >> 6) << 4)], axis=-1)
    mn = np.concatenate([low_mn & 63, (mixed >> 4) | ((low_mn >> 6) << 4)], axis=-1)
    return sc, mn


def _k_nibbles(qs: np.ndarray) -> np.ndarray:
    """128 bytes → 256 values in 8 runs of 32: per 32-byte chunk, low nibbles then high."""
    chunks = qs.reshape(qs.shape[0], 4, 32)
    return np.stack([chunks & 0x0F, chunks >> 4], axis=2).reshape(qs.shape[0], 8, 32)


def _decode_q4_k(b: np.ndarray) -> np.ndarray:
    d, dmin = _f16(b, 0), _f16(b, 2)
    sc, mn = (v.astype(np.float32) for v in k_scales_mins(b[:, 4:16]))
    q = _k_nibbles(b[:, 16:144]).astype(np.float32)
    out = (d * sc)[:, :, None] * q - (dmin * mn)[:, :, None]
    return out.reshape(b.shape[0], QK_K)


def _decode_q5_k(b: np.ndarray) -> np.ndarray:
    d, dmin = _f16(b, 0), _f16(b, 2)
    sc, mn = (v.astype(np.float32) for v in k_scales_mins(b[:, 4:16]))
    qh = b[:, 16:48]
    q = _k_nibbles(b[:, 48:176]).astype(np.int32)
    # Run r of 32 values takes its fifth bit from bit r of the 32 qh bytes.
    high = (qh[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
    q = q | (high.astype(np.int32) << 4)
    out = (d * sc)[:, :, None] * q.astype(np.float32) - (dmin * mn)[:, :, None]
    return out.reshape(b.shape[0], QK_K)


def _decode_q6_k(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    ql = b[:, 0:128].reshape(n, 2, 64)
    qh = b[:, 128:192].reshape(n, 2, 32)
    scales = b[:, 192:208].view(np.int8).astype(np.float32).reshape(n, 2, 8)
    d = _f16(b, 208)
    # Each half of 128 values: four runs of 32, low/high nibbles of ql[0:32] and ql[32:64],
    # with two high bits each from qh.
    low = np.stack(
        [ql[:, :, :32] & 0x0F, ql[:, :, 32:] & 0x0F, ql[:, :, :32] >> 4, ql[:, :, 32:] >> 4],
        axis=2,
    ).astype(np.int32)
    high = np.stack([(qh >> s) & 3 for s in (0, 2, 4, 6)], axis=2).astype(np.int32)
    q = (low | (high << 4)) - 32  # [n, 2 halves, 4 runs, 32]
    # Sub-block scales cover 16 values: run r, position l uses scale 2 * r + l // 16.
    sc = scales.reshape(n, 2, 4, 2)[:, :, :, :, None]
    out = d[:, :, None, None, None] * sc * q.reshape(n, 2, 4, 2, 16).astype(np.float32)
    return out.reshape(n, QK_K)


def _decode_float(dtype) -> Callable[[np.ndarray], np.ndarray]:
    return lambda b: np.ascontiguousarray(b).view(dtype).astype(np.float32)


def _decode_bf16(b: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(b).view(np.uint16).astype(np.uint32) << 16
    return bits.view(np.float32)


GGML_TYPES: dict[int, GGMLType] = {
    0: GGMLType("F32", 1, 4, _decode_float(np.float32)),
    1: GGMLType("F16", 1, 2, _decode_float(np.float16)),
    2: GGMLType("Q4_0", 32, 18, _decode_q4_0),
    3: GGMLType("Q4_1", 32, 20, _decode_q4_1),
    6: GGMLType("Q5_0", 32, 22, _decode_q5_0),
    7: GGMLType("Q5_1", 32, 24, _decode_q5_1),
    8: GGMLType("Q8_0", 32, 34, _decode_q8_0),
    10: GGMLType("Q2_K", QK_K, 84, _decode_q2_k),
    11: GGMLType("Q3_K", QK_K, 110, _decode_q3_k),
    12: GGMLType("Q4_K", QK_K, 144, _decode_q4_k),
    13: GGMLType("Q5_K", QK_K, 176, _decode_q5_k),
    14: GGMLType("Q6_K", QK_K, 210, _decode_q6_k),
    30: GGMLType("BF16", 1, 2, _decode_bf16),
}


# Every ggml type by id, for naming the ones we cannot read in errors.
TYPE_NAMES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    6: "Q5_0",
    7: "Q5_1",
    8: "Q8_0",
    9: "Q8_1",
    10: "Q2_K",
    11: "Q3_K",
    12: "Q4_K",
    13: "Q5_K",
    14: "Q6_K",
    15: "Q8_K",
    16: "IQ2_XXS",
    17: "IQ2_XS",
    18: "IQ3_XXS",
    19: "IQ1_S",
    20: "IQ4_NL",
    21: "IQ3_S",
    22: "IQ2_S",
    23: "IQ4_XS",
    24: "I8",
    25: "I16",
    26: "I32",
    27: "I64",
    28: "F64",
    29: "IQ1_M",
    30: "BF16",
    34: "TQ1_0",
    35: "TQ2_0",
    39: "MXFP4",
}


def dequantize(raw: np.ndarray, ggml_type: int, shape: tuple[int, ...]) -> np.ndarray:
    """Raw bytes of one tensor → float32 array of `shape` (numpy order)."""
    kind = GGML_TYPES[ggml_type]
    blocks = raw.reshape(-1, kind.type_size)
    return kind.decode(blocks).reshape(shape).astype(np.float32, copy=False)
