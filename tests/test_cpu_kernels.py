"""Our CPU kernels on long inputs against transformers: decode attention over many KV pages,
prefill chunks attending to cached pages, and Falcon's ALiBi biases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import transformers.models.falcon.modeling_falcon as falcon_hf
import tvm
from reference import hf_logits, load_hf
from test_parity import FALCON_RW

from mlc.build import BuildOptions, build
from mlc.runtime import CompiledModel
from mlc.targets import get_target
from mlc.targets.cpu_attention_decode import decode_attention
from mlc.testing.kernel_case import KernelCase, is_buffer
from mlc.testing.numpy_kernels import DECODE_ATTENTION, ModelFacts, numpy_reference
from mlc.testing.random_model import save_model

GQA = {"num_key_value_heads": 2}


def test_decode_attention_over_many_pages_matches_transformers(tiny_builds):
    """170 cached tokens fill 11 pages of 16; GQA shares each KV row between two query heads."""
    hf_dir, built = tiny_builds.get("gqa", **GQA)
    rng = np.random.default_rng(7)
    tokens = rng.integers(3, 320, 176).tolist()
    reference = hf_logits(load_hf(hf_dir), tokens)
    engine = CompiledModel(built)
    engine.prefill(tokens[:170])
    ours = [engine.decode(t) for t in tokens[170:175]]
    np.testing.assert_allclose(np.stack(ours), reference[170:175], atol=1e-4, rtol=0)
    assert reference.std() > 0.1


def test_chunked_prefill_over_cached_pages_matches_transformers(tiny_builds):
    """A 150-token prompt in chunks of 32: each later chunk attends to up to 128 cached tokens
    (8 pages) through the paged-prefix prefill kernel, merged with its own causal attention."""
    hf_dir, built = tiny_builds.get("gqa", build_options={"prefill_chunk_size": 32}, **GQA)
    tokens = np.random.default_rng(8).integers(3, 320, 150).tolist()
    reference = hf_logits(load_hf(hf_dir), tokens)
    ours = CompiledModel(built).prefill(tokens, all_logits=True)
    np.testing.assert_allclose(ours, reference, atol=1e-4, rtol=0)
    assert reference.std() > 0.1


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_decode_attention_kernel_over_several_chunks_matches_numpy(dtype):
    """The decode kernel over 300 keys (two whole chunks of its online softmax, two blocks and
    12 single keys) in pages scattered over the cache, 4 query heads per KV head; a float16
    cache's rows are converted once for all the heads. Against float64 numpy on the same
    inputs (`mlc.testing.numpy_kernels`, the GPU kernel checks' reference): the output within
    its dtype's rounding, the log-sum-exp within 1e-5 (one key fewer moves both beyond that)."""
    kv_heads, group, head_dim, page, keys = 2, 4, 64, 16, 300
    target = get_target("llvm").tvm_target()
    kernel = decode_attention(kv_heads, kv_heads * group, head_dim, dtype, page)
    lib = tvm.compile(kernel.with_attr("global_symbol", "decode"), target=target)
    rng = np.random.default_rng(5)
    pages = rng.standard_normal((40, 2, kv_heads, page, head_dim)).astype(dtype)
    table = rng.permutation(40)[: -(-keys // page)].astype("int32")
    q = rng.standard_normal((1, kv_heads * group, head_dim)).astype(dtype)

    def case(n_keys: int) -> KernelCase:
        """The kernel's buffers by name, `n_keys` of the table's rows in use."""
        arrays = {
            "Q": q,
            "pages": pages,
            "page_table_indptr": np.array([0, len(table)], "int32"),
            "page_table_values": table,
            "length_info": np.array([n_keys - (len(table) - 1) * page], "int32"),
            "k_rope_pos_offset": np.zeros(1, "int32"),
            "q_rope_position": np.array([n_keys - 1], "int32"),
            "output": np.zeros_like(q),
            "lse": np.zeros((1, kv_heads * group), "float32"),
        }
        return KernelCase({}, arrays, {"rotary_mode": 0, "sm_scale": head_dim**-0.5})

    ours = case(keys)
    buffers = [ours.arrays[p.name] for p in kernel.params if is_buffer(p)]
    args = [tvm.runtime.tensor(a) for a in buffers]
    lib["decode"](*args, 0, 1.0, 1e4, ours.scalars["sm_scale"])
    out, lse = args[-2].numpy()[0].astype(np.float64), args[-1].numpy()[0]

    facts = ModelFacts(rms_norm_eps=0.0, quantization=None)  # attention reads neither
    atol = 2.5e-4 if dtype == "float16" else 1e-5  # float16: a step of its output below 0.5
    for n_keys, close in ((keys, True), (keys - 1, False)):
        exact = numpy_reference(DECODE_ATTENTION, kernel, case(n_keys), facts)
        values, lse2 = exact["output"][0].astype(np.float64), exact["lse"][0]
        if close:
            np.testing.assert_allclose(out, values, atol=atol, rtol=0)
            np.testing.assert_allclose(lse, lse2, atol=1e-5, rtol=0)
        else:
            assert np.abs(out - values).max() > atol and np.abs(lse - lse2).max() > 1e-5


def _exact_alibi(attention_mask, num_heads, dtype):
    """transformers' Falcon ALiBi bias computed exactly, without its bfloat16 rounding."""
    n = 2 ** math.floor(math.log2(num_heads))
    slopes = [2 ** (-8 * k / n) for k in range(1, n + 1)]
    slopes += [2 ** (-4 * k / n) for k in range(1, 1 + 2 * (num_heads - n), 2)]
    positions = ((attention_mask.cumsum(-1) - 1) * attention_mask)[:, None, :].double()
    bias = torch.tensor(slopes, dtype=torch.float64)[..., None] * positions
    return bias.reshape(attention_mask.shape[0] * num_heads, 1, -1).to(dtype)


def test_falcon_alibi_over_a_long_chunked_prompt_matches_transformers(tiny_builds, monkeypatch):
    """Falcon-RW's ALiBi in every CPU attention kernel: a 320-token prompt in chunks of 64 (the
    ragged and the paged-prefix prefill kernels), then decode, past position 256, where
    transformers' bfloat16 bias also rounds the positions."""
    settings = {**FALCON_RW, "vector_std": 0.1, "max_position_embeddings": 512}
    hf_dir, built = tiny_builds.get(
        "falcon-rw-long", build_options={"prefill_chunk_size": 64}, **settings
    )
    tokens = np.random.default_rng(3).integers(3, 300, 330).tolist()
    hf = load_hf(hf_dir)
    reference = hf_logits(hf, tokens)
    engine = CompiledModel(built)
    prefill = engine.prefill(tokens[:320], all_logits=True)
    decode = np.stack([engine.decode(t) for t in tokens[320:329]])
    np.testing.assert_allclose(prefill, reference[:320], atol=1e-4, rtol=0)
    np.testing.assert_allclose(decode, reference[320:329], atol=1e-4, rtol=0)
    # The bfloat16 rounding is part of the model: the exact bias gives other logits.
    monkeypatch.setattr(falcon_hf, "build_alibi_tensor", _exact_alibi)
    assert np.abs(prefill - hf_logits(hf, tokens)[:320]).max() > 0.05


def test_alibi_models_build_for_the_cpu_only(tmp_path):
    """The GPU targets' attention kernels (TVM's) have no ALiBi: the build says so."""
    save_model(tmp_path / "hf", **FALCON_RW)
    options = BuildOptions(model=tmp_path / "hf", target="metal", output=tmp_path / "dist")
    options.quiet = True
    with pytest.raises(ValueError, match="ALiBi .* --target llvm"):
        build(options)
    assert not any((tmp_path / "dist").glob("*"))  # refused before anything is written


def _sigmoid_kernel(vectorized: bool):
    from tvm.script import tirx as T

    loop = T.vectorized if vectorized else T.serial

    @T.prim_func
    def sigmoid(a: T.Buffer((4096,), "float32"), b: T.Buffer((4096,), "float32")):
        for i in loop(4096):
            b[i] = T.sigmoid(a[i])

    return sigmoid


def test_sigmoid_lowering_is_accurate_and_the_same_in_every_lane():
    """SiLU's sigmoid on the CPU is our polynomial (`targets/cpu_schedules.vector_sigmoid`):
    within 2.5e-7 of the exact value, the scalar and the vector code alike and bit for bit
    (with LLVM's `arcp` flag, an Intel Xeon divided the scalar lanes by a reciprocal estimate
    refined once: 2^-22 apart)."""
    import tvm

    from mlc.targets import get_target

    target = get_target("llvm").tvm_target()
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-120, 120, 2048), rng.normal(0, 4, 2048)]).astype("f4")
    exact = 1 / (1 + np.exp(-x.astype("f8")))
    outputs = []
    for vectorized in (False, True):
        lib = tvm.compile(_sigmoid_kernel(vectorized), target=target)
        args = [tvm.runtime.tensor(x), tvm.runtime.tensor(np.zeros_like(x))]
        lib(*args)
        outputs.append(args[1].numpy())
        assert np.abs(outputs[-1] - exact).max() < 2.5e-7
    np.testing.assert_array_equal(outputs[0], outputs[1])
