"""`gguf`: a GGUF file's block formats kept as the file has them. The stored layout against the
`gguf` package bit for bit, the kernels against exact integer arithmetic, and a mixed file's
build against `transformers` reading the same file, its int8-activation layers rounded as ours."""

from __future__ import annotations

import dataclasses
import json

import gguf
import numpy as np
import pytest
import tvm
from click.testing import CliRunner
from reference import hf_logits, quantize_activations_int8
from test_gguf import load_gguf_reference, max_logit_error
from tvm.relax.frontend import nn
from x86_kernel_runner import run_kernel, x86_target

from mlc.build import BuildOptions, build
from mlc.cli import main
from mlc.gguf.dequantize import k_scales_mins
from mlc.gguf.export import export_gguf
from mlc.models.moe import Experts
from mlc.quantization import get_quantization
from mlc.quantization.ggml_blocks import (
    BLOCK,
    FORMATS,
    BlockEmbedding,
    BlockExperts,
    BlockLinear,
)
from mlc.quantization.int8_activations import (
    GROUP,
    activation_layout,
    source_index,
    stored_position,
)
from mlc.quantization.kquant_blocks import K_FORMATS
from mlc.quantization.kquant_nibbles import K_NIBBLE_FORMATS, pack_scales
from mlc.runtime.compiled_model import CompiledModel
from mlc.runtime.web import run_greedy
from mlc.targets.x86_kernels import (
    Gather,
    has_avx2,
    has_avx512_vnni,
    q4a8_matmul_avx2,
    quantize_activations_avx2,
)
from mlc.testing.random_blocks import random_k_blocks
from mlc.testing.random_model import save_llama, save_model

INT8_FORMATS = [name for name, fmt in FORMATS.items() if fmt.int8_activations]
# Every tail of the kernels: whole blocks of 16 groups, leftover pairs, a last single group,
# output rows that do not fill a tile.
SHAPES = [(64, 512, 1), (37, 96, 3), (48, 576, 5), (130, 1056, 4), (16, 32, 2)]


def _quantized(name: str, n: int, k: int, seed: int = 0) -> np.ndarray:
    """Normal weights quantized by the `gguf` package: blocks uint8 `[n, k / 32, type_size]`."""
    w = np.random.default_rng(seed).normal(size=(n, k)).astype(np.float32)
    raw = gguf.quants.quantize(w, gguf.GGMLQuantizationType[name])
    return raw.reshape(n, k // BLOCK, FORMATS[name].type_size)


def _random_bytes(name: str, n: int, k: int, seed: int = 0) -> np.ndarray:
    """Any bit pattern (Q8_0's -128 included), with finite float16 scales and minima."""
    fmt = FORMATS[name]
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(n, k // BLOCK, fmt.type_size), dtype=np.uint8)
    for offset in (0, 2) if fmt.has_min else (0,):
        values = rng.uniform(-1, 1, size=(n, k // BLOCK)).astype(np.float16)
        blocks[..., offset : offset + 2] = values.view(np.uint8).reshape(n, k // BLOCK, 2)
    return blocks


def _reference_dequantize(name: str, blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    raw = blocks.reshape(-1)
    return gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[name]).reshape(n, -1)


@pytest.mark.parametrize("name", sorted(FORMATS))
@pytest.mark.parametrize("make", [_quantized, _random_bytes], ids=["quantized", "any-bits"])
def test_stored_blocks_are_the_files_bits(name, make):
    fmt = FORMATS[name]
    blocks = make(name, 24, 352)  # 11 blocks: pairs and a single group for the 4-bit order
    stored = fmt.from_ggml_blocks(blocks)
    assert sum(a.nbytes for a in stored.values()) == blocks.nbytes  # nothing added
    np.testing.assert_array_equal(fmt.to_ggml_blocks(stored), blocks)
    expected = _reference_dequantize(name, blocks)
    np.testing.assert_array_equal(fmt.dequantize(stored), expected)
    # The comparison can fail: one bit of the stored weights changes a value.
    stored["q_weight"] = stored["q_weight"].copy()
    stored["q_weight"][3, 2] ^= np.uint32(1 << 9)
    assert (fmt.dequantize(stored) != expected).sum() == 1
    assert (fmt.to_ggml_blocks(stored) != blocks).sum() == 1


def test_stored_position_inverts_the_activation_layout():
    for kp in (32, 64, 96, 352, 512, 544, 576, 1056):
        groups = kp // GROUP
        positions = stored_position(np.arange(kp), groups)
        np.testing.assert_array_equal(positions[activation_layout(kp)], np.arange(kp))
        assert [stored_position(k, groups) for k in range(kp)] == list(positions)
        assert [source_index(int(p), groups) for p in positions] == list(range(kp))


def _problem(name: str, n: int, k: int, rows: int, seed: int = 0):
    """Stored weights, activations quantized by the x86 kernel, and the exact float64 product
    of the int8 activations with the `gguf` package's dequantized weights."""
    fmt = FORMATS[name]
    blocks = _quantized(name, n, k, seed)
    stored = fmt.from_ggml_blocks(blocks)
    x = np.random.default_rng(seed + 1).normal(size=(1, rows, k)).astype(np.float32)
    groups = k // GROUP
    outputs = [np.zeros((1, rows, k), "i1"), *(np.zeros((1, rows, groups), "f4"),) * 2]
    target = x86_target(vnni=False)
    xq, xs, xc = run_kernel(quantize_activations_avx2(k, fmt.sum_factor), target, [x, *outputs], 3)
    natural = np.empty_like(xq[0])
    natural[:, activation_layout(k)] = xq[0]
    w = _reference_dequantize(name, blocks).astype(np.float64)
    exact = (natural.astype(np.float64) * np.repeat(xs[0], GROUP, axis=1)) @ w.T
    params = [stored[key] for key in ("q_weight", "q_scale", "q_min", "q_high") if key in stored]
    return x, [xq, xs, xc, *params], exact


@pytest.mark.parametrize("vnni", [False, True], ids=["avx2", "avx512-vnni"])
@pytest.mark.parametrize("name", INT8_FORMATS)
@pytest.mark.parametrize("n,k,rows", SHAPES)
def test_x86_kernel_is_exact(name, n, k, rows, vnni):
    target = x86_target(vnni)
    fmt = FORMATS[name]
    _, inputs, exact = _problem(name, n, k, rows)
    kernel = q4a8_matmul_avx2(n, k, "float16", vnni, fmt.has_min, fmt.bits)
    (out,) = run_kernel(kernel, target, [*inputs, np.zeros((1, rows, n), "f4")])
    # Integer dot products are exact; only the float scaling and the final sums round.
    scale = np.abs(exact).max()
    np.testing.assert_allclose(out[0], exact, rtol=0, atol=1e-6 * scale)
    # The comparison can fail: the zero point or minimum term left out shows.
    if fmt.sum_factor:
        inputs[2] = np.zeros_like(inputs[2])
        (wrong,) = run_kernel(kernel, target, [*inputs, np.zeros((1, rows, n), "f4")])
        assert np.abs(wrong[0] - exact).max() > 1e-3 * scale


@pytest.mark.parametrize("k", (1056, 384, 1120))  # a single group, pairs, both after blocks
@pytest.mark.parametrize("vnni", [False, True], ids=["avx2", "avx512-vnni"])
@pytest.mark.parametrize("name", INT8_FORMATS)
def test_x86_kernel_rows_are_independent(name, vnni, k):
    """A prompt's rows come out bit for bit as when each is the only row (a decode step)."""
    target = x86_target(vnni)
    fmt = FORMATS[name]
    n, rows = 40, 5
    _, (xq, xs, xc, *params), _ = _problem(name, n, k, rows)
    kernel = q4a8_matmul_avx2(n, k, "float16", vnni, fmt.has_min, fmt.bits)

    def run(r: slice) -> np.ndarray:
        tokens = [a[:, r] for a in (xq, xs, xc)]
        out = np.zeros((1, tokens[0].shape[1], n), "f4")
        return run_kernel(kernel, target, [*tokens, *params, out])[0][0]

    together = run(slice(0, rows))
    alone = np.concatenate([run(slice(i, i + 1)) for i in range(rows)])
    np.testing.assert_array_equal(together, alone)


@pytest.mark.parametrize(
    ("vnni", "shared"), [(False, True), (True, False)], ids=["avx2-gate-up", "avx512-vnni-down"]
)
@pytest.mark.parametrize("name", INT8_FORMATS)
def test_x86_expert_kernel_is_exact(name, vnni, shared):
    """A mixture's experts in a block format on the gather kernel: each slot multiplies its
    own expert's blocks (int8 activations), exactly up to float rounding; the slots of a
    prompt equal each token's alone, bit for bit."""
    target = x86_target(vnni)
    fmt = FORMATS[name]
    experts, n, k, tokens, top_k = 3, 24, 1056, 6, 2
    stacks = [fmt.from_ggml_blocks(_quantized(name, n, k, seed=e)) for e in range(experts)]
    stored = {key: np.stack([st[key] for st in stacks]) for key in stacks[0]}
    rows = tokens if shared else tokens * top_k
    x = np.random.default_rng(5).normal(size=(1, rows, k)).astype(np.float32)
    groups = k // GROUP
    outputs = [np.zeros((1, rows, k), "i1"), *(np.zeros((1, rows, groups), "f4"),) * 2]
    acts = run_kernel(quantize_activations_avx2(k, fmt.sum_factor), target, [x, *outputs], 3)
    ids = np.random.default_rng(9).integers(0, experts, (tokens, top_k)).astype(np.int32)
    natural = np.empty_like(acts[0][0])
    natural[:, activation_layout(k)] = acts[0][0]
    xf = natural.astype(np.float64) * np.repeat(acts[1][0], GROUP, axis=1)
    weights = [
        _reference_dequantize(name, _quantized(name, n, k, seed=e)).astype(np.float64)
        for e in range(experts)
    ]
    exact = np.zeros((tokens, top_k, n))
    for t in range(tokens):
        for j in range(top_k):
            exact[t, j] = xf[t if shared else t * top_k + j] @ weights[ids[t, j]].T
    lead = (1, tokens) if shared else (tokens, top_k)
    acts = [a.reshape(*lead, -1) for a in acts]
    params = [stored[key] for key in ("q_weight", "q_scale", "q_min", "q_high") if key in stored]
    kernel = q4a8_matmul_avx2(
        n, k, "float16", vnni, fmt.has_min, fmt.bits, Gather(experts, top_k, shared)
    )

    def run(part: slice) -> np.ndarray:
        chosen = [a[:, part] if shared else a[part] for a in acts]
        out = np.zeros((len(ids[part]), top_k, n), "f4")
        return run_kernel(kernel, target, [*chosen, ids[part], *params, out])[0]

    together = run(slice(0, tokens))
    np.testing.assert_allclose(together, exact, rtol=0, atol=1e-6 * np.abs(exact).max())
    alone = np.concatenate([run(slice(t, t + 1)) for t in range(tokens)])
    np.testing.assert_array_equal(together, alone)
    # The check can fail: every slot given expert 0's blocks is far off.
    ids = np.zeros_like(ids)
    assert np.abs(run(slice(0, tokens)) - exact).max() > 1e-2 * np.abs(exact).max()


@pytest.mark.parametrize("name", INT8_FORMATS)
def test_generic_kernel_gives_the_x86_kernel_s_bits(name):
    """The kernels' generic form (plain integer arithmetic, what 64-bit ARM builds run) gives
    the x86 kernel's results (AVX512-VNNI where this CPU has it, else AVX2) bit for bit, over
    whole blocks and every kind of tail, and for a mixture's experts: so an `arm64` build
    answers as the x86 build."""
    fmt = FORMATS[name]
    target = x86_target(vnni=False)
    vnni = has_avx512_vnni(target)
    for n, k, rows in [(40, 1120, 2), (40, 384, 3)]:  # blocks, pairs and a single; pairs
        _, inputs, _ = _problem(name, n, k, rows)
        args = [*inputs, np.zeros((1, rows, n), "f4")]
        generic = q4a8_matmul_avx2(n, k, "float16", False, fmt.has_min, fmt.bits, generic=True)
        kernel = q4a8_matmul_avx2(n, k, "float16", vnni, fmt.has_min, fmt.bits)
        np.testing.assert_array_equal(
            run_kernel(kernel, target, args)[0], run_kernel(generic, target, args)[0]
        )
    experts, n, k, tokens, top_k = 3, 24, 1056, 4, 2
    stacks = [fmt.from_ggml_blocks(_quantized(name, n, k, seed=e)) for e in range(experts)]
    stored = {key: np.stack([st[key] for st in stacks]) for key in stacks[0]}
    params = [stored[key] for key in ("q_weight", "q_scale", "q_min", "q_high") if key in stored]
    _, acts, _ = _problem(name, 8, k, tokens)
    ids = np.random.default_rng(3).integers(0, experts, (tokens, top_k)).astype(np.int32)
    args = [*acts[:3], ids, *params, np.zeros((tokens, top_k, n), "f4")]
    gather = Gather(experts, top_k, True)
    results = [
        run_kernel(
            q4a8_matmul_avx2(n, k, "float16", vnni, fmt.has_min, fmt.bits, gather, generic),
            target,
            args,
        )[0]
        for generic in (False, True)
    ]
    np.testing.assert_array_equal(results[0], results[1])


def _run_portable(layer: nn.Module, inputs: dict, stored: dict, *arrays: np.ndarray):
    """`layer.forward` compiled for an x86 CPU without AVX2 (so that no hand-written kernel
    replaces the portable ones), its parameters from `stored`, called on `arrays`."""
    generic = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64"})
    assert not has_avx2(generic)
    spec = {"forward": {**inputs, "$": {"param_mode": "packed", "effect_mode": "none"}}}
    with generic:
        mod, params = layer.export_tvm(spec=spec)
    vm = tvm.relax.VirtualMachine(tvm.compile(mod, generic), tvm.cpu())
    weights = [tvm.runtime.tensor(stored[name.split(".")[-1]]) for name, _ in params]
    return vm["forward"](*[tvm.runtime.tensor(a) for a in arrays], weights).numpy()


def _kernel_activations(fmt, x: np.ndarray, target) -> list[np.ndarray]:
    """`x[1, tokens, k]` quantized by the x86 activation kernel for format `fmt`: `xq`, `xs`
    and `xc` (`Q6_K`: two sums per group, one per half-run)."""
    _, tokens, k = x.shape
    sums = k // GROUP * (2 if fmt.bits == 6 else 1)
    outputs = [np.zeros((1, tokens, k), "i1"), np.zeros((1, tokens, k // GROUP), "f4")]
    outputs.append(np.zeros((1, tokens, sums), "f4"))
    kernel = quantize_activations_avx2(k, fmt.sum_factor, fmt.bits == 6)
    return run_kernel(kernel, target, [x, *outputs], 3)


def _int8_rounded(x: np.ndarray) -> np.ndarray:
    """`x[rows, k]` rounded to int8 per group of 32 as the kernels round activations."""
    groups = x.reshape(x.shape[0], -1, GROUP)
    absmax = np.abs(groups).max(-1, keepdims=True)
    q = np.round(groups * (np.float32(127) / absmax))
    return (q * (absmax / np.float32(127))).reshape(x.shape)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_portable_kernels_match_the_definition(name):
    """The TE kernels every other target starts from, compiled for a CPU without AVX2 so that
    no hand-written kernel replaces them: int8 activations for the 4- and 8-bit formats, a
    float dequantize-matmul for the 5-bit ones."""
    n, k, rows = 37, 576, 3
    fmt = FORMATS[name]
    blocks = _quantized(name, n, k)
    stored = fmt.from_ggml_blocks(blocks)
    w = _reference_dequantize(name, blocks).astype(np.float64)
    x = np.random.default_rng(1).normal(size=(rows, k)).astype(np.float32)
    layer = BlockLinear(fmt, k, n, bias=False, dtype="float32")
    out = _run_portable(layer, {"x": nn.spec.Tensor(["rows", k], "float32")}, stored, x)
    if fmt.int8_activations:
        x = _int8_rounded(x)
    exact = x.astype(np.float64) @ w.T
    np.testing.assert_allclose(out, exact, rtol=0, atol=1e-5 * np.abs(exact).max())


@pytest.mark.parametrize("name", ["Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K"])
def test_portable_expert_kernel_matches_the_definition(name):
    """The block experts' portable gather kernel (a CPU without AVX2): each token's slots
    multiply their experts' blocks with int8 activations quantized once per token."""
    experts, n, tokens, top_k = 3, 24, 5, 2
    if name in K_NIBBLE_FORMATS:
        fmt, k = K_NIBBLE_FORMATS[name], 256
        blocks = [random_k_blocks(name, n, k, seed=e, scale=1e-2) for e in range(experts)]
    else:
        fmt, k = FORMATS[name], 96
        blocks = [_quantized(name, n, k, seed=e) for e in range(experts)]
    stacks = [fmt.from_ggml_blocks(b) for b in blocks]
    stored = {key: np.concatenate([st[key] for st in stacks]) for key in stacks[0]}
    x = np.random.default_rng(1).normal(size=(tokens, k)).astype(np.float32)
    ids = np.random.default_rng(2).integers(0, experts, (tokens, top_k)).astype(np.int32)
    layer = BlockExperts(fmt, Experts(experts, n, k, "float32", "expert_matmul"))
    spec = {"x": nn.spec.Tensor(["t", k], "float32"), "ids": nn.spec.Tensor(["t", top_k], "int32")}
    out = _run_portable(layer, spec, stored, x, ids)
    groups = x.reshape(tokens, -1, GROUP)
    absmax = np.abs(groups).max(-1, keepdims=True)
    q = np.round(groups * (np.float32(127) / absmax))
    rounded = (q * (absmax / np.float32(127))).reshape(tokens, k).astype(np.float64)
    w = [_reference_dequantize(name, b).astype(np.float64) for b in blocks]
    exact = np.stack([[rounded[t] @ w[e].T for e in ids[t]] for t in range(tokens)])
    np.testing.assert_allclose(out, exact, rtol=0, atol=1e-5 * np.abs(exact).max())


# A file mixing every format: Q4_1 q/k/v fused (kept), Q4_0 o_proj, Q5_0 gate/up, Q5_1 down;
# layer 1: Q8_0 q/k/v, F16 o_proj, gate Q4_0 with up Q8_0 (a fused weight of two formats: kept
# in two parts), Q4_1 down over K = 544 (a block of 16 groups and a single one); the Q8_0 token
# embedding is also the tied LM head.
TYPES = {
    "token_embd.weight": "Q8_0",
    **{f"blk.0.attn_{p}.weight": "Q4_1" for p in "qkv"},
    "blk.0.attn_output.weight": "Q4_0",
    "blk.0.ffn_gate.weight": "Q5_0",
    "blk.0.ffn_up.weight": "Q5_0",
    "blk.0.ffn_down.weight": "Q5_1",
    **{f"blk.1.attn_{p}.weight": "Q8_0" for p in "qkv"},
    "blk.1.attn_output.weight": "F16",
    "blk.1.ffn_gate.weight": "Q4_0",
    "blk.1.ffn_up.weight": "Q8_0",
    "blk.1.ffn_down.weight": "Q4_1",
}
# The transformers modules our build computes with int8 activations: every block-format Linear
# (not the F16 o_proj).
INT8_LAYERS = {
    *(f"model.layers.0.self_attn.{p}_proj" for p in "qkvo"),
    *(f"model.layers.{i}.mlp.{p}_proj" for i in (0, 1) for p in ("gate", "up", "down")),
    *(f"model.layers.1.self_attn.{p}_proj" for p in "qkv"),
    "lm_head",
}
MODEL = {
    "num_key_value_heads": 2,
    "hidden_size": 128,
    "intermediate_size": 544,
    "tie_word_embeddings": True,
}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """(the mixed GGUF file, its default build)."""
    root = tmp_path_factory.mktemp("gguf_native")
    hf_dir = save_llama(root / "tiny", **MODEL)
    path = export_gguf(hf_dir, root / "tiny-mixed.gguf", "F32", overrides=TYPES)
    return path, build(BuildOptions(model=path, output=root / "dist", quiet=True))


def test_a_gguf_file_builds_in_its_own_formats_by_default(mixed):
    path, built = mixed
    assert built.name == "tiny-mixed-gguf"
    config = json.loads((built / "mlc-chat-config.json").read_text())
    formats = config["quantization_scheme"]["tensor_formats"]
    assert formats["layers.*.self_attn.qkv_proj.weight"] == {"Q4_1": 1, "Q8_0": 1}
    assert formats["layers.*.mlp.up_proj.weight"] == {"Q5_0": 1, "Q4_0+Q8_0": 1}  # gate+up
    assert formats["embed_tokens.weight"] == {"Q8_0": 1}
    assert formats["layers.*.self_attn.o_proj.weight"] == {"Q4_0": 1, "float32 (from F16)": 1}
    # The tensor cache holds the file's bytes of each kept tensor.
    reader = gguf.GGUFReader(path)
    file_bytes = {t.name: t.n_bytes for t in reader.tensors}
    cache = json.loads((built / "tensor-cache.json").read_text())
    stored = {r["name"]: r["nbytes"] for shard in cache["records"] for r in shard["records"]}
    prefix = "layers.0.mlp.down_proj."
    assert (
        sum(v for k, v in stored.items() if k.startswith(prefix))
        == (file_bytes["blk.0.ffn_down.weight"])
    )
    # Layer 1's gate (Q4_0) and up (Q8_0) are kept as two parts of the fused weight.
    parts = {k: v for k, v in stored.items() if k.startswith("layers.1.mlp.up_proj.parts.")}
    assert {k.split(".")[-2] for k in parts} == {"0", "1"}
    gate_up = file_bytes["blk.1.ffn_gate.weight"] + file_bytes["blk.1.ffn_up.weight"]
    assert sum(parts.values()) == gate_up


def test_mixed_file_matches_transformers_reading_it(mixed):
    path, built = mixed
    prompt = [int(v) for v in np.random.default_rng(69).integers(3, 250, 10)]
    reference = load_gguf_reference(path, tie_word_embeddings=True)
    plain = hf_logits(reference, prompt)
    margins: list[float] = []
    int8_reference = quantize_activations_int8(reference, only=INT8_LAYERS, margins=margins)
    expected = hf_logits(int8_reference, prompt)
    # A well-posed comparison: no int8 activation of this prompt lies within 1e-4 of a rounding
    # boundary (another prompt had one 8e-6 away, which rounded the other way on one CPU; with
    # ~20,000 activations rounded, most prompts have one closer than 1e-4: this one's is 2.2e-4,
    # the best of 80 random prompts).
    assert min(margins) > 1e-4
    # Prefill, then decode step by step: within 1e-4 of the reference at every position.
    max_logit_error(built, expected, prompt, split=6)
    # The comparison can fail: without the int8 activations the logits move far more.
    assert np.abs(plain - expected).max() > 1e-2


def test_requantizing_a_gguf_file_says_it_is_lossy(mixed, tmp_path):
    path, _ = mixed
    run = CliRunner().invoke(
        main, ["build", str(path), "--quantization", "q4a8_1", "-o", str(tmp_path)]
    )
    assert run.exit_code == 0, run.output
    (line,) = [ln for ln in run.stderr.splitlines() if "lossy" in ln]
    assert "keeps the file's own formats" in line and "--quantization gguf" in line


def test_gguf_needs_a_gguf_file(tiny_builds, tmp_path):
    hf_dir, _ = tiny_builds.get("gqa", num_key_value_heads=2)
    with pytest.raises(ValueError, match="is not a GGUF file; choose a code that quantizes"):
        build(BuildOptions(model=hf_dir, quantization="gguf", output=tmp_path, quiet=True))
    assert get_quantization("gguf").name == "gguf"


def _float_logits(model_dir, prompt: list[int], steps: int, device: str = "cpu") -> np.ndarray:
    """Logits after `prompt` and after each of `steps` greedy tokens fed back."""
    model = CompiledModel(model_dir, device=device)
    logits = [model.prefill(prompt).copy()]
    while len(logits) <= steps:
        logits.append(model.decode(int(np.argmax(logits[-1]))).copy())
    return np.stack(logits)


def _gpu_matches_exact_cpu(path, tmp_path, target: str) -> None:
    """A GPU build of the GGUF file, by default in its own formats, decoded inside float32
    reductions: every step's logits within 1e-4 of the CPU's exact float32 build (`q0f32`:
    the same weights dequantized). Measured 2e-5 to 3.4e-5 on llvmpipe."""
    gpu = build(BuildOptions(model=path, target=target, output=tmp_path / target, quiet=True))
    config = json.loads((gpu / "mlc-chat-config.json").read_text())["quantization_scheme"]
    assert config["name"] == "gguf" and config["activations"].startswith("float32")
    assert config["reads_float16"] is True
    exact = build(BuildOptions(model=path, quantization="q0f32", output=tmp_path, quiet=True))
    prompt, steps = list(range(7, 40)), 8
    expected = _float_logits(exact, prompt, steps)
    if target == "vulkan":
        got = _float_logits(gpu, prompt, steps, device="vulkan")
    else:
        result = run_greedy(gpu, prompt, steps + 1)
        assert result["tokens"] == [int(np.argmax(row)) for row in expected]
        got = np.array(result["logits"], np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("target", ["vulkan", "webgpu"])
def test_gguf_file_runs_on_gpu_targets_in_its_own_formats(mixed, tmp_path, target):
    path, cpu = mixed
    _gpu_matches_exact_cpu(path, tmp_path, target)
    # The same tensors in the same formats as the CPU build keeps, the fused weight of two
    # formats in its parts too, but for vulkan (clspv crashed on the concatenation), float32.
    cpu_formats, gpu_formats = [
        json.loads((d / "mlc-chat-config.json").read_text())["quantization_scheme"][
            "tensor_formats"
        ]
        for d in (cpu, tmp_path / target / f"tiny-mixed-gguf-{target}")
    ]
    if target == "vulkan":
        parted = cpu_formats["layers.*.mlp.up_proj.weight"].pop("Q4_0+Q8_0")
        up = gpu_formats["layers.*.mlp.up_proj.weight"]
        assert up.pop("float32 (from Q4_0+Q8_0)") == parted
    assert cpu_formats == gpu_formats


def test_k_quant_file_runs_on_vulkan(k_quant_file, tmp_path):
    _gpu_matches_exact_cpu(k_quant_file, tmp_path, "vulkan")


def test_k_quant_file_runs_on_webgpu(k_quant_file, tmp_path):
    """WGSL has no 8-bit storage: the K-quants' byte tensors are stored in uint32 words."""
    _gpu_matches_exact_cpu(k_quant_file, tmp_path, "webgpu")
    built = tmp_path / "webgpu" / "tiny-k-gguf-webgpu"
    cache = json.loads((built / "tensor-cache.json").read_text())
    dtypes = {r["name"]: r["dtype"] for shard in cache["records"] for r in shard["records"]}
    assert dtypes["layers.0.mlp.down_proj.q_ksc"] == "uint32"  # Q6_K
    assert dtypes["layers.1.mlp.down_proj.q_blocks"] == "uint32"  # Q2_K
    assert "uint8" not in dtypes.values()


def test_build_log_names_the_formats_stored_as_float32():
    scheme = dataclasses.replace(
        get_quantization("gguf"),
        file_types=(
            ("a.weight", ("Q4_1",)),
            ("b.weight", ("Q4_0", "Q8_0")),
            ("c.weight", ("Q6_K",)),
            ("d.weight", ("Q6_K",)),
            ("e.weight", ("F32",)),
        ),
        formats=(("a.weight", "Q4_1"),),
    )
    lines = scheme.summary()
    assert lines[:4] == [
        "1 tensors as Q4_1",
        "1 tensors as float32 (from F32)",
        "1 tensors as float32 (from Q4_0+Q8_0)",
        "2 tensors as float32 (from Q6_K)",
    ]
    assert lines[4].startswith("Q6_K have no kernel here yet")
    assert lines[5].startswith("1 fused weights (q/k/v, gate/up) have parts in different formats")


# --- K-quants: the file's super-blocks byte for byte, decoded inside float32 kernels ---------


@pytest.mark.parametrize("name", sorted(K_FORMATS))
def test_k_quants_are_stored_as_the_file_has_them(name):
    fmt = K_FORMATS[name]
    blocks = random_k_blocks(name, 6, 768)
    stored = fmt.from_ggml_blocks(blocks)
    # Nothing added, but Q4_K's and Q5_K's sixteen 6-bit fields a byte each (4 bytes more).
    unpacked = 4 * blocks.shape[0] * blocks.shape[1] if name in ("Q4_K", "Q5_K") else 0
    assert sum(a.nbytes for a in stored.values()) == blocks.nbytes + unpacked
    np.testing.assert_array_equal(fmt.to_ggml_blocks(stored), blocks)
    expected = _reference_dequantize(name, blocks)
    np.testing.assert_array_equal(fmt.dequantize(stored), expected)
    assert np.isfinite(expected).all() and np.abs(expected).max() > 0
    if "q_weight" not in stored:
        return
    # The comparison can fail: one bit of a moved nibble changes one value and one file bit.
    stored["q_weight"] = stored["q_weight"].copy()
    stored["q_weight"][3, 2] ^= np.uint32(1 << 9)
    assert (fmt.dequantize(stored) != expected).sum() == 1
    assert (fmt.to_ggml_blocks(stored) != blocks).sum() == 1


@pytest.mark.parametrize("name", sorted(K_FORMATS))
def test_k_quant_kernels_decode_every_value(name):
    """The embedding lookup returns every value of the `gguf` package's dequantization exactly
    (each decoded from the stored tensors inside the kernel); the Linear layer's portable
    kernel (a float32 matmul, or for `Q4_K`/`Q5_K`/`Q6_K` the int8-activation one) equals the
    float64
    product of its activations, rounded as its kernel rounds them, within 1e-5 of its
    range."""
    fmt = K_FORMATS[name]
    n, k, rows = 24, 512, 3
    blocks = random_k_blocks(name, n, k, scale=1e-2)
    stored = fmt.from_ggml_blocks(blocks)
    w = _reference_dequantize(name, blocks)
    x = np.random.default_rng(1).normal(size=(rows, k)).astype(np.float32)
    ids = np.arange(n, dtype=np.int32)
    embedding = BlockEmbedding(fmt, n, k, "float32")
    table = _run_portable(embedding, {"ids": nn.spec.Tensor([n], "int32")}, stored, ids)
    np.testing.assert_array_equal(table, w)
    linear = BlockLinear(fmt, k, n, bias=False, dtype="float32")
    out = _run_portable(linear, {"x": nn.spec.Tensor(["rows", k], "float32")}, stored, x)
    if fmt.int8_activations:  # Q4_K, Q5_K, Q6_K
        x = _int8_rounded(x)
    exact = x.astype(np.float64) @ w.astype(np.float64).T
    np.testing.assert_allclose(out, exact, rtol=0, atol=1e-5 * np.abs(exact).max())


@pytest.mark.parametrize("name", sorted(K_FORMATS))
def test_k_quants_in_uint32_words_hold_the_same_bytes_and_values(name):
    """`webgpu`'s storage (WGSL has no 8-bit type): each byte tensor in uint32 words, four
    bytes each; the file's bytes come back, and a float kernel reading the words decodes every
    value the `gguf` package does (a lookup of every row)."""
    fmt = dataclasses.replace(K_FORMATS[name], byte_words=True)
    n, k = 5, 768  # three super-blocks: Q3_K's 330 bytes a row end in a half-filled word
    blocks = random_k_blocks(name, n, k, scale=1e-2)
    if name in ("Q2_K", "Q3_K"):  # kernels widen their float16 `d` from its bits: a negative
        d = blocks[..., -2:] if name == "Q3_K" else blocks[..., 80:82]  # and a subnormal one
        d[0, 0] = np.array([-0.01], "<f2").view(np.uint8)
        d[1, 2] = np.array([3 * 2.0**-24], "<f2").view(np.uint8)
    stored = fmt.from_ggml_blocks(blocks)
    assert {a.dtype for a in stored.values()} <= {np.dtype("uint32"), np.dtype("float16")}
    np.testing.assert_array_equal(fmt.to_ggml_blocks(stored), blocks)
    embedding = BlockEmbedding(fmt, n, k, "float32", int8=False)
    ids = np.arange(n, dtype=np.int32)
    table = _run_portable(embedding, {"ids": nn.spec.Tensor([n], "int32")}, stored, ids)
    np.testing.assert_array_equal(table, _reference_dequantize(name, blocks))


# A Q4_K_M-like file: Q4_K attention and gate/up, Q6_K down and LM head, F32 norms; layer 1
# has Q5_K attention with a Q6_K v (q/k/v kept in two parts) and a Q3_K_M-like MLP (Q3_K
# gate/up, Q2_K down).
K_TYPES = {
    **{f"blk.0.attn_{p}.weight": "Q4_K" for p in "qkv"},
    **{f"blk.1.attn_{p}.weight": "Q5_K" for p in "qk"},
    "blk.1.attn_v.weight": "Q6_K",
    "blk.0.attn_output.weight": "Q4_K",
    "blk.1.attn_output.weight": "Q5_K",
    **{f"blk.0.ffn_{p}.weight": "Q4_K" for p in ("gate", "up")},
    **{f"blk.1.ffn_{p}.weight": "Q3_K" for p in ("gate", "up")},
    "blk.0.ffn_down.weight": "Q6_K",
    "blk.1.ffn_down.weight": "Q2_K",
    "output.weight": "Q6_K",
    "token_embd.weight": "Q4_K",
}


# The transformers modules our build computes with int8 activations: the Q4_K, Q5_K and Q6_K
# Linears (the Q4_K token embedding is looked up).
K_INT8_LAYERS = {
    *(f"model.layers.{i}.self_attn.{p}_proj" for i in (0, 1) for p in "qkvo"),
    *(f"model.layers.0.mlp.{p}_proj" for p in ("gate", "up", "down")),
    "lm_head",
}


@pytest.fixture(scope="module")
def k_quant_file(tmp_path_factory):
    """A Q4_K_M-like file of a tiny Llama (`K_TYPES`), its super-blocks random bytes."""
    root = tmp_path_factory.mktemp("k_quants")
    hf_dir = save_llama(
        root / "tiny", num_key_value_heads=2, hidden_size=256, intermediate_size=512
    )
    real = gguf.quants.quantize

    def k_quantize(array, qtype):  # the package writes no K-quants: random super-blocks
        if qtype.name not in K_FORMATS:
            return real(array, qtype)
        n, k = array.shape
        return random_k_blocks(qtype.name, n, k, seed=n + k, scale=3e-4).reshape(n, -1)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gguf.quants, "quantize", k_quantize)
        return export_gguf(hf_dir, root / "tiny-k.gguf", "F32", overrides=K_TYPES)


def test_k_quant_file_matches_transformers_reading_it(k_quant_file, tmp_path):
    """transformers dequantizes the file with the `gguf` package and runs in float64, the
    inputs of the `Q4_K`/`Q5_K`/`Q6_K` Linears rounded to int8 as our kernels round them; our
    build keeps the super-blocks and decodes them in its kernels: logits within 1e-4."""
    path = k_quant_file
    built = build(BuildOptions(model=path, output=tmp_path / "dist", quiet=True))
    formats = json.loads((built / "mlc-chat-config.json").read_text())["quantization_scheme"]
    assert formats["tensor_formats"]["layers.*.mlp.down_proj.weight"] == {"Q2_K": 1, "Q6_K": 1}
    assert formats["tensor_formats"]["layers.*.mlp.up_proj.weight"] == {"Q3_K": 1, "Q4_K": 1}
    assert formats["tensor_formats"]["lm_head.weight"] == {"Q6_K": 1}
    qkv = formats["tensor_formats"]["layers.*.self_attn.qkv_proj.weight"]
    assert qkv == {"Q4_K": 1, "Q5_K+Q6_K": 1}
    # A prompt none of whose int8-rounded activations lies within 1e-4 of a rounding boundary
    # (1.1e-4, the best of 300 random prompts).
    prompt = [int(v) for v in np.random.default_rng(48).integers(3, 250, 16)]
    plain = hf_logits(load_gguf_reference(path), prompt)
    margins: list[float] = []
    int8_model = quantize_activations_int8(
        load_gguf_reference(path), only=K_INT8_LAYERS, margins=margins
    )
    reference = hf_logits(int8_model, prompt)
    assert min(margins) > 1e-4
    max_logit_error(built, reference, prompt, split=10)
    # The comparison can fail: without the int8 activations the logits move far more.
    assert np.abs(plain - reference).max() > 1e-2
    # The comparison can fail: one super-block scale changed in the file shows in the logits.
    data = bytearray(path.read_bytes())
    reader = gguf.GGUFReader(path)
    tensor = next(t for t in reader.tensors if t.name == "blk.0.ffn_down.weight")
    data[tensor.data_offset + 208 : tensor.data_offset + 210] = np.float16(0.5).tobytes()
    changed = tmp_path / "changed.gguf"
    changed.write_bytes(bytes(data))
    other = hf_logits(load_gguf_reference(changed), prompt)
    assert np.abs(other - plain).max() > 1e-3


def test_k_quant_scales_unpack_and_pack_every_pattern():
    """The runs' 6-bit scales and minima, one byte each, are llama.cpp's (`get_scale_min_k4`,
    as the `gguf` package reads them) and pack back into the file's 12 bytes, any bit
    pattern."""
    packed = np.random.default_rng(0).integers(0, 256, size=(500, 12), dtype=np.uint8)
    sc, m = k_scales_mins(packed)
    expected_sc, expected_m = gguf.quants.Q4_K.get_scale_min(packed)
    np.testing.assert_array_equal(sc, expected_sc)
    np.testing.assert_array_equal(m, expected_m)
    np.testing.assert_array_equal(pack_scales(sc, m), packed)
    assert sc.max() == 63 and m.max() == 63


@pytest.mark.parametrize("vnni", [False, True], ids=["avx2", "avx512-vnni"])
@pytest.mark.parametrize("name", sorted(K_NIBBLE_FORMATS))
def test_x86_kernel_computes_k_quant_runs_exactly(name, vnni):
    """`Q4_K`/`Q5_K`/`Q6_K` on the int8 kernel, which forms each run's scale `d · sc` and
    minimum `-dmin · m` (`Q6_K`: each half-run's `d · sc`) from the stored fields: the exact
    product of the int8 activations with the `gguf` package's values, up to float rounding,
    over whole blocks of 16 runs and a super-block after them; a prompt's rows equal each row
    alone."""
    fmt = K_NIBBLE_FORMATS[name]
    target = x86_target(vnni)
    n, k, rows = 40, 768, 5
    blocks = random_k_blocks(name, n, k, scale=1e-2)
    stored = fmt.from_ggml_blocks(blocks)
    w = _reference_dequantize(name, blocks).astype(np.float64)
    x = np.random.default_rng(1).normal(size=(1, rows, k)).astype(np.float32)
    acts = _kernel_activations(fmt, x, target)
    exact = _int8_rounded(x[0]).astype(np.float64) @ w.T
    params = list(fmt.int8_operands(stored).values())
    kernel = q4a8_matmul_avx2(n, k, "uint8", vnni, fmt.has_min, fmt.bits, k_scales=True)

    def run(r: slice) -> np.ndarray:
        tokens = [a[:, r] for a in acts]
        out = np.zeros((1, tokens[0].shape[1], n), "f4")
        return run_kernel(kernel, target, [*tokens, *params, out])[0][0]

    together = run(slice(0, rows))
    np.testing.assert_allclose(together, exact, rtol=0, atol=1e-6 * np.abs(exact).max())
    alone = np.concatenate([run(slice(i, i + 1)) for i in range(rows)])
    np.testing.assert_array_equal(together, alone)
    # The comparison can fail: the second super-block given the first's d.
    at = [key for key in fmt.int8_operands(stored)].index("q_kd")
    kd, per = params[at].copy(), params[at].shape[1] // (k // 256)
    kd[:, per : 2 * per] = kd[:, :per]
    params[at] = kd
    assert np.abs(run(slice(0, rows)) - exact).max() > 1e-3 * np.abs(exact).max()


@pytest.mark.parametrize("name", sorted(K_NIBBLE_FORMATS))
def test_x86_expert_kernel_computes_k_quant_runs_exactly(name):
    """A mixture's `Q4_K`/`Q5_K`/`Q6_K` experts on the gather kernel (AVX512-VNNI where this CPU has
    it): each slot multiplies its own expert's runs exactly up to float rounding; a prompt's
    slots equal each token's alone, bit for bit."""
    fmt = K_NIBBLE_FORMATS[name]
    target = x86_target(vnni=False)
    vnni = has_avx512_vnni(target)
    experts, n, k, tokens, top_k = 3, 24, 768, 6, 2
    blocks = [random_k_blocks(name, n, k, seed=e, scale=1e-2) for e in range(experts)]
    stacks = [fmt.from_ggml_blocks(b) for b in blocks]
    stored = {key: np.stack([st[key] for st in stacks]) for key in stacks[0]}
    x = np.random.default_rng(5).normal(size=(1, tokens, k)).astype(np.float32)
    acts = _kernel_activations(fmt, x, target)
    ids = np.random.default_rng(9).integers(0, experts, (tokens, top_k)).astype(np.int32)
    xf = _int8_rounded(x[0]).astype(np.float64)
    w = [_reference_dequantize(name, b).astype(np.float64) for b in blocks]
    exact = np.stack([[xf[t] @ w[e].T for e in ids[t]] for t in range(tokens)])
    params = list(fmt.int8_operands(stored).values())
    gather = Gather(experts, top_k, True)
    kernel = q4a8_matmul_avx2(n, k, "uint8", vnni, fmt.has_min, fmt.bits, gather, k_scales=True)

    def run(part: slice, ids=ids) -> np.ndarray:
        out = np.zeros((len(ids[part]), top_k, n), "f4")
        chosen = [a[:, part] for a in acts]
        return run_kernel(kernel, target, [*chosen, ids[part], *params, out])[0]

    together = run(slice(0, tokens))
    np.testing.assert_allclose(together, exact, rtol=0, atol=1e-6 * np.abs(exact).max())
    alone = np.concatenate([run(slice(t, t + 1)) for t in range(tokens)])
    np.testing.assert_array_equal(together, alone)
    # The check can fail: every slot given expert 0's blocks is far off.
    wrong = run(slice(0, tokens), np.zeros_like(ids))
    assert np.abs(wrong - exact).max() > 1e-2 * np.abs(exact).max()


def test_k_quant_experts_match_transformers_reading_the_file(tmp_path):
    """A Qwen3-MoE file whose expert stacks are `Q4_K` (gate, up) and `Q5_K` (down), random
    super-blocks, built in its own formats: the experts stay in their blocks on the int8
    gather kernel and the logits match `transformers` on the file (float64, every block-format
    matmul's input int8-rounded as ours) within 1e-4."""
    settings = {"head_dim": 32, "moe_intermediate_size": 256, "norm_topk_prob": True}
    hf_dir = save_model(
        tmp_path / "moe",
        model_type="qwen3_moe",
        hidden_size=256,
        num_key_value_heads=2,
        num_experts=4,
        num_experts_per_tok=2,
        vector_std=0.1,
        **settings,
    )
    types = {
        **{f"blk.{i}.ffn_{p}_exps.weight": "Q4_K" for i in (0, 1) for p in ("gate", "up")},
        **{f"blk.{i}.ffn_down_exps.weight": "Q5_K" for i in (0, 1)},
    }
    real = gguf.quants.quantize

    def k_quantize(array, qtype):  # the package writes no K-quants: random super-blocks
        if qtype.name not in K_FORMATS:
            return real(array, qtype)
        rows, k = int(np.prod(array.shape[:-1])), array.shape[-1]
        blocks = random_k_blocks(qtype.name, rows, k, seed=rows + k, scale=3e-4)
        return blocks.reshape(*array.shape[:-1], -1)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gguf.quants, "quantize", k_quantize)
        path = export_gguf(hf_dir, tmp_path / "moe-k.gguf", "Q8_0", overrides=types)
    built = build(BuildOptions(model=path, output=tmp_path / "dist", quiet=True))
    formats = json.loads((built / "mlc-chat-config.json").read_text())["quantization_scheme"]
    assert formats["tensor_formats"]["layers.*.mlp.experts_down.weight"] == {"Q5_K": 2}
    margins: list[float] = []
    int8 = quantize_activations_int8(
        load_gguf_reference(path, **settings), experts=True, margins=margins
    )
    # No int8 activation of this prompt lies within 1e-4 of a rounding boundary (1.5e-4, the
    # best of 150 random prompts of 12 tokens).
    prompt = [int(v) for v in np.random.default_rng(54).integers(3, 250, 12)]
    reference = hf_logits(int8, prompt)
    assert min(margins) > 1e-4
    max_logit_error(built, reference, prompt, split=8)
    # The comparison can fail: without the int8 activations the logits move far more.
    plain = hf_logits(load_gguf_reference(path, **settings), prompt)
    assert np.abs(plain - reference).max() > 1e-2


@pytest.mark.parametrize("name", sorted(K_NIBBLE_FORMATS))
def test_generic_kernel_gives_the_x86_kernel_s_bits_for_k_quants(name):
    """As for the 32-value formats: the generic form (what `arm64` builds run) of the K-quant
    kernels, dense and gather, gives the x86 kernel's bits."""
    fmt = K_NIBBLE_FORMATS[name]
    target = x86_target(vnni=False)
    vnni = has_avx512_vnni(target)
    experts, n, k, tokens, top_k = 2, 24, 768, 3, 2
    stacks = [fmt.from_ggml_blocks(random_k_blocks(name, n, k, seed=e)) for e in range(experts)]
    stacks = [fmt.int8_operands(stack) for stack in stacks]
    keys = list(stacks[0])
    x = np.random.default_rng(5).normal(size=(1, tokens, k)).astype(np.float32)
    acts = _kernel_activations(fmt, x, target)
    ids = np.random.default_rng(3).integers(0, experts, (tokens, top_k)).astype(np.int32)
    cases = [
        (None, [*acts, *[stacks[0][key] for key in keys]], (1, tokens, n)),
        (
            Gather(experts, top_k, True),
            [*acts, ids, *[np.stack([st[key] for st in stacks]) for key in keys]],
            (tokens, top_k, n),
        ),
    ]
    for gather, args, shape in cases:
        results = [
            run_kernel(
                q4a8_matmul_avx2(n, k, "uint8", vnni and not generic, fmt.has_min, fmt.bits,
                                 gather, generic, k_scales=True),
                target,
                [*args, np.zeros(shape, "f4")],
            )[0]
            for generic in (False, True)
        ]  # fmt: skip
        np.testing.assert_array_equal(results[0], results[1])
        assert np.abs(results[0]).max() > 0
