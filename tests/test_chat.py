"""Multi-turn chat, chunked prefill, context limits, sampling and streaming on a built model."""

from __future__ import annotations

import numpy as np
import pytest
from reference import hf_logits, load_hf

from mlc import ChatModule, GenerationConfig
from mlc.runtime import CompiledModel, ContextWindowExceeded

GQA = {"num_key_value_heads": 2}


def test_second_turn_logits_equal_fresh_prefill_of_whole_conversation(tiny_builds):
    _, built = tiny_builds.get("gqa", **GQA)
    cm = ChatModule(str(built), conv_template="chatml")
    greedy = GenerationConfig(temperature=0, max_tokens=6)
    cm.generate("Tell me a story.", greedy)
    cm.generate("And another one?", greedy)
    # The second turn prefilled only its new tokens; the KV cache holds the whole conversation.
    conversation = list(cm.history_ids)
    assert cm.engine.num_cached_tokens == len(conversation)
    continued = cm.engine.decode(cm.last_output_ids[-1])

    fresh = CompiledModel(built)
    fresh.prefill(conversation)
    np.testing.assert_allclose(fresh.decode(cm.last_output_ids[-1]), continued, atol=1e-5, rtol=0)


def test_second_turn_matches_transformers_on_the_whole_conversation(tiny_builds):
    hf_dir, built = tiny_builds.get("gqa", **GQA)
    engine = CompiledModel(built)
    rng = np.random.default_rng(7)
    turn1, answer, turn2 = (rng.integers(3, 320, size=n).tolist() for n in (9, 4, 7))
    engine.prefill(turn1)
    for token in answer:
        engine.decode(token)
    ours = engine.prefill(turn2)
    reference = hf_logits(load_hf(hf_dir), turn1 + answer + turn2)[-1]
    np.testing.assert_allclose(ours, reference, atol=1e-4, rtol=0)


def test_chunked_prefill_equals_one_shot_prefill(tiny_builds):
    hf_dir, one_shot = tiny_builds.get("gqa", **GQA)
    _, chunked = tiny_builds.get("gqa", build_options={"prefill_chunk_size": 5}, **GQA)
    prompt = np.random.default_rng(3).integers(3, 320, size=23).tolist()
    small = CompiledModel(chunked)
    assert small.prefill_chunk_size == 5
    a = small.prefill(prompt)
    b = CompiledModel(one_shot).prefill(prompt)
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    np.testing.assert_allclose(a, hf_logits(load_hf(hf_dir), prompt)[-1], atol=1e-4, rtol=0)
    np.testing.assert_allclose(
        small.decode(5), CompiledModel(one_shot).prefill([*prompt, 5]), atol=1e-4, rtol=0
    )


def test_prompt_longer_than_context_window_is_a_clear_error(tiny_builds):
    _, built = tiny_builds.get("gqa", **GQA)
    cm = ChatModule(str(built))
    with pytest.raises(ContextWindowExceeded, match="context window is 256"):
        cm.generate("word " * 400, GenerationConfig(max_tokens=4))
    # Nothing was fed: the chat goes on normally.
    assert cm.engine.num_cached_tokens == 0
    assert isinstance(cm.generate("Hello", GenerationConfig(max_tokens=3)), str)


def test_answer_stops_at_the_context_window_then_the_next_turn_errors(tiny_builds):
    _, built = tiny_builds.get("gqa", **GQA)
    cm = ChatModule(str(built))
    cm.stop_token_ids = set()  # a random model may sample EOS; here it must run to the limit
    cm.generate("Once upon a time", GenerationConfig(temperature=0, max_tokens=1000))
    assert cm.last_stats.finish_reason == "length"
    assert cm.engine.num_cached_tokens == cm.engine.context_window_size
    with pytest.raises(ContextWindowExceeded):
        cm.generate("more", GenerationConfig(max_tokens=2))


def test_empty_prompt_is_rejected(tiny_builds):
    _, built = tiny_builds.get("gqa", **GQA)
    with pytest.raises(ValueError, match="prompt is empty"):
        ChatModule(str(built)).generate("")


def test_streaming_pieces_join_to_the_answer_and_reset_forgets(tiny_builds):
    _, built = tiny_builds.get("gqa", **GQA)
    cm = ChatModule(str(built))
    pieces: list[str] = []
    config = GenerationConfig(temperature=0, max_tokens=20)
    text = cm.generate("Once upon a time", config, progress_callback=pieces.append)
    assert "".join(pieces) == text
    assert cm.last_stats.decode_tokens == len(cm.last_output_ids) > 0
    assert "prefill:" in cm.stats() and "decode:" in cm.stats()
    cm.reset_chat()
    assert cm.engine.num_cached_tokens == 0 and cm.history_ids == []
    assert cm.generate("Once upon a time", config) == text


def test_seeded_sampling_is_reproducible_and_differs_from_greedy(tiny_builds):
    _, built = tiny_builds.get("gqa", **GQA)
    cm = ChatModule(str(built))
    config = GenerationConfig(
        temperature=1.5, top_p=0.9, top_k=50, seed=11, max_tokens=16, stop_token_ids=[]
    )
    outputs = []
    for _ in range(2):
        cm.reset_chat()
        cm.generate("The quick brown fox", config)
        outputs.append(cm.last_output_ids)
    assert outputs[0] == outputs[1]
    cm.reset_chat()
    cm.generate("The quick brown fox", GenerationConfig(temperature=0, max_tokens=16))
    assert cm.last_output_ids != outputs[0]


def test_benchmark_generate_decodes_exactly_the_requested_length(tiny_builds):
    _, built = tiny_builds.get("gqa", **GQA)
    cm = ChatModule(str(built))
    cm.benchmark_generate("Once upon a time", 40)
    assert len(cm.last_output_ids) == 40
    assert cm.last_stats.decode_tokens_per_s > 0
