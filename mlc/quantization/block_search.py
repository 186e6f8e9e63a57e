"""Full-precision weights into GGML blocks, with each block's parameters searched.

`Q4_1` (a scale `d` and a minimum `m` per 32 values, `x ≈ d·q + m`, `q` in 0..15): the plain
choice `m = min`, `d = (max − min) / 15` spends levels on the block's extremes. As llama.cpp's
k-quants do, we try scales around it (`(15 + t) / (max − min)` for `t` in −1 … 1), fit `d` and
`m` to the levels each one gives by weighted least squares (weights `mean|x| + |x|`: large
values matter more to a dot product), round them to float16 as they are stored, and keep the
pair with the least weighted squared error. The plain choice is one of the candidates, so the
result is never worse by that measure.

`Q8_0` (a scale per 32 signed bytes): `d = max|x| / 127`, rounded to float16 before the bytes
are computed from it.

Both return GGUF's block bytes `uint8 [N, K / 32, type_size]`, which `GGMLFormat` stores.
"""

from __future__ import annotations

import numpy as np

BLOCK = 32
Q4_1_STEPS = np.round(np.arange(-1.0, 1.0001, 0.1), 1)  # candidate offsets of 15 levels
ROWS_PER_PASS = 4096  # bounds the search's temporaries: ROWS · K/32 · 32 floats a candidate


def _blocks(w: np.ndarray) -> np.ndarray:
    n, k = w.shape
    if k % BLOCK:
        raise ValueError(f"a row of {k} values is not a whole number of {BLOCK}-value blocks")
    return np.asarray(w, dtype=np.float32).reshape(n, k // BLOCK, BLOCK)


def _f16_bytes(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float16)[..., None].view(np.uint8)


def _weighted_error(x, wt, d, m) -> tuple[np.ndarray, np.ndarray]:
    """(levels, Σ wt (d·q + m − x)²) for parameters `d`, `m` [..., 1]."""
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(d > 0, np.rint((x - m) / d), 0.0)
    q = np.clip(q, 0, 15)
    return q, (wt * (d * q + m - x) ** 2).sum(-1)


def _search_q4_1(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float16-exact (d, m) `[..., 1]` for blocks `x [..., 32]`."""
    lo, hi = x.min(-1, keepdims=True), x.max(-1, keepdims=True)
    wt = np.abs(x).mean(-1, keepdims=True) + np.abs(x)
    span = hi - lo
    as_f16 = lambda v: v.astype(np.float16).astype(np.float32)  # noqa: E731
    best_d, best_m = as_f16(span / 15), as_f16(lo)
    _, best_err = _weighted_error(x, wt, best_d, best_m)
    sw = wt.sum(-1, keepdims=True)
    sx = (wt * x).sum(-1, keepdims=True)
    for t in Q4_1_STEPS:
        with np.errstate(divide="ignore", invalid="ignore"):
            levels = np.clip(np.rint((15 + t) / span * (x - lo)), 0, 15)
        levels = np.nan_to_num(levels)
        sl = (wt * levels).sum(-1, keepdims=True)
        sl2 = (wt * levels * levels).sum(-1, keepdims=True)
        sxl = (wt * x * levels).sum(-1, keepdims=True)
        det = sw * sl2 - sl * sl
        with np.errstate(divide="ignore", invalid="ignore"):
            d = as_f16((sw * sxl - sx * sl) / det)
            m = as_f16((sl2 * sx - sl * sxl) / det)
        ok = (det > 0) & (d > 0) & np.isfinite(d) & np.isfinite(m)
        d, m = np.where(ok, d, best_d), np.where(ok, m, best_m)
        _, err = _weighted_error(x, wt, d, m)
        better = (err < best_err)[..., None]
        best_d, best_m = np.where(better, d, best_d), np.where(better, m, best_m)
        best_err = np.minimum(err, best_err)
    return best_d, best_m


def encode_q4_1(w: np.ndarray) -> np.ndarray:
    """`w [N, K]` → Q4_1 blocks `uint8 [N, K / 32, 20]` (d, m, 16 bytes: value `j` in the low
    nibble of byte `j`, value `j + 16` in its high nibble)."""
    x = _blocks(w)
    out = np.empty((*x.shape[:2], 20), np.uint8)
    for start in range(0, x.shape[0], ROWS_PER_PASS):
        part = x[start : start + ROWS_PER_PASS]
        d, m = _search_q4_1(part)
        q, _ = _weighted_error(part, np.ones_like(part), d, m)
        q = q.astype(np.uint8)
        out[start : start + len(part), :, 0:2] = _f16_bytes(d[..., 0])
        out[start : start + len(part), :, 2:4] = _f16_bytes(m[..., 0])
        out[start : start + len(part), :, 4:] = q[..., :16] | (q[..., 16:] << 4)
    return out


def encode_q8_0(w: np.ndarray) -> np.ndarray:
    """`w [N, K]` → Q8_0 blocks `uint8 [N, K / 32, 34]` (d, 32 signed bytes)."""
    x = _blocks(w)
    d = (np.abs(x).max(-1, keepdims=True) / 127).astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(d > 0, np.clip(np.rint(x / d), -127, 127), 0).astype(np.int8)
    return np.concatenate([_f16_bytes(d[..., 0]), q.view(np.uint8)], axis=-1)


ENCODERS = {"Q4_1": encode_q4_1, "Q8_0": encode_q8_0}
