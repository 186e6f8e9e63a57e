"""Consistent paged-KV-cache states for checking the attention and page kernels.

Random integers are no page table: these cases describe two sequences (20 and 7 tokens) in
16-token pages placed out of order (`page_values` = 2, 0, 1; page 3 unused), so the kernels'
indirections, partial last pages and causal masks are all exercised.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from tvm import tirx

from .kernel_case import KernelCase, free_vars, is_buffer, random_array, scalar_dtype

PAGE_SIZE = 16
KV_LENGTHS = (20, 7)  # tokens per sequence already in the cache (incl. this step's)
PAGE_INDPTR = np.array([0, 2, 3], np.int32)
PAGE_VALUES = np.array([2, 0, 1], np.int32)
LAST_PAGE_LEN = np.array([4, 7], np.int32)
Q_LENGTHS = (3, 2)  # prefill: new tokens per sequence
SCALARS = {"rotary_mode": 0, "rope_scale": 1.0, "rope_theta": 10000.0, "sm_scale": 0.25}


def _decode(func: tirx.PrimFunc, rng: np.random.Generator, window: bool) -> dict:
    length_info = np.stack([LAST_PAGE_LEN, [0, 0], [0, 0]]) if window else LAST_PAGE_LEN
    return {
        "page_table_indptr": PAGE_INDPTR,
        "page_table_values": PAGE_VALUES,
        "length_info": length_info.astype(np.int32),
        "k_rope_pos_offset": np.zeros(2, np.int32),
        "q_rope_position": np.array(KV_LENGTHS, np.int32) - 1,
    }


def _prefill(func: tirx.PrimFunc, rng: np.random.Generator, window: bool) -> dict:
    length_info = np.stack([LAST_PAGE_LEN, [0, 0], [0, 0]]) if window else LAST_PAGE_LEN
    positions = [range(kv - q, kv) for q, kv in zip(Q_LENGTHS, KV_LENGTHS, strict=True)]
    return {
        "q_indptr": np.array([0, Q_LENGTHS[0], sum(Q_LENGTHS)], np.int32),
        "page_indptr": PAGE_INDPTR,
        "page_values": PAGE_VALUES,
        "length_info": length_info.astype(np.int32),
        "k_rope_pos_offset": np.zeros(2, np.int32),
        "q_rope_position": np.array([p for r in positions for p in r], np.int32),
    }


def _ragged(func: tirx.PrimFunc, rng: np.random.Generator, window: bool) -> dict:
    indptr = np.array([0, Q_LENGTHS[0], sum(Q_LENGTHS)], np.int32)
    return {
        "q_indptr": indptr,
        "kv_indptr": indptr,
        "k_rope_pos_offset": np.zeros(2, np.int32),
        "q_rope_position": np.array([0, 1, 2, 0, 1], np.int32),
    }


def _compact(func: tirx.PrimFunc, rng: np.random.Generator, window: bool) -> dict:
    return {
        "copy_length_indptr": np.array([0, 2, 3], np.int32),
        "copy_src_dst_pos": np.array([[5, 6, 40], [1, 2, 33]], np.int32),
    }


INDEX_ARRAYS: dict[str, Callable[[tirx.PrimFunc, np.random.Generator, bool], dict]] = {
    "batch_decode_paged_kv": _decode,
    "batch_prefill_paged_kv": _prefill,
    "batch_prefill_ragged_kv": _ragged,
    "compact_kv_copy": _compact,
}
SHAPES = {  # symbolic dims these cases imply
    "B": 2,
    "batch_size": 2,
    "max_num_pages": 4,
    "num_pages": 4,
    "nnz_pages": 3,
    "total_len": sum(Q_LENGTHS),
    "qo_len": sum(Q_LENGTHS),
    "kv_len": sum(Q_LENGTHS),
    "page_size": PAGE_SIZE,
    "total_copy_length": 3,
    "N": 5,
    "H": 4,
    "D": 16,
}
EXTRA_SCALARS = {
    "causal": 1,
    "batch_size": 2,
    "src_page_id": 1,
    "tgt_page_id": 3,
    "copy_length": 10,
}


def kv_cache_case(name: str, func: tirx.PrimFunc, seed: int = 0) -> KernelCase | None:
    """A consistent case for the KV-cache kernel `name`, or None if there is none."""
    rng = np.random.default_rng(seed)
    base = name.removesuffix("_sliding_window")
    window = base != name
    if base not in INDEX_ARRAYS and base not in ("copy_single_page", "tir_attention_merge_state"):
        return None
    fixed = INDEX_ARRAYS[base](func, rng, window) if base in INDEX_ARRAYS else {}
    values: dict[str, int | float] = {}
    for var in free_vars(func):
        values[var.name] = 0 if var.name.endswith("elem_offset") else SHAPES.get(var.name, 0)
    for param in func.params:
        if is_buffer(param):
            for dim in param.elem_offset, *param.shape:
                if isinstance(dim, tirx.Var) and dim.name not in SHAPES:
                    values[dim.name] = 0  # buffer offsets
    arrays = {}
    for param in func.params:
        if not is_buffer(param):
            continue
        if param.name in fixed:
            arrays[param.name] = fixed[param.name]
            continue
        shape = tuple(_dim(d, values) for d in param.shape)
        arrays[param.name] = random_array(shape, str(param.dtype), rng)
    if base == "tir_attention_merge_state":  # log-sum-exps, as attention produces them
        for s in ("S", "S_other"):
            arrays[s] = rng.uniform(0, 4, arrays[s].shape).astype(arrays[s].dtype)
    scalars = {
        p.name: np.dtype(scalar_dtype(p)).type({**SCALARS, **EXTRA_SCALARS}[p.name]).item()
        for p in func.params
        if not is_buffer(p)
    }
    return KernelCase(values, arrays, scalars)


def _dim(dim: object, values: dict[str, int | float]) -> int:
    if isinstance(dim, tirx.IntImm):
        return int(dim.value)
    if isinstance(dim, tirx.Var):
        return int(values[dim.name])
    # `B + 1`-style dims: only indptr arrays, which every case provides explicitly.
    raise ValueError(f"no value for the dimension {dim}")
