"""The `webgpu` target end to end: `.wasm` + weights run in Deno's WebGPU (Mesa's software
Vulkan device here) and generate exactly the greedy tokens of the CPU build.

Needs emcc (`apt-get install emscripten`), Deno from npm and `mesa-vulkan-drivers`; a missing
tool fails the test with the command that installs it (CI installs them, see `.ci/run`).
"""

from __future__ import annotations

import numpy as np
import pytest

from mlc.build import BuildOptions, build
from mlc.random_model import save_model
from mlc.runtime.engine import CompiledModel
from mlc.runtime.web import find_deno, run_greedy
from mlc.targets import ToolMissingError, web_runtime

PROMPT = [1, 17, 42, 99, 123, 7, 250]
NUM_TOKENS = 12


def cpu_greedy(model_dir, prompt: list[int], num_tokens: int) -> tuple[list[int], np.ndarray]:
    model = CompiledModel(model_dir)
    logits = model.prefill(prompt)
    first_logits = logits.copy()
    tokens = [int(np.argmax(logits))]
    while len(tokens) < num_tokens:
        tokens.append(int(np.argmax(model.decode(tokens[-1]))))
    return tokens, first_logits


@pytest.fixture(scope="module")
def deno():
    return find_deno()  # raises (the test fails) with install instructions when missing


# The CPU build computes q4f16_1 in fp32 (fp16 weights only); WGSL computes it in fp16, so
# logits agree to fp16 precision and the greedy tokens (margins far above that) still match.
@pytest.mark.parametrize(("quantization", "tolerance"), [("q4f32_1", 1e-4), ("q4f16_1", 2e-2)])
def test_webgpu_greedy_matches_cpu(tiny_builds, deno, quantization, tolerance):
    _, cpu_dir = tiny_builds.get("llama", quantization)
    _, web_dir = tiny_builds.get("llama", quantization, build_options={"target": "webgpu"})
    assert (web_dir / f"{web_dir.name}-webgpu.wasm").is_file()
    expected_tokens, expected_logits = cpu_greedy(cpu_dir, PROMPT, NUM_TOKENS)

    result = run_greedy(web_dir, PROMPT, NUM_TOKENS)

    if quantization.startswith("q4f16"):
        assert "shader-f16" in result["device"]["features"], result["device"]
    assert result["tokens"] == expected_tokens, result["device"]
    np.testing.assert_allclose(result["first_logits"], expected_logits, atol=tolerance, rtol=0)


def test_missing_emcc_says_how_to_install_and_leaves_nothing(tmp_path, monkeypatch):
    save_model(tmp_path / "hf")
    monkeypatch.setattr(web_runtime.shutil, "which", lambda _: None)
    opts = BuildOptions(model=tmp_path / "hf", quantization="q4f32_1", target="webgpu")
    opts.output, opts.quiet = tmp_path / "dist", True
    with pytest.raises(ToolMissingError, match="apt-get install emscripten"):
        build(opts)
    assert not any((tmp_path / "dist").iterdir())
