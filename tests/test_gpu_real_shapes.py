"""Whole models with real shapes on the software GPU devices, every step's logits against the
CPU build: grouped-query attention with head_dim 64 and 128, hidden 256, biases and norm
weights off their initial values (`mlc.testing.real_shapes`), a 160-token prompt and 16 decode
steps (11 pages of the KV cache, so decode attends to several blocks and merges their partial
results), then a second turn over the cached prefix. Vulkan runs on llvmpipe through our
runtime plugin, WebGPU in Deno on the same device.
"""

from __future__ import annotations

import numpy as np
import pytest

from mlc.runtime.compiled_model import CompiledModel
from mlc.runtime.web import run_greedy
from mlc.testing.real_shapes import CONTEXT, case_settings, random_prompt

PROMPT_TOKENS = 160
DECODE_STEPS = 16
SECOND_TURN_TOKENS = 40
# Of the logits' range (about 25 for these models). The float32 builds differ from the CPU's
# only in summation order: measured 1.5e-5 of the range at worst, so 1e-4 leaves a margin and
# still fails on any wrong kernel (TVM's racy merge kernel was off by a quarter of the range).
# The float16 builds compute in float16 where the CPU build computes in float32 (fp16 weights
# only): measured 1e-3 of the range (about 3 fp16 ulps at the logits' magnitude of 13).
TOLERANCE = {"q4f32_1": 1e-4, "q4f16_1": 4e-3}


def _builds(tiny_builds, case: str, quantization: str, target: str):
    options = {"context_window_size": CONTEXT}
    settings = case_settings(case)
    _, cpu_dir = tiny_builds.get(case, quantization, build_options=options, **settings)
    _, gpu_dir = tiny_builds.get(
        case, quantization, build_options={**options, "target": target}, **settings
    )
    return cpu_dir, gpu_dir


def _cpu_steps(cpu_dir, prompt: list[int], tokens: list[int]) -> tuple[CompiledModel, np.ndarray]:
    """The CPU build's logits after the prompt and after each of `tokens` but the last."""
    model = CompiledModel(cpu_dir)
    steps = [model.prefill(prompt).copy()]
    steps += [model.decode(t).copy() for t in tokens[:-1]]
    return model, np.stack(steps)


def assert_close(got: np.ndarray, want: np.ndarray, quantization: str) -> None:
    scale = float(want.max() - want.min())
    err = float(np.abs(got - want).max())
    assert err <= TOLERANCE[quantization] * scale, (
        f"off by {err:.3g}, {err / scale:.2e} of the logits' range "
        f"(tolerance {TOLERANCE[quantization]:.0e})"
    )


@pytest.mark.parametrize(
    ("case", "quantization"),
    [
        ("llama-gqa-hd64", "q4f32_1"),
        ("qwen2-bias-hd64", "q4f32_1"),
        ("phi3-hd128", "q4f32_1"),
        ("llama-gqa-hd64", "q4f16_1"),
    ],
)
def test_vulkan_real_shapes_match_cpu(tiny_builds, case, quantization):
    cpu_dir, vk_dir = _builds(tiny_builds, case, quantization, "vulkan")
    gpu = CompiledModel(vk_dir, device="vulkan")
    assert "llvmpipe" in gpu.device.device_name
    prompt = random_prompt(PROMPT_TOKENS, gpu.vocab_size)
    steps = [gpu.prefill(prompt).copy()]
    tokens = [int(np.argmax(steps[-1]))]
    while len(tokens) < DECODE_STEPS:
        steps.append(gpu.decode(tokens[-1]).copy())
        tokens.append(int(np.argmax(steps[-1])))
    cpu, expected = _cpu_steps(cpu_dir, prompt, tokens)
    assert_close(np.stack(steps), expected, quantization)

    # A second turn: a prefill that attends to the cached prefix and merges with it.
    turn = random_prompt(SECOND_TURN_TOKENS, gpu.vocab_size, seed=1)
    gpu.decode(tokens[-1])
    cpu.decode(tokens[-1])
    assert_close(
        gpu.prefill(turn, all_logits=True), cpu.prefill(turn, all_logits=True), quantization
    )


@pytest.mark.parametrize(
    ("case", "quantization"), [("llama-gqa-hd64", "q4f32_1"), ("phi3-hd128", "q4f16_1")]
)
def test_webgpu_real_shapes_match_cpu(tiny_builds, case, quantization):
    cpu_dir, web_dir = _builds(tiny_builds, case, quantization, "webgpu")
    vocab = CompiledModel(cpu_dir, verify_weights=False).vocab_size
    prompt = random_prompt(PROMPT_TOKENS, vocab)
    result = run_greedy(web_dir, prompt, DECODE_STEPS)
    _, expected = _cpu_steps(cpu_dir, prompt, result["tokens"])
    assert_close(np.array(result["logits"], np.float32), expected, quantization)
