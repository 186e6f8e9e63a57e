"""Sampling, streaming, stop strings and templates, without a compiled model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlc.runtime import TEMPLATES, GenerationConfig, get_template
from mlc.runtime.sampling import apply_penalties, sample
from mlc.runtime.streamer import StopStringFilter, TextStreamer
from mlc.testing.random_model import make_tokenizer


def _config(**kwargs) -> GenerationConfig:
    return GenerationConfig(**kwargs).resolved({})


def test_greedy_takes_the_argmax():
    logits = np.array([0.1, 3.0, 2.0, -1.0], dtype=np.float32)
    assert sample(logits, _config(temperature=0), np.random.default_rng(0)) == 1


def test_top_k_one_is_greedy_whatever_the_temperature():
    logits = np.random.default_rng(0).normal(size=100).astype(np.float32)
    rng = np.random.default_rng(0)
    picks = {sample(logits, _config(temperature=5.0, top_k=1), rng) for _ in range(20)}
    assert picks == {int(np.argmax(logits))}


def test_top_p_keeps_only_the_nucleus():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))
    rng = np.random.default_rng(0)
    picks = {sample(logits, _config(temperature=1.0, top_k=0, top_p=0.75), rng) for _ in range(300)}
    assert picks == {0, 1}


def test_min_p_drops_unlikely_tokens():
    logits = np.log(np.array([0.6, 0.3, 0.07, 0.03], dtype=np.float32))
    rng = np.random.default_rng(0)
    picks = {
        sample(logits, _config(temperature=1.0, top_k=0, top_p=1.0, min_p=0.2), rng)
        for _ in range(300)
    }
    assert picks == {0, 1}


def test_penalties_follow_transformers_and_openai_rules():
    logits = np.array([2.0, -2.0, 1.0, 1.0], dtype=np.float32)
    out = apply_penalties(logits.copy(), _config(repetition_penalty=2.0), [0, 1], [])
    np.testing.assert_allclose(out, [1.0, -4.0, 1.0, 1.0])
    out = apply_penalties(
        logits.copy(), _config(presence_penalty=0.5, frequency_penalty=0.25), [], [2, 2, 3]
    )
    np.testing.assert_allclose(out, [2.0, -2.0, 1.0 - 0.5 - 0.5, 1.0 - 0.5 - 0.25])


def test_seed_makes_sampling_reproducible():
    logits = np.random.default_rng(1).normal(size=50).astype(np.float32)
    config = _config(temperature=1.0, top_k=0, top_p=1.0, seed=3)
    draws = [[sample(logits, config, np.random.default_rng(3)) for _ in range(5)] for _ in range(2)]
    assert draws[0] == draws[1]


def test_generation_config_defaults_and_validation():
    config = GenerationConfig(top_k=7).resolved({"temperature": 0.2, "top_k": 3})
    assert (config.temperature, config.top_k, config.max_tokens) == (0.2, 7, 512)
    with pytest.raises(ValueError, match="top_p"):
        GenerationConfig(top_p=0).resolved({})
    with pytest.raises(ValueError, match="temperature"):
        GenerationConfig(temperature=-1).resolved({})


def test_streamer_never_splits_a_utf8_character():
    tokenizer = make_tokenizer(300)
    text = "Héllo wörld! 你好，世界。 🙂🚀 done"
    ids = tokenizer.encode(text).ids
    streamer = TextStreamer(tokenizer)
    pieces = [streamer.put(i) for i in ids] + [streamer.finish()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    # Multi-byte characters really are split across tokens in this vocabulary.
    assert len(ids) > len(text.encode("utf-8")) // 2


@pytest.mark.parametrize(
    "chunks", [["Hello ST", "OP there"], ["Hello S", "T", "OP"], ["HelloSTOP"]]
)
def test_stop_string_is_never_emitted(chunks):
    stop = StopStringFilter(["STOP"])
    out = "".join(stop.put(c) for c in chunks) + stop.finish()
    assert out.replace(" ", "") == "Hello"
    assert stop.stopped


def test_text_that_only_looks_like_a_stop_string_start_is_released():
    stop = StopStringFilter(["STOP"])
    assert stop.put("Hello ST") == "Hello "
    assert stop.put("ART") == "START"
    assert stop.finish() == ""


def test_required_templates_exist_and_are_json_serialisable():
    for name in [
        "LM",
        "llama-2",
        "llama-3",
        "chatml",
        "mistral",
        "zephyr",
        "tinyllama",
        "phi-2",
        "gemma",
    ]:
        template = TEMPLATES[name]
        assert get_template(json.loads(json.dumps(template.to_dict()))) == template


def test_template_rendering():
    chatml = get_template("chatml")
    first = chatml.render_turn("Hi", first_turn=True)
    assert first == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert chatml.render_turn("More {braces}", first_turn=False) == (
        "<|im_end|>\n<|im_start|>user\nMore {braces}<|im_end|>\n<|im_start|>assistant\n"
    )
    llama2 = get_template("llama-2")
    assert llama2.render_turn("Hi", True, system_message="Be brief.") == (
        "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]"
    )
    assert get_template("LM").render_turn("Once upon", True) == "Once upon"
    with pytest.raises(ValueError, match="unknown conversation template 'nope'"):
        get_template("nope")
