"""Llama 3's RoPE scaling as GGUF stores it: a `rope_freqs` tensor of per-frequency divisors
(llama.cpp's converter computes them from `rope_scaling`), and the `rope_scaling` parameters
recovered from them.

Frequency i of a head of `head_dim` is `f_i = theta^(-2i / head_dim)`, wavelength
`λ_i = 2π / f_i`; Llama 3 divides it by `r_i`: 1 where `λ_i < L / high_freq_factor`, `factor`
where `λ_i > L / low_freq_factor`, else `1 / ((1 - s) / factor + s)` with
`s = (L / λ_i - low_freq_factor) / (high_freq_factor - low_freq_factor)` (`L`: the original
context length). The divisors fix the parameters only up to a common scale of `L`,
`low_freq_factor` and `high_freq_factor`, which leaves every `r_i` unchanged: we keep `L` as
the file says (or 8192, Llama 3's) and solve for the other two.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

LLAMA3_ORIGINAL_CONTEXT = 8192
# Divisors recomputed from the recovered parameters must equal the file's this closely.
RTOL = 1e-5


def wavelengths(theta: float, head_dim: int) -> np.ndarray:
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    return 2 * math.pi / freqs


def llama3_rope_factors(theta: float, head_dim: int, scaling: dict[str, Any]) -> np.ndarray:
    """The `rope_freqs` divisors of `rope_scaling` (as llama.cpp's converter writes them)."""
    factor = float(scaling["factor"])
    low = float(scaling.get("low_freq_factor", 1.0))
    high = float(scaling.get("high_freq_factor", 4.0))
    context = float(scaling.get("original_max_position_embeddings", LLAMA3_ORIGINAL_CONTEXT))
    out = []
    for wavelength in wavelengths(theta, head_dim):
        if wavelength < context / high:
            out.append(1.0)
        elif wavelength > context / low:
            out.append(factor)
        else:
            smooth = (context / wavelength - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def llama3_scaling(
    factors: np.ndarray, theta: float, head_dim: int, context: int = LLAMA3_ORIGINAL_CONTEXT
) -> dict[str, Any]:
    """`rope_scaling` (`rope_type` llama3) whose divisors are `factors`; ValueError where no
    Llama 3 scaling gives them."""
    r = np.asarray(factors, dtype=np.float64)
    lam = wavelengths(theta, head_dim)
    if r.shape != lam.shape:
        raise ValueError(f"rope_freqs has {r.size} values; a head of {head_dim} needs {lam.size}")
    factor = float(r.max())
    if not (np.all(np.diff(r) >= -RTOL * factor) and r[0] >= 1 - RTOL and factor > 1):
        raise ValueError("rope_freqs does not rise from 1 to a factor > 1 as Llama 3's does")
    ones = np.isclose(r, 1.0, rtol=RTOL)
    full = np.isclose(r, factor, rtol=RTOL)
    middle = ~ones & ~full
    x = context / lam  # the smooth part is linear in x: s = (x - low) / (high - low)
    if middle.sum() >= 2:
        s = (1 / r[middle] - 1 / factor) / (1 - 1 / factor)
        slope, low = np.polyfit(s, x[middle], 1)  # x = low + s · (high - low)
        high = low + slope
    else:  # any thresholds between the neighbouring wavelengths give the same divisors
        high = _between(x, ones, ~ones, prefer_max=True)
        low = _between(x, full, ~full, prefer_max=False)
    scaling = {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": float(low),
        "high_freq_factor": float(high),
        "original_max_position_embeddings": int(context),
    }
    again = llama3_rope_factors(theta, head_dim, scaling)
    if not np.allclose(again, r, rtol=RTOL, atol=0):
        raise ValueError("rope_freqs does not follow Llama 3's RoPE scaling rule")
    return scaling


def _between(x: np.ndarray, inside: np.ndarray, outside: np.ndarray, prefer_max: bool) -> float:
    """A threshold on x between the values `inside` (one side) and `outside` (the other)."""
    if not inside.any():
        return float(x.max() * 2 if prefer_max else x.min() / 2)
    if not outside.any():
        return float(x.min() / 2 if prefer_max else x.max() * 2)
    if prefer_max:  # `inside` (divisor 1) are the high frequencies: large x
        return float((x[inside].min() + x[outside].max()) / 2)
    return float((x[inside].max() + x[outside].min()) / 2)
