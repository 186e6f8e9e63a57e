"""The `webgpu` target end to end: `.wasm` + weights run in Deno's WebGPU (Mesa's software
Vulkan device here) and generate the greedy tokens of the CPU build (for q4f16_1, up to near
ties that fp16 rounding can flip).

Needs emcc (`apt-get install emscripten`), Deno from npm and `mesa-vulkan-drivers`; a missing
tool fails the test with the command that installs it (CI installs them, see `.ci/run`).
"""

from __future__ import annotations

import numpy as np
import pytest
from cpu_reference import assert_greedy_along, cpu_logits_along

from mlc.build import BuildOptions, build
from mlc.runtime.web import find_deno, run_greedy
from mlc.targets import ToolMissingError, web_runtime
from mlc.testing.random_model import save_model

PROMPT = [1, 17, 42, 99, 123, 7, 250]
NUM_TOKENS = 12


@pytest.fixture(scope="module")
def deno():
    return find_deno()  # raises (the test fails) with install instructions when missing


# The CPU build computes q4f16_1 in fp32 (fp16 weights only); WGSL computes it in fp16, so
# logits agree to fp16 precision: half an fp16 ulp at the logits' magnitude (~4 for this
# model) is 2e-3, and 2e-2 leaves room for the rounding of the fp16 accumulations before.
@pytest.mark.parametrize(("quantization", "tolerance"), [("q4f32_1", 1e-4), ("q4f16_1", 2e-2)])
def test_webgpu_greedy_matches_cpu(tiny_builds, deno, quantization, tolerance):
    _, cpu_dir = tiny_builds.get("llama", quantization)
    _, web_dir = tiny_builds.get("llama", quantization, build_options={"target": "webgpu"})
    assert (web_dir / f"llama-{quantization}-webgpu.wasm").is_file()  # <model>-<quant>-<target>

    result = run_greedy(web_dir, PROMPT, NUM_TOKENS)

    if quantization.startswith("q4f16"):
        assert "shader-f16" in result["device"]["features"], result["device"]
    tokens = result["tokens"]
    assert len(tokens) == NUM_TOKENS, result
    expected = cpu_logits_along(cpu_dir, PROMPT, tokens)
    # Every step: decode attention and the KV cache's appends run after the first.
    np.testing.assert_allclose(result["logits"], np.stack(expected), atol=tolerance, rtol=0)
    assert_greedy_along(tokens, expected, tolerance)


def test_missing_emcc_says_how_to_install_and_leaves_nothing(tmp_path, monkeypatch):
    save_model(tmp_path / "hf")
    monkeypatch.setattr(web_runtime.shutil, "which", lambda _: None)
    opts = BuildOptions(model=tmp_path / "hf", quantization="q4f32_1", target="webgpu")
    opts.output, opts.quiet = tmp_path / "dist", True
    with pytest.raises(ToolMissingError, match="apt-get install emscripten"):
        build(opts)
    assert not any((tmp_path / "dist").iterdir())
