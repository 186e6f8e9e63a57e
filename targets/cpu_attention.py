"""Swap the paged KV cache's CPU attention kernels for ours (`cpu_attention_decode`,
`cpu_attention_prefill`), keeping their names, signatures and results, and honouring the
attention variant (sliding window, soft-capping) the model stamped on them.
"""

from __future__ import annotations

import tvm
from tvm import tirx

from .cpu_attention_common import LANES, PLAIN, AttentionVariant
from .cpu_attention_decode import decode_attention
from .cpu_attention_prefill import prefill_paged_attention, prefill_ragged_attention

RAGGED_PREFILL_KERNEL = "batch_prefill_ragged_kv"
PAGED_PREFILL_KERNELS = ("batch_prefill_paged_kv_cpu", "batch_prefill_paged_kv_cpu_sliding_window")
DECODE_KERNELS = ("batch_decode_paged_kv_cpu", "batch_decode_paged_kv_cpu_sliding_window")


def _shape(func: tirx.PrimFunc, param: str) -> tuple[list, str]:
    """The shape (ints where static, expressions elsewhere) and dtype of buffer `param`."""
    buffers = {p.name: p for p in func.params if "Buffer" in type(p.ty).__name__}
    if param not in buffers:
        raise RuntimeError(f"unexpected kernel signature (no buffer {param!r}): {list(buffers)}")
    buf = buffers[param]
    shape = [int(d) if isinstance(d, (int, tirx.IntImm)) else d for d in buf.shape]
    return shape, str(buf.dtype)


def _ours(name: str, func: tirx.PrimFunc) -> tirx.PrimFunc | None:
    """Our kernel for the cache's kernel `name`, or None where it keeps its own."""
    variant = AttentionVariant.of(func)
    (_, heads, head_dim), dtype = _shape(func, "Q" if name in DECODE_KERNELS else "q")
    if head_dim % LANES:
        if variant != PLAIN:
            raise ValueError(
                f"{name}: head_dim {head_dim} is not a multiple of {LANES}; the CPU kernels "
                f"cannot compute the model's {variant}"
            )
        return None  # the cache's own (scalar) kernel
    if name.endswith("_sliding_window"):
        # TVM's per-sequence sliding mode (it evicts pages, see the README), which our runtime
        # never turns on: the cache keeps its own kernel (ours would only cost compile time).
        return None
    if name == RAGGED_PREFILL_KERNEL:
        (_, kv_heads, _), _ = _shape(func, "k")
        return prefill_ragged_attention(kv_heads, heads, head_dim, dtype, variant)
    (_, _, kv_heads, page_size, _), _ = _shape(func, "pages")
    build = decode_attention if name in DECODE_KERNELS else prefill_paged_attention
    return build(kv_heads, heads, head_dim, dtype, page_size, variant)


@tvm.transform.module_pass(opt_level=0, name="UseCPUAttention")
def use_cpu_attention(mod: tvm.ir.IRModule, _ctx) -> tvm.ir.IRModule:
    """Swap the cache's CPU decode and prefill kernels for ours."""
    names = {g.name_hint for g in mod.get_global_vars()}
    for name in (RAGGED_PREFILL_KERNEL, *PAGED_PREFILL_KERNELS, *DECODE_KERNELS):
        if name not in names:
            continue
        gvar = mod.get_global_var(name)
        kernel = _ours(name, mod[gvar])
        if kernel is not None:
            mod[gvar] = kernel.with_attr("global_symbol", mod[gvar].attrs["global_symbol"])
    return mod
