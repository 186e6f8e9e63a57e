"""`q4a8_1`: 4-bit weights times int8 activations. The layout, the AVX2 kernel and the portable
kernel against exact integer arithmetic, and the whole model against transformers running the
dequantized weights on int8-rounded activations."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from reference import (
    dequantized_reference,
    hf_greedy,
    hf_logits,
    quantize_activations_int8,
    round_like_fp16_kv_cache,
)
from tvm.relax.frontend import nn
from x86_kernel_runner import run_kernel, x86_target

from mlc import ChatModule, GenerationConfig
from mlc.quantization import get_quantization
from mlc.quantization.int8_activations import (
    GROUP,
    activation_layout,
    q4a8_gather_matmul,
    q4a8_matmul,
    quantize_activations,
    stored_word,
)
from mlc.runtime import CompiledModel
from mlc.targets.x86_kernels import (
    Gather,
    has_avx2,
    q4a8_matmul_avx2,
    quantize_activations_avx2,
)

CODE = "q4a8_1"
GQA = {"num_key_value_heads": 2}
# Shapes with every tail the AVX2 kernel has: whole blocks of 8 groups, leftover pairs, a last
# single group, output rows that do not fill a tile, K padded to the group size.
SHAPES = [(64, 256, 1), (301, 96, 3), (37, 200, 2), (48, 576, 5), (16, 40, 1), (130, 1056, 4)]


def _int8_problem(n: int, k: int, rows: int, seed: int = 0):
    """Packed weights, quantized activations in both layouts, and the exact float64 result."""
    scheme = get_quantization(CODE)
    rng = np.random.default_rng(seed)
    q_weight, q_scale = scheme.quantize_weight(rng.normal(size=(n, k)).astype(np.float32))
    kp = scheme.padded_k(k)
    groups = kp // GROUP
    x = np.zeros((rows, kp), np.float32)
    x[:, :k] = rng.normal(size=(rows, k))
    absmax = np.abs(x.reshape(rows, groups, GROUP)).max(-1)
    xs = (absmax / np.float32(127)).astype(np.float32)
    inverse = (np.float32(127) / absmax).astype(np.float32)
    xq = np.round(x.reshape(rows, groups, GROUP) * inverse[..., None]).astype(np.int8)
    xc = (-7 * xs * xq.astype(np.int32).sum(-1)).astype(np.float32)
    xq = xq.reshape(rows, kp)
    w = scheme.dequantize_weight(q_weight, q_scale, kp).astype(np.float64)
    exact = (xq.astype(np.float64) * np.repeat(xs, GROUP, axis=1)) @ w.T
    inputs = [xq[:, activation_layout(kp)], xs, xc, q_weight, q_scale]
    return x[:, :k], inputs, exact


def test_activation_layout_pairs_nibbles_with_their_values():
    for kp in (32, 64, 96, 256, 512, 544, 608):
        perm = activation_layout(kp)
        assert sorted(perm) == list(range(kp))
    perm = activation_layout(544)  # a block of 16 groups, then a single group
    # Block: per word j of the groups, the even values of word j of groups 0..15, then the odd.
    assert list(perm[:8]) == [0, 2, 4, 6, 32, 34, 36, 38]
    assert list(perm[64:68]) == [1, 3, 5, 7] and list(perm[128:132]) == [8, 10, 12, 14]
    assert list(perm[512:516]) == [512, 514, 516, 518]  # the single group: even, then odd
    # Its weight words: logical word j of group g is stored at 16 j + g; the tail in place.
    words = stored_word(np.arange(68), 68)
    assert list(words[:5]) == [0, 16, 32, 48, 1] and list(words[64:]) == [64, 65, 66, 67]
    perm = activation_layout(96)  # one pair, then a single group
    # A weight byte b of a pair holds values 2b (low nibble) and 2b+1 (high nibble); the byte
    # stream of the pair's 8 words is group 0's 16 bytes then group 1's.
    assert list(perm[:16]) == list(range(0, 32, 2)) and list(perm[16:32]) == list(range(32, 64, 2))
    assert list(perm[32:48]) == list(range(1, 32, 2)) and list(perm[48:64]) == list(
        range(33, 64, 2)
    )
    assert list(perm[64:80]) == list(range(64, 96, 2)) and list(perm[80:]) == list(range(65, 96, 2))


@pytest.mark.parametrize("vnni", [False, True], ids=["avx2", "avx512-vnni"])
@pytest.mark.parametrize("n,k,rows", SHAPES)
def test_x86_kernel_is_exact(n, k, rows, vnni):
    target = x86_target(vnni)
    _, inputs, exact = _int8_problem(n, k, rows)
    kp = inputs[0].shape[1]
    kernel = q4a8_matmul_avx2(n, kp, "float16", vnni=vnni)
    # The kernel takes [batch, seq, ...] activations: here one sequence of `rows` tokens.
    xq, xs, xc, q_weight, q_scale = inputs
    tokens = [a[None] for a in (xq, xs, xc)]
    (out,) = run_kernel(kernel, target, [*tokens, q_weight, q_scale, np.zeros((1, rows, n), "f4")])
    # Integer dot products are exact; only the float scaling and the final sums round.
    np.testing.assert_allclose(out[0], exact, rtol=0, atol=1e-6 * np.abs(exact).max())


# K after whole blocks: one single group (1056), pairs only (384, an expert's width), pairs and
# a single group (1120).
TAIL_KS = (1056, 384, 1120)


@pytest.mark.parametrize("k", TAIL_KS)
@pytest.mark.parametrize("vnni", [False, True], ids=["avx2", "avx512-vnni"])
def test_x86_kernel_rows_are_independent(vnni, k):
    """A prompt's rows come out bit for bit as when each is the only row (a decode step): the
    int8 activations downstream would round differently on a 1-ulp difference."""
    target = x86_target(vnni)
    n, rows = 40, 5
    _, (xq, xs, xc, q_weight, q_scale), _ = _int8_problem(n, k, rows)
    kernel = q4a8_matmul_avx2(n, xq.shape[1], "float16", vnni=vnni)

    def run(r: slice) -> np.ndarray:
        tokens = [a[None, r] for a in (xq, xs, xc)]
        out = np.zeros((1, len(xq[r]), n), "f4")
        return run_kernel(kernel, target, [*tokens, q_weight, q_scale, out])[0][0]

    together = run(slice(0, rows))
    alone = np.concatenate([run(slice(i, i + 1)) for i in range(rows)])
    np.testing.assert_array_equal(together, alone)


def _gather_problem(shared: bool, experts: int = 3, n: int = 40, k: int = 1056, tokens: int = 9):
    """A mixture's expert matmul: activations (a row per token, or per slot), stacked expert
    weights, each slot's expert id, and the exact float64 result `[tokens, 2, n]`."""
    top_k = 2
    rows = tokens if shared else tokens * top_k
    _, (xq, xs, xc, _, _), _ = _int8_problem(n, k, rows)
    kp = xq.shape[1]
    natural = np.empty_like(xq)
    natural[:, activation_layout(kp)] = xq
    scheme = get_quantization(CODE)
    stacks = [_int8_problem(n, k, 1, seed=e + 1)[1][3:] for e in range(experts)]
    q_weight = np.stack([w for w, _ in stacks])
    q_scale = np.stack([sc for _, sc in stacks])
    ids = np.random.default_rng(9).integers(0, experts, (tokens, top_k)).astype(np.int32)
    x = natural.astype(np.float64) * np.repeat(xs, GROUP, axis=1)
    exact = np.zeros((tokens, top_k, n))
    for t in range(tokens):
        for j in range(top_k):
            w = scheme.dequantize_weight(q_weight[ids[t, j]], q_scale[ids[t, j]], kp)
            exact[t, j] = x[t if shared else t * top_k + j] @ w.astype(np.float64).T
    lead = (1, tokens) if shared else (tokens, top_k)
    acts = [a.reshape(*lead, -1) for a in (xq, xs, xc)]
    return acts, ids, q_weight, q_scale, exact


@pytest.mark.parametrize("shared", [True, False], ids=["gate-up", "down"])
@pytest.mark.parametrize("vnni", [False, True], ids=["avx2", "avx512-vnni"])
def test_x86_expert_kernel_is_exact_and_slots_are_independent(vnni, shared):
    """The experts' gather kernel: each slot multiplies its own expert's weights, exactly up to
    float rounding; a prompt's slots (an expert's slots four at a time) equal each token's
    alone (its two slots one by one), bit for bit."""
    target = x86_target(vnni)
    acts, ids, q_weight, q_scale, exact = _gather_problem(shared)
    assert np.bincount(ids.ravel()).max() >= 4  # some expert's slots go four at a time
    experts, n = q_weight.shape[:2]
    kp = acts[0].shape[-1]
    kernel = q4a8_matmul_avx2(n, kp, "float16", vnni, gather=Gather(experts, 2, shared))

    def run(tokens: slice) -> np.ndarray:
        part = [a[:, tokens] if shared else a[tokens] for a in acts]
        out = np.zeros((len(ids[tokens]), 2, n), "f4")
        return run_kernel(kernel, target, [*part, ids[tokens], q_weight, q_scale, out])[0]

    together = run(slice(0, len(ids)))
    np.testing.assert_allclose(together, exact, rtol=0, atol=1e-6 * np.abs(exact).max())
    alone = np.concatenate([run(slice(t, t + 1)) for t in range(len(ids))])
    np.testing.assert_array_equal(together, alone)
    # The check can fail: every slot given expert 0's weights is far off.
    zeros = np.zeros_like(ids)
    wrong = run_kernel(kernel, target, [*acts, zeros, q_weight, q_scale, np.zeros_like(together)])
    assert np.abs(wrong[0] - exact).max() > 1e-2 * np.abs(exact).max()


# K with a partial last group inside a block (500) or a pair (250), at the end of a pair (40,
# 300) and alone (200); whole blocks then a pair (576) or a single group (1056).
@pytest.mark.parametrize("k", [500, 250, 40, 300, 200, 96, 576, 1056])
@pytest.mark.parametrize("rows", [1, 3])
def test_x86_activation_quantization_matches_the_definition(k, rows):
    target = x86_target(vnni=False)
    x, inputs, _ = _int8_problem(8, k, rows, seed=k)
    kp = inputs[0].shape[1]
    groups = kp // GROUP
    outputs = [np.zeros((1, rows, kp), "i1"), *(np.zeros((1, rows, groups), "f4"),) * 2]
    xq, xs, xc = run_kernel(quantize_activations_avx2(k), target, [x[None], *outputs], outputs=3)
    np.testing.assert_array_equal(xq[0], inputs[0])
    np.testing.assert_allclose(xs[0], inputs[1], rtol=1e-6)
    np.testing.assert_allclose(xc[0], inputs[2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n,k,rows", SHAPES[:3])
def test_portable_kernels_are_exact(n, k, rows):
    """The TE kernels every other target starts from: activation quantization and the matmul,
    compiled for a CPU without AVX2 so that no hand-written kernel replaces them."""
    x, inputs, exact = _int8_problem(n, k, rows)
    scheme = get_quantization(CODE)
    generic = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64"})
    assert not has_avx2(generic)

    class Layer(nn.Module):
        def __init__(self):
            self.q_weight, self.q_scale = scheme.packed_params(n, k)

        def forward(self, x: nn.Tensor):
            xq, xs, xc = quantize_activations(x, k)
            return q4a8_matmul(scheme, xq, xs, xc, self.q_weight, self.q_scale, n), xq, xs, xc

    spec = {
        "forward": {
            "x": nn.spec.Tensor(["rows", k], "float32"),
            "$": {"param_mode": "packed", "effect_mode": "none"},
        }
    }
    with generic:
        mod, _ = Layer().export_tvm(spec=spec)
    vm = tvm.relax.VirtualMachine(tvm.compile(mod, generic), tvm.cpu())
    out, xq, xs, xc = vm["forward"](
        tvm.runtime.tensor(x), [tvm.runtime.tensor(a) for a in inputs[3:]]
    )
    np.testing.assert_array_equal(xq.numpy(), inputs[0])
    np.testing.assert_allclose(xs.numpy(), inputs[1], rtol=1e-6)
    np.testing.assert_allclose(xc.numpy(), inputs[2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.numpy(), exact, rtol=0, atol=1e-5 * np.abs(exact).max())


@pytest.mark.parametrize("shared", [True, False], ids=["gate-up", "down"])
def test_portable_expert_kernel_is_exact(shared):
    """The experts' TE gather kernel (what every other target starts from), compiled for a CPU
    without AVX2."""
    acts, ids, q_weight, q_scale, exact = _gather_problem(shared)
    scheme = get_quantization(CODE)
    generic = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64"})

    class Layer(nn.Module):
        def __init__(self):
            self.q_weight = nn.Parameter(q_weight.shape, "uint32")
            self.q_scale = nn.Parameter(q_scale.shape, "float16")

        def forward(self, xq: nn.Tensor, xs: nn.Tensor, xc: nn.Tensor, ids: nn.Tensor):
            w, sc = self.q_weight, self.q_scale
            return q4a8_gather_matmul(scheme, xq, xs, xc, ids, w, sc, "experts", shared)

    names = ("xq", "xs", "xc")
    inputs = {n: nn.spec.Tensor(a.shape, str(a.dtype)) for n, a in zip(names, acts, strict=True)}
    spec = {
        "forward": {
            **inputs,
            "ids": nn.spec.Tensor(ids.shape, "int32"),
            "$": {"param_mode": "packed", "effect_mode": "none"},
        }
    }
    with generic:
        mod, _ = Layer().export_tvm(spec=spec)
    vm = tvm.relax.VirtualMachine(tvm.compile(mod, generic), tvm.cpu())
    args = [tvm.runtime.tensor(a) for a in (*acts, ids)]
    out = vm["forward"](*args, [tvm.runtime.tensor(q_weight), tvm.runtime.tensor(q_scale)])
    np.testing.assert_allclose(out.numpy(), exact, rtol=0, atol=1e-5 * np.abs(exact).max())


def _reference(hf_dir, monkeypatch, fp16_kv_cache: bool = False):
    """transformers on the dequantized weights and int8-rounded activations; `fp16_kv_cache`:
    q/k/v rounded as a `--kv-cache-dtype float16` build's cache rounds them."""
    model = quantize_activations_int8(dequantized_reference(hf_dir, CODE))
    return round_like_fp16_kv_cache(model, monkeypatch) if fp16_kv_cache else model


# Both sides compute the same integer dot products; they differ in float32 summation order and
# in rare ties of round(x / xs) that land on the other side (a division by a reciprocal under
# fast-math), and of fp16 roundings of q/k/v. Measured: about 1e-6 on logits of magnitude 1-4.
ATOL = 1e-4


@pytest.mark.parametrize(
    ("config", "kv_cache_dtype"), [("gqa", "auto"), ("tied", "auto"), ("gqa", "float16")]
)
def test_logits_match_transformers_with_int8_activations(
    tiny_builds, monkeypatch, config, kv_cache_dtype
):
    settings = GQA if config == "gqa" else {**GQA, "tie_word_embeddings": True}
    options = {} if kv_cache_dtype == "auto" else {"kv_cache_dtype": kv_cache_dtype}
    hf_dir, built = tiny_builds.get(config, quantization=CODE, build_options=options, **settings)
    rng = np.random.default_rng(4)
    prompt, follow = rng.integers(3, 320, 14).tolist(), rng.integers(3, 320, 6).tolist()
    fp16_kv_cache = kv_cache_dtype == "float16"
    reference = hf_logits(_reference(hf_dir, monkeypatch, fp16_kv_cache), prompt + follow)
    engine = CompiledModel(built)
    ours = [engine.prefill(prompt)] + [engine.decode(t) for t in follow[:-1]]
    np.testing.assert_allclose(np.stack(ours), reference[len(prompt) - 1 : -1], atol=ATOL, rtol=0)
    # The check sees each rounding: float activations, or a float16 KV cache against a float32
    # one, are measurably elsewhere.
    float_acts = hf_logits(dequantized_reference(hf_dir, CODE), prompt)[-1]
    assert np.abs(float_acts - reference[len(prompt) - 1]).max() > 10 * ATOL
    monkeypatch.undo()
    other_kv = hf_logits(_reference(hf_dir, monkeypatch, not fp16_kv_cache), prompt + follow)
    assert np.abs(other_kv - reference).max() > 10 * ATOL


def test_greedy_generation_matches_transformers(tiny_builds, monkeypatch):
    hf_dir, built = tiny_builds.get("gqa", quantization=CODE, **GQA)
    cm = ChatModule(str(built))
    cm.generate("Once upon a time", GenerationConfig(temperature=0, max_tokens=32))
    prompt_ids = [1, *cm.tokenizer.encode("Once upon a time", add_special_tokens=False).ids]
    reference = hf_greedy(_reference(hf_dir, monkeypatch), prompt_ids, 32)
    ours = cm.last_output_ids
    if len(ours) < 32:
        assert reference[len(ours)] == 2
    assert ours == reference[: len(ours)] and len(ours) >= 8
