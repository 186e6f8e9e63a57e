"""Every WGSL kernel of a tiny `webgpu` build, run through PyPI `wgpu` on Mesa's software
Vulkan device and compared with the CPU build kernel by kernel (`mlc/testing/kernel_check.py`)."""

from __future__ import annotations

import numpy as np
import pytest

from mlc.targets import get_target
from mlc.targets.device_blob import kernel_sources
from mlc.testing import kernel_check as kc
from mlc.testing.numpy_kernels import ModelFacts
from mlc.testing.real_shapes import save_case
from mlc.testing.wgsl_check import WGSLDevice, fold_grid, pack_scalars

# Tree attention has no consistent random case yet; every other kernel, paged-KV attention
# included, is checked.
UNCHECKED = {
    "batch_tree_attn": "needs a consistent tree mask and indptr arrays",
    "tree_attn_paged_kv": "needs a consistent page table and tree order",
}


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return save_case("llama-gqa-hd64", tmp_path_factory.mktemp("wgsl") / "llama")


def lowered_for(model_dir, quantization: str) -> kc.LoweredModule:
    preset = get_target("webgpu")
    scheduled, reference = kc.model_kernels(model_dir, quantization, preset)
    return kc.lower(scheduled, reference, preset.tvm_target())


@pytest.fixture(scope="module")
def lowered_f32(tiny_llama):
    return lowered_for(tiny_llama, "q4f32_1")


def check_all(lowered: kc.LoweredModule, facts: ModelFacts) -> None:
    checked = set(lowered.functions()) - set(UNCHECKED)
    assert {"take", "dequantize_take", "fused_rope", "batch_decode_paged_kv"} <= checked
    assert "tir_attention_merge_state" in checked
    assert any(n.startswith("fused_dequantize_matmul") for n in checked)
    results = kc.check_module(lowered, WGSLDevice(lowered.source), skip=UNCHECKED, facts=facts)
    assert {r.name for r in results} == checked
    assert kc.numpy_checked_kinds(results) == {"matmul", "rms_norm", "decode_attention"}
    bad = [r.message for r in results if not r.ok]
    assert not bad, "\n".join(bad)


def test_every_f32_kernel_matches_cpu(tiny_llama, lowered_f32):
    check_all(lowered_f32, ModelFacts.of(tiny_llama, "q4f32_1"))


def test_every_f16_kernel_matches_cpu(tiny_llama):
    lowered = lowered_for(tiny_llama, "q4f16_1")
    assert "enable f16;" in lowered.source
    check_all(lowered, ModelFacts.of(tiny_llama, "q4f16_1"))


def test_corrupt_kernel_is_named(lowered_f32):
    sources = kernel_sources(lowered_f32.source)
    # A plausible codegen bug: the mean over 256 channels divides by 128.
    corrupted = sources["rms_norm_kernel"].replace("/ 2.560000e+02f", "/ 1.280000e+02f")
    assert corrupted != sources["rms_norm_kernel"]
    sources["rms_norm_kernel"] = corrupted
    device = WGSLDevice("\n".join(sources.values()))
    bad = kc.check_function(lowered_f32, "rms_norm", device)
    assert not bad.ok and "rms_norm_kernel" in bad.message
    assert kc.check_function(lowered_f32, "rms_norm1", device).ok


def test_dispatch_matches_tvm_javascript_runtime():
    # webgpu.ts halves x (rounding up) into z until x < 65536; kernels unfold with packGridDimX.
    assert fold_grid((70001, 3)) == (35001, 3, 2)
    assert fold_grid((65535, 1, 1)) == (65535, 1, 1)
    pod = pack_scalars([np.int64(-3), np.float32(0.5), np.uint32(7)], 70001)
    assert np.frombuffer(pod[:4], np.int32)[0] == -3
    assert np.frombuffer(pod[4:8], np.float32)[0] == 0.5
    assert list(np.frombuffer(pod[8:], np.uint32)) == [7, 70001]
