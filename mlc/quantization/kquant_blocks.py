"""llama.cpp's K-quants `Q2_K` and `Q3_K`, stored as the GGUF file has them: each row's
super-blocks of 256 values, byte for byte, as one uint8 tensor `q_blocks` `[N, K / 256 ·
type_size]` (uint32 words of four for `webgpu`, `kquant_nibbles.as_stored`). Kernels decode
the values they read straight from those bytes:

- `Q2_K` (84 bytes): sixteen bytes of 4-bit scale `sc` (low nibble) and minimum `m` (high),
  one pair per 16 values, 64 bytes of 2-bit values (per 32-byte half h, run 4h + j is bits 2j
  of its bytes), fp16 `d` and `dmin`: `w = d · sc · q - dmin · m`;
- `Q3_K` (110 bytes): 32 bytes of high bits (bit r of byte e: value e of run r; a clear bit
  subtracts 4), the 2-bit values as `Q2_K`'s, twelve bytes of sixteen 6-bit scales
  (`mlc.gguf.dequantize.q3_k_scales`), fp16 `d`: `w = d · (sc - 32) · q`.

The byte offsets follow llama.cpp's `block_q2_K` / `block_q3_K`; `mlc.gguf.
dequantize` decodes the same bytes in numpy. These formats dequantize inside a float32 matmul;
int8-activation kernels for them are not written yet. `Q4_K`, `Q5_K` and `Q6_K`, whose runs of
32 fit the `q4a8_1` kernels, are moved into their layout (`kquant_nibbles`); `K_FORMATS` holds
all five.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from tvm import te, tirx
from tvm.relax.frontend import nn

from .int8_activations import stored_byte
from .kquant_nibbles import (
    K_NIBBLE_FORMATS,
    SUPER_BLOCK,
    KQuantNibbles,
    SixBitK,
    as_stored,
    byte_parameter,
    decode_super_blocks,
    stored_bytes,
)


def u32(value: int) -> tirx.PrimExpr:
    return tirx.const(value, "uint32")


@dataclasses.dataclass(frozen=True)
class KQuantFormat:
    name: str
    type_size: int  # bytes per super-block of 256 values
    byte_words: bool = False  # `q_blocks` stored as uint32 words (`webgpu`: `as_stored`)

    block_size = SUPER_BLOCK
    int8_activations = False
    int8_experts = False

    @property
    def two_bit_offset(self) -> int:
        """Where `Q2_K`/`Q3_K` keep their 2-bit values."""
        return 16 if self.name == "Q2_K" else 32

    # --- numpy: GGUF blocks ↔ stored tensors, and the reference dequantization -------------

    def from_ggml_blocks(self, blocks: np.ndarray) -> dict[str, np.ndarray]:
        """GGUF blocks uint8 `[N, K / 256, type_size]` → `{"q_blocks": [N, K / 256 · size]}`."""
        n, nb, size = blocks.shape
        if size != self.type_size:
            raise ValueError(f"{self.name} blocks have {self.type_size} bytes, got {size}")
        return {"q_blocks": as_stored(blocks.reshape(n, nb * size), self.byte_words)}

    def to_ggml_blocks(self, stored: dict[str, np.ndarray]) -> np.ndarray:
        data = stored["q_blocks"]
        if data.dtype != np.uint8:  # words: the padding of the last one dropped
            data = stored_bytes(data, data.shape[-1] * 4 // self.type_size * self.type_size)
        return data.reshape(data.shape[0], -1, self.type_size)

    def dequantize(self, stored: dict[str, np.ndarray]) -> np.ndarray:
        """`w` float32 `[N, K]` (`mlc.gguf.dequantize`'s decoder)."""
        return decode_super_blocks(self.name, self.to_ggml_blocks(stored))

    # --- the model's parameters and their dequantized values in kernels ----------------------

    def params(self, rows: int, k: int) -> dict[str, nn.Parameter]:
        if k % SUPER_BLOCK:
            raise ValueError(f"{self.name} needs rows of whole super-blocks of 256, not {k}")
        size = k // SUPER_BLOCK * self.type_size
        return {"q_blocks": byte_parameter(rows, size, self.byte_words)}

    def value(self, tensors: dict[str, te.Tensor], n, k) -> tirx.PrimExpr:
        """`w[n, k]` in float32, decoded from the row's bytes inside a kernel."""
        data = tensors["q_blocks"]
        base = (k // SUPER_BLOCK) * self.type_size
        i = k % SUPER_BLOCK

        def byte(offset):
            return stored_byte(data, n, base + offset)

        def f16(offset):
            # Widened from its bits in 32-bit integers (WGSL has no 16-bit ones): a normal
            # number's exponent rebased from 15 to 127, a subnormal one m · 2^-24.
            bits = byte(offset) | (byte(offset + 1) << tirx.const(8, "uint32"))
            exponent, mantissa = (bits >> u32(10)) & u32(31), bits & u32(1023)
            sign = (bits >> u32(15)) << u32(31)
            rebased = tirx.Select(exponent == u32(31), u32(255), exponent + u32(112))
            normal = tirx.reinterpret(
                "float32", sign | (rebased << u32(23)) | (mantissa << u32(13))
            )
            tiny = mantissa.astype("float32") * tirx.const(2.0**-24, "float32")
            tiny = tirx.Select(sign == u32(0), tiny, -tiny)
            return tirx.Select(exponent == u32(0), tiny, normal)

        def bits(value, shift, mask: int):
            return (value >> shift.astype("uint32")) & tirx.const(mask, "uint32")

        if self.name in ("Q2_K", "Q3_K"):
            # Run r = 4h + j of the 2-bit values is bits 2j of the bytes of half h.
            s, e = i // 16, i % 32
            j = (i % 128) // 32
            low = bits(byte(self.two_bit_offset + 32 * (i // 128) + e), 2 * j, 3)
            if self.name == "Q2_K":
                packed = byte(s)  # scale in the low nibble, minimum in the high one
                d = f16(80) * (packed & tirx.const(15, "uint32")).astype("float32")
                dmin = f16(82) * (packed >> tirx.const(4, "uint32")).astype("float32")
                return d * low.astype("float32") - dmin
            # Q3_K: a clear high bit subtracts 4; 6-bit scales stored minus 32.
            q = low.astype("int32") - 4 * (1 - bits(byte(e), i // 32, 1).astype("int32"))
            scale = bits(byte(96 + s % 8), 4 * (s // 8), 15) | (
                bits(byte(104 + s % 4), 2 * (s // 4), 3) << tirx.const(4, "uint32")
            )
            d = f16(108) * (scale.astype("int32") - 32).astype("float32")
            return d * q.astype("float32")

        raise ValueError(f"{self.name} is not a byte-wise K-quant")


K_FORMATS: dict[str, KQuantFormat | KQuantNibbles | SixBitK] = {
    **{f.name: f for f in (KQuantFormat("Q2_K", 84), KQuantFormat("Q3_K", 110))},
    **K_NIBBLE_FORMATS,
}
