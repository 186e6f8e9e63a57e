"""Continuous batching on the paged KV cache: batched runs equal sequential ones."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from tokenizers import Tokenizer

from mlc.runtime import CompiledModel, GenerationConfig
from mlc.runtime.batch_engine import BatchEngine, EngineOverloaded, take_pieces
from mlc.runtime.prefix_cache import PrefixCache
from mlc.runtime.sequence import Sequence, SequenceOutput

GQA = {"num_key_value_heads": 2}
# Every code that runs on the CPU (the GGUF-native formats have their own tests).
CPU_CODES = ["q0f32", "q0f16", "q4f32_1", "q4f16_1", "q3f16_1", "q8f16_1", "q4a8_1"]


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


def run_engine(
    engine: BatchEngine,
    tokenizer: Tokenizer,
    prompts,
    configs,
    stop_token_ids: set[int] | None = None,
    delays=None,
    logprobs: list[list[float]] | None = None,
) -> list[list[int]]:
    """Each prompt's tokens (`configs`: one for all, or one per prompt), submitted `delays`
    seconds apart; with `logprobs` (a list per prompt) each sampled token's logprob too."""
    finished = threading.Semaphore(0)
    results: list[list[int]] = [[] for _ in prompts]
    if not isinstance(configs, list):
        configs = [configs] * len(prompts)

    def collector(i: int):
        def put(out: SequenceOutput) -> None:
            results[i] += out.token_ids
            if logprobs is not None:
                logprobs[i] += [lp.logprob for lp in out.logprobs]
            if out.finish_reason is not None:
                finished.release()

        return put

    for i, (prompt, config) in enumerate(zip(prompts, configs, strict=True)):
        stops = stop_token_ids or set()
        top = None if logprobs is None else 0
        engine.submit(Sequence(prompt, config, tokenizer, stops, [], collector(i), 256, top))
        if delays is not None:
            time.sleep(float(delays[i]))
    for _ in prompts:
        assert finished.acquire(timeout=120)
    deadline = time.monotonic() + 30
    while engine.stats().num_running and time.monotonic() < deadline:
        time.sleep(0.01)  # the last sequence leaves the batch right after its final output
    return results


def test_engine_with_chunked_prefill_equals_sequential_greedy(tiny_builds):
    _, built = tiny_builds.get("gqa", **GQA)
    # Prefill steps of 7 tokens: long prompts take several, interleaved with decodes.
    model = CompiledModel(built, max_batch_size=4, kv_cache_tokens=1024, prefill_chunk_size=7)
    engine = BatchEngine(model, prefix_cache=False)
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


def greedy_solo(
    model: CompiledModel, prompt: list[int], max_tokens: int, stop: int
) -> tuple[list[int], list[float]]:
    """Greedy tokens of one sequence alone in the model, up to `stop` (not included), and each
    sampled token's logprob (float64, computed as the engine computes it)."""
    model.reset()
    logits = model.prefill(prompt)
    tokens: list[int] = []
    logprobs: list[float] = []
    while len(tokens) < max_tokens:
        token = int(np.argmax(logits))
        shifted = logits.astype(np.float64) - logits.max()
        logprobs.append(float(shifted[token] - np.log(np.exp(shifted).sum())))
        if token == stop:
            break
        tokens.append(token)
        if len(tokens) < max_tokens:
            logits = model.decode(token)
    return tokens, logprobs


@pytest.mark.parametrize("code", CPU_CODES)
def test_greedy_answers_do_not_depend_on_the_batch(tiny_builds, code):
    """Batch invariance: random mixes of prompt lengths, answer lengths, arrival times and
    prefill chunk sizes, with a batch smaller than the mix (late sequences take pages others
    freed), and every sequence's tokens equal its run alone. The logprobs must be equal too,
    bit for bit: a logit that moved in its last bit would pick another token at a near tie."""
    _, built = tiny_builds.get("gqa", code, **GQA)
    tokenizer = Tokenizer.from_file(str(built / "tokenizer.json"))
    eos = CompiledModel(built).chat_config.eos_token_ids[0]
    rng = np.random.default_rng(CPU_CODES.index(code))
    for _ in range(3):  # mixes of 12 sequences, up to 9 at once (decode rows past 8)
        chunk = int(rng.integers(3, 49))
        model = CompiledModel(
            built, max_batch_size=9, kv_cache_tokens=1024, prefill_chunk_size=chunk
        )
        solo = CompiledModel(built, prefill_chunk_size=chunk)
        prompts = [rng.integers(3, 320, size=n).tolist() for n in rng.integers(1, 41, size=12)]
        max_tokens = rng.integers(1, 25, size=12).tolist()
        configs = [GenerationConfig(temperature=0, max_tokens=n).resolved({}) for n in max_tokens]
        delays = rng.uniform(0, 0.004, size=len(prompts))  # arrivals spread over engine steps
        engine = BatchEngine(model)
        logprobs: list[list[float]] = [[] for _ in prompts]
        results = run_engine(engine, tokenizer, prompts, configs, {eos}, delays, logprobs)
        engine.shutdown()
        for i, (prompt, limit) in enumerate(zip(prompts, max_tokens, strict=True)):
            want_tokens, want_logprobs = greedy_solo(solo, prompt, limit, eos)
            assert results[i] == want_tokens, (code, chunk, prompt)
            assert logprobs[i] == want_logprobs, (code, chunk, prompt)


def test_prefill_steps_take_whole_pieces_and_keep_one_token_pieces_apart():
    """A solo prefill cuts a feed into pieces of the chunk size from its start, and the KV
    cache attends to an all-one-token call with another kernel than to any other call: a step
    never splits a piece, nor mixes one-token pieces with longer ones."""

    class Feed:
        def __init__(self, feed: int, done: int = 0):
            self.feed_ids, self.num_prefilled = list(range(feed)), done

    def sizes(*feeds):
        return [piece.size for _, piece in take_pieces(list(feeds), 8)]

    assert sizes(Feed(20), Feed(6)) == [8]  # 6 would not fit in what is left: never split
    assert sizes(Feed(20, 16), Feed(3), Feed(2)) == [4, 3]  # whole pieces while they fit
    assert sizes(Feed(9, 8), Feed(5), Feed(1)) == [1, 1]  # one-token pieces together
    assert sizes(Feed(5), Feed(9, 8), Feed(2)) == [5, 2]  # ... and apart from longer ones


@pytest.mark.parametrize("code", ["q0f32", "q4a8_1"])
def test_prefix_cache_never_changes_an_answer(tiny_builds, code):
    """Prompts that share a system prompt and earlier turns, in waves: later waves fork from
    the prefixes earlier ones left, and every sequence's tokens and logprobs still equal its
    run alone, bit for bit. A KV cache of 20 pages makes the cache evict as it goes."""
    _, built = tiny_builds.get("gqa", code, **GQA)
    tokenizer = Tokenizer.from_file(str(built / "tokenizer.json"))
    eos = CompiledModel(built).chat_config.eos_token_ids[0]
    rng = np.random.default_rng(7)
    chunk = 8
    model = CompiledModel(built, max_batch_size=4, kv_cache_tokens=320, prefill_chunk_size=chunk)
    solo = CompiledModel(built, prefill_chunk_size=chunk)
    engine = BatchEngine(model)
    system = rng.integers(3, 320, size=29).tolist()
    turns = [system + rng.integers(3, 320, size=int(n)).tolist() for n in (3, 12, 20)]
    config = GenerationConfig(temperature=0, max_tokens=6).resolved({})
    for wave in range(3):
        prompts = [t + rng.integers(3, 320, size=int(n)).tolist() for t in turns for n in (1, 9)]
        if wave == 2:
            prompts.append(prompts[0][:24])  # a prompt the cache holds whole: 16 reused
        logprobs: list[list[float]] = [[] for _ in prompts]
        delays = rng.uniform(0, 0.004, size=len(prompts))
        results = run_engine(engine, tokenizer, prompts, config, {eos}, delays, logprobs)
        for i, prompt in enumerate(prompts):
            want_tokens, want_logprobs = greedy_solo(solo, prompt, 6, eos)
            assert results[i] == want_tokens, (code, wave, prompt)
            assert logprobs[i] == want_logprobs, (code, wave, prompt)
    stats = engine.stats()
    engine.shutdown()
    assert stats.prefix_cache_lookups == 6 + 6 + 7
    assert stats.prefix_cache_hits >= 10
    assert stats.prefix_tokens_reused >= 10 * 24
    assert stats.prefix_cache_pages <= 20


def test_prefix_cache_bookkeeping():
    """Whole chunks only, at least one token left to prefill, the best match, redundant
    prefixes dropped, least recently used evicted first."""
    cache = PrefixCache(4, 16)
    assert cache.lookup(list(range(20))) == (None, 0)
    a = np.arange(8)
    cache.add(100, a)
    entry, reused = cache.lookup([*range(7), 99, 1, 2])
    assert (entry.seq_id, reused) == (100, 4)  # 7 tokens shared: one whole chunk
    assert cache.lookup(list(range(8)))[1] == 4  # the last token is always prefilled
    assert cache.lookup(list(range(9)))[1] == 8
    assert cache.add(101, np.arange(12)) == [100]  # extends 100, which is dropped
    assert cache.covers(np.arange(8)) and not cache.covers(np.arange(1, 9))
    cache.add(102, np.arange(50, 58))
    cache.lookup(list(range(13)))  # 101 used last
    assert cache.evict() == 102
    assert cache.evict(keep=cache.lookup(list(range(13)))[0]) is None
    assert cache.evict() == 101
    assert cache.pages == 0


def test_single_sequence_reuses_a_kept_prefix_after_reset(tiny_builds):
    """`reset(keep_prefix=True)` keeps the whole prefill chunks of the first prompt; the next
    prompt reuses those it starts with, and its logits equal a fresh model's bit for bit."""
    _, built = tiny_builds.get("gqa", **GQA)
    rng = np.random.default_rng(3)
    system = rng.integers(3, 320, size=37).tolist()
    first, second = (system + rng.integers(3, 320, size=9).tolist() for _ in range(2))
    model = CompiledModel(built, prefill_chunk_size=8)
    fresh = CompiledModel(built, prefill_chunk_size=8)
    model.prefill(first)
    for token in (5, 6, 7):
        model.decode(token)
    model.reset(keep_prefix=True)
    got = model.prefill(second)
    assert model.reused_tokens == 32  # 37 shared tokens: four whole chunks
    assert np.array_equal(got, fresh.prefill(second))
    for token in (9, 10):  # decoding on from the reused prefix too
        assert np.array_equal(model.decode(token), fresh.decode(token))
    model.reset(keep_prefix=True)
    other = rng.integers(3, 320, size=12).tolist()
    fresh.reset()
    assert np.array_equal(model.prefill(other), fresh.prefill(other))
    assert model.reused_tokens == 0
    model.reset()  # without keep_prefix: nothing is reused
    fresh.reset()
    assert np.array_equal(model.prefill(other), fresh.prefill(other))
    assert model.reused_tokens == 0


def test_chat_module_reuses_a_shared_prompt_start_across_conversations(tiny_builds):
    _, built = tiny_builds.get("gqa", **GQA)
    from mlc.runtime import ChatModule

    document = " ".join(f"rule {i}: be brief." for i in range(12))
    config = GenerationConfig(temperature=0, max_tokens=8)
    chat = ChatModule(built, conv_template="chatml", prefill_chunk_size=8)
    chat.generate(f"{document} Hello there.", config)
    chat.reset_chat()
    question = f"{document} What is two plus two?"
    answer = chat.generate(question, config)
    assert chat.last_stats.cached_tokens >= 8
    assert "cached" in chat.stats()
    fresh = ChatModule(built, conv_template="chatml", prefill_chunk_size=8, prefix_cache=False)
    assert answer == fresh.generate(question, config)
    assert fresh.last_stats.cached_tokens == 0
    assert fresh.last_stats.prefill_tokens == (
        chat.last_stats.prefill_tokens + chat.last_stats.cached_tokens
    )
