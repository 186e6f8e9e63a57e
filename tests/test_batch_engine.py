"""Continuous batching on the paged KV cache: batched runs equal sequential ones."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from tokenizers import Tokenizer

from mlc.runtime import CompiledModel, GenerationConfig
from mlc.runtime.batch_engine import BatchEngine, EngineOverloaded
from mlc.runtime.sequence import Sequence, SequenceOutput

GQA = {"num_key_value_heads": 2}


def greedy_sequential(built, prompt: list[int], steps: int) -> tuple[list[int], np.ndarray]:
    model = CompiledModel(built)
    logits = model.prefill(prompt)
    tokens = []
    for _ in range(steps):
        tokens.append(int(np.argmax(logits)))
        logits = model.decode(tokens[-1])
    return tokens, logits


@pytest.mark.parametrize("quantization", ["q0f32", "q4f32_1"])
def test_batched_prefill_and_decode_equal_sequential_runs(tiny_builds, quantization):
    _, built = tiny_builds.get("gqa", quantization, **GQA)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 320, size=int(n)).tolist() for n in rng.integers(2, 30, size=16)]
    model = CompiledModel(built, max_batch_size=16, kv_cache_tokens=2048)
    seq_ids = list(range(1, 17))
    for seq_id in seq_ids:
        model.add_sequence(seq_id)
    # Two prefill calls of eight sequences each (flattened tokens), then batched decode.
    logits = np.concatenate(
        [
            model.forward_prefill(seq_ids[:8], [np.array(p) for p in prompts[:8]]),
            model.forward_prefill(seq_ids[8:], [np.array(p) for p in prompts[8:]]),
        ]
    )
    tokens: list[list[int]] = [[] for _ in seq_ids]
    for _ in range(6):
        step = [int(np.argmax(row)) for row in logits]
        for out, token in zip(tokens, step, strict=True):
            out.append(token)
        logits = model.forward_decode(seq_ids, step)
    for i, prompt in enumerate(prompts):
        want_tokens, want_logits = greedy_sequential(built, prompt, 6)
        assert tokens[i] == want_tokens
        np.testing.assert_allclose(logits[i], want_logits, atol=1e-4, rtol=0)
    free = model.num_available_pages()
    for seq_id in seq_ids:
        model.remove_sequence(seq_id)
    assert model.num_available_pages() > free


def test_max_batch_size_above_the_build_is_refused(tiny_builds):
    _, built = tiny_builds.get("gqa", **GQA)
    with pytest.raises(ValueError, match="max-batch-size"):
        CompiledModel(built, max_batch_size=17)


def run_engine(engine: BatchEngine, tokenizer: Tokenizer, prompts, config) -> list[list[int]]:
    finished = threading.Semaphore(0)
    results: list[list[int]] = [[] for _ in prompts]

    def collector(i: int):
        def put(out: SequenceOutput) -> None:
            results[i] += out.token_ids
            if out.finish_reason is not None:
                finished.release()

        return put

    for i, prompt in enumerate(prompts):
        engine.submit(Sequence(prompt, config, tokenizer, set(), [], collector(i), 256))
    for _ in prompts:
        assert finished.acquire(timeout=120)
    deadline = time.monotonic() + 30
    while engine.stats().num_running and time.monotonic() < deadline:
        time.sleep(0.01)  # the last sequence leaves the batch right after its final output
    return results


def test_engine_with_chunked_prefill_equals_sequential_greedy(tiny_builds):
    _, built = tiny_builds.get("gqa", **GQA)
    model = CompiledModel(built, max_batch_size=4, kv_cache_tokens=1024)
    # A prefill budget of 7 tokens: long prompts take several steps, interleaved with decodes.
    engine = BatchEngine(model, prefill_chunk_size=7)
    tokenizer = Tokenizer.from_file(str(built / "tokenizer.json"))
    rng = np.random.default_rng(1)
    prompts = [rng.integers(3, 320, size=int(n)).tolist() for n in (3, 25, 11, 40, 5, 17)]
    config = GenerationConfig(temperature=0, max_tokens=8).resolved({})
    results = run_engine(engine, tokenizer, prompts, config)
    for prompt, got in zip(prompts, results, strict=True):
        assert got == greedy_sequential(built, prompt, 8)[0]
    stats = engine.stats()
    assert stats.num_running == stats.num_waiting == stats.kv_pages_used == 0
    assert stats.kv_pages_reserved == 0
    engine.shutdown()
    with pytest.raises(EngineOverloaded):
        engine.submit(Sequence([5], config, tokenizer, set(), [], lambda _: None, 256))


def test_waiting_sequences_are_admitted_in_arrival_order(tiny_builds):
    _, built = tiny_builds.get("gqa", **GQA)
    engine = BatchEngine(CompiledModel(built, max_batch_size=1), max_queue=8)
    tokenizer = Tokenizer.from_file(str(built / "tokenizer.json"))
    config = GenerationConfig(temperature=0, max_tokens=3).resolved({})
    events: list[tuple[int, str]] = []
    finished = threading.Semaphore(0)

    def recorder(i: int):
        def put(out: SequenceOutput) -> None:
            events.append(
                (i, "done" if out.finish_reason else "admitted" if not out.token_ids else "token")
            )
            if out.finish_reason is not None:
                finished.release()

        return put

    for i in range(6):
        engine.submit(Sequence([3 + i, 7], config, tokenizer, set(), [], recorder(i), 256))
    for _ in range(6):
        assert finished.acquire(timeout=60)
    # One at a time, first come first served: each is admitted only after the previous is done.
    order = [(i, kind) for i, kind in events if kind != "token"]
    assert order == [(i, kind) for i in range(6) for kind in ("admitted", "done")]
    engine.shutdown()
