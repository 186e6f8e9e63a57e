"""The `vulkan` target end to end: the `.so` runs a whole model through our TVM runtime plugin
(`mlc/runtime/vulkan/`) on Mesa's software Vulkan device (llvmpipe) and generates the CPU
build's greedy tokens (for q4f16_1, up to near ties that fp16 rounding can flip).

Needs g++, `libvulkan-dev` and `mesa-vulkan-drivers` (`.ci/system-deps`); a missing one fails
with the command that installs it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from cpu_reference import assert_greedy_along, cpu_logits_along
from test_parity import settings as parity_settings

from mlc.build import BuildOptions, build
from mlc.runtime import vulkan
from mlc.runtime.artifact import ArtifactError
from mlc.runtime.compiled_model import CompiledModel
from mlc.targets import vulkan as vulkan_target
from mlc.testing.random_model import save_model

PROMPT = [1, 17, 42, 99, 123, 7, 250]
NUM_TOKENS = 12
# The CPU build computes q4f16_1 in fp32 (fp16 weights only); the OpenCL C kernels compute in
# fp16, so logits agree to fp16 precision: half an fp16 ulp at the logits' magnitude (~4 for
# this model) is 2e-3, and 2e-2 leaves room for the rounding of the fp16 accumulations before
# (measured here: 1e-3 after prefill, 5e-3 at worst over the decode steps).
TOLERANCE = {"q4f32_1": 1e-4, "q4f16_1": 2e-2}


def greedy(model: CompiledModel, prompt: list[int], num_tokens: int) -> list[np.ndarray]:
    """Logits after `prompt` and after each greedy token fed back (`num_tokens` in all)."""
    steps = [model.prefill(prompt).copy()]
    while len(steps) < num_tokens:
        steps.append(model.decode(int(np.argmax(steps[-1]))).copy())
    return steps


@pytest.fixture(scope="module")
def builds(tiny_builds):
    """quantization -> (CPU build dir, vulkan build dir)."""
    out = {}
    for quantization in TOLERANCE:
        _, cpu_dir = tiny_builds.get("llama", quantization)
        _, vk_dir = tiny_builds.get("llama", quantization, build_options={"target": "vulkan"})
        out[quantization] = cpu_dir, vk_dir
    return out


@pytest.mark.parametrize("quantization", list(TOLERANCE))
def test_vulkan_greedy_matches_cpu(builds, quantization):
    cpu_dir, vk_dir = builds[quantization]
    assert sorted(p.name for p in vk_dir.glob("*-vulkan*")) == [f"llama-{quantization}-vulkan.so"]
    tolerance = TOLERANCE[quantization]
    model = CompiledModel(vk_dir, device="vulkan")
    assert "llvmpipe" in model.device.device_name  # the software device, not a GPU

    steps = greedy(model, PROMPT, NUM_TOKENS)

    tokens = [int(np.argmax(s)) for s in steps]
    expected = cpu_logits_along(cpu_dir, PROMPT, tokens)
    np.testing.assert_allclose(steps[0], expected[0], atol=tolerance, rtol=0)
    # Every decode step too: the decode-attention kernels differ from prefill's.
    np.testing.assert_allclose(np.stack(steps), np.stack(expected), atol=tolerance, rtol=0)
    assert_greedy_along(tokens, expected, tolerance)


# Query/key norms inside the fused QKV (per-head RMSNorm with a shared weight; per-head LayerNorm
# with a weight per head): clspv once crashed on the split-and-concatenate they were built from.
@pytest.mark.parametrize("name", ["qwen3", "stablelm-qk-layernorm"])
def test_query_key_norm_models_match_cpu(tiny_builds, name):
    _, cpu_dir = tiny_builds.get(name, "q4f32_1", **parity_settings(name))
    _, vk_dir = tiny_builds.get(
        name, "q4f32_1", build_options={"target": "vulkan"}, **parity_settings(name)
    )
    steps = greedy(CompiledModel(vk_dir, device="vulkan"), PROMPT, NUM_TOKENS)
    tokens = [int(np.argmax(s)) for s in steps]
    expected = cpu_logits_along(cpu_dir, PROMPT, tokens)
    np.testing.assert_allclose(np.stack(steps), np.stack(expected), atol=1e-4, rtol=0)


def test_second_turn_and_two_sequences_match_cpu(builds):
    """A prefill over a cached prefix, then one batched decode and prefill of two sequences."""
    cpu_dir, vk_dir = builds["q4f32_1"]
    models = [
        CompiledModel(d, device=dev, max_batch_size=2)
        for d, dev in ((vk_dir, "vulkan"), (cpu_dir, "cpu"))
    ]
    results: list[list[np.ndarray]] = [[], []]
    for model, out in zip(models, results, strict=True):
        model.prefill(PROMPT)
        model.decode(5)
        out.append(model.prefill([33, 44, 55, 66, 77, 88], all_logits=True))
        model.add_sequence(1)
        out.append(model.forward_prefill([1], [np.array([1, 2, 3, 4, 5], np.int32)]))
        out.append(model.forward_decode([0, 1], [11, 12]))
        chunks = [np.array([3, 4, 5], np.int32), np.array([6, 7], np.int32)]
        out.append(model.forward_prefill([0, 1], chunks))
    for got, want in zip(*results, strict=True):
        np.testing.assert_allclose(got, want, atol=TOLERANCE["q4f32_1"], rtol=0)


def test_vulkan_library_needs_the_vulkan_device(builds):
    cpu_dir, vk_dir = builds["q4f32_1"]
    with pytest.raises(ArtifactError, match="device='vulkan'"):
        CompiledModel(vk_dir)
    with pytest.raises(ArtifactError, match="--target vulkan"):
        CompiledModel(cpu_dir, device="vulkan")


def test_no_vulkan_driver_says_what_to_install(builds):
    # A fresh process whose Vulkan loader finds no driver (the plugin is process-wide).
    _, vk_dir = builds["q4f32_1"]
    code = (
        "from mlc.runtime.compiled_model import CompiledModel\n"
        f"CompiledModel({str(vk_dir)!r}, device='vulkan')\n"
    )
    env = {**os.environ, "VK_ICD_FILENAMES": "/nonexistent.json", "VK_DRIVER_FILES": ""}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.returncode != 0
    assert "ToolMissingError" in run.stderr, run.stderr[-2000:]
    assert "apt-get install libvulkan1 mesa-vulkan-drivers" in run.stderr


def test_missing_gxx_says_what_to_install(monkeypatch):
    monkeypatch.setattr(vulkan.shutil, "which", lambda _: None)
    with pytest.raises(vulkan.ToolMissingError, match="apt-get install g\\+\\+"):
        vulkan._build()


def test_failed_spirv_export_leaves_nothing(tmp_path, monkeypatch):
    save_model(tmp_path / "hf")
    compiled = []

    def fail_on_third(source, name):
        compiled.append(name)
        if len(compiled) == 3:
            raise RuntimeError(f"clspv could not compile the kernel {name}")
        return real(source, name)

    real = vulkan_target.compile_kernel
    monkeypatch.setattr(vulkan_target, "compile_kernel", fail_on_third)
    opts = BuildOptions(model=tmp_path / "hf", quantization="q4f32_1", target="vulkan")
    opts.output, opts.quiet = tmp_path / "dist", True
    with pytest.raises(RuntimeError, match="clspv could not compile"):
        build(opts)
    assert len(compiled) == 3
    assert not any((tmp_path / "dist").iterdir())
