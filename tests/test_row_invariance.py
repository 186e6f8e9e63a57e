"""Every CPU kernel computes a row the same way, bit for bit, whatever the number of rows in
the call (the batch size in decode, the tokens of a prefill step): the ground of batch-invariant
serving (`test_batch_engine.test_greedy_answers_do_not_depend_on_the_batch`).

LLVM vectorises a loop over rows in groups and leaves the rest to scalar code; under fast-math
the two round differently. Row counts 4, 9 and 17 put a row in the scalar rest, in a group of 8
and in a group of 16."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import tvm
from test_parity import settings as parity_settings

from mlc.targets import get_target
from mlc.testing.kernel_case import free_vars, is_buffer, random_array, scalar_dtype
from mlc.testing.kernel_check import DEFAULT_SHAPE_VALUE, evaluate, model_kernels

GQA = {"num_key_value_heads": 2}
ROW_VARS = ("seq_len", "batch_size")
ROW_COUNTS = (4, 9, 17)
# The paged KV cache's kernels take row offsets into other buffers, not rows of their own
# (attention keeps each sequence and head in its own task: cpu_attention_*).
CACHE_KERNELS = ("kv", "attn", "attention", "merge", "page", "compact")


def _shapes(func, rows: int) -> dict[str, tuple[int, ...]]:
    env = {}
    for var in free_vars(func):
        offset = any(p.elem_offset.same_as(var) for p in func.params if is_buffer(p))
        env[var] = 0 if offset else rows if var.name in ROW_VARS else DEFAULT_SHAPE_VALUE
    return {
        _key(i, p): tuple(int(evaluate(d, env)) for d in p.shape)
        for i, p in enumerate(func.params)
        if is_buffer(p)
    }


def _key(index: int, param) -> str:
    """Buffers by position and name: a kernel may name two outputs alike (`split`)."""
    return f"{index}:{param.name}"


def _run(lib, func, inputs: dict[str, np.ndarray], shapes) -> dict[str, np.ndarray]:
    """Every buffer after a call on the top-left corner of `inputs` that `shapes` gives."""
    tensors, args = {}, []
    for index, param in enumerate(func.params):
        if not is_buffer(param):
            args.append(0.5 if "float" in scalar_dtype(param) else 1)
            continue
        key = _key(index, param)
        corner = tuple(slice(0, n) for n in shapes[key])
        tensors[key] = tvm.runtime.tensor(np.ascontiguousarray(inputs[key][corner]))
        args.append(tensors[key])
    lib["main"](*args)
    return {name: t.numpy() for name, t in tensors.items()}


# The dense model at every code; mixtures of experts (routing, gather matmuls; 4 experts, so
# that the random ids 0..3 the cases get are valid); Qwen3's per-head q/k norms, whose
# reciprocal square root LLVM's reciprocal estimate once computed differently in the vector
# loop and its scalar rest (AVX-512 CPUs).
CASES = [("gqa", code) for code in ("q0f32", "q4f16_1", "q4f32_1", "q8f16_1")]
CASES += [("mixtral", "q4f32_1"), ("qwen2_moe", "q4f32_1"), ("qwen3_moe", "q4a8_1")]


@pytest.mark.parametrize(("name", "code"), CASES)
def test_every_cpu_kernel_computes_a_row_alike_at_any_row_count(tiny_builds, name, code):
    settings = GQA if name == "gqa" else parity_settings(name)
    hf_dir, _ = tiny_builds.get(name, code, **settings)
    preset = get_target("llvm")
    scheduled, _ = model_kernels(hf_dir, code, preset)
    checked = []
    for kernel, func in sorted(scheduled.items()):
        if any(part in kernel for part in CACHE_KERNELS):
            continue
        if not any(v.name in ROW_VARS for v in free_vars(func)):
            continue
        module = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
        lib = tvm.tirx.build(module, target=preset.tvm_target())
        shapes = {rows: _shapes(func, rows) for rows in ROW_COUNTS}
        rng = np.random.default_rng(0)
        most = shapes[ROW_COUNTS[-1]]
        inputs = {
            _key(i, p): random_array(most[_key(i, p)], p.dtype, rng)
            for i, p in enumerate(func.params)
            if is_buffer(p)
        }
        runs = {rows: _run(lib, func, inputs, shapes[rows]) for rows in ROW_COUNTS}
        for fewer, more in itertools.pairwise(ROW_COUNTS):
            for buffer, array in runs[fewer].items():
                if array.dtype.kind == "f":
                    corner = tuple(slice(0, n) for n in array.shape)
                    np.testing.assert_array_equal(
                        runs[more][buffer][corner],
                        array,
                        err_msg=f"{kernel}: {buffer} with {fewer} rows and with {more}",
                    )
        checked.append(kernel)
    assert any("matmul" in n for n in checked) and any("norm" in n for n in checked), checked
