"""llama.cpp's `Q4_K`, `Q5_K` and `Q6_K` moved into the int8-activation kernels' nibble layout.

A super-block of 256 values is eight runs of 32, each with a 6-bit scale `sc` and minimum `m`,
under the super-block's float16 `d` and `dmin`: `w = d · sc · q - dmin · m` (`q` 4-bit, or
5-bit with `Q5_K`'s fifth bits). Per run that is `Q4_1`'s form `w = s · q + mn` with
`s = d · sc` and `mn = -dmin · m` (products of a float16 and a 6-bit integer: exact in
float32), so the runs are the groups of 32 the `q4a8_1` kernels sum with int8 activations; the
kernels form `s` and `mn` from the fields as they read them. We store the file's bits, moved
(`to_ggml_blocks` puts them back, bit for bit):

- `q_weight` uint32 `[N, K / 8]`: the nibbles, eight per word, in `q4a8_1`'s block-transposed
  order (as `ggml_blocks` stores `Q4_1`);
- `q_ksc`, `q_kmin` uint8 `[N, K / 32]`: each run's 6-bit scale and minimum, one byte each
  (the file packs the sixteen into 12 bytes per super-block: 4 bytes more here, 2.8 % of a
  `Q4_K` weight);
- `q_kd` float16 `[N, K / 256 · 2]`: each super-block's `d` and `dmin`;
- `q_high` uint32 `[N, K / 32]` (`Q5_K`): each run's 32 fifth bits in one word, in
  `int8_activations.high_bit`'s order.

`Q6_K` (`SixBitK`) has no minima: sixteen int8 scales per super-block, one per 16 values, under
its float16 `d`: `w = d · sc · (q - 32)`, `q` 6-bit. Its low nibbles are `q_weight` as above,
its fifth and sixth bits `q_high` and `q_sixth` (one word per run each, `high_bit`'s order),
its scales `q_ksc` uint8 `[N, K / 16]` (the file's bytes, two's complement) and `q_kd` float16
`[N, K / 256]` (`d`). The kernels sum each half-run of 16 on its own, its zero point entering
through the activations' sum over that half-run (as `Q4_0`'s does over a group).

For `webgpu` (`byte_words`: WGSL has no 8-bit storage) each uint8 tensor is stored as uint32
words, four bytes each, least significant first, and kernels read the bytes by shifting.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor

from mlc.gguf.dequantize import GGML_TYPES, k_scales_mins

from .ggml_blocks import HIGH_BIT, move_high_bits, pack_nibbles, unpack_nibbles
from .int8_activations import GROUP, fifth_bit, signed_scale, stored_byte, stored_word

SUPER_BLOCK = 256
RUNS = SUPER_BLOCK // GROUP  # runs of 32 per super-block


@dataclasses.dataclass(frozen=True)
class KQuantNibbles:
    name: str
    type_size: int  # bytes per super-block in the GGUF file
    bits: int  # 4 (Q4_K) or 5 (Q5_K)
    byte_words: bool = False  # uint8 tensors stored as uint32 words (`webgpu`)

    block_size = SUPER_BLOCK
    int8_activations = True
    has_min = True
    sum_factor = 1.0  # `xc = xs · Σ xq`, weighted by the runs' minima
    int8_experts = True

    @property
    def _nibbles_at(self) -> int:
        return 16 if self.bits == 4 else 48

    # --- numpy: GGUF blocks ↔ stored tensors, and the reference dequantization -------------

    def from_ggml_blocks(self, blocks: np.ndarray) -> dict[str, np.ndarray]:
        """GGUF blocks uint8 `[N, K / 256, type_size]` → the stored tensors by suffix."""
        n, nb, size = blocks.shape
        if size != self.type_size:
            raise ValueError(f"{self.name} blocks have {self.type_size} bytes, got {size}")
        # Chunk c of 32 bytes: run 2c in the low nibbles, run 2c + 1 in the high ones.
        chunks = blocks[..., self._nibbles_at :].reshape(n, nb, 4, 1, 32)
        runs = np.concatenate([chunks & 0x0F, chunks >> 4], axis=3)  # [n, nb, 4, 2, 32]
        out = {"q_weight": pack_nibbles(runs.reshape(n, nb * SUPER_BLOCK), transposed=True)}
        sc, m = k_scales_mins(blocks[..., 4:16])
        out["q_ksc"], out["q_kmin"] = (
            as_stored(a.reshape(n, nb * RUNS), self.byte_words) for a in (sc, m)
        )
        out["q_kd"] = np.ascontiguousarray(blocks[..., :4]).view(np.float16).reshape(n, nb * 2)
        if self.bits == 5:
            # Bit r of byte e: the fifth bit of value e of run r → one word per run, bit e.
            qh = blocks[..., 16:48].astype(np.uint32)  # [n, nb, 32]
            bits = (qh[..., None, :] >> np.arange(RUNS, dtype=np.uint32)[:, None]) & 1
            out["q_high"] = move_high_bits(bit_words(bits).reshape(n, nb * RUNS), HIGH_BIT)
        return out

    def to_ggml_blocks(self, stored: dict[str, np.ndarray]) -> np.ndarray:
        """The inverse of `from_ggml_blocks`: the GGUF file's bytes, bit for bit."""
        kd = np.ascontiguousarray(stored["q_kd"], dtype=np.float16)
        n, nb = kd.shape[0], kd.shape[1] // 2
        parts = [kd.view(np.uint8).reshape(n, nb, 4)]
        sc, m = (stored_bytes(stored[key], nb * RUNS).reshape(n, nb, RUNS) for key in KEYS[1:3])
        parts.append(pack_scales(sc, m))
        if self.bits == 5:
            words = move_high_bits(stored["q_high"], np.argsort(HIGH_BIT)).reshape(n, nb, RUNS)
            bits = word_bits(words).astype(np.uint32)  # [n, nb, run, e]
            qh = np.bitwise_or.reduce(bits << np.arange(RUNS, dtype=np.uint32)[:, None], axis=2)
            parts.append(qh.astype(np.uint8))
        runs = unpack_nibbles(stored["q_weight"], transposed=True).reshape(n, nb, 4, 2, 32)
        parts.append(
            (runs[..., 0, :] | (runs[..., 1, :] << 4)).astype(np.uint8).reshape(n, nb, 128)
        )
        return np.concatenate(parts, axis=-1)

    def dequantize(self, stored: dict[str, np.ndarray]) -> np.ndarray:
        """`w` float32 `[N, K]` (`mlc.gguf.dequantize`'s decoder of the file's bytes)."""
        return decode_super_blocks(self.name, self.to_ggml_blocks(stored))

    # --- the model's parameters and their values in kernels ----------------------------------

    def params(self, rows: int, k: int) -> dict[str, nn.Parameter]:
        if k % SUPER_BLOCK:
            raise ValueError(f"{self.name} needs rows of whole super-blocks of 256, not {k}")
        out = {
            "q_weight": nn.Parameter((rows, k // 8), "uint32"),
            "q_ksc": byte_parameter(rows, k // GROUP, self.byte_words),
            "q_kmin": byte_parameter(rows, k // GROUP, self.byte_words),
            "q_kd": nn.Parameter((rows, k // SUPER_BLOCK * 2), "float16"),
        }
        if self.bits == 5:
            out["q_high"] = nn.Parameter((rows, k // GROUP), "uint32")
        return out

    def value(self, tensors: dict[str, te.Tensor], n, k) -> tirx.PrimExpr:
        """`w[n, k]` in float32, read from the stored tensors inside a kernel."""
        words = tensors["q_weight"]
        word = stored_word(k // 8, int(words.shape[1]))
        q = (words[n, word] >> ((k % 8) * 4).astype("uint32")) & tirx.const(15, "uint32")
        if self.bits == 5:
            q = q | (fifth_bit(tensors["q_high"], n, k) << tirx.const(4, "uint32"))
        g, kd = k // GROUP, tensors["q_kd"]
        sc, m = (stored_byte(tensors[key], n, g).astype("float32") for key in ("q_ksc", "q_kmin"))
        scale = sc * kd[n, 2 * (g // RUNS)].astype("float32")
        dmin = kd[n, 2 * (g // RUNS) + 1].astype("float32")
        return scale * q.astype("float32") - dmin * m

    def int8_operands(self, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        """What the int8 kernels take: the words, the runs' scales and minima as `q_scale` and
        `q_min`, the super-blocks' `d` and `dmin` as `q_kd`, and the fifth bits."""
        out = {
            "q_weight": tensors["q_weight"],
            "q_scale": tensors["q_ksc"],
            "q_min": tensors["q_kmin"],
            "q_kd": tensors["q_kd"],
        }
        if self.bits == 5:
            out["q_high"] = tensors["q_high"]
        return out


KEYS = ("q_weight", "q_ksc", "q_kmin", "q_kd", "q_high")


@dataclasses.dataclass(frozen=True)
class SixBitK:
    """llama.cpp's `Q6_K` (210 bytes per 256 values: 128 bytes of low nibbles, 64 of high
    2-bit pairs, sixteen int8 scales, float16 `d`) in the int8 kernels' layout."""

    byte_words: bool = False  # `q_ksc` stored as uint32 words (`webgpu`)

    name = "Q6_K"
    type_size = 210
    bits = 6
    block_size = SUPER_BLOCK
    int8_activations = True
    int8_experts = True
    has_min = False
    sum_factor = -32.0  # `xc = -32 · xs · Σ xq` over each half-run: the zero point
    sub_block = 16  # values per scale

    def from_ggml_blocks(self, blocks: np.ndarray) -> dict[str, np.ndarray]:
        """GGUF blocks uint8 `[N, K / 256, 210]` → the stored tensors by suffix."""
        n, nb, size = blocks.shape
        if size != self.type_size:
            raise ValueError(f"{self.name} blocks have {self.type_size} bytes, got {size}")
        # Half h of a super-block: run t's value e has its low nibble in byte 32 (t % 2) + e of
        # the half's 64 (nibble t // 2) and its high pair in bits 2t of byte e of its 32.
        ql = blocks[..., :128].reshape(n, nb, 2, 2, 32)
        qh = blocks[..., 128:192].reshape(n, nb, 2, 32)
        low = np.stack([ql[..., c, :] >> s & 15 for s in (0, 4) for c in (0, 1)], axis=3)
        high = np.stack([(qh >> (2 * t)) & 3 for t in range(4)], axis=3)  # [n, nb, 2, 4, 32]
        runs = n, nb * RUNS, GROUP
        return {
            "q_weight": pack_nibbles(low.reshape(n, nb * SUPER_BLOCK), transposed=True),
            "q_high": move_high_bits(bit_words((high & 1).reshape(runs)), HIGH_BIT),
            "q_sixth": move_high_bits(bit_words((high >> 1).reshape(runs)), HIGH_BIT),
            "q_ksc": as_stored(blocks[..., 192:208].reshape(n, nb * 16), self.byte_words),
            "q_kd": np.ascontiguousarray(blocks[..., 208:]).view(np.float16).reshape(n, nb),
        }

    def to_ggml_blocks(self, stored: dict[str, np.ndarray]) -> np.ndarray:
        """The inverse of `from_ggml_blocks`: the GGUF file's bytes, bit for bit."""
        kd = np.ascontiguousarray(stored["q_kd"], dtype=np.float16)
        n, nb = kd.shape
        low = unpack_nibbles(stored["q_weight"], transposed=True).reshape(n, nb, 2, 4, 32)
        fifth, sixth = (
            word_bits(move_high_bits(stored[key], np.argsort(HIGH_BIT))).reshape(n, nb, 2, 4, 32)
            for key in ("q_high", "q_sixth")
        )
        high = fifth | (sixth << 1)
        ql = np.concatenate([low[:, :, :, t] | (low[:, :, :, t + 2] << 4) for t in (0, 1)], axis=-1)
        qh = np.bitwise_or.reduce([high[:, :, :, t] << (2 * t) for t in range(4)], axis=0)
        parts = [
            ql.reshape(n, nb, 128),
            qh.reshape(n, nb, 64),
            stored_bytes(stored["q_ksc"], nb * 16).reshape(n, nb, 16),
            kd.view(np.uint8).reshape(n, nb, 2),
        ]
        return np.concatenate(parts, axis=-1).astype(np.uint8)

    def dequantize(self, stored: dict[str, np.ndarray]) -> np.ndarray:
        """`w` float32 `[N, K]` (`mlc.gguf.dequantize`'s decoder of the file's bytes)."""
        return decode_super_blocks(self.name, self.to_ggml_blocks(stored))

    def params(self, rows: int, k: int) -> dict[str, nn.Parameter]:
        if k % SUPER_BLOCK:
            raise ValueError(f"{self.name} needs rows of whole super-blocks of 256, not {k}")
        return {
            "q_weight": nn.Parameter((rows, k // 8), "uint32"),
            "q_high": nn.Parameter((rows, k // GROUP), "uint32"),
            "q_sixth": nn.Parameter((rows, k // GROUP), "uint32"),
            "q_ksc": byte_parameter(rows, k // self.sub_block, self.byte_words),
            "q_kd": nn.Parameter((rows, k // SUPER_BLOCK), "float16"),
        }

    def value(self, tensors: dict[str, te.Tensor], n, k) -> tirx.PrimExpr:
        """`w[n, k]` in float32, read from the stored tensors inside a kernel."""
        words = tensors["q_weight"]
        word = stored_word(k // 8, int(words.shape[1]))
        q = (words[n, word] >> ((k % 8) * 4).astype("uint32")) & tirx.const(15, "uint32")
        q = q | (fifth_bit(tensors["q_high"], n, k) << tirx.const(4, "uint32"))
        q = q | (fifth_bit(tensors["q_sixth"], n, k) << tirx.const(5, "uint32"))
        scale = signed_scale(tensors["q_ksc"], (n,), k // self.sub_block)
        d = tensors["q_kd"][n, k // SUPER_BLOCK].astype("float32")
        return d * scale * (q.astype("int32") - 32).astype("float32")

    def int8_operands(self, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        """What the int8 kernels take: the words, the half-runs' scales as `q_scale`, the
        super-blocks' `d` as `q_kd`, the fifth and sixth bits."""
        return {
            "q_weight": tensors["q_weight"],
            "q_scale": tensors["q_ksc"],
            "q_kd": tensors["q_kd"],
            "q_high": tensors["q_high"],
            "q_sixth": tensors["q_sixth"],
        }


def bit_words(bits: np.ndarray) -> np.ndarray:
    """Bits `[..., 32]` (0 or 1) → uint32 words `[...]`, bit v from element v."""
    shifts = np.arange(32, dtype=np.uint32)
    return np.bitwise_or.reduce(bits.astype(np.uint32) << shifts, axis=-1).astype(np.uint32)


def word_bits(words: np.ndarray) -> np.ndarray:
    """The inverse of `bit_words`: uint8 `[..., 32]`."""
    shifts = np.arange(32, dtype=np.uint32)
    return ((np.asarray(words, np.uint32)[..., None] >> shifts) & 1).astype(np.uint8)


def as_stored(data: np.ndarray, byte_words: bool) -> np.ndarray:
    """Bytes uint8 `[N, B]` as stored: themselves, or uint32 words `[N, ceil(B / 4)]` (byte i
    in bits 8 (i % 4) of word i // 4, the last word zero-padded)."""
    data = np.ascontiguousarray(data, dtype=np.uint8)
    if not byte_words:
        return data
    pad = -data.shape[-1] % 4
    data = np.pad(data, [(0, 0)] * (data.ndim - 1) + [(0, pad)])
    return np.ascontiguousarray(data).view("<u4").astype(np.uint32)


def stored_bytes(stored: np.ndarray, count: int) -> np.ndarray:
    """The inverse of `as_stored`: uint8 `[N, count]`."""
    stored = np.ascontiguousarray(stored)
    if stored.dtype == np.uint8:
        return stored
    return stored.astype("<u4").view(np.uint8)[..., :count]


def byte_parameter(rows: int, count: int, byte_words: bool) -> nn.Parameter:
    """The parameter holding `count` bytes per row, as `as_stored` stores them (kernels read
    them with `int8_activations.stored_byte`)."""
    if byte_words:
        return nn.Parameter((rows, -(-count // 4)), "uint32")
    return nn.Parameter((rows, count), "uint8")


def decode_super_blocks(name: str, blocks: np.ndarray) -> np.ndarray:
    """K-quant `name`'s super-blocks uint8 `[N, K / 256, type_size]` → `w` float32 `[N, K]`
    (`mlc.gguf.dequantize`'s decoder)."""
    n, nb, size = blocks.shape
    decode = next(t.decode for t in GGML_TYPES.values() if t.name == name)
    return decode(blocks.reshape(n * nb, size)).reshape(n, nb * SUPER_BLOCK)


def pack_scales(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """The inverse of `mlc.gguf.dequantize.k_scales_mins`: the 12 bytes of eight 6-bit scales
    and minima."""
    sc, m = np.asarray(sc, np.uint8), np.asarray(m, np.uint8)
    low_sc = (sc[..., :4] & 63) | ((sc[..., 4:] >> 4) << 6)
    low_m = (m[..., :4] & 63) | ((m[..., 4:] >> 4) << 6)
    mixed = (sc[..., 4:] & 15) | ((m[..., 4:] & 15) << 4)
    return np.concatenate([low_sc, low_m, mixed], axis=-1).astype(np.uint8)


K_NIBBLE_FORMATS = {
    f.name: f for f in (KQuantNibbles("Q4_K", 144, 4), KQuantNibbles("Q5_K", 176, 5), SixBitK())
}
