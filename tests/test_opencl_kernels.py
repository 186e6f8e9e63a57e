"""`android`/`opencl` builds, and every OpenCL C kernel run on pocl against the CPU build."""

from __future__ import annotations

import dataclasses
import tarfile

import pytest

from mlc.quantization.group_quant import GroupQuantization
from mlc.targets import ToolMissingError, get_target
from mlc.targets.device_blob import kernel_sources
from mlc.testing import kernel_check as kc
from mlc.testing.numpy_kernels import ModelFacts
from mlc.testing.opencl_check import OpenCLDevice
from mlc.testing.real_shapes import save_case

# Paged-KV-cache kernels run on consistent cache states (mlc.testing.kv_cache_cases), except:
UNCHECKED = {
    # Tree attention serves speculative decoding (token trees), which mlc does not use; no
    # consistent tree-mask case is written yet.
    "batch_tree_attn": "no tree-mask case",
    "tree_attn_paged_kv": "no tree-order case",
}


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return save_case("llama-gqa-hd64", tmp_path_factory.mktemp("opencl") / "llama")


@pytest.fixture(scope="module")
def lowered_f32(tiny_llama):
    preset = get_target("opencl")
    scheduled, reference = kc.model_kernels(tiny_llama, "q4f32_1", preset)
    return kc.lower(scheduled, reference, preset.tvm_target())


@pytest.mark.parametrize("quantization", ["q4f16_1", "q4f32_1"])
@pytest.mark.parametrize("target", ["android", "opencl"])
def test_build(tiny_builds, target, quantization):
    _, out = tiny_builds.get("llama", quantization, build_options={"target": target})
    (lib,) = out.glob(f"*-{target}.*")
    if target == "android":
        with tarfile.open(lib) as tar:
            assert {"lib0.o", "devc.o"} <= set(tar.getnames())
    else:
        assert b"__kernel void" in lib.read_bytes()


def test_every_kernel_matches_cpu(tiny_llama, lowered_f32):
    checked = set(lowered_f32.functions()) - set(UNCHECKED)
    assert {
        "rms_norm",
        "fused_rope",
        "take",
        "dequantize_take",
        "tir_attention_merge_state",
    } <= checked
    assert {"batch_decode_paged_kv", "batch_prefill_paged_kv", "batch_prefill_ragged_kv"} <= checked
    assert any(n.startswith("fused_dequantize_matmul") for n in checked)
    facts = ModelFacts.of(tiny_llama, "q4f32_1")
    device = OpenCLDevice(lowered_f32.source)
    results = kc.check_module(lowered_f32, device, skip=UNCHECKED, facts=facts)
    assert {r.name for r in results} == checked
    assert kc.numpy_checked_kinds(results) == {"matmul", "rms_norm", "decode_attention"}
    bad = [r.message for r in results if not r.ok]
    assert not bad, "\n".join(bad)


def test_numpy_reference_fails_a_kernel_computing_something_else(tiny_llama, lowered_f32):
    """The device and the TIR reference agree; numpy, told another model's facts, does not."""
    facts = ModelFacts.of(tiny_llama, "q4f32_1")
    device = OpenCLDevice(lowered_f32.source)
    assert kc.check_function(lowered_f32, "rms_norm", device, facts=facts).ok
    wrong_eps = dataclasses.replace(facts, rms_norm_eps=1.0)
    result = kc.check_function(lowered_f32, "rms_norm", device, facts=wrong_eps)
    assert not result.ok and "off numpy's" in result.message
    # A plausible slip in a Linear's definition: the zero point taken as 8, not 7.
    scheme = facts.quantization
    fields = {f.name: getattr(scheme, f.name) for f in dataclasses.fields(scheme)}
    off_by_one = dataclasses.replace(facts, quantization=_ZeroPointEight(**fields))
    result = kc.check_function(lowered_f32, "dequantize_matmul", device, facts=off_by_one)
    assert not result.ok and "off numpy's" in result.message


class _ZeroPointEight(GroupQuantization):
    @property
    def max_int(self) -> int:
        return 8


def test_corrupt_kernel_is_named(lowered_f32):
    sources = kernel_sources(lowered_f32.source)
    chunk = sources["rms_norm_kernel"]
    body = chunk.rindex("__kernel void rms_norm_kernel(")  # the definition, after declarations
    # A plausible codegen bug: the mean over 256 channels divides by 128.
    corrupted = chunk[body:].replace("/ 2.560000e+02f", "/ 1.280000e+02f")
    assert corrupted != chunk[body:]
    sources["rms_norm_kernel"] = chunk[:body] + corrupted
    device = OpenCLDevice("\n".join(sources.values()))
    bad = kc.check_function(lowered_f32, "rms_norm", device)
    assert not bad.ok and "rms_norm_kernel" in bad.message
    assert kc.check_function(lowered_f32, "rms_norm1", device).ok


def test_float16_needs_half_support():
    source = "__kernel void scale(__global half* x) { x[get_global_id(0)] *= (half)2; }"
    with pytest.raises(ToolMissingError, match="cl_khr_fp16"):
        OpenCLDevice(source)
