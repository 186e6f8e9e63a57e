"""Compiling and calling one kernel on this CPU, for the x86 kernel tests."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from mlc.targets import get_target
from mlc.targets.x86_kernels import has_avx2, has_avx512_vnni

# Compiled kernels by (function object, target): a test calls one kernel on several inputs
# (a prompt's rows together, then each alone) and compiles it once.
_COMPILED: dict = {}


def run_kernel(
    func: tvm.tirx.PrimFunc, target: tvm.target.Target, arrays: list[np.ndarray], outputs: int = 1
) -> list[np.ndarray]:
    """Compile `func` (once per function object and target), call it on `arrays`, and return
    the last `outputs` of them."""
    key = (func, str(target))
    if key not in _COMPILED:
        _COMPILED[key] = tvm.compile(func.with_attr("global_symbol", "kernel"), target=target)
    lib = _COMPILED[key]
    args = [tvm.runtime.tensor(a) for a in arrays]
    lib["kernel"](*args)
    return [a.numpy() for a in args[-outputs:]]


def x86_target(vnni: bool) -> tvm.target.Target:
    """This CPU's target, where the x86 kernel (with `vnni`, its AVX512-VNNI form) can run."""
    target = get_target("llvm").tvm_target()
    if not has_avx2(target):
        pytest.fail("this machine has no AVX2; run the test where the kernel can run")
    if vnni and not has_avx512_vnni(target):
        pytest.skip("this CPU has no AVX512-VNNI (the build uses the AVX2 kernel here)")
    return target
