"""Our CPU kernels on long inputs against transformers: decode attention over many KV pages,
and prefill chunks attending to cached pages."""

from __future__ import annotations

import numpy as np
from reference import hf_logits, load_hf

from mlc.runtime import CompiledModel

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
