"""Float32 math that LLVM would otherwise call scalar libm for, lane by lane.

`exp2` builds 2^x from the exponent bits of floor(x) times a degree-5 polynomial of the fraction
(relative error about 2e-7), out of adds, multiplies, a floor, a convert and a shift: a vector of
them is a handful of vector instructions.
"""

from __future__ import annotations

from tvm import tirx

# 2^f for f in [0, 1), highest degree last: a least-squares fit of the relative error, at
# most 2e-7 in float32.
EXP2_POLY = (1.0000000000, 0.6931529682, 0.2401545299, 0.0558236045, 0.0089925840, 0.0018762329)
# Beyond this 2^x leaves float32's normal range.
EXP2_LIMIT = 126.0


def splat(value, lanes: int, dtype: str = "float32") -> tirx.PrimExpr:
    """A constant in `lanes` lanes (a scalar when `lanes` is 1)."""
    scalar = tirx.const(value, dtype)
    return scalar if lanes == 1 else tirx.Broadcast(scalar, lanes)


def exp2(x: tirx.PrimExpr, lanes: int, nonpositive: bool = False) -> tirx.PrimExpr:
    """2^x, float32 with `lanes` lanes; `nonpositive`: x <= 0 is known (softmax exponents), so
    only the lower end is clamped."""
    x = tirx.max(x, splat(-EXP2_LIMIT, lanes))
    if not nonpositive:
        x = tirx.min(x, splat(EXP2_LIMIT, lanes))
    whole = tirx.floor(x)
    fraction = x - whole
    poly = splat(EXP2_POLY[-1], lanes)
    for coefficient in EXP2_POLY[-2::-1]:
        poly = poly * fraction + splat(coefficient, lanes)
    suffix = "" if lanes == 1 else f"x{lanes}"
    exponent = tirx.Cast(f"int32{suffix}", whole) + splat(127, lanes, "int32")
    bits = tirx.shift_left(exponent, splat(23, lanes, "int32"))
    scale = tirx.reinterpret(f"float32{suffix}", bits)
    return poly * scale
