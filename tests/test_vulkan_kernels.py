"""`vulkan` builds: clspv SPIR-V that passes spirv-val, each kernel run on llvmpipe vs the CPU
(from Python, through PyPI `vulkan`; tests/test_vulkan_model.py runs whole models)."""

from __future__ import annotations

import numpy as np
import pytest
from test_parity import settings as parity_settings

from mlc.build import BuildOptions, build
from mlc.targets import ToolMissingError, get_target, spirv
from mlc.targets.device_blob import kernel_sources
from mlc.targets.vulkan import read_manifest
from mlc.testing import kernel_check as kc
from mlc.testing.numpy_kernels import ModelFacts
from mlc.testing.random_model import save_model
from mlc.testing.real_shapes import CONTEXT, case_settings
from mlc.testing.vulkan_check import VulkanDevice

# As in tests/test_opencl_kernels.py: no tree-attention cases yet.
UNCHECKED = {"batch_tree_attn", "tree_attn_paged_kv"}


def vulkan_build(tiny_builds, name: str, quantization: str, options=None, **settings):
    """(manifest, kernels by name, lowered module) of a `vulkan` build of a tiny model."""
    hf_dir, out = tiny_builds.get(
        name, quantization, build_options={**(options or {}), "target": "vulkan"}, **settings
    )
    (lib,) = out.glob("*-vulkan.so")
    manifest, code = read_manifest(lib)
    preset = get_target("vulkan")
    scheduled, reference = kc.model_kernels(hf_dir, quantization, preset)
    lowered = kc.lower(scheduled, reference, preset.tvm_target())
    kernels = {
        k["name"]: (code[k["name"]], spirv.interface_from_json(k)) for k in manifest["kernels"]
    }
    return manifest, kernels, lowered


@pytest.fixture(scope="module")
def vulkan_f16(tiny_builds):
    # The build tests/test_gpu_real_shapes.py runs whole: GQA, head_dim 64, hidden 256.
    options = {"context_window_size": CONTEXT}
    case = "llama-gqa-hd64"
    return vulkan_build(tiny_builds, case, "q4f16_1", options, **case_settings(case))


def test_artifact_spirv_is_valid(vulkan_f16):
    manifest, kernels, lowered = vulkan_f16
    names = {k["name"] for k in manifest["kernels"]}
    assert names == set(kernel_sources(lowered.source))
    for name, (code, _) in kernels.items():
        spirv.validate(code, name)
    for k in manifest["kernels"]:  # every argument clspv placed is one TVM passes
        placed = {int(i) for i in [*k["buffers"], *k["push_constants"]]}
        assert placed <= set(range(len(k["arg_types"]))), k["name"]
        assert k["launch_params"], k["name"]


def test_every_kernel_matches_cpu(tiny_builds, vulkan_f16):
    _, kernels, lowered = vulkan_f16
    options = {"context_window_size": CONTEXT, "target": "vulkan"}
    hf_dir, _ = tiny_builds.get("llama-gqa-hd64", "q4f16_1", options)  # vulkan_f16's build
    checked = set(lowered.functions()) - UNCHECKED
    assert any(n.startswith("fused_dequantize_matmul") for n in checked)
    device = VulkanDevice(kernels)
    skip = dict.fromkeys(UNCHECKED, "needs a consistent KV-cache state")
    facts = ModelFacts.of(hf_dir, "q4f16_1")
    results = kc.check_module(lowered, device, skip=skip, facts=facts)
    assert {r.name for r in results} == checked
    assert kc.numpy_checked_kinds(results) == {"matmul", "rms_norm", "decode_attention"}
    bad = [r.message for r in results if not r.ok]
    assert not bad, "\n".join(bad)


def test_mixture_of_experts_kernels_match_cpu(tiny_builds):
    """Routing (rank count, expert ids and weights) and the gather matmuls, each alone on
    llvmpipe against the CPU (4 experts: the checker's random ids, 0..3, are valid ones)."""
    _, kernels, lowered = vulkan_build(
        tiny_builds, "mixtral", "q4f32_1", **parity_settings("mixtral")
    )
    checked = set(lowered.functions()) - UNCHECKED
    for part in ("expert_rank", "expert_ids", "expert_weights", "experts_gate_up", "experts_down"):
        assert any(part in name for name in checked), (part, sorted(checked))
    skip = dict.fromkeys(UNCHECKED, "needs a consistent KV-cache state")
    results = kc.check_module(lowered, VulkanDevice(kernels), skip=skip)
    bad = [r.message for r in results if not r.ok]
    assert not bad, "\n".join(bad)


# clspv (pyclspv 0.0.1) stores both iterations of this loop into a[0]: in its SPIR-V the array
# is two Function variables and every OpStore in the loop targets the first (`spirv-dis`).
TWO_TRIP_LOOP_KERNEL = """__kernel void k(__global float* out, __global const float* in) {
  float a[2];
  for (int j = 0; j < 2; ++j) { barrier(CLK_LOCAL_MEM_FENCE); a[j] = in[j]; }
  out[2 * get_local_id(0)] = a[0];
  out[2 * get_local_id(0) + 1] = a[1];
}"""


def _run_two_trip_loop(code: bytes) -> np.ndarray:
    device = VulkanDevice({"k": (code, spirv.interface(code, "k"))})
    out = device.alloc(4 * 8)
    device.launch("k", [out, device.upload(np.array([1.5, 2.5], np.float32))], (1, 1, 1), (4, 1, 1))
    return device.download(out, (4, 2), "float32")


def test_clspv_two_trip_loop_is_unrolled_first():
    """The decode-attention kernels' `S_local[j]` loops gave inf/NaN until we unrolled them."""
    raw = _run_two_trip_loop(spirv.clspv_compile(TWO_TRIP_LOOP_KERNEL))
    # Both stores land in a[0] (a[1] keeps clspv's zero): if not, clspv got fixed and
    # spirv.unroll_two_trip_loops can go.
    np.testing.assert_array_equal(raw, [[2.5, 0.0]] * 4)
    fixed, _ = spirv.compile_kernel(TWO_TRIP_LOOP_KERNEL, "k")
    np.testing.assert_array_equal(_run_two_trip_loop(fixed), [[1.5, 2.5]] * 4)
    assert "for (" not in spirv.unroll_two_trip_loops(TWO_TRIP_LOOP_KERNEL)


def test_corrupt_kernel_is_named(vulkan_f16):
    _, kernels, lowered = vulkan_f16
    name = next(n for n in lowered.functions() if n.startswith("fused_split"))
    (kernel,) = [c.args[0].value for c in kc.launches(lowered.host(name))]
    source = kernel_sources(lowered.source)[kernel]
    body = source.rindex(f"__kernel void {kernel}(")
    # A plausible codegen bug: silu's sigmoid uses exp(+x) instead of exp(-x).
    corrupted = source[body:].replace("exp((", "exp(-(", 1)
    assert corrupted != source[body:]
    bad_kernels = dict(kernels)
    bad_kernels[kernel] = spirv.compile_kernel(source[:body] + corrupted, kernel)
    result = kc.check_function(lowered, name, VulkanDevice(bad_kernels))
    assert not result.ok and kernel in result.message


def test_missing_spirv_tools_leaves_no_artifact(tmp_path, monkeypatch):
    hf_dir = tmp_path / "hf"
    save_model(hf_dir)
    monkeypatch.setattr(spirv.shutil, "which", lambda _: None)
    opts = BuildOptions(model=hf_dir, quantization="q4f32_1", target="vulkan", quiet=True)
    opts.output = tmp_path / "dist"
    with pytest.raises(ToolMissingError, match="apt-get install spirv-tools"):
        build(opts)
    assert not any((tmp_path / "dist").iterdir())
