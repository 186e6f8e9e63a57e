"""Inputs for one PrimFunc, and the parameter helpers that make them.

Both the generic checker (`kernel_check`) and the paged-KV-cache states (`kv_cache_cases`)
build `KernelCase`s; they share these pieces here, so neither imports the other's back.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tvm
import tvm_ffi
from tvm import tirx
from tvm.tirx import expr as tx


@dataclasses.dataclass
class KernelCase:
    """Concrete inputs for one PrimFunc: values of its symbolic vars, arrays, scalars."""

    values: dict[str, int | float]
    arrays: dict[str, np.ndarray]  # by buffer name
    scalars: dict[str, int | float]  # by scalar parameter name


def is_buffer(param: tx.Var) -> bool:
    """In TVM 0.27 a buffer parameter is a Var of BufferType (with shape, data, offset)."""
    return isinstance(param.ty, tvm.tirx.buffer.BufferType)


def scalar_dtype(param: tx.Var) -> str:
    return str(param.ty.dtype)


def free_vars(func: tirx.PrimFunc) -> list[tx.Var]:
    """Symbolic vars of the buffer shapes and offsets, in first-seen order."""
    seen: dict[str, tx.Var] = {}
    for param in func.params:
        if not is_buffer(param):
            continue
        buf = param
        for e in [*buf.shape, buf.elem_offset]:
            for v in tvm_ffi.get_global_func("tirx.analysis.UndefinedVars")(e, []):
                seen.setdefault(v.name, v)
    return list(seen.values())


def random_array(shape: tuple[int, ...], dtype: str, rng: np.random.Generator) -> np.ndarray:
    if dtype.startswith("float"):
        return rng.uniform(-1, 1, shape).astype(dtype)
    if dtype.startswith("uint"):
        info = np.iinfo(dtype)
        return rng.integers(0, info.max, shape, dtype=dtype, endpoint=True)
    return rng.integers(0, 4, shape).astype(dtype)
