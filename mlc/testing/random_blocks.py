"""Random K-quant super-blocks, for tests and benchmarks: the `gguf` package has no K-quant
quantizer to make them from weights."""

from __future__ import annotations

import numpy as np

from mlc.gguf.dequantize import GGML_TYPES

# Where each K-quant keeps its fp16 super-block scales (d, and dmin where it has one).
K_SCALE_OFFSETS = {
    "Q2_K": (80, 82),
    "Q3_K": (108,),
    "Q4_K": (0, 2),
    "Q5_K": (0, 2),
    "Q6_K": (208,),
}


def random_k_blocks(name: str, n: int, k: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    """`n` rows of `k` values of K-quant `name` as uint8 super-blocks `[n, k / 256, size]`:
    any bit pattern, but finite fp16 super-block scales of magnitude <= `scale`."""
    size = next(t.type_size for t in GGML_TYPES.values() if t.name == name)
    rng = np.random.default_rng(seed)
    nb = k // 256
    blocks = rng.integers(0, 256, size=(n, nb, size), dtype=np.uint8)
    for offset in K_SCALE_OFFSETS[name]:
        values = (rng.uniform(-scale, scale, size=(n, nb))).astype(np.float16)
        blocks[..., offset : offset + 2] = values.view(np.uint8).reshape(n, nb, 2)
    return blocks
